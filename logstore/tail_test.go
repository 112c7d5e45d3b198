package logstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestTailLast(t *testing.T) {
	dir := t.TempDir()
	l := newFixtureLog(t, dir)
	for s := 0; s < 3; s++ {
		for i := 0; i < 4; i++ {
			l.add(acceptance(fmt.Sprintf("id%d.%d@pec.example.it", s, i), "<m@c>", "a@pec.example.it", "b@e.it"))
		}
		if s < 2 {
			l.seal() // seq 5 and 10
		}
	}
	l.flush() // active: 11-14
	defer l.close()
	// A record being written is not shown.
	l.w.WriteString(`{"seq":15,"prev":"`)
	l.flush()

	for _, tc := range []struct {
		n    int
		want []uint64
	}{
		{0, nil},
		{1, []uint64{14}},
		{4, []uint64{11, 12, 13, 14}},
		{6, []uint64{9, 10, 11, 12, 13, 14}},
		{11, []uint64{4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14}},
		{100, []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14}},
	} {
		var hits []Hit
		if err := Tail(context.Background(), dir, tc.n, false, func(h Hit) error { hits = append(hits, h); return nil }); err != nil {
			t.Fatal(err)
		}
		if got := seqs(hits); !slices.Equal(got, tc.want) {
			t.Errorf("n=%d: got %v, want %v", tc.n, got, tc.want)
		}
	}
	if err := Tail(context.Background(), t.TempDir(), 10, false, func(Hit) error { return errors.New("no hit expected") }); err != nil {
		t.Errorf("empty folder: %v", err)
	}
	if err := Tail(context.Background(), dir+"/nope", 10, false, func(Hit) error { return nil }); err == nil {
		t.Error("missing folder: no error")
	}
}

// tailing starts following the log in dir and returns the channel of the
// hits and a function that stops Tail and returns its error.
func tailing(t *testing.T, dir string, n int) (<-chan Hit, func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	hits := make(chan Hit, 100)
	done := make(chan error, 1)
	go func() {
		done <- tail(ctx, dir, n, true, 10*time.Millisecond, func(h Hit) error { hits <- h; return nil })
	}()
	stop := sync.OnceValue(func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(5 * time.Second):
			return errors.New("Tail did not stop on cancel")
		}
	})
	t.Cleanup(func() { stop() })
	return hits, stop
}

// expect waits for the hits of the given seqs, in order, and no others.
func expect(t *testing.T, hits <-chan Hit, want ...uint64) {
	t.Helper()
	var got []uint64
	timeout := time.After(5 * time.Second)
	for len(got) < len(want) {
		select {
		case h := <-hits:
			got = append(got, h.Record.Seq)
		case <-timeout:
			t.Fatalf("got %v, want %v", got, want)
		}
	}
	select {
	case h := <-hits:
		got = append(got, h.Record.Seq)
	case <-time.After(100 * time.Millisecond):
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestTailFollow(t *testing.T) {
	dir := t.TempDir()
	l := newFixtureLog(t, dir)
	for i := 1; i <= 3; i++ {
		l.add(acceptance(fmt.Sprintf("id%d@pec.example.it", i), "<m@c>", "a@pec.example.it", "b@e.it"))
	}
	l.flush()
	defer l.close()

	hits, stop := tailing(t, dir, 2)
	expect(t, hits, 2, 3)

	l.add(acceptance("id4@pec.example.it", "<m@c>", "a@pec.example.it", "b@e.it"))
	l.add(acceptance("id5@pec.example.it", "<m@c>", "a@pec.example.it", "b@e.it"))
	l.flush()
	expect(t, hits, 4, 5)

	// A line written in two pieces is shown once it has its LF.
	r := acceptance("id6@pec.example.it", "<m@c>", "a@pec.example.it", "b@e.it")
	r.Seq, r.Prev, r.Time = l.seq+1, l.prev, l.clock.Format(time.RFC3339)
	line, err := Encode(r)
	if err != nil {
		t.Fatal(err)
	}
	l.w.Write(line[:40])
	l.flush()
	expect(t, hits)
	l.w.Write(line[40:])
	l.flush()
	l.seq, l.prev = r.Seq, Hash(line)
	expect(t, hits, 6)

	// Rotation: the seal of the old segment, then the new segment.
	l.seal() // 7
	l.add(acceptance("id8@pec.example.it", "<m@c>", "a@pec.example.it", "b@e.it"))
	l.flush()
	expect(t, hits, 7, 8)
	l.seal() // 9
	l.add(acceptance("id10@pec.example.it", "<m@c>", "a@pec.example.it", "b@e.it"))
	l.add(acceptance("id11@pec.example.it", "<m@c>", "a@pec.example.it", "b@e.it"))
	l.flush()
	expect(t, hits, 9, 10, 11)

	if err := stop(); err != nil {
		t.Errorf("Tail after cancel: %v", err)
	}
}

// TestTailFollowEmpty: following a folder with no segment yet waits for
// the first one; -n 0 shows only what comes.
func TestTailFollowEmpty(t *testing.T) {
	dir := t.TempDir()
	hits, stop := tailing(t, dir, 0)
	expect(t, hits)
	l := newFixtureLog(t, dir)
	l.add(acceptance("id1@pec.example.it", "<m@c>", "a@pec.example.it", "b@e.it"))
	l.flush()
	defer l.close()
	expect(t, hits, 1)
	if err := stop(); err != nil {
		t.Error(err)
	}
}
