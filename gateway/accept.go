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
)

// Signer signs a MIME entity at the transaction's instant (signer.Signer).
type Signer interface {
	Sign(content []byte, at time.Time) ([]byte, error)
}

// TransactionLog is the legal log (logstore.Log): Append returns when the
// record is on disk.
type TransactionLog interface {
	Append(ctx context.Context, r *logstore.Record) (seq uint64, hash string, err error)
}

// Acceptor runs the acceptance transaction of the access point (RFC 6109
// §3.1; ../shared/ARCHITECTURE.md): inspect, one time reference and PEC
// identifier, build, sign, log (write-ahead), hand off. It holds no
// connection state; the SMTP session calls Process once per DATA.
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
	// original PEC identifier (ARCHITECTURE.md invariant 3); nil: none.
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
	// never lost. nil: none (a receipt lost so is only proved by the log).
	Receipts ReceiptSpool

	// DedupFailOpen proceeds without deduplication when the store is
	// unavailable (config dedup.on_error = "accept"); otherwise the client
	// gets 451 and retries later.
	DedupFailOpen bool
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
// (invariants 1, 2 and 4 of ARCHITECTURE.md): accepted → 250, refused →
// 5xx. An error means a temporary internal failure: the client is told
// 4xx and retries; what was logged says how far the transaction got.
func (a *Acceptor) Process(ctx context.Context, s *Submission) (*Outcome, error) {
	sub, violations := pec.Inspect(s.Raw, s.Envelope, a.Limits)
	// DM 2 novembre 2005 art. 9: one time reference for the whole
	// transaction, taken once, used in every artefact and log record.
	at := pec.At(a.Now())
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
			k := d.key.ID() + " " + d.key.Fingerprint()
			ok, err := a.settleOwed(ctx, c.PECID, k, "on the client's retry at "+at.Time().Format(time.RFC3339))
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
// claim, or Remember when there was no claim. A failure unavailable is
// retried in the background; the caller marks it in its record so that
// Reconcile redoes it at the next start.
func (a *Acceptor) commitKey(ctx context.Context, d *dedupTx, pecID string, window time.Duration) error {
	op := func(ctx context.Context) error {
		if d.unclaimed {
			return a.Dedup.Remember(ctx, d.key.ID(), d.key.Fingerprint(), pecID, window)
		}
		return a.Dedup.Commit(ctx, d.key, d.token, pecID, window)
	}
	err := op(context.WithoutCancel(ctx))
	if errors.Is(err, dedup.ErrUnavailable) {
		go a.retryLater(func() error { return op(context.Background()) })
	}
	return err
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
	return dedup.Key{Sender: s.User, MessageID: sub.MessageID, Recipients: sub.Recipients, BodyHash: sha256.Sum256(s.Raw)}
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
	rec.SHA256 = sum(s.Raw)
	rec.Detail = "retry of an accepted submission: answered with its PEC identifier, nothing emitted"
	if _, _, err := a.Log.Append(ctx, &rec); err != nil {
		return nil, fmt.Errorf("log the duplicate: %w", err)
	}
	return &Outcome{Accepted: true, Duplicate: true, ID: original, At: tx.At}, nil
}

func (a *Acceptor) accept(ctx context.Context, s *Submission, tx pec.Transaction, d *dedupTx) (o *Outcome, err error) {
	// The dedup claim (ARCHITECTURE.md invariant 3): a lease renewed
	// while building and logging; a hold naming tx.ID from just before
	// the envelope hand-off; committed once the envelope AND the receipt
	// are out, so that a retry is answered 250 only then (invariant 1),
	// on any instance. A failure before the envelope is out releases it
	// (before the abort is logged) so the retry proceeds as new; a
	// failure after keeps the hold until the receipt is delivered late
	// (receipts.go). A crash leaves the hold to Reconcile.
	envelopeOut, dedupSkipped := false, false
	stopRenewal, release := func() {}, func() {}
	if d != nil && !d.unclaimed {
		stopRenewal = a.keepLease(ctx, d)
		released := false
		release = func() {
			if released {
				return
			}
			released = true
			err := a.Dedup.Release(context.WithoutCancel(ctx), d.key, d.token)
			if errors.Is(err, dedup.ErrUnavailable) {
				go a.retryLater(func() error { return a.Dedup.Release(context.Background(), d.key, d.token) })
			}
		}
		defer func() {
			stopRenewal()
			if !envelopeOut {
				release()
			}
			if dedupSkipped && o != nil {
				o.DedupSkipped = true // reported to the operator, not to the client
			}
		}()
	}
	envelope, envData, err := a.buildSigned(tx, pec.BuildEnvelope)
	if err != nil {
		return nil, err
	}
	receipt, receiptData, err := a.buildSigned(tx, pec.BuildAcceptance)
	if err != nil {
		return nil, err
	}
	base := a.record(s, tx)
	if d != nil && d.reused {
		base.Detail = "the client's Message-ID was accepted before with other content: certified as a new message"
	}
	base.SHA256 = sum(envData)
	base.Generated = &logstore.Generated{Envelope: envelope.MessageID, Receipt: receipt.MessageID}

	// The receipt is kept until it is handed off (receipts.go); the spool
	// file is written while the log writes its records, and both are
	// durable before the envelope goes. A failure before the envelope is
	// out removes it before the abort is logged: an entry never outlives
	// a record saying its envelope stayed here.
	receiptMsg := deliveryMessage(receipt, receiptData)
	var spoolErr chan error
	spooled := false
	waitSpool := func() error {
		if spoolErr == nil {
			return nil
		}
		err := <-spoolErr
		spoolErr = nil
		spooled = err == nil
		return err
	}
	unspool := func() {
		if waitSpool() == nil && spooled {
			_ = a.Receipts.Remove(tx.ID)
			spooled = false
		}
	}
	// notOut undoes what a transaction whose envelope stays here holds,
	// before its abort is logged.
	notOut := func() { unspool(); release() }
	if a.Receipts != nil {
		done := base
		done.Type = logstore.EventHandedOff
		e, err := spoolEntry(&done, receiptMsg)
		if err != nil {
			return nil, fmt.Errorf("spool the acceptance receipt: %w", err)
		}
		spoolErr = make(chan error, 1)
		go func() { spoolErr <- a.Receipts.Put(e) }()
		defer func() {
			if !envelopeOut {
				unspool()
			}
			a.Receipts.Done(tx.ID)
		}()
	}

	// Invariant 2: nothing is handed off without a durable record that
	// describes it. Both records are written before either hand-off.
	busta := base
	busta.Type = logstore.EventBustaTrasporto
	if _, _, err := a.Log.Append(ctx, &busta); err != nil {
		notOut()
		return nil, fmt.Errorf("log the transport envelope: %w", err)
	}
	acc := base
	acc.Type = logstore.EventAccettazione
	if _, _, err := a.Log.Append(ctx, &acc); err != nil {
		notOut()
		return nil, fmt.Errorf("log the acceptance: %w", err)
	}
	if err := waitSpool(); err != nil {
		notOut()
		return nil, a.abort(s, tx, "acceptance receipt not spooled, "+notHandedOff, err)
	}
	// From here the outcome of the hand-off must survive this process:
	// the lease becomes a hold naming this transaction, which a crash
	// leaves for Reconcile (invariant 3). Taken after the write-ahead
	// records, so that every hold has a record that resolves it.
	window := durationOr(a.DedupWindow, 7*24*time.Hour)
	if d != nil && d.unclaimed {
		dedupSkipped = true
	} else if d != nil {
		stopRenewal()
		if err := a.Dedup.Prepare(context.WithoutCancel(ctx), d.key, d.token, tx.ID, window); err != nil {
			if !errors.Is(err, dedup.ErrUnavailable) || !a.DedupFailOpen {
				notOut()
				return nil, a.abort(s, tx, "dedup hold not taken, "+notHandedOff, err)
			}
			dedupSkipped = true // on_error = accept: certified without the hold
		}
	}
	// The envelope goes first: a receipt must never certify a message
	// that was not sent; a sent message whose receipt is lost is proved
	// by the log (RFC 6109 §2.3).
	if err := a.Outbound.Deliver(ctx, deliveryMessage(envelope, envData)); err != nil {
		if errors.Is(err, delivery.ErrOutcomeUnknown) {
			envelopeOut = true // may be: nothing is released
			return nil, a.outcomeUnknown(ctx, s, tx, d, spooled, dedupSkipped, window, err)
		}
		notOut()
		return nil, a.abort(s, tx, notHandedOff, err)
	}
	envelopeOut = true
	if err := a.Mailboxes.Deliver(ctx, receiptMsg); err != nil {
		// The hold stays: a retry gets 451 on any instance until the
		// receipt is out. The client's retry here, the periodic
		// redelivery or the next start delivers it (receipts.go).
		what := abortReceiptNotDelivered
		if spooled {
			if merr := a.Receipts.Mark(tx.ID, delivery.SpoolOut); merr != nil {
				err = errors.Join(err, merr)
			} else {
				what += " (kept for a later delivery)"
			}
		}
		switch {
		case d == nil:
		case !spooled:
			// No spool: the receipt cannot be delivered later, and a
			// hold kept for it would answer every retry 451 until the
			// window ends. The retry gets the identifier; the log proves
			// the acceptance (RFC 6109 §2.3).
			if cerr := a.commitKey(ctx, d, tx.ID, window); cerr != nil {
				err = errors.Join(err, cerr)
				what += "; " + dedupCommitFailed // Reconcile remembers it
			}
		case dedupSkipped:
			// No hold was taken (on_error = accept): take one now, so
			// that the retry waits for the receipt as it does above.
			if herr := a.holdKey(ctx, d, tx.ID, window); herr != nil {
				err = errors.Join(err, herr)
			}
		}
		return nil, a.abort(s, tx, what, err)
	}
	done := base
	done.Type = logstore.EventHandedOff
	// Committed before the completion record: a crash after the record
	// must not leave a retry free to certify again.
	if d != nil {
		if err := a.commitKey(ctx, d, tx.ID, window); err != nil {
			dedupSkipped = true
			// Reconcile remembers the transactions so marked, in case the
			// background retry does not outlive this process.
			done.Detail = joinDetail(done.Detail, dedupCommitFailed+": "+err.Error())
		}
	}
	if _, _, err := a.Log.Append(ctx, &done); err != nil {
		// Both messages are out and both are logged as emitted: the
		// completion record is what reconciliation looks for.
		return nil, fmt.Errorf("log the hand-off: %w", err)
	}
	unspool()
	return &Outcome{Accepted: true, ID: tx.ID, At: tx.At}, nil
}

// outcomeUnknown ends a transaction whose next hop did not answer the end
// of DATA: the envelope may be out, and only the next hop can say. The
// receipt is kept unconfirmed in the spool and the dedup hold stays (put
// back at every start by Reconcile), so the client's retry gets 451 on
// every instance: never a second envelope (invariant 3), never a 250
// without a receipt (invariant 1). The operator asks the next hop and
// runs pecgw spool confirm (the receipt is delivered, the retry gets this
// identifier) or reject (the submission is freed and certified anew on
// retry). pecgw never sends such a receipt on its own: it would certify a
// message it cannot show was sent.
func (a *Acceptor) outcomeUnknown(ctx context.Context, s *Submission, tx pec.Transaction, d *dedupTx, spooled, dedupSkipped bool, window time.Duration, err error) error {
	what := abortOutcomeUnknown
	kept := false
	if spooled {
		if merr := a.Receipts.Mark(tx.ID, delivery.SpoolUnconfirmed); merr != nil {
			// A pending entry could later be taken for a receipt owed:
			// without its mark it goes.
			err = errors.Join(err, merr, a.Receipts.Remove(tx.ID))
			what += "; acceptance receipt could not be kept"
		} else {
			kept = true
			what += "; acceptance receipt kept unconfirmed (pecgw spool confirm or reject)"
		}
	}
	switch {
	case d == nil:
	case !kept:
		// Without a receipt in the spool the operator has nothing to
		// confirm or reject: a hold would block the submission for the
		// whole window. The retry gets this identifier instead (at most
		// one envelope); the log says the outcome is unknown.
		if cerr := a.commitKey(ctx, d, tx.ID, window); cerr != nil {
			err = errors.Join(err, cerr)
			what += "; " + dedupCommitFailed
		}
	case d.unclaimed || dedupSkipped:
		// on_error = accept went on without a hold: take one now.
		if herr := a.holdKey(ctx, d, tx.ID, window); herr != nil {
			err = errors.Join(err, herr)
		}
	}
	return a.abort(s, tx, what, err)
}

// holdKey makes sure a hold naming pecID is on the submission when the
// transaction could not take one before its hand-off (on_error =
// accept): its own lease becomes the hold if still there (Prepare), or a
// hold is put without a lease (Hold). A store unavailable is retried in
// the background; Reconcile puts unknown outcomes' holds back at start.
func (a *Acceptor) holdKey(ctx context.Context, d *dedupTx, pecID string, window time.Duration) error {
	op := func(ctx context.Context) error {
		if !d.unclaimed {
			if a.Dedup.Prepare(ctx, d.key, d.token, pecID, window) == nil {
				return nil
			}
			// Hold leaves any lease alone, our own too: drop it first.
			_ = a.Dedup.Release(ctx, d.key, d.token)
		}
		return a.Dedup.Hold(ctx, d.key.ID(), d.key.Fingerprint(), pecID, window)
	}
	err := op(context.WithoutCancel(ctx))
	if errors.Is(err, dedup.ErrUnavailable) {
		go a.retryLater(func() error { return op(context.Background()) })
	}
	return err
}

// Details the reconciliation reads back.
const (
	// notHandedOff ends the Detail of an aborted record of a
	// transaction whose envelope stayed here.
	notHandedOff = "transport envelope not handed off"
	// abortReceiptNotDelivered begins the Detail of the aborted record
	// of a transaction whose envelope went out and whose receipt did not.
	abortReceiptNotDelivered = "transport envelope handed off, acceptance receipt not delivered"
	// dedupCommitFailed is in the Detail of a handed-off record whose
	// dedup commit failed.
	dedupCommitFailed = "dedup commit failed"
	// abortOutcomeUnknown begins the Detail of the aborted record of a
	// transaction whose next hop did not answer the end of DATA.
	abortOutcomeUnknown = "transport envelope hand-off outcome unknown (the next hop did not answer the end of DATA)"
)

func joinDetail(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// refuse emits the non-acceptance notice (RFC 6109 §3.1.2): built,
// signed, logged, delivered to the sender's mailbox (never Reply-To).
// Invariant 4: exactly one notice and one log record per refusal.
func (a *Acceptor) refuse(ctx context.Context, s *Submission, tx pec.Transaction, violations []pec.Violation) (*Outcome, error) {
	notice, data, err := a.buildSigned(tx, func(tx pec.Transaction) (*pec.Message, error) {
		return pec.BuildNonAcceptance(tx, violations)
	})
	if err != nil {
		return nil, err
	}
	rec := a.record(s, tx)
	rec.Type = logstore.EventNonAccettazione
	rec.SHA256 = sum(s.Raw)
	rec.Generated = &logstore.Generated{Notice: notice.MessageID}
	for _, v := range violations {
		rec.Violations = append(rec.Violations, v.Code)
	}
	if _, _, err := a.Log.Append(ctx, &rec); err != nil {
		return nil, fmt.Errorf("log the non-acceptance: %w", err)
	}
	if err := a.Mailboxes.Deliver(ctx, deliveryMessage(notice, data)); err != nil {
		return nil, a.abort(s, tx, "non-acceptance notice not delivered", err)
	}
	return &Outcome{ID: tx.ID, NoticeID: notice.MessageID, Violations: violations, At: tx.At}, nil
}

// abort records that a logged transaction was not completed, and returns
// the error for a temporary reply. The record is best effort: if the log
// itself fails, the error says so too.
func (a *Acceptor) abort(s *Submission, tx pec.Transaction, what string, cause error) error {
	rec := a.record(s, tx)
	rec.Type = logstore.EventAborted
	rec.Detail = what + ": " + cause.Error()
	// A cancelled session must not keep the abort record out of the log.
	if _, _, err := a.Log.Append(context.Background(), &rec); err != nil {
		return errors.Join(fmt.Errorf("%s: %w", what, cause), fmt.Errorf("log the abort: %w", err))
	}
	return fmt.Errorf("%s: %w", what, cause)
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

// record fills the fields of RFC 6109 §2.3 and the submission's.
func (a *Acceptor) record(s *Submission, tx pec.Transaction) logstore.Record {
	sub := tx.Submission
	var dk string
	if sub.MessageID != "" {
		k := dedupKey(s, sub)
		dk = k.ID() + " " + k.Fingerprint()
	}
	var recips []logstore.Recipient
	for _, r := range pec.Classify(a.Directory, sub.Addressees()) {
		recips = append(recips, logstore.Recipient{Addr: r.Address, Tipo: r.Tipo()})
	}
	return logstore.Record{
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
		DedupKey:   dk,
	}
}

func deliveryMessage(m *pec.Message, data []byte) *delivery.Message {
	return &delivery.Message{
		ReversePath:  m.ReversePath,
		ForwardPaths: m.ForwardPaths,
		Data:         data,
		UTF8:         !isASCII(m.ReversePath) || !allASCII(m.ForwardPaths) || !isASCII(string(m.Header)),
		EightBit:     !isASCII(string(data)),
	}
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
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
