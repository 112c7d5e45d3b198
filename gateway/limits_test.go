package gateway

import (
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// newLimitedServer is newTestServer with the Backend's limits set by
// configure and go-smtp's per-command timeout set to readTimeout; both
// listeners share the Backend, as in pecgw serve.
func newLimitedServer(t *testing.T, readTimeout time.Duration, configure func(*Backend)) *testServer {
	t.Helper()
	return startTestServer(t, readTimeout, configure)
}

// greetFrom opens an implicit-TLS connection from the loopback address
// local and sends EHLO: the reply error is what the connection limits say.
func (ts *testServer) greetFrom(t *testing.T, local string) (*smtp.Client, error) {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", ts.smtps, ts.client)
	if err != nil {
		t.Fatal(err)
	}
	c := smtp.NewClient(conn)
	t.Cleanup(func() { c.Close() })
	return c, c.Hello("client.example")
}

func wantTooMany(t *testing.T, what string, err error) {
	t.Helper()
	if code, enh, _ := smtpCode(err); code != 421 || enh != (smtp.EnhancedCode{4, 7, 0}) {
		t.Errorf("%s: %d %v (%v), want 421 4.7.0", what, code, enh, err)
	}
}

// eventually retries f until it succeeds or 5 s pass: the server sees a
// closed connection a moment after the client closes it.
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if err = f(); err == nil {
			return
		}
	}
	t.Errorf("%s: %v", what, err)
}

func TestConnectionLimitPerIP(t *testing.T) {
	ts := newLimitedServer(t, 10*time.Second, func(b *Backend) { b.MaxConnectionsPerIP = 1 })
	first, err := ts.greetFrom(t, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	second, err := ts.greetFrom(t, "127.0.0.1")
	wantTooMany(t, "second connection from the same IP", err)
	// 421 closes the connection (RFC 5321 §3.8).
	if err := second.Noop(); err == nil {
		t.Error("connection still open after 421")
	}
	if _, err := ts.greetFrom(t, "127.0.0.2"); err != nil {
		t.Errorf("connection from another IP: %v", err)
	}
	// The slot comes back when the connection ends.
	first.Quit()
	eventually(t, "connection after the first one closed", func() error {
		c, err := ts.greetFrom(t, "127.0.0.1")
		if err == nil {
			c.Quit()
		}
		return err
	})
	// STARTTLS ends the session and the next EHLO starts one: the
	// connection keeps its single slot.
	eventually(t, "STARTTLS with one slot per IP", func() error {
		c, err := smtp.DialStartTLS(ts.starttls, ts.client)
		if err != nil {
			return err
		}
		defer c.Close()
		return c.Auth(sasl.NewPlainClient("", "mario@pec.example.it", "s3cret"))
	})
}

func TestConnectionLimitTotal(t *testing.T) {
	ts := newLimitedServer(t, 10*time.Second, func(b *Backend) { b.MaxConnections = 2 })
	if _, err := ts.greetFrom(t, "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	// The limit is shared by both listeners.
	c := ts.dial(t, false)
	_, err := ts.greetFrom(t, "127.0.0.3")
	wantTooMany(t, "third connection", err)
	c.Quit()
	eventually(t, "connection after one closed", func() error {
		_, err := ts.greetFrom(t, "127.0.0.3")
		return err
	})
}

func wrongAuth(c *smtp.Client) error {
	return c.Auth(sasl.NewPlainClient("", "mario@pec.example.it", "wrong"))
}

func rightAuth(c *smtp.Client) error {
	return c.Auth(sasl.NewPlainClient("", "mario@pec.example.it", "s3cret"))
}

func wantAuthFailed(t *testing.T, what string, err error) {
	t.Helper()
	if code, enh, _ := smtpCode(err); code != 535 || enh != (smtp.EnhancedCode{5, 7, 8}) {
		t.Errorf("%s: %d %v (%v), want 535 5.7.8", what, code, enh, err)
	}
}

func TestAuthDelayGrows(t *testing.T) {
	const delay = 40 * time.Millisecond
	ts := newLimitedServer(t, 10*time.Second, func(b *Backend) {
		b.AuthFailuresBeforeDelay = 1
		b.AuthLockout = time.Minute
		b.AuthDelay = delay
	})
	// A new connection for each attempt: go-smtp's client sends "*" after
	// a failed AUTH, which go-smtp's server counts as a bad command, and
	// it closes the connection after the fourth.
	wantAuthFailed(t, "first failure", wrongAuth(ts.dial(t, true)))
	for i, want := range []time.Duration{delay, 2 * delay, 4 * delay, 8 * delay, 8 * delay} {
		c := ts.dial(t, i%2 == 0)
		start := time.Now()
		wantAuthFailed(t, "failure with delay", wrongAuth(c))
		if got := time.Since(start); got < want {
			t.Errorf("failure %d answered after %v, want at least %v", i+2, got, want)
		}
	}
	// The client may retry; MAIL stays refused until it succeeds.
	c := ts.dial(t, true)
	wantAuthFailed(t, "failure", wrongAuth(c))
	if code, _, _ := smtpCode(c.Mail("mario@pec.example.it", nil)); code != 530 {
		t.Errorf("MAIL after failed AUTH: %d", code)
	}
	if err := rightAuth(c); err != nil {
		t.Errorf("right password after delays: %v", err)
	}
	if err := c.Mail("mario@pec.example.it", nil); err != nil {
		t.Errorf("MAIL after AUTH: %v", err)
	}
}

func TestAuthLockout(t *testing.T) {
	const lockout = time.Second
	ts := newLimitedServer(t, 10*time.Second, func(b *Backend) {
		b.AuthFailuresBeforeDelay = 2
		b.AuthLockoutFailures = 3
		b.AuthLockout = lockout
		b.AuthDelay = time.Millisecond
		b.MinAuthTime = 20 * time.Millisecond
	})
	c := ts.dial(t, true)
	for range 3 {
		wantAuthFailed(t, "wrong password", wrongAuth(c))
	}
	locked := time.Now()
	// Locked out: the right password is refused like a wrong one, on
	// this connection and on a new one from the same IP.
	wantAuthFailed(t, "right password during the lockout", rightAuth(c))
	start := time.Now()
	wantAuthFailed(t, "right password on a new connection during the lockout", rightAuth(ts.dial(t, false)))
	if got := time.Since(start); got < 20*time.Millisecond {
		t.Errorf("refusal during the lockout after %v, want at least the minimum time", got)
	}
	if time.Since(locked) >= lockout {
		t.Skip("too slow to test within the lockout")
	}
	time.Sleep(lockout - time.Since(locked) + 100*time.Millisecond)
	if err := rightAuth(ts.dial(t, true)); err != nil {
		t.Errorf("right password after the lockout: %v", err)
	}
}

func TestAuthSuccessResetsFailures(t *testing.T) {
	ts := newLimitedServer(t, 10*time.Second, func(b *Backend) {
		b.AuthLockoutFailures = 3
		b.AuthLockout = time.Minute
	})
	for range 3 { // without the resets, the third round would be locked out
		c := ts.dial(t, true)
		for range 2 {
			wantAuthFailed(t, "wrong password", wrongAuth(c))
		}
		if err := rightAuth(c); err != nil {
			t.Fatalf("right password after 2 failures: %v", err)
		}
	}
}

func TestAuthMinimumTime(t *testing.T) {
	const minTime = 60 * time.Millisecond
	ts := newLimitedServer(t, 10*time.Second, func(b *Backend) { b.MinAuthTime = minTime })
	for _, tc := range []struct {
		name, user, pw string
		ok             bool
	}{
		{"unknown user", "nobody@pec.example.it", "s3cret", false},
		{"known user, wrong password", "mario@pec.example.it", "wrong", false},
		{"known user, right password", "mario@pec.example.it", "s3cret", true},
		{"LOGIN, unknown user", "nobody@pec.example.it", "x", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ts.dial(t, true)
			var a sasl.Client = sasl.NewPlainClient("", tc.user, tc.pw)
			if strings.HasPrefix(tc.name, "LOGIN") {
				a = sasl.NewLoginClient(tc.user, tc.pw)
			}
			start := time.Now()
			err := c.Auth(a)
			if got := time.Since(start); got < minTime {
				t.Errorf("answered after %v, want at least %v", got, minTime)
			}
			if (err == nil) != tc.ok {
				t.Errorf("AUTH: %v", err)
			}
		})
	}
}

// rawSession is an SMTP client on implicit TLS that writes DATA as the
// test says, byte by byte if need be.
type rawSession struct {
	conn net.Conn
	text *textproto.Conn
}

func (ts *testServer) rawAuthed(t *testing.T) *rawSession {
	t.Helper()
	conn, err := tls.Dial("tcp", ts.smtps, ts.client)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	r := &rawSession{conn: conn, text: textproto.NewConn(conn)}
	r.expect(t, 220)
	auth := base64.StdEncoding.EncodeToString([]byte("\x00mario@pec.example.it\x00s3cret"))
	for _, step := range []struct {
		cmd  string
		code int
	}{
		{"EHLO client.example", 250},
		{"AUTH PLAIN " + auth, 235},
		{"MAIL FROM:<mario@pec.example.it>", 250},
		{"RCPT TO:<anna@pec.altro.it>", 250},
		{"RCPT TO:<luca@example.com>", 250},
		{"DATA", 354},
	} {
		if err := r.text.PrintfLine("%s", step.cmd); err != nil {
			t.Fatal(err)
		}
		r.expect(t, step.code)
	}
	return r
}

func (r *rawSession) expect(t *testing.T, code int) {
	t.Helper()
	r.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, msg, err := r.text.ReadResponse(code); err != nil {
		t.Fatalf("want %d: %v %s", code, err, msg)
	}
}

func (ts *testServer) delivered() int {
	n := 0
	for _, r := range []*recordingTarget{ts.out, ts.box} {
		r.mu.Lock()
		n += len(r.got)
		r.mu.Unlock()
	}
	return n
}

func TestSlowDataAccepted(t *testing.T) {
	const idle = 300 * time.Millisecond
	// go-smtp's per-command timeout alone would cut this upload: it
	// lasts about 4 × idle, with a piece every idle/3.
	ts := newLimitedServer(t, idle, func(b *Backend) {
		b.CommandTimeout = idle
		b.DataTimeout = time.Minute
	})
	r := ts.rawAuthed(t)
	// A big message, so that each piece fills go-smtp's reads.
	msg := goodMessage + strings.Repeat("riga di testo del messaggio, abbastanza lunga\r\n", 1200) + ".\r\n"
	const pieces = 12
	for i := range pieces {
		piece := msg[i*len(msg)/pieces : (i+1)*len(msg)/pieces]
		if _, err := fmt.Fprint(r.conn, piece); err != nil {
			t.Fatalf("piece %d: %v", i, err)
		}
		if i < pieces-1 {
			time.Sleep(idle / 3)
		}
	}
	r.expect(t, 250)
	if ts.delivered() == 0 {
		t.Error("slow message accepted but no envelope handed off")
	}
}

func TestStalledDataCut(t *testing.T) {
	for _, tc := range []struct {
		name        string
		idle, total time.Duration
		pace        time.Duration // between pieces; 0: stop after the first
	}{
		{"stalled", 200 * time.Millisecond, time.Minute, 0},
		{"longer than DataTimeout", 300 * time.Millisecond, 500 * time.Millisecond, 100 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := newLimitedServer(t, 10*time.Second, func(b *Backend) {
				b.CommandTimeout = tc.idle
				b.DataTimeout = tc.total
			})
			r := ts.rawAuthed(t)
			fmt.Fprint(r.conn, goodMessage[:40])
			done := make(chan struct{})
			defer close(done)
			if tc.pace > 0 { // live, but for longer than DataTimeout
				go func() {
					for {
						select {
						case <-done:
							return
						case <-time.After(tc.pace):
						}
						if _, err := fmt.Fprint(r.conn, "X-Padding: still here\r\n"); err != nil {
							return
						}
					}
				}()
			}
			r.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			code, _, err := r.text.ReadResponse(0)
			var protoErr textproto.ProtocolError
			if code != 451 && (err == nil || errors.As(err, &protoErr) || isTimeout(err)) {
				t.Errorf("stalled DATA: %d %v, want 451 or a closed connection", code, err)
			}
			if ts.delivered() != 0 {
				t.Error("stalled DATA handed off a message")
			}
			if recs := ts.records(t); len(recs) != 0 {
				t.Errorf("stalled DATA logged %d records", len(recs))
			}
		})
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestAuthRecordsBounded(t *testing.T) {
	now := time.Date(2026, 11, 23, 9, 30, 0, 0, time.UTC)
	l := newLimiter(func() time.Time { return now })
	p := authPolicy{lockAfter: 3, window: time.Minute}
	for i := range maxAuthRecords + 100 {
		l.authFailed(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), p)
	}
	if n := len(l.auth); n > maxAuthRecords {
		t.Errorf("%d records kept, want at most %d", n, maxAuthRecords)
	}
	now = now.Add(2 * time.Minute)
	if locked, _ := l.authState("192.0.2.1", p); locked {
		t.Error("unknown IP locked")
	}
	if n := len(l.auth); n != 0 {
		t.Errorf("%d expired records kept", n)
	}
}
