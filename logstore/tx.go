package logstore

import (
	"errors"
	"fmt"
	"strings"
)

// TxState is the state of an acceptance transaction that a record says it
// reached (format 2). The states, the events between them and what each
// transition does are the transaction table of docs/architecture.md
// (gateway/txtable.go); this is the vocabulary a record may carry.
type TxState string

// The states a record may carry. A transaction's state is the one of its
// last record that has one.
const (
	// TxWrittenAhead: the busta-trasporto and accettazione records, written
	// before anything is handed off (invariant 2 of docs/architecture.md).
	TxWrittenAhead TxState = "written-ahead"
	// TxReceiptOwed: the envelope is out, the acceptance receipt's
	// hand-off failed; the receipt is kept in the spool for a late
	// delivery.
	TxReceiptOwed TxState = "receipt-owed"
	// TxOutcomeUnknown: the envelope may be out (a next hop that did not
	// answer the end of DATA); the receipt waits for the operator.
	TxOutcomeUnknown TxState = "outcome-unknown"
	// TxCommitOwed: envelope and receipt are out, the dedup commit failed
	// and is owed.
	TxCommitOwed TxState = "commit-owed"
	// TxReceiptOut: envelope and receipt out, the submission committed.
	// Terminal.
	TxReceiptOut TxState = "receipt-out"
	// TxReceiptLost: the envelope is or may be out and no receipt can be
	// delivered any more (it was not kept); the submission is remembered
	// with this identifier, so a retry is never certified again.
	// Terminal.
	TxReceiptLost TxState = "receipt-lost"
	// TxNotHandedOff: the envelope was not handed off; the submission is
	// free to be certified anew. Terminal.
	TxNotHandedOff TxState = "not-handed-off"
)

// Types returns the record types a record reaching s has: the
// write-ahead records, handed-off when the receipt went out (or is only
// owed a dedup commit), aborted otherwise. nil for an unknown state.
func (s TxState) Types() []Event {
	switch s {
	case TxWrittenAhead:
		return []Event{EventBustaTrasporto, EventAccettazione}
	case TxReceiptOut, TxCommitOwed:
		return []Event{EventHandedOff}
	case TxReceiptOwed, TxOutcomeUnknown, TxNotHandedOff, TxReceiptLost:
		return []Event{EventAborted}
	}
	return nil
}

// Terminal reports whether nothing more happens to a transaction in s
// (but re-asserting its dedup state at start).
func (s TxState) Terminal() bool {
	return s == TxReceiptOut || s == TxReceiptLost || s == TxNotHandedOff
}

// TxCause is the event of the transaction table that led to a record's
// state.
type TxCause string

// The events of the transaction table (docs/architecture.md).
const (
	CauseWritten           TxCause = "written"            // the write-ahead records are durable
	CauseLogFailed         TxCause = "log-failed"         // the write-ahead records could not be logged (never in a record)
	CauseNotPrepared       TxCause = "not-prepared"       // the receipt spool or the dedup hold failed before the hand-off
	CauseEnvelopeFailed    TxCause = "envelope-failed"    // the next hop refused the envelope, or the maildir write failed
	CauseEnvelopeUnknown   TxCause = "envelope-unknown"   // the next hop did not answer the end of DATA
	CauseEnvelopeDelivered TxCause = "envelope-delivered" // the envelope is out (never in a record)
	CauseReceiptFailed     TxCause = "receipt-failed"     // the receipt's hand-off failed
	CauseReceiptDelivered  TxCause = "receipt-delivered"  // the receipt is out and the submission committed
	CauseCommitFailed      TxCause = "commit-failed"      // the receipt is out, the dedup commit failed
	CauseRedelivered       TxCause = "redelivered"        // an owed receipt delivered late (client's retry, periodic run, start)
	CauseOperatorConfirmed TxCause = "operator-confirmed" // pecgw spool confirm: the next hop has the envelope
	CauseOperatorRejected  TxCause = "operator-rejected"  // pecgw spool reject: the next hop does not have it
	CauseCommittedLate     TxCause = "committed-late"     // an owed dedup commit made
	CauseFoundOut          TxCause = "found-out"          // at start: the envelope is out (outbound, the spool's mark)
	CauseFoundCommitted    TxCause = "found-committed"    // at start: the dedup store has the submission committed
	CauseFoundNotOut       TxCause = "found-not-out"      // at start: the envelope was not handed off
	CauseFoundUnknown      TxCause = "found-unknown"      // at start: nothing tells whether the envelope is out
	CauseReceiptLost       TxCause = "receipt-lost"       // at start: the envelope is or may be out, no receipt is kept
	CauseRestart           TxCause = "restart"            // at start or periodically: the dedup state re-asserted (never in a record)
	CauseStrayReceipt      TxCause = "stray-receipt"      // a spooled receipt without write-ahead records (never in a record)
)

var causes = []TxCause{CauseWritten, CauseLogFailed, CauseNotPrepared, CauseEnvelopeFailed, CauseEnvelopeUnknown,
	CauseEnvelopeDelivered, CauseReceiptFailed, CauseReceiptDelivered, CauseCommitFailed, CauseRedelivered,
	CauseOperatorConfirmed, CauseOperatorRejected, CauseCommittedLate, CauseFoundOut, CauseFoundCommitted,
	CauseFoundNotOut, CauseFoundUnknown, CauseReceiptLost, CauseRestart, CauseStrayReceipt}

// Known reports whether c is an event of the table.
func (c TxCause) Known() bool {
	for _, k := range causes {
		if c == k {
			return true
		}
	}
	return false
}

// Tx is what the transaction recovery reads of a record.
type Tx struct {
	State TxState   // "" when the record says nothing of a transaction's state
	Cause TxCause   // the event that led there
	Dedup *DedupKey // nil without a client Message-ID
}

// Tx returns the transaction fields of r: its own (format 2), or, for a
// record of format 1, what compatV1 reads from its type, detail and
// dedup_key. It is the only place that tells the formats apart for
// recovery.
func (r *Record) Tx() Tx {
	if r.V >= 2 {
		return Tx{State: r.State, Cause: r.Cause, Dedup: r.Dedup}
	}
	return compatV1(r)
}

// checkFormat refuses a decoded record that its format could not have:
// an unknown version, fields of the other format, a state or event
// outside the vocabulary, or a state on a record of the wrong type.
func checkFormat(r *Record) error {
	switch r.V {
	case 0:
		if r.State != "" || r.Cause != "" || r.Dedup != nil {
			return errors.New("a format 1 record (no \"v\") with fields of format 2")
		}
		return nil
	case FormatVersion:
	default:
		return fmt.Errorf("record format version %d is not known (this pecgw reads 1 and %d)", r.V, FormatVersion)
	}
	if r.DedupKey != "" {
		return errors.New("a format 2 record with dedup_key (format 1)")
	}
	if r.Dedup != nil && (!isHexLen(r.Dedup.ID, 64) || !isHexLen(r.Dedup.FP, 64)) {
		return fmt.Errorf("dedup key %+v is not two SHA-256 in hex", *r.Dedup)
	}
	if r.State == "" {
		if r.Cause != "" {
			return fmt.Errorf("cause %q without a state", r.Cause)
		}
		return nil
	}
	types := r.State.Types()
	if types == nil {
		return fmt.Errorf("unknown transaction state %q", r.State)
	}
	if !r.Cause.Known() {
		return fmt.Errorf("unknown transaction event %q", r.Cause)
	}
	for _, t := range types {
		if t == r.Type {
			return nil
		}
	}
	return fmt.Errorf("a %s record cannot reach state %s", r.Type, r.State)
}

func isHexLen(s string, n int) bool { return len(s) == n && isHex(s) }

// splitV1DedupKey splits format 1's dedup_key, "<Key.ID()> <Key.Fingerprint()>".
func splitV1DedupKey(s string) *DedupKey {
	id, fp, ok := strings.Cut(strings.TrimSpace(s), " ")
	if !ok || id == "" || fp == "" || strings.Contains(fp, " ") {
		return nil
	}
	return &DedupKey{ID: id, FP: fp}
}
