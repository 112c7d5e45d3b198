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
)

// newLimitedServer is newTestServer with the Backend's limits set by
// configure and go-smtp's per-command timeout set to readTimeout; both
// listeners share the Backend, as in pecgw serve.
func newLimitedServer(t *testing.T, readTimeout time.Duration, configure func(*Backend)) *testServer {
	t.Helper()
	return startTestServer(t, readTimeout, configure)
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
