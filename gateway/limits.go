package gateway

import (
	"io"
	"net"
	"time"
)

// The pace of DATA. The connection limits are the Listener's
// (listener.go), the AUTH limits the Guard's (auth.go).

// dataChunk is the most DATA read before the read deadline moves: a live
// upload must send this much within each CommandTimeout.
const dataChunk = 4096

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
