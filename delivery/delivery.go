// Package delivery hands finished PEC messages on, durably or not at all:
// to the next hop over SMTP or LMTP, or into a local maildir, the embedded
// default. It keeps no queue and never retries: a failure goes back to the
// acceptance transaction, which answers the submitting client.
package delivery

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Message is a finished, signed PEC message and the SMTP envelope to hand
// it off with.
type Message struct {
	ReversePath  string   // MAIL FROM, may be "" for <>
	ForwardPaths []string // RCPT TO, at least one
	Data         []byte   // the message, CRLF line ends
	UTF8         bool     // needs SMTPUTF8 (non-ASCII addresses or headers)
	EightBit     bool     // needs 8BITMIME
}

// ErrOutcomeUnknown is wrapped by a hand-off error when the next hop may
// have taken the message: the whole message and its final dot were sent,
// and the connection failed or timed out before the reply (RFC 1047). The
// caller must not treat it as "not delivered": a new attempt could make a
// second copy.
var ErrOutcomeUnknown = errors.New("outcome unknown: the next hop did not answer the end of DATA")

// Target hands messages off. It is the contract the acceptance transaction
// relies on for "no 250 before a durable hand-off".
//
// Deliver returns nil only when the message is durably in the next hop's
// care: the next hop answered 250 to the end of DATA (SMTP; RFC 5321 §6.1:
// with that reply it takes responsibility for the message) or 250 for every
// recipient (LMTP, RFC 2033 §4.2), or the maildir file is written, fsync'd,
// moved into new/ and its folder fsync'd.
//
// On error nothing may be assumed delivered except what a *PartialError
// lists in Delivered. An error does not prove that nothing was delivered:
// when the connection breaks after the end of DATA, the next hop may have
// the message (RFC 1047); the caller treats it as not delivered, and a
// retry may then produce a duplicate, never a loss. Errors that carry a
// next hop's reply wrap *smtp.SMTPError (github.com/emersion/go-smtp), so
// the caller can tell temporary (4xx) from permanent (5xx) refusals.
type Target interface {
	Deliver(ctx context.Context, m *Message) error
}

// PartialError reports a hand-off that some recipients took and others did
// not: LMTP, where the server answers per recipient (RFC 2033 §4.2), and
// local mailboxes, written one by one. The message is durably delivered to
// Delivered, and not to Failed (each with its reason in Errs).
type PartialError struct {
	Delivered, Failed []string
	Errs              map[string]error

	where string // the target, for Error
}

func (e *PartialError) Error() string {
	var b strings.Builder
	where := e.where
	if where == "" {
		where = "delivery"
	}
	fmt.Fprintf(&b, "%s: delivered to %d of %d recipients", where, len(e.Delivered), len(e.Delivered)+len(e.Failed))
	for _, rcpt := range e.Failed {
		fmt.Fprintf(&b, "; not to <%s>: %v", rcpt, e.Errs[rcpt])
	}
	return b.String()
}

// Unwrap returns the per-recipient errors in the order of Failed, so that
// errors.As finds the next hop's *smtp.SMTPError.
func (e *PartialError) Unwrap() []error {
	errs := make([]error, 0, len(e.Failed))
	for _, rcpt := range e.Failed {
		if err := e.Errs[rcpt]; err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// outcome turns per-recipient results into Deliver's result: nil when all
// took the message, a *PartialError when some did, and an error joining
// every reason when none did. rcpts gives the order.
func outcome(prefix string, rcpts []string, errs map[string]error) error {
	if len(errs) == 0 {
		return nil
	}
	pe := &PartialError{Errs: errs, where: prefix}
	var all []error
	for _, r := range rcpts {
		if err, failed := errs[r]; failed {
			pe.Failed = append(pe.Failed, r)
			all = append(all, fmt.Errorf("<%s>: %w", r, err))
		} else {
			pe.Delivered = append(pe.Delivered, r)
		}
	}
	if len(pe.Delivered) > 0 {
		return pe
	}
	return fmt.Errorf("%s: no recipient took the message: %w", prefix, errors.Join(all...))
}

// check refuses envelopes that no next hop could take, and paths that
// would inject lines into a command or a maildir header.
func (m *Message) check() error {
	if m == nil {
		return errors.New("delivery: nil message")
	}
	if len(m.ForwardPaths) == 0 {
		// RFC 5321 §3.3: a mail transaction needs at least one RCPT.
		return errors.New("delivery: no forward-path")
	}
	if err := checkPath(m.ReversePath); err != nil {
		return fmt.Errorf("delivery: reverse-path %q: %w", m.ReversePath, err)
	}
	for _, p := range m.ForwardPaths {
		if p == "" {
			return errors.New("delivery: empty forward-path")
		}
		if err := checkPath(p); err != nil {
			return fmt.Errorf("delivery: forward-path %q: %w", p, err)
		}
	}
	return nil
}

func checkPath(p string) error {
	if strings.ContainsAny(p, "\r\n\x00<>") {
		return errors.New("contains CR, LF, NUL or angle brackets")
	}
	return nil
}

// unique returns ss without repeats, in order.
func unique(ss []string) []string {
	seen := make(map[string]bool, len(ss))
	out := make([]string, 0, len(ss))
	for _, s := range ss {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
