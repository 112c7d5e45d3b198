package dedup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pecgw/pecgw/internal/testpki"
	"github.com/pecgw/pecgw/logstore"
	"github.com/pecgw/pecgw/pec"
)

// TestRedisWitness: two instances sharing one Redis (a real
// redis-server) witness each other's logs: each head is kept under its
// log's name, never goes back, and a log behind its Redis witness does
// not open (docs/logformat.md, "Witnesses").
func TestRedisWitness(t *testing.T) {
	r := newTestRedis(t, needRedis(t), time.Second)
	ctx := context.Background()
	open := func(name, dir string) (*logstore.Log, logstore.Options) {
		t.Helper()
		o := logstore.Options{Dir: dir, Signer: testpki.Signer(t, "p256"), Provider: testpki.ProviderName,
			MaxSegmentSize: 4096, Witnesses: []logstore.Witness{r.Witness(name)}}
		l, err := logstore.Open(o)
		if err != nil {
			t.Fatalf("Open %s: %v", name, err)
		}
		return l, o
	}
	name := func(s string) string { return fmt.Sprintf("%s-%d", s, time.Now().UnixNano()) }
	a, b := name("mx1"), name("mx2")
	dirA, dirB := t.TempDir(), t.TempDir()
	if _, err := r.Witness(a).Load(ctx); !errors.Is(err, logstore.ErrNoWitness) {
		t.Fatalf("Load of a new key: %v", err)
	}
	for _, x := range []struct{ name, dir string }{{a, dirA}, {b, dirB}} {
		l, _ := open(x.name, x.dir)
		for i := range 20 {
			at := pec.At(time.Now()).Time().Format(time.RFC3339)
			if _, _, err := l.Append(ctx, &logstore.Record{Time: at, Type: logstore.EventDuplicate, PECID: fmt.Sprintf("%d.%s@pec.example.it", i, x.name),
				Subject: strings.Repeat("s", 300)}); err != nil {
				t.Fatal(err)
			}
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := logstore.Verify(dirA, testpki.Roots())
	if err != nil || rep.Problem != nil {
		t.Fatalf("Verify: %v %v", rep.Problem, err)
	}
	h, err := r.Witness(a).Load(ctx)
	if err != nil || h.Seq != rep.LastSeq || h.Hash != rep.LastHash {
		t.Fatalf("the witness of %s: %+v %v, want seq %d", a, h, err, rep.LastSeq)
	}
	if _, err := h.Check(); err != nil {
		t.Error(err)
	}
	if hb, _ := r.Witness(b).Load(ctx); hb == nil || hb.Line == h.Line {
		t.Errorf("the witness of %s: %+v", b, hb)
	}
	older := *h
	older.Seq = 1
	if err := r.Witness(a).Store(ctx, &older); err != nil {
		t.Fatal(err)
	}
	if again, _ := r.Witness(a).Load(ctx); again.Seq != h.Seq {
		t.Errorf("an older head replaced the witness: %+v", again)
	}
	// The newest segment of mx1 deleted: its log no longer opens, mx2's does.
	segs, _ := logstore.ListSegments(dirA)
	last := filepath.Join(dirA, segs[len(segs)-1].Name)
	os.Chmod(last, 0o644)
	if err := os.Remove(last); err != nil {
		t.Fatal(err)
	}
	o := logstore.Options{Dir: dirA, Signer: testpki.Signer(t, "p256"), Witnesses: []logstore.Witness{r.Witness(a)}}
	var be *logstore.BehindError
	if _, err := logstore.Open(o); !errors.As(err, &be) || !strings.Contains(err.Error(), "redis witness key pecgw:log-head:"+a) {
		t.Errorf("Open of mx1 behind its Redis witness: %v", err)
	}
	l, _ := open(b, dirB)
	l.Close()
	// Reset goes back (pecgw log accept-loss).
	if err := r.Witness(a).Reset(ctx, &older); err != nil {
		t.Fatal(err)
	}
	if again, _ := r.Witness(a).Load(ctx); again.Seq != 1 {
		t.Errorf("Reset: %+v", again)
	}
}
