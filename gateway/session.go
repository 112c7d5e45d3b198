package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/pecgw/pecgw/pec"
)

// Authenticator checks a user's password (Users). It must take the same
// time whether or not the user exists.
type Authenticator interface {
	Authenticate(address, password string) bool
}

// Backend is the go-smtp backend of the submission service (RFC 6409):
// one Session per connection.
type Backend struct {
	Acceptor *Acceptor
	Users    Authenticator
	// MaxMessageBytes bounds DATA (advertised with SIZE, RFC 1870).
	MaxMessageBytes int64
	// TransactionTimeout bounds one acceptance transaction after DATA.
	TransactionTimeout time.Duration
}

// NewSession starts the session of a new connection.
func (b *Backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &Session{b: b, conn: c}, nil
}

// Session is one SMTP connection. Every reply it gives is an
// *smtp.SMTPError built here or in reply.go: no internal detail leaks.
type Session struct {
	b    *Backend
	conn *smtp.Conn
	user string // authenticated mailbox, "" before AUTH

	from string
	utf8 bool
	rcpt []string
}

// Replies of the session (RFC 4954 §6; RFC 3463).
var (
	errAuthRequired = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "authentication required"}
	errAuthFailed   = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "authentication credentials invalid"}
	errNeedTLS      = &smtp.SMTPError{Code: 538, EnhancedCode: smtp.EnhancedCode{5, 7, 11}, Message: "encryption required for requested authentication mechanism"}
	errTooBig       = &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "message size exceeds the limit"}
)

func (s *Session) tlsState() (tls.ConnectionState, bool) {
	return s.conn.TLSConnectionState()
}

// AuthMechanisms offers PLAIN and LOGIN, and only over TLS (RFC 6109
// §5.3: user↔provider traffic is always protected).
func (s *Session) AuthMechanisms() []string {
	if _, ok := s.tlsState(); !ok {
		return nil
	}
	return []string{sasl.Plain, "LOGIN"}
}

// Auth authenticates with PLAIN (RFC 4616) or LOGIN (the
// draft-murchison-sasl-login mechanism Outlook still uses; go-sasl has no
// server for it).
func (s *Session) Auth(mech string) (sasl.Server, error) {
	if _, ok := s.tlsState(); !ok {
		return nil, errNeedTLS
	}
	if s.user != "" {
		return nil, &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "already authenticated"}
	}
	check := func(username, password string) error {
		if !s.b.Users.Authenticate(username, password) {
			return errAuthFailed
		}
		s.user = strings.ToLower(username)
		return nil
	}
	switch strings.ToUpper(mech) {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, username, password string) error {
			// RFC 4616 §2: an authorization identity other than the
			// authentication identity would be acting for someone else.
			if identity != "" && !strings.EqualFold(identity, username) {
				return errAuthFailed
			}
			return check(username, password)
		}), nil
	case "LOGIN":
		return &loginServer{check: check}, nil
	}
	return nil, &smtp.SMTPError{Code: 504, EnhancedCode: smtp.EnhancedCode{5, 5, 4}, Message: "unrecognized authentication mechanism"}
}

// loginServer is the server side of SASL LOGIN: two challenges,
// "Username:" and "Password:" (go-smtp base64-encodes them).
type loginServer struct {
	check    func(username, password string) error
	username string
	step     int
}

func (l *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch l.step {
	case 0:
		l.step++
		if len(response) > 0 { // initial response: the username
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

// Mail starts a transaction. RFC 6109 §2.2.1, §3.1.1: the sender must be
// the authenticated user's own mailbox; pecgw is never an open relay.
func (s *Session) Mail(from string, opts *smtp.MailOptions) error {
	if s.user == "" {
		return errAuthRequired
	}
	if !strings.EqualFold(from, s.user) {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
			Message: "sender address must be your own mailbox " + oneLine(s.user)}
	}
	if opts != nil && opts.Size > 0 && s.b.MaxMessageBytes > 0 && opts.Size > s.b.MaxMessageBytes {
		return errTooBig
	}
	s.from = from
	s.utf8 = opts != nil && opts.UTF8
	s.rcpt = nil
	return nil
}

// Rcpt adds a forward-path.
func (s *Session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if s.user == "" {
		return errAuthRequired
	}
	if s.from == "" {
		return &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "MAIL first"}
	}
	s.rcpt = append(s.rcpt, to)
	return nil
}

// Data reads the message and runs the acceptance transaction; the reply
// carries the PEC identifier, the refusal with its notice, or a
// temporary failure.
func (s *Session) Data(r io.Reader) error {
	if s.user == "" {
		return errAuthRequired
	}
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, r); err != nil {
		if errors.Is(err, smtp.ErrDataTooLarge) {
			return errTooBig
		}
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "connection problem while reading the message, please retry"}
	}
	ctx := context.Background()
	if s.b.TransactionTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.b.TransactionTimeout)
		defer cancel()
	}
	sub := &Submission{
		Raw:      buf.Bytes(),
		Envelope: pec.SMTPEnvelope{From: s.from, To: append([]string(nil), s.rcpt...), UTF8: s.utf8},
		User:     s.user,
		ClientIP: remoteIP(s.conn.Conn().RemoteAddr()),
	}
	if st, ok := s.tlsState(); ok {
		sub.TLS = tlsName(st.Version)
	}
	o, err := s.b.Acceptor.Process(ctx, sub)
	s.from, s.rcpt = "", nil
	switch {
	case err != nil:
		return InternalReply(err)
	case o.Accepted:
		return AcceptedReply(o)
	default:
		return RefusedReply(o)
	}
}

// Reset discards the transaction in progress.
func (s *Session) Reset() { s.from, s.utf8, s.rcpt = "", false, nil }

// Logout ends the session.
func (s *Session) Logout() error { return nil }

func remoteIP(a net.Addr) string {
	if host, _, err := net.SplitHostPort(a.String()); err == nil {
		return host
	}
	return a.String()
}

func tlsName(v uint16) string {
	switch v {
	case tls.VersionTLS12:
		return "TLS1.2"
	case tls.VersionTLS13:
		return "TLS1.3"
	}
	return fmt.Sprintf("TLS(0x%04x)", v)
}
