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
	if rep := InternalReply(err); rep.Code != 451 {
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
