package gateway

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"
)

// A client of Dovecot's authentication protocol, the auth-client socket
// that Postfix's smtpd_sasl_type = dovecot speaks (Dovecot Authentication
// Protocol 1.x, doc.dovecot.org "Dovecot Authentication Protocol"). One
// connection, opened on the first Verify and again after it breaks,
// carries every request: each has its own id, and one reader goroutine
// hands each reply to the Verify waiting for that id.
//
// What Dovecot does with a request was read in its sources (2.3.19.1,
// the version run by the tests, and 2.4.4): src/auth/auth-client-connection.c
// and auth-request-handler.c on the server's side, src/lib-auth(-client)
// on the side of its own clients (the login processes).

const (
	// dovecotMaxLine bounds a line from the server. Dovecot's own clients
	// allow AUTH_CLIENT_MAX_LINE_LENGTH (16 KiB, lib-auth-client
	// auth-client-interface.h); we allow more, and a longer line is a
	// protocol error.
	dovecotMaxLine = 64 << 10
	// dovecotMaxRequest bounds a line we send, its LF included. The auth
	// server reads a client's input into a buffer of
	// AUTH_CLIENT_MAX_LINE_LENGTH bytes (auth-client-connection.c), and
	// at a longer line logs "BUG: Auth client ... sent us more than 16384
	// bytes" and drops the connection with every request on it. A
	// request that does not fit (a password of some 12 KB) is not sent.
	dovecotMaxRequest = 16384
	// dovecotMaxHandshake bounds the lines of the server's handshake
	// (Dovecot sends a VERSION, a MECH per mechanism, SPID, CUID, COOKIE,
	// DONE: a few dozen at most).
	dovecotMaxHandshake = 1000
	// dovecotMajor and dovecotMinor are the protocol version we speak:
	// the major must match the server's, the minor is informative
	// (Dovecot auth protocol: "Minor version can be ignored"). 1.2 is
	// the version in which an empty resp= means an empty initial
	// response; we always send a non-empty one. From 1.4 (Dovecot 2.4.4)
	// the server answers CANCEL with CANCELLED, but only to clients that
	// said 1.4.
	dovecotMajor = 1
	dovecotMinor = 2

	defaultDovecotTimeout = 5 * time.Second
	defaultDovecotService = "smtp"
)

// DovecotOptions says where Dovecot's auth-client socket is.
type DovecotOptions struct {
	Network string        // "unix" (default) or "tcp"
	Address string        // socket path, or host:port
	Service string        // service= of each request; default "smtp"
	Timeout time.Duration // bound on connecting + one request's answer; default 5s
}

// DovecotInfo is what Dovecot is told about the client (lip, rip, lport,
// rport, secured).
type DovecotInfo struct {
	ClientIP, LocalIP     string
	ClientPort, LocalPort int
	Secured               bool // the connection is TLS
}

// Dovecot checks passwords with a Dovecot auth server. It is safe for
// concurrent use; Close it when done.
type Dovecot struct {
	network, address string
	service          string // tab-escaped
	timeout          time.Duration
	// where names the server in errors: "unix:/run/dovecot/auth-client".
	where string
	// dial opens a connection to the server; tests replace it.
	dial func(ctx context.Context) (net.Conn, error)

	// life ends at Close: it interrupts a connection attempt.
	life     context.Context
	stopLife context.CancelFunc
	// wg counts the goroutines the client started (connecting, reading,
	// sending a CANCEL): Close waits for them.
	wg sync.WaitGroup

	mu         sync.Mutex
	closed     bool
	conn       *dovecotConn // the current connection, nil before the first
	connecting *dovecotDial // the connection attempt under way, if any
}

// dovecotDial is one connection attempt, shared by every Verify that
// needs a connection while it runs.
type dovecotDial struct {
	done chan struct{} // closed when conn or err is set
	conn *dovecotConn
	err  error
}

// dovecotConn is one connection past its handshake.
type dovecotConn struct {
	d  *Dovecot
	nc net.Conn
	br *bufio.Reader

	// wsem holds a token while a line is written: lines go out whole,
	// one at a time, and a writer waiting its turn still sees its
	// context end.
	wsem chan struct{}

	mu      sync.Mutex
	lastID  uint32
	pending map[uint32]chan dovecotReply
	err     error         // why the connection broke; set once
	broken  chan struct{} // closed when err is set
}

// dovecotReply is an OK, FAIL, CONT (or CANCELLED) line for one request:
// its command and its parameters after the id, unescaped.
type dovecotReply struct {
	cmd  string
	args []string
}

var (
	// errDovecotClosed is returned by Verify after Close.
	errDovecotClosed = errors.New("client closed")
	// errDovecotTooLong: the request does not fit in dovecotMaxRequest.
	errDovecotTooLong = errors.New("request too long")
)

// NewDovecot returns a client for the auth server o names; it connects on
// the first Verify.
func NewDovecot(o DovecotOptions) *Dovecot {
	d := &Dovecot{network: o.Network, address: o.Address, service: o.Service, timeout: o.Timeout}
	if d.network == "" {
		d.network = "unix"
	}
	if d.service == "" {
		d.service = defaultDovecotService
	}
	d.service = dovecotEscape(d.service)
	if d.timeout <= 0 {
		d.timeout = defaultDovecotTimeout
	}
	d.where = d.network + ":" + d.address
	d.dial = func(ctx context.Context) (net.Conn, error) {
		var nd net.Dialer
		return nd.DialContext(ctx, d.network, d.address)
	}
	d.life, d.stopLife = context.WithCancel(context.Background())
	return d
}

// Verify asks Dovecot whether password is user's (mechanism PLAIN,
// authzid empty). (true, nil): OK. (false, nil): FAIL (wrong password,
// unknown user: no difference), or an OK that does not let the user in
// (nologin, proxy). (false, err): Dovecot could not answer: socket
// missing/refused, connection broken, timeout, FAIL with the "temp" flag
// or code=temp_fail, protocol error, no PLAIN mechanism offered. The
// error is one line and never holds the password.
func (d *Dovecot) Verify(ctx context.Context, user, password string, info DovecotInfo) (bool, error) {
	// RFC 4616 §2: PLAIN's fields are separated by NUL, so a user or a
	// password holding one cannot be said, and is no one's.
	if strings.IndexByte(user, 0) >= 0 || strings.IndexByte(password, 0) >= 0 {
		return false, nil
	}
	if d.address == "" {
		return false, d.errorf(nil, "no socket address configured")
	}
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	var (
		rep dovecotReply
		err error
	)
	// A request that cannot have reached the server (the connection was
	// found broken, or broke while the request was being written: the
	// server never saw its whole line) is sent once more on a new
	// connection; a request that was sent and lost with its connection
	// fails.
	for range 2 {
		var c *dovecotConn
		c, err = d.connection(ctx)
		if err != nil {
			return false, err
		}
		var sent bool
		rep, sent, err = c.roundTrip(ctx, func(id uint32) []byte {
			return d.authLine(id, user, password, info)
		})
		if err == nil || sent {
			break
		}
	}
	switch {
	case errors.Is(err, errDovecotTooLong):
		// No Dovecot can be asked about it: no one has such a
		// password (Dovecot's own clients cannot send it either).
		return false, nil
	case err != nil:
		return false, err
	}
	switch rep.cmd {
	case "OK":
		// Dovecot auth protocol, and the passdb extra fields: nologin
		// means "the password matched, but the user may not log in"
		// (with reason=, the usual way of disabling an account);
		// proxy and proxy_maybe send the user to another server,
		// which checks the password itself when the passdb says
		// nopassword. Dovecot's login processes let no one in on
		// either (login-common sasl-server.c), nor do we.
		for _, a := range rep.args {
			switch a {
			case "nologin", "proxy", "proxy_maybe":
				return false, nil
			}
		}
		return true, nil
	case "FAIL":
		return false, d.failure(rep.args)
	case "CONT":
		// Dovecot auth protocol: CONT asks for more SASL data; PLAIN
		// with its initial response has none to give (roundTrip has
		// cancelled the request).
		return false, d.errorf(nil, "protocol error: CONT for a PLAIN request with an initial response")
	default:
		return false, d.errorf(nil, "protocol error: %s for a request not cancelled", rep.cmd)
	}
}

// failure tells a temporary FAIL (an error) from a verdict (nil). Dovecot
// auth protocol: "code=temp_fail (v2.3+), temp (<v2.2): This is a
// temporary internal failure" (the passdb could not be read, its
// database is down); code=invalid_base64 means our request was
// malformed, which is no verdict on the password either. Other codes
// (authz_fail, user_disabled, pass_expired) are verdicts.
func (d *Dovecot) failure(args []string) error {
	var reason string
	temp, invalid := false, false
	for _, a := range args {
		switch {
		case a == "temp" || a == "code=temp_fail":
			temp = true
		case a == "code=invalid_base64":
			invalid = true
		case strings.HasPrefix(a, "reason="):
			reason = a[len("reason="):]
		}
	}
	suffix := ""
	if reason != "" {
		suffix = " (" + dovecotText(reason, 200) + ")"
	}
	switch {
	case temp:
		return d.errorf(nil, "temporary failure%s", suffix)
	case invalid:
		return d.errorf(nil, "protocol error: the server found the request's base64 invalid%s", suffix)
	}
	return nil
}

// Close closes the connection: Verify calls waiting on it fail, and later
// ones fail at once. It returns once the client's goroutines have ended.
func (d *Dovecot) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		d.wg.Wait()
		return nil
	}
	d.closed = true
	c := d.conn
	d.conn = nil
	d.mu.Unlock()
	d.stopLife()
	if c != nil {
		c.fail(d.closedError())
	}
	d.wg.Wait()
	return nil
}

func (d *Dovecot) closedError() error { return d.errorf(errDovecotClosed, "connection closed") }

// spawnLocked runs f on a goroutine that Close waits for, unless the
// client is closed; d.mu is held.
func (d *Dovecot) spawnLocked(f func()) {
	if d.closed {
		return
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		f()
	}()
}

func (d *Dovecot) spawn(f func()) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.spawnLocked(f)
}

// connection returns the current connection, or waits for a new one. The
// attempt runs on its own, bounded by Timeout, so that one caller giving
// up does not fail the others waiting for it.
func (d *Dovecot) connection(ctx context.Context) (*dovecotConn, error) {
	if ctx.Err() != nil {
		return nil, d.ctxError(ctx, "connecting")
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil, d.closedError()
	}
	if c := d.conn; c != nil && !c.isBroken() {
		d.mu.Unlock()
		return c, nil
	}
	call := d.connecting
	joined := call != nil
	if !joined {
		call = d.startConnect()
	}
	d.mu.Unlock()
	for {
		select {
		case <-ctx.Done():
			return nil, d.ctxError(ctx, "connecting")
		case <-call.done:
		}
		// An attempt begun before this caller came that timed out has
		// not given it its own time: it makes one of its own.
		if !joined || !errors.Is(call.err, context.DeadlineExceeded) || ctx.Err() != nil {
			return call.conn, call.err
		}
		joined = false
		d.mu.Lock()
		switch {
		case d.closed:
			d.mu.Unlock()
			return nil, d.closedError()
		case d.connecting != nil:
			call = d.connecting
		default:
			call = d.startConnect()
		}
		d.mu.Unlock()
	}
}

// startConnect starts a connection attempt; d.mu is held.
func (d *Dovecot) startConnect() *dovecotDial {
	call := &dovecotDial{done: make(chan struct{})}
	d.connecting = call
	d.spawnLocked(func() { d.connect(call) })
	return call
}

// connect dials and shakes hands, then publishes the outcome in call.
func (d *Dovecot) connect(call *dovecotDial) {
	c, err := d.open()
	d.mu.Lock()
	if d.closed {
		if c != nil {
			c.fail(d.closedError())
		}
		c, err = nil, d.closedError()
	}
	if c != nil {
		d.conn = c
		d.spawnLocked(c.readLoop)
	}
	d.connecting = nil
	call.conn, call.err = c, err
	close(call.done)
	d.mu.Unlock()
}

// open dials and shakes hands within Timeout; Close interrupts it.
func (d *Dovecot) open() (*dovecotConn, error) {
	ctx, cancel := context.WithTimeout(d.life, d.timeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	nc, err := d.dial(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, d.errorf(context.DeadlineExceeded, "cannot connect within %v", d.timeout)
		}
		// "connect: no such file or directory", "connection refused"
		return nil, d.errorf(dovecotCause(err), "cannot connect")
	}
	stop := context.AfterFunc(d.life, func() { nc.Close() })
	c, err := d.handshake(nc, deadline)
	stop()
	if err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// handshake does the connection's handshake before deadline. Dovecot auth
// protocol: the client sends VERSION and CPID (it may pipeline them); the
// server sends VERSION, then MECH, SPID, CUID, COOKIE lines, then DONE.
// The major versions must match; we need a PLAIN among the MECH lines.
// Other handshake lines (SPID, CUID, COOKIE, any later addition) are of
// no use to a client that only authenticates, and are ignored.
func (d *Dovecot) handshake(nc net.Conn, deadline time.Time) (*dovecotConn, error) {
	if err := nc.SetDeadline(deadline); err != nil {
		return nil, d.errorf(dovecotCause(err), "handshake")
	}
	// The CPID is the client's process id, never 0 (the server refuses
	// 0); a server's auth-client socket does not use it otherwise.
	hello := fmt.Sprintf("VERSION\t%d\t%d\nCPID\t%d\n", dovecotMajor, dovecotMinor, os.Getpid())
	// A server that hung up at once may still have said why, or sent
	// a handshake we cannot use: what it sent is read before a failed
	// write is told.
	_, werr := io.WriteString(nc, hello)
	if dovecotTimeout(werr) {
		return nil, d.errorf(context.DeadlineExceeded, "no handshake within %v", d.timeout)
	}
	br := bufio.NewReaderSize(nc, dovecotMaxLine+1)
	var mechs []string
	plain := false
	for n := 0; ; n++ {
		if n == dovecotMaxHandshake {
			return nil, d.errorf(nil, "protocol error: a handshake of more than %d lines", dovecotMaxHandshake)
		}
		line, err := readDovecotLine(br)
		if err != nil {
			switch {
			case dovecotTimeout(err):
				return nil, d.errorf(context.DeadlineExceeded, "no handshake within %v", d.timeout)
			case dovecotHungUp(err):
				return nil, d.errorf(err, "the server closed the connection during the handshake")
			}
			return nil, d.errorf(err, "handshake")
		}
		f := strings.Split(line, "\t")
		if n == 0 {
			if f[0] != "VERSION" || len(f) < 3 {
				return nil, d.errorf(nil, "protocol error: the handshake does not start with VERSION")
			}
			major, err1 := strconv.ParseUint(f[1], 10, 32)
			_, err2 := strconv.ParseUint(f[2], 10, 32)
			if err1 != nil || err2 != nil {
				return nil, d.errorf(nil, "protocol error: invalid VERSION %s", dovecotText(f[1]+"."+f[2], 40))
			}
			if major != dovecotMajor {
				return nil, d.errorf(nil, "protocol error: server speaks version %d, we speak %d", major, dovecotMajor)
			}
			continue
		}
		switch f[0] {
		case "MECH":
			if len(f) > 1 {
				name := dovecotUnescape(f[1])
				if len(mechs) < 50 {
					mechs = append(mechs, dovecotText(name, 40))
				}
				// Mechanism names are upper case; the flags after
				// the name (plaintext, dictionary, ...) do not
				// matter to us.
				plain = plain || name == "PLAIN"
			}
		case "DONE":
			if !plain {
				return nil, d.errorf(nil, "the server offers no PLAIN mechanism (offered: %s; Dovecot's auth_mechanisms)", dovecotText(strings.Join(mechs, " "), 200))
			}
			if werr != nil {
				return nil, d.errorf(dovecotCause(werr), "the server closed the connection during the handshake")
			}
			if err := nc.SetDeadline(time.Time{}); err != nil {
				return nil, d.errorf(dovecotCause(err), "handshake")
			}
			return &dovecotConn{
				d: d, nc: nc, br: br,
				wsem:    make(chan struct{}, 1),
				pending: make(map[uint32]chan dovecotReply),
				broken:  make(chan struct{}),
			}, nil
		}
	}
}

// authLine is the AUTH request, or nil when it would be longer than
// dovecotMaxRequest. Dovecot auth protocol: AUTH <id> <mech>
// service=<service> [params]; lip, rip, lport, rport describe the
// client's connection; secured=tls says it is TLS, as Dovecot's own login
// processes send it (lib-auth-client auth-client-request.c; only passdb
// conditions and logs use it: the auth server accepts PLAIN either way,
// disable_plaintext_auth / auth_allow_cleartext being the login
// processes' business); resp=<base64> is the initial response and must
// come last. RFC 4616 §2: PLAIN's message is authzid NUL authcid NUL
// passwd, here with an empty authzid.
//
// no-penalty: Dovecot's own brute-force penalty (auth-penalty.c) holds
// every request from a client IP that recently failed, the right
// password's too, for 2, 4, 8 and then 15 seconds before even looking at
// it: longer than Timeout, so a Verify would fail with a timeout, an
// error, where the answer is a verdict. The gateway's Guard does that
// work (failures per address, account and network, lockouts), as
// chasquid and Dovecot's own trusted clients do with no-penalty.
// auth_failure_delay (2 s by default) still holds every FAIL.
func (d *Dovecot) authLine(id uint32, user, password string, info DovecotInfo) []byte {
	head := make([]byte, 0, 256+len(d.service))
	head = append(head, "AUTH\t"...)
	head = strconv.AppendUint(head, uint64(id), 10)
	head = append(head, "\tPLAIN\tservice="...)
	head = append(head, d.service...)
	if ip := dovecotIP(info.LocalIP); ip != "" {
		head = append(head, "\tlip="+ip...)
	}
	if ip := dovecotIP(info.ClientIP); ip != "" {
		head = append(head, "\trip="+ip...)
	}
	if info.LocalPort > 0 && info.LocalPort <= 65535 {
		head = append(head, "\tlport="+strconv.Itoa(info.LocalPort)...)
	}
	if info.ClientPort > 0 && info.ClientPort <= 65535 {
		head = append(head, "\trport="+strconv.Itoa(info.ClientPort)...)
	}
	if info.Secured {
		head = append(head, "\tsecured=tls"...)
	}
	head = append(head, "\tno-penalty\tresp="...)

	msgLen := 2 + len(user) + len(password)
	encLen := base64.StdEncoding.EncodedLen(msgLen)
	if len(head)+encLen+1 > dovecotMaxRequest {
		return nil
	}
	// Sized once, so that no copy of the password is left behind by a
	// growing buffer; the caller clears it.
	line := make([]byte, 0, len(head)+encLen+1)
	line = append(line, head...)
	msg := make([]byte, 0, msgLen)
	msg = append(msg, 0)
	msg = append(msg, user...)
	msg = append(msg, 0)
	msg = append(msg, password...)
	// Base64 has no tab, LF, CR or \001: resp needs no escaping.
	line = base64.StdEncoding.AppendEncode(line, msg)
	clear(msg)
	return append(line, '\n')
}

// roundTrip sends the line build makes for a fresh request id and waits
// for its reply. sent reports whether the request may have reached the
// server; when it has not (the connection was already broken, or broke
// while the line was written), it can be sent again elsewhere.
func (c *dovecotConn) roundTrip(ctx context.Context, build func(id uint32) []byte) (rep dovecotReply, sent bool, err error) {
	ch := make(chan dovecotReply, 1)
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return rep, false, c.err
	}
	// Dovecot auth protocol: the id is a 32-bit number unique among the
	// connection's requests, "typically you'd just increment it"; 0 is
	// refused by the server, and so is an id still pending there.
	for {
		c.lastID++
		if _, used := c.pending[c.lastID]; c.lastID != 0 && !used {
			break
		}
	}
	id := c.lastID
	c.pending[id] = ch
	c.mu.Unlock()

	line := build(id)
	if line == nil {
		c.forget(id)
		return rep, false, errDovecotTooLong
	}
	err = c.write(ctx, line)
	clear(line) // it holds the password, in base64
	if err != nil {
		c.forget(id)
		return rep, false, err
	}
	select {
	case rep = <-ch:
	case <-c.broken:
		if c.forget(id) {
			return rep, true, c.err
		}
		rep = <-ch // the reader took the reply and is handing it over
	case <-ctx.Done():
		if c.forget(id) {
			c.d.spawn(func() { c.cancel(id) })
			return rep, true, c.d.ctxError(ctx, "waiting for the answer")
		}
		rep = <-ch
	}
	if rep.cmd == "CONT" {
		// The server waits for more: tell it not to.
		c.d.spawn(func() { c.cancel(id) })
	}
	return rep, true, nil
}

// forget drops a request nobody waits for any longer; it reports whether
// it was still pending (false: the reader has taken its reply).
func (c *dovecotConn) forget(id uint32) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.pending[id]
	delete(c.pending, id)
	return ok
}

// cancel tells the server to drop a request we no longer wait for
// (Dovecot auth protocol: CANCEL <id>, as lib-auth-client sends when a
// request is aborted). A reply that crosses it is dropped by readLoop.
func (c *dovecotConn) cancel(id uint32) {
	ctx, done := context.WithTimeout(c.d.life, c.d.timeout)
	defer done()
	c.write(ctx, []byte("CANCEL\t"+strconv.FormatUint(uint64(id), 10)+"\n"))
}

// write sends one whole line, bounded by ctx. A write that sent part of
// the line breaks the connection (the server would take the rest of the
// stream for the line's end); one that sent nothing because ctx ended
// leaves it as it is. Either way the server has not seen the line.
func (c *dovecotConn) write(ctx context.Context, line []byte) error {
	select {
	case c.wsem <- struct{}{}:
	case <-c.broken:
		return c.err
	case <-ctx.Done():
		return c.d.ctxError(ctx, "sending the request")
	}
	defer func() { <-c.wsem }()
	if c.isBroken() {
		return c.err
	}
	if ctx.Err() != nil {
		return c.d.ctxError(ctx, "sending the request")
	}
	deadline, _ := ctx.Deadline() // none: the zero time, no deadline
	if err := c.nc.SetWriteDeadline(deadline); err != nil {
		c.fail(c.d.errorf(dovecotCause(err), "sending the request"))
		return c.err
	}
	// A cancelled ctx (not only its deadline) interrupts a write the
	// server does not take; done keeps a late interruption from hitting
	// the next writer's line.
	var (
		mu   sync.Mutex
		done bool
	)
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if !done {
			c.nc.SetWriteDeadline(time.Unix(1, 0))
		}
	})
	n, err := c.nc.Write(line)
	stop()
	mu.Lock()
	done = true
	mu.Unlock()
	switch {
	case err == nil:
		return nil
	case n == 0 && dovecotTimeout(err):
		return c.d.ctxError(ctx, "sending the request")
	case dovecotTimeout(err):
		c.fail(c.d.errorf(context.DeadlineExceeded, "sending the request: timed out"))
	default:
		c.fail(c.d.errorf(dovecotCause(err), "sending the request"))
	}
	return c.err
}

// readLoop hands each reply to the request waiting for it, until the
// connection breaks. A reply for an id nobody waits for (a request given
// up on) is dropped, as lib-auth-client does; a line that is no reply
// breaks the connection, as it does in lib-auth-client ("Auth server sent
// unknown response").
func (c *dovecotConn) readLoop() {
	for {
		line, err := readDovecotLine(c.br)
		if err != nil {
			if dovecotHungUp(err) {
				c.fail(c.d.errorf(err, "the server closed the connection"))
			} else {
				c.fail(c.d.errorf(err, "reading"))
			}
			return
		}
		id, rep, err := parseDovecotReply(line)
		if err != nil {
			c.fail(c.d.errorf(nil, "protocol error: %v", err))
			return
		}
		c.mu.Lock()
		ch, ok := c.pending[id]
		delete(c.pending, id)
		c.mu.Unlock()
		if ok {
			ch <- rep // buffered, and the only send for this id
		}
	}
}

// fail breaks the connection with err, once: the requests waiting on it
// see err.
func (c *dovecotConn) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return
	}
	c.err = err
	close(c.broken)
	c.nc.Close()
}

func (c *dovecotConn) isBroken() bool {
	select {
	case <-c.broken:
		return true
	default:
		return false
	}
}

// readDovecotLine reads one line without its LF. Dovecot auth protocol:
// "Each line is a command which ends with an LF character"; one longer
// than dovecotMaxLine is an error, found without reading it whole.
func readDovecotLine(br *bufio.Reader) (string, error) {
	line, err := br.ReadSlice('\n')
	switch {
	case err == nil:
		return string(line[:len(line)-1]), nil
	case errors.Is(err, bufio.ErrBufferFull):
		return "", fmt.Errorf("protocol error: a line longer than %d KiB", dovecotMaxLine>>10)
	case errors.Is(err, io.EOF) && len(line) > 0:
		return "", fmt.Errorf("%w in the middle of a line", io.ErrUnexpectedEOF)
	default:
		return "", dovecotCause(err)
	}
}

// parseDovecotReply parses a line after the handshake. Dovecot auth
// protocol: OK <id> [params], FAIL <id> [params], CONT <id> <base64>, and
// from protocol 1.4 CANCELLED <id>; the parameters use Dovecot's
// tab-escaping.
func parseDovecotReply(line string) (uint32, dovecotReply, error) {
	f := strings.Split(line, "\t")
	switch f[0] {
	case "OK", "FAIL", "CONT", "CANCELLED":
	default:
		return 0, dovecotReply{}, fmt.Errorf("unexpected line %q", dovecotText(f[0], 20))
	}
	if len(f) < 2 {
		return 0, dovecotReply{}, fmt.Errorf("%s without a request id", f[0])
	}
	id, err := strconv.ParseUint(f[1], 10, 32)
	if err != nil {
		return 0, dovecotReply{}, fmt.Errorf("%s with an invalid request id %q", f[0], dovecotText(f[1], 20))
	}
	rep := dovecotReply{cmd: f[0], args: make([]string, 0, len(f)-2)}
	for _, a := range f[2:] {
		rep.args = append(rep.args, dovecotUnescape(a))
	}
	return uint32(id), rep, nil
}

// dovecotEscape is Dovecot's tab-escaping (lib strescape.c
// str_append_tabescaped): \001 is the escape character, \001 becomes
// \0011, TAB \001t, CR \001r, LF \001n, and NUL \0010
// (str_append_tabescaped_n; the documentation's list).
func dovecotEscape(s string) string {
	if !strings.ContainsAny(s, "\x00\x01\t\r\n") {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case 0:
			b.WriteString("\x010")
		case 1:
			b.WriteString("\x011")
		case '\t':
			b.WriteString("\x01t")
		case '\r':
			b.WriteString("\x01r")
		case '\n':
			b.WriteString("\x01n")
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

// dovecotUnescape undoes dovecotEscape as Dovecot does (strescape.c
// str_append_tabunescaped): after \001, 0 1 t r n stand for NUL \001 TAB
// CR LF, any other character for itself ("anything else writes the
// character itself (skipping the \001)"), and a \001 at the very end is
// dropped.
func dovecotUnescape(s string) string {
	if strings.IndexByte(s, 1) < 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		if s[i] != 1 {
			b.WriteByte(s[i])
			continue
		}
		i++
		if i == len(s) {
			break
		}
		switch s[i] {
		case '0':
			b.WriteByte(0)
		case '1':
			b.WriteByte(1)
		case 't':
			b.WriteByte('\t')
		case 'r':
			b.WriteByte('\r')
		case 'n':
			b.WriteByte('\n')
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

// dovecotIP is ip in the form Dovecot parses (net_addr2ip), or "" when
// ip is not an address, which then is not sent: an IPv4-mapped IPv6
// address becomes IPv4, a zone is dropped.
func dovecotIP(ip string) string {
	a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(ip, "["), "]"))
	if err != nil {
		return ""
	}
	return a.Unmap().WithZone("").String()
}

// errorf makes an error naming the server: "dovecot auth unix:/run/...:
// msg: err".
func (d *Dovecot) errorf(err error, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if err == nil {
		return fmt.Errorf("dovecot auth %s: %s", d.where, msg)
	}
	return fmt.Errorf("dovecot auth %s: %s: %w", d.where, msg, err)
}

// ctxError says why ctx ended (or, when a network deadline struck just
// before its own, that it timed out) while doing what.
func (d *Dovecot) ctxError(ctx context.Context, what string) error {
	err := ctx.Err()
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		return d.errorf(context.DeadlineExceeded, "%s: timed out", what)
	}
	return d.errorf(err, "%s", what)
}

// dovecotCause strips a net.OpError down to its cause, since errorf already
// names the server.
func dovecotCause(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}

// dovecotHungUp tells the server's closing the connection: EOF, or, when
// it closed with our lines still unread (the kernel then resets the
// connection), ECONNRESET; EPIPE when writing.
func dovecotHungUp(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func dovecotTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// dovecotText makes text from the server fit an error message: control
// characters and invalid UTF-8 become '?', and it is cut at limit runes.
func dovecotText(s string, limit int) string {
	var b strings.Builder
	n := 0
	for _, r := range s {
		if n == limit {
			b.WriteString("...")
			break
		}
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			r = '?'
		}
		b.WriteRune(r)
		n++
	}
	return b.String()
}
