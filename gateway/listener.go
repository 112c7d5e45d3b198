package gateway

import (
	"context"
	"net"
	"sync"
	"time"
)

// Listener wraps the daemon's TCP listener (under tls.NewListener for
// implicit TLS) and keeps every connection it accepted until it closes,
// so that a stop can close the connections still open when its grace
// ends. go-smtp's Server.Close does that only when Shutdown was not
// called first (v0.25.1: both close the same done channel, and the
// second call returns at once), which left idle clients holding the
// daemon after SIGTERM.
type Listener struct {
	net.Listener

	mu     sync.Mutex
	conns  map[*trackedConn]struct{}
	closed bool
}

// NewListener wraps ln.
func NewListener(ln net.Listener) *Listener {
	return &Listener{Listener: ln, conns: make(map[*trackedConn]struct{})}
}

// Accept returns the next connection, tracked until its Close.
func (l *Listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, l: l}
	l.mu.Lock()
	closed := l.closed
	if !closed {
		l.conns[tc] = struct{}{}
	}
	l.mu.Unlock()
	if closed {
		// Accepted in the instant the stop began: nobody serves it.
		c.Close()
		return nil, net.ErrClosed
	}
	return tc, nil
}

// Close stops accepting; connections already accepted stay open (see
// CloseConns).
func (l *Listener) Close() error {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	return l.Listener.Close()
}

// Open is the number of accepted connections not closed yet.
func (l *Listener) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// CloseConns closes every accepted connection still open and returns how
// many there were. Their sessions end at their next read or write (a
// transaction in flight finishes first) and leave the count when go-smtp
// closes them in turn: Wait tells when all have.
func (l *Listener) CloseConns() int {
	l.mu.Lock()
	conns := make([]*trackedConn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		c.Conn.Close()
	}
	return len(conns)
}

// Wait returns true when no accepted connection is open, false if ctx
// ends first.
func (l *Listener) Wait(ctx context.Context) bool {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for l.Open() > 0 {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
	return true
}

// trackedConn leaves its Listener's set once, at its first Close.
type trackedConn struct {
	net.Conn
	l    *Listener
	once sync.Once
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
	})
	return err
}
