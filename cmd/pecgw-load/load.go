package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// The values of Config.Mode, Config.TLS and Config.Auth.
const (
	ModeConnPerMessage = "conn-per-message" // dial, TLS, EHLO, AUTH, one message, QUIT
	ModeReuse          = "reuse"            // one session per client, RSET between messages

	TLSImplicit = "implicit" // RFC 8314 §3.3 (SMTPS)
	TLSStartTLS = "starttls" // RFC 3207

	AuthPlain = "plain"
	AuthLogin = "login"
)

// Config is one load run: what pecgw-load run takes on its command line.
type Config struct {
	Addr      string      // host:port of the submission server
	TLS       string      // TLSImplicit or TLSStartTLS
	TLSConfig *tls.Config // the client's TLS settings (roots, server name)
	Auth      string      // AuthPlain (default) or AuthLogin
	User      string      // AUTH user, also MAIL FROM and From:
	Password  string
	Rcpt      string // RCPT TO and To:; the user when empty
	Clients   int    // concurrent senders
	// Exactly one of Duration and Messages: run for Duration (no new
	// message starts after it, those in flight finish), or make exactly
	// Messages attempts in all.
	Duration time.Duration
	Messages int
	Mode     string        // ModeConnPerMessage (default) or ModeReuse
	Size     int           // octets of each message, headers included (about: the numbers in the Message-ID vary it by a few)
	Timeout  time.Duration // bound of a session's set-up, and of each message (60s when 0)
	// RunID goes into every Message-ID so that no two runs, and no two
	// rounds of a comparison, send the same one (pecgw answers a repeated
	// Message-ID as a duplicate); random when empty.
	RunID string
}

// validate reports the first thing wrong with c, naming its flag.
func (c *Config) validate() error {
	switch {
	case c.Addr == "":
		return usagef("--addr is required")
	case !validHostPort(c.Addr):
		return usagef("--addr must be HOST:PORT, got %q", c.Addr)
	case c.TLS != TLSImplicit && c.TLS != TLSStartTLS:
		return usagef("--tls must be %s or %s, got %q", TLSImplicit, TLSStartTLS, c.TLS)
	case c.Auth != "" && c.Auth != AuthPlain && c.Auth != AuthLogin:
		return usagef("--auth must be %s or %s, got %q", AuthPlain, AuthLogin, c.Auth)
	case c.User == "":
		return usagef("--user is required")
	case strings.ContainsAny(c.User, "\r\n<> "):
		return usagef("--user must be a mail address, got %q", c.User)
	case strings.ContainsAny(c.Rcpt, "\r\n<> "):
		return usagef("--rcpt must be a mail address, got %q", c.Rcpt)
	case c.Clients < 1 || c.Clients > 10000:
		return usagef("--clients must be between 1 and 10000, got %d", c.Clients)
	case c.Duration > 0 && c.Messages > 0:
		return usagef("--duration and --messages exclude each other")
	case c.Duration < 0:
		return usagef("--duration must be positive, got %v", c.Duration)
	case c.Messages < 0:
		return usagef("--messages must be positive, got %d", c.Messages)
	case c.Duration == 0 && c.Messages == 0:
		return usagef("one of --duration and --messages is needed")
	case c.Mode != "" && c.Mode != ModeConnPerMessage && c.Mode != ModeReuse:
		return usagef("--mode must be %s or %s, got %q", ModeConnPerMessage, ModeReuse, c.Mode)
	case c.Size < 0 || c.Size > maxSize:
		return usagef("--size must be between 0 and %d octets, got %d", maxSize, c.Size)
	case c.Timeout < 0:
		return usagef("--timeout must be positive, got %v", c.Timeout)
	}
	return nil
}

// maxSize bounds --size (the message is built in memory per client): the
// default limits.max_message_bytes of pecgw, so that its largest message
// can be measured.
const maxSize = 100_000_000

func validHostPort(s string) bool {
	_, port, err := net.SplitHostPort(s)
	return err == nil && port != ""
}

// Result is what one run measured.
type Result struct {
	Addr     string `json:"addr"`
	TLS      string `json:"tls"`
	Mode     string `json:"mode"`
	Clients  int    `json:"clients"`
	Size     int    `json:"size"`
	Attempts int    `json:"attempts"` // sent + failed; attempts cut short by an interrupt are not counted
	Sent     int    `json:"sent"`     // messages whose DATA got 250
	Failed   int    `json:"errors"`   // attempts that failed, counted in Errors by reply
	// Errors counts failed attempts by SMTP reply code and enhanced code
	// ("535 5.7.8"), or by kind when there was no reply ("connect",
	// "tls", "timeout", "connection closed", "other").
	Errors        map[string]int    `json:"errors_by_code"`
	ErrorExamples map[string]string `json:"error_examples,omitempty"` // the first error of each key, with its phase
	Elapsed       time.Duration     `json:"-"`
	ElapsedS      float64           `json:"elapsed_s"`
	Rate          float64           `json:"messages_per_s"` // Sent / Elapsed
	// Setup: dial, TLS handshake (STARTTLS included) and EHLO, per session.
	// Auth: from the AUTH command to its 235 reply, per session.
	// Message: conn-per-message, dial to the reply to QUIT (the whole
	// session); reuse, RSET to the reply to the end of DATA.
	Setup       Latency `json:"setup"`
	Auth        Latency `json:"auth"`
	Message     Latency `json:"message"`
	Interrupted bool    `json:"interrupted"`

	setupSamples, authSamples, messageSamples []time.Duration
}

// Run sends the load described by cfg and returns what it measured. Only
// a bad cfg is an error: failed submissions are counted in the result.
// When ctx ends, no new message starts, the sessions open are closed and
// the result (Interrupted) holds what was measured so far.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Mode == "" {
		cfg.Mode = ModeConnPerMessage
	}
	if cfg.Auth == "" {
		cfg.Auth = AuthPlain
	}
	if cfg.Rcpt == "" {
		cfg.Rcpt = cfg.User
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 60 * time.Second
	}
	if cfg.RunID == "" {
		cfg.RunID = newRunID()
	}
	tc := &tls.Config{}
	if cfg.TLSConfig != nil {
		tc = cfg.TLSConfig.Clone()
	}
	if tc.ServerName == "" && !tc.InsecureSkipVerify {
		tc.ServerName, _, _ = net.SplitHostPort(cfg.Addr)
	}
	cfg.TLSConfig = tc

	st := &runState{cfg: &cfg, body: padding(cfg.Size, headerEstimate(&cfg))}
	st.start = time.Now()
	if cfg.Duration > 0 {
		st.deadline = st.start.Add(cfg.Duration)
	}
	workers := make([]*worker, cfg.Clients)
	var wg sync.WaitGroup
	for i := range workers {
		w := &worker{st: st, id: i, errs: map[string]int{}, examples: map[string]string{}}
		workers[i] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			if cfg.Mode == ModeReuse {
				w.runReuse(ctx)
			} else {
				w.runConnPerMessage(ctx)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(st.start)

	r := &Result{
		Addr: cfg.Addr, TLS: cfg.TLS, Mode: cfg.Mode, Clients: cfg.Clients, Size: cfg.Size,
		Errors: map[string]int{}, ErrorExamples: map[string]string{},
		Elapsed: elapsed, ElapsedS: elapsed.Seconds(), Interrupted: st.interrupted.Load(),
	}
	for _, w := range workers {
		r.Sent += w.sent
		for k, n := range w.errs {
			r.Errors[k] += n
			r.Failed += n
			if _, ok := r.ErrorExamples[k]; !ok {
				r.ErrorExamples[k] = w.examples[k]
			}
		}
		r.setupSamples = append(r.setupSamples, w.setup...)
		r.authSamples = append(r.authSamples, w.auth...)
		r.messageSamples = append(r.messageSamples, w.msg...)
	}
	r.Attempts = r.Sent + r.Failed
	if elapsed > 0 {
		r.Rate = float64(r.Sent) / elapsed.Seconds()
	}
	r.Setup = summarize(r.setupSamples)
	r.Auth = summarize(r.authSamples)
	r.Message = summarize(r.messageSamples)
	return r, nil
}

func newRunID() string {
	var b [6]byte
	rand.Read(b[:])
	return time.Now().UTC().Format("20060102T150405") + "-" + hex.EncodeToString(b[:])
}

// runState is shared by the workers of one run.
type runState struct {
	cfg         *Config
	body        string // the padding after the headers, the same for every message
	start       time.Time
	deadline    time.Time // zero with Messages
	claimed     atomic.Int64
	interrupted atomic.Bool
}

// next claims the next message: false once the run is over.
func (st *runState) next(ctx context.Context) bool {
	if ctx.Err() != nil {
		st.interrupted.Store(true)
		return false
	}
	if st.cfg.Messages > 0 {
		return st.claimed.Add(1) <= int64(st.cfg.Messages)
	}
	return time.Now().Before(st.deadline)
}

// worker is one concurrent sender; only its goroutine touches it until
// the run ends.
type worker struct {
	st               *runState
	id               int
	seq              int
	sent             int
	errs             map[string]int
	examples         map[string]string
	setup, auth, msg []time.Duration
}

// errorPause is the wait after a failed attempt, so that a server that
// refuses connections is not hammered in a tight loop.
const errorPause = 20 * time.Millisecond

func (w *worker) runConnPerMessage(ctx context.Context) {
	for w.st.next(ctx) {
		t0 := time.Now()
		s, err := w.open(ctx)
		if err == nil {
			s.arm(w.st.cfg.Timeout)
			err = w.send(s, false)
		}
		if err == nil {
			s.quit()
		}
		if s != nil {
			s.close()
		}
		if !w.done(ctx, s, err, t0) {
			return
		}
	}
}

func (w *worker) runReuse(ctx context.Context) {
	var s *session
	defer func() {
		if s != nil {
			s.quit()
			s.close()
		}
	}()
	for w.st.next(ctx) {
		reset := true
		var err error
		if s == nil {
			reset = false
			s, err = w.open(ctx)
		}
		t0 := time.Now()
		if err == nil {
			s.arm(w.st.cfg.Timeout)
			err = w.send(s, reset)
		}
		if err != nil && s != nil {
			// The session may be in any state: start a new one.
			s.close()
		}
		ok := w.done(ctx, s, err, t0)
		if err != nil {
			s = nil
		}
		if !ok {
			return
		}
	}
}

// done records the outcome of one attempt begun at t0; false when the
// worker must stop (interrupted).
func (w *worker) done(ctx context.Context, s *session, err error, t0 time.Time) bool {
	if err == nil {
		w.sent++
		w.msg = append(w.msg, time.Since(t0))
		return true
	}
	if ctx.Err() != nil || (s != nil && s.interrupted.Load()) {
		// Cut short by the interrupt: neither sent nor failed.
		w.st.interrupted.Store(true)
		return false
	}
	timedOut := s != nil && s.expired.Load()
	key := classify(err, timedOut)
	w.errs[key]++
	if _, ok := w.examples[key]; !ok {
		msg := err.Error()
		if timedOut {
			msg += fmt.Sprintf(" (no answer within --timeout %v)", w.st.cfg.Timeout)
		}
		w.examples[key] = oneLine(msg)
	}
	t := time.NewTimer(errorPause)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
	return true
}

// session is one SMTP connection of a worker.
type session struct {
	c           *smtp.Client
	raw         net.Conn
	watchdog    *time.Timer
	stopCtx     func() bool
	expired     atomic.Bool // the watchdog closed the connection
	interrupted atomic.Bool // the run's context did
}

// arm gives the session d to finish what it does next.
func (s *session) arm(d time.Duration) { s.watchdog.Reset(d) }

func (s *session) quit() {
	s.arm(5 * time.Second)
	s.c.Quit()
}

func (s *session) close() {
	s.watchdog.Stop()
	s.stopCtx()
	if s.c != nil {
		s.c.Close()
	}
	s.raw.Close()
}

// open dials and sets up an authenticated session: TCP, TLS (implicit or
// STARTTLS), EHLO, AUTH. The session is returned, closed, with the error
// when one was created.
func (w *worker) open(ctx context.Context) (*session, error) {
	cfg := w.st.cfg
	t0 := time.Now()
	d := net.Dialer{Timeout: cfg.Timeout}
	raw, err := d.DialContext(ctx, "tcp", cfg.Addr)
	if err != nil {
		return nil, &phaseError{"connect", err}
	}
	s := &session{raw: raw}
	s.watchdog = time.AfterFunc(cfg.Timeout, func() {
		s.expired.Store(true)
		raw.Close()
	})
	s.stopCtx = context.AfterFunc(ctx, func() {
		s.interrupted.Store(true)
		raw.Close()
	})
	fail := func(phase string, err error) (*session, error) {
		s.close()
		return s, &phaseError{phase, err}
	}
	if cfg.TLS == TLSImplicit {
		tc := tls.Client(raw, cfg.TLSConfig)
		if err := tc.Handshake(); err != nil {
			return fail("tls", err)
		}
		s.c = smtp.NewClient(tc)
	} else {
		// Greeting, EHLO, STARTTLS; the handshake comes with the next
		// command, the EHLO below.
		if s.c, err = smtp.NewClientStartTLS(raw, cfg.TLSConfig); err != nil {
			return fail("starttls", err)
		}
	}
	s.c.CommandTimeout, s.c.SubmissionTimeout = cfg.Timeout, cfg.Timeout
	if err := s.c.Hello("pecgw-load.localhost"); err != nil {
		return fail("ehlo", err)
	}
	if ok, _ := s.c.Extension("AUTH"); !ok {
		// Extension hides the EHLO's error: NOOP repeats it, or shows
		// that the server answered EHLO without offering AUTH.
		if err := s.c.Noop(); err != nil {
			return fail("ehlo", err)
		}
		return fail("ehlo", errNoAuth)
	}
	w.setup = append(w.setup, time.Since(t0))
	var a sasl.Client
	if cfg.Auth == AuthLogin {
		a = sasl.NewLoginClient(cfg.User, cfg.Password)
	} else {
		a = sasl.NewPlainClient("", cfg.User, cfg.Password)
	}
	t1 := time.Now()
	if err := s.c.Auth(a); err != nil {
		return fail("auth", err)
	}
	w.auth = append(w.auth, time.Since(t1))
	return s, nil
}

var errNoAuth = errors.New("the server does not offer AUTH after EHLO")

// send submits one message on s (after RSET when reset).
func (w *worker) send(s *session, reset bool) error {
	cfg := w.st.cfg
	if reset {
		if err := s.c.Reset(); err != nil {
			return &phaseError{"rset", err}
		}
	}
	msg := w.message()
	if err := s.c.Mail(cfg.User, nil); err != nil {
		return &phaseError{"mail", err}
	}
	if err := s.c.Rcpt(cfg.Rcpt, nil); err != nil {
		return &phaseError{"rcpt", err}
	}
	wc, err := s.c.Data()
	if err != nil {
		return &phaseError{"data", err}
	}
	if _, err := io.WriteString(wc, msg); err != nil {
		wc.Close()
		return &phaseError{"data", err}
	}
	if err := wc.Close(); err != nil {
		return &phaseError{"end of data", err}
	}
	return nil
}

// message is the next message of the worker: what crash_test.go sends
// (Date, From = the authenticated user, To, Subject, Message-ID), with a
// Message-ID no other message of any run has, padded to cfg.Size.
func (w *worker) message() string {
	cfg := w.st.cfg
	w.seq++
	id := fmt.Sprintf("<load-%s-%d-%d@pecgw-load.localhost>", cfg.RunID, w.id, w.seq)
	return headers(cfg, id, time.Now()) + w.st.body
}

func headers(cfg *Config, msgID string, now time.Time) string {
	return "Date: " + now.Format(time.RFC1123Z) + "\r\n" +
		"From: " + cfg.User + "\r\n" +
		"To: " + cfg.Rcpt + "\r\n" +
		"Subject: pecgw-load " + msgID + "\r\n" +
		"Message-ID: " + msgID + "\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=us-ascii\r\n" +
		"\r\n"
}

// headerEstimate is the length of a message's headers in this run (the
// worker and sequence numbers change it by a few octets).
func headerEstimate(cfg *Config) int {
	id := fmt.Sprintf("<load-%s-%d-%d@pecgw-load.localhost>", cfg.RunID, 0, 1)
	return len(headers(cfg, id, time.Now()))
}

// padding is a body of lines of 76 characters that brings a message
// with headers of hdr octets to about size octets (at least one line).
func padding(size, hdr int) string {
	const line = "pecgw-load padding abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123"
	var b strings.Builder
	left := size - hdr
	b.WriteString("pecgw-load test message\r\n")
	left -= len("pecgw-load test message\r\n")
	for left >= len(line)+2 {
		b.WriteString(line)
		b.WriteString("\r\n")
		left -= len(line) + 2
	}
	if left > 2 {
		b.WriteString(line[:left-2])
		b.WriteString("\r\n")
	}
	return b.String()
}

// phaseError is an error with the step of the session it happened in.
type phaseError struct {
	phase string
	err   error
}

func (e *phaseError) Error() string { return e.phase + ": " + e.err.Error() }
func (e *phaseError) Unwrap() error { return e.err }

// classify is the key an error is counted under: the reply code and
// enhanced code ("535 5.7.8"; "451" without one), else the kind of
// failure.
func classify(err error, timedOut bool) string {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		ec := se.EnhancedCode
		if ec == smtp.EnhancedCodeNotSet || ec == smtp.NoEnhancedCode {
			return fmt.Sprintf("%d", se.Code)
		}
		return fmt.Sprintf("%d %d.%d.%d", se.Code, ec[0], ec[1], ec[2])
	}
	var ne net.Error
	var oe *net.OpError
	var pe *phaseError
	var (
		rhe tls.RecordHeaderError
		ae  tls.AlertError
		cve *tls.CertificateVerificationError
	)
	switch {
	case timedOut || (errors.As(err, &ne) && ne.Timeout()):
		return "timeout"
	case errors.As(err, &oe) && oe.Op == "dial":
		return "connect"
	case errors.As(err, &cve) || errors.As(err, &rhe) || errors.As(err, &ae) ||
		(errors.As(err, &pe) && pe.phase == "tls"):
		return "tls"
	case errors.Is(err, errNoAuth):
		return "no AUTH"
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "broken pipe"):
		return "connection closed"
	}
	return "other"
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\r", " ")
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}
