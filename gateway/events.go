package gateway

import "go.uber.org/zap"

// The operational log's fixed event vocabulary (the legal record is the
// transaction log, logstore): every entry carries event=<one of these>,
// so operators can filter and alert on them. No sampling applies to them
// (cmd/pecgw builds the logger without a sampler).
var (
	evAuth      = zap.String("event", "smtp.auth")         // AUTH: each attempt at debug level; lockouts, busy and unavailable at warn
	evLimit     = zap.String("event", "smtp.limit")        // connections refused by the connection limits: ip, reason, refused
	evSuspended = zap.String("event", "smtp.suspended")    // MAIL FROM of a suspended account refused: ip, user
	evAccepted  = zap.String("event", "pec.accepted")      // a submission certified: pec_id
	evRefused   = zap.String("event", "pec.refused")       // a submission refused by the formal checks: violations, notice
	evError     = zap.String("event", "pec.error")         // an internal failure answered 4xx: error
	evDuplicate = zap.String("event", "pec.duplicate")     // a retry answered with the original pec_id
	evInFlight  = zap.String("event", "pec.inflight")      // a retry while its twin is being processed: 451
	evDedup     = zap.String("event", "dedup.unavailable") // certified without deduplication (on_error = accept, or the commit failed)
)

// logger returns the Backend's operational logger, or one that drops
// everything.
func (b *Backend) logger() *zap.Logger {
	if b.Log == nil {
		return zap.NewNop()
	}
	return b.Log
}
