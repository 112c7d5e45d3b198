package gateway

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/pecgw/pecgw/delivery"
	"github.com/pecgw/pecgw/logstore"
)

// failingMailboxes fails the first n hand-offs, as a mailbox store that
// is down would.
type failingMailboxes struct {
	delivery.Target
	fail atomic.Int32
}

func (f *failingMailboxes) Deliver(ctx context.Context, m *delivery.Message) error {
	if f.fail.Add(-1) >= 0 {
		return errors.New("mailbox store down")
	}
	return f.Target.Deliver(ctx, m)
}

// HasMessageFor passes the real mailboxes' answer on.
func (f *failingMailboxes) HasMessageFor(rcpt, messageID string) (bool, error) {
	return f.Target.(delivery.MailboxFinder).HasMessageFor(rcpt, messageID)
}

// TestReceiptFailureRetryDelivers: the envelope went out, the receipt's
// hand-off failed: the client gets 451 and nothing certifies a second
// envelope. Its retry, while the mailbox store is still down, gets 451
// again (no 250 before the receipt is out: invariant 1); once the store
// is back, the retry delivers the spooled receipt (the same bytes, signed
// at the transaction's instant) and gets 250 with the original id.
func TestReceiptFailureRetryDelivers(t *testing.T) {
	n := newNode(t)
	mb := &failingMailboxes{Target: n.a.Mailboxes}
	mb.fail.Store(2)
	n.a.Mailboxes = mb
	ctx := context.Background()
	if _, err := n.a.Process(ctx, retry()); err == nil || !strings.Contains(err.Error(), causeText[logstore.CauseReceiptFailed]) {
		t.Fatalf("first: %v, want the receipt failure", err)
	}
	b := n.lastBusta(t)
	if e, err := n.spool.Get(b.PECID); err != nil || e.State != delivery.SpoolOut {
		t.Fatalf("spool entry %+v, %v; want out", e, err)
	}
	if _, err := n.a.Process(ctx, retry()); err == nil {
		t.Fatal("retry answered while the receipt is still not delivered")
	}
	o, err := n.a.Process(ctx, retry())
	if err != nil || !o.Duplicate || o.ID != b.PECID {
		t.Fatalf("retry: %+v, %v; want a duplicate of %s", o, err, b.PECID)
	}
	if got := n.envelopes(t); got != 1 {
		t.Errorf("%d envelopes", got)
	}
	n.checkReceipts(t, b, 1)
	recs := n.records(t, b.PECID)
	late := recs[len(recs)-2] // then the duplicate record
	if late.State != logstore.TxReceiptOut || late.Cause != logstore.CauseRedelivered || late.Time != b.Time || !strings.Contains(late.Detail, "on the client's retry") {
		t.Errorf("records %s; late hand-off %+v", types(recs), late)
	}
	// Nothing left to do for the reconciliation.
	if rep := n.restart(t, nil); rep != (Report{}) {
		t.Errorf("reconciliation after: %+v", rep)
	}
	n.checkReceipts(t, b, 1)
}

// TestRedeliverReceipts: a receipt whose hand-off failed and whose client
// never retried here is delivered by the periodic redelivery, once.
func TestRedeliverReceipts(t *testing.T) {
	n := newNode(t)
	mb := &failingMailboxes{Target: n.a.Mailboxes}
	mb.fail.Store(2)
	n.a.Mailboxes = mb
	ctx := context.Background()
	if _, err := n.a.Process(ctx, retry()); err == nil {
		t.Fatal("accepted without the receipt")
	}
	b := n.lastBusta(t)
	if got, err := n.a.RedeliverReceipts(ctx); got != 0 || err == nil {
		t.Errorf("redelivery with the store down: %d, %v; want 0 and the error", got, err)
	}
	if got, err := n.a.RedeliverReceipts(ctx); got != 1 || err != nil {
		t.Errorf("redelivery: %d, %v; want 1", got, err)
	}
	if got, err := n.a.RedeliverReceipts(ctx); got != 0 || err != nil {
		t.Errorf("second redelivery: %d, %v; want nothing to do", got, err)
	}
	n.checkReceipts(t, b, 1)
	o, err := n.a.Process(ctx, retry())
	if err != nil || !o.Duplicate || o.ID != b.PECID {
		t.Fatalf("retry: %+v, %v; want a duplicate of %s", o, err, b.PECID)
	}
	n.checkReceipts(t, b, 1)
}

// TestSpoolEmptyAfterSuccess: an ordinary transaction leaves nothing in
// the spool, and a refused one never spools anything.
func TestSpoolEmptyAfterSuccess(t *testing.T) {
	n := newNode(t)
	if _, err := n.a.Process(context.Background(), retry()); err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(goodMessage, "From: Mario <mario@pec.example.it>\r\n", "", 1)
	if o, err := n.a.Process(context.Background(), submission(bad, "anna@pec.altro.it")); err != nil || o.Accepted {
		t.Fatalf("refusal: %+v %v", o, err)
	}
	if _, ids, err := n.spool.List(); err != nil || len(ids) != 0 {
		t.Errorf("spool after: %v, %v", ids, err)
	}
}

// BenchmarkProcess is one accepted submission (10 KB) through the real
// parts on this machine's disk: log (fsync'd), receipt spool, embedded
// dedup store, maildir hand-offs, with few and many clients at once.
func BenchmarkProcess(b *testing.B) {
	body := strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n", 175)
	{
		for _, par := range []int{1, 8} {
			b.Run(fmt.Sprintf("goroutines=%d", par*runtime.GOMAXPROCS(0)), func(b *testing.B) {
				n := &node{logDir: b.TempDir(), dedupDir: b.TempDir(), dataDir: b.TempDir()}
				n.startTB(b)
				var seq atomic.Int64
				b.SetParallelism(par)
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						raw := strings.Replace(goodMessage, "<c1@mua>", fmt.Sprintf("<b%d@mua>", seq.Add(1)), 1)
						raw = strings.Replace(raw, "ciao\r\n", body, 1)
						if _, err := n.a.Process(context.Background(), submission(raw, "anna@pec.altro.it", "luca@example.com")); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}
