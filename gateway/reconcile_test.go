package gateway

import (
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pecgw/pecgw/dedup"
	"github.com/pecgw/pecgw/delivery"
	"github.com/pecgw/pecgw/internal/testpki"
	"github.com/pecgw/pecgw/logstore"
	"github.com/pecgw/pecgw/pec"
)

// The crash tests run the real transaction against a real log, a real
// embedded dedup store and real maildirs, and "kill" it at one point:
// from then on nothing it does reaches the log or the store, as if the
// process had died (no aborted record, no Commit or Release). Then the
// node "restarts": log and store are closed and reopened (the embedded
// store forgets its leases) and Reconcile runs, as newServer does.

var errCrashed = errors.New("process killed")

type crashSwitch struct{ dead atomic.Bool }

// crashLog drops appends once the process is dead.
type crashLog struct {
	l TransactionLog
	c *crashSwitch
}

func (cl crashLog) Append(ctx context.Context, r *logstore.Record) (uint64, string, error) {
	if cl.c.dead.Load() {
		return 0, "", errCrashed
	}
	return cl.l.Append(ctx, r)
}

func (cl crashLog) AppendAll(ctx context.Context, recs ...*logstore.Record) ([]uint64, []string, error) {
	if cl.c.dead.Load() {
		return nil, nil, errCrashed
	}
	return cl.l.AppendAll(ctx, recs...)
}

// crashStore drops commits and releases once the process is dead.
type crashStore struct {
	dedup.Store
	c *crashSwitch
}

func (cs crashStore) Commit(ctx context.Context, k dedup.Key, token, pecID string, window time.Duration) error {
	if cs.c.dead.Load() {
		return errCrashed
	}
	return cs.Store.Commit(ctx, k, token, pecID, window)
}

func (cs crashStore) Abandon(ctx context.Context, id, pecID string) error {
	if cs.c.dead.Load() {
		return errCrashed
	}
	return cs.Store.Abandon(ctx, id, pecID)
}

func (cs crashStore) Release(ctx context.Context, k dedup.Key, token string) error {
	if cs.c.dead.Load() {
		return errCrashed
	}
	return cs.Store.Release(ctx, k, token)
}

// crashSpool drops every change to the receipt spool once the process is
// dead.
type crashSpool struct {
	ReceiptSpool
	c *crashSwitch
}

func (cs crashSpool) Put(e *delivery.SpoolEntry) error {
	if cs.c.dead.Load() {
		return errCrashed
	}
	return cs.ReceiptSpool.Put(e)
}

func (cs crashSpool) Mark(id string, st delivery.SpoolState) error {
	if cs.c.dead.Load() {
		return errCrashed
	}
	return cs.ReceiptSpool.Mark(id, st)
}

func (cs crashSpool) Remove(id string) error {
	if cs.c.dead.Load() {
		return errCrashed
	}
	return cs.ReceiptSpool.Remove(id)
}

// crashTarget kills the process when a hand-off starts (before) or right
// after it is durable (!before).
type crashTarget struct {
	t      delivery.Target
	c      *crashSwitch
	before bool
}

func (ct crashTarget) Deliver(ctx context.Context, m *delivery.Message) error {
	if ct.before {
		ct.c.dead.Store(true)
		return errCrashed
	}
	if err := ct.t.Deliver(ctx, m); err != nil {
		return err
	}
	ct.c.dead.Store(true)
	return errCrashed
}

// node is one run of the gateway over persistent folders.
type node struct {
	logDir, dedupDir, dataDir string
	log                       *logstore.Log
	store                     dedup.Store
	spool                     *delivery.Spool
	local                     *delivery.Local
	a                         *Acceptor
	// redisAddr: the node's store is this Redis, not an embedded store.
	redisAddr string
}

func newNode(t *testing.T) *node {
	n := &node{logDir: t.TempDir(), dedupDir: t.TempDir(), dataDir: t.TempDir()}
	n.start(t)
	return n
}

// newRedisNode is a node whose dedup store is the Redis at addr.
func newRedisNode(t *testing.T, addr string) *node {
	n := &node{logDir: t.TempDir(), dataDir: t.TempDir(), redisAddr: addr}
	n.start(t)
	return n
}

// start opens the log and the store and builds the Acceptor.
func (n *node) start(t *testing.T) { t.Helper(); n.startTB(t) }

func (n *node) startTB(t testing.TB) {
	t.Helper()
	s := testpki.Signer(t, "p256")
	l, err := logstore.Open(logstore.Options{Dir: n.logDir, Signer: s, Provider: testpki.ProviderName, Now: func() time.Time { return fixedNow }})
	if err != nil {
		t.Fatal(err)
	}
	var st dedup.Store
	if n.redisAddr != "" {
		st, err = dedup.NewRedis(dedup.RedisOptions{Addrs: []string{n.redisAddr}, Timeout: time.Second})
	} else {
		st, err = dedup.OpenEmbedded(n.dedupDir)
	}
	if err != nil {
		l.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(); st.Close() })
	if n.spool != nil {
		n.spool.Close() // the process before is gone, and its lock with it
	}
	sp, err := delivery.OpenSpool(filepath.Join(n.dataDir, "spool"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	n.log, n.store, n.local, n.spool = l, st, delivery.NewLocal(n.dataDir), sp
	n.a = &Acceptor{
		Provider:     pec.Provider{Name: testpki.ProviderName, Domain: testpki.Domain},
		Directory:    pec.NewDomainDirectory([]string{testpki.Domain}, []string{"pec.altro.it"}),
		Signer:       s,
		Log:          l,
		Outbound:     n.local.Outbound(),
		Mailboxes:    n.local.Mailboxes(),
		Dedup:        st,
		Receipts:     sp,
		Transactions: NewTransactions(),
		Now:          func() time.Time { return fixedNow },
		Rand:         rand.Reader,
	}
}

// crashAt runs sub with the process killed at the hand-off of the
// envelope (outbound) or of the receipt (!outbound).
func (n *node) crashAt(t *testing.T, sub *Submission, outbound, before bool) {
	t.Helper()
	c := &crashSwitch{}
	a := *n.a
	a.Log = crashLog{n.log, c}
	a.Dedup = crashStore{n.store, c}
	a.Receipts = crashSpool{n.spool, c}
	if outbound {
		a.Outbound = crashTarget{n.a.Outbound, c, before}
	} else {
		a.Mailboxes = crashTarget{n.a.Mailboxes, c, before}
	}
	if _, err := a.Process(context.Background(), sub); !errors.Is(err, errCrashed) {
		t.Fatalf("Process = %v, want the crash", err)
	}
}

// restart closes and reopens the log and the store, then reconciles.
func (n *node) restart(t *testing.T, outbound delivery.Target) Report {
	t.Helper()
	if err := n.log.Close(); err != nil {
		t.Fatal(err)
	}
	if err := n.store.Close(); err != nil {
		t.Fatal(err)
	}
	n.start(t)
	if outbound == nil {
		outbound = n.a.Outbound
	}
	return n.reconcile(t, outbound)
}

func (n *node) reconcile(t *testing.T, outbound delivery.Target) Report {
	t.Helper()
	rep, err := n.a.Reconcile(context.Background(), ReconcileInput{LogDir: n.logDir, Outbound: outbound, Now: fixedNow.Add(time.Minute)})
	if err != nil {
		t.Fatalf("Reconcile: %v", err)
	}
	return rep
}

func (n *node) envelopes(t *testing.T) int {
	t.Helper()
	count := 0
	for _, sub := range []string{"new", "cur"} {
		entries, err := os.ReadDir(filepath.Join(n.dataDir, "outbound", sub))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		count += len(entries)
	}
	return count
}

// records returns the transaction records of pecID, in log order.
func (n *node) records(t *testing.T, pecID string) []*logstore.Record {
	t.Helper()
	var out []*logstore.Record
	err := logstore.Query(n.logDir, logstore.Filter{PECID: pecID}, func(h logstore.Hit) error {
		out = append(out, h.Record)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// lastBusta returns the newest busta-trasporto record.
func (n *node) lastBusta(t *testing.T) *logstore.Record {
	t.Helper()
	var b *logstore.Record
	err := logstore.Query(n.logDir, logstore.Filter{}, func(h logstore.Hit) error {
		if h.Record.Type == logstore.EventBustaTrasporto {
			b = h.Record
		}
		return nil
	})
	if err != nil || b == nil {
		t.Fatalf("no busta-trasporto record: %v", err)
	}
	return b
}

func types(recs []*logstore.Record) string {
	var s []string
	for _, r := range recs {
		s = append(s, string(r.Type)+"/"+string(r.Tx().State))
	}
	return strings.Join(s, ",")
}

// checkReconciled checks the record Reconcile appended to b's
// transaction: it reached state st by the event on.
func checkReconciled(t *testing.T, recs []*logstore.Record, b *logstore.Record, st logstore.TxState, on logstore.TxCause) {
	t.Helper()
	last := recs[len(recs)-1]
	if tx := last.Tx(); tx.State != st || tx.Cause != on {
		t.Fatalf("records %s, the last %s/%s, want %s/%s", types(recs), tx.State, tx.Cause, st, on)
	}
	if last.Type != st.Types()[0] || !strings.Contains(last.Detail, "reconciliation ran at 2026-11-23T10:31:00+01:00") {
		t.Errorf("type %s, detail %q", last.Type, last.Detail)
	}
	// The transaction's time reference, not the reconciliation's.
	if last.Time != b.Time || last.PECID != b.PECID || last.Dedup == nil || *last.Dedup != *b.Dedup || last.MsgID != b.MsgID ||
		last.Sender != b.Sender || last.User != b.User || last.Subject != b.Subject || last.Provider != b.Provider ||
		len(last.Recipients) != len(b.Recipients) || last.Generated == nil || *last.Generated != *b.Generated {
		t.Errorf("reconciled record %+v\ndoes not copy the busta-trasporto %+v", last, b)
	}
}

func retry() *Submission { return submission(goodMessage, "anna@pec.altro.it", "luca@example.com") }

// TestReconcileEnvelopeOut: killed after the envelope is in outbound/ and
// before the dedup commit. After the restart the retry is a duplicate with
// the original identifier, and there is still one envelope (invariant 3).
func TestReconcileEnvelopeOut(t *testing.T) {
	for _, tc := range []struct {
		name             string
		outbound, before bool
	}{
		{"envelope written", true, false},
		{"receipt hand-off started", false, true},
		{"receipt written", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t)
			n.crashAt(t, retry(), tc.outbound, tc.before)
			b := n.lastBusta(t)
			if got := n.envelopes(t); got != 1 {
				t.Fatalf("%d envelopes before the restart", got)
			}
			rep := n.restart(t, nil)
			if rep != (Report{Incomplete: 1, Found: 1, Remembered: 1, Receipts: 1}) {
				t.Errorf("report %+v", rep)
			}
			recs := n.records(t, b.PECID)
			checkReconciled(t, recs, b, logstore.TxReceiptOut, logstore.CauseFoundOut)
			// The spooled receipt, signed at the transaction's instant,
			// reached the sender exactly once (invariant 1); the detail
			// tells people whether it was found there already.
			found := strings.Contains(recs[len(recs)-1].Detail, "found in the sender's mailbox")
			if found != (tc.name == "receipt written") {
				t.Errorf("detail %q", recs[len(recs)-1].Detail)
			}
			n.checkReceipts(t, b, 1)
			o, err := n.a.Process(context.Background(), retry())
			if err != nil || !o.Duplicate || o.ID != b.PECID {
				t.Fatalf("retry: %+v, %v; want a duplicate of %s", o, err, b.PECID)
			}
			if got := n.envelopes(t); got != 1 {
				t.Errorf("%d envelopes after the retry", got)
			}
		})
	}
}

// TestReconcileEnvelopeNotOut: killed before the envelope was written.
// The transaction is aborted and the retry is certified as new.
func TestReconcileEnvelopeNotOut(t *testing.T) {
	n := newNode(t)
	n.crashAt(t, retry(), true, true)
	b := n.lastBusta(t)
	rep := n.restart(t, nil)
	if rep != (Report{Incomplete: 1, NotFound: 1, ReceiptsDropped: 1}) {
		t.Errorf("report %+v", rep)
	}
	checkReconciled(t, n.records(t, b.PECID), b, logstore.TxNotHandedOff, logstore.CauseFoundNotOut)
	n.checkReceipts(t, b, 0) // never certify a message that was not sent
	o, err := n.a.Process(context.Background(), retry())
	if err != nil || o.Duplicate || o.ID == b.PECID {
		t.Fatalf("retry: %+v, %v; want a new certification", o, err)
	}
	if got := n.envelopes(t); got != 1 {
		t.Errorf("%d envelopes", got)
	}
}

// TestReconcileNextHopUnknown: with an outbound target that cannot be
// searched and a store that cannot tell (embedded), the outcome is
// unknown: aborted, the receipt kept unconfirmed, the hold put back, so a
// retry waits for the operator (at most one envelope, no 250 without a
// receipt) — also after another restart.
func TestReconcileNextHopUnknown(t *testing.T) {
	n := newNode(t)
	n.crashAt(t, retry(), true, false)
	b := n.lastBusta(t)
	rep := n.restart(t, &recordingTarget{})
	if rep != (Report{Incomplete: 1, Unknown: 1, ReceiptsUnconfirmed: 1}) {
		t.Errorf("report %+v", rep)
	}
	checkReconciled(t, n.records(t, b.PECID), b, logstore.TxOutcomeUnknown, logstore.CauseFoundUnknown)
	// The receipt is kept for the operator, not delivered.
	if e, err := n.spool.Get(b.PECID); err != nil || e.State != delivery.SpoolUnconfirmed {
		t.Errorf("spool entry %+v, %v; want unconfirmed", e, err)
	}
	if got := n.receiptFiles(t); got != 0 {
		t.Errorf("%d receipts delivered for an envelope of unknown fate", got)
	}
	for _, when := range []string{"after the reconciliation", "after another restart"} {
		_, err := n.a.Process(context.Background(), retry())
		var ife *InFlightError
		if !errors.As(err, &ife) || ife.Hold != b.PECID {
			t.Fatalf("retry %s: %v; want 451, held by %s", when, err, b.PECID)
		}
		if when == "after the reconciliation" {
			if rep := n.restart(t, &recordingTarget{}); rep != (Report{}) {
				t.Errorf("second reconciliation: %+v", rep)
			}
		}
	}
}

// TestReconcileLeavesCompleteAlone: completed, refused, duplicate and
// aborted transactions are not touched, and a second run does nothing.
func TestReconcileLeavesCompleteAlone(t *testing.T) {
	n := newNode(t)
	ctx := context.Background()
	done, err := n.a.Process(ctx, retry())
	if err != nil {
		t.Fatal(err)
	}
	if o, err := n.a.Process(ctx, retry()); err != nil || !o.Duplicate {
		t.Fatalf("duplicate: %+v %v", o, err)
	}
	bad := strings.Replace(goodMessage, "From: Mario <mario@pec.example.it>\r\n", "", 1)
	if o, err := n.a.Process(ctx, submission(bad, "anna@pec.altro.it")); err != nil || o.Accepted {
		t.Fatalf("refusal: %+v %v", o, err)
	}
	// A hand-off failure that the Acceptor itself logged as aborted.
	failing := *n.a
	failing.Outbound = &recordingTarget{fail: errors.New("down")}
	other := strings.Replace(goodMessage, "<c1@mua>", "<c2@mua>", 1)
	if _, err := failing.Process(ctx, submission(other, "anna@pec.altro.it", "luca@example.com")); err == nil {
		t.Fatal("accepted without hand-off")
	}
	// And one crashed transaction, so that there is something to do.
	third := strings.Replace(goodMessage, "<c1@mua>", "<c3@mua>", 1)
	n.crashAt(t, submission(third, "anna@pec.altro.it", "luca@example.com"), false, true)

	count := func() int {
		c := 0
		if err := logstore.Query(n.logDir, logstore.Filter{}, func(h logstore.Hit) error {
			if h.Record.Type != logstore.EventCheckpoint && h.Record.Type != logstore.EventSeal {
				c++
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return c
	}
	before := count()
	completed := types(n.records(t, done.ID))
	if rep := n.restart(t, nil); rep != (Report{Incomplete: 1, Found: 1, Remembered: 1, Receipts: 1}) {
		t.Errorf("first run %+v", rep)
	}
	if got := count(); got != before+1 {
		t.Errorf("%d records appended, want 1", got-before)
	}
	if got := types(n.records(t, done.ID)); got != completed {
		t.Errorf("completed transaction now %s, was %s", got, completed)
	}
	// Twice, and across another restart: nothing more to do.
	if rep := n.reconcile(t, n.a.Outbound); rep != (Report{}) {
		t.Errorf("second run %+v", rep)
	}
	if rep := n.restart(t, nil); rep != (Report{}) {
		t.Errorf("run after another restart %+v", rep)
	}
	if got := count(); got != before+1 {
		t.Errorf("%d records appended in all, want 1", got-before)
	}
}

// TestReconcileWindow: the log is read back one window only, but a
// receipt still spooled for an envelope that is out is delivered all the
// same, late rather than never: its transaction's records are read from
// the whole log.
func TestReconcileWindow(t *testing.T) {
	n := newNode(t)
	n.crashAt(t, retry(), true, false)
	b := n.lastBusta(t)
	n.a.DedupWindow = time.Hour
	rep, err := n.a.Reconcile(context.Background(), ReconcileInput{LogDir: n.logDir, Now: fixedNow.Add(2 * time.Hour)})
	if err != nil || rep != (Report{Incomplete: 1, Found: 1, Remembered: 1, Receipts: 1}) {
		t.Errorf("Reconcile past the window = %+v, %v", rep, err)
	}
	n.checkReceipts(t, b, 1)
	if last := n.records(t, b.PECID); last[len(last)-1].State != logstore.TxReceiptOut {
		t.Errorf("records %s", types(last))
	}
}

// receiptFiles counts the messages in the sender's mailbox.
func (n *node) receiptFiles(t *testing.T) int {
	t.Helper()
	count := 0
	for _, sub := range []string{"new", "cur"} {
		entries, err := os.ReadDir(filepath.Join(n.dataDir, "mailboxes", "mario@pec.example.it", sub))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		count += len(entries)
	}
	return count
}

// checkReceipts checks that the sender's mailbox holds want receipts, the
// receipt of b among them when want > 0, and that nothing of b is left
// in the spool.
func (n *node) checkReceipts(t *testing.T, b *logstore.Record, want int) {
	t.Helper()
	if got := n.receiptFiles(t); got != want {
		t.Errorf("%d messages in the sender's mailbox, want %d", got, want)
	}
	if want > 0 {
		has, err := delivery.NewMaildir(filepath.Join(n.dataDir, "mailboxes", "mario@pec.example.it")).HasMessage(b.Generated.Receipt)
		if err != nil || !has {
			t.Errorf("the receipt %s is not in the sender's mailbox (%v)", b.Generated.Receipt, err)
		}
	}
	if _, err := n.spool.Get(b.PECID); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("spool entry of %s still there: %v", b.PECID, err)
	}
}
