package gateway

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/pecgw/pecgw/dedup"
	"github.com/pecgw/pecgw/internal/testtool"
)

func redisStore(t *testing.T, addr string) *dedup.Redis {
	t.Helper()
	st, err := dedup.NewRedis(dedup.RedisOptions{Addrs: []string{addr}, Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// TestTwoInstancesOneRedis: two access points sharing one Redis receive
// the same submission at the same time: exactly one envelope, and both
// clients end with the same PEC identifier.
func TestTwoInstancesOneRedis(t *testing.T) {
	r := testtool.StartRedis(t)
	for round := range 5 {
		a, b := newFixture(t), newFixture(t)
		a.a.Dedup, b.a.Dedup = redisStore(t, r.Addr), redisStore(t, r.Addr)
		msg := goodMessage[:len(goodMessage)-len("ciao\r\n")] + "round " + string(rune('0'+round)) + "\r\n"
		var wg sync.WaitGroup
		start := make(chan struct{})
		ids := make([]string, 2)
		for i, f := range []*fixture{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				for {
					o, err := f.a.Process(context.Background(), submission(msg, "anna@pec.altro.it", "luca@example.com"))
					if errors.Is(err, ErrInFlight) {
						time.Sleep(5 * time.Millisecond) // the client's retry
						continue
					}
					if err != nil {
						t.Error(err)
						return
					}
					ids[i] = o.ID
					return
				}
			}()
		}
		close(start)
		wg.Wait()
		if n := len(a.out.got) + len(b.out.got); n != 1 {
			t.Fatalf("round %d: %d envelopes for one submission", round, n)
		}
		if ids[0] == "" || ids[0] != ids[1] {
			t.Fatalf("round %d: identifiers %q", round, ids)
		}
	}
}

// TestRedisDownTempfails: with Redis gone the client gets a 4xx and
// nothing is certified (on_error = tempfail); with on_error = accept the
// message is certified without deduplication; when Redis is back,
// deduplication works again.
func TestRedisDownTempfails(t *testing.T) {
	r := testtool.StartRedis(t)
	f := newFixture(t)
	f.a.Dedup = redisStore(t, r.Addr)
	sub := func() *Submission { return submission(goodMessage, "anna@pec.altro.it", "luca@example.com") }

	r.Stop()
	_, err := f.a.Process(context.Background(), sub())
	if !errors.Is(err, dedup.ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
	if rep := InternalReply("", err); rep.Code != 451 {
		t.Errorf("reply %+v", rep)
	}
	if len(f.out.got)+len(f.box.got) != 0 {
		t.Fatal("certified while the dedup store was down (tempfail)")
	}

	f.a.DedupFailOpen = true
	o, err := f.a.Process(context.Background(), sub())
	if err != nil || !o.Accepted || !o.DedupSkipped {
		t.Fatalf("on_error=accept: %+v %v", o, err)
	}
	f.a.DedupFailOpen = false

	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	var first string
	for i := range 2 {
		var o *Outcome
		for deadline := time.Now().Add(5 * time.Second); ; {
			o, err = f.a.Process(context.Background(), sub())
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond) // the client's retry while the pool reconnects
		}
		if err != nil {
			t.Fatalf("after restart: %v", err)
		}
		if i == 0 {
			first = o.ID
		} else if !o.Duplicate || o.ID != first {
			t.Fatalf("after restart the retry is %+v, want a duplicate of %s", o, first)
		}
	}
}

// TestCrashedHoldBlocksOtherInstances: instance A dies with its dedup
// hold taken in the shared Redis (just before or just after the envelope
// hand-off). Instance B, receiving the client's retry, cannot know whether
// the envelope went out: it answers 451 and names the held transaction,
// however long the lease would have been. A's restart reconciles its log
// and resolves the hold: the envelope was out → B answers the retry as a
// duplicate with A's identifier; it was not → B certifies it as new.
// Either way one envelope in all (invariant 3 of docs/architecture.md).
func TestCrashedHoldBlocksOtherInstances(t *testing.T) {
	r := testtool.StartRedis(t)
	for _, tc := range []struct {
		name   string
		before bool // killed as the envelope hand-off starts
	}{{"envelope out", false}, {"envelope not out", true}} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := newRedisNode(t, r.Addr), newRedisNode(t, r.Addr)
			a.a.DedupLease, b.a.DedupLease = 100*time.Millisecond, 100*time.Millisecond
			// One Redis for both subtests: each its own message.
			msg := goodMessage[:len(goodMessage)-len("ciao\r\n")] + tc.name + "\r\n"
			retry := func() *Submission { return submission(msg, "anna@pec.altro.it", "luca@example.com") }
			a.crashAt(t, retry(), true, tc.before)
			held := a.lastBusta(t).PECID
			time.Sleep(300 * time.Millisecond) // longer than the lease
			_, err := b.a.Process(context.Background(), retry())
			var ife *InFlightError
			if !errors.As(err, &ife) || ife.Hold != held {
				t.Fatalf("retry on B before A's restart: %v; want in flight, held by %s", err, held)
			}
			rep := a.restart(t, nil)
			if rep.Incomplete != 1 {
				t.Fatalf("A's reconciliation: %+v", rep)
			}
			o, err := b.a.Process(context.Background(), retry())
			if err != nil {
				t.Fatalf("retry on B after A's restart: %v", err)
			}
			envelopes := a.envelopes(t) + b.envelopes(t)
			if tc.before {
				if o.Duplicate || o.ID == held {
					t.Errorf("retry: %+v; want a new certification", o)
				}
			} else if !o.Duplicate || o.ID != held {
				t.Errorf("retry: %+v; want a duplicate of %s", o, held)
			}
			if envelopes != 1 {
				t.Errorf("%d envelopes in all, want 1", envelopes)
			}
		})
	}
}

// TestLeaseRenewedWhileSlow: a transaction that takes several times the
// lease to build and sign keeps its claim (renewed every third of it), so
// a twin arriving meanwhile waits and the slow one is not aborted.
func TestLeaseRenewedWhileSlow(t *testing.T) {
	r := testtool.StartRedis(t)
	f, twin := newFixture(t), newFixture(t)
	f.a.Dedup, twin.a.Dedup = redisStore(t, r.Addr), redisStore(t, r.Addr)
	f.a.DedupLease, twin.a.DedupLease = 150*time.Millisecond, 150*time.Millisecond
	f.a.Signer = slowSigner{f.a.Signer, 250 * time.Millisecond} // two signatures: 500 ms
	done := make(chan error, 1)
	var id string
	go func() {
		o, err := f.a.Process(context.Background(), submission(goodMessage, "anna@pec.altro.it", "luca@example.com"))
		if err == nil {
			id = o.ID
		}
		done <- err
	}()
	time.Sleep(400 * time.Millisecond) // well past the first lease
	if _, err := twin.a.Process(context.Background(), submission(goodMessage, "anna@pec.altro.it", "luca@example.com")); !errors.Is(err, ErrInFlight) {
		t.Errorf("twin during the slow transaction: %v, want in flight", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("slow transaction: %v", err)
	}
	o, err := twin.a.Process(context.Background(), submission(goodMessage, "anna@pec.altro.it", "luca@example.com"))
	if err != nil || !o.Duplicate || o.ID != id {
		t.Fatalf("twin after: %+v, %v; want a duplicate of %s", o, err, id)
	}
	if n := len(f.out.got) + len(twin.out.got); n != 1 {
		t.Errorf("%d envelopes", n)
	}
}

type slowSigner struct {
	s     Signer
	delay time.Duration
}

func (s slowSigner) Sign(content []byte, at time.Time) ([]byte, error) {
	time.Sleep(s.delay)
	return s.s.Sign(content, at)
}
