package dedup

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	longLease  = time.Minute
	longWindow = time.Hour
)

// stores lists the stores under test, each opened fresh for one test.
func stores() []struct {
	name string
	open func(t testing.TB) Store
} {
	return []struct {
		name string
		open func(t testing.TB) Store
	}{
		{"embedded", func(t testing.TB) Store { return openTestEmbedded(t, t.TempDir()) }},
		{"redis", func(t testing.TB) Store { return newTestRedis(t, needRedis(t), 0) }},
	}
}

func openTestEmbedded(t testing.TB, dir string) *Embedded {
	t.Helper()
	e, err := OpenEmbedded(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// newKey returns a key no other test uses (the Redis server is shared).
func newKey(body string) Key {
	return Key{
		Sender:     "Mario.Rossi@pec.example.it",
		MessageID:  "<" + rand.Text() + "@client.example>",
		Recipients: []string{"b@pec.example.it", "A@pec.example.it"},
		BodyHash:   sha256.Sum256([]byte(body)),
	}
}

func mustClaim(t *testing.T, s Store, k Key, lease time.Duration, want State) Claim {
	t.Helper()
	c, err := s.Claim(context.Background(), k, lease)
	if err != nil {
		t.Fatalf("Claim: %v", err)
	}
	if c.State != want {
		t.Fatalf("Claim = %v, want %v", c.State, want)
	}
	if (want == New || want == Reused) && c.Token == "" {
		t.Fatalf("Claim %v without a token", c.State)
	}
	return c
}

func mustCommit(t *testing.T, s Store, k Key, token, pecID string, window time.Duration) {
	t.Helper()
	if err := s.Commit(context.Background(), k, token, pecID, window); err != nil {
		t.Fatalf("Commit: %v", err)
	}
}

var behaviour = []struct {
	name string
	run  func(t *testing.T, s Store)
}{
	{"CommittedClaimIsDuplicate", func(t *testing.T, s Store) {
		k := newKey("body")
		c := mustClaim(t, s, k, longLease, New)
		mustCommit(t, s, k, c.Token, "pec-1", longWindow)
		d := mustClaim(t, s, k, longLease, Duplicate)
		if d.PECID != "pec-1" {
			t.Errorf("Duplicate PECID = %q, want pec-1", d.PECID)
		}
		// Case of sender and Message-ID, order and case of recipients do
		// not make another submission.
		k2 := k
		k2.Sender, k2.Recipients = "mario.rossi@PEC.example.it", []string{"a@pec.example.it", "B@PEC.EXAMPLE.IT"}
		if d := mustClaim(t, s, k2, longLease, Duplicate); d.PECID != "pec-1" {
			t.Errorf("Duplicate PECID = %q, want pec-1", d.PECID)
		}
	}},
	{"ReusedMessageIDGetsItsOwnEntry", func(t *testing.T, s Store) {
		k := newKey("first body")
		c := mustClaim(t, s, k, longLease, New)
		mustCommit(t, s, k, c.Token, "pec-1", longWindow)
		k2 := k
		k2.BodyHash = sha256.Sum256([]byte("second body"))
		c2 := mustClaim(t, s, k2, longLease, Reused)
		mustCommit(t, s, k2, c2.Token, "pec-2", longWindow)
		if d := mustClaim(t, s, k2, longLease, Duplicate); d.PECID != "pec-2" {
			t.Errorf("second message: PECID = %q, want pec-2", d.PECID)
		}
		if d := mustClaim(t, s, k, longLease, Duplicate); d.PECID != "pec-1" {
			t.Errorf("first message: PECID = %q, want pec-1", d.PECID)
		}
		k3 := k
		k3.Recipients = []string{"c@pec.example.it"}
		mustClaim(t, s, k3, longLease, Reused)
	}},
	{"LiveLeaseIsInFlight", func(t *testing.T, s Store) {
		k := newKey("body")
		mustClaim(t, s, k, longLease, New)
		if c := mustClaim(t, s, k, longLease, InFlight); c.Token != "" {
			t.Errorf("InFlight with a token")
		}
		// The lease is per ID: another body waits too.
		k2 := k
		k2.BodyHash = sha256.Sum256([]byte("other"))
		mustClaim(t, s, k2, longLease, InFlight)
	}},
	{"ExpiredLeaseIsTakenOver", func(t *testing.T, s Store) {
		k := newKey("body")
		old := mustClaim(t, s, k, 50*time.Millisecond, New)
		time.Sleep(120 * time.Millisecond)
		c := mustClaim(t, s, k, longLease, New)
		if c.Token == old.Token {
			t.Fatal("same token for two leases")
		}
		// The new owner holds it: the old one can neither commit nor release.
		if err := s.Commit(context.Background(), k, old.Token, "pec-old", longWindow); !errors.Is(err, ErrNotOwner) {
			t.Errorf("Commit by the expired owner = %v, want ErrNotOwner", err)
		}
		if err := s.Release(context.Background(), k, old.Token); !errors.Is(err, ErrNotOwner) {
			t.Errorf("Release by the expired owner = %v, want ErrNotOwner", err)
		}
		mustCommit(t, s, k, c.Token, "pec-new", longWindow)
		if d := mustClaim(t, s, k, longLease, Duplicate); d.PECID != "pec-new" {
			t.Errorf("PECID = %q, want pec-new", d.PECID)
		}
	}},
	{"LateCommitOfExpiredLeaseCounts", func(t *testing.T, s Store) {
		// The envelope may be out: a slow owner's commit is kept if
		// nobody took the lease over.
		k := newKey("body")
		c := mustClaim(t, s, k, 50*time.Millisecond, New)
		time.Sleep(120 * time.Millisecond)
		mustCommit(t, s, k, c.Token, "pec-late", longWindow)
		if d := mustClaim(t, s, k, longLease, Duplicate); d.PECID != "pec-late" {
			t.Errorf("PECID = %q, want pec-late", d.PECID)
		}
	}},
	{"ReleaseLetsRetryProceed", func(t *testing.T, s Store) {
		k := newKey("body")
		c := mustClaim(t, s, k, longLease, New)
		if err := s.Release(context.Background(), k, c.Token); err != nil {
			t.Fatalf("Release: %v", err)
		}
		mustClaim(t, s, k, longLease, New)
	}},
	{"NonOwnerChangesNothing", func(t *testing.T, s Store) {
		k := newKey("body")
		c := mustClaim(t, s, k, longLease, New)
		if err := s.Release(context.Background(), k, "not-the-token"); !errors.Is(err, ErrNotOwner) {
			t.Errorf("Release by a non-owner = %v, want ErrNotOwner", err)
		}
		if err := s.Commit(context.Background(), k, "not-the-token", "pec-x", longWindow); !errors.Is(err, ErrNotOwner) {
			t.Errorf("Commit by a non-owner = %v, want ErrNotOwner", err)
		}
		mustClaim(t, s, k, longLease, InFlight) // the lease is still held, nothing committed
		mustCommit(t, s, k, c.Token, "pec-1", longWindow)
		if d := mustClaim(t, s, k, longLease, Duplicate); d.PECID != "pec-1" {
			t.Errorf("PECID = %q, want pec-1", d.PECID)
		}
	}},
	{"WindowExpiryForgets", func(t *testing.T, s Store) {
		k := newKey("body")
		c := mustClaim(t, s, k, longLease, New)
		mustCommit(t, s, k, c.Token, "pec-1", 50*time.Millisecond)
		mustClaim(t, s, k, longLease, Duplicate)
		time.Sleep(120 * time.Millisecond)
		mustClaim(t, s, k, longLease, New) // not Reused: the whole ID is forgotten
	}},
	{"RememberWithoutLease", func(t *testing.T, s Store) {
		// Reconciliation at start: no lease, only what the log kept.
		k := newKey("body")
		if err := s.Remember(context.Background(), k.ID(), k.Fingerprint(), "pec-r", longWindow); err != nil {
			t.Fatalf("Remember: %v", err)
		}
		if d := mustClaim(t, s, k, longLease, Duplicate); d.PECID != "pec-r" {
			t.Errorf("PECID = %q, want pec-r", d.PECID)
		}
		k2 := k
		k2.BodyHash = sha256.Sum256([]byte("other"))
		mustClaim(t, s, k2, longLease, Reused)
		// A lease held on the ID is left alone.
		k3 := newKey("body")
		c := mustClaim(t, s, k3, longLease, New)
		if err := s.Remember(context.Background(), k3.ID(), k3.Fingerprint(), "pec-3", longWindow); err != nil {
			t.Fatalf("Remember: %v", err)
		}
		mustClaim(t, s, k3, longLease, Duplicate)
		if err := s.Release(context.Background(), k3, c.Token); err != nil {
			t.Errorf("Release after Remember: %v", err)
		}
		if err := s.Remember(context.Background(), "", k.Fingerprint(), "pec-x", longWindow); err == nil {
			t.Error("Remember with an empty id: no error")
		}
	}},
	{"RenewKeepsTheLease", func(t *testing.T, s Store) {
		ctx := context.Background()
		k := newKey("body")
		c := mustClaim(t, s, k, 150*time.Millisecond, New)
		for range 4 {
			time.Sleep(60 * time.Millisecond)
			if err := s.Renew(ctx, k, c.Token, 150*time.Millisecond); err != nil {
				t.Fatalf("Renew: %v", err)
			}
		}
		// 240 ms after the claim, longer than the lease: still held.
		mustClaim(t, s, k, longLease, InFlight)
		if err := s.Renew(ctx, k, "not-the-token", longLease); !errors.Is(err, ErrNotOwner) {
			t.Errorf("Renew by a non-owner = %v, want ErrNotOwner", err)
		}
		time.Sleep(250 * time.Millisecond)
		// Expired: the owner can no longer renew it, a retry proceeds.
		if err := s.Renew(ctx, k, c.Token, longLease); !errors.Is(err, ErrNotOwner) {
			t.Errorf("Renew of an expired lease = %v, want ErrNotOwner", err)
		}
		mustClaim(t, s, k, longLease, New)
	}},
	{"HoldOutlivesTheLease", func(t *testing.T, s Store) {
		ctx := context.Background()
		k := newKey("body")
		c := mustClaim(t, s, k, 100*time.Millisecond, New)
		if err := s.Prepare(ctx, k, "not-the-token", "pec-h", longWindow); !errors.Is(err, ErrNotOwner) {
			t.Errorf("Prepare by a non-owner = %v, want ErrNotOwner", err)
		}
		if err := s.Prepare(ctx, k, c.Token, "pec-h", longWindow); err != nil {
			t.Fatalf("Prepare: %v", err)
		}
		// Renewing a hold does not shorten it.
		if err := s.Renew(ctx, k, c.Token, 10*time.Millisecond); err != nil {
			t.Errorf("Renew of the owner's hold = %v, want nil", err)
		}
		time.Sleep(200 * time.Millisecond)
		// The lease would have expired; the hold has not, and names the
		// transaction whose envelope may be out.
		if in := mustClaim(t, s, k, longLease, InFlight); in.PECID != "pec-h" {
			t.Errorf("InFlight PECID = %q, want pec-h", in.PECID)
		}
		if err := s.Release(ctx, k, "not-the-token"); !errors.Is(err, ErrNotOwner) {
			t.Errorf("Release of the hold by a non-owner = %v, want ErrNotOwner", err)
		}
		mustCommit(t, s, k, c.Token, "pec-h", longWindow)
		if d := mustClaim(t, s, k, longLease, Duplicate); d.PECID != "pec-h" {
			t.Errorf("PECID = %q, want pec-h", d.PECID)
		}
	}},
	{"PrepareNeedsALiveLease", func(t *testing.T, s Store) {
		k := newKey("body")
		c := mustClaim(t, s, k, 50*time.Millisecond, New)
		time.Sleep(120 * time.Millisecond)
		if err := s.Prepare(context.Background(), k, c.Token, "pec-1", longWindow); !errors.Is(err, ErrNotOwner) {
			t.Errorf("Prepare after the lease expired = %v, want ErrNotOwner", err)
		}
		mustClaim(t, s, k, longLease, New)
	}},
	{"ReleaseDropsTheHold", func(t *testing.T, s Store) {
		ctx := context.Background()
		k := newKey("body")
		c := mustClaim(t, s, k, longLease, New)
		if err := s.Prepare(ctx, k, c.Token, "pec-1", longWindow); err != nil {
			t.Fatalf("Prepare: %v", err)
		}
		if err := s.Release(ctx, k, c.Token); err != nil {
			t.Fatalf("Release: %v", err)
		}
		mustClaim(t, s, k, longLease, New)
	}},
	{"ReconciliationResolvesHolds", func(t *testing.T, s Store) {
		ctx := context.Background()
		// The envelope was found: Remember commits and drops the hold.
		k := newKey("body")
		c := mustClaim(t, s, k, longLease, New)
		if err := s.Prepare(ctx, k, c.Token, "pec-1", longWindow); err != nil {
			t.Fatalf("Prepare: %v", err)
		}
		if err := s.Remember(ctx, k.ID(), k.Fingerprint(), "pec-1", longWindow); err != nil {
			t.Fatalf("Remember: %v", err)
		}
		if d := mustClaim(t, s, k, longLease, Duplicate); d.PECID != "pec-1" {
			t.Errorf("PECID = %q, want pec-1", d.PECID)
		}
		k2 := k
		k2.BodyHash = sha256.Sum256([]byte("other"))
		mustClaim(t, s, k2, longLease, Reused) // no hold left on the ID

		// The envelope was not handed off: Abandon drops the hold, and
		// only a hold naming that transaction.
		k3 := newKey("body")
		c3 := mustClaim(t, s, k3, longLease, New)
		if err := s.Prepare(ctx, k3, c3.Token, "pec-3", longWindow); err != nil {
			t.Fatalf("Prepare: %v", err)
		}
		if err := s.Abandon(ctx, k3.ID(), "pec-other"); err != nil {
			t.Fatalf("Abandon: %v", err)
		}
		mustClaim(t, s, k3, longLease, InFlight)
		if err := s.Remember(ctx, k3.ID(), k3.Fingerprint()+"x", "pec-other", longWindow); err != nil {
			t.Fatalf("Remember: %v", err)
		}
		mustClaim(t, s, k3, longLease, InFlight) // another transaction's Remember leaves the hold
		if err := s.Abandon(ctx, k3.ID(), "pec-3"); err != nil {
			t.Fatalf("Abandon: %v", err)
		}
		mustClaim(t, s, k3, longLease, Reused)
		// A plain lease is not a hold: Abandon leaves it.
		k4 := newKey("body")
		mustClaim(t, s, k4, longLease, New)
		if err := s.Abandon(ctx, k4.ID(), "pec-4"); err != nil {
			t.Fatalf("Abandon: %v", err)
		}
		mustClaim(t, s, k4, longLease, InFlight)
	}},
	{"RememberKeepsAnotherCommit", func(t *testing.T, s Store) {
		// A twin certified (and committed) while a crashed instance was
		// down; that instance's reconciliation must not replace it.
		ctx := context.Background()
		k := newKey("body")
		c := mustClaim(t, s, k, longLease, New)
		mustCommit(t, s, k, c.Token, "pec-twin", longWindow)
		if err := s.Remember(ctx, k.ID(), k.Fingerprint(), "pec-crashed", longWindow); err != nil {
			t.Fatalf("Remember: %v", err)
		}
		if d := mustClaim(t, s, k, longLease, Duplicate); d.PECID != "pec-twin" {
			t.Errorf("PECID = %q, want pec-twin", d.PECID)
		}
		if err := s.Remember(ctx, k.ID(), k.Fingerprint(), "pec-twin", longWindow); err != nil {
			t.Fatalf("Remember of the same id: %v", err)
		}
		if d := mustClaim(t, s, k, longLease, Duplicate); d.PECID != "pec-twin" {
			t.Errorf("PECID = %q, want pec-twin", d.PECID)
		}
	}},
	{"HoldPutBack", func(t *testing.T, s Store) {
		// A transaction of unknown outcome: its hold is put back without
		// a lease; a retry waits; the operator's confirmation remembers
		// it (dropping the hold), a rejection abandons it.
		ctx := context.Background()
		k := newKey("body")
		if err := s.Hold(ctx, k.ID(), k.Fingerprint(), "pec-u", longWindow); err != nil {
			t.Fatalf("Hold: %v", err)
		}
		if in := mustClaim(t, s, k, longLease, InFlight); in.PECID != "pec-u" {
			t.Errorf("InFlight PECID = %q, want pec-u", in.PECID)
		}
		if err := s.Remember(ctx, k.ID(), k.Fingerprint(), "pec-u", longWindow); err != nil {
			t.Fatal(err)
		}
		if d := mustClaim(t, s, k, longLease, Duplicate); d.PECID != "pec-u" {
			t.Errorf("after Remember: PECID = %q", d.PECID)
		}
		// Committed: Hold does nothing.
		if err := s.Hold(ctx, k.ID(), k.Fingerprint(), "pec-other", longWindow); err != nil {
			t.Fatal(err)
		}
		mustClaim(t, s, k, longLease, Duplicate)

		k2 := newKey("body")
		if err := s.Hold(ctx, k2.ID(), k2.Fingerprint(), "pec-r", longWindow); err != nil {
			t.Fatal(err)
		}
		if err := s.Abandon(ctx, k2.ID(), "pec-r"); err != nil {
			t.Fatal(err)
		}
		mustClaim(t, s, k2, longLease, New)
		// A live lease is left alone.
		if err := s.Hold(ctx, k2.ID(), k2.Fingerprint(), "pec-x", longWindow); err != nil {
			t.Fatal(err)
		}
		if in := mustClaim(t, s, k2, longLease, InFlight); in.PECID != "" {
			t.Errorf("Hold replaced a live lease: %q", in.PECID)
		}
	}},
	{"ConcurrentClaimsOneWinner", func(t *testing.T, s Store) {
		k := newKey("body")
		const n = 20
		var (
			wg     sync.WaitGroup
			start  = make(chan struct{})
			states = make([]State, n)
			errs   = make([]error, n)
		)
		for i := range n {
			wg.Go(func() {
				<-start
				c, err := s.Claim(context.Background(), k, longLease)
				states[i], errs[i] = c.State, err
			})
		}
		close(start)
		wg.Wait()
		count := map[State]int{}
		for i := range n {
			if errs[i] != nil {
				t.Fatalf("Claim: %v", errs[i])
			}
			count[states[i]]++
		}
		if count[New] != 1 || count[InFlight] != n-1 {
			t.Errorf("states = %v, want 1 new and %d in-flight", count, n-1)
		}
	}},
}

func TestBehaviour(t *testing.T) {
	for _, st := range stores() {
		t.Run(st.name, func(t *testing.T) {
			for _, b := range behaviour {
				t.Run(b.name, func(t *testing.T) { b.run(t, st.open(t)) })
			}
		})
	}
}

func TestKey(t *testing.T) {
	k := newKey("body")
	if k.ID() == (Key{Sender: k.Sender, MessageID: "<other@x>"}).ID() {
		t.Error("different Message-IDs give the same ID")
	}
	// The separator keeps "ab"+"c" apart from "a"+"bc".
	if (Key{Sender: "ab", MessageID: "c"}).ID() == (Key{Sender: "a", MessageID: "bc"}).ID() {
		t.Error("ID is ambiguous")
	}
	if (Key{Recipients: []string{"ab", "c"}}).Fingerprint() == (Key{Recipients: []string{"a", "bc"}}).Fingerprint() {
		t.Error("Fingerprint is ambiguous")
	}
	k2 := k
	k2.Recipients = []string{"a@pec.example.it"}
	if k.Fingerprint() == k2.Fingerprint() {
		t.Error("different recipients give the same fingerprint")
	}
	if k.Recipients[0] != "b@pec.example.it" {
		t.Error("Fingerprint changed the key's recipients")
	}
}

// BenchmarkDedupStep is the store's share of one accepted submission in
// the gateway: Claim, Prepare (the hold before the envelope hand-off) and
// Commit. Run in parallel too: the embedded store serialises its fsyncs.
func BenchmarkDedupStep(b *testing.B) {
	for _, st := range stores() {
		for _, par := range []bool{false, true} {
			name := st.name
			if par {
				name += "/parallel"
			}
			b.Run(name, func(b *testing.B) {
				s := st.open(b)
				prefix := rand.Text()
				var n atomic.Int64
				step := func() {
					ctx := context.Background()
					k := Key{Sender: "bench@pec.example.it", MessageID: fmt.Sprintf("<%s.%d@x>", prefix, n.Add(1))}
					c, err := s.Claim(ctx, k, longLease)
					if err != nil || c.State != New {
						b.Fatalf("Claim = %v, %v", c.State, err)
					}
					if err := s.Prepare(ctx, k, c.Token, "pec", time.Minute); err != nil {
						b.Fatal(err)
					}
					if err := s.Commit(ctx, k, c.Token, "pec", time.Minute); err != nil {
						b.Fatal(err)
					}
				}
				if par {
					b.SetParallelism(4)
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							step()
						}
					})
				} else {
					for b.Loop() {
						step()
					}
				}
				b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/msg")
			})
		}
	}
}
