package delivery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// LMTPOptions configures an LMTP Target.
type LMTPOptions struct {
	// Address is "host:port" with a loopback host, or "unix:/path/to/socket".
	// LMTP has no TLS here: RFC 2033 §1 meant it for local delivery, and
	// RFC 6109 §5.3 lets PEC messages travel only over protected channels.
	Address   string
	HelloName string        // LHLO name; default: os.Hostname()
	Timeout   time.Duration // for each read and write; 0: DefaultTimeout
}

// Validate reports every problem with the options at once.
func (o LMTPOptions) Validate() error {
	var errs []error
	if path, ok := strings.CutPrefix(o.Address, "unix:"); ok {
		if path == "" {
			errs = append(errs, fmt.Errorf("delivery: lmtp address %q: no socket path", o.Address))
		}
	} else if host, _, err := net.SplitHostPort(o.Address); err != nil {
		errs = append(errs, fmt.Errorf("delivery: lmtp address %q: want host:port or unix:/path: %w", o.Address, err))
	} else if !isLoopbackHost(host) {
		errs = append(errs, fmt.Errorf("delivery: lmtp address %q: LMTP goes in clear, so only to a loopback address or a unix socket (RFC 6109 §5.3)", o.Address))
	}
	if o.Timeout < 0 {
		errs = append(errs, fmt.Errorf("delivery: lmtp timeout %v is negative", o.Timeout))
	}
	return errors.Join(errs...)
}

// LMTP delivers into a local delivery agent's mailboxes over LMTP
// (RFC 2033), such as Dovecot's, one connection per message. Each
// recipient takes the message or not on its own.
type LMTP struct {
	o       LMTPOptions
	network string
	addr    string
	err     error // from Validate
}

// NewLMTP returns an LMTP Target. Invalid options are reported by
// o.Validate and by every Deliver.
func NewLMTP(o LMTPOptions) *LMTP {
	l := &LMTP{o: o, err: o.Validate(), network: "tcp", addr: o.Address}
	if path, ok := strings.CutPrefix(o.Address, "unix:"); ok {
		l.network, l.addr = "unix", path
	}
	if l.o.Timeout == 0 {
		l.o.Timeout = DefaultTimeout
	}
	if l.o.HelloName == "" {
		l.o.HelloName = defaultHelloName()
	}
	return l
}

// Deliver sends m and honours the server's reply for each recipient: nil
// when every recipient answered 250, a *PartialError when some did, an
// error when none did. A recipient refused at RCPT does not stop the
// others (each is a separate delivery for LMTP), and duplicate
// forward-paths are sent once.
func (l *LMTP) Deliver(ctx context.Context, m *Message) error {
	if l.err != nil {
		return l.err
	}
	if err := m.check(); err != nil {
		return err
	}
	prefix := "delivery: lmtp " + l.o.Address
	conn, closeConn, err := dial(ctx, l.network, l.addr, l.o.Timeout)
	if err != nil {
		return failure(ctx, prefix, fmt.Errorf("connect: %w", err))
	}
	defer closeConn()
	if !isLoopbackAddr(conn.RemoteAddr()) {
		return fmt.Errorf("%s: %v is not a loopback address (RFC 6109 §5.3)", prefix, conn.RemoteAddr())
	}
	c := smtp.NewClientLMTP(conn)
	setTimeouts(c, l.o.Timeout)
	rcpts := unique(m.ForwardPaths)
	errs, err := l.transact(c, m, rcpts)
	if err != nil {
		quitAfter(c, err)
		return failure(ctx, prefix, err)
	}
	_ = c.Quit()
	if ctx.Err() != nil {
		// The context ended while reading the replies: the unanswered
		// recipients carry the network error; say why it happened.
		for r, e := range errs {
			errs[r] = fmt.Errorf("%w: %w", context.Cause(ctx), e)
		}
	}
	return outcome(prefix, rcpts, errs)
}

// transact runs the LMTP transaction. It returns the per-recipient
// failures, or an error when the transaction failed as a whole (nothing
// delivered).
func (l *LMTP) transact(c *smtp.Client, m *Message, rcpts []string) (map[string]error, error) {
	// RFC 2033 §4.1: LHLO instead of EHLO; go-smtp's LMTP client says it.
	if err := c.Hello(l.o.HelloName); err != nil {
		return nil, fmt.Errorf("LHLO: %w", err)
	}
	if err := requireExtensions(c, m); err != nil {
		return nil, err
	}
	if err := c.Mail(m.ReversePath, mailOptions(m)); err != nil {
		return nil, fmt.Errorf("MAIL FROM:<%s>: %w", m.ReversePath, err)
	}
	errs := make(map[string]error)
	var accepted []string
	for _, rcpt := range rcpts {
		err := c.Rcpt(rcpt, nil)
		var se *smtp.SMTPError
		switch {
		case err == nil:
			accepted = append(accepted, rcpt)
		case errors.As(err, &se):
			errs[rcpt] = fmt.Errorf("RCPT TO refused: %w", err)
		default:
			return nil, fmt.Errorf("RCPT TO:<%s>: %w", rcpt, err)
		}
	}
	if len(accepted) == 0 {
		// RFC 2033 §4.2: DATA with no accepted recipient is refused anyway.
		_ = c.Reset()
		return errs, nil
	}
	w, err := c.Data()
	if err != nil {
		return nil, fmt.Errorf("DATA: %w", err)
	}
	if _, err := w.Write(m.Data); err != nil {
		return nil, fmt.Errorf("sending the message: %w", err)
	}
	// RFC 2033 §4.2: after the final dot the server answers once for each
	// recipient accepted at RCPT, in RCPT order. go-smtp returns the
	// successes keyed by address, and the refusals as an LMTPDataError
	// (also keyed by address), joined with the network error when the
	// replies stop coming: the recipients with neither have no answer.
	resp, err := w.CloseWithLMTPResponse()
	var refused smtp.LMTPDataError
	errors.As(err, &refused)
	for _, rcpt := range accepted {
		switch {
		case resp[rcpt] != nil:
			// 250: in the server's care.
		case refused[rcpt] != nil:
			errs[rcpt] = fmt.Errorf("refused after DATA: %w", refused[rcpt])
		default:
			errs[rcpt] = fmt.Errorf("no reply after DATA (delivered or not, unknown): %w", err)
		}
	}
	return errs, nil
}
