package main

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// BareConfig is the bare go-smtp server: the baseline of what the SMTP
// library costs, with the listener settings of pecgw serve and none of
// its work (no password hash, no signature, no log, no hand-off).
type BareConfig struct {
	Addr      string      // host:port to listen on ("127.0.0.1:0" picks a port)
	TLS       string      // TLSImplicit or TLSStartTLS
	TLSConfig *tls.Config // with the server certificate
	// Password, when not empty, is the only password AUTH accepts
	// (compared in constant time); any user name is accepted.
	Password string
	// MinAuthTime, when set, makes every AUTH answer take at least this
	// long, as pecgw's limits.min_auth_time does (300ms by default).
	MinAuthTime time.Duration
	Domain      string    // greeting name; "localhost" when empty
	ErrorLog    io.Writer // go-smtp's error log; discarded when nil
	// OnMessage, when set, gets every message accepted (tests); without
	// it DATA is read and discarded.
	OnMessage func(from string, to []string, data []byte)
	// Durable, when set, is a maildir where every message is written
	// durably before its 250, as a bare MTA delivers: a file in tmp/,
	// fsync, link into new/, unlink from tmp/, fsync of new/ (one fsync of
	// each per message, nothing shared between messages). It is the
	// baseline of issue 12: what one durable file per message costs.
	Durable string
}

// BareServer is a running bare server.
type BareServer struct {
	cfg     BareConfig
	srv     *smtp.Server
	ln      net.Listener // what srv serves: tracked, under TLS for implicit
	tracked *countingListener
	pwHash  [32]byte
	newDir  *os.File      // Durable's new/, fsync'd after each link
	seq     atomic.Int64  // Durable's file names
	done    chan struct{} // closed when Serve has returned
	stopped atomic.Bool

	sessions, messages, authOK, authFailed atomic.Int64
}

// BareStats counts what a bare server did.
type BareStats struct {
	Sessions   int64 // go-smtp sessions (one per EHLO after connect or STARTTLS)
	Messages   int64 // DATA accepted
	AuthOK     int64
	AuthFailed int64
}

func (c *BareConfig) validate() error {
	switch {
	case c.Addr == "":
		return usagef("--addr is required")
	case !validHostPort(c.Addr):
		return usagef("--addr must be HOST:PORT, got %q", c.Addr)
	case c.TLS != TLSImplicit && c.TLS != TLSStartTLS:
		return usagef("--tls must be %s or %s, got %q", TLSImplicit, TLSStartTLS, c.TLS)
	case c.TLSConfig == nil || (len(c.TLSConfig.Certificates) == 0 && c.TLSConfig.GetCertificate == nil):
		return usagef("--cert and --key are required")
	case c.MinAuthTime < 0 || c.MinAuthTime > time.Minute:
		return usagef("--min-auth-time must be between 0 and 1m, got %v", c.MinAuthTime)
	}
	return nil
}

// StartBare listens on cfg.Addr and serves until Close or Shutdown.
func StartBare(cfg BareConfig) (*BareServer, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Domain == "" {
		cfg.Domain = "localhost"
	}
	tc := cfg.TLSConfig.Clone()
	if tc.MinVersion == 0 {
		tc.MinVersion = tls.VersionTLS12 // pecgw's tls.min_version default
	}
	b := &BareServer{cfg: cfg, done: make(chan struct{}), pwHash: sha256.Sum256([]byte(cfg.Password))}
	if cfg.Durable != "" {
		for _, sub := range []string{"tmp", "new", "cur"} {
			if err := os.MkdirAll(filepath.Join(cfg.Durable, sub), 0o700); err != nil {
				return nil, fmt.Errorf("--durable: %w", err)
			}
		}
		d, err := os.Open(filepath.Join(cfg.Durable, "new"))
		if err != nil {
			return nil, fmt.Errorf("--durable: %w", err)
		}
		b.newDir = d
	}
	tcp, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		if b.newDir != nil {
			b.newDir.Close()
		}
		return nil, err
	}
	b.tracked = &countingListener{Listener: tcp}
	var ln net.Listener = b.tracked
	if cfg.TLS == TLSImplicit {
		ln = tls.NewListener(ln, tc)
	}
	b.ln = ln
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		b.sessions.Add(1)
		return &bareSession{b: b, conn: c}, nil
	}))
	// As pecgw serve sets its listeners up (cmd/pecgw/serve.go), with the
	// defaults of docs/configuration.md.
	srv.Domain = cfg.Domain
	srv.TLSConfig = tc
	srv.MaxMessageBytes = 100000000
	srv.MaxRecipients = 1000
	srv.ReadTimeout = 5 * time.Minute
	srv.WriteTimeout = 5 * time.Minute
	srv.EnableSMTPUTF8 = true
	out := cfg.ErrorLog
	if out == nil {
		out = io.Discard
	}
	srv.ErrorLog = log.New(out, "pecgw-load bare: ", log.LstdFlags)
	b.srv = srv
	go func() {
		defer close(b.done)
		srv.Serve(ln)
	}()
	return b, nil
}

// Addr is the address the server listens on.
func (b *BareServer) Addr() string { return b.ln.Addr().String() }

// Stats counts what the server did so far.
func (b *BareServer) Stats() BareStats {
	return BareStats{Sessions: b.sessions.Load(), Messages: b.messages.Load(), AuthOK: b.authOK.Load(), AuthFailed: b.authFailed.Load()}
}

// Shutdown stops listening and waits, until ctx ends, for the
// connections to end; then it closes those still open.
func (b *BareServer) Shutdown(ctx context.Context) error {
	if !b.stopped.CompareAndSwap(false, true) {
		return nil
	}
	// Our listener ourselves: Serve may not have registered it yet.
	b.ln.Close()
	var err error
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for b.tracked.open.Load() > 0 && err == nil {
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-tick.C:
		}
	}
	b.srv.Close() // the connections still open
	<-b.done
	if b.newDir != nil {
		b.newDir.Close()
	}
	return err
}

// Close stops the server and closes every connection at once.
func (b *BareServer) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	b.Shutdown(ctx)
	return nil
}

// countingListener counts its connections still open.
type countingListener struct {
	net.Listener
	open atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.open.Add(1)
	return &countedConn{Conn: c, l: l}, nil
}

type countedConn struct {
	net.Conn
	l    *countingListener
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.l.open.Add(-1) })
	return c.Conn.Close()
}

var (
	bareAuthFailed   = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "authentication credentials invalid"}
	bareAuthRequired = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "authentication required"}
	bareNeedTLS      = &smtp.SMTPError{Code: 538, EnhancedCode: smtp.EnhancedCode{5, 7, 11}, Message: "encryption required for requested authentication mechanism"}
)

// bareSession is a session of the bare server: the same replies as
// pecgw's for AUTH and its absence, and nothing done with the message.
type bareSession struct {
	b    *BareServer
	conn *smtp.Conn
	user string
	from string
	rcpt []string
}

func (s *bareSession) AuthMechanisms() []string {
	if _, ok := s.conn.TLSConnectionState(); !ok {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

func (s *bareSession) Auth(mech string) (sasl.Server, error) {
	if _, ok := s.conn.TLSConnectionState(); !ok {
		return nil, bareNeedTLS
	}
	if s.user != "" {
		return nil, &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "already authenticated"}
	}
	switch strings.ToUpper(mech) {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, username, password string) error {
			return s.check(username, password)
		}), nil
	case sasl.Login:
		return &loginServer{check: s.check}, nil
	}
	return nil, &smtp.SMTPError{Code: 504, EnhancedCode: smtp.EnhancedCode{5, 5, 4}, Message: "unrecognized authentication mechanism"}
}

// check accepts any user with the configured password (any password
// when none is).
func (s *bareSession) check(username, password string) error {
	start := time.Now()
	ok := true
	if s.b.cfg.Password != "" {
		h := sha256.Sum256([]byte(password))
		ok = subtle.ConstantTimeCompare(h[:], s.b.pwHash[:]) == 1
	}
	if wait := s.b.cfg.MinAuthTime - time.Since(start); wait > 0 {
		time.Sleep(wait)
	}
	if !ok {
		s.b.authFailed.Add(1)
		return bareAuthFailed
	}
	s.b.authOK.Add(1)
	s.user = username
	return nil
}

func (s *bareSession) Mail(from string, _ *smtp.MailOptions) error {
	if s.user == "" {
		return bareAuthRequired
	}
	s.from, s.rcpt = from, nil
	return nil
}

func (s *bareSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if s.user == "" {
		return bareAuthRequired
	}
	if s.from == "" {
		return &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "MAIL first"}
	}
	s.rcpt = append(s.rcpt, to)
	return nil
}

func (s *bareSession) Data(r io.Reader) error {
	if s.user == "" {
		return bareAuthRequired
	}
	switch {
	case s.b.newDir != nil:
		if err := s.b.deliver(r); err != nil {
			return err
		}
	case s.b.cfg.OnMessage == nil:
		if _, err := io.Copy(io.Discard, r); err != nil {
			return err
		}
	default:
		data, err := io.ReadAll(r)
		if err != nil {
			return err
		}
		s.b.cfg.OnMessage(s.from, append([]string(nil), s.rcpt...), data)
	}
	s.b.messages.Add(1)
	s.from, s.rcpt = "", nil
	return nil
}

// bareWriteFailed is the reply when Durable's write fails: the message is
// not taken.
var bareWriteFailed = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "message not written, try again later"}

// deliver writes one message into Durable's maildir the way a bare MTA
// does (maildir(5)): tmp/ file, fsync, link into new/, unlink, fsync new/.
func (b *BareServer) deliver(r io.Reader) error {
	name := fmt.Sprintf("%d.%d_%d.bare", time.Now().Unix(), os.Getpid(), b.seq.Add(1))
	tmp := filepath.Join(b.cfg.Durable, "tmp", name)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return bareWriteFailed
	}
	_, err = io.Copy(f, r)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Link(tmp, filepath.Join(b.cfg.Durable, "new", name))
	}
	os.Remove(tmp)
	if err == nil {
		err = b.newDir.Sync()
	}
	if err != nil {
		return bareWriteFailed
	}
	return nil
}

func (s *bareSession) Reset() { s.from, s.rcpt = "", nil }

func (s *bareSession) Logout() error { return nil }

// loginServer is the server side of SASL LOGIN (go-sasl has only the
// client): "Username:", then "Password:"; an initial response is the
// user name.
type loginServer struct {
	check    func(username, password string) error
	username string
	step     int
}

func (l *loginServer) Next(response []byte) ([]byte, bool, error) {
	switch l.step {
	case 0:
		l.step++
		if len(response) > 0 {
			l.username = string(response)
			l.step++
			return []byte("Password:"), false, nil
		}
		return []byte("Username:"), false, nil
	case 1:
		l.username = string(response)
		l.step++
		return []byte("Password:"), false, nil
	case 2:
		l.step++
		return nil, true, l.check(l.username, string(response))
	}
	return nil, true, errors.New("unexpected LOGIN response")
}
