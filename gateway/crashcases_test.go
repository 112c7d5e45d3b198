package gateway

// Crash and failure interleavings found by a review of the dedup holds
// and the receipt spool; each failed before its fix.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pecgw/pecgw/dedup"
	"github.com/pecgw/pecgw/delivery"
	"github.com/pecgw/pecgw/internal/testtool"
	"github.com/pecgw/pecgw/logstore"
)

type releaseFails struct{ dedup.Store }

func (s releaseFails) Release(ctx context.Context, k dedup.Key, token string) error {
	return fmt.Errorf("%w: injected", dedup.ErrUnavailable) // or: SIGKILL right after the abort record
}

type commitFails struct{ dedup.Store }

func (s commitFails) Commit(ctx context.Context, k dedup.Key, token, pecID string, window time.Duration) error {
	return fmt.Errorf("%w: injected", dedup.ErrUnavailable)
}

// prepareCrash kills the process at Prepare (before it reaches Redis).
type prepareCrash struct{ crashStore }

func (s prepareCrash) Prepare(ctx context.Context, k dedup.Key, token, pecID string, hold time.Duration) error {
	s.c.dead.Store(true)
	return errCrashed
}

// dyingTarget fails the hand-off and kills the process right after the
// caller's next durable step (the crash switch stops the log).
type dyingTarget struct{ c *crashSwitch }

func (d dyingTarget) Deliver(ctx context.Context, m *delivery.Message) error {
	d.c.dead.Store(true)
	return errors.New("mailbox down")
}

// 1. Envelope hand-off fails, abort record written, Release lost (Redis
// blip, or SIGKILL between the abort record and the deferred Release).
// Reconcile skips the aborted transaction: the hold blocks the key for the
// whole window although nothing was sent.
func TestOrphanHoldAfterAbortIsAbandoned(t *testing.T) {
	r := testtool.StartRedis(t)
	n := newRedisNode(t, r.Addr)
	a := *n.a
	a.Outbound = &recordingTarget{fail: errors.New("next hop down")}
	a.Dedup = releaseFails{n.store}
	if _, err := a.Process(context.Background(), retry()); err == nil {
		t.Fatal("want the hand-off failure")
	}
	n.restart(t, nil)
	if _, err := n.a.Process(context.Background(), retry()); err != nil {
		t.Fatalf("retry after restart and Reconcile: %v (the hold of an aborted transaction is never resolved)", err)
	}
}

// 2. Commit fails after the envelope went out (commitLater pending), then
// the process is restarted: the transaction is complete in the log, so
// Reconcile ignores it and the hold stays for the window.
func TestFailedCommitRememberedAtRestart(t *testing.T) {
	r := testtool.StartRedis(t)
	n := newRedisNode(t, r.Addr)
	a := *n.a
	a.Dedup = commitFails{n.store}
	o, err := a.Process(context.Background(), retry())
	if err != nil {
		t.Fatal(err)
	}
	n.restart(t, nil)
	o2, err := n.a.Process(context.Background(), retry())
	if err != nil || !o2.Duplicate || o2.ID != o.ID {
		t.Fatalf("retry after restart: %+v, %v; want duplicate of %s", o2, err, o.ID)
	}
}

// 3. Two instances, next-hop SMTP outbound (no Finder). A dies after its
// write-ahead records, before Prepare: its envelope never left. The lease
// expires; the client's retry on B is certified (B-id, one envelope). A
// restarts: Reconcile "remembers" A-id, overwriting B-id: every later retry
// is told A-id, an identifier whose envelope was never sent.
func TestReconcileKeepsTwinsCommit(t *testing.T) {
	r := testtool.StartRedis(t)
	na, nb := newRedisNode(t, r.Addr), newRedisNode(t, r.Addr)
	c := &crashSwitch{}
	a := *na.a
	a.DedupLease = 300 * time.Millisecond
	a.Log = crashLog{na.log, c}
	a.Dedup = prepareCrash{crashStore{na.store, c}}
	a.Receipts = crashSpool{na.spool, c}
	if _, err := a.Process(context.Background(), retry()); !errors.Is(err, errCrashed) {
		t.Fatalf("want the crash, got %v", err)
	}
	aID := na.lastBusta(t).PECID
	if na.envelopes(t) != 0 {
		t.Fatal("A handed its envelope off")
	}
	time.Sleep(500 * time.Millisecond) // the lease expires
	ob, err := nb.a.Process(context.Background(), retry())
	if err != nil || ob.Duplicate {
		t.Fatalf("retry on B: %+v %v", ob, err)
	}
	na.restart(t, &recordingTarget{}) // next-hop SMTP: not a Finder
	o, err := nb.a.Process(context.Background(), retry())
	if err != nil {
		t.Fatal(err)
	}
	if o.ID != ob.ID || o.ID == aID {
		t.Fatalf("retry now answered with %s, want %s (B's, sent), not %s (A's, never sent)", o.ID, ob.ID, aID)
	}
	// A's log says its envelope was not handed off: Redis had no hold.
	recs := na.records(t, aID)
	if last := recs[len(recs)-1]; last.State != logstore.TxNotHandedOff || last.Cause != logstore.CauseFoundNotOut || !strings.Contains(last.Detail, "no dedup hold was taken") {
		t.Errorf("A's last record: %+v", last)
	}
}

// 4. Next-hop SMTP outbound. Envelope out, committed, receipt hand-off
// fails, Mark(out) done, SIGKILL before the abort record. Reconcile
// ignores the spool's "out" state and marks the receipt unconfirmed;
// the retry is answered 250 and the receipt is never delivered.
func TestSpooledOutDeliveredWithNextHop(t *testing.T) {
	n := newNode(t)
	c := &crashSwitch{}
	a := *n.a
	a.Outbound = &recordingTarget{}
	a.Mailboxes = dyingTarget{c}
	a.Log = crashLog{n.log, c}
	a.Dedup = crashStore{n.store, c}
	a.Receipts = n.spool // Mark(out) reaches the disk
	if _, err := a.Process(context.Background(), retry()); err == nil {
		t.Fatal("want an error")
	}
	b := n.lastBusta(t)
	if e, err := n.spool.Get(b.PECID); err != nil || e.State != delivery.SpoolOut {
		t.Fatalf("spool before restart: %+v %v", e, err)
	}
	if rep := n.restart(t, &recordingTarget{}); rep.Found != 1 || rep.Receipts != 1 {
		t.Errorf("reconciliation: %+v, want the envelope out and the receipt delivered", rep)
	}
	n.checkReceipts(t, b, 1)
	o, err := n.a.Process(context.Background(), retry())
	if err != nil || !o.Duplicate || o.ID != b.PECID {
		t.Errorf("retry: %+v, %v; want a duplicate of %s", o, err, b.PECID)
	}
	if err == nil && o.Accepted && n.receiptFiles(t) == 0 {
		e, _ := n.spool.Get(b.PECID)
		t.Fatalf("retry answered 250 (%s) while the receipt, known to be owed (spool state was out), is %v and was never delivered", o.ID, e.State)
	}
}

// 5. Two instances. A: envelope out, committed, receipt hand-off fails
// (kept "out" in A's spool), 451. The client retries on B: Duplicate,
// B's spool has nothing, 250 while the receipt is not delivered.
func TestOwedReceiptBlocksOtherInstance(t *testing.T) {
	r := testtool.StartRedis(t)
	na, nb := newRedisNode(t, r.Addr), newRedisNode(t, r.Addr)
	a := *na.a
	a.Mailboxes = &recordingTarget{fail: errors.New("mailbox down")}
	if _, err := a.Process(context.Background(), retry()); err == nil {
		t.Fatal("want an error")
	}
	o, err := nb.a.Process(context.Background(), retry())
	if err == nil && o.Accepted && na.receiptFiles(t)+nb.receiptFiles(t) == 0 {
		t.Fatalf("B answered 250 (%s) before the receipt was handed off (invariant 1)", o.ID)
	}
	if !errors.Is(err, ErrInFlight) {
		t.Fatalf("retry on B: %+v, %v; want in flight", o, err)
	}
	// A's periodic redelivery (its mailboxes are back) settles it; then
	// B answers with A's identifier.
	if got, err := na.a.RedeliverReceipts(context.Background()); got != 1 || err != nil {
		t.Fatalf("A's redelivery: %d, %v", got, err)
	}
	b := na.lastBusta(t)
	na.checkReceipts(t, b, 1)
	o, err = nb.a.Process(context.Background(), retry())
	if err != nil || !o.Duplicate || o.ID != b.PECID {
		t.Fatalf("retry on B after the redelivery: %+v, %v; want a duplicate of %s", o, err, b.PECID)
	}
}

// 6. A provider domain written as an IDN U-label passes config validation
// (idna.ToASCII) but the PEC id then has non-ASCII letters, which
// delivery.spoolName refuses: every acceptance aborts with 451.
func TestIDNProviderDomain(t *testing.T) {
	n := newNode(t)
	n.a.Provider.Domain = "pec.città.it"
	if _, err := n.a.Process(context.Background(), retry()); err != nil {
		t.Fatalf("acceptance with an IDN provider domain: %v", err)
	}
}

type rememberFails struct{ dedup.Store }

func (s rememberFails) Remember(ctx context.Context, id, fp, pecID string, window time.Duration) error {
	return fmt.Errorf("%w: injected", dedup.ErrUnavailable)
}

type prepareUnavailable struct{ dedup.Store }

func (s prepareUnavailable) Prepare(ctx context.Context, k dedup.Key, token, pecID string, hold time.Duration) error {
	return fmt.Errorf("%w: injected", dedup.ErrUnavailable)
}

// commitThenCrash commits, then the process dies.
type commitThenCrash struct{ crashStore }

func (s commitThenCrash) Commit(ctx context.Context, k dedup.Key, token, pecID string, window time.Duration) error {
	err := s.crashStore.Store.Commit(ctx, k, token, pecID, window)
	s.c.dead.Store(true)
	return err
}

// TestCommitOwedIsNotOptional: with the embedded store a hold dies with
// the process, so a commit that failed must be redone at start before
// anything is accepted: a reconciliation that cannot reach the store
// fails (the daemon does not start) rather than let the retry certify a
// second envelope.
func TestCommitOwedIsNotOptional(t *testing.T) {
	n := newNode(t)
	a := *n.a
	a.Dedup = commitFails{n.store}
	o, err := a.Process(context.Background(), retry())
	if err != nil {
		t.Fatal(err)
	}
	failing := *n.a
	failing.Dedup = rememberFails{n.store}
	_, err = failing.Reconcile(context.Background(), ReconcileInput{LogDir: n.logDir, Now: fixedNow.Add(time.Minute)})
	if !errors.Is(err, dedup.ErrUnavailable) {
		t.Fatalf("Reconcile with the store failing = %v, want its error", err)
	}
	n.restart(t, nil)
	o2, err := n.a.Process(context.Background(), retry())
	if err != nil || !o2.Duplicate || o2.ID != o.ID {
		t.Fatalf("retry: %+v, %v; want a duplicate of %s", o2, err, o.ID)
	}
	if got := n.envelopes(t); got != 1 {
		t.Errorf("%d envelopes", got)
	}
}

// TestCommittedBeforeCrashIsComplete: killed after the commit and before
// the handed-off record, with a next hop that cannot be searched: the
// store's commit shows envelope and receipt went out, so the transaction
// is completed as handed off, and the receipt is not delivered again.
func TestCommittedBeforeCrashIsComplete(t *testing.T) {
	n := newNode(t)
	c := &crashSwitch{}
	a := *n.a
	a.Outbound = &recordingTarget{}
	a.Log = crashLog{n.log, c}
	a.Dedup = commitThenCrash{crashStore{n.store, c}}
	a.Receipts = crashSpool{n.spool, c}
	if _, err := a.Process(context.Background(), retry()); !errors.Is(err, errCrashed) {
		t.Fatalf("want the crash, got %v", err)
	}
	b := n.lastBusta(t)
	rep := n.restart(t, &recordingTarget{})
	if rep != (Report{Incomplete: 1, Found: 1, Remembered: 1}) {
		t.Errorf("report %+v", rep)
	}
	checkReconciled(t, n.records(t, b.PECID), b, logstore.TxReceiptOut, logstore.CauseFoundCommitted)
	n.checkReceipts(t, b, 1)
}

// TestFailOpenReceiptFailureNoSecondEnvelope: on_error = accept, the
// hold could not be taken before the hand-off and the receipt hand-off
// failed: a hold is taken then, so a retry waits for the receipt (451)
// rather than being certified a second time, and once the receipt is
// delivered late the retry gets the identifier.
func TestFailOpenReceiptFailureNoSecondEnvelope(t *testing.T) {
	n := newNode(t)
	mb := &failingMailboxes{Target: n.a.Mailboxes}
	mb.fail.Store(1)
	a := *n.a
	a.DedupFailOpen = true
	a.DedupLease = 50 * time.Millisecond
	a.Dedup = prepareUnavailable{n.store}
	a.Mailboxes = mb
	if _, err := a.Process(context.Background(), retry()); err == nil {
		t.Fatal("accepted without the receipt")
	}
	b := n.lastBusta(t)
	time.Sleep(100 * time.Millisecond) // the lease is gone
	// n.a's mailboxes work again: the retry delivers the owed receipt,
	// then gets the identifier.
	o, err := n.a.Process(context.Background(), retry())
	if err != nil || !o.Duplicate || o.ID != b.PECID {
		t.Fatalf("retry: %+v, %v; want a duplicate of %s", o, err, b.PECID)
	}
	if got := n.envelopes(t); got != 1 {
		t.Errorf("%d envelopes", got)
	}
	n.checkReceipts(t, b, 1)
}

// TestNextHopOutcomeUnknown: the next hop took the whole envelope and
// never answered the end of DATA. It may have it: the transaction must
// not be treated as "not handed off" (its retry would make a second
// envelope), nor answered 250 without a receipt. The log says the outcome
// is unknown, the hold stays (the retry gets 451, also after a restart),
// and the receipt waits unconfirmed for the operator: confirm delivers
// it and the retry gets the identifier; reject frees the submission and
// the retry is certified anew. pecgw never sends the receipt on its own.
func TestNextHopOutcomeUnknown(t *testing.T) {
	for _, decision := range []delivery.SpoolState{delivery.SpoolConfirmed, delivery.SpoolRejected} {
		t.Run(string(decision), func(t *testing.T) {
			n := newNode(t)
			a := *n.a
			a.Outbound = &recordingTarget{fail: fmt.Errorf("delivery: smtp next hop: end of DATA: %w: %w", delivery.ErrOutcomeUnknown, os.ErrDeadlineExceeded)}
			if _, err := a.Process(context.Background(), retry()); !errors.Is(err, delivery.ErrOutcomeUnknown) {
				t.Fatalf("Process = %v, want the unknown outcome", err)
			}
			b := n.lastBusta(t)
			recs := n.records(t, b.PECID)
			if last := recs[len(recs)-1]; last.State != logstore.TxOutcomeUnknown || last.Cause != logstore.CauseEnvelopeUnknown {
				t.Errorf("records %s, last %+v", types(recs), last)
			}
			if e, err := n.spool.Get(b.PECID); err != nil || e.State != delivery.SpoolUnconfirmed {
				t.Errorf("spool entry %+v, %v; want unconfirmed", e, err)
			}
			retryHeld := func(when string) {
				t.Helper()
				_, err := n.a.Process(context.Background(), retry())
				var ife *InFlightError
				if !errors.As(err, &ife) || ife.Hold != b.PECID {
					t.Fatalf("retry %s: %v; want 451, held by %s", when, err, b.PECID)
				}
			}
			retryHeld("before the operator decides")
			if got, err := n.a.RedeliverReceipts(context.Background()); got != 0 || err != nil {
				t.Errorf("redelivery of an unconfirmed receipt: %d, %v", got, err)
			}
			// The embedded store forgets its holds: Reconcile puts it back.
			if rep := n.restart(t, nil); rep != (Report{}) {
				t.Errorf("reconciliation: %+v", rep)
			}
			retryHeld("after a restart")
			if n.envelopes(t) != 0 || n.receiptFiles(t) != 0 {
				t.Fatalf("%d envelopes, %d receipts before the operator decided", n.envelopes(t), n.receiptFiles(t))
			}

			// pecgw spool confirm / reject, then the daemon's periodic run.
			if err := n.spool.Mark(b.PECID, decision); err != nil {
				t.Fatal(err)
			}
			if _, err := n.a.RedeliverReceipts(context.Background()); err != nil {
				t.Fatal(err)
			}
			recs = n.records(t, b.PECID)
			last := recs[len(recs)-1]
			o, err := n.a.Process(context.Background(), retry())
			if decision == delivery.SpoolConfirmed {
				if last.State != logstore.TxReceiptOut || last.Cause != logstore.CauseOperatorConfirmed || last.Time != b.Time {
					t.Errorf("after confirm: %+v", last)
				}
				n.checkReceipts(t, b, 1)
				if err != nil || !o.Duplicate || o.ID != b.PECID {
					t.Fatalf("retry after confirm: %+v, %v; want a duplicate of %s", o, err, b.PECID)
				}
				if got := n.envelopes(t); got != 0 {
					t.Errorf("%d more envelopes", got)
				}
			} else {
				if last.State != logstore.TxNotHandedOff || last.Cause != logstore.CauseOperatorRejected || last.Time != b.Time {
					t.Errorf("after reject: %+v", last)
				}
				if _, err := n.spool.Get(b.PECID); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("rejected receipt still spooled: %v", err)
				}
				if err != nil || o.Duplicate || o.ID == b.PECID {
					t.Fatalf("retry after reject: %+v, %v; want a new certification", o, err)
				}
				if got := n.envelopes(t); got != 1 {
					t.Errorf("%d envelopes after the new certification", got)
				}
			}
			if rep := n.restart(t, nil); rep != (Report{}) {
				t.Errorf("reconciliation after: %+v", rep)
			}
		})
	}
}

type claimUnavailable struct{ dedup.Store }

func (s claimUnavailable) Claim(ctx context.Context, k dedup.Key, lease time.Duration) (dedup.Claim, error) {
	return dedup.Claim{}, fmt.Errorf("%w: injected", dedup.ErrUnavailable)
}

// TestFailOpenWithoutClaim: on_error = accept and the store down for the
// claim. Once the envelope is out (or may be), the submission is still
// recorded, so the client's retry when the store is back is not certified
// a second time: remembered after a failed receipt, held after an unknown
// outcome.
func TestFailOpenWithoutClaim(t *testing.T) {
	for _, tc := range []struct {
		name     string
		outbound delivery.Target
		mailbox  bool // the receipt hand-off fails
		held     bool // the retry waits (unknown outcome) rather than gets the id
	}{
		{"receipt failed", nil, true, false},
		{"outcome unknown", &recordingTarget{fail: fmt.Errorf("end of DATA: %w", delivery.ErrOutcomeUnknown)}, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t)
			a := *n.a
			a.DedupFailOpen = true
			a.Dedup = claimUnavailable{n.store}
			if tc.outbound != nil {
				a.Outbound = tc.outbound
			}
			if tc.mailbox {
				a.Mailboxes = &recordingTarget{fail: errors.New("mailbox down")}
			}
			if _, err := a.Process(context.Background(), retry()); err == nil {
				t.Fatal("want a temporary failure")
			}
			b := n.lastBusta(t)
			o, err := n.a.Process(context.Background(), retry())
			var ife *InFlightError
			switch {
			case tc.held && (!errors.As(err, &ife) || ife.Hold != b.PECID):
				t.Fatalf("retry: %+v, %v; want 451 held by %s", o, err, b.PECID)
			case !tc.held && (err != nil || !o.Duplicate || o.ID != b.PECID):
				t.Fatalf("retry: %+v, %v; want a duplicate of %s", o, err, b.PECID)
			}
			if got := n.envelopes(t); got > 1 {
				t.Errorf("%d envelopes", got)
			}
		})
	}
}

// flakySpool fails the first removals or marks, as a disk in trouble.
type flakySpool struct {
	ReceiptSpool
	failRemove, failMark atomic.Int32
}

func (f *flakySpool) Remove(id string) error {
	if f.failRemove.Add(-1) >= 0 {
		return errors.New("injected: remove failed")
	}
	return f.ReceiptSpool.Remove(id)
}

func (f *flakySpool) Mark(id string, st delivery.SpoolState) error {
	if f.failMark.Add(-1) >= 0 {
		return errors.New("injected: rename failed")
	}
	return f.ReceiptSpool.Mark(id, st)
}

// countCause counts the records of pecID of the event on.
func countCause(t *testing.T, n *node, pecID string, on logstore.TxCause) int {
	t.Helper()
	c := 0
	for _, r := range n.records(t, pecID) {
		if r.Cause == on {
			c++
		}
	}
	return c
}

// TestOperatorDecisionAppliedOnce: a confirmation or a rejection whose
// spool entry could not be removed after it was logged is not applied
// again, neither by the next periodic run nor by the next start.
func TestOperatorDecisionAppliedOnce(t *testing.T) {
	for _, decision := range []delivery.SpoolState{delivery.SpoolConfirmed, delivery.SpoolRejected} {
		t.Run(string(decision), func(t *testing.T) {
			n := newNode(t)
			a := *n.a
			a.Outbound = &recordingTarget{fail: fmt.Errorf("end of DATA: %w", delivery.ErrOutcomeUnknown)}
			if _, err := a.Process(context.Background(), retry()); !errors.Is(err, delivery.ErrOutcomeUnknown) {
				t.Fatal(err)
			}
			b := n.lastBusta(t)
			if err := n.spool.Mark(b.PECID, decision); err != nil {
				t.Fatal(err)
			}
			fs := &flakySpool{ReceiptSpool: n.spool}
			fs.failRemove.Store(2)
			n.a.Receipts = fs
			want := logstore.CauseOperatorConfirmed
			if decision == delivery.SpoolRejected {
				want = logstore.CauseOperatorRejected
			}
			for range 2 { // the periodic run, twice, the removal failing
				if _, err := n.a.RedeliverReceipts(context.Background()); err == nil {
					t.Error("redelivery: want the removal's error")
				}
			}
			if got := countCause(t, n, b.PECID, want); got != 1 {
				t.Errorf("%d records of the decision after two runs, want 1", got)
			}
			if _, err := n.spool.Get(b.PECID); err != nil {
				t.Fatalf("entry gone already: %v", err)
			}
			// The process dies with the entry still there.
			n.restart(t, nil)
			if got := countCause(t, n, b.PECID, want); got != 1 {
				t.Errorf("%d records of the decision after the restart, want 1", got)
			}
			if _, err := n.spool.Get(b.PECID); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("entry after the restart: %v", err)
			}
			if decision == delivery.SpoolConfirmed {
				n.checkReceipts(t, b, 1)
			}
		})
	}
}

// TestUnconfirmedMarkRedone: the unconfirmed mark failed (a disk in
// trouble): the log says the outcome is unknown all the same, so the
// receipt stays for the operator, the periodic run marks it, and the
// retry waits for the operator's decision (never a 250 without a
// receipt, never a second envelope), also after a restart.
func TestUnconfirmedMarkRedone(t *testing.T) {
	n := newNode(t)
	fs := &flakySpool{ReceiptSpool: n.spool}
	fs.failMark.Store(1)
	a := *n.a
	a.Receipts = fs
	a.Outbound = &recordingTarget{fail: fmt.Errorf("end of DATA: %w", delivery.ErrOutcomeUnknown)}
	if _, err := a.Process(context.Background(), retry()); !errors.Is(err, delivery.ErrOutcomeUnknown) {
		t.Fatal(err)
	}
	b := n.lastBusta(t)
	if got := countCause(t, n, b.PECID, logstore.CauseEnvelopeUnknown); got != 1 {
		t.Errorf("records %s", types(n.records(t, b.PECID)))
	}
	if e, err := n.spool.Get(b.PECID); err != nil || e.State != delivery.SpoolPending {
		t.Fatalf("entry %+v, %v; want still pending", e, err)
	}
	if _, err := n.a.RedeliverReceipts(context.Background()); err != nil {
		t.Fatal(err)
	}
	if e, err := n.spool.Get(b.PECID); err != nil || e.State != delivery.SpoolUnconfirmed {
		t.Fatalf("entry after the periodic run %+v, %v; want unconfirmed", e, err)
	}
	for _, when := range []string{"before", "after"} {
		_, err := n.a.Process(context.Background(), retry())
		var ife *InFlightError
		if !errors.As(err, &ife) || ife.Hold != b.PECID {
			t.Fatalf("retry %s a restart: %v; want 451 held by %s", when, err, b.PECID)
		}
		if when == "before" {
			n.restart(t, nil)
		}
	}
}
