package gateway

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pecgw/pecgw/dedup"
	"github.com/pecgw/pecgw/logstore"
)

func withDedup(t *testing.T, f *fixture) *dedup.Embedded {
	t.Helper()
	st, err := dedup.OpenEmbedded(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f.a.Dedup = st
	return st
}

func countTypes(recs []*logstore.Record) map[logstore.Event]int {
	n := map[logstore.Event]int{}
	for _, r := range recs {
		n[r.Type]++
	}
	return n
}

// TestRetryGetsTheOriginalID: the same submission twice makes one
// envelope; the retry is answered with the first PEC identifier and
// logged as a duplicate (invariant 3 of docs/architecture.md).
func TestRetryGetsTheOriginalID(t *testing.T) {
	f := newFixture(t)
	withDedup(t, f)
	sub := submission(goodMessage, "anna@pec.altro.it", "luca@example.com")
	first, err := f.a.Process(context.Background(), sub)
	if err != nil {
		t.Fatal(err)
	}
	again, err := f.a.Process(context.Background(), submission(goodMessage, "luca@example.com", "anna@pec.altro.it"))
	if err != nil {
		t.Fatal(err)
	}
	if !again.Duplicate || again.ID != first.ID {
		t.Fatalf("retry %+v, first %s", again, first.ID)
	}
	if len(f.out.got) != 1 || len(f.box.got) != 1 {
		t.Errorf("%d envelopes and %d receipts for one submission", len(f.out.got), len(f.box.got))
	}
	recs := f.records(t)
	if n := countTypes(recs); n[logstore.EventDuplicate] != 1 || n[logstore.EventBustaTrasporto] != 1 {
		t.Errorf("log %v", n)
	}
	// Every record carries the key a retry is recognised by, the same in
	// the first transaction and in the duplicate.
	k := dedup.Key{Sender: sub.User, MessageID: "<c1@mua>", Recipients: sub.Envelope.To, BodyHash: sha256.Sum256([]byte(goodMessage))}
	for _, r := range recs {
		if r.Dedup == nil || *r.Dedup != (logstore.DedupKey{ID: k.ID(), FP: k.Fingerprint()}) || r.DedupKey != "" {
			t.Errorf("%s record dedup %+v, dedup_key %q", r.Type, r.Dedup, r.DedupKey)
		}
	}
	if r := AcceptedReply("", again); r.Code != 250 || !strings.HasPrefix(r.Message, first.ID+" Messaggio gia' accettato") {
		t.Errorf("reply %+v", r)
	}

	// The same Message-ID with another body is a new message, and its
	// reuse is logged.
	other := strings.Replace(goodMessage, "ciao", "altro testo", 1)
	o, err := f.a.Process(context.Background(), submission(other, "anna@pec.altro.it", "luca@example.com"))
	if err != nil || o.Duplicate || o.ID == first.ID {
		t.Fatalf("reused Message-ID: %+v, %v", o, err)
	}
	recs = f.records(t)
	if last := recs[len(recs)-1]; !strings.Contains(last.Detail, "accepted before with other content") {
		t.Errorf("reuse not logged: %+v", last)
	}
}

func TestInFlightTwinGets451(t *testing.T) {
	f := newFixture(t)
	st := withDedup(t, f)
	raw := goodMessage
	sub := submission(raw, "anna@pec.altro.it", "luca@example.com")
	k := dedup.Key{Sender: sub.User, MessageID: "<c1@mua>", Recipients: sub.Envelope.To, BodyHash: sha256.Sum256([]byte(raw))}
	if c, err := st.Claim(context.Background(), k, time.Minute); err != nil || c.State != dedup.New {
		t.Fatalf("claim %+v %v", c, err)
	}
	_, err := f.a.Process(context.Background(), sub)
	if !errors.Is(err, ErrInFlight) {
		t.Fatalf("err = %v, want ErrInFlight", err)
	}
	if r := InternalReply("", err); r.Code != 451 || !strings.Contains(r.Message, "ancora in lavorazione") || !strings.Contains(r.Message, "being processed") {
		t.Errorf("reply %+v", r)
	}
	if len(f.out.got)+len(f.box.got) != 0 {
		t.Error("something was emitted for an in-flight twin")
	}
}

// TestFailedHandOffFreesTheClaim: before the envelope is out a failure
// lets the retry proceed; after it is out, the retry is a duplicate even
// if the receipt failed (one envelope, ever). The fixture has no receipt
// spool: the receipt cannot be delivered later (with a spool the retry
// waits for it, TestReceiptFailureRetryDelivers).
func TestFailedHandOffFreesTheClaim(t *testing.T) {
	boom := errors.New("down")
	t.Run("envelope failed", func(t *testing.T) {
		f := newFixture(t)
		withDedup(t, f)
		f.out.fail = boom
		if _, err := f.a.Process(context.Background(), submission(goodMessage, "anna@pec.altro.it", "luca@example.com")); err == nil {
			t.Fatal("accepted without hand-off")
		}
		f.out.fail = nil
		o, err := f.a.Process(context.Background(), submission(goodMessage, "anna@pec.altro.it", "luca@example.com"))
		if err != nil || o.Duplicate || len(f.out.got) != 1 {
			t.Fatalf("retry: %+v %v, %d envelopes", o, err, len(f.out.got))
		}
	})
	t.Run("receipt failed", func(t *testing.T) {
		f := newFixture(t)
		withDedup(t, f)
		f.box.fail = boom
		if _, err := f.a.Process(context.Background(), submission(goodMessage, "anna@pec.altro.it", "luca@example.com")); err == nil {
			t.Fatal("250 without the receipt")
		}
		f.box.fail = nil
		o, err := f.a.Process(context.Background(), submission(goodMessage, "anna@pec.altro.it", "luca@example.com"))
		if err != nil || !o.Duplicate || len(f.out.got) != 1 {
			t.Fatalf("retry after the envelope went out: %+v %v, %d envelopes", o, err, len(f.out.got))
		}
	})
}

// TestNoMessageIDNoDedup: without a Message-ID there is nothing to
// recognise a retry by; each submission is certified.
func TestNoMessageIDNoDedup(t *testing.T) {
	f := newFixture(t)
	withDedup(t, f)
	raw := strings.Replace(goodMessage, "Message-ID: <c1@mua>\r\n", "", 1)
	for range 2 {
		if o, err := f.a.Process(context.Background(), submission(raw, "anna@pec.altro.it", "luca@example.com")); err != nil || o.Duplicate {
			t.Fatalf("%+v %v", o, err)
		}
	}
	if len(f.out.got) != 2 {
		t.Errorf("%d envelopes", len(f.out.got))
	}
}

// flakyCommits fails the first n commits as an unreachable store would.
type flakyCommits struct {
	dedup.Store
	fail atomic.Int32
}

func (s *flakyCommits) Commit(ctx context.Context, k dedup.Key, token, pecID string, window time.Duration) error {
	if s.fail.Add(-1) >= 0 {
		return fmt.Errorf("%w: injected", dedup.ErrUnavailable)
	}
	return s.Store.Commit(ctx, k, token, pecID, window)
}

// TestFailedCommitIsRetried: the store fails the commit right after the
// envelope went out. The client still gets its 250 (the envelope and the
// receipt are out and logged); a retry meanwhile gets 451, never a second
// envelope, as the hold still names the transaction; once the background
// commit succeeds the retry is answered as a duplicate.
func TestFailedCommitIsRetried(t *testing.T) {
	f := newFixture(t)
	st := &flakyCommits{Store: withDedup(t, f)}
	st.fail.Store(2) // the transaction's commit and the first background try
	f.a.Dedup = st
	sub := func() *Submission { return submission(goodMessage, "anna@pec.altro.it", "luca@example.com") }
	o, err := f.a.Process(context.Background(), sub())
	if err != nil || !o.Accepted || !o.DedupSkipped {
		t.Fatalf("first: %+v, %v; want accepted with the commit failed", o, err)
	}
	_, err = f.a.Process(context.Background(), sub())
	var ife *InFlightError
	if !errors.As(err, &ife) || ife.Hold != o.ID {
		t.Fatalf("retry before the commit: %v; want in flight, held by %s", err, o.ID)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, err := f.a.Process(context.Background(), sub())
		if err == nil {
			if !r.Duplicate || r.ID != o.ID {
				t.Fatalf("retry: %+v; want a duplicate of %s", r, o.ID)
			}
			break
		}
		if !errors.Is(err, ErrInFlight) || time.Now().After(deadline) {
			t.Fatalf("retry: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(f.out.got) != 1 {
		t.Errorf("%d envelopes", len(f.out.got))
	}
}
