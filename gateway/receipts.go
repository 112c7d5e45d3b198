package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/pecgw/pecgw/dedup"
	"github.com/pecgw/pecgw/delivery"
	"github.com/pecgw/pecgw/logstore"
	"github.com/pecgw/pecgw/pec"
)

// Late delivery of acceptance receipts. The receipt of a transaction is
// spooled (delivery.Spool) before its envelope is handed off; when the
// process dies, or the receipt's hand-off fails, after the envelope went
// out, the spooled receipt (signed at the transaction's instant, DM 2
// novembre 2005 art. 9) is delivered later rather than lost. Until then
// the transaction's dedup hold stays, so a retry is answered 451 on any
// instance, never 250 (ARCHITECTURE.md invariant 1). It is delivered:
//
//   - on the client's retry here, which then gets 250 with the original
//     identifier;
//   - by RedeliverReceipts, which pecgw serve runs every minute;
//   - by Reconcile at the next start, for transactions a crash cut.
//
// Each late delivery commits the submission in the dedup store
// (Remember, which drops the hold) and appends a handed-off record with
// the transaction's fields and time reference; Detail says how and when.

// ReceiptSpool keeps receipts until they are handed off (delivery.Spool).
type ReceiptSpool interface {
	Put(e *delivery.SpoolEntry) error
	Done(id string)
	Claim(id string) bool
	Get(id string) (*delivery.SpoolEntry, error)
	Mark(id string, st delivery.SpoolState) error
	Remove(id string) error
	List() (map[string]delivery.SpoolState, []string, error)
	SetRecorded(id string)
	Recorded(id string) bool
}

var _ ReceiptSpool = (*delivery.Spool)(nil)

// Details of the late hand-off records.
const (
	receiptRedelivered = "acceptance receipt delivered late"
	receiptWasThere    = "acceptance receipt found in the sender's mailbox"
)

// spoolEntry is the spool entry of a transaction about to hand its
// envelope off.
func spoolEntry(rec *logstore.Record, m *delivery.Message) (*delivery.SpoolEntry, error) {
	js, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	return &delivery.SpoolEntry{ID: rec.PECID, Record: js, From: m.ReversePath, To: m.ForwardPaths, UTF8: m.UTF8, EightBit: m.EightBit, Data: m.Data}, nil
}

// deliverSpooled hands the receipt of e off to mailboxes, to the
// recipients whose mailbox does not hold it yet when mailboxes can tell
// (a crash may have come after the receipt was written). It returns the
// handed-off record to append; the caller appends it, then removes e.
func deliverSpooled(ctx context.Context, mailboxes delivery.Target, e *delivery.SpoolEntry, how string) (*logstore.Record, error) {
	var rec logstore.Record
	if err := json.Unmarshal(e.Record, &rec); err != nil || rec.PECID != e.ID {
		return nil, fmt.Errorf("spooled receipt %s: bad record (%v)", e.ID, err)
	}
	m := e.Message()
	detail := receiptRedelivered
	if mf, ok := mailboxes.(delivery.MailboxFinder); ok && rec.Generated != nil && rec.Generated.Receipt != "" {
		var rest []string
		for _, r := range m.ForwardPaths {
			has, err := mf.HasMessageFor(r, rec.Generated.Receipt)
			if err != nil {
				return nil, fmt.Errorf("spooled receipt %s: %w", e.ID, err)
			}
			if !has {
				rest = append(rest, r)
			}
		}
		if len(rest) == 0 {
			detail = receiptWasThere
		}
		m.ForwardPaths = rest
	}
	if len(m.ForwardPaths) > 0 {
		if err := mailboxes.Deliver(ctx, m); err != nil {
			return nil, fmt.Errorf("acceptance receipt of %s not delivered: %w", e.ID, err)
		}
	}
	rec.Seq, rec.Prev = 0, ""
	rec.Type = logstore.EventHandedOff
	rec.Detail = detail + " " + how
	return &rec, nil
}

// settleReceipt delivers the spooled receipt e, remembers its submission
// in store (dropping the transaction's hold), appends the handed-off
// record and removes e, in that order: a crash in between leaves e for
// the next Reconcile, which finds the receipt already in a maildir
// mailbox (or, over LMTP, delivers it once more: twice rather than never).
func settleReceipt(ctx context.Context, log TransactionLog, mailboxes delivery.Target, store dedup.Store, spool ReceiptSpool,
	e *delivery.SpoolEntry, how string, window time.Duration) (recorded bool, err error) {
	rec, err := deliverSpooled(ctx, mailboxes, e, how)
	if err != nil {
		return false, err
	}
	if id, fp, ok := splitDedupKey(rec.DedupKey); ok && store != nil {
		if err := store.Remember(ctx, id, fp, e.ID, durationOr(window, 7*24*time.Hour)); err != nil {
			return false, fmt.Errorf("acceptance receipt of %s delivered, dedup not settled: %w", e.ID, err)
		}
	}
	if _, _, err := log.Append(context.WithoutCancel(ctx), rec); err != nil {
		return false, fmt.Errorf("log the late hand-off of %s: %w", e.ID, err)
	}
	if err := spool.Remove(e.ID); err != nil {
		return true, fmt.Errorf("remove the spooled receipt of %s: %w", e.ID, err)
	}
	return true, nil
}

// settleOwed delivers the receipt owed by transaction pecID when this
// process spooled it and knows its envelope is out (the entry is marked
// so) and no transaction or redelivery holds it. want, when not "", is
// the dedup_key the entry must carry (a retry settles only its own
// submission). done is false when there was nothing to do here.
func (a *Acceptor) settleOwed(ctx context.Context, pecID, want, how string) (done bool, err error) {
	if a.Receipts == nil || !a.Receipts.Claim(pecID) {
		return false, nil
	}
	defer a.Receipts.Done(pecID)
	e, err := a.Receipts.Get(pecID)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if e.State != delivery.SpoolOut && e.State != delivery.SpoolConfirmed {
		// Pending: its outcome is for Reconcile to find in the log at the
		// next start (a retry meanwhile gets 451). Unconfirmed: the
		// operator's. Rejected: RedeliverReceipts drops it.
		return false, nil
	}
	if want != "" {
		var rec logstore.Record
		if json.Unmarshal(e.Record, &rec) != nil || rec.DedupKey != want {
			return false, nil
		}
	}
	if a.Receipts.Recorded(pecID) {
		// Delivered and logged; only its removal failed.
		return false, a.Receipts.Remove(pecID)
	}
	recorded, err := settleReceipt(ctx, a.Log, a.Mailboxes, a.Dedup, a.Receipts, e, howSettled(e, how), a.DedupWindow)
	if recorded {
		a.Receipts.SetRecorded(pecID)
	}
	return recorded, err
}

// operatorConfirmed and operatorRejected begin the Detail of the records
// of an unconfirmed receipt the operator decided on (pecgw spool).
const (
	operatorConfirmed = "after the operator confirmed that the next hop received the transport envelope,"
	operatorRejected  = "the operator found that the next hop did not receive the transport envelope: acceptance receipt dropped, the submission may be sent again"
)

// howSettled says how a spooled receipt came to be delivered.
func howSettled(e *delivery.SpoolEntry, how string) string {
	if e.State == delivery.SpoolConfirmed {
		return operatorConfirmed + " " + how
	}
	return how
}

// rejectSpooled ends a transaction whose envelope the operator found was
// not received (pecgw spool reject): an aborted record says so (with the
// transaction's time reference), unless recorded is set (the log has it
// already: a removal that did not happen before a crash), then its hold
// is abandoned, so a retry is certified anew, and the receipt removed. A
// submission already committed with this identifier cannot be rejected
// (the retry is answered with it): the entry stays, and the error says
// why. An unavailable store leaves the entry for the next try; the
// record written, Reconcile also abandons the hold at the next start.
func rejectSpooled(ctx context.Context, log TransactionLog, store dedup.Store, spool ReceiptSpool, e *delivery.SpoolEntry, ran string, recorded bool) (bool, error) {
	var rec logstore.Record
	if err := json.Unmarshal(e.Record, &rec); err != nil || rec.PECID != e.ID {
		return recorded, fmt.Errorf("spooled receipt %s: bad record (%v)", e.ID, err)
	}
	id, fp, keyed := splitDedupKey(rec.DedupKey)
	if !recorded {
		if keyed && store != nil {
			tr, err := store.Trace(ctx, id, fp, e.ID)
			if err != nil {
				return false, fmt.Errorf("rejected receipt of %s: dedup: %w", e.ID, err)
			}
			if tr == dedup.TraceCommitted {
				return false, fmt.Errorf("rejected receipt of %s: the submission is committed with this identifier and its retries are answered with it; cannot reject", e.ID)
			}
		}
		rec.Seq, rec.Prev = 0, ""
		rec.Type = logstore.EventAborted
		rec.Detail = operatorRejected + "; recorded at " + ran
		if _, _, err := log.Append(context.WithoutCancel(ctx), &rec); err != nil {
			return false, fmt.Errorf("log the rejection of %s: %w", e.ID, err)
		}
	}
	if keyed && store != nil {
		if err := store.Abandon(ctx, id, e.ID); err != nil {
			return true, fmt.Errorf("rejected receipt of %s: dedup: %w", e.ID, err)
		}
	}
	return true, spool.Remove(e.ID)
}

// RedeliverReceipts delivers every spooled receipt whose envelope is known
// to be out (its receipt hand-off failed, or the operator confirmed it)
// and which no transaction of this process holds, and drops those the
// operator rejected. It returns how many were delivered, and the errors
// of those that were not (they are tried again next time).
func (a *Acceptor) RedeliverReceipts(ctx context.Context) (int, error) {
	if a.Receipts == nil {
		return 0, nil
	}
	states, ids, err := a.Receipts.List()
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, id := range ids {
		if ctx.Err() != nil {
			break
		}
		switch states[id] {
		case delivery.SpoolOut, delivery.SpoolConfirmed:
			ok, err := a.settleOwed(ctx, id, "", "by the periodic redelivery at "+a.nowText())
			if err != nil {
				errs = append(errs, err)
			}
			if ok {
				n++
			}
		case delivery.SpoolRejected:
			if !a.Receipts.Claim(id) {
				continue
			}
			e, err := a.Receipts.Get(id)
			if err == nil && e.State == delivery.SpoolRejected {
				var recorded bool
				if recorded, err = rejectSpooled(ctx, a.Log, a.Dedup, a.Receipts, e, a.nowText(), a.Receipts.Recorded(id)); recorded {
					a.Receipts.SetRecorded(id)
				}
			}
			a.Receipts.Done(id)
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return n, errors.Join(errs...)
}

// nowText is the current instant in Italian legal time, for Details.
func (a *Acceptor) nowText() string {
	return pec.At(a.Now()).Time().Format(time.RFC3339)
}
