package gateway

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/pecgw/pecgw/pec"
)

// rawConn is a client that writes exact bytes, so a test can send what a
// well-behaved library never would.
type rawConn struct {
	c net.Conn
	r *bufio.Reader
}

// rawReply is one SMTP reply, all its lines joined.
type rawReply struct {
	code int
	enh  smtp.EnhancedCode
	text string // text of the lines, without code and enhanced code
	err  error  // the connection failed before a whole reply
}

func (r rawReply) String() string {
	if r.err != nil {
		return "error: " + r.err.Error()
	}
	return strconv.Itoa(r.code) + " " + r.text
}

const rawTimeout = 10 * time.Second

// dialRawTLS connects to the SMTPS listener and reads the greeting.
func dialRawTLS(t *testing.T, ts *testServer) *rawConn {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: rawTimeout}, "tcp", ts.smtps, ts.client)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rc := &rawConn{c: c, r: bufio.NewReader(c)}
	if r := rc.read(); r.code != 220 {
		t.Fatalf("greeting %v", r)
	}
	return rc
}

// dialRawStartTLS connects to the STARTTLS listener and upgrades.
func dialRawStartTLS(t *testing.T, ts *testServer) *rawConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", ts.starttls, rawTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rc := &rawConn{c: c, r: bufio.NewReader(c)}
	if r := rc.read(); r.code != 220 {
		t.Fatalf("greeting %v", r)
	}
	rc.expect(t, "EHLO client.example", 250)
	rc.expect(t, "STARTTLS", 220)
	return rc.upgrade(t, ts)
}

func (rc *rawConn) upgrade(t *testing.T, ts *testServer) *rawConn {
	t.Helper()
	tc := tls.Client(rc.c, ts.client)
	tc.SetDeadline(time.Now().Add(rawTimeout))
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake: %v", err)
	}
	t.Cleanup(func() { tc.Close() })
	return &rawConn{c: tc, r: bufio.NewReader(tc)}
}

// newRawAuthed is a raw client authenticated as mario (AUTH PLAIN with an
// initial response), over SMTPS or STARTTLS.
func newRawAuthed(t *testing.T, ts *testServer, implicit bool) *rawConn {
	t.Helper()
	var rc *rawConn
	if implicit {
		rc = dialRawTLS(t, ts)
	} else {
		rc = dialRawStartTLS(t, ts)
	}
	rc.expect(t, "EHLO client.example", 250)
	if r := rc.authPlain(mario, "s3cret"); r.code != 235 {
		t.Fatalf("AUTH PLAIN: %v", r)
	}
	return rc
}

func (rc *rawConn) write(s string) error {
	rc.c.SetWriteDeadline(time.Now().Add(rawTimeout))
	_, err := io.WriteString(rc.c, s)
	return err
}

// read reads one reply, multi-line or not.
func (rc *rawConn) read() rawReply {
	rc.c.SetReadDeadline(time.Now().Add(rawTimeout))
	var r rawReply
	var texts []string
	for {
		line, err := rc.r.ReadString('\n')
		if err != nil {
			return rawReply{err: err}
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 3 {
			return rawReply{err: errors.New("short reply line " + strconv.Quote(line))}
		}
		code, err := strconv.Atoi(line[:3])
		if err != nil {
			return rawReply{err: errors.New("bad reply line " + strconv.Quote(line))}
		}
		r.code = code
		text := ""
		if len(line) > 4 {
			text = line[4:]
		}
		if f := strings.SplitN(text, " ", 2); len(f) == 2 {
			if p := strings.Split(f[0], "."); len(p) == 3 {
				a, e1 := strconv.Atoi(p[0])
				b, e2 := strconv.Atoi(p[1])
				c, e3 := strconv.Atoi(p[2])
				if e1 == nil && e2 == nil && e3 == nil {
					r.enh = smtp.EnhancedCode{a, b, c}
					text = f[1]
				}
			}
		}
		texts = append(texts, text)
		if len(line) == 3 || line[3] == ' ' {
			r.text = strings.Join(texts, "\n")
			return r
		}
	}
}

// cmd sends one command line and reads its reply.
func (rc *rawConn) cmd(line string) rawReply {
	if err := rc.write(line + "\r\n"); err != nil {
		return rawReply{err: err}
	}
	return rc.read()
}

func (rc *rawConn) expect(t *testing.T, line string, code int) rawReply {
	t.Helper()
	r := rc.cmd(line)
	if r.code != code {
		t.Fatalf("%q: %v, want %d", line, r, code)
	}
	return r
}

func (rc *rawConn) authPlain(user, password string) rawReply {
	return rc.cmd("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+password)))
}

// transaction runs MAIL, RCPT and DATA and writes msg byte for byte,
// followed by the end of data; it returns the reply to the end of data.
func (rc *rawConn) transaction(t *testing.T, from string, rcpt []string, msg string) rawReply {
	t.Helper()
	rc.expect(t, "MAIL FROM:<"+from+">", 250)
	for _, r := range rcpt {
		rc.expect(t, "RCPT TO:<"+r+">", 250)
	}
	rc.expect(t, "DATA", 354)
	end := ".\r\n"
	if !strings.HasSuffix(msg, "\r\n") {
		end = "\r\n.\r\n"
	}
	if err := rc.write(msg + end); err != nil {
		t.Fatal(err)
	}
	return rc.read()
}

// alive checks that the connection still answers, and that no reply to
// some earlier command is still queued: NOOP's own reply comes next.
func (rc *rawConn) alive(t *testing.T) {
	t.Helper()
	if r := rc.cmd("NOOP"); r.code != 250 {
		t.Fatalf("NOOP: %v", r)
	}
}

// serves checks that ts still greets and answers a new connection.
func (ts *testServer) serves(t *testing.T) {
	t.Helper()
	rc := dialRawTLS(t, ts)
	rc.expect(t, "EHLO client.example", 250)
	rc.cmd("QUIT")
}

// TestSmuggling: RFC 5321 §4.1.1.4 ends DATA only at CRLF.CRLF. A body
// with LF.LF, CRLF.LF or LF.CRLF followed by a whole transaction must stay
// one transaction, refused for the bare LF (SMTP smuggling, CVE-2023-51766
// class): one reply, one notice, never a second message.
func TestSmuggling(t *testing.T) {
	body := strings.TrimSuffix(goodMessage, "\r\n")
	smuggled := "MAIL FROM:<mario@pec.example.it>\r\nRCPT TO:<anna@pec.altro.it>\r\nRCPT TO:<luca@example.com>\r\nDATA\r\n" +
		strings.Replace(goodMessage, "<c1@mua>", "<smuggled@mua>", 1)
	for _, sep := range []string{"\n.\n", "\r\n.\n", "\n.\r\n", "\n.\n\r\n.\n\n.\r\n"} {
		t.Run(strconv.Quote(sep), func(t *testing.T) {
			ts := newTestServer(t)
			rc := newRawAuthed(t, ts, true)
			r := rc.transaction(t, mario, []string{"anna@pec.altro.it", "luca@example.com"}, body+sep+smuggled)
			if r.code != 550 || r.enh != (smtp.EnhancedCode{5, 6, 0}) || !strings.Contains(r.text, " ends in a bare LF: the sending program must end every line with CRLF") {
				t.Errorf("reply to the end of data %v", r)
			}
			rc.alive(t)
			assertOneNotice(t, ts.fixture, pec.CodeBareLF)
		})
	}
}

// TestLongCommandLine: a command line far over the limit (RFC 5321
// §4.5.3.1.4: 512 octets) gets an error reply or a close, never a crash,
// and the server goes on serving.
func TestLongCommandLine(t *testing.T) {
	ts := newTestServer(t)
	for _, prefix := range []string{"", "EHLO ", "MAIL FROM:<"} {
		rc := dialRawTLS(t, ts)
		if prefix == "MAIL FROM:<" {
			rc.expect(t, "EHLO client.example", 250)
			if r := rc.authPlain(mario, "s3cret"); r.code != 235 {
				t.Fatal(r)
			}
		}
		// The server may close while we write: the write error is expected.
		_ = rc.write(prefix + strings.Repeat("A", 100<<10))
		r := rc.read()
		switch {
		case r.err == nil && r.code == 250 && prefix == "EHLO ":
			// Finding, not pecgw code: go-smtp answers an EHLO of 100 KB
			// without CRLF with 250, echoing the whole argument, though
			// MaxLineLength is 2000.
			t.Logf("FINDING: %q + 100 KB without CRLF answered 250 (%d octets of reply)", prefix, len(r.text))
		case r.err == nil && r.code/100 != 5:
			t.Errorf("%q + 100 KB: %.200v, want 5xx or a close", prefix, r)
		}
		ts.serves(t)
	}
	assertNothing(t, ts.fixture)
}

// TestLongHeaderLine: a header line over 998 octets (RFC 5322 §2.1.1) is
// a formal defect: refused with a notice, whatever its length.
func TestLongHeaderLine(t *testing.T) {
	for _, n := range []int{999, 1500, 5000, MaxLineLength + 100} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			ts := newTestServer(t)
			rc := newRawAuthed(t, ts, true)
			long := "Subject: " + strings.Repeat("x", n-len("Subject: ")) + "\r\n"
			msg := strings.Replace(goodMessage, "Subject: prova\r\n", long, 1)
			r := rc.transaction(t, mario, []string{"anna@pec.altro.it", "luca@example.com"}, msg)
			if n > MaxLineLength {
				// Over MaxLineLength the reader stops mid-message: no
				// notice can be built, but the refusal must be
				// permanent: a 4xx makes the client retry the same
				// message until its queue gives up.
				if r.err != nil || r.code != 550 || r.enh != (smtp.EnhancedCode{5, 6, 0}) {
					t.Errorf("line of %d octets in DATA: %v, want 550 5.6.0", n, r)
				}
				if len(ts.out.got) != 0 || len(ts.box.got) > 1 {
					t.Errorf("%d envelopes, %d notices", len(ts.out.got), len(ts.box.got))
				}
				return
			}
			if r.code != 550 || r.enh != (smtp.EnhancedCode{5, 6, 0}) || !strings.Contains(r.text, "998") {
				t.Errorf("reply %v", r)
			}
			rc.alive(t)
			assertOneNotice(t, ts.fixture, pec.CodeLineTooLong)
		})
	}
}

// TestNoPipeliningAcrossSTARTTLS: commands sent in clear after STARTTLS
// must be discarded, not run inside the TLS session (RFC 3207 §6,
// CVE-2011-0411 class).
func TestNoPipeliningAcrossSTARTTLS(t *testing.T) {
	ts := newTestServer(t)
	c, err := net.DialTimeout("tcp", ts.starttls, rawTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rc := &rawConn{c: c, r: bufio.NewReader(c)}
	if r := rc.read(); r.code != 220 {
		t.Fatalf("greeting %v", r)
	}
	if err := rc.write("EHLO x\r\nSTARTTLS\r\nAUTH PLAIN " +
		base64.StdEncoding.EncodeToString([]byte("\x00"+mario+"\x00s3cret")) +
		"\r\nMAIL FROM:<mario@pec.example.it>\r\nRCPT TO:<anna@pec.altro.it>\r\n"); err != nil {
		t.Fatal(err)
	}
	if r := rc.read(); r.code != 250 {
		t.Fatalf("EHLO: %v", r)
	}
	if r := rc.read(); r.code != 220 {
		t.Fatalf("STARTTLS: %v", r)
	}
	rc = rc.upgrade(t, ts)
	// The first reply inside TLS is the one to the first command sent
	// inside TLS: nothing of what was injected in clear.
	r := rc.cmd("EHLO y")
	if r.code != 250 || !strings.Contains(r.text, "AUTH") {
		t.Fatalf("first reply after STARTTLS %v: the injected commands ran", r)
	}
	if r := rc.cmd("MAIL FROM:<mario@pec.example.it>"); r.code != 530 {
		t.Errorf("MAIL after STARTTLS: %v, want 530: the AUTH injected in clear counted", r)
	}
	if r := rc.cmd("RCPT TO:<anna@pec.altro.it>"); r.code/100 != 5 {
		t.Errorf("RCPT: %v", r)
	}
	rc.alive(t)
	assertNothing(t, ts.fixture)
}

// TestAuthAfterFailure: a failed AUTH leaves the session unauthenticated
// and lets the client try again (RFC 4954 §4).
func TestAuthAfterFailure(t *testing.T) {
	ts := newTestServer(t)
	rc := dialRawTLS(t, ts)
	rc.expect(t, "EHLO client.example", 250)
	for _, bad := range []string{
		"AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+mario+"\x00wrong")),
		"AUTH PLAIN !!!notbase64",
		"AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("no NULs here")),
		"AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("anna@pec.altro.it\x00"+mario+"\x00s3cret")),
		"AUTH CRAM-MD5",
		"AUTH",
	} {
		if r := rc.cmd(bad); r.code/100 != 4 && r.code/100 != 5 {
			t.Errorf("%q: %v", bad, r)
		}
		if r := rc.cmd("MAIL FROM:<mario@pec.example.it>"); r.code != 530 || r.enh != (smtp.EnhancedCode{5, 7, 0}) {
			t.Errorf("MAIL after %q: %v", bad, r)
		}
	}
	// AUTH PLAIN without initial response, cancelled with "*".
	if r := rc.cmd("AUTH PLAIN"); r.code != 334 {
		t.Fatalf("AUTH PLAIN: %v", r)
	}
	if r := rc.cmd("*"); r.code != 501 {
		t.Errorf("cancelled AUTH: %v", r)
	}
	if r := rc.authPlain(mario, "s3cret"); r.code != 235 {
		t.Fatalf("AUTH after failures: %v", r)
	}
	rc.expect(t, "MAIL FROM:<mario@pec.example.it>", 250)
	rc.expect(t, "RSET", 250)
	assertNothing(t, ts.fixture)
}

// TestStallInData: a client that stops in the middle of DATA and goes
// away leaves nothing behind: no envelope, no notice, no record (the
// message was never complete), and the server goes on serving.
func TestStallInData(t *testing.T) {
	ts := newTestServer(t)
	rc := newRawAuthed(t, ts, true)
	rc.expect(t, "MAIL FROM:<mario@pec.example.it>", 250)
	rc.expect(t, "RCPT TO:<anna@pec.altro.it>", 250)
	rc.expect(t, "RCPT TO:<luca@example.com>", 250)
	rc.expect(t, "DATA", 354)
	if err := rc.write(goodMessage[:len(goodMessage)/2]); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	rc.c.Close()
	ts.serves(t)
	time.Sleep(200 * time.Millisecond) // let the old session end
	assertNothing(t, ts.fixture)
}

// TestGarbageCommands: NULs, 8-bit bytes and nonsense get one error reply
// each and the session goes on.
func TestGarbageCommands(t *testing.T) {
	garbage := []string{
		"\x00\x00\x00",
		"\x00",
		"MAIL\x00FROM:<mario@pec.example.it>",
		"\xff\xfe\xfd garbage",
		"RCPT TO:<\x00>",
		"DATA\x00",
		"HELO",
		"MAIL FROM:",
		"MAIL FROM:<",
		"RCPT TO:<a@b> SIZE=\x00",
		"\r",
		"\t \t",
		"\x1b[2J",
	}
	ts := newTestServer(t)
	for _, authed := range []bool{false, true} {
		for _, g := range garbage {
			// One connection per line: go-smtp closes after a few
			// protocol errors, by design.
			var rc *rawConn
			if authed {
				rc = newRawAuthed(t, ts, true)
			} else {
				rc = dialRawTLS(t, ts)
				rc.expect(t, "EHLO client.example", 250)
			}
			if r := rc.cmd(g); r.code/100 != 5 {
				t.Errorf("authed=%v %q: %v, want 5xx", authed, g, r)
			}
			rc.alive(t)
		}
	}
	rc := newRawAuthed(t, ts, true)
	for _, g := range []string{"MAIL FROM:<mario@pec.example.it\x00>", "MAIL FROM:<\x00mario@pec.example.it>", "MAIL FROM:<mario@pec.example.it> BODY=\x00"} {
		if r := rc.cmd(g); r.code/100 != 5 {
			t.Errorf("%q: %v, want 5xx", g, r)
		}
	}
	rc.alive(t)
	ts.serves(t)
	assertNothing(t, ts.fixture)
}
