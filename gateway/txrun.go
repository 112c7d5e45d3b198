package gateway

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/pecgw/pecgw/dedup"
	"github.com/pecgw/pecgw/delivery"
	"github.com/pecgw/pecgw/logstore"
)

// txn is one acceptance transaction as its driver (the session, a retry,
// the periodic run, the reconciliation) moves it through the table.
type txn struct {
	id    string // the PEC identifier
	state logstore.TxState
	// rec is what every record of the transaction copies: the
	// busta-trasporto record, with the transaction's time reference (DM 2
	// novembre 2005 art. 9).
	rec logstore.Record
	key *logstore.DedupKey // nil: no deduplication (no client Message-ID)
	// claim is the session's dedup claim; nil after a restart.
	claim *dedupTx
	// holdLess: on_error = accept went on without a hold before the
	// hand-off (ensure hold takes one).
	holdLess bool
	// entry is the spooled receipt once read; mark its spool mark, ""
	// when none is spooled (known after a restart, and in the periodic run).
	entry *delivery.SpoolEntry
	mark  delivery.SpoolState
	// base is what every record of the session's transaction says first
	// (a Message-ID accepted before with other content); note what the next
	// record adds to its event: how a receipt came to be delivered, what
	// the reconciliation found. Both for people only.
	base, note string
	// err is the failure that led to the event; it ends the detail.
	err error
	// unsettled: an action after the record (or of a re-assertion) could
	// not be done; the periodic run and the next start redo it.
	unsettled bool
	// delivered: deliver receipt handed the receipt off (not only found
	// it in the sender's mailbox).
	delivered bool
	// receiptSeq, receiptHash: the log position of the accettazione
	// record, which the acceptance receipt carries (pec.LogPositionField).
	receiptSeq  uint64
	receiptHash string
}

// causeText is what a record of the event says to people; the note and the
// error follow it. Nothing reads it back (the record's state and cause are
// what recovery reads).
var causeText = map[logstore.TxCause]string{
	logstore.CauseNotPrepared:       "transport envelope not handed off",
	logstore.CauseEnvelopeFailed:    "transport envelope not handed off",
	logstore.CauseEnvelopeUnknown:   "transport envelope hand-off outcome unknown (the next hop did not answer the end of DATA); acceptance receipt kept unconfirmed for the operator (pecgw spool confirm or reject)",
	logstore.CauseReceiptFailed:     "transport envelope handed off, acceptance receipt not delivered (kept for a later delivery)",
	logstore.CauseCommitFailed:      "transport envelope and acceptance receipt handed off; dedup commit failed (retried)",
	logstore.CauseRedelivered:       "acceptance receipt delivered late",
	logstore.CauseOperatorConfirmed: "the operator confirmed that the next hop received the transport envelope: acceptance receipt delivered late",
	logstore.CauseOperatorRejected:  "the operator found that the next hop did not receive the transport envelope: acceptance receipt dropped, the submission may be sent again",
	logstore.CauseCommittedLate:     "dedup commit made late",
	logstore.CauseFoundOut:          "reconciled after a restart: transport envelope handed off",
	logstore.CauseFoundCommitted:    "reconciled after a restart: transport envelope and acceptance receipt handed off (committed in the dedup store)",
	logstore.CauseFoundNotOut:       "reconciled after a restart: the transport envelope was not handed off",
	logstore.CauseFoundUnknown:      "reconciled after a restart: hand-off outcome unknown; acceptance receipt kept unconfirmed for the operator (pecgw spool confirm or reject)",
	logstore.CauseReceiptLost:       "no acceptance receipt kept: the submission is remembered with this identifier",
}

// apply moves t by event on through its row of the table: the actions
// before the record, the record of the new state, the actions after it.
// err: what had to succeed did not (an action, the record); t.state is
// unchanged. warn: best-effort actions that failed, and actions after
// the record that must be redone (t.unsettled); t.state moved on.
func (a *Acceptor) apply(ctx context.Context, t *txn, on logstore.TxCause) (warn, err error) {
	row, err := step(t.state, on)
	if err != nil {
		return nil, err
	}
	var warns []error
	// What failed without stopping the transition is redone by the new
	// state's re-assertion row, in the periodic run and at the next start
	// (t.unsettled); redo: every action after the record is so.
	run := func(list []action, redo bool) error {
		for _, act := range list {
			err := a.act(ctx, t, row, act)
			switch {
			case err == nil:
			case act.bestEffort() || redo,
				row.settle && (act == actAbandon || act == actHoldBack) && errors.Is(err, dedup.ErrUnavailable):
				t.unsettled = true
				warns = append(warns, fmt.Errorf("%s of %s: %w", act, t.id, err))
			default:
				return fmt.Errorf("%s of %s: %w", act, t.id, err)
			}
		}
		return nil
	}
	if row.settle {
		t.unsettled = false
	}
	if err := run(row.before, false); err != nil {
		return errors.Join(warns...), err
	}
	if row.log {
		if err := a.logState(ctx, t, row); err != nil {
			return errors.Join(warns...), err
		}
	}
	t.state, t.note = row.to, ""
	_ = run(row.after, true)
	return errors.Join(warns...), nil
}

// logState appends the record of row's new state: a copy of the
// transaction's busta-trasporto record with its time reference, the new
// state, the event and the detail. A session that ends must not keep it
// out of the log: only the write-ahead records (nothing handed off yet)
// follow the session's context. The written-ahead state appends
// busta-trasporto then accettazione; the seq and hash Append returned for
// the accettazione record are kept in t (receiptSeq, receiptHash): the
// acceptance receipt, signed after it, carries them (spoolReceipt).
func (a *Acceptor) logState(ctx context.Context, t *txn, row transition) error {
	rec := t.rec
	rec.Seq, rec.Prev, rec.DedupKey = 0, "", ""
	rec.State, rec.Cause, rec.Dedup = row.to, row.on, t.key
	rec.Detail = t.detail(row.on)
	if row.from != stNew {
		ctx = context.WithoutCancel(ctx)
	}
	// The records of one state (busta-trasporto and accettazione for
	// written-ahead) go in one group commit.
	types := row.to.Types()
	recs := make([]*logstore.Record, len(types))
	for i, typ := range types {
		r := rec
		r.Type = typ
		recs[i] = &r
	}
	seqs, hashes, err := a.Log.AppendAll(ctx, recs...)
	if err != nil {
		return fmt.Errorf("log the %s of %s: %w", recordNames(types), t.id, err)
	}
	for i, typ := range types {
		if typ == logstore.EventAccettazione {
			t.receiptSeq, t.receiptHash = seqs[i], hashes[i]
		}
	}
	return nil
}

// recordNames names the records of types for an error: "busta-trasporto
// and accettazione records".
func recordNames(types []logstore.Event) string {
	names := make([]string, len(types))
	for i, typ := range types {
		names[i] = string(typ)
	}
	if len(names) == 1 {
		return names[0] + " record"
	}
	return strings.Join(names, " and ") + " records"
}

// detail is what the record of event on says to people.
func (t *txn) detail(on logstore.TxCause) string {
	var parts []string
	for _, p := range []string{t.base, causeText[on], t.note} {
		if p != "" {
			parts = append(parts, p)
		}
	}
	d := strings.Join(parts, "; ")
	if t.err != nil {
		d += ": " + t.err.Error()
	}
	return d
}

// act does one action of a row for t.
func (a *Acceptor) act(ctx context.Context, t *txn, row transition, act action) error {
	ctx = context.WithoutCancel(ctx)
	switch act {
	case actUnspool:
		if err := a.Receipts.Remove(t.id); err != nil {
			return err
		}
		t.entry, t.mark = nil, ""
		return nil
	case actMarkOut:
		return a.Receipts.Mark(t.id, delivery.SpoolOut)
	case actMarkUnconfirmed:
		return a.markUnconfirmed(t)
	case actDeliverReceipt:
		return a.deliverSpooled(ctx, t)
	case actRelease:
		a.release(ctx, t)
		return nil
	case actEnsureHold:
		return a.ensureHold(ctx, t)
	case actCommitLater:
		if t.claim != nil {
			go a.retryLater(func() error { return a.commitKey(context.Background(), t.claim, t.id) })
		}
		return nil
	}
	if t.key == nil || a.Dedup == nil {
		return nil
	}
	switch act {
	case actRemember:
		return a.Dedup.Remember(ctx, t.key.ID, t.key.FP, t.id, a.window())
	case actAbandon:
		return a.Dedup.Abandon(ctx, t.key.ID, t.id)
	case actHoldBack:
		return a.Dedup.Hold(ctx, t.key.ID, t.key.FP, t.id, a.window())
	case actRefuseIfCommitted:
		tr, err := a.Dedup.Trace(ctx, t.key.ID, t.key.FP, t.id)
		if err != nil {
			return err
		}
		if tr == dedup.TraceCommitted {
			return fmt.Errorf("the submission is committed with this identifier and its retries are answered with it; cannot reject")
		}
		return nil
	}
	return fmt.Errorf("unknown action %d in %s on %s", act, stateName(row.from), row.on)
}

// window is how long an accepted submission is remembered.
func (a *Acceptor) window() time.Duration { return durationOr(a.DedupWindow, 7*24*time.Hour) }

// spooled reads t's spool entry once; nil when there is none.
func (a *Acceptor) spooled(t *txn) (*delivery.SpoolEntry, error) {
	if t.entry != nil {
		return t.entry, nil
	}
	e, err := a.Receipts.Get(t.id)
	if errors.Is(err, fs.ErrNotExist) {
		t.mark = ""
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if e.ID != t.id {
		return nil, fmt.Errorf("spooled receipt %s: entry of %s", t.id, e.ID)
	}
	t.entry, t.mark = e, e.State
	return e, nil
}

// markUnconfirmed marks t's spooled receipt unconfirmed unless it is
// already, or the operator decided on it (pecgw spool may be renaming it
// at this moment: never undo a decision).
func (a *Acceptor) markUnconfirmed(t *txn) error {
	e, err := a.spooled(t)
	if err != nil || e == nil {
		return err
	}
	switch e.State {
	case delivery.SpoolPending, delivery.SpoolOut:
	default:
		return nil
	}
	if err := a.Receipts.Mark(t.id, delivery.SpoolUnconfirmed); err != nil {
		return err
	}
	e.State, t.mark = delivery.SpoolUnconfirmed, delivery.SpoolUnconfirmed
	return nil
}

// deliverSpooled hands the spooled receipt of t off (signed at the
// transaction's instant: it is never signed again) to the recipients
// whose mailbox does not hold it yet, when the mailboxes can tell (a
// crash may have come after it was written; over LMTP it may then be
// delivered twice, rather than never).
func (a *Acceptor) deliverSpooled(ctx context.Context, t *txn) error {
	e, err := a.spooled(t)
	if err != nil {
		return err
	}
	if e == nil {
		return fmt.Errorf("no acceptance receipt of %s in the spool", t.id)
	}
	m := e.Message()
	if mf, ok := a.Mailboxes.(delivery.MailboxFinder); ok && t.rec.Generated != nil && t.rec.Generated.Receipt != "" {
		var rest []string
		for _, r := range m.ForwardPaths {
			has, err := mf.HasMessageFor(r, t.rec.Generated.Receipt)
			if err != nil {
				return err
			}
			if !has {
				rest = append(rest, r)
			}
		}
		m.ForwardPaths = rest
	}
	if len(m.ForwardPaths) == 0 {
		t.note = joinNote(t.note, "the acceptance receipt was found in the sender's mailbox")
		return nil
	}
	if err := a.Mailboxes.Deliver(ctx, m); err != nil {
		return fmt.Errorf("acceptance receipt of %s not delivered: %w", t.id, err)
	}
	t.delivered = true
	return nil
}

func joinNote(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}
