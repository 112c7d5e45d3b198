package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/pecgw/pecgw/dedup"
	"github.com/pecgw/pecgw/delivery"
	"github.com/pecgw/pecgw/logstore"
	"github.com/pecgw/pecgw/pec"
	"github.com/pecgw/pecgw/signer"
)

// Signer signs a MIME entity at the transaction's instant (signer.Signer).
type Signer interface {
	Sign(content []byte, at time.Time) ([]byte, error)
}

// TransactionLog is the legal log (logstore.Log): Append returns when the
// record is on disk, AppendAll when all of its records are, written in
// one group commit.
type TransactionLog interface {
	Append(ctx context.Context, r *logstore.Record) (seq uint64, hash string, err error)
	AppendAll(ctx context.Context, recs ...*logstore.Record) (seqs []uint64, hashes []string, err error)
}

// Acceptor runs the acceptance transaction of the access point (RFC 6109
// §3.1; docs/architecture.md): inspect, one time reference and PEC
// identifier, build, sign, log (write-ahead), hand off, each step a row
// of the transaction table (txtable.go). It holds no connection state;
// the SMTP session calls Process once per DATA.
type Acceptor struct {
	Provider  pec.Provider
	Directory pec.Directory
	Limits    pec.Limits
	Signer    Signer
	Log       TransactionLog
	// Outbound takes transport envelopes (to the recipients' providers);
	// Mailboxes takes receipts and notices (to the sender's mailbox).
	Outbound, Mailboxes delivery.Target
	Now                 func() time.Time // the clock (time.Now)
	Rand                io.Reader        // randomness of the PEC identifiers (crypto/rand.Reader)

	// Dedup answers a client's retry of an accepted submission with the
	// original PEC identifier (invariant 3 of docs/architecture.md); nil: none.
	Dedup dedup.Store
	// DedupWindow is how long an accepted submission is remembered
	// (default 7 days); DedupLease how long a claim lasts unless renewed
	// (default 30 s; it is renewed every third of it while the transaction
	// builds, signs and logs). A process that dies leaves a lease that
	// expires by itself, so the client's retry proceeds after at most
	// DedupLease. Just before the envelope is handed off the lease becomes
	// a hold (dedup.Store.Prepare) that lasts the window: after a crash,
	// only the reconciliation of this instance's log can say whether the
	// envelope went out.
	DedupWindow, DedupLease time.Duration
	// Receipts keeps each acceptance receipt durably from just before the
	// envelope hand-off until its own (receipts.go): a receipt that a
	// crash or a failed hand-off kept from the sender is delivered later,
	// never lost. Required.
	Receipts ReceiptSpool
	// Transactions are those this process drives or still owes
	// something (NewTransactions). Required; copies of an Acceptor share
	// them.
	Transactions *Transactions

	// DedupFailOpen proceeds without deduplication when the store is
	// unavailable (config dedup.on_error = "accept"); otherwise the client
	// gets 451 and retries later.
	DedupFailOpen bool

	// BareLF is whose bare LF line ends are made CRLF before the formal
	// checks (submission.bare_lf = "normalize", submit.go); the zero
	// value normalises nobody's.
	BareLF BareLFPolicy
}

// ErrInFlight is returned while a twin of the submission is being
// processed (on this or another instance): the client retries later. The
// error is an *InFlightError.
var ErrInFlight = errors.New("the same submission is being processed")

// InFlightError is ErrInFlight with the transaction holding the key.
type InFlightError struct {
	// Hold is the PEC identifier of a twin whose envelope was about to be
	// handed off (dedup.Store.Prepare), "" for a twin still before it. A
	// hold that lasts means a crashed instance whose log is not yet
	// reconciled: its restart decides.
	Hold string
}

func (e *InFlightError) Error() string {
	if e.Hold != "" {
		return ErrInFlight.Error() + " (held by " + e.Hold + ")"
	}
	return ErrInFlight.Error()
}

// Is makes errors.Is(err, ErrInFlight) true.
func (e *InFlightError) Is(target error) bool { return target == ErrInFlight }

// Submission is one message received by the SMTP session.
type Submission struct {
	Raw      []byte
	Envelope pec.SMTPEnvelope
	User     string // the authenticated user
	ClientIP string
	TLS      string // "TLS1.2", "TLS1.3"

	rawHash *[sha256.Size]byte // SHA-256 of Raw, once (rawSum)
}

// rawSum is the SHA-256 of the submitted message, computed once: the
// dedup key and every record of the transaction need it, and a message
// may be tens of megabytes.
func (s *Submission) rawSum() [sha256.Size]byte {
	if s.rawHash == nil {
		h := sha256.Sum256(s.Raw)
		s.rawHash = &h
	}
	return *s.rawHash
}

// Outcome is what the transaction decided. An accepted submission has ID
// (the PEC identifier); a refused one has the violations and the
// identifier of the non-acceptance notice already delivered to the sender.
type Outcome struct {
	Accepted     bool
	Duplicate    bool   // a retry: nothing new was emitted, ID is the original's
	DedupSkipped bool   // the store was unavailable and DedupFailOpen let it through
	ID           string // the PEC identifier of the transaction
	NoticeID     string // refused: the notice's Message-ID
	Violations   []pec.Violation
	At           pec.Instant
}

// Process runs one acceptance transaction. A nil error comes with an
// Outcome whose messages have been handed off durably and logged
// (invariants 1, 2 and 4 of docs/architecture.md): accepted → 250, refused →
// 5xx. An error means a temporary internal failure: the client is told
// 4xx and retries; what was logged says how far the transaction got.
func (a *Acceptor) Process(ctx context.Context, s *Submission) (*Outcome, error) {
	if a.Receipts == nil || a.Transactions == nil {
		return nil, errors.New("gateway: the Acceptor has no receipt spool or no Transactions")
	}
	// DM 2 novembre 2005 art. 9: one time reference for the whole
	// transaction, taken once, used in every artefact and log record (and
	// in the Date a submission without one gets, submit.go).
	at := pec.At(a.Now())
	sub, violations := pec.Inspect(a.fixed(s, at), s.Envelope, a.Limits)
	id, err := pec.NewID(at, a.Rand, a.Provider.Domain)
	if err != nil {
		return nil, fmt.Errorf("pec identifier: %w", err)
	}
	tx := pec.Transaction{Provider: a.Provider, At: at, ID: id, Submission: sub, Directory: a.Directory}
	if len(violations) > 0 {
		// A refusal is not deduplicated: each refused submission gets
		// its notice (invariant 4).
		return a.refuse(ctx, s, tx, violations)
	}
	// Without a Message-ID there is nothing to recognise a retry by:
	// the submission is certified as new (docs/configuration.md, [dedup]).
	if a.Dedup == nil || sub.MessageID == "" {
		return a.accept(ctx, s, tx, nil)
	}
	d := &dedupTx{key: dedupKey(s, sub), lease: durationOr(a.DedupLease, 30*time.Second)}
	c, err := a.Dedup.Claim(ctx, d.key, d.lease)
	switch {
	case err != nil && errors.Is(err, dedup.ErrUnavailable) && a.DedupFailOpen:
		// on_error = accept: certified without a claim; once the
		// envelope is out the submission is still remembered (best
		// effort), so a retry is not certified a second time.
		d.unclaimed = true
		o, err := a.accept(ctx, s, tx, d)
		if o != nil {
			o.DedupSkipped = true
		}
		return o, err
	case err != nil:
		return nil, fmt.Errorf("dedup: %w", err)
	case c.State == dedup.InFlight:
		// A hold of a transaction of this process whose envelope is out
		// and whose receipt is owed: the retry delivers it, then gets
		// the original identifier.
		if c.PECID != "" {
			ok, err := a.settleOwed(ctx, c.PECID, d.key, "on the client's retry at "+at.Time().Format(time.RFC3339))
			if err != nil {
				return nil, err
			}
			if ok {
				return a.duplicate(ctx, s, tx, c.PECID)
			}
		}
		return nil, &InFlightError{Hold: c.PECID}
	case c.State == dedup.Duplicate:
		return a.duplicate(ctx, s, tx, c.PECID)
	}
	d.token, d.reused = c.Token, c.State == dedup.Reused
	return a.accept(ctx, s, tx, d)
}

// dedupTx is the claim a transaction holds.
type dedupTx struct {
	key    dedup.Key
	token  string
	lease  time.Duration
	reused bool // the Message-ID was accepted before with other content
	// unclaimed: the store could not be reached for the claim and
	// on_error = accept let the transaction go on without one.
	unclaimed bool
}

// commitKey records the submission as certified with pecID: Commit of the
// claim, or Remember when there was no claim (on_error = accept). A
// failure is the commit-failed event: the table retries it in the
// background (commit later), and the record of state commit-owed has it
// made at the next start whatever becomes of this process.
func (a *Acceptor) commitKey(ctx context.Context, d *dedupTx, pecID string) error {
	ctx = context.WithoutCancel(ctx)
	if d.unclaimed {
		return a.Dedup.Remember(ctx, d.key.ID(), d.key.Fingerprint(), pecID, a.window())
	}
	return a.Dedup.Commit(ctx, d.key, d.token, pecID, a.window())
}

// keepLease renews d's lease every third of its duration until stop is
// called (before the hold is taken) or the lease is lost. Renewal only
// spares a slow transaction a needless abort: whether the transaction may
// hand its envelope off is decided by Prepare, atomically.
func (a *Acceptor) keepLease(ctx context.Context, d *dedupTx) (stop func()) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(max(d.lease/3, time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := a.Dedup.Renew(ctx, d.key, d.token, d.lease); errors.Is(err, dedup.ErrNotOwner) {
					return
				}
			}
		}
	}()
	return func() { cancel(); <-done }
}

// retryLater retries a dedup operation that failed because the store was
// unreachable for a moment (a commit after the hand-off, a release after
// a failure): until it succeeds a retry of the submission gets 451,
// never a second envelope. It gives up after an hour or on an error
// other than unavailability; Reconcile then settles it at the next
// start, from the log.
func (a *Acceptor) retryLater(op func() error) {
	deadline := time.Now().Add(time.Hour)
	for wait := time.Second; time.Now().Before(deadline); wait = min(2*wait, 30*time.Second) {
		time.Sleep(wait)
		if err := op(); err == nil || !errors.Is(err, dedup.ErrUnavailable) {
			return
		}
	}
}

// dedupKey: the authenticated sender, the client's Message-ID, the
// forward-paths and the whole submitted message.
func dedupKey(s *Submission, sub *pec.Submission) dedup.Key {
	return dedup.Key{Sender: s.User, MessageID: sub.MessageID, Recipients: sub.Recipients, BodyHash: s.rawSum()}
}

func durationOr(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// duplicate answers a retry of an accepted submission: the original
// identifier, no new envelope or receipt, a "duplicate" log record. The
// key is committed only once envelope and receipt are out, so the 250
// comes after both (invariant 1).
func (a *Acceptor) duplicate(ctx context.Context, s *Submission, tx pec.Transaction, original string) (*Outcome, error) {
	rec := a.record(s, tx)
	rec.Type = logstore.EventDuplicate
	rec.PECID = original
	h := s.rawSum()
	rec.SHA256 = hex.EncodeToString(h[:])
	rec.Detail = "retry of an accepted submission: answered with its PEC identifier, nothing emitted"
	if _, _, err := a.Log.Append(ctx, &rec); err != nil {
		return nil, fmt.Errorf("log the duplicate: %w", err)
	}
	return &Outcome{Accepted: true, Duplicate: true, ID: original, At: tx.At}, nil
}

// work is the session's acceptance transaction: its row in the table
// (txn) and what only the session has, the signed messages.
type work struct {
	t                 *txn
	at                pec.Instant
	envelope, receipt *delivery.Message
	// receiptMsg is the acceptance receipt built, signed only once its
	// accettazione record gives it its log position (pec.LogPositionField).
	receiptMsg *pec.Message
	// spoolErr is what signing and spooling the receipt, after the
	// write-ahead records, came to: prepare hands nothing off unless nil.
	spoolErr     error
	dedupSkipped bool // reported to the operator (Outcome.DedupSkipped), not to the client
}

// accept runs the acceptance through the transaction table
// (docs/architecture.md): written ahead (the busta-trasporto and
// accettazione records, then the receipt signed with the position of its
// record and spooled), the lease turned into
// a hold, the envelope handed off, then the receipt, then the dedup
// commit and the record of the hand-off. The claim (invariant 3) is a
// lease renewed while building and logging, a hold
// naming the transaction from just before the envelope hand-off, and a
// commit once envelope AND receipt are out, so that a retry is answered
// 250 only then (invariant 1), on any instance.
func (a *Acceptor) accept(ctx context.Context, s *Submission, tx pec.Transaction, d *dedupTx) (*Outcome, error) {
	stopRenewal := func() {}
	if d != nil && !d.unclaimed {
		stopRenewal = a.keepLease(ctx, d)
	}
	defer func() { stopRenewal() }()
	w, err := a.build(s, tx, d)
	if err != nil {
		a.release(ctx, &txn{claim: d})
		return nil, err
	}
	a.Transactions.begin(w.t)
	defer a.Transactions.end(w.t)
	if err := a.writeAhead(ctx, w); err != nil {
		return nil, err
	}
	stopRenewal()
	if err := a.prepare(ctx, w); err != nil {
		return nil, err
	}
	if err := a.handOffEnvelope(ctx, w); err != nil {
		return nil, err
	}
	return a.handOffReceipt(ctx, w)
}

// build builds and signs the transport envelope, builds the acceptance
// receipt (signed in writeAhead, once its record is written: the
// position of that record goes under its signature), and makes the
// busta-trasporto record that every record of the transaction copies.
// The records need nothing of the signed receipt: its Message-ID comes
// from the builder (pec.DerivedID).
func (a *Acceptor) build(s *Submission, tx pec.Transaction, d *dedupTx) (*work, error) {
	envelope, envData, err := a.buildEnvelope(tx)
	if err != nil {
		return nil, err
	}
	receipt, err := pec.BuildAcceptance(tx)
	if err != nil {
		return nil, err
	}
	rec := a.record(s, tx)
	rec.Type = logstore.EventBustaTrasporto
	rec.SHA256 = sum(envData)
	rec.Generated = &logstore.Generated{Envelope: envelope.MessageID, Receipt: receipt.MessageID}
	t := &txn{id: tx.ID, rec: rec, key: rec.Dedup, claim: d, holdLess: d != nil && d.unclaimed}
	if d != nil && d.reused {
		t.base = "the client's Message-ID was accepted before with other content: certified as a new message"
	}
	return &work{t: t, at: tx.At, envelope: deliveryMessage(envelope, envData), receiptMsg: receipt}, nil
}

// writeAhead writes the busta-trasporto and accettazione records, then
// signs the receipt with the log position of its accettazione record (so
// that the receipt witnesses the log: RFC 6109 §2.3 makes the log the
// provider's proof; docs/formats.md) and spools it, one after the other:
// the receipt cannot be signed before its record exists, nor spooled
// before it is signed. Invariant 2: nothing is handed off without a
// durable record that describes it, and the envelope not before the
// receipt is durably in the spool (prepare checks it), so a receipt a
// crash or a failed hand-off kept from the sender is delivered later
// (receipts.go). When the records cannot be written the claim is given
// back (log-failed: nothing is spooled yet); when the receipt cannot be
// signed or spooled, prepare refuses the hand-off (not-prepared).
func (a *Acceptor) writeAhead(ctx context.Context, w *work) error {
	if _, err := a.apply(ctx, w.t, logstore.CauseWritten); err != nil {
		warn, _ := a.apply(ctx, w.t, logstore.CauseLogFailed)
		return errors.Join(fmt.Errorf("log the transport envelope: %w", err), warn)
	}
	w.spoolErr = a.spoolReceipt(w)
	return nil
}

// spoolReceipt signs the receipt with the position of its accettazione
// record (seq and hash as Append returned them, logState) and spools it:
// the spool keeps it signed, and it is never signed again (a receipt
// redelivered from the spool is this one).
func (a *Acceptor) spoolReceipt(w *work) error {
	m := w.receiptMsg
	if err := m.SetLogPosition(w.t.receiptSeq, w.t.receiptHash); err != nil {
		return fmt.Errorf("the %s of %s: %w", m.Tipo, w.t.id, err)
	}
	entity, err := a.Signer.Sign(m.Body, w.at.Time())
	if err != nil {
		return fmt.Errorf("sign the %s: %w", m.Tipo, err)
	}
	w.receipt = deliveryMessage(m, m.Bytes(entity))
	e, err := spoolEntry(&w.t.rec, w.receipt)
	if err != nil {
		return fmt.Errorf("spool the acceptance receipt: %w", err)
	}
	return a.Receipts.Put(e)
}

// prepare goes on only once the receipt is durably spooled (writeAhead),
// then turns the lease into a hold naming the transaction
// (dedup.Store.Prepare): from here the outcome of the hand-off must
// survive this process, and a crash leaves the hold for Reconcile
// (invariant 3). Taken after the write-ahead records, so that every hold
// has a record that resolves it.
func (a *Acceptor) prepare(ctx context.Context, w *work) error {
	if err := w.spoolErr; err != nil {
		return a.fail(ctx, w, logstore.CauseNotPrepared, "acceptance receipt not spooled", err)
	}
	d := w.t.claim
	if d == nil || d.unclaimed {
		w.dedupSkipped = d != nil
		return nil
	}
	err := a.Dedup.Prepare(context.WithoutCancel(ctx), d.key, d.token, w.t.id, a.window())
	switch {
	case err == nil:
		return nil
	case errors.Is(err, dedup.ErrUnavailable) && a.DedupFailOpen:
		// on_error = accept: certified without the hold (one is taken if
		// the hand-off leaves the transaction waiting).
		w.t.holdLess, w.dedupSkipped = true, true
		return nil
	}
	return a.fail(ctx, w, logstore.CauseNotPrepared, "dedup hold not taken", err)
}

// handOffEnvelope hands the envelope off first: a receipt must never
// certify a message that was not sent; a sent message whose receipt is
// lost is proved by the log (RFC 6109 §2.3). A next hop that took the
// envelope and did not answer the end of DATA (RFC 1047) may have it:
// the receipt then waits unconfirmed for the operator and the hold stays,
// so a retry gets 451 on every instance (never a second envelope, never
// a 250 without a receipt); pecgw never sends that receipt on its own.
func (a *Acceptor) handOffEnvelope(ctx context.Context, w *work) error {
	err := a.Outbound.Deliver(ctx, w.envelope)
	switch {
	case err == nil:
		_, err := a.apply(ctx, w.t, logstore.CauseEnvelopeDelivered)
		return err
	case errors.Is(err, delivery.ErrOutcomeUnknown):
		return a.fail(ctx, w, logstore.CauseEnvelopeUnknown, "", err)
	}
	return a.fail(ctx, w, logstore.CauseEnvelopeFailed, "", err)
}

// handOffReceipt hands the receipt off, then commits the submission
// before the record of the hand-off (a crash after the record must not
// leave a retry free to certify again). A failed receipt keeps the hold:
// a retry gets 451 on any instance until the receipt, kept in the spool,
// is delivered late (receipts.go).
func (a *Acceptor) handOffReceipt(ctx context.Context, w *work) (*Outcome, error) {
	if err := a.Mailboxes.Deliver(ctx, w.receipt); err != nil {
		return nil, a.fail(ctx, w, logstore.CauseReceiptFailed, "", err)
	}
	on := logstore.CauseReceiptDelivered
	if w.t.claim != nil {
		if err := a.commitKey(ctx, w.t.claim, w.t.id); err != nil {
			on, w.t.err, w.dedupSkipped = logstore.CauseCommitFailed, err, true
		}
	}
	if _, err := a.apply(ctx, w.t, on); err != nil {
		// Both messages are out and logged as emitted: the record of the
		// hand-off is what the reconciliation looks for.
		return nil, fmt.Errorf("log the hand-off: %w", err)
	}
	return &Outcome{Accepted: true, ID: w.t.id, At: w.at, DedupSkipped: w.dedupSkipped}, nil
}

// fail moves the transaction by the failure on, caused by cause (what,
// when not "", says where), and returns the error of the temporary reply:
// what happened and why, with any record or action that failed too.
func (a *Acceptor) fail(ctx context.Context, w *work, on logstore.TxCause, what string, cause error) error {
	w.t.err, w.t.note = cause, what
	warn, err := a.apply(ctx, w.t, on)
	text := causeText[on]
	if what != "" {
		text += " (" + what + ")"
	}
	return errors.Join(fmt.Errorf("%s: %w", text, cause), warn, err)
}

// release drops the session's claim when its envelope stays here, before
// the record says so, so that a retry proceeds as new; an unreachable
// store is retried in the background, and Reconcile abandons the hold of
// a not-handed-off transaction at the next start.
func (a *Acceptor) release(ctx context.Context, t *txn) error {
	d := t.claim
	if d == nil || d.unclaimed {
		return nil
	}
	err := a.Dedup.Release(ctx, d.key, d.token)
	if errors.Is(err, dedup.ErrUnavailable) {
		go a.retryLater(func() error { return a.Dedup.Release(context.Background(), d.key, d.token) })
	}
	if errors.Is(err, dedup.ErrNotOwner) {
		return nil // a twin holds the key: nothing of ours to drop
	}
	return err
}

// ensureHold makes sure a hold names the transaction when on_error =
// accept let it go on without one and it now waits (a receipt owed, an
// outcome unknown): its own lease becomes the hold if still there
// (Prepare), or a hold is put without a lease (Hold). An unreachable
// store is retried in the background; Reconcile puts the holds of
// unknown outcomes back at every start.
func (a *Acceptor) ensureHold(ctx context.Context, t *txn) error {
	if !t.holdLess || t.key == nil || a.Dedup == nil {
		return nil
	}
	d := t.claim
	op := func(ctx context.Context) error {
		if d != nil && !d.unclaimed {
			if a.Dedup.Prepare(ctx, d.key, d.token, t.id, a.window()) == nil {
				return nil
			}
			// Hold leaves any lease alone, our own too: drop it first.
			_ = a.Dedup.Release(ctx, d.key, d.token)
		}
		return a.Dedup.Hold(ctx, t.key.ID, t.key.FP, t.id, a.window())
	}
	err := op(ctx)
	if errors.Is(err, dedup.ErrUnavailable) {
		go a.retryLater(func() error { return op(context.Background()) })
	}
	if err == nil {
		t.holdLess = false
	}
	return err
}

// refuse emits the non-acceptance notice (RFC 6109 §3.1.2): built,
// logged, signed with the position of its record (docs/formats.md),
// delivered to the sender's mailbox (never Reply-To). Invariant 4:
// exactly one notice and one log record per refusal; the record comes
// first, and a notice that could not be signed or delivered after it is
// logged as aborted (the client gets 4xx and its retry is refused again).
func (a *Acceptor) refuse(ctx context.Context, s *Submission, tx pec.Transaction, violations []pec.Violation) (*Outcome, error) {
	notice, err := pec.BuildNonAcceptance(tx, violations)
	if err != nil {
		return nil, err
	}
	rec := a.record(s, tx)
	rec.Type = logstore.EventNonAccettazione
	h := s.rawSum()
	rec.SHA256 = hex.EncodeToString(h[:])
	rec.Generated = &logstore.Generated{Notice: notice.MessageID}
	for _, v := range violations {
		rec.Violations = append(rec.Violations, v.Code)
	}
	seq, hash, err := a.Log.Append(ctx, &rec)
	if err != nil {
		return nil, fmt.Errorf("log the non-acceptance: %w", err)
	}
	// The notice witnesses the log: the position of its record, inside
	// the signed part (RFC 6109 §2.3; docs/formats.md).
	err = notice.SetLogPosition(seq, hash)
	var entity []byte
	if err == nil {
		entity, err = a.Signer.Sign(notice.Body, tx.At.Time())
	}
	if err == nil {
		err = a.Mailboxes.Deliver(ctx, deliveryMessage(notice, notice.Bytes(entity)))
	} else {
		err = fmt.Errorf("not signed: %w", err)
	}
	if err != nil {
		// Not a state of an acceptance transaction: the record says what
		// happened to people, and the client's retry is refused again.
		ab := rec
		ab.Type, ab.SHA256, ab.Generated, ab.Violations = logstore.EventAborted, "", nil, nil
		ab.Detail = "non-acceptance notice not delivered: " + err.Error()
		if _, _, lerr := a.Log.Append(context.WithoutCancel(ctx), &ab); lerr != nil {
			err = errors.Join(err, fmt.Errorf("log the abort: %w", lerr))
		}
		return nil, fmt.Errorf("non-acceptance notice not delivered: %w", err)
	}
	return &Outcome{ID: tx.ID, NoticeID: notice.MessageID, Violations: violations, At: tx.At}, nil
}

func (a *Acceptor) buildSigned(tx pec.Transaction, build func(pec.Transaction) (*pec.Message, error)) (*pec.Message, []byte, error) {
	m, err := build(tx)
	if err != nil {
		return nil, nil, err
	}
	entity, err := a.Signer.Sign(m.Body, tx.At.Time())
	if err != nil {
		return nil, nil, fmt.Errorf("sign the %s: %w", m.Tipo, err)
	}
	return m, m.Bytes(entity), nil
}

// buildEnvelope builds and signs the transport envelope. With a signer
// that signs in place (signer.Signer.SignInPlace), the envelope's body
// is built in the buffer that becomes the signed envelope, between the
// header fields and the signature: the message is in memory twice, not
// three times, while it is signed (docs/configuration.md, "Message
// memory"). The same octets as buildSigned's.
func (a *Acceptor) buildEnvelope(tx pec.Transaction) (*pec.Message, []byte, error) {
	ip, ok := a.Signer.(inPlaceSigner)
	if !ok {
		return a.buildSigned(tx, pec.BuildEnvelope)
	}
	m, err := pec.BuildEnvelopeRoom(tx, signer.PrefixLen, 8<<10)
	if err != nil {
		return nil, nil, err
	}
	buf, ok := m.EnvelopeBuffer(signer.PrefixLen)
	if !ok {
		return nil, nil, fmt.Errorf("sign the %s: no room left before its body", m.Tipo)
	}
	data, err := ip.SignInPlace(buf, len(buf)-len(m.Body), tx.At.Time())
	if err != nil {
		return nil, nil, fmt.Errorf("sign the %s: %w", m.Tipo, err)
	}
	return m, data, nil
}

// inPlaceSigner is a Signer that signs the end of a buffer in it
// (signer.Signer.SignInPlace).
type inPlaceSigner interface {
	SignInPlace(buf []byte, at int, t time.Time) ([]byte, error)
}

// record fills the fields of RFC 6109 §2.3 and the submission's.
func (a *Acceptor) record(s *Submission, tx pec.Transaction) logstore.Record {
	sub := tx.Submission
	var dk *logstore.DedupKey
	if sub.MessageID != "" {
		k := dedupKey(s, sub)
		dk = &logstore.DedupKey{ID: k.ID(), FP: k.Fingerprint()}
	}
	var recips []logstore.Recipient
	for _, r := range pec.Classify(a.Directory, sub.Addressees()) {
		recips = append(recips, logstore.Recipient{Addr: r.Address, Tipo: r.Tipo()})
	}
	return logstore.Record{
		V:          logstore.FormatVersion,
		Time:       tx.At.Time().Format(time.RFC3339),
		PECID:      tx.ID,
		MsgID:      sub.MessageID,
		Sender:     sub.Sender,
		Recipients: recips,
		Subject:    sub.Subject,
		Provider:   a.Provider.Name,
		User:       s.User,
		ClientIP:   s.ClientIP,
		TLS:        s.TLS,
		Size:       int64(len(s.Raw)),
		Dedup:      dk,
	}
}

func deliveryMessage(m *pec.Message, data []byte) *delivery.Message {
	return &delivery.Message{
		ReversePath:  m.ReversePath,
		ForwardPaths: m.ForwardPaths,
		Data:         data,
		UTF8:         !isASCII(m.ReversePath) || !allASCII(m.ForwardPaths) || !isASCII(m.Header),
		EightBit:     !isASCII(data),
	}
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// isASCII reports whether s has no octet above 0x7F, eight at a time
// (an envelope carries the whole message).
func isASCII[T string | []byte](s T) bool {
	i := 0
	for ; i+8 <= len(s); i += 8 {
		w := uint64(s[i]) | uint64(s[i+1])<<8 | uint64(s[i+2])<<16 | uint64(s[i+3])<<24 |
			uint64(s[i+4])<<32 | uint64(s[i+5])<<40 | uint64(s[i+6])<<48 | uint64(s[i+7])<<56
		if w&0x8080808080808080 != 0 {
			return false
		}
	}
	for ; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func allASCII(list []string) bool {
	for _, s := range list {
		if !isASCII(s) {
			return false
		}
	}
	return true
}
