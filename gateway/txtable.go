package gateway

import (
	"fmt"
	"strings"

	"github.com/pecgw/pecgw/delivery"
	"github.com/pecgw/pecgw/logstore"
)

// The acceptance transaction as one table (docs/architecture.md, "The
// transaction table"). Every path that moves a transaction on goes
// through it: the acceptance in the SMTP session (accept.go), the late
// delivery of an owed receipt on a retry or by the periodic run
// (receipts.go), the reconciliation at start (reconcile.go) and the
// operator's pecgw spool confirm|reject (Decide). A row says, for a state
// and an event, what is done before the record of the new state (a
// failure of what must succeed leaves the state as it was, to be tried
// again), whether that record is written (the log is the durable state:
// invariant 2 of docs/architecture.md), and what is done once it is durable (those
// actions are idempotent and redone by the new state's restart row when
// they fail).

// States beyond the vocabulary of the log records: a transaction not yet
// written ahead, and one whose envelope is out while its receipt is being
// handed off. Neither is ever in a record: a crash in either leaves the
// log saying less (nothing, or written-ahead), and the reconciliation
// finds out the rest.
const (
	stNew         logstore.TxState = ""
	stEnvelopeOut logstore.TxState = "envelope-out"
)

// action is one thing a transition does.
type action int

const (
	actUnspool           action = iota + 1 // remove the receipt from the spool
	actRelease                             // drop the transaction's claim, lease or hold (dedup.Store.Release)
	actEnsureHold                          // a hold names the transaction, also when on_error = accept went on without one
	actMarkOut                             // the spooled receipt is marked out: its envelope is out (evidence for a crash before the record)
	actMarkUnconfirmed                     // the spooled receipt is marked unconfirmed: for the operator
	actDeliverReceipt                      // the spooled receipt to the sender's mailboxes that do not hold it yet
	actRemember                            // the submission committed with this identifier (dedup.Store.Remember)
	actAbandon                             // a hold naming the transaction dropped (dedup.Store.Abandon)
	actHoldBack                            // the hold put back (dedup.Store.Hold: the embedded store forgets holds)
	actRefuseIfCommitted                   // a submission committed with this identifier cannot be rejected
	actCommitLater                         // the failed commit retried in the background
)

var actionNames = map[action]string{
	actUnspool: "unspool", actRelease: "release", actEnsureHold: "ensure hold", actMarkOut: "mark out",
	actMarkUnconfirmed: "mark unconfirmed", actDeliverReceipt: "deliver receipt", actRemember: "remember",
	actAbandon: "abandon", actHoldBack: "hold back", actRefuseIfCommitted: "refuse if committed",
	actCommitLater: "commit later",
}

func (a action) String() string { return actionNames[a] }

// bestEffort: the action's failure does not stop the transition. A
// receipt left in the spool is dropped later; a lost release or hold is
// put right by the next start (Reconcile abandons the holds of
// not-handed-off transactions and puts back those of unknown outcome);
// a mark is evidence only for a crash before the record, which the
// record itself then makes needless. Its error is reported.
func (a action) bestEffort() bool {
	switch a {
	case actUnspool, actRelease, actEnsureHold, actMarkOut, actMarkUnconfirmed, actCommitLater:
		return true
	}
	return false
}

// transition is one row of the table.
type transition struct {
	from   logstore.TxState
	on     logstore.TxCause
	before []action // before the record
	log    bool     // a record of the new state is appended
	after  []action // once the record is durable
	to     logstore.TxState
	// settle: a re-assertion at start or in the periodic run, not an
	// event of the transaction; a dedup store that is unavailable for a
	// hold (abandon, hold back) leaves it for the next run.
	settle bool
}

type acts = []action

// txTable is the transaction table. docs/architecture.md shows it
// (TestDocsShowTheTable keeps the two the same).
var txTable = []transition{
	// The acceptance, in the SMTP session (accept.go).
	{from: stNew, on: logstore.CauseWritten, log: true, to: logstore.TxWrittenAhead},
	{from: stNew, on: logstore.CauseLogFailed, before: acts{actUnspool, actRelease}, to: logstore.TxNotHandedOff},
	{from: logstore.TxWrittenAhead, on: logstore.CauseNotPrepared, before: acts{actUnspool, actRelease}, log: true, to: logstore.TxNotHandedOff},
	{from: logstore.TxWrittenAhead, on: logstore.CauseEnvelopeFailed, before: acts{actUnspool, actRelease}, log: true, to: logstore.TxNotHandedOff},
	{from: logstore.TxWrittenAhead, on: logstore.CauseEnvelopeUnknown, before: acts{actMarkUnconfirmed, actEnsureHold}, log: true, to: logstore.TxOutcomeUnknown},
	{from: logstore.TxWrittenAhead, on: logstore.CauseEnvelopeDelivered, to: stEnvelopeOut},
	{from: stEnvelopeOut, on: logstore.CauseReceiptFailed, before: acts{actMarkOut, actEnsureHold}, log: true, to: logstore.TxReceiptOwed},
	{from: stEnvelopeOut, on: logstore.CauseReceiptDelivered, log: true, after: acts{actUnspool}, to: logstore.TxReceiptOut},
	{from: stEnvelopeOut, on: logstore.CauseCommitFailed, log: true, after: acts{actUnspool, actCommitLater}, to: logstore.TxCommitOwed},

	// Later: a retry, the periodic run, the operator (receipts.go).
	{from: logstore.TxReceiptOwed, on: logstore.CauseRedelivered, before: acts{actDeliverReceipt, actRemember}, log: true, after: acts{actUnspool}, to: logstore.TxReceiptOut},
	{from: logstore.TxOutcomeUnknown, on: logstore.CauseOperatorConfirmed, before: acts{actDeliverReceipt, actRemember}, log: true, after: acts{actUnspool}, to: logstore.TxReceiptOut},
	{from: logstore.TxOutcomeUnknown, on: logstore.CauseOperatorRejected, before: acts{actRefuseIfCommitted}, log: true, after: acts{actAbandon, actUnspool}, to: logstore.TxNotHandedOff},
	{from: logstore.TxCommitOwed, on: logstore.CauseCommittedLate, before: acts{actRemember}, log: true, after: acts{actUnspool}, to: logstore.TxReceiptOut},

	// At start, for a transaction a crash cut after its write-ahead
	// records (reconcile.go: what tells whether the envelope is out).
	{from: logstore.TxWrittenAhead, on: logstore.CauseFoundOut, before: acts{actDeliverReceipt, actRemember}, log: true, after: acts{actUnspool}, to: logstore.TxReceiptOut},
	{from: logstore.TxWrittenAhead, on: logstore.CauseFoundCommitted, before: acts{actRemember}, log: true, after: acts{actUnspool}, to: logstore.TxReceiptOut},
	{from: logstore.TxWrittenAhead, on: logstore.CauseFoundNotOut, before: acts{actUnspool, actAbandon}, log: true, to: logstore.TxNotHandedOff},
	{from: logstore.TxWrittenAhead, on: logstore.CauseFoundUnknown, before: acts{actMarkUnconfirmed, actHoldBack}, log: true, to: logstore.TxOutcomeUnknown},
	// No receipt kept for an envelope that is or may be out: nothing to
	// deliver or for the operator to decide on; a hold would block the
	// submission for the whole window. Remembered instead: a retry gets
	// this identifier (at most one envelope); the log proves the
	// acceptance (RFC 6109 §2.3).
	{from: logstore.TxWrittenAhead, on: logstore.CauseReceiptLost, before: acts{actRemember}, log: true, to: logstore.TxReceiptLost},
	{from: logstore.TxReceiptOwed, on: logstore.CauseReceiptLost, before: acts{actRemember}, log: true, to: logstore.TxReceiptLost},
	{from: logstore.TxOutcomeUnknown, on: logstore.CauseReceiptLost, before: acts{actRemember}, log: true, to: logstore.TxReceiptLost},

	// Re-assertions at every start and in the periodic run: what a
	// process that died did not finish, and holds the embedded store
	// forgets with its process.
	{from: logstore.TxOutcomeUnknown, on: logstore.CauseRestart, before: acts{actMarkUnconfirmed, actHoldBack}, to: logstore.TxOutcomeUnknown, settle: true},
	{from: logstore.TxNotHandedOff, on: logstore.CauseRestart, before: acts{actAbandon, actUnspool}, to: logstore.TxNotHandedOff, settle: true},
	{from: logstore.TxReceiptOut, on: logstore.CauseRestart, before: acts{actUnspool}, to: logstore.TxReceiptOut, settle: true},
	{from: logstore.TxReceiptLost, on: logstore.CauseRestart, before: acts{actRemember, actUnspool}, to: logstore.TxReceiptLost, settle: true},
	// A spooled receipt with no write-ahead record: its envelope was never
	// handed off (invariant 2: the records come first).
	{from: stNew, on: logstore.CauseStrayReceipt, before: acts{actUnspool}, to: stNew, settle: true},
}

// errIllegal is wrapped by step's error for an event the table does not
// allow in a state.
var errIllegal = fmt.Errorf("not a transition of the transaction table")

// step returns the row for event on in state from.
func step(from logstore.TxState, on logstore.TxCause) (transition, error) {
	for _, t := range txTable {
		if t.from == from && t.on == on {
			return t, nil
		}
	}
	return transition{}, fmt.Errorf("%w: %s in state %s", errIllegal, on, stateName(from))
}

// reachable reports whether some row leads from a to b: how the replay of
// a log checks the states its records went through.
func reachable(a, b logstore.TxState) bool {
	if a == b {
		return true
	}
	for _, t := range txTable {
		if t.from == a && t.to == b {
			return true
		}
	}
	// envelope-out is never logged: its rows start from written-ahead
	// as far as the log can tell.
	if a == logstore.TxWrittenAhead {
		for _, t := range txTable {
			if t.from == stEnvelopeOut && t.to == b {
				return true
			}
		}
	}
	return false
}

func stateName(s logstore.TxState) string {
	if s == stNew {
		return "(new)"
	}
	return string(s)
}

// spoolMarkOf is the spool's mark of a receipt whose transaction is in
// state s, as the spool's file names keep it (delivery.Spool); "" when
// the receipt is not spooled in that state.
func spoolMarkOf(s logstore.TxState) delivery.SpoolState {
	switch s {
	case logstore.TxWrittenAhead, stEnvelopeOut:
		return delivery.SpoolPending
	case logstore.TxReceiptOwed:
		return delivery.SpoolOut
	case logstore.TxOutcomeUnknown:
		return delivery.SpoolUnconfirmed
	}
	return ""
}

// SpoolMarkMeaning says what a spool mark means to the operator (pecgw
// spool list).
func SpoolMarkMeaning(m delivery.SpoolState) string {
	switch m {
	case delivery.SpoolPending:
		return "pending (transaction running, or for the reconciliation at start)"
	case delivery.SpoolOut:
		return "owed (envelope out; pecgw serve retries every minute)"
	case delivery.SpoolUnconfirmed:
		return "unconfirmed (envelope of unknown fate: ask the next hop, then confirm or reject)"
	case delivery.SpoolConfirmed:
		return "confirmed (pecgw serve delivers it within a minute)"
	case delivery.SpoolRejected:
		return "rejected (pecgw serve drops it within a minute and frees the submission)"
	}
	return string(m)
}

// tableMarkdown renders the table as docs/architecture.md shows it.
func tableMarkdown() string {
	var b strings.Builder
	b.WriteString("| from | event | before the record | record | after the record | to |\n|---|---|---|---|---|---|\n")
	names := func(l []action) string {
		if len(l) == 0 {
			return "—"
		}
		s := make([]string, len(l))
		for i, a := range l {
			s[i] = a.String()
		}
		return strings.Join(s, ", ")
	}
	for _, t := range txTable {
		rec := "—"
		if t.log {
			var types []string
			for _, e := range t.to.Types() {
				types = append(types, string(e))
			}
			rec = strings.Join(types, " + ")
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", stateName(t.from), t.on, names(t.before), rec, names(t.after), stateName(t.to))
	}
	return b.String()
}
