package dedup

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pecgw/pecgw/internal/testtool"
	"github.com/redis/go-redis/v9"
)

func TestRedisUnavailableThenBack(t *testing.T) {
	srv := testtool.StartRedis(t)
	const timeout = 300 * time.Millisecond
	r := newTestRedis(t, srv.Addr, timeout)
	ctx := context.Background()
	k := newKey("body")
	c, err := r.Claim(ctx, k, longLease)
	if err != nil || c.State != New {
		t.Fatalf("Claim = %v, %v", c.State, err)
	}

	srv.Stop()
	for _, k := range []Key{k, newKey("other")} {
		start := time.Now()
		_, err = r.Claim(ctx, k, longLease)
		took := time.Since(start)
		t.Logf("Claim with the server down: %v after %v", err, took)
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Claim with the server down = %v, want ErrUnavailable", err)
		}
		// Not a speed target: the call must come back instead of hanging
		// a session (the bound is far above the timeout, so load cannot
		// make it flaky).
		if took > 5*time.Second {
			t.Errorf("Claim with the server down took %v, timeout %v", took, timeout)
		}
	}
	if err := r.Commit(ctx, k, c.Token, "pec-1", longWindow); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Commit with the server down = %v, want ErrUnavailable", err)
	}
	if _, err := r.CheckConfig(ctx); !errors.Is(err, ErrUnavailable) {
		t.Errorf("CheckConfig with the server down = %v, want ErrUnavailable", err)
	}

	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	// The restarted server has no data (no persistence): the key is new.
	k2 := newKey("after")
	c2, err := r.Claim(ctx, k2, longLease)
	if err != nil || c2.State != New {
		t.Fatalf("Claim after restart = %v, %v", c2.State, err)
	}
	if err := r.Commit(ctx, k2, c2.Token, "pec-2", longWindow); err != nil {
		t.Fatalf("Commit after restart: %v", err)
	}
}

func TestRedisLogicErrorIsNotUnavailable(t *testing.T) {
	addr := needRedis(t)
	r := newTestRedis(t, addr, 0)
	ctx := context.Background()
	k := newKey("body")
	// A key of the wrong type is a bug, not an outage.
	if err := r.client.HSet(ctx, redisKeys(k)[1], "x", "y").Err(); err != nil {
		t.Fatal(err)
	}
	_, err := r.Claim(ctx, k, longLease)
	if err == nil || errors.Is(err, ErrUnavailable) {
		t.Errorf("Claim on a hash = %v, want a logic error", err)
	}
}

func TestRedisCancelledContext(t *testing.T) {
	r := newTestRedis(t, needRedis(t), 0)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.Claim(ctx, newKey("body"), longLease); !errors.Is(err, context.Canceled) {
		t.Errorf("Claim with a cancelled context = %v", err)
	}
}

func TestRedisCheckConfig(t *testing.T) {
	addr := needRedis(t)
	r := newTestRedis(t, addr, 0)
	ctx := context.Background()
	admin := redis.NewClient(&redis.Options{Addr: addr})
	defer admin.Close()
	set := func(kv ...string) {
		t.Helper()
		for i := 0; i < len(kv); i += 2 {
			if err := admin.ConfigSet(ctx, kv[i], kv[i+1]).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The shared test server runs without persistence; put it back.
	t.Cleanup(func() {
		for _, kv := range [][2]string{{"maxmemory-policy", "noeviction"}, {"appendonly", "no"}, {"save", ""}} {
			admin.ConfigSet(context.Background(), kv[0], kv[1])
		}
	})
	check := func(want ...string) {
		t.Helper()
		w, err := r.CheckConfig(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(w) != len(want) {
			t.Fatalf("CheckConfig = %q, want %d warnings about %q", w, len(want), want)
		}
		for i := range want {
			if !strings.Contains(w[i], want[i]) {
				t.Errorf("warning %q does not mention %q", w[i], want[i])
			}
		}
	}
	set("maxmemory-policy", "noeviction", "appendonly", "yes")
	check()
	set("maxmemory-policy", "allkeys-lru")
	check("allkeys-lru")
	set("maxmemory-policy", "noeviction", "appendonly", "no", "save", "3600 1")
	check("since its last snapshot")
	set("save", "")
	check("persists nothing")
}

func TestRedisCheckConfigDenied(t *testing.T) {
	addr := needRedis(t)
	admin := redis.NewClient(&redis.Options{Addr: addr})
	defer admin.Close()
	ctx := context.Background()
	// A user that may run the store's commands but not CONFIG, as on
	// managed services.
	if err := admin.Do(ctx, "ACL", "SETUSER", "dedup", "on", ">secret", "~pecgw:dedup:*", "+@all", "-config").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Do(context.Background(), "ACL", "DELUSER", "dedup") })
	r, err := NewRedis(RedisOptions{Addrs: []string{addr}, Username: "dedup", Password: "secret"})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	w, err := r.CheckConfig(ctx)
	if err != nil || len(w) != 2 || !strings.Contains(w[0], "cannot read") || !strings.Contains(w[1], "cannot read") {
		t.Errorf("CheckConfig without CONFIG = %q, %v; want warnings that it cannot check", w, err)
	}
	// The store itself works with that user.
	k := newKey("body")
	if c, err := r.Claim(ctx, k, longLease); err != nil || c.State != New {
		t.Errorf("Claim as the restricted user = %v, %v", c.State, err)
	}
}

func TestNewRedisNeedsAddress(t *testing.T) {
	if _, err := NewRedis(RedisOptions{}); err == nil {
		t.Error("NewRedis without an address succeeded")
	}
}

// TestTrace: what a store still knows of a transaction, the
// reconciliation's evidence after a crash.
func TestTrace(t *testing.T) {
	for _, st := range stores() {
		t.Run(st.name, func(t *testing.T) {
			s := st.open(t)
			ctx := context.Background()
			trace := func(k Key, pecID string) Trace {
				t.Helper()
				tr, err := s.Trace(ctx, k.ID(), k.Fingerprint(), pecID)
				if err != nil {
					t.Fatalf("Trace: %v", err)
				}
				return tr
			}
			// Redis knows; the embedded store cannot tell a hold from
			// nothing (holds die with the process), only commits.
			none, held := TraceNone, TraceHeld
			if st.name == "embedded" {
				none, held = TraceUnknown, TraceUnknown
			}
			k := newKey("body")
			c, err := s.Claim(ctx, k, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if got := trace(k, "pec-1"); got != none {
				t.Errorf("lease: Trace = %v, want %v", got, none)
			}
			if err := s.Prepare(ctx, k, c.Token, "pec-1", time.Minute); err != nil {
				t.Fatal(err)
			}
			if got := trace(k, "pec-1"); got != held {
				t.Errorf("hold: Trace = %v, want %v", got, held)
			}
			if got := trace(k, "pec-2"); got != none {
				t.Errorf("hold of another id: Trace = %v, want %v", got, none)
			}
			if err := s.Commit(ctx, k, c.Token, "pec-1", time.Minute); err != nil {
				t.Fatal(err)
			}
			if got := trace(k, "pec-1"); got != TraceCommitted {
				t.Errorf("commit: Trace = %v, want committed", got)
			}
			if got := trace(k, "pec-2"); got != none {
				t.Errorf("commit of another id: Trace = %v, want %v", got, none)
			}
		})
	}
}
