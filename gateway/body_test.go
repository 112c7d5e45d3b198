package gateway

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestReadBody: a message up to bodyInMemory stays in memory; a larger one
// goes to a file in the folder that is unlinked at once (the folder stays
// empty) and reads back byte for byte; a folder that cannot take files is
// errNoSpool (452 4.3.1), not a read error.
func TestReadBody(t *testing.T) {
	dir := t.TempDir()
	m, err := NewMessageMemory(64<<20, dir)
	if err != nil {
		t.Fatal(err)
	}
	small := bytes.Repeat([]byte("a\r\n"), 1000)
	b, err := m.readBody(bytes.NewReader(small))
	if err != nil || b.file != nil || !bytes.Equal(b.mem, small) || b.size != int64(len(small)) {
		t.Fatalf("small message: file %v, %d octets, %v", b != nil && b.file != nil, len(b.mem), err)
	}
	large := bytes.Repeat([]byte("0123456789abcdef\r\n"), 3*bodyInMemory/16)
	b, err = m.readBody(iotestHalf{bytes.NewReader(large)})
	if err != nil {
		t.Fatal(err)
	}
	if b.file == nil || b.size != int64(len(large)) {
		t.Fatalf("large message: file %v, size %d, want a file of %d", b.file != nil, b.size, len(large))
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("%d files in the folder while the message is held: want none (unlinked)", len(left))
	}
	got, err := b.bytes()
	if err != nil || !bytes.Equal(got, large) {
		t.Errorf("large message read back: %d octets, %v; want the %d sent", len(got), err, len(large))
	}
	b.close()

	gone, err := NewMessageMemory(64<<20, filepath.Join(dir, "gone"))
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, "gone"))
	if _, err := gone.readBody(bytes.NewReader(large)); !errors.Is(err, errNoSpool) {
		t.Errorf("no folder: %v, want errNoSpool", err)
	}
	if _, err := m.readBody(iotestFail{}); err == nil || errors.Is(err, errNoSpool) {
		t.Errorf("a failed read of DATA: %v, want the read error, not errNoSpool", err)
	}
}

// iotestHalf returns at most half of what is asked, to exercise short reads.
type iotestHalf struct{ r *bytes.Reader }

func (h iotestHalf) Read(p []byte) (int, error) { return h.r.Read(p[:max(1, len(p)/2)]) }

type iotestFail struct{}

func (iotestFail) Read([]byte) (int, error) { return 0, errors.New("connection reset") }

// TestMessageMemoryReserve: messages are processed within the budget, first
// come first served; one larger than the budget takes all of it and runs
// alone; a wait that ends with its context gives nothing away and keeps
// nothing.
func TestMessageMemoryReserve(t *testing.T) {
	m, err := NewMessageMemory(60*memoryPerOctet, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	r1, err := m.reserve(ctx, 40) // 40 of 60
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 3)
	go func() { // 30: waits for r1
		r, err := m.reserve(ctx, 30)
		if err == nil {
			got <- "second"
			r()
		}
	}()
	waitWaiters(t, m, 1)
	go func() { // 10 would fit now, but comes after the second
		r, err := m.reserve(ctx, 10)
		if err == nil {
			got <- "third"
			r()
		}
	}()
	waitWaiters(t, m, 2)
	select {
	case g := <-got:
		t.Fatalf("%s went ahead while the budget was taken, or out of turn", g)
	case <-time.After(50 * time.Millisecond):
	}
	r1()
	r1() // twice is once
	// Both fit once r1 is back (30 + 10 of 60): both go.
	<-got
	<-got
	// Larger than the budget: all of it.
	big, err := m.reserve(ctx, 1000)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	if _, err := m.reserve(short, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("while a message larger than the budget runs: %v, want to wait until the deadline", err)
	}
	big()
	all, err := m.reserve(ctx, 60)
	if err != nil {
		t.Fatalf("the whole budget after everything was given back: %v", err)
	}
	all()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.used != 0 || len(m.waiters) != 0 {
		t.Errorf("used %d, %d waiters at the end; want none", m.used, len(m.waiters))
	}
}

func waitWaiters(t *testing.T, m *MessageMemory, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		m.mu.Lock()
		k := len(m.waiters)
		m.mu.Unlock()
		if k == n {
			return
		}
	}
	t.Fatalf("not %d waiters", n)
}
