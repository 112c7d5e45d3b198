package durable

import (
	"errors"
	"sync"
	"testing"
	"time"
)

// TestGroupCoversEveryChange: many callers, each making a change and then
// asking for an fsync, are each answered only after an fsync that started
// after its change ended, and they share fsyncs: fewer fsyncs than callers.
func TestGroupCoversEveryChange(t *testing.T) {
	const callers = 200
	var mu sync.Mutex
	changed := map[int]bool{} // changes made so far
	durable := map[int]bool{} // changes an ended fsync covered
	fsyncs := 0
	fsync := func() error {
		mu.Lock()
		seen := make([]int, 0, len(changed))
		for c := range changed {
			seen = append(seen, c)
		}
		fsyncs++
		mu.Unlock()
		time.Sleep(2 * time.Millisecond) // the fsync
		mu.Lock()
		for _, c := range seen {
			durable[c] = true
		}
		mu.Unlock()
		return nil
	}
	var wg sync.WaitGroup
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(i%7) * time.Millisecond)
			mu.Lock()
			changed[i] = true
			mu.Unlock()
			if err := syncShared("/a/folder", fsync); err != nil {
				t.Error(err)
			}
			mu.Lock()
			defer mu.Unlock()
			if !durable[i] {
				t.Errorf("caller %d answered before an fsync covering its change ended", i)
			}
		}()
	}
	wg.Wait()
	if fsyncs >= callers || fsyncs == 0 {
		t.Errorf("%d fsyncs for %d callers: want them shared", fsyncs, callers)
	}
	groupsMu.Lock()
	left := len(groups)
	groupsMu.Unlock()
	if left != 0 {
		t.Errorf("%d groups left after every caller returned", left)
	}
	t.Logf("%d callers, %d fsyncs", callers, fsyncs)
}

// TestGroupFailure: the callers an fsync that failed was to serve get its
// error; a caller after it, served by a later fsync that succeeds, gets
// nil.
func TestGroupFailure(t *testing.T) {
	boom := errors.New("EIO")
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	fail := func() error {
		started <- struct{}{}
		<-release
		return boom
	}
	g := &Group{}
	first := make(chan error, 1)
	go func() { first <- g.Do(fail) }()
	<-started // the failing fsync is running
	second := make(chan error, 1)
	go func() { second <- g.Do(func() error { return boom }) }() // waits for the next one
	for {
		g.mu.Lock()
		n := g.started
		g.mu.Unlock()
		if n == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(10 * time.Millisecond) // the second caller is waiting
	close(release)
	if err := <-first; !errors.Is(err, boom) {
		t.Errorf("first caller: %v, want %v", err, boom)
	}
	if err := <-second; !errors.Is(err, boom) {
		t.Errorf("second caller: %v, want %v", err, boom)
	}
	if err := g.Do(func() error { return nil }); err != nil {
		t.Errorf("a caller after the failures, served by an fsync that succeeded: %v", err)
	}
}
