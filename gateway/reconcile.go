package gateway

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pecgw/pecgw/dedup"
	"github.com/pecgw/pecgw/delivery"
	"github.com/pecgw/pecgw/logstore"
	"github.com/pecgw/pecgw/pec"
)

// Report counts what Reconcile found and did.
type Report struct {
	// Incomplete: transactions whose log ends with their write-ahead
	// records (a crash cut them before the hand-off's outcome was logged).
	Incomplete int
	// Found: of those, the envelope is out (in the outbound maildir,
	// marked so by the receipt spool, or committed in the dedup store).
	Found int
	// NotFound: the envelope was not handed off (not in the outbound
	// maildir, or the shared dedup store shows no hold was taken).
	NotFound int
	// Unknown: nothing tells (next-hop SMTP): the hold is put back and
	// the receipt kept unconfirmed for the operator (pecgw spool
	// confirm|reject), or, without a receipt, the submission remembered.
	Unknown int
	// Remembered: dedup commits made for incomplete transactions whose
	// envelope is or may be out.
	Remembered int
	// Receipts: spooled acceptance receipts delivered (or found already
	// in the sender's mailbox).
	Receipts int
	// ReceiptsDropped: spooled receipts removed, their envelope not out or
	// their transaction over.
	ReceiptsDropped int
	// ReceiptsUnconfirmed: receipts newly kept unconfirmed for the operator.
	ReceiptsUnconfirmed int
	// DedupUnsettled: holds that could not be dropped or put back, the
	// store being unreachable; the periodic run and the next start redo
	// them (a retry meanwhile gets 451 or waits for the operator).
	DedupUnsettled int
}

// ReconcileInput is what Reconcile reads beyond the Acceptor's own parts.
type ReconcileInput struct {
	LogDir string // the Acceptor's log folder
	// Outbound is where to look for envelopes that went out: a
	// delivery.Finder (the outbound maildir) can say; nil: the
	// Acceptor's Outbound.
	Outbound delivery.Target
	Now      time.Time
}

// Reconcile completes, at start and before any listener, the acceptance
// transactions that a crash (or a failure) left half done, so that a
// client's retry gets the right answer: the original identifier when the
// envelope went out (never a second envelope, invariant 3 of
// docs/architecture.md), a new certification when it did not, and never
// a 250 before the receipt is out (invariant 1).
//
// It replays the log of the last dedup window into one state per
// transaction (logstore.Record.Tx: the records' states, or what format 1
// wrote), adds the receipts the spool still holds, and then moves each
// transaction on through the transaction table with the same rows the
// running process uses: what tells whether an envelope went out (fate)
// is the only decision of its own. Records it appends copy the
// busta-trasporto record, with its time reference (DM 2 novembre 2005
// art. 9); when the reconciliation ran is in their detail. What it leaves
// waiting (an unknown outcome for the operator, an action to redo) goes
// to a.Transactions for the periodic run. Running it again appends
// nothing.
func (a *Acceptor) Reconcile(ctx context.Context, in ReconcileInput) (Report, error) {
	r := &reconciler{a: a, in: in, ran: pec.At(in.Now).Time().Format(time.RFC3339)}
	out := in.Outbound
	if out == nil {
		out = a.Outbound
	}
	r.finder, _ = out.(delivery.Finder)
	txs, err := r.replay()
	if err != nil {
		return r.rep, err
	}
	for _, t := range txs {
		if err := ctx.Err(); err != nil {
			return r.rep, err
		}
		if err := r.settle(ctx, t); err != nil {
			return r.rep, fmt.Errorf("reconcile %s: %w", t.id, err)
		}
	}
	return r.rep, nil
}

type reconciler struct {
	a      *Acceptor
	in     ReconcileInput
	finder delivery.Finder
	ran    string
	rep    Report
	inOut  bool // fate found the envelope in outbound
}

// replay reads the log of the window into one txn per transaction, in
// log order, then adds those of spooled receipts outside the window
// (their whole log read) or without any record.
func (r *reconciler) replay() ([]*txn, error) {
	byID := map[string]*txn{}
	var order []*txn
	err := logstore.Query(r.in.LogDir, logstore.Filter{From: r.in.Now.Add(-r.a.window())}, func(h logstore.Hit) error {
		t := byID[h.Record.PECID]
		if t == nil {
			t = &txn{id: h.Record.PECID}
		}
		known, err := fold(t, h.Record)
		if known && byID[t.id] == nil {
			byID[t.id] = t
			order = append(order, t)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("reconcile: read the log: %w", err)
	}
	states, ids, err := r.a.Receipts.List()
	if err != nil {
		return nil, fmt.Errorf("reconcile: %w", err)
	}
	for _, id := range ids {
		t := byID[id]
		if t == nil {
			if t, err = replayOne(r.in.LogDir, id); err != nil {
				return nil, fmt.Errorf("reconcile %s: read the log: %w", id, err)
			}
			order = append(order, t)
		}
		t.mark = states[id]
	}
	return order, nil
}

// fold takes one record into t: its state, and the first write-ahead
// record as the one later records copy. known is false for a record that
// says nothing of an acceptance transaction's state (a duplicate, a
// refusal). A record whose state no row of the table reaches from the
// state before is an error: a log that no pecgw wrote.
func fold(t *txn, rec *logstore.Record) (known bool, err error) {
	tx := rec.Tx()
	if tx.State == "" || rec.PECID == "" {
		return false, nil
	}
	if t.state == stNew {
		t.rec = *rec
	}
	if t.key == nil {
		t.key = tx.Dedup
	}
	if t.state != stNew && !reachable(t.state, tx.State) {
		return true, fmt.Errorf("the log of %s goes from %s to %s (seq %d), which no row of the transaction table does", t.id, t.state, tx.State, rec.Seq)
	}
	t.state = tx.State
	return true, nil
}

// replayOne reads the records of transaction id from the whole log.
func replayOne(logDir, id string) (*txn, error) {
	t := &txn{id: id}
	err := logstore.Query(logDir, logstore.Filter{PECID: id}, func(h logstore.Hit) error {
		if h.Record.PECID != id {
			return nil
		}
		_, err := fold(t, h.Record)
		return err
	})
	return t, err
}

// settle moves t on until it is over or waits, then keeps it in
// a.Transactions if it waits (an unknown outcome for the operator, an
// action to redo).
func (r *reconciler) settle(ctx context.Context, t *txn) error {
	for range 4 { // a transaction goes through at most three rows here
		from := t.state
		on, err := r.next(ctx, t)
		if err != nil || on == "" {
			return err
		}
		t.note = joinNote(t.note, "reconciliation ran at "+r.ran)
		spooled := t.mark != ""
		warn, err := r.a.apply(ctx, t, on)
		if err != nil {
			return err
		}
		if err := r.count(from, on, spooled, warn); err != nil {
			return err
		}
		if row, _ := step(from, on); row.settle {
			break
		}
	}
	r.a.Transactions.keep(t)
	return nil
}

// next is the event t is ready for at start, "" when none.
func (r *reconciler) next(ctx context.Context, t *txn) (logstore.TxCause, error) {
	var e *delivery.SpoolEntry
	if t.mark != "" {
		var err error
		if e, err = r.a.spooled(t); err != nil {
			return "", err
		}
	}
	switch t.state {
	case stNew:
		if e != nil {
			return logstore.CauseStrayReceipt, nil
		}
	case logstore.TxWrittenAhead:
		return r.fate(ctx, t, e)
	case logstore.TxReceiptOwed, logstore.TxOutcomeUnknown:
		on, err := r.a.nextLate(t)
		if on == "" && err == nil {
			// Waiting for the operator: its hold is put back at every
			// start, whatever its age (the embedded store forgets holds).
			on = logstore.CauseRestart
		}
		return on, err
	case logstore.TxCommitOwed:
		return logstore.CauseCommittedLate, nil
	case logstore.TxNotHandedOff:
		// Its release may have been lost.
		if t.key != nil || e != nil {
			return logstore.CauseRestart, nil
		}
	case logstore.TxReceiptOut:
		if e != nil {
			return logstore.CauseRestart, nil
		}
	case logstore.TxReceiptLost:
		return logstore.CauseRestart, nil
	}
	return "", nil
}

// fate says whether the envelope of t, written ahead and cut by a crash,
// went out: the spool's mark (out: the receipt's hand-off had failed;
// unconfirmed or decided: the next hop had not answered), the dedup
// store (committed with the receipt still spooled: a transaction commits
// only once envelope and receipt are out; with Redis, no hold: the hold
// is taken before any hand-off), the outbound maildir. Otherwise the
// outcome is unknown (next-hop SMTP).
func (r *reconciler) fate(ctx context.Context, t *txn, e *delivery.SpoolEntry) (logstore.TxCause, error) {
	if e != nil {
		switch e.State {
		case delivery.SpoolOut:
			t.note = "the envelope was handed off, as the receipt spool recorded"
			return logstore.CauseFoundOut, nil
		case delivery.SpoolUnconfirmed, delivery.SpoolConfirmed, delivery.SpoolRejected:
			t.note = "the next hop had not answered the end of DATA, as the receipt spool recorded"
			return logstore.CauseFoundUnknown, nil
		}
	}
	r.inOut = false
	trace := dedup.TraceUnknown
	if t.key != nil && r.a.Dedup != nil {
		var err error
		if trace, err = r.a.Dedup.Trace(ctx, t.key.ID, t.key.FP, t.id); err != nil {
			return "", err
		}
	}
	switch {
	case trace == dedup.TraceCommitted && e != nil:
		return logstore.CauseFoundCommitted, nil
	case r.finder != nil:
		envID := t.id
		if t.rec.Generated != nil && t.rec.Generated.Envelope != "" {
			envID = t.rec.Generated.Envelope
		}
		found, err := r.finder.HasMessage(envID)
		switch {
		case err != nil:
			return "", err
		case !found:
			t.note = "the envelope is not in outbound"
			return logstore.CauseFoundNotOut, nil
		}
		t.note, r.inOut = "the envelope is in outbound", true
		if e == nil {
			return logstore.CauseReceiptLost, nil
		}
		return logstore.CauseFoundOut, nil
	case trace == dedup.TraceNone && !r.a.DedupFailOpen && r.within(t):
		// Every envelope is handed off under a hold (unless on_error =
		// accept), and Redis keeps it for the window.
		t.note = "no dedup hold was taken"
		return logstore.CauseFoundNotOut, nil
	}
	t.note = "next-hop SMTP: nothing here tells whether the envelope went out"
	if e == nil {
		return logstore.CauseReceiptLost, nil
	}
	return logstore.CauseFoundUnknown, nil
}

// within: t is recent enough for the dedup store to still hold what it
// wrote (the window, less a margin for clocks).
func (r *reconciler) within(t *txn) bool {
	at, err := time.Parse(time.RFC3339, t.rec.Time)
	return err == nil && at.After(r.in.Now.Add(-r.a.window()+time.Hour))
}

// count adds what moving t from from by on did to the report. A
// re-assertion that could not reach the store is counted as unsettled;
// any other warning is an error: the start does not go on past a spool
// or a store in trouble.
func (r *reconciler) count(from logstore.TxState, on logstore.TxCause, spooled bool, warn error) error {
	rep := &r.rep
	if warn != nil {
		if row, _ := step(from, on); row.settle && errors.Is(warn, dedup.ErrUnavailable) {
			rep.DedupUnsettled++
		} else {
			return warn
		}
	}
	if from == logstore.TxWrittenAhead {
		rep.Incomplete++
	}
	switch on {
	case logstore.CauseFoundOut, logstore.CauseFoundCommitted:
		rep.Found++
		rep.Remembered++
	case logstore.CauseFoundNotOut:
		rep.NotFound++
	case logstore.CauseFoundUnknown:
		rep.Unknown++
		rep.ReceiptsUnconfirmed++
	case logstore.CauseReceiptLost:
		if from == logstore.TxWrittenAhead {
			rep.Remembered++
			if r.inOut {
				rep.Found++
			} else {
				rep.Unknown++
			}
		}
	}
	switch {
	case on == logstore.CauseFoundOut, on == logstore.CauseRedelivered, on == logstore.CauseOperatorConfirmed:
		rep.Receipts++
	case on == logstore.CauseFoundNotOut && spooled, on == logstore.CauseStrayReceipt, on == logstore.CauseOperatorRejected,
		on == logstore.CauseRestart && from.Terminal() && spooled:
		rep.ReceiptsDropped++
	}
	return nil
}
