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

// Details of the records Reconcile appends; each is followed by what
// became of the receipt and the instant the reconciliation ran.
const (
	reconciledFound = "reconciled after a restart: envelope found in outbound"
	// reconciledSpooledOut: the receipt spool recorded that the envelope
	// was out (its receipt's hand-off had failed).
	reconciledSpooledOut = "reconciled after a restart: envelope handed off (as the receipt spool recorded)"
	// reconciledNoReceipt follows the handed-off Detail when no receipt
	// was spooled (no spool configured), so none could be delivered.
	reconciledNoReceipt = ", receipt delivery not confirmed"
	reconciledNotFound  = "reconciled after a restart: the envelope was not handed off"
	// reconciledNoHold: the shared dedup store has no hold of the
	// transaction, which it takes before the envelope hand-off.
	reconciledNoHold  = "reconciled after a restart: the envelope was not handed off (no dedup hold was taken)"
	reconciledUnknown = "reconciled after a restart: hand-off outcome unknown (next-hop SMTP)"
	// reconciledCommitted: the dedup store has the submission committed
	// with this identifier, which happens only once envelope and receipt
	// are out.
	reconciledCommitted = "reconciled after a restart: envelope and acceptance receipt handed off (committed in the dedup store)"
)

// Report counts what Reconcile found.
type Report struct {
	// Incomplete transactions: a busta-trasporto record with neither a
	// handed-off nor an aborted one.
	Incomplete int
	// Found: the envelope is out (in the outbound maildir, or recorded
	// so by the receipt spool); now handed-off.
	Found int
	// NotFound: the envelope is not in the outbound maildir, or the
	// shared dedup store shows the transaction never took its hold; now
	// aborted.
	NotFound int
	// Unknown: the outbound target cannot be searched (next-hop SMTP) and
	// nothing else tells; now aborted, its hold kept and its receipt
	// unconfirmed for the operator (pecgw spool confirm|reject), or, with
	// no receipt kept, remembered by the dedup store.
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
	// DedupUnsettled: holds of transactions aborted before their
	// hand-off that could not be dropped, the store being unreachable;
	// their retries get 451 until a later start drops them.
	DedupUnsettled int
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
	// DedupFailOpen is dedup.on_error = "accept": an envelope may then
	// have gone out without a hold, so a missing hold proves nothing.
	DedupFailOpen bool
}

// fate is what is known of an envelope's hand-off.
type fate int

const (
	fateUnknown fate = iota
	fateOut
	fateNotOut
)

// Reconcile completes, at start and before any listener, the acceptance
// transactions that a crash (or a failure) left half done, so that a
// client's retry gets the right answer: the original identifier when the
// envelope went out (never a second envelope, invariant 3 of
// ARCHITECTURE.md), a new certification when it did not, and never a 250
// before the receipt is out (invariant 1).
//
// It reads the records of the last window from the log. For each
// transaction logged as emitted (busta-trasporto) but neither handed-off
// nor aborted, it finds out whether the envelope went out: the receipt
// spool says so (<id>.out), or outbound is a delivery.Finder (maildir)
// and holds it or not, or the store is a shared Redis without a hold of
// the transaction (taken before any hand-off, so: not out); otherwise the
// outcome is unknown (next-hop SMTP). Then:
//
//   - out: its spooled receipt is delivered (unless the sender's mailbox
//     has it already), the store remembers the submission (dedup_key)
//     with its PEC identifier, dropping the hold, and a handed-off record
//     is appended;
//   - not out: the spooled receipt is dropped, the store abandons the
//     hold, an aborted record is appended, and a retry is certified as
//     new;
//   - unknown: the transaction's hold is kept (put back), an aborted
//     record says the outcome is unknown, and the spooled receipt is kept
//     as unconfirmed for the operator (pecgw spool confirm|reject): a
//     retry waits meanwhile, and pecgw never certifies the acceptance of
//     an envelope it cannot show was sent. Without a spooled receipt the
//     store remembers the submission instead (at most one envelope).
//
// Then every other spooled receipt is resolved the same way, and the
// dedup state of completed transactions is settled: the hold of one
// aborted before its hand-off is abandoned (its release may have been
// lost), one whose commit failed is remembered.
//
// The store and the receipt are dealt with before the record, so that a
// failure leaves the transaction incomplete for the next start. Appended
// records copy the busta-trasporto record, including its time: the time
// reference is the transaction's (DM 2 novembre 2005 art. 9); when the
// reconciliation ran is in Detail. Running Reconcile again appends
// nothing. A store nil or records without dedup_key (no client
// Message-ID) remember nothing.
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
	// within: b's transaction is recent enough for the dedup store to
	// still hold what it wrote (the window, less a margin for clocks).
	within := func(b *logstore.Record) bool {
		t, err := time.Parse(time.RFC3339, b.Time)
		return err == nil && t.After(in.Now.Add(-window+time.Hour))
	}
	// envelopeFate: whether the envelope of the transaction b (its
	// busta-trasporto record, or the record its receipt was spooled
	// with) went out, the Detail that says how it is known, and whether
	// its receipt is known to be out too.
	envelopeFate := func(b *logstore.Record, e *delivery.SpoolEntry) (f fate, detail string, receiptOut bool, err error) {
		if e != nil {
			switch e.State {
			case delivery.SpoolOut, delivery.SpoolConfirmed:
				return fateOut, reconciledSpooledOut, false, nil
			case delivery.SpoolRejected:
				return fateNotOut, reconciledNotFound, false, nil
			case delivery.SpoolUnconfirmed:
				// The next hop did not answer; the crash came before
				// the abort record. Still the operator's to decide.
				return fateUnknown, reconciledUnknown, false, nil
			}
		}
		trace := dedup.TraceUnknown
		if id, fp, ok := splitDedupKey(b.DedupKey); ok && in.Store != nil {
			if trace, err = in.Store.Trace(ctx, id, fp, b.PECID); err != nil {
				return fateUnknown, "", false, err
			}
		}
		switch {
		case trace == dedup.TraceCommitted && e != nil:
			// With its receipt still spooled, a transaction commits only
			// once envelope and receipt are out (a commit without an
			// entry may be a receipt failure's or an unknown outcome's,
			// when no receipt could be kept).
			return fateOut, reconciledCommitted, true, nil
		case finder != nil:
			envID := b.PECID
			if b.Generated != nil && b.Generated.Envelope != "" {
				envID = b.Generated.Envelope
			}
			found, err := finder.HasMessage(envID)
			if err != nil || !found {
				return fateNotOut, reconciledNotFound, false, err
			}
			return fateOut, reconciledFound, false, nil
		case trace == dedup.TraceNone && !in.DedupFailOpen && within(b):
			// Every envelope is handed off under a hold (unless
			// on_error = accept), and Redis keeps it for the window.
			return fateNotOut, reconciledNoHold, false, nil
		}
		return fateUnknown, reconciledUnknown, false, nil
	}
	// spooled returns the spool entry of id, nil when there is none.
	spooled := func(id string) (*delivery.SpoolEntry, error) {
		if in.Receipts == nil {
			return nil, nil
		}
		e, err := in.Receipts.Get(id)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return e, err
	}

	resolved := map[string]bool{} // spool entries dealt with in the first pass
	for _, id := range order {
		st := txs[id]
		if st.busta == nil || st.done {
			continue
		}
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		rep.Incomplete++
		resolved[id] = true
		b := st.busta
		e, err := spooled(id)
		if err != nil {
			return rep, fmt.Errorf("reconcile %s: %w", id, err)
		}
		f, detail, receiptOut, err := envelopeFate(b, e)
		if err != nil {
			return rep, fmt.Errorf("reconcile %s: %w", id, err)
		}
		typ := logstore.EventAborted
		switch f {
		case fateOut:
			typ = logstore.EventHandedOff
			rep.Found++
			if receiptOut {
				if e != nil {
					if err := in.Receipts.Remove(id); err != nil {
						return rep, fmt.Errorf("reconcile %s: %w", id, err)
					}
					e = nil
				}
				break
			}
			if e == nil {
				detail += reconciledNoReceipt
				break
			}
			rec, err := deliverSpooled(ctx, in.Mailboxes, e, howSettled(e, ""))
			if err != nil {
				return rep, fmt.Errorf("reconcile %s: %w", id, err)
			}
			detail += "; " + strings.TrimSpace(rec.Detail)
			rep.Receipts++
		case fateNotOut:
			rep.NotFound++
			if e != nil {
				if err := in.Receipts.Remove(id); err != nil {
					return rep, fmt.Errorf("reconcile %s: %w", id, err)
				}
				rep.ReceiptsDropped++
			}
		default:
			rep.Unknown++
			if e == nil {
				// Nothing for the operator to confirm or reject: a hold
				// would block the submission for the window.
				detail += "; no receipt kept: the submission is remembered with this identifier"
				break
			}
			if e.State != delivery.SpoolUnconfirmed { // pecgw spool may be renaming it
				if err := in.Receipts.Mark(id, delivery.SpoolUnconfirmed); err != nil {
					return rep, fmt.Errorf("reconcile %s: %w", id, err)
				}
			}
			detail += "; acceptance receipt kept unconfirmed"
			rep.ReceiptsUnconfirmed++
		}
		if dk, fp, ok := splitDedupKey(b.DedupKey); ok && in.Store != nil {
			// The transaction's hold (dedup.Store.Prepare), if it took
			// one, is resolved: committed when the envelope is out,
			// dropped when not; kept (put back) when unknown, so that a
			// retry waits for the operator on every instance.
			var err error
			switch {
			case f == fateOut:
				err = in.Store.Remember(ctx, dk, fp, b.PECID, window)
				rep.Remembered++
			case f == fateNotOut:
				err = in.Store.Abandon(ctx, dk, b.PECID)
			case e == nil:
				err = in.Store.Remember(ctx, dk, fp, b.PECID, window)
				rep.Remembered++
			default:
				err = in.Store.Hold(ctx, dk, fp, b.PECID, window)
			}
			if err != nil {
				return rep, fmt.Errorf("reconcile %s: dedup: %w", b.PECID, err)
			}
		}
		rec := reconciledRecord(b, typ, detail+"; reconciliation ran at "+ran)
		if _, _, err := in.Log.Append(ctx, &rec); err != nil {
			return rep, fmt.Errorf("reconcile %s: log: %w", b.PECID, err)
		}
		if f == fateOut && e != nil {
			if err := in.Receipts.Remove(id); err != nil {
				return rep, fmt.Errorf("reconcile %s: %w", id, err)
			}
		}
	}

	// The other spooled receipts: of completed transactions (a removal
	// lost in a crash), or of transactions whose receipt hand-off failed
	// after the envelope went out.
	if in.Receipts != nil {
		_, ids, err := in.Receipts.List()
		if err != nil {
			return rep, fmt.Errorf("reconcile: %w", err)
		}
		for _, id := range ids {
			if resolved[id] {
				continue
			}
			if err := ctx.Err(); err != nil {
				return rep, err
			}
			st := txs[id]
			if st == nil {
				// Older than the window, or never logged: read its records.
				if st, err = txStateOf(in.LogDir, id); err != nil {
					return rep, fmt.Errorf("reconcile %s: read the log: %w", id, err)
				}
			}
			e, err := in.Receipts.Get(id)
			if err != nil {
				return rep, fmt.Errorf("reconcile: %w", err)
			}
			switch e.State {
			case delivery.SpoolUnconfirmed:
				// Waiting for the operator, however old: its hold is put
				// back (the embedded store forgets holds; Redis expires
				// them with the window).
				var rec logstore.Record
				if err := json.Unmarshal(e.Record, &rec); err != nil {
					return rep, fmt.Errorf("reconcile: spooled receipt %s: %w", id, err)
				}
				if dk, fp, ok := splitDedupKey(rec.DedupKey); ok && in.Store != nil {
					if err := in.Store.Hold(ctx, dk, fp, id, window); errors.Is(err, dedup.ErrUnavailable) {
						rep.DedupUnsettled++
					} else if err != nil {
						return rep, fmt.Errorf("reconcile %s: dedup: %w", id, err)
					}
				}
				continue
			case delivery.SpoolConfirmed:
				if st.receiptOut {
					// Delivered and logged already; only the removal
					// did not happen.
					if err := in.Receipts.Remove(id); err != nil {
						return rep, fmt.Errorf("reconcile %s: %w", id, err)
					}
					continue
				}
				if _, err := settleReceipt(ctx, in.Log, in.Mailboxes, in.Store, in.Receipts, e, howSettled(e, "by the reconciliation at "+ran), window); err != nil {
					return rep, fmt.Errorf("reconcile %s: %w", id, err)
				}
				rep.Receipts++
				continue
			case delivery.SpoolRejected:
				recorded, err := rejectSpooled(ctx, in.Log, in.Store, in.Receipts, e, ran, st.rejected)
				switch {
				case errors.Is(err, dedup.ErrUnavailable) && recorded:
					rep.DedupUnsettled++ // the entry stays; tried again next time
				case err != nil:
					return rep, fmt.Errorf("reconcile %s: %w", id, err)
				case !st.rejected:
					rep.ReceiptsDropped++
				}
				st.notOut, st.rejected = true, true // for the dedup step below
				continue
			}
			f := fateUnknown
			switch {
			case st.unknown && !st.receiptOut && !st.notOut:
				f = fateUnknown // the next hop did not answer: the operator's
			case st.busta == nil:
				// The spool entry is written alongside the write-ahead
				// records and the envelope handed off only after both: no
				// busta-trasporto record, no envelope (invariant 2).
				f = fateNotOut
			case st.receiptOut, st.notOut:
				f = fateNotOut // nothing to deliver: drop the entry
			case st.receiptOwed:
				f = fateOut
			default:
				var rec logstore.Record
				if err := json.Unmarshal(e.Record, &rec); err != nil {
					return rep, fmt.Errorf("reconcile: spooled receipt %s: %w", id, err)
				}
				if f, _, _, err = envelopeFate(&rec, e); err != nil {
					return rep, fmt.Errorf("reconcile %s: %w", id, err)
				}
			}
			switch f {
			case fateOut:
				if _, err := settleReceipt(ctx, in.Log, in.Mailboxes, in.Store, in.Receipts, e, "by the reconciliation at "+ran, window); err != nil {
					return rep, fmt.Errorf("reconcile %s: %w", id, err)
				}
				rep.Receipts++
			case fateNotOut:
				if err := in.Receipts.Remove(id); err != nil {
					return rep, fmt.Errorf("reconcile %s: %w", id, err)
				}
				rep.ReceiptsDropped++
			default:
				if err := in.Receipts.Mark(id, delivery.SpoolUnconfirmed); err != nil {
					return rep, fmt.Errorf("reconcile %s: %w", id, err)
				}
				rep.ReceiptsUnconfirmed++
			}
		}
	}

	// The dedup state of completed transactions, which their process
	// may not have settled: a release after a failed hand-off, a commit
	// after a successful one, both retried in the background only while
	// the process lived. Both are idempotent.
	if in.Store != nil {
		for _, id := range order {
			st := txs[id]
			if st.busta == nil || !st.done {
				continue
			}
			dk, fp, ok := splitDedupKey(st.busta.DedupKey)
			if !ok {
				continue
			}
			var err error
			switch {
			case st.notOut:
				err = in.Store.Abandon(ctx, dk, id)
			case st.commitOwed:
				err = in.Store.Remember(ctx, dk, fp, id, window)
			case st.unknown && !st.receiptOut:
				// Put back at every start: the embedded store forgets
				// holds with its process.
				err = in.Store.Hold(ctx, dk, fp, id, window)
			}
			switch {
			case errors.Is(err, dedup.ErrUnavailable) && !st.commitOwed:
				// A hold left to expire is no danger (a retry meanwhile
				// gets 451): tried again at the next start. A commit is:
				// with the embedded store the hold died with the process,
				// and only the commit stops a second envelope.
				rep.DedupUnsettled++
			case err != nil:
				return rep, fmt.Errorf("reconcile %s: dedup: %w", id, err)
			}
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
	// notOut: an aborted record says the envelope was not handed off
	// (or the operator found it was not received).
	notOut bool
	// unknown: an aborted record says the envelope's fate is unknown.
	unknown bool
	// rejected: the operator's rejection is logged.
	rejected bool
	// commitOwed: a record says the dedup commit failed.
	commitOwed bool
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
		if strings.Contains(r.Detail, dedupCommitFailed) {
			st.commitOwed = true
		}
	case logstore.EventAborted:
		st.done = true
		if strings.Contains(r.Detail, dedupCommitFailed) {
			st.commitOwed = true
		}
		switch {
		case strings.HasPrefix(r.Detail, abortReceiptNotDelivered):
			st.receiptOwed = true
		case strings.HasPrefix(r.Detail, operatorRejected):
			st.notOut, st.rejected = true, true
		case strings.Contains(r.Detail, notHandedOff), strings.HasPrefix(r.Detail, reconciledNotFound):
			st.notOut = true
		case strings.HasPrefix(r.Detail, abortOutcomeUnknown), strings.HasPrefix(r.Detail, reconciledUnknown):
			st.unknown = true
		}
	}
}

// txStateOf reads the records of transaction id from the whole log.
func txStateOf(logDir, id string) (*txState, error) {
	st := &txState{}
	err := logstore.Query(logDir, logstore.Filter{PECID: id}, func(h logstore.Hit) error {
		if h.Record.PECID == id {
			st.add(h.Record)
		}
		return nil
	})
	return st, err
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
