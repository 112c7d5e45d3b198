package main

import (
	"bytes"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/pecgw/pecgw/gateway"
	"github.com/pecgw/pecgw/internal/testtool"
	"github.com/pecgw/pecgw/pec"
)

// fixesDaemon runs pecgw serve with mario, and app@pec.example.it listed
// under submission.bare_lf = "normalize".
func fixesDaemon(t *testing.T) (dir, smtps, caFile string, d *crashServer) {
	t.Helper()
	dir, _, smtps, _, d = replyDaemon(t, map[string]map[string]string{
		"[submission]": {"bare_lf": `"normalize"`, "bare_lf_clients": `["app@pec.example.it"]`},
	})
	if code, out, errOut := runBin(t, "app password\n", "user", "add", "app@pec.example.it", "--config", filepath.Join(dir, "pecgw.toml"), "--password-stdin"); code != 0 {
		t.Fatalf("user add: %d\n%s%s", code, out, errOut)
	}
	return dir, smtps, filepath.Join(dir, "pki", "ca.pem"), d
}

// envelopeOf returns the file in outbound/new/ of the transport envelope
// whose PEC identifier is id.
func envelopeOf(t *testing.T, dir, id string) string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "outbound", "new", "*"))
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(raw, []byte("\r\nMessage-ID: <"+id+">\r\n")) {
			return f
		}
	}
	t.Fatalf("no envelope of %s in outbound/new", id)
	return ""
}

// TestSubmissionFixesOverTheBinary: RFC 6409 §8 over the binary. A
// message without Date is certified, its envelope verifies with openssl
// and its postacert.eml carries the Date of the transaction; a message
// with bare LF line ends is refused with a reply that says what to fix,
// but certified, made CRLF, for the client listed under bare_lf =
// "normalize"; a smuggling attempt from that client is one message.
func TestSubmissionFixesOverTheBinary(t *testing.T) {
	openssl := testtool.Need(t, "openssl")
	xmllint := testtool.Need(t, "xmllint")
	dtd, _ := filepath.Abs(filepath.Join("..", "..", "pec", "testdata", "daticert.dtd"))
	dir, smtps, caFile, _ := fixesDaemon(t)
	tc := clientTLS(t, caFile)
	const mario, pw = "mario@pec.example.it", "correct horse"
	both := []string{"anna@pec.altro.it", "luca@example.com"}

	t.Run("missing Date", func(t *testing.T) {
		c, err := smtp.DialTLS(smtps, tc)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Auth(sasl.NewPlainClient("", mario, pw)); err != nil {
			t.Fatal(err)
		}
		reply, err := sendOne(c, mario, both, replyMessage(70, "-Date"))
		if err != nil {
			t.Fatalf("a message without Date: %v", err)
		}
		id := gateway.ReplyPECID(reply)
		env := readPEC(t, envelopeOf(t, dir, id), caFile, tc.RootCAs, openssl, xmllint, dtd) // openssl cms -verify
		m, err := mail.ReadMessage(bytes.NewReader(env.eml))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := m.Header.Get("Date"), env.hdr.Get("Date"); got == "" || got != want {
			t.Errorf("postacert.eml Date %q, the envelope's (the transaction's instant) %q", got, want)
		}
		if len(m.Header["Date"]) != 1 {
			t.Errorf("postacert.eml has %d Date fields", len(m.Header["Date"]))
		}
	})

	lf := strings.ReplaceAll(replyMessage(71), "\r\n", "\n") + "..riga che inizia con un punto\n"

	t.Run("bare LF refused", func(t *testing.T) {
		rc := loggedIn(t, "", smtps, tc, mario, pw)
		_, a := rc.transaction(t, mario, both, lf)
		checkReply(t, pec.CodeBareLF, a)
		if !strings.Contains(a.text, "il programma che invia deve terminare ogni riga con CRLF") || !strings.Contains(a.text, "the sending program must end every line with CRLF") {
			t.Errorf("the refusal does not say what to fix: %q", a.text)
		}
	})

	t.Run("bare LF normalised for a listed client", func(t *testing.T) {
		rc := loggedIn(t, "", smtps, tc, "app@pec.example.it", "app password")
		msg := strings.ReplaceAll(lf, "mario@pec.example.it", "app@pec.example.it")
		_, a := rc.transaction(t, "app@pec.example.it", both, msg)
		id := checkReply(t, "accepted", a)
		f := envelopeOf(t, dir, id)
		env := readPEC(t, f, caFile, tc.RootCAs, openssl, xmllint, dtd)
		raw, _ := os.ReadFile(f)
		if bytes.Contains(bytes.ReplaceAll(raw, []byte("\r\n"), nil), []byte("\n")) {
			t.Error("a bare LF in the envelope")
		}
		// The client ended its last bare LF line with CRLF.CRLF, as curl
		// does: an empty line more.
		if !bytes.HasSuffix(env.eml, []byte("\r\n\r\nciao\r\n.riga che inizia con un punto\r\n\r\n")) {
			t.Errorf("postacert.eml is not the normalised message:\n%q", env.eml)
		}
	})

	t.Run("smuggling from a listed client", func(t *testing.T) {
		before, _ := filepath.Glob(filepath.Join(dir, "outbound", "new", "*"))
		rc := loggedIn(t, "", smtps, tc, "app@pec.example.it", "app password")
		first := strings.TrimSuffix(strings.ReplaceAll(replyMessage(72), "mario@", "app@"), "\r\n")
		second := "MAIL FROM:<app@pec.example.it>\r\nRCPT TO:<anna@pec.altro.it>\r\nDATA\r\n" + strings.ReplaceAll(replyMessage(73), "mario@", "app@")
		_, a := rc.transaction(t, "app@pec.example.it", both, first+"\n.\n"+second)
		id := checkReply(t, "accepted", a)
		rc.must(t, "NOOP", 250) // no reply of a second transaction queued
		after, _ := filepath.Glob(filepath.Join(dir, "outbound", "new", "*"))
		if len(after) != len(before)+1 {
			t.Errorf("%d envelopes more, want 1", len(after)-len(before))
		}
		raw, _ := os.ReadFile(envelopeOf(t, dir, id))
		if !bytes.Contains(raw, []byte("\r\n.\r\nMAIL FROM:<app@pec.example.it>\r\n")) {
			t.Error("the smuggled transaction is not lines of the one message")
		}
	})
}

// TestCurl: real curl, over the binary. A good message is certified; a
// refusal is curl's "(8) Weird server reply" whatever the reply says
// (curl's smtp_state_postdata_resp makes every code but 250 after DATA
// CURLE_WEIRD_SERVER_REPLY without printing the reply), so the test
// checks the reply curl -v shows: ours, whole, ASCII, one line. curl -T
// sends a file's LF line ends as they are: refused unless --crlf, or the
// user is listed under bare_lf = "normalize".
func TestCurl(t *testing.T) {
	curl := testtool.Need(t, "curl")
	dir, smtps, caFile, _ := fixesDaemon(t)
	file := func(name, content string) string {
		p := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	send := func(user, password, path string, extra ...string) (int, string) {
		args := append([]string{"-sS", "-v", "--url", "smtps://" + smtps, "--cacert", caFile, "--user", user + ":" + password,
			"--mail-from", user, "--mail-rcpt", "anna@pec.altro.it", "--mail-rcpt", "luca@example.com", "-T", path}, extra...)
		cmd := exec.Command(curl, args...)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		} else if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	// The reply to the end of DATA, as curl -v shows it.
	lastReply := func(out string) rawAnswer {
		var a rawAnswer
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "< ") {
				l = strings.TrimSuffix(strings.TrimPrefix(l, "< "), "\r")
				a = rawAnswer{lines: []string{l + "\r\n"}}
				if m := regexp.MustCompile(`^(\d{3}) (\d)\.(\d{1,3})\.(\d{1,3}) (.*)$`).FindStringSubmatch(l); m != nil {
					a.code = atoi(m[1])
					a.enh = smtp.EnhancedCode{atoi(m[2]), atoi(m[3]), atoi(m[4])}
					a.text = m[5]
				}
			}
		}
		return a
	}
	const mario, pw = "mario@pec.example.it", "correct horse"
	good := replyMessage(80)

	code, out := send(mario, pw, file("good.eml", good))
	if code != 0 {
		t.Fatalf("good message: curl exit %d\n%s", code, out)
	}
	id := checkReply(t, "accepted", lastReply(out))
	envelopeOf(t, dir, id)

	code, out = send(mario, pw, file("bcc.eml", replyMessage(81)), "--mail-rcpt", "bob@pec.altro.it")
	if code != 8 || !strings.Contains(out, "curl: (8) Weird server reply") {
		t.Errorf("refusal: curl exit %d, want curl's 8 (Weird server reply)\n%s", code, out)
	}
	a := lastReply(out)
	checkReply(t, pec.CodeHiddenBcc, a)
	if !strings.HasSuffix(a.text, " Messaggio non accettato: destinatario nascosto (Ccn/Bcc) non ammesso nella PEC / Not accepted: hidden Bcc recipients are not allowed in PEC") {
		t.Errorf("curl -v shows %q", a.text)
	}

	lf := file("lf.eml", strings.ReplaceAll(replyMessage(82), "\r\n", "\n"))
	code, out = send(mario, pw, lf)
	checkReply(t, pec.CodeBareLF, lastReply(out))
	if code != 8 {
		t.Errorf("bare LF without --crlf: curl exit %d\n%s", code, out)
	}
	if code, out = send(mario, pw, lf, "--crlf"); code != 0 {
		t.Errorf("the same file with --crlf: curl exit %d\n%s", code, out)
	}
	checkReply(t, "accepted", lastReply(out))
	app := file("app.eml", strings.ReplaceAll(strings.ReplaceAll(replyMessage(83), "\r\n", "\n"), "mario@", "app@"))
	if code, out = send("app@pec.example.it", "app password", app); code != 0 {
		t.Errorf("bare LF from a client listed under normalize: curl exit %d\n%s", code, out)
	}
	checkReply(t, "accepted", lastReply(out))
}

func atoi(s string) int {
	n := 0
	for _, c := range s {
		n = n*10 + int(c-'0')
	}
	return n
}
