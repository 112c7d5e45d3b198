package gateway

import (
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// Limits of the submission service: connections in total and per client
// IP, AUTH failures per client IP (delay, then lockout), and the pace of
// DATA. The state lives in the Backend, shared by all its listeners.

// Defaults of the Backend's timing fields when they are zero.
const (
	defaultMinAuthTime = 300 * time.Millisecond
	defaultAuthDelay   = time.Second
	// maxAuthDelaySteps caps the growing delay at AuthDelay × 2^3 (8 s
	// with the default).
	maxAuthDelaySteps = 3
	// maxAuthRecords bounds the AUTH failure records kept: beyond it the
	// oldest record is forgotten, so a flood of source addresses cannot
	// grow the map without bound.
	maxAuthRecords = 10000
	// dataChunk is the most DATA read before the read deadline moves:
	// a live upload must send this much within each CommandTimeout.
	dataChunk = 4096
)

var (
	// RFC 3463 §3.8: X.7.0 other security or policy status; 421 closes
	// the connection (RFC 5321 §3.8).
	errTooManyConns = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "too many connections, try again later"}
	// RFC 3463 §3.5: X.4.2 bad connection — the upload stalled or took
	// longer than allowed; nothing was certified, the client may retry.
	errDataStalled = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "connection problem while reading the message, please retry"}
)

// limiter is the shared state behind the Backend's limits.
type limiter struct {
	now func() time.Time

	mu    sync.Mutex
	total int
	perIP map[string]int

	auth      map[string]*authRecord
	lastSweep time.Time
}

// authRecord counts the AUTH failures of one client IP within a window of
// AuthLockout starting at the first failure.
type authRecord struct {
	failures    int
	first, last time.Time
	lockedUntil time.Time
}

func newLimiter(now func() time.Time) *limiter {
	if now == nil {
		now = time.Now
	}
	return &limiter{now: now, perIP: make(map[string]int), auth: make(map[string]*authRecord)}
}

// acquireConn takes a connection slot for ip; zero limits are no limit.
func (l *limiter) acquireConn(ip string, maxTotal, maxPerIP int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if maxTotal > 0 && l.total >= maxTotal || maxPerIP > 0 && l.perIP[ip] >= maxPerIP {
		return false
	}
	l.total++
	l.perIP[ip]++
	return true
}

func (l *limiter) releaseConn(ip string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.perIP[ip]--; l.perIP[ip] <= 0 {
		delete(l.perIP, ip)
	}
}

// authPolicy is the Backend's AUTH failure configuration.
type authPolicy struct {
	delayAfter  int           // failures before delays start; 0: no delay
	lockAfter   int           // failures within window that lock; 0: no lockout
	window      time.Duration // AuthLockout: the counting window and the lockout
	delay       time.Duration // first delay, doubled per failure
	minAuthTime time.Duration
}

// authState says, before the password is checked, whether ip is locked
// out and how long a failure must be delayed.
func (l *limiter) authState(ip string, p authPolicy) (locked bool, failDelay time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	l.sweep(now, p.window)
	r := l.auth[ip]
	if r == nil || r.expired(now, p.window) {
		delete(l.auth, ip)
		return false, p.delayFor(1)
	}
	return now.Before(r.lockedUntil), p.delayFor(r.failures + 1)
}

// delayFor is the delay before answering the n-th failure.
func (p authPolicy) delayFor(n int) time.Duration {
	if p.delayAfter <= 0 || n <= p.delayAfter {
		return 0
	}
	return p.delay << min(n-p.delayAfter-1, maxAuthDelaySteps)
}

func (r *authRecord) expired(now time.Time, window time.Duration) bool {
	return !now.Before(r.first.Add(window)) && !now.Before(r.lockedUntil)
}

// authFailed counts a failure of ip and starts the lockout when due.
func (l *limiter) authFailed(ip string, p authPolicy) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	r := l.auth[ip]
	if r == nil || r.expired(now, p.window) {
		if r == nil && len(l.auth) >= maxAuthRecords {
			l.evictOldest()
		}
		r = &authRecord{first: now}
		l.auth[ip] = r
	}
	r.failures++
	r.last = now
	if p.lockAfter > 0 && r.failures >= p.lockAfter && !now.Before(r.lockedUntil) {
		r.lockedUntil = now.Add(p.window)
	}
}

// authSucceeded forgets the failures of ip.
func (l *limiter) authSucceeded(ip string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.auth, ip)
}

// sweep forgets expired records, at most once per window.
func (l *limiter) sweep(now time.Time, window time.Duration) {
	if now.Sub(l.lastSweep) < window {
		return
	}
	l.lastSweep = now
	for ip, r := range l.auth {
		if r.expired(now, window) {
			delete(l.auth, ip)
		}
	}
}

func (l *limiter) evictOldest() {
	var oldest string
	var t time.Time
	for ip, r := range l.auth {
		if oldest == "" || r.last.Before(t) {
			oldest, t = ip, r.last
		}
	}
	delete(l.auth, oldest)
}

// limits returns the Backend's shared limiter, created on first use.
func (b *Backend) limits() *limiter {
	b.limOnce.Do(func() { b.lim = newLimiter(nil) })
	return b.lim
}

func (b *Backend) authPolicy() authPolicy {
	p := authPolicy{
		delayAfter:  b.AuthFailuresBeforeDelay,
		lockAfter:   b.AuthLockoutFailures,
		window:      b.AuthLockout,
		delay:       b.AuthDelay,
		minAuthTime: b.MinAuthTime,
	}
	if p.delay <= 0 {
		p.delay = defaultAuthDelay
	}
	if p.minAuthTime <= 0 {
		p.minAuthTime = defaultMinAuthTime
	}
	if p.window <= 0 {
		p.lockAfter = 0
	}
	return p
}

// rejectConn answers 421 4.7.0 and closes the connection. go-smtp calls
// NewSession at EHLO, not at connect, and an error from NewSession is
// written as a reply with the connection left open (the client could
// just repeat EHLO): so the reply is written here and the connection
// closed; go-smtp's own reply then fails on the closed connection and its
// read loop ends.
func rejectConn(c *smtp.Conn, timeout time.Duration) {
	nc := c.Conn()
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	nc.SetWriteDeadline(time.Now().Add(timeout))
	fmt.Fprintf(nc, "%d %d.%d.%d %s\r\n", errTooManyConns.Code,
		errTooManyConns.EnhancedCode[0], errTooManyConns.EnhancedCode[1], errTooManyConns.EnhancedCode[2], errTooManyConns.Message)
	c.Close()
}

// pacedReader reads DATA: each Read that returns bytes moves the read
// deadline of the connection to CommandTimeout from now, never past the
// end of the whole DATA. go-smtp sets the deadline once per command, which
// would cut a long but live upload; this cuts only a stalled or endless
// one.
type pacedReader struct {
	r    io.Reader
	conn net.Conn
	idle time.Duration // 0: leave go-smtp's deadline in place
	end  time.Time     // zero: no bound on the whole DATA
	now  func() time.Time
}

func newPacedReader(r io.Reader, conn net.Conn, idle, total time.Duration, now func() time.Time) *pacedReader {
	p := &pacedReader{r: r, conn: conn, idle: idle, now: now}
	if total > 0 {
		p.end = now().Add(total)
	}
	p.extend()
	return p
}

func (p *pacedReader) extend() {
	var d time.Time
	if p.idle > 0 {
		d = p.now().Add(p.idle)
	}
	if !p.end.IsZero() && (d.IsZero() || p.end.Before(d)) {
		d = p.end
	}
	if !d.IsZero() {
		p.conn.SetReadDeadline(d)
	}
}

func (p *pacedReader) Read(b []byte) (int, error) {
	// go-smtp's DATA reader returns only when b is full or the message
	// ended, so a Read of a large b would need all of it within one
	// deadline: read at most dataChunk at a time.
	if len(b) > dataChunk {
		b = b[:dataChunk]
	}
	n, err := p.r.Read(b)
	if n > 0 && err == nil {
		p.extend()
	}
	return n, err
}
