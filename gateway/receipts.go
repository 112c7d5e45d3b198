package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/pecgw/pecgw/delivery"
	"github.com/pecgw/pecgw/logstore"
	"github.com/pecgw/pecgw/pec"
)

// Late delivery of acceptance receipts. The receipt of a transaction is
// spooled (delivery.Spool) before its envelope is handed off; when the
// process dies, or the receipt's hand-off fails, after the envelope went
// out, the spooled receipt (signed at the transaction's instant, DM 2
// novembre 2005 art. 9) is delivered later rather than lost:
//
//   - by Reconcile at the next start, for transactions a crash cut;
//   - on the client's retry, which is answered 250 only once the receipt
//     is out (ARCHITECTURE.md invariant 1), 451 while it cannot be;
//   - by RedeliverReceipts, which pecgw serve runs every minute, for a
//     client that retried on another instance or gave up.
//
// Each late delivery appends a handed-off record with the transaction's
// fields and time reference; Detail says how and when.

// ReceiptSpool keeps receipts until they are handed off (delivery.Spool).
type ReceiptSpool interface {
	Put(e *delivery.SpoolEntry) error
	Done(id string)
	Claim(id string) bool
	Get(id string) (*delivery.SpoolEntry, error)
	Mark(id string, st delivery.SpoolState) error
	Remove(id string) error
	List() (map[string]delivery.SpoolState, []string, error)
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

// redeliver delivers the spooled receipt of pecID when its envelope is
// known to be out (the entry is marked so), logs it and removes the
// entry. No entry, or one of another state, is nothing to do. A
// transaction or another redelivery holding the entry gives ErrInFlight.
func (a *Acceptor) redeliver(ctx context.Context, pecID, how string) (bool, error) {
	if a.Receipts == nil {
		return false, nil
	}
	if !a.Receipts.Claim(pecID) {
		return false, &InFlightError{}
	}
	defer a.Receipts.Done(pecID)
	e, err := a.Receipts.Get(pecID)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if e.State != delivery.SpoolOut {
		// pending: a crash's, resolved by Reconcile at start, or a
		// leftover of a completed transaction; unconfirmed: the
		// operator's.
		return false, nil
	}
	rec, err := deliverSpooled(ctx, a.Mailboxes, e, how)
	if err != nil {
		return false, err
	}
	if _, _, err := a.Log.Append(context.WithoutCancel(ctx), rec); err != nil {
		return false, fmt.Errorf("log the late hand-off of %s: %w", pecID, err)
	}
	if err := a.Receipts.Remove(pecID); err != nil {
		return true, fmt.Errorf("remove the spooled receipt of %s: %w", pecID, err)
	}
	return true, nil
}

// RedeliverReceipts delivers every spooled receipt whose envelope is known
// to be out and which no transaction of this process holds. It returns
// how many were delivered, and the errors of those that were not (they
// are tried again next time).
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
		if states[id] != delivery.SpoolOut || ctx.Err() != nil {
			continue
		}
		ok, err := a.redeliver(ctx, id, "by the periodic redelivery at "+a.nowText())
		if err != nil && !errors.Is(err, ErrInFlight) {
			errs = append(errs, err)
		}
		if ok {
			n++
		}
	}
	return n, errors.Join(errs...)
}

// nowText is the current instant in Italian legal time, for Details.
func (a *Acceptor) nowText() string {
	return pec.At(a.Now()).Time().Format(time.RFC3339)
}
