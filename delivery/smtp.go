package delivery

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// DefaultTimeout bounds each exchange with a next hop when the options
// leave Timeout zero. RFC 5321 §4.5.3.2 suggests 5 to 10 minutes per
// command for a queueing MTA; pecgw has a client waiting for its reply, so
// it gives up sooner and lets the client retry.
const DefaultTimeout = 2 * time.Minute

// TLS modes for SMTPOptions.TLS.
const (
	TLSStartTLS = "starttls" // RFC 3207, required: no STARTTLS, no delivery
	TLSImplicit = "implicit" // TLS from the first byte (RFC 8314)
	TLSNone     = "none"     // clear text, loopback only
)

// SMTPOptions configures a next-hop SMTP Target.
type SMTPOptions struct {
	Address    string         // host:port
	TLS        string         // TLSStartTLS (default), TLSImplicit, or TLSNone (loopback addresses only)
	ServerName string         // name the certificate must carry; default: Address's host
	RootCAs    *x509.CertPool // nil: the system's roots
	Username   string         // AUTH PLAIN (RFC 4954) when not empty; needs TLS
	Password   string
	HelloName  string        // EHLO name; default: os.Hostname()
	Timeout    time.Duration // for each read and write; 0: DefaultTimeout
}

// Validate reports every problem with the options at once. NewSMTP keeps
// the result and Deliver returns it, so a misconfigured Target never sends;
// the command line calls Validate at start-up to fail early.
func (o SMTPOptions) Validate() error {
	var errs []error
	host, _, err := net.SplitHostPort(o.Address)
	if err != nil {
		errs = append(errs, fmt.Errorf("delivery: smtp address %q: %w", o.Address, err))
	}
	switch o.TLS {
	case "", TLSStartTLS, TLSImplicit:
	case TLSNone:
		// RFC 6109 §5.3: PEC travels between and within providers only
		// over protected channels. Clear text is for a relay on this host.
		if err == nil && !isLoopbackHost(host) {
			errs = append(errs, fmt.Errorf("delivery: smtp address %q: tls %q is allowed only for a loopback address (RFC 6109 §5.3)", o.Address, o.TLS))
		}
		if o.Username != "" {
			// RFC 4616 §6: PLAIN sends the password as is; only over TLS.
			errs = append(errs, errors.New("delivery: smtp: AUTH PLAIN needs TLS, and tls is \"none\""))
		}
	default:
		errs = append(errs, fmt.Errorf("delivery: smtp tls %q: want %q, %q or %q", o.TLS, TLSStartTLS, TLSImplicit, TLSNone))
	}
	if o.Timeout < 0 {
		errs = append(errs, fmt.Errorf("delivery: smtp timeout %v is negative", o.Timeout))
	}
	return errors.Join(errs...)
}

// SMTP hands messages to a next-hop MTA over SMTP (RFC 5321), one
// connection per message, all recipients or none.
type SMTP struct {
	o   SMTPOptions
	err error // from Validate
}

// NewSMTP returns a next-hop SMTP Target. Invalid options are reported by
// o.Validate and by every Deliver.
func NewSMTP(o SMTPOptions) *SMTP {
	s := &SMTP{o: o, err: o.Validate()}
	if s.o.TLS == "" {
		s.o.TLS = TLSStartTLS
	}
	if s.o.Timeout == 0 {
		s.o.Timeout = DefaultTimeout
	}
	if s.o.HelloName == "" {
		s.o.HelloName = defaultHelloName()
	}
	if s.o.ServerName == "" {
		s.o.ServerName, _, _ = net.SplitHostPort(s.o.Address)
	}
	return s
}

// Deliver sends m in one SMTP transaction and returns nil only when the
// next hop answered 250 to the end of DATA. If the next hop refuses any
// recipient, the transaction is abandoned before DATA: the transport
// envelope is one certified transmission, so either every recipient's
// provider gets it from this hand-off or none does.
func (s *SMTP) Deliver(ctx context.Context, m *Message) error {
	if s.err != nil {
		return s.err
	}
	if err := m.check(); err != nil {
		return err
	}
	conn, closeConn, err := dial(ctx, "tcp", s.o.Address, s.o.Timeout)
	if err != nil {
		return s.fail(ctx, fmt.Errorf("connect: %w", err))
	}
	defer closeConn()
	c, err := s.hello(ctx, conn)
	if err != nil {
		return s.fail(ctx, err)
	}
	if err := s.send(c, m); err != nil {
		quitAfter(c, err)
		return s.fail(ctx, err)
	}
	// The message is the next hop's now; a failed QUIT changes nothing.
	_ = c.Quit()
	return nil
}

func (s *SMTP) fail(ctx context.Context, err error) error {
	return failure(ctx, "delivery: smtp next hop "+s.o.Address, err)
}

// hello greets the next hop, establishes TLS as configured and says EHLO.
func (s *SMTP) hello(ctx context.Context, conn net.Conn) (*smtp.Client, error) {
	cfg := &tls.Config{
		ServerName: s.o.ServerName,
		RootCAs:    s.o.RootCAs,
		MinVersion: tls.VersionTLS12,
	}
	var c *smtp.Client
	switch s.o.TLS {
	case TLSImplicit:
		tc := tls.Client(conn, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, fmt.Errorf("tls handshake: %w", err)
		}
		c = smtp.NewClient(tc)
	case TLSStartTLS:
		// go-smtp reads the greeting, says EHLO (as "localhost": its API
		// sets the name only after this first EHLO) and fails if STARTTLS
		// is not offered. RFC 3207 §6: a client that requires TLS must not
		// go on without it, or a man in the middle could strip STARTTLS
		// from the EHLO reply.
		var err error
		c, err = smtp.NewClientStartTLS(conn, cfg)
		if err != nil {
			return nil, fmt.Errorf("starttls required (RFC 3207): %w", err)
		}
	case TLSNone:
		// Validate checked the configured host; this checks where the
		// name actually led.
		if !isLoopbackAddr(conn.RemoteAddr()) {
			return nil, fmt.Errorf("tls \"none\" refused: %v is not a loopback address (RFC 6109 §5.3)", conn.RemoteAddr())
		}
		c = smtp.NewClient(conn)
	}
	setTimeouts(c, s.o.Timeout)
	// RFC 3207 §4.2: after STARTTLS the client forgets what it knew and
	// says EHLO again; with STARTTLS the TLS handshake, and so the
	// certificate check, happens here.
	if err := c.Hello(s.o.HelloName); err != nil {
		if s.o.TLS == TLSStartTLS {
			return nil, fmt.Errorf("TLS handshake or EHLO after STARTTLS: %w", err)
		}
		return nil, fmt.Errorf("EHLO: %w", err)
	}
	if s.o.TLS != TLSNone {
		if st, ok := c.TLSConnectionState(); !ok || !st.HandshakeComplete {
			return nil, errors.New("no TLS session after the handshake")
		}
	}
	return c, nil
}

// send runs the mail transaction.
func (s *SMTP) send(c *smtp.Client, m *Message) error {
	if err := requireExtensions(c, m); err != nil {
		return err
	}
	if s.o.Username != "" {
		// RFC 4954 §4 AUTH, with the PLAIN mechanism (RFC 4616), only
		// inside TLS (checked by Validate and by hello).
		if !c.SupportsAuth(sasl.Plain) {
			return errors.New("next hop does not offer AUTH PLAIN (RFC 4954)")
		}
		if err := c.Auth(sasl.NewPlainClient("", s.o.Username, s.o.Password)); err != nil {
			return fmt.Errorf("AUTH PLAIN: %w", err)
		}
	}
	if err := c.Mail(m.ReversePath, mailOptions(m)); err != nil {
		return fmt.Errorf("MAIL FROM:<%s>: %w", m.ReversePath, err)
	}
	for _, rcpt := range m.ForwardPaths {
		if err := c.Rcpt(rcpt, nil); err != nil {
			// RFC 5321 §4.1.1.5: RSET abandons the transaction, so no
			// recipient gets a partial copy of the certified transmission.
			_ = c.Reset()
			return fmt.Errorf("RCPT TO:<%s> refused, transaction abandoned before DATA: %w", rcpt, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	if _, err := w.Write(m.Data); err != nil {
		return fmt.Errorf("sending the message: %w", err)
	}
	if _, err := w.CloseWithResponse(); err != nil {
		var se *smtp.SMTPError
		if !errors.As(err, &se) {
			// No reply to the final dot: the next hop may have taken
			// responsibility for the message (RFC 5321 §6.1, RFC 1047).
			return fmt.Errorf("end of DATA: %w: %w", ErrOutcomeUnknown, err)
		}
		return fmt.Errorf("end of DATA: %w", err)
	}
	return nil
}

// requireExtensions fails before MAIL when the message needs an extension
// the server did not offer: sending it anyway would corrupt it on the way.
func requireExtensions(c *smtp.Client, m *Message) error {
	if ok, _ := c.Extension("SMTPUTF8"); m.UTF8 && !ok {
		// RFC 6531: without SMTPUTF8 the server may not be given UTF-8
		// addresses or header fields.
		return errors.New("the message needs SMTPUTF8 (RFC 6531) and the server does not offer it")
	}
	if ok, _ := c.Extension("8BITMIME"); m.EightBit && !ok {
		// RFC 6152: 8-bit content only to a server that offers 8BITMIME.
		return errors.New("the message needs 8BITMIME (RFC 6152) and the server does not offer it")
	}
	return nil
}

// mailOptions returns the MAIL parameters for m. go-smtp adds
// BODY=8BITMIME by itself whenever the server offers 8BITMIME (harmless
// for 7-bit content: RFC 6152 lets a client declare it), and SMTPUTF8 when
// UTF8 is set.
func mailOptions(m *Message) *smtp.MailOptions {
	// RFC 1870: SIZE lets the server refuse an oversized message before
	// it is sent.
	return &smtp.MailOptions{UTF8: m.UTF8, Size: int64(len(m.Data))}
}

// quitAfter ends the session politely (RFC 5321 §4.1.1.10: the client
// sends QUIT before closing) when the server is still talking, that is
// when err is one of its replies; after a network error it would only wait.
func quitAfter(c *smtp.Client, err error) {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		_ = c.Quit()
	}
}

// failure prefixes err, and says so when the context ended the attempt.
func failure(ctx context.Context, prefix string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w: %w", prefix, context.Cause(ctx), err)
	}
	return fmt.Errorf("%s: %w", prefix, err)
}

func setTimeouts(c *smtp.Client, d time.Duration) {
	// deadlineConn enforces d on every read and write; these keep
	// go-smtp's own bookkeeping consistent with it.
	c.CommandTimeout = d
	c.SubmissionTimeout = d
}

// dial connects and returns the connection wrapped so that every read and
// write has its own deadline, and a function that closes it. The context
// cancels the connection for as long as it is open.
func dial(ctx context.Context, network, addr string, timeout time.Duration) (net.Conn, func(), error) {
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, nil, err
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	return &deadlineConn{Conn: conn, timeout: timeout}, func() {
		stop()
		conn.Close()
	}, nil
}

// deadlineConn gives every Read and Write a deadline of timeout from its
// start, and ignores the deadlines others set. go-smtp sets deadlines
// only around its commands and with its own 5-minute default before the
// caller can change it (NewClientStartTLS greets and says EHLO at once),
// and not at all while the message is being written; a next hop that
// stops reading or answering would otherwise hold the submission for
// minutes or for ever.
type deadlineConn struct {
	net.Conn
	timeout time.Duration
}

func (c *deadlineConn) Read(b []byte) (int, error) {
	if err := c.Conn.SetReadDeadline(time.Now().Add(c.timeout)); err != nil {
		return 0, err
	}
	return c.Conn.Read(b)
}

func (c *deadlineConn) Write(b []byte) (int, error) {
	if err := c.Conn.SetWriteDeadline(time.Now().Add(c.timeout)); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
}

func (c *deadlineConn) SetDeadline(time.Time) error      { return nil }
func (c *deadlineConn) SetReadDeadline(time.Time) error  { return nil }
func (c *deadlineConn) SetWriteDeadline(time.Time) error { return nil }

func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func isLoopbackAddr(a net.Addr) bool {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.IP.IsLoopback()
	case *net.UnixAddr:
		return true
	}
	return false
}

func defaultHelloName() string {
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "localhost"
}
