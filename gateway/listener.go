package gateway

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Connections are counted from accept, not from EHLO (docs/configuration.md,
// "Connections"): a client that connects and never speaks, an SMTPS client
// that never finishes its TLS handshake, a STARTTLS one that stops before
// its second EHLO all hold a file descriptor and a goroutine, and are
// counted against the limits from their first byte. Until AUTH succeeds a
// connection lives under short deadlines: PreAuthTimeout for each TLS
// handshake, read and write, LoginTimeout from accept to AUTH; the
// RFC 5321 §4.5.3.2 timeouts (go-smtp's ReadTimeout/WriteTimeout) apply to
// authenticated sessions only.

// ConnLimits are the connection limits of the listeners sharing a
// ConnGate; zero is no limit.
type ConnLimits struct {
	Total      int // connections at once over all listeners
	PerAddress int // from one client IP address
	// PerNetwork bounds the connections from one /24 (IPv4) or /64
	// (IPv6): the unit one host or one office's provider usually gets.
	PerNetwork     int
	PreAuthTimeout time.Duration // each TLS handshake, read and write before AUTH
	LoginTimeout   time.Duration // from accept to a successful AUTH
	// Language is that of the 421 a refused connection gets (reply.go).
	Language Language
}

// Defaults of the pre-AUTH deadlines when ConnLimits leaves them zero.
const (
	DefaultPreAuthTimeout = 20 * time.Second
	DefaultLoginTimeout   = time.Minute
	// refuseTimeout bounds the writing of a 421 to a client over the
	// limits (and its TLS handshake on an SMTPS listener).
	refuseTimeout = 5 * time.Second
	// maxRefusing bounds the refusals being written at once; beyond it a
	// connection over the limits is closed without a word, so a flood
	// costs us no more than that many goroutines.
	maxRefusing = 64
	// refusalLogEvery is the least time between two log lines about
	// refused connections: a flood gets one line with a count, not one
	// per connection.
	refusalLogEvery = 10 * time.Second
)

// ConnGate counts the open connections of the listeners that share it
// (submission and SMTPS) by client address and network.
type ConnGate struct {
	lim      ConnLimits
	hostname string // in the 421 reply (RFC 5321 §4.2)
	log      *zap.Logger

	mu     sync.Mutex
	total  int
	byAddr map[netip.Addr]int
	byNet  map[netip.Prefix]int

	refusing chan struct{}
	// refused counts refusals since the last log line about them.
	refused    atomic.Int64
	lastLogged atomic.Int64 // unix nanoseconds
}

// NewConnGate returns a gate applying lim; hostname is the server's name
// in its replies, log (may be nil) gets the refusals.
func NewConnGate(lim ConnLimits, hostname string, log *zap.Logger) *ConnGate {
	if lim.PreAuthTimeout <= 0 {
		lim.PreAuthTimeout = DefaultPreAuthTimeout
	}
	if lim.LoginTimeout <= 0 {
		lim.LoginTimeout = DefaultLoginTimeout
	}
	if log == nil {
		log = zap.NewNop()
	}
	return &ConnGate{lim: lim, hostname: hostname, log: log,
		byAddr: make(map[netip.Addr]int), byNet: make(map[netip.Prefix]int),
		refusing: make(chan struct{}, maxRefusing)}
}

// Network is the /24 (IPv4, IPv4-mapped IPv6 too) or /64 (IPv6) holding
// a, the unit the per-network limits count.
func Network(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	bits := 64
	if a.Is4() {
		bits = 24
	}
	p, _ := a.Prefix(bits)
	return p
}

// clientAddr is the IP address of a connection's peer; the zero Addr
// for a peer that is not an IP (a unix socket), never limited.
func clientAddr(c net.Conn) netip.Addr {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		if a, ok := netip.AddrFromSlice(ta.IP); ok {
			return a.Unmap()
		}
	}
	return netip.Addr{}
}

// refusal is why a connection is refused: the reply's key (reply.go) and
// its arguments, and the reason for the operator's log.
type refusal struct {
	key    string
	args   []string
	reason string
}

// admit takes a slot for a connection from a; nil when it may come in,
// else the refusal.
func (g *ConnGate) admit(a netip.Addr) *refusal {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.lim.Total > 0 && g.total >= g.lim.Total {
		return &refusal{key: "connections", reason: "too many connections"}
	}
	if a.IsValid() {
		if g.lim.PerAddress > 0 && g.byAddr[a] >= g.lim.PerAddress {
			return &refusal{key: "connections-address", args: []string{"ip", a.String()},
				reason: fmt.Sprintf("too many connections from your address %s", a)}
		}
		if n := Network(a); g.lim.PerNetwork > 0 && g.byNet[n] >= g.lim.PerNetwork {
			return &refusal{key: "connections-network", args: []string{"network", n.String()},
				reason: fmt.Sprintf("too many connections from your network %s", n)}
		}
		g.byAddr[a]++
		g.byNet[Network(a)]++
	}
	g.total++
	return nil
}

func (g *ConnGate) release(a netip.Addr) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.total--
	if a.IsValid() {
		if g.byAddr[a]--; g.byAddr[a] <= 0 {
			delete(g.byAddr, a)
		}
		n := Network(a)
		if g.byNet[n]--; g.byNet[n] <= 0 {
			delete(g.byNet, n)
		}
	}
}

// Open is the number of connections the gate counts now.
func (g *ConnGate) Open() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.total
}

// refuse answers a connection over the limits with 421 4.7.0 instead of
// the greeting (RFC 5321 §3.1: a server may refuse a connection with 421;
// RFC 3463 §3.8: X.7.0 other security or policy status) and closes it.
// On an SMTPS listener the reply goes over TLS, after a handshake bounded
// like the write. The writing runs aside so Accept goes on; when
// maxRefusing refusals are under way already, the connection is closed
// without a word.
func (g *ConnGate) refuse(c net.Conn, tlsConf *tls.Config, why *refusal) {
	g.noteRefusal(c, why.reason)
	r := g.lim.Language.reply(why.key, g.hostname, why.args...)
	select {
	case g.refusing <- struct{}{}:
	default:
		c.Close()
		return
	}
	go func() {
		defer func() { <-g.refusing }()
		defer c.Close()
		c.SetDeadline(time.Now().Add(refuseTimeout))
		w := c
		if tlsConf != nil {
			tc := tls.Server(c, tlsConf)
			if tc.Handshake() != nil {
				return
			}
			defer tc.Close()
			w = tc
		}
		fmt.Fprintf(w, "%d %d.%d.%d %s\r\n", r.Code, r.EnhancedCode[0], r.EnhancedCode[1], r.EnhancedCode[2], r.Message)
	}()
}

func (g *ConnGate) noteRefusal(c net.Conn, reason string) {
	n := g.refused.Add(1)
	now := time.Now().UnixNano()
	last := g.lastLogged.Load()
	if now-last < int64(refusalLogEvery) || !g.lastLogged.CompareAndSwap(last, now) {
		return
	}
	g.refused.Add(-n)
	g.log.Warn("connections refused by the connection limits", evLimit,
		zap.String("ip", clientAddr(c).String()), zap.String("reason", reason), zap.Int64("refused", n))
}

// Listener wraps the daemon's TCP listener: it counts every connection
// against its ConnGate at accept, refuses those over the limits, sets the
// pre-AUTH deadlines, does the implicit TLS of an SMTPS listener, and
// keeps every connection it accepted until it closes, so that a stop can
// close the ones still open when its grace ends. go-smtp's Server.Close
// does that only when Shutdown was not called first (v0.25.1: both close
// the same done channel, and the second call returns at once), which left
// idle clients holding the daemon after SIGTERM.
type Listener struct {
	net.Listener
	gate *ConnGate
	tls  *tls.Config // implicit TLS (SMTPS, RFC 8314 §3.3); nil for none

	mu     sync.Mutex
	conns  map[*trackedConn]struct{}
	closed bool
}

// NewListener wraps ln; gate may be shared with other listeners, and
// implicitTLS (nil for none) makes it an SMTPS listener.
func NewListener(ln net.Listener, gate *ConnGate, implicitTLS *tls.Config) *Listener {
	return &Listener{Listener: ln, gate: gate, tls: implicitTLS, conns: make(map[*trackedConn]struct{})}
}

// Accept returns the next connection within the limits, tracked until
// its Close; connections over the limits are refused here and never
// reach go-smtp.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		a := clientAddr(c)
		if why := l.gate.admit(a); why != nil {
			l.gate.refuse(c, l.tls, why)
			continue
		}
		now := time.Now()
		tc := &trackedConn{Conn: c, l: l, addr: a, step: l.gate.lim.PreAuthTimeout, loginEnd: now.Add(l.gate.lim.LoginTimeout)}
		tc.Conn.SetDeadline(tc.bound(time.Time{}))
		l.mu.Lock()
		closed := l.closed
		if !closed {
			l.conns[tc] = struct{}{}
		}
		l.mu.Unlock()
		if closed {
			// Accepted in the instant the stop began: nobody serves it.
			tc.Close()
			return nil, net.ErrClosed
		}
		if l.tls != nil {
			// go-smtp does the handshake (handleConn, for a *tls.Conn)
			// under its ReadTimeout, which tc bounds.
			return tls.Server(tc, l.tls), nil
		}
		return tc, nil
	}
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

// trackedConn is one accepted connection: it holds its slot in the gate
// and its place in the Listener until its first Close, and bounds every
// deadline set on it before AUTH.
type trackedConn struct {
	net.Conn
	l        *Listener
	addr     netip.Addr
	step     time.Duration // PreAuthTimeout
	loginEnd time.Time     // accept + LoginTimeout
	authed   atomic.Bool
	once     sync.Once
}

// bound is t, or the pre-AUTH bound if earlier (a zero t, no deadline,
// gets the bound too); after AUTH, t.
func (c *trackedConn) bound(t time.Time) time.Time {
	if c.authed.Load() {
		return t
	}
	b := c.loginEnd
	if s := time.Now().Add(c.step); s.Before(b) {
		b = s
	}
	if t.IsZero() || b.Before(t) {
		return b
	}
	return t
}

func (c *trackedConn) SetDeadline(t time.Time) error { return c.Conn.SetDeadline(c.bound(t)) }
func (c *trackedConn) SetReadDeadline(t time.Time) error {
	return c.Conn.SetReadDeadline(c.bound(t))
}
func (c *trackedConn) SetWriteDeadline(t time.Time) error {
	return c.Conn.SetWriteDeadline(c.bound(t))
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
		c.l.gate.release(c.addr)
	})
	return err
}

// markAuthenticated lifts the pre-AUTH deadlines of the connection under
// nc (a *tls.Conn over a trackedConn, or a trackedConn); connections not
// from a Listener (tests) are left alone.
func markAuthenticated(nc net.Conn) {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	if c, ok := nc.(*trackedConn); ok {
		c.authed.Store(true)
	}
}
