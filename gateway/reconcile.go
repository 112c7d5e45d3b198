package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
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
	reconciledFound = "reconciled after a restart: envelope found in outbound"
	// reconciledNoReceipt follows reconciledFound when no receipt was
	// spooled (no spool, or a crash before the spool entry was written,
	// which is before the envelope hand-off: not the case of a found
	// envelope unless the spool was added meanwhile).
	reconciledNoReceipt = ", receipt delivery not confirmed"
	reconciledNotFound  = "reconciled after a restart: the envelope was not handed off"
	reconciledUnknown   = "reconciled after a restart: hand-off outcome unknown (next-hop SMTP)"
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
	// Receipts: spooled acceptance receipts delivered (or found already
	// in the sender's mailbox) for envelopes that are out.
	Receipts int
	// ReceiptsDropped: spooled receipts removed, their envelope not out
	// or their transaction completed.
	ReceiptsDropped int
	// ReceiptsUnconfirmed: spooled receipts whose envelope's fate is
	// unknown (next-hop SMTP), kept as <id>.unconfirmed for the operator.
	ReceiptsUnconfirmed int
}

// ReconcileInput is what Reconcile works on: the node's log, dedup store,
// targets and receipt spool, as pecgw serve opened them.
type ReconcileInput struct {
	LogDir    string
	Log       TransactionLog
	Store     dedup.Store     // nil: no deduplication
	Outbound  delivery.Target // a delivery.Finder (maildir) can say whether an envelope is out
	Mailboxes delivery.Target
	Receipts  ReceiptSpool  // nil: no spool
	Window    time.Duration // how far back to read the log (the dedup window; 7 days when 0)
	Now       time.Time
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
// It reads the records of the last window from the log, and for each
// incomplete transaction:
//
//   - outbound is a delivery.Finder and holds the envelope: its spooled
//     receipt is delivered (unless the sender's mailbox has it already),
//     the store remembers the submission (dedup_key) with its PEC
//     identifier and a handed-off record is appended;
//   - outbound is a Finder without the envelope: the spooled receipt is
//     dropped, the store abandons the transaction's hold, an aborted
//     record is appended, and a retry is certified as new;
//   - outbound cannot be searched (next-hop SMTP): the store remembers
//     the submission, an aborted record says the outcome is unknown, and
//     the spooled receipt is kept as unconfirmed: pecgw never certifies
//     the acceptance of an envelope it cannot show was sent.
//
// Then every other spooled receipt is resolved the same way: delivered
// when its envelope is out (marked so by a failed receipt hand-off, or
// found in outbound), dropped when its transaction completed or its
// envelope is not out.
//
// The store and the receipt are dealt with before the record, so that a
// failure leaves the transaction incomplete for the next start. Appended
// records copy the busta-trasporto record, including its time: the time
// reference is the transaction's (DM 2 novembre 2005 art. 9); when the
// reconciliation ran is in Detail. Running Reconcile again finds nothing
// to do. A store nil or records without dedup_key (no client Message-ID)
// remember nothing.
func Reconcile(ctx context.Context, in ReconcileInput) (Report, error) {
	var rep Report
	window := durationOr(in.Window, 7*24*time.Hour)
	txs := map[string]*txState{}
	var order []string
	err := logstore.Query(in.LogDir, logstore.Filter{From: in.Now.Add(-window)}, func(h logstore.Hit) error {
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
		st.add(r)
		return nil
	})
	if err != nil {
		return rep, fmt.Errorf("reconcile: read the log: %w", err)
	}
	finder, _ := in.Outbound.(delivery.Finder)
	ran := pec.At(in.Now).Time().Format(time.RFC3339)
	// envelopeOut: whether the envelope of b is in outbound (Finder only).
	envelopeOut := func(b *logstore.Record) (bool, error) {
		envID := b.PECID
		if b.Generated != nil && b.Generated.Envelope != "" {
			envID = b.Generated.Envelope
		}
		return finder.HasMessage(envID)
	}
	resolved := map[string]bool{} // spool entries dealt with below
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
			found, err := envelopeOut(b)
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
		if in.Receipts != nil {
			resolved[id] = true
			e, err := in.Receipts.Get(id)
			switch {
			case errors.Is(err, fs.ErrNotExist):
				if typ == logstore.EventHandedOff {
					detail += reconciledNoReceipt
				}
			case err != nil:
				return rep, fmt.Errorf("reconcile %s: %w", id, err)
			case typ == logstore.EventHandedOff:
				rec, err := deliverSpooled(ctx, in.Mailboxes, e, "")
				if err != nil {
					return rep, fmt.Errorf("reconcile %s: %w", id, err)
				}
				detail += "; " + strings.TrimSpace(rec.Detail)
				rep.Receipts++
			case detail == reconciledUnknown:
				if err := in.Receipts.Mark(id, delivery.SpoolUnconfirmed); err != nil {
					return rep, fmt.Errorf("reconcile %s: %w", id, err)
				}
				detail += "; acceptance receipt kept unconfirmed"
				rep.ReceiptsUnconfirmed++
			default:
				if err := in.Receipts.Remove(id); err != nil {
					return rep, fmt.Errorf("reconcile %s: %w", id, err)
				}
				rep.ReceiptsDropped++
			}
		} else if typ == logstore.EventHandedOff {
			detail += reconciledNoReceipt
		}
		if dk, fp, ok := splitDedupKey(b.DedupKey); ok && in.Store != nil {
			// Either way the transaction's hold (dedup.Store.Prepare), if
			// it took one, is resolved: a shared store's other instances
			// answer the retry 451 until this is done.
			if remember {
				if err := in.Store.Remember(ctx, dk, fp, b.PECID, window); err != nil {
					return rep, fmt.Errorf("reconcile %s: dedup: %w", b.PECID, err)
				}
				rep.Remembered++
			} else if err := in.Store.Abandon(ctx, dk, b.PECID); err != nil {
				return rep, fmt.Errorf("reconcile %s: dedup: %w", b.PECID, err)
			}
		}
		rec := reconciledRecord(b, typ, detail+"; reconciliation ran at "+ran)
		if _, _, err := in.Log.Append(ctx, &rec); err != nil {
			return rep, fmt.Errorf("reconcile %s: log: %w", b.PECID, err)
		}
		if typ == logstore.EventHandedOff && in.Receipts != nil {
			if err := in.Receipts.Remove(id); err != nil {
				return rep, fmt.Errorf("reconcile %s: %w", id, err)
			}
		}
	}
	if in.Receipts == nil {
		return rep, nil
	}
	// The other spooled receipts: of transactions that completed, or
	// whose receipt hand-off failed after the envelope went out.
	states, ids, err := in.Receipts.List()
	if err != nil {
		return rep, fmt.Errorf("reconcile: %w", err)
	}
	for _, id := range ids {
		if resolved[id] || states[id] == delivery.SpoolUnconfirmed {
			continue
		}
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		st := txs[id]
		if st == nil {
			// Older than the window, or never logged: read its records.
			st = &txState{}
			err := logstore.Query(in.LogDir, logstore.Filter{PECID: id}, func(h logstore.Hit) error {
				if h.Record.PECID == id {
					st.add(h.Record)
				}
				return nil
			})
			if err != nil {
				return rep, fmt.Errorf("reconcile %s: read the log: %w", id, err)
			}
		}
		e, err := in.Receipts.Get(id)
		if err != nil {
			return rep, fmt.Errorf("reconcile: %w", err)
		}
		var out, known bool
		switch {
		case st.busta == nil:
			// The spool entry is written alongside the write-ahead
			// records, and the envelope handed off only after both: no
			// busta-trasporto record, no envelope (invariant 2).
			out, known = false, true
		case st.receiptOut:
			out, known = false, true // delivered already: drop
		case e.State == delivery.SpoolOut || st.receiptOwed:
			out, known = true, true
		case finder != nil:
			var rec logstore.Record
			if err := json.Unmarshal(e.Record, &rec); err != nil {
				return rep, fmt.Errorf("reconcile: spooled receipt %s: %w", id, err)
			}
			found, err := envelopeOut(&rec)
			if err != nil {
				return rep, fmt.Errorf("reconcile %s: %w", id, err)
			}
			out, known = found, true
		}
		switch {
		case !known:
			if err := in.Receipts.Mark(id, delivery.SpoolUnconfirmed); err != nil {
				return rep, fmt.Errorf("reconcile %s: %w", id, err)
			}
			rep.ReceiptsUnconfirmed++
		case out:
			rec, err := deliverSpooled(ctx, in.Mailboxes, e, "by the reconciliation at "+ran)
			if err != nil {
				return rep, fmt.Errorf("reconcile %s: %w", id, err)
			}
			if _, _, err := in.Log.Append(ctx, rec); err != nil {
				return rep, fmt.Errorf("reconcile %s: log: %w", id, err)
			}
			if err := in.Receipts.Remove(id); err != nil {
				return rep, fmt.Errorf("reconcile %s: %w", id, err)
			}
			rep.Receipts++
		default:
			if err := in.Receipts.Remove(id); err != nil {
				return rep, fmt.Errorf("reconcile %s: %w", id, err)
			}
			rep.ReceiptsDropped++
		}
	}
	return rep, nil
}

// txState is what the log says of one transaction.
type txState struct {
	busta *logstore.Record
	done  bool // a handed-off or aborted record
	// receiptOut: a handed-off record says the receipt went out (all but
	// a reconciliation's that could not confirm it).
	receiptOut bool
	// receiptOwed: an aborted record says the envelope went out and the
	// receipt did not.
	receiptOwed bool
}

// add takes one record of the transaction into account.
func (st *txState) add(r *logstore.Record) {
	switch r.Type {
	case logstore.EventBustaTrasporto:
		if st.busta == nil {
			c := *r
			st.busta = &c
		}
	case logstore.EventHandedOff:
		st.done = true
		if !strings.Contains(r.Detail, reconciledNoReceipt) {
			st.receiptOut = true
		}
	case logstore.EventAborted:
		st.done = true
		if strings.HasPrefix(r.Detail, abortReceiptNotDelivered) {
			st.receiptOwed = true
		}
	}
}

// reconciledRecord copies the busta-trasporto record b as a record of
// type typ, with its time reference (DM 2 novembre 2005 art. 9).
func reconciledRecord(b *logstore.Record, typ logstore.Event, detail string) logstore.Record {
	return logstore.Record{
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
		Detail:     detail,
	}
}

// splitDedupKey splits a record's dedup_key, "<Key.ID()> <Key.Fingerprint()>".
func splitDedupKey(s string) (id, fp string, ok bool) {
	id, fp, ok = strings.Cut(strings.TrimSpace(s), " ")
	if !ok || id == "" || fp == "" || strings.Contains(fp, " ") {
		return "", "", false
	}
	return id, fp, true
}
