package gateway

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/pecgw/pecgw/dedup"
	"github.com/pecgw/pecgw/delivery"
	"github.com/pecgw/pecgw/logstore"
	"github.com/pecgw/pecgw/pec"
)

// Details of the records Reconcile appends; each is followed by the
// instant the reconciliation ran.
const (
	reconciledFound    = "reconciled after a restart: envelope found in outbound, receipt delivery not confirmed"
	reconciledNotFound = "reconciled after a restart: the envelope was not handed off"
	reconciledUnknown  = "reconciled after a restart: hand-off outcome unknown (next-hop SMTP)"
)

// Report counts what Reconcile found.
type Report struct {
	// Incomplete transactions: a busta-trasporto record with neither a
	// handed-off nor an aborted one.
	Incomplete int
	// Found: the envelope is in the outbound maildir (now handed-off).
	Found int
	// NotFound: the envelope is not in the outbound maildir (now aborted).
	NotFound int
	// Unknown: the outbound target cannot be searched (next-hop SMTP);
	// now aborted, and remembered by the dedup store.
	Unknown int
	// Remembered: dedup entries written for found or unknown envelopes.
	Remembered int
}

// Reconcile completes, at start and before any listener, the acceptance
// transactions that a crash left half done: logged as emitted
// (busta-trasporto) but neither handed-off nor aborted. The dedup hold
// of such a transaction is gone with the process (the embedded store
// keeps leases in memory) or, in a shared Redis, blocks retries with 451
// until resolved here; without this a client's retry of a submission
// whose envelope went out would be certified again: a second envelope
// (invariant 3 of ARCHITECTURE.md).
//
// It reads the records of the last window (7 days when 0; the dedup
// window) from the log in logDir, and for each incomplete transaction:
//
//   - outbound is a delivery.Finder and holds the envelope: the store
//     remembers the submission (dedup_key) with its PEC identifier and a
//     handed-off record is appended;
//   - outbound is a Finder without the envelope: the store abandons the
//     transaction's hold, an aborted record is appended, and a retry is
//     certified as new;
//   - outbound cannot be searched (next-hop SMTP): the store remembers
//     the submission and an aborted record says the outcome is unknown.
//
// The store is written before the record, so that a failure leaves the
// transaction incomplete for the next start. Appended records copy the
// busta-trasporto record, including its time: the time reference is the
// transaction's (DM 2 novembre 2005 art. 9); when the reconciliation ran
// is in Detail. Running Reconcile again finds nothing to do. A store nil
// or records without dedup_key (no client Message-ID) remember nothing.
func Reconcile(ctx context.Context, logDir string, log TransactionLog, store dedup.Store, outbound delivery.Target, window time.Duration, now time.Time) (Report, error) {
	var rep Report
	window = durationOr(window, 7*24*time.Hour)
	type txState struct {
		busta *logstore.Record
		done  bool
	}
	txs := map[string]*txState{}
	var order []string
	err := logstore.Query(logDir, logstore.Filter{From: now.Add(-window)}, func(h logstore.Hit) error {
		r := h.Record
		switch r.Type {
		case logstore.EventBustaTrasporto, logstore.EventHandedOff, logstore.EventAborted:
		default:
			// duplicate records carry the original's pec_id and say
			// nothing about its hand-off.
			return nil
		}
		if r.PECID == "" {
			return nil
		}
		st := txs[r.PECID]
		if st == nil {
			st = &txState{}
			txs[r.PECID] = st
			order = append(order, r.PECID)
		}
		if r.Type == logstore.EventBustaTrasporto {
			if st.busta == nil {
				c := *r
				st.busta = &c
			}
		} else {
			st.done = true
		}
		return nil
	})
	if err != nil {
		return rep, fmt.Errorf("reconcile: read the log: %w", err)
	}
	finder, _ := outbound.(delivery.Finder)
	ran := pec.At(now).Time().Format(time.RFC3339)
	for _, id := range order {
		st := txs[id]
		if st.busta == nil || st.done {
			continue
		}
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		rep.Incomplete++
		b := st.busta
		var (
			typ      logstore.Event
			detail   string
			remember bool // the envelope is or may be out: a retry gets this id
		)
		switch {
		case finder == nil:
			// Policy: the next hop may or may not have taken the
			// envelope, and cannot be asked. A retry is answered with
			// this identifier rather than certified again: at most one
			// envelope (invariant 3) is favoured over certainty that one
			// went out, and the aborted record tells the operator that
			// the outcome is unknown, to be checked with the next hop.
			typ, detail, remember = logstore.EventAborted, reconciledUnknown, true
			rep.Unknown++
		default:
			envID := b.PECID
			if b.Generated != nil && b.Generated.Envelope != "" {
				envID = b.Generated.Envelope
			}
			found, err := finder.HasMessage(envID)
			if err != nil {
				return rep, fmt.Errorf("reconcile %s: %w", b.PECID, err)
			}
			if found {
				typ, detail, remember = logstore.EventHandedOff, reconciledFound, true
				rep.Found++
			} else {
				typ, detail = logstore.EventAborted, reconciledNotFound
				rep.NotFound++
			}
		}
		if dk, fp, ok := splitDedupKey(b.DedupKey); ok && store != nil {
			// Either way the transaction's hold (dedup.Store.Prepare), if
			// it took one, is resolved: a shared store's other instances
			// answer the retry 451 until this is done.
			if remember {
				if err := store.Remember(ctx, dk, fp, b.PECID, window); err != nil {
					return rep, fmt.Errorf("reconcile %s: dedup: %w", b.PECID, err)
				}
				rep.Remembered++
			} else if err := store.Abandon(ctx, dk, b.PECID); err != nil {
				return rep, fmt.Errorf("reconcile %s: dedup: %w", b.PECID, err)
			}
		}
		rec := logstore.Record{
			Time:       b.Time,
			Type:       typ,
			PECID:      b.PECID,
			MsgID:      b.MsgID,
			Sender:     b.Sender,
			Recipients: b.Recipients,
			Subject:    b.Subject,
			Generated:  b.Generated,
			Provider:   b.Provider,
			User:       b.User,
			DedupKey:   b.DedupKey,
			Detail:     detail + "; reconciliation ran at " + ran,
		}
		if _, _, err := log.Append(ctx, &rec); err != nil {
			return rep, fmt.Errorf("reconcile %s: log: %w", b.PECID, err)
		}
	}
	return rep, nil
}

// splitDedupKey splits a record's dedup_key, "<Key.ID()> <Key.Fingerprint()>".
func splitDedupKey(s string) (id, fp string, ok bool) {
	id, fp, ok = strings.Cut(strings.TrimSpace(s), " ")
	if !ok || id == "" || fp == "" || strings.Contains(fp, " ") {
		return "", "", false
	}
	return id, fp, true
}
