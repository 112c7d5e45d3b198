package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"go.uber.org/zap"

	"github.com/pecgw/pecgw/pec"
)

// MaxLineLength is the longest line the server reads (go-smtp's
// Server.MaxLineLength, 2000 by default). It is far above the 998 octets
// of RFC 5322 §2.1.1 so that a message with a long line still reaches
// Inspect and its sender gets the non-acceptance notice; only a line
// beyond it is refused at the SMTP level, without a notice.
const MaxLineLength = 64 << 10

// Backend is the go-smtp backend of the submission service (RFC 6409):
// one Session per connection.
type Backend struct {
	Acceptor *Acceptor
	// Auth checks AUTH attempts (auth.go): its Verifier is where the
	// users are, its policy the lockout, the cache and the slots.
	Auth *Guard
	// Accounts says which accounts are suspended (accounts.go); nil: none.
	Accounts *Accounts
	// MaxMessageBytes bounds DATA (advertised with SIZE, RFC 1870).
	MaxMessageBytes int64
	// Memory, when set, bounds the message bytes held in memory
	// (body.go, limits.message_memory); nil reads each message into
	// memory whole.
	Memory *MessageMemory
	// TransactionTimeout bounds one acceptance transaction after DATA.
	TransactionTimeout time.Duration
	// CommandTimeout is the longest pause within DATA; DataTimeout bounds
	// the whole DATA upload (limits.go).
	CommandTimeout, DataTimeout time.Duration

	// Log is the operational log (zap): one entry per event of the fixed
	// vocabulary in events.go, never a password or an AUTH payload. nil
	// logs nothing.
	Log *zap.Logger

	// Language is the language of the replies' texts
	// (submission.reply_language, reply.go); "" is Italian then English.
	Language Language
}

// NewSession starts the session of a new connection: go-smtp calls it at
// the first EHLO/HELO (again after STARTTLS, having called Logout). The
// connection limits were applied when it was accepted (listener.go).
func (b *Backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &Session{b: b, conn: c, ip: remoteIP(c.Conn().RemoteAddr())}, nil
}

// Session is one SMTP connection. Every reply it gives is an
// *smtp.SMTPError built here or in reply.go: no internal detail leaks.
type Session struct {
	b    *Backend
	conn *smtp.Conn
	ip   string // client IP, in the log
	user string // authenticated mailbox, "" before AUTH

	from string
	utf8 bool
	rcpt []string
}

// reply is the reply key of the table (reply.go) in the session's
// language; args are pairs of placeholder and value.
func (s *Session) reply(key string, args ...string) *smtp.SMTPError {
	return s.b.Language.reply(key, "", args...)
}

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
		return nil, s.reply("auth-need-tls")
	}
	if s.user != "" {
		return nil, s.reply("auth-twice")
	}
	check := func(username, password string) error {
		if err := s.authenticate(username, password, false); err != nil {
			return err
		}
		s.user = strings.ToLower(username)
		return nil
	}
	switch strings.ToUpper(mech) {
	case sasl.Plain:
		return replying{sasl.NewPlainServer(func(identity, username, password string) error {
			// RFC 4616 §2: an authorization identity other than the
			// authentication identity would be acting for someone else.
			if identity != "" && !strings.EqualFold(identity, username) {
				if err := s.authenticate(username, password, true); err != nil {
					return err
				}
				return s.reply("auth-failed")
			}
			return check(username, password)
		}), s.b.Language}, nil
	case "LOGIN":
		return replying{&loginServer{check: check}, s.b.Language}, nil
	}
	return nil, s.reply("auth-mechanism")
}

// replying makes every error of a SASL exchange a reply of the table:
// go-smtp writes any other error as "454 4.7.0" and its text, and
// go-sasl's texts (a malformed PLAIN response) are English protocol
// talk. A malformed response is a syntax error, 501 5.5.2 (RFC 4954 §4).
type replying struct {
	sasl.Server
	l Language
}

func (r replying) Next(response []byte) ([]byte, bool, error) {
	challenge, done, err := r.Server.Next(response)
	var se *smtp.SMTPError
	if err != nil && !errors.As(err, &se) {
		err = r.l.reply("auth-malformed", "")
	}
	return challenge, done, err
}

// authenticate checks a password with the Backend's Guard (auth.go);
// forbid counts a failure whatever the password. It returns the reply
// of a failure, nil on success.
func (s *Session) authenticate(username, password string, forbid bool) error {
	g := s.b.Auth
	ctx, cancel := context.WithTimeout(context.Background(), g.Policy().SlotWait+authVerifyTimeout)
	defer cancel()
	ans := g.Check(ctx, s.clientInfo(), username, password, forbid)
	switch ans.Result {
	case AuthOK:
		// The RFC 5321 timeouts from now on, not the pre-AUTH ones.
		markAuthenticated(s.conn.Conn())
		return nil
	case AuthLocked:
		return lockedReply(s.b.Language, strings.ToLower(username), s.ip, ans)
	case AuthBusy:
		return s.reply("auth-busy")
	case AuthUnavailable:
		return s.reply("auth-unavailable")
	}
	return s.reply("auth-failed")
}

// authVerifyTimeout bounds one verification once it has its slot (a
// Dovecot that stopped answering).
const authVerifyTimeout = 10 * time.Second

// lockedReply says who is locked out and until when. 454 4.7.0, not
// 535 5.7.8: the lockout is temporary and says nothing of the password
// (the right one is refused too), and a 535 makes Thunderbird and Outlook
// ask the user for a new password, who may then "fix" a right one; a
// 454 is shown as a temporary failure and retried later. The reply is
// the same whether the account exists or not (it is about the attempts,
// not the account), so it tells a guesser nothing of which exist.
func lockedReply(l Language, user, ip string, a AuthAnswer) *smtp.SMTPError {
	until := a.Until.UTC().Format("15:04 MST")
	switch {
	case a.AddressLocked:
		return l.reply("auth-locked-address", "", "ip", ip, "until", until)
	case CheckAddress(user) != nil:
		// Not an address: not echoed (it may be a password typed in
		// the wrong field).
		return l.reply("auth-locked-name", "", "ip", ip, "until", until)
	}
	return l.reply("auth-locked", "", "user", user, "ip", ip, "until", until)
}

// clientInfo is what the Guard and its Verifier (Dovecot: rip, lip,
// secured) are told of the connection.
func (s *Session) clientInfo() ClientInfo {
	nc := s.conn.Conn()
	ci := ClientInfo{}
	if a, err := netip.ParseAddrPort(nc.RemoteAddr().String()); err == nil {
		ci.Addr = a
	}
	if a, err := netip.ParseAddrPort(nc.LocalAddr().String()); err == nil {
		ci.Local = a
	}
	_, ci.Secured = s.tlsState()
	return ci
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
		return s.reply("auth-required")
	}
	if !strings.EqualFold(from, s.user) {
		return s.reply("sender-not-own", "user", s.user)
	}
	if sp, ok := s.b.Accounts.Suspended(s.user); ok {
		s.b.logger().Info("submission refused: account suspended", evSuspended, zap.String("ip", s.ip), zap.String("user", s.user))
		return suspendedReply(s.b.Language, sp)
	}
	if opts != nil && opts.Size > 0 && s.b.MaxMessageBytes > 0 && opts.Size > s.b.MaxMessageBytes {
		return s.tooBig()
	}
	s.from = from
	s.utf8 = opts != nil && opts.UTF8
	s.rcpt = nil
	return nil
}

// suspendedReply refuses every MAIL FROM of a suspended account
// (accounts.go): 550 5.7.1 (RFC 3463 §3.8: delivery not authorized),
// permanent until the provider lifts the suspension, with the date and
// the provider's reason. Nothing is certified, so nothing is logged in
// the transaction log: the account's earlier records stay as they are.
func suspendedReply(l Language, sp Suspension) *smtp.SMTPError {
	reason := ""
	if sp.Reason != "" {
		reason = " (" + shorten(asciiLine(sp.Reason), maxArg-3) + ")"
	}
	return l.reply("suspended", "", "address", sp.Address, "since", sp.Since.UTC().Format("2006-01-02"), "reason", reason)
}

// tooBig refuses a message over limits.max_message_bytes (RFC 1870 §6).
func (s *Session) tooBig() *smtp.SMTPError {
	return s.reply("too-big", "max", strconv.FormatInt(s.b.MaxMessageBytes, 10))
}

// Rcpt adds a forward-path.
func (s *Session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if s.user == "" {
		return s.reply("auth-required")
	}
	if s.from == "" {
		return s.reply("mail-first")
	}
	s.rcpt = append(s.rcpt, to)
	return nil
}

// Data reads the message and runs the acceptance transaction; the reply
// carries the PEC identifier, the refusal with its notice, or a
// temporary failure.
func (s *Session) Data(r io.Reader) error {
	if s.user == "" {
		return s.reply("auth-required")
	}
	r = newPacedReader(r, s.conn.Conn(), s.b.CommandTimeout, s.b.DataTimeout, time.Now)
	var msg *body
	var err error
	if s.b.Memory != nil {
		msg, err = s.b.Memory.readBody(r)
	} else {
		msg, err = readAll(r)
	}
	if err != nil {
		if errors.Is(err, errNoSpool) {
			s.b.logger().Error("message not stored while read", evError, zap.String("user", s.user), zap.Error(err))
			return s.reply("no-storage")
		}
		if errors.Is(err, smtp.ErrDataTooLarge) {
			return s.tooBig()
		}
		if errors.Is(err, smtp.ErrTooLongLine) {
			// The message never arrived whole, so no notice can be
			// built; the refusal is permanent so the client does not
			// resend it (lines up to MaxLineLength reach Inspect and get
			// the line-too-long notice).
			return s.reply("line-too-long-smtp", "limit", strconv.Itoa(MaxLineLength))
		}
		// A stalled or endless upload, or a broken connection: nothing
		// was certified.
		return s.reply("data-stalled")
	}
	defer msg.close()
	ctx := context.Background()
	if s.b.TransactionTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.b.TransactionTimeout)
		defer cancel()
	}
	// limits.message_memory: the message is processed once its share of
	// the budget is free (body.go).
	if s.b.Memory != nil {
		release, err := s.b.Memory.reserve(ctx, msg.size)
		if err != nil {
			s.b.logger().Warn("message waited for memory until the transaction timeout", evError, zap.String("user", s.user), zap.Int64("size", msg.size))
			return s.reply("busy-memory")
		}
		defer release()
	}
	raw, err := msg.bytes()
	if err != nil {
		s.b.logger().Error("message not read back", evError, zap.String("user", s.user), zap.Error(err))
		return s.reply("no-storage")
	}
	msg.close()
	sub := &Submission{
		Raw:      raw,
		Envelope: pec.SMTPEnvelope{From: s.from, To: append([]string(nil), s.rcpt...), UTF8: s.utf8},
		User:     s.user,
		ClientIP: remoteIP(s.conn.Conn().RemoteAddr()),
	}
	if st, ok := s.tlsState(); ok {
		sub.TLS = tlsName(st.Version)
	}
	o, err := s.b.Acceptor.Process(ctx, sub)
	s.from, s.rcpt = "", nil
	log := s.b.logger().With(zap.String("user", s.user), zap.String("ip", sub.ClientIP), zap.Int("size", len(sub.Raw)), zap.Int("rcpt", len(sub.Envelope.To)))
	switch {
	case errors.Is(err, ErrInFlight):
		var ife *InFlightError
		if errors.As(err, &ife) && ife.Hold != "" {
			// A hold that lasts is a crashed instance's transaction: its
			// restart (Reconcile) decides; the operator should know.
			log.Warn("retry while its twin is held before its hand-off", evInFlight, zap.String("hold", ife.Hold))
		} else {
			log.Info("retry while its twin is in flight", evInFlight)
		}
		return InternalReply(s.b.Language, err)
	case err != nil:
		// The detail goes to the operator, never to the client.
		log.Error("transaction failed", evError, zap.Error(err))
		return InternalReply(s.b.Language, err)
	case o.Duplicate:
		log.Info("duplicate submission answered with its PEC id", evDuplicate, zap.String("pec_id", o.ID))
		return AcceptedReply(s.b.Language, o)
	case o.Accepted:
		if o.DedupSkipped {
			log.Warn("accepted without deduplication: the store was unavailable", evDedup, zap.String("pec_id", o.ID))
		}
		log.Info("accepted", evAccepted, zap.String("pec_id", o.ID))
		return AcceptedReply(s.b.Language, o)
	default:
		codes := make([]string, len(o.Violations))
		for i, v := range o.Violations {
			codes[i] = v.Code
		}
		log.Info("refused", evRefused, zap.String("pec_id", o.ID), zap.String("notice", o.NoticeID), zap.Strings("violations", codes))
		return RefusedReply(s.b.Language, o)
	}
}

// Reset discards the transaction in progress.
func (s *Session) Reset() { s.from, s.utf8, s.rcpt = "", false, nil }

// Logout ends the session: go-smtp calls it when the connection closes
// and at STARTTLS. The connection's slot is the Listener's, given back
// when the connection closes.
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
