package gateway

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// MessageMemory bounds the message bytes the daemon holds in memory at
// once, whatever the clients send (docs/configuration.md,
// limits.message_memory). Without it, 8 concurrent 100 MB messages took
// 4.2 GiB of RSS (DATA into growing buffers, then the envelope, the signed
// entity and the files built from them, each a copy), and 20 connections
// of one address could take the machine down.
//
// Two rules. While DATA is read, a message stays in memory up to
// bodyInMemory octets; beyond, it goes to a file in Dir, unlinked as soon
// as it is created (nothing is left behind, even by a crash), so that
// slow or many uploads hold disk, not memory. Then, before a message is
// checked, built into its envelope and signed, it reserves its size times
// memoryPerOctet of the budget (all of it, for a message larger than the
// budget allows), and waits for it: the messages being processed at once
// never hold more than the budget, and a large one waits for the others
// to finish rather than add its copies to theirs.
type MessageMemory struct {
	budget int64
	dir    string

	mu      sync.Mutex
	used    int64
	waiters []*memWaiter // first come, first served
}

type memWaiter struct {
	n     int64
	ready chan struct{}
}

// bodyInMemory is how much of a message is read into memory before the
// rest goes to a file: a typical message (tens of KB) never touches the
// disk, and 200 connections reading at once hold at most 50 MiB.
const bodyInMemory = 256 << 10

// memoryPerOctet is what a message costs in memory while it is processed,
// per octet of it: the message, the transport envelope that holds it, the
// signed entity, the envelope's file with its trace lines, and what the
// collector has not taken back yet. Measured before the budget: 8
// messages of 99 MB at once peaked at 4.2 GiB, 5.3 times their size; one
// alone now peaks at 4 times (docs/configuration.md, "Message memory").
const memoryPerOctet = 6

// NewMessageMemory returns a budget of budget octets, with bodies beyond
// bodyInMemory written to files in dir (created if missing).
func NewMessageMemory(budget int64, dir string) (*MessageMemory, error) {
	if budget <= 0 {
		return nil, fmt.Errorf("message memory budget %d: must be positive", budget)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("message memory: %w", err)
	}
	return &MessageMemory{budget: budget, dir: dir}, nil
}

// Budget is the budget in octets.
func (m *MessageMemory) Budget() int64 { return m.budget }

// reserve waits until the weight of a message of size octets is free in
// the budget, or ctx ends, and returns the function that gives it back.
func (m *MessageMemory) reserve(ctx context.Context, size int64) (release func(), err error) {
	n := min(max(size, 1)*memoryPerOctet, m.budget)
	m.mu.Lock()
	if len(m.waiters) == 0 && m.used+n <= m.budget {
		m.used += n
		m.mu.Unlock()
		return m.releaser(n), nil
	}
	w := &memWaiter{n: n, ready: make(chan struct{})}
	m.waiters = append(m.waiters, w)
	m.mu.Unlock()
	select {
	case <-w.ready:
		return m.releaser(n), nil
	case <-ctx.Done():
		m.mu.Lock()
		select {
		case <-w.ready: // granted meanwhile: give it back
			m.used -= n
		default:
			for i, x := range m.waiters {
				if x == w {
					m.waiters = append(m.waiters[:i], m.waiters[i+1:]...)
					break
				}
			}
		}
		m.grant()
		m.mu.Unlock()
		return nil, ctx.Err()
	}
}

func (m *MessageMemory) releaser(n int64) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			m.mu.Lock()
			m.used -= n
			m.grant()
			m.mu.Unlock()
		})
	}
}

// grant wakes the waiters at the head of the queue that now fit; m.mu is
// held. In order: a large message at the head is not overtaken for ever
// by small ones.
func (m *MessageMemory) grant() {
	for len(m.waiters) > 0 && m.used+m.waiters[0].n <= m.budget {
		w := m.waiters[0]
		m.waiters = m.waiters[1:]
		m.used += w.n
		close(w.ready)
	}
}

// body is a message as DATA delivered it: in memory, or in a file.
type body struct {
	mem  []byte
	file *os.File // unlinked; nil when the message is in mem
	size int64
}

// errNoSpool is a message that could not be written to disk while read.
var errNoSpool = errors.New("message not stored while read")

// readBody reads r to its end: in memory up to bodyInMemory octets, then
// into an unlinked file in m's folder.
func (m *MessageMemory) readBody(r io.Reader) (*body, error) {
	buf := make([]byte, 0, 32<<10)
	for len(buf) < bodyInMemory {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		k, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+k]
		if err == io.EOF {
			return &body{mem: buf, size: int64(len(buf))}, nil
		}
		if err != nil {
			return nil, err
		}
	}
	f, err := os.CreateTemp(m.dir, "body-*")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNoSpool, err)
	}
	os.Remove(f.Name()) // the open file is all there is: nothing to clean up
	b := &body{file: f}
	w := bufio.NewWriterSize(fileWriter{f}, 256<<10)
	if _, err := w.Write(buf); err != nil {
		b.close()
		return nil, fmt.Errorf("%w: %w", errNoSpool, err)
	}
	n, err := io.Copy(w, r)
	if err != nil {
		b.close()
		var we *writeError
		if errors.As(err, &we) {
			return nil, fmt.Errorf("%w: %w", errNoSpool, we.err)
		}
		return nil, err // reading DATA failed: the caller's to answer
	}
	if err := w.Flush(); err != nil {
		b.close()
		return nil, fmt.Errorf("%w: %w", errNoSpool, err)
	}
	b.size = int64(len(buf)) + n
	return b, nil
}

// writeError tells a failed write to the file from a failed read of DATA
// in io.Copy.
type writeError struct{ err error }

func (e *writeError) Error() string { return e.err.Error() }

type fileWriter struct{ f *os.File }

func (w fileWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	if err != nil {
		err = &writeError{err}
	}
	return n, err
}

// bytes returns the message, read back from its file if it has one.
func (b *body) bytes() ([]byte, error) {
	if b.file == nil {
		return b.mem, nil
	}
	data := make([]byte, b.size)
	if _, err := b.file.ReadAt(data, 0); err != nil && !(errors.Is(err, io.EOF) && int64(len(data)) == b.size) {
		return nil, fmt.Errorf("%w: read back: %w", errNoSpool, err)
	}
	return data, nil
}

func (b *body) close() {
	if b.file != nil {
		b.file.Close()
	}
}

// readAll is readBody without a budget: the whole message in memory.
func readAll(r io.Reader) (*body, error) {
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, r); err != nil {
		return nil, err
	}
	return &body{mem: buf.Bytes(), size: int64(buf.Len())}, nil
}
