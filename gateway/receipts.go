package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/pecgw/pecgw/dedup"
	"github.com/pecgw/pecgw/delivery"
	"github.com/pecgw/pecgw/logstore"
	"github.com/pecgw/pecgw/pec"
)

// Late delivery of acceptance receipts, and the operator's decisions. The
// receipt of a transaction is spooled (delivery.Spool) before its
// envelope is handed off; when the receipt's hand-off fails after the
// envelope went out, or the process dies then, the spooled receipt
// (signed at the transaction's instant, DM 2 novembre 2005 art. 9) is
// delivered later rather than lost. Until then the transaction's dedup
// hold stays, so a retry is answered 451 on any instance, never 250
// (invariant 1). It is delivered (the table's redelivered event):
//
//   - on the client's retry here, which then gets 250 with the original
//     identifier;
//   - by RedeliverReceipts, which pecgw serve runs every minute;
//   - by Reconcile at the next start, for transactions a crash cut.
//
// Each late delivery commits the submission in the dedup store
// (Remember, which drops the hold) and appends a handed-off record of
// state receipt-out with the transaction's fields and time reference.

// ReceiptSpool keeps receipts until they are handed off (delivery.Spool).
type ReceiptSpool interface {
	Put(e *delivery.SpoolEntry) error
	Get(id string) (*delivery.SpoolEntry, error)
	Mark(id string, st delivery.SpoolState) error
	Remove(id string) error
	List() (map[string]delivery.SpoolState, []string, error)
}

var _ ReceiptSpool = (*delivery.Spool)(nil)

// spoolEntry is the spool entry of a transaction about to hand its
// envelope off: the receipt, and the busta-trasporto record rec.
func spoolEntry(rec *logstore.Record, m *delivery.Message) (*delivery.SpoolEntry, error) {
	js, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	return &delivery.SpoolEntry{ID: rec.PECID, Record: js, From: m.ReversePath, To: m.ForwardPaths, UTF8: m.UTF8, EightBit: m.EightBit, Data: m.Data}, nil
}

// settleOwed, on the client's retry of the submission k, delivers the
// receipt its transaction pecID owes (receipt-owed, or an unknown outcome
// the operator confirmed) when this process has that transaction and
// nobody else is driving it. done is false when there was nothing to do
// here: the retry gets 451.
func (a *Acceptor) settleOwed(ctx context.Context, pecID string, k dedup.Key, how string) (done bool, err error) {
	t := a.Transactions.take(pecID)
	if t == nil {
		return false, nil
	}
	defer a.Transactions.end(t)
	if t.key == nil || t.key.ID != k.ID() || t.key.FP != k.Fingerprint() {
		return false, nil // a retry settles only its own submission
	}
	on, err := a.nextLate(t)
	if err != nil || on != logstore.CauseRedelivered && on != logstore.CauseOperatorConfirmed {
		return false, err
	}
	t.note = how
	_, err = a.apply(ctx, t, on)
	return err == nil, err
}

// nextLate is the event a waiting transaction of this process is ready
// for, "" when none: an owed receipt to deliver (or lost from the spool),
// the operator's decision on an unknown outcome as the spool's mark has
// it, an owed commit, an action to redo.
func (a *Acceptor) nextLate(t *txn) (logstore.TxCause, error) {
	switch t.state {
	case logstore.TxReceiptOwed, logstore.TxOutcomeUnknown:
		t.entry = nil // the operator may have marked it meanwhile
		e, err := a.spooled(t)
		switch {
		case err != nil:
			return "", err
		case e == nil:
			return logstore.CauseReceiptLost, nil
		case t.state == logstore.TxReceiptOwed:
			return logstore.CauseRedelivered, nil
		case e.State == delivery.SpoolConfirmed:
			return logstore.CauseOperatorConfirmed, nil
		case e.State == delivery.SpoolRejected:
			return logstore.CauseOperatorRejected, nil
		case e.State != delivery.SpoolUnconfirmed || t.unsettled:
			return logstore.CauseRestart, nil // the mark or the hold to put right
		}
	case logstore.TxCommitOwed:
		return logstore.CauseCommittedLate, nil
	default:
		if t.unsettled && t.state.Terminal() {
			return logstore.CauseRestart, nil
		}
	}
	return "", nil
}

// RedeliverReceipts moves on every transaction of this process that waits
// and that no other driver holds: it delivers the receipts owed, applies
// the operator's decisions (pecgw spool confirm|reject), makes owed
// commits and redoes what failed. It returns how many receipts were
// delivered, and the errors of what was not done (tried again next time).
func (a *Acceptor) RedeliverReceipts(ctx context.Context) (int, error) {
	n := 0
	var errs []error
	for _, id := range a.Transactions.waiting() {
		if ctx.Err() != nil {
			break
		}
		t := a.Transactions.take(id)
		if t == nil {
			continue
		}
		on, err := a.nextLate(t)
		if err == nil && on != "" {
			t.note = "by the periodic run at " + a.nowText()
			var warn error
			warn, err = a.apply(ctx, t, on)
			err = errors.Join(err, warn)
			if t.state == logstore.TxReceiptOut && (on == logstore.CauseRedelivered || on == logstore.CauseOperatorConfirmed) {
				n++
			}
		}
		a.Transactions.end(t)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return n, errors.Join(errs...)
}

// Decide records the operator's decision on a receipt kept unconfirmed
// (pecgw spool confirm|reject): the next hop did (confirmed) or did not
// receive the transport envelope. The spool's mark is the durable form
// of the transaction's state there (spoolMarkOf): only an unconfirmed
// receipt, of a transaction whose outcome is unknown, takes a decision.
// Decide marks it; the running pecgw serve applies the decision through
// the transaction table within a minute (RedeliverReceipts) and writes
// the log, which only it writes. It returns the new mark.
func Decide(spool ReceiptSpool, id string, confirmed bool) (delivery.SpoolState, error) {
	e, err := spool.Get(id)
	if err != nil {
		return "", err
	}
	on, mark := logstore.CauseOperatorRejected, delivery.SpoolRejected
	if confirmed {
		on, mark = logstore.CauseOperatorConfirmed, delivery.SpoolConfirmed
	}
	state := stNew
	for _, s := range []logstore.TxState{logstore.TxWrittenAhead, logstore.TxReceiptOwed, logstore.TxOutcomeUnknown} {
		if spoolMarkOf(s) == e.State {
			state = s
		}
	}
	if _, err := step(state, on); err != nil {
		return "", fmt.Errorf("the receipt of %s is %s, not unconfirmed: pecgw serve takes care of it", id, SpoolMarkMeaning(e.State))
	}
	return mark, spool.Mark(id, mark)
}

// nowText is the current instant in Italian legal time, for details.
func (a *Acceptor) nowText() string {
	return pec.At(a.Now()).Time().Format(time.RFC3339)
}
