package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/pecgw/pecgw/gateway"
	"github.com/pecgw/pecgw/internal/testtool"
	"github.com/pecgw/pecgw/pec"
	"github.com/pecgw/pecgw/signer"
)

// rawClient is an SMTP client that writes exact bytes and keeps every
// line of every reply as it came, so a test can check each of them.
type rawClient struct {
	c net.Conn
	r *bufio.Reader
}

// rawAnswer is one reply: its code, its enhanced code and text (of the
// last line), and every line as received, CRLF included.
type rawAnswer struct {
	code  int
	enh   smtp.EnhancedCode
	text  string
	lines []string
	err   error
}

func (a rawAnswer) String() string {
	if a.err != nil {
		return "error: " + a.err.Error()
	}
	return strings.TrimSpace(strings.Join(a.lines, ""))
}

const rawWait = 20 * time.Second

// dialRaw connects from the loopback address local ("" any) to addr,
// over TLS when tc is not nil, and reads the greeting.
func dialRaw(t *testing.T, local, addr string, tc *tls.Config) (*rawClient, rawAnswer) {
	t.Helper()
	d := &net.Dialer{Timeout: rawWait}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	var c net.Conn
	var err error
	if tc != nil {
		c, err = tls.DialWithDialer(d, "tcp", addr, tc)
	} else {
		c, err = d.Dial("tcp", addr)
	}
	if err != nil {
		t.Fatalf("connect to %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	rc := &rawClient{c: c, r: bufio.NewReader(c)}
	return rc, rc.read()
}

func (rc *rawClient) read() rawAnswer {
	rc.c.SetReadDeadline(time.Now().Add(rawWait))
	var a rawAnswer
	for {
		line, err := rc.r.ReadString('\n')
		if err != nil {
			a.err = err
			return a
		}
		a.lines = append(a.lines, line)
		l := strings.TrimRight(line, "\r\n")
		if len(l) < 3 {
			a.err = fmt.Errorf("short reply line %q", l)
			return a
		}
		if a.code, err = strconv.Atoi(l[:3]); err != nil {
			a.err = fmt.Errorf("bad reply line %q", l)
			return a
		}
		a.text = ""
		if len(l) > 4 {
			a.text = l[4:]
		}
		if f := strings.SplitN(a.text, " ", 2); len(f) == 2 {
			var e smtp.EnhancedCode
			if n, _ := fmt.Sscanf(f[0], "%d.%d.%d", &e[0], &e[1], &e[2]); n == 3 {
				a.enh, a.text = e, f[1]
			}
		}
		if len(l) == 3 || l[3] == ' ' {
			return a
		}
	}
}

func (rc *rawClient) send(s string) rawAnswer {
	rc.c.SetWriteDeadline(time.Now().Add(rawWait))
	if _, err := rc.c.Write([]byte(s)); err != nil {
		return rawAnswer{err: err}
	}
	return rc.read()
}

func (rc *rawClient) cmd(line string) rawAnswer { return rc.send(line + "\r\n") }

func (rc *rawClient) must(t *testing.T, line string, code int) rawAnswer {
	t.Helper()
	a := rc.cmd(line)
	if a.code != code {
		t.Fatalf("%q: %v, want %d", line, a, code)
	}
	return a
}

func authPlainLine(user, password string) string {
	return "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+password))
}

// loggedIn is a raw client over implicit TLS from local, logged in.
func loggedIn(t *testing.T, local, smtps string, tc *tls.Config, user, password string) *rawClient {
	t.Helper()
	rc, g := dialRaw(t, local, smtps, tc)
	if g.code != 220 {
		t.Fatalf("greeting %v", g)
	}
	rc.must(t, "EHLO client.example", 250)
	rc.must(t, authPlainLine(user, password), 235)
	return rc
}

// transaction runs MAIL, RCPT and DATA with msg byte for byte, and
// returns the replies to the RCPTs and to the end of data.
func (rc *rawClient) transaction(t *testing.T, from string, rcpts []string, msg string) ([]rawAnswer, rawAnswer) {
	t.Helper()
	rc.must(t, "MAIL FROM:<"+from+">", 250)
	var rs []rawAnswer
	for _, r := range rcpts {
		rs = append(rs, rc.cmd("RCPT TO:<"+r+">"))
	}
	rc.must(t, "DATA", 354)
	end := ".\r\n"
	if msg != "" && !strings.HasSuffix(msg, "\r\n") {
		end = "\r\n.\r\n"
	}
	return rs, rc.send(msg + end)
}

// checkReply: the reply a is the one docs/replies.md lists under key, in
// Italian then English: its codes, its text, every line ASCII and at
// most 512 octets with its CRLF (RFC 5321 §4.5.3.1.5), and, for the
// replies that carry one, the PEC identifier first and whole. It returns
// that identifier.
func checkReply(t *testing.T, key string, a rawAnswer) string {
	t.Helper()
	return checkReplyIn(t, key, gateway.ItalianAndEnglish, a)
}

// checkReplyIn is checkReply for the reply language l.
func checkReplyIn(t *testing.T, key string, l gateway.Language, a rawAnswer) string {
	t.Helper()
	if a.err != nil {
		t.Errorf("%s: no reply: %v", key, a.err)
		return ""
	}
	checkLines(t, key, a)
	code, enh, re, ok := gateway.ReplyPattern(key, l)
	if !ok {
		t.Fatalf("no reply %q in the table", key)
	}
	if a.code != code || a.enh != enh || !re.MatchString(a.text) {
		t.Errorf("%s: got\n  %d %d.%d.%d %s\nwant %d %d.%d.%d matching %s", key, a.code, a.enh[0], a.enh[1], a.enh[2], a.text, code, enh[0], enh[1], enh[2], re)
	}
	return gateway.ReplyPECID(a.text)
}

func checkLines(t *testing.T, what string, a rawAnswer) {
	t.Helper()
	for _, l := range a.lines {
		if len(l) > 512 || !strings.HasSuffix(l, "\r\n") {
			t.Errorf("%s: reply line of %d octets %q", what, len(l), l)
		}
		for _, c := range []byte(strings.TrimSuffix(l, "\r\n")) {
			if c < 0x20 || c >= 0x7f {
				t.Errorf("%s: octet %#x in the reply line %q", what, c, l)
				break
			}
		}
	}
}

// replyDaemon runs pecgw serve on a fresh pecgw init with mario, the
// [limits], [submission] and [users] keys given set first.
func replyDaemon(t *testing.T, sections map[string]map[string]string) (dir, sub, smtps string, tc *tls.Config, s *crashServer) {
	t.Helper()
	dir, cfg, caFile, sub, smtps := setUpBinary(t, "pec.example.it", "Example PEC S.p.A.", "mario@pec.example.it", "correct horse")
	for table, values := range sections {
		setConfig(t, cfg, table, values)
	}
	s = &crashServer{bin: pecgwBinary(t), cfg: cfg, addrs: []string{sub, smtps}, out: &lockedBuffer{}}
	if err := s.start(); err != nil {
		t.Fatalf("%v\n%s", err, s.out.String())
	}
	t.Cleanup(func() {
		if err := s.term(); err != nil {
			t.Errorf("pecgw serve after SIGTERM: %v", err)
		}
		if t.Failed() {
			t.Logf("pecgw serve output:\n%s", s.out.String())
		}
	})
	return dir, sub, smtps, clientTLS(t, caFile), s
}

// replyMessage is a message mario may send to anna and luca, with the
// header fields changed: "Name: value" replaces the field Name, "-Name"
// removes it, "+Name: value" adds one.
func replyMessage(n int, edits ...string) string {
	fields := []string{
		"Date: " + time.Now().Format(time.RFC1123Z),
		"From: Mario <mario@pec.example.it>",
		"To: anna@pec.altro.it",
		"Cc: luca@example.com",
		"Subject: prova " + strconv.Itoa(n),
		"Message-ID: <replies-" + strconv.Itoa(n) + "-" + strconv.FormatInt(time.Now().UnixNano(), 36) + "@client.example>",
	}
	for _, e := range edits {
		switch {
		case strings.HasPrefix(e, "-"):
			fields = filterFields(fields, e[1:])
		case strings.HasPrefix(e, "+"):
			fields = append(fields, e[1:])
		default:
			name, _, _ := strings.Cut(e, ":")
			fields = append(filterFields(fields, name), e)
		}
	}
	return strings.Join(fields, "\r\n") + "\r\n\r\nciao\r\n"
}

func filterFields(fields []string, name string) []string {
	var out []string
	for _, f := range fields {
		if !strings.HasPrefix(f, name+":") {
			out = append(out, f)
		}
	}
	return out
}

// mailboxNotices maps the daticert identificativo of every
// non-acceptance notice in mario's mailbox to its file.
func mailboxNotices(t *testing.T, dir string) map[string]string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "mailboxes", "mario@pec.example.it", "new", "*"))
	out := map[string]string{}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(raw, []byte("\r\nX-Ricevuta: non-accettazione\r\n")) {
			continue
		}
		res, err := signer.Verify(raw, nil)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		x, err := pec.FindDatiCert(res.Content)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		dc, err := pec.ParseDatiCert(x)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out[dc.Identificativo] = f
	}
	return out
}

// TestRepliesOverTheBinary: every reply a client can get from pecgw,
// over the built binary, over real TCP and TLS: each refusal of the
// formal checks (and its notice), each reply of the session, each
// temporary failure that can be brought about from outside, and the
// connection limits. Each is the row of docs/replies.md, Italian then
// English, ASCII, within 512 octets, with the PEC identifier first and
// whole where there is one: the identifier of the notice delivered.
func TestRepliesOverTheBinary(t *testing.T) {
	openssl := testtool.Need(t, "openssl")
	xmllint := testtool.Need(t, "xmllint")
	dtd, err := filepath.Abs(filepath.Join("..", "..", "pec", "testdata", "daticert.dtd"))
	if err != nil {
		t.Fatal(err)
	}
	dir, _, smtps, tc, _ := replyDaemon(t, map[string]map[string]string{
		"[limits]": {
			"max_recipients":                `3`,
			"max_message_bytes":             `15000`,
			"max_size_times_recipients":     `20000`,
			"max_connections_per_ip":        `3`,
			"max_connections_per_network":   `6`,
			"auth_failures_before_delay":    `2`,
			"auth_lockout_failures":         `2`,
			"auth_address_lockout_failures": `4`,
			"min_auth_time":                 `"1ms"`,
		},
	})
	const mario, pw = "mario@pec.example.it", "correct horse"
	both := []string{"anna@pec.altro.it", "luca@example.com"}
	big := strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n", 180) // 11.5 KB

	t.Run("formal checks", func(t *testing.T) {
		for _, c := range []struct {
			code  string
			rcpts []string
			msg   string
		}{
			{pec.CodeEmptyMessage, both, ""},
			{pec.CodeBareLF, both, strings.ReplaceAll(replyMessage(1), "\r\n", "\n")},
			{pec.CodeBareCR, both, replyMessage(2) + "a\rb\r\n"},
			{pec.CodeLineTooLong, both, replyMessage(3) + strings.Repeat("x", 1000) + "\r\n"},
			{pec.CodeHeaderSyntax, both, replyMessage(4, "+Subject prova")},
			{pec.CodeHeader8bit, both, replyMessage(5, "Subject: città")},
			{pec.CodeInvalidDate, both, replyMessage(6, "Date: ieri")},
			{pec.CodeDuplicateField, both, replyMessage(7, "+Subject: altro")},
			{pec.CodeMissingFrom, both, replyMessage(8, "-From")},
			{pec.CodeInvalidFrom, both, replyMessage(9, "From: mario@")},
			{pec.CodeMultipleFrom, both, replyMessage(10, "From: mario@pec.example.it, anna@pec.altro.it")},
			{pec.CodeMissingTo, []string{"luca@example.com"}, replyMessage(11, "-To")},
			{pec.CodeInvalidTo, []string{"luca@example.com"}, replyMessage(12, "To: anna@")},
			{pec.CodeInvalidCc, []string{"anna@pec.altro.it"}, replyMessage(13, "Cc: luca@")},
			{pec.CodeInvalidReplyTo, both, replyMessage(14, "Reply-To: segreteria@")},
			{pec.CodeBccHeader, both, replyMessage(15, "+Bcc: spia@example.com")},
			{pec.CodeSizeLimit, both, replyMessage(16) + big},
			{pec.CodeSenderMismatch, both, replyMessage(17, "From: anna@pec.altro.it")},
			{pec.CodeRecipientMismatch, both, replyMessage(18, "Cc: luca@example.com, carlo@pec.altro.it")},
			{pec.CodeHiddenBcc, append(both, "bob@pec.altro.it"), replyMessage(19)},
		} {
			t.Run(c.code, func(t *testing.T) {
				rc := loggedIn(t, "", smtps, tc, mario, pw)
				_, a := rc.transaction(t, mario, c.rcpts, c.msg)
				id := checkReply(t, c.code, a)
				f := mailboxNotices(t, dir)[id]
				if id == "" || f == "" {
					t.Fatalf("reply %v: no non-acceptance notice with the PEC identifier it starts with", a)
				}
				rc.must(t, "NOOP", 250)
				if c.code != pec.CodeHiddenBcc {
					return
				}
				// The exact reply of the issue, and a notice that names
				// the refused recipient, valid against the DTD.
				if want := id + " Messaggio non accettato: destinatario nascosto (Ccn/Bcc) non ammesso nella PEC / Not accepted: hidden Bcc recipients are not allowed in PEC"; a.text != want {
					t.Errorf("hidden Bcc: %q, want %q", a.text, want)
				}
				n := readPEC(t, f, filepath.Join(dir, "pki", "ca.pem"), tc.RootCAs, openssl, xmllint, dtd)
				if n.dc.Identificativo != id || !strings.Contains(n.dc.ErroreEsteso, "bob@pec.altro.it") || !strings.Contains(string(n.text), "bob@pec.altro.it") {
					t.Errorf("notice %s: identificativo %q, errore-esteso %q, text:\n%s", f, n.dc.Identificativo, n.dc.ErroreEsteso, n.text)
				}
			})
		}
	})

	t.Run("too many recipients", func(t *testing.T) {
		// EHLO announces the limit applied at RCPT time (RFC 9422): the
		// fourth RCPT gets go-smtp's 452 4.5.3; DATA with the three the
		// client got is refused, with the notice, for the four of To/Cc.
		rc, _ := dialRaw(t, "", smtps, tc)
		e := rc.must(t, "EHLO client.example", 250)
		if !slices.Contains(e.lines, "250 LIMITS RCPTMAX=3\r\n") && !slices.Contains(e.lines, "250-LIMITS RCPTMAX=3\r\n") {
			t.Errorf("EHLO does not announce RCPTMAX=3:\n%s", strings.Join(e.lines, ""))
		}
		rc.must(t, authPlainLine(mario, pw), 235)
		rcpts := []string{"anna@pec.altro.it", "luca@example.com", "carlo@pec.altro.it", "dario@pec.altro.it"}
		rs, a := rc.transaction(t, mario, rcpts, replyMessage(30, "Cc: luca@example.com, carlo@pec.altro.it, dario@pec.altro.it"))
		for i, r := range rs {
			switch {
			case i < 3 && r.code != 250:
				t.Errorf("RCPT %d: %v", i+1, r)
			case i == 3 && (r.code != 452 || r.enh != (smtp.EnhancedCode{4, 5, 3})):
				t.Errorf("RCPT beyond the limit: %v, want 452 4.5.3", r)
			}
			checkLines(t, "RCPT", r)
		}
		id := checkReply(t, pec.CodeTooManyRecipients, a)
		if !strings.Contains(a.text, "4 destinatari superano il limite di 3 per messaggio / Not accepted: 4 recipients exceed the limit of 3 per message") {
			t.Errorf("too many recipients: %q", a.text)
		}
		if mailboxNotices(t, dir)[id] == "" {
			t.Errorf("no notice for %s", id)
		}
	})

	t.Run("accepted", func(t *testing.T) {
		rc := loggedIn(t, "", smtps, tc, mario, pw)
		msg := replyMessage(40)
		_, a := rc.transaction(t, mario, both, msg)
		id := checkReply(t, "accepted", a)
		env, _ := filepath.Glob(filepath.Join(dir, "outbound", "new", "*"))
		found := false
		for _, f := range env {
			raw, _ := os.ReadFile(f)
			found = found || bytes.Contains(raw, []byte("\r\nMessage-ID: <"+id+">\r\n"))
		}
		if !found {
			t.Errorf("no envelope with Message-ID <%s>", id)
		}
		// The client's retry: the same identifier.
		_, again := rc.transaction(t, mario, both, msg)
		if dup := checkReply(t, "duplicate", again); dup != id {
			t.Errorf("retry answered with %q, first %q", dup, id)
		}
	})

	t.Run("session", func(t *testing.T) {
		rc, _ := dialRaw(t, "", smtps, tc)
		rc.must(t, "EHLO client.example", 250)
		checkReply(t, "auth-required", rc.cmd("MAIL FROM:<"+mario+">"))
		checkReply(t, "auth-mechanism", rc.cmd("AUTH CRAM-MD5"))
		checkReply(t, "auth-malformed", rc.cmd("AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("no NULs here"))))
		checkReply(t, "auth-failed", rc.cmd(authPlainLine(mario, "wrong")))
		rc.must(t, authPlainLine(mario, pw), 235)
		checkReply(t, "sender-not-own", rc.cmd("MAIL FROM:<anna@pec.altro.it>"))

		rc = loggedIn(t, "", smtps, tc, mario, pw)
		_, a := rc.transaction(t, mario, both, replyMessage(50)+big+big)
		checkReply(t, "too-big", a)
		if !strings.Contains(a.text, "al massimo 15000 byte / message size exceeds the limit of 15000 octets") {
			t.Errorf("too big: %q", a.text)
		}
	})

	t.Run("suspended", func(t *testing.T) {
		cfg := filepath.Join(dir, "pecgw.toml")
		if code, out, errOut := runBin(t, "", "user", "suspend", mario, "--config", cfg, "--reason", "casella in verifica: è così"); code != 0 {
			t.Fatalf("user suspend: %d\n%s%s", code, out, errOut)
		}
		defer runBin(t, "", "user", "resume", mario, "--config", cfg)
		var a rawAnswer
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			rc := loggedIn(t, "", smtps, tc, mario, pw)
			a = rc.cmd("MAIL FROM:<" + mario + ">")
			rc.c.Close()
			if a.code != 250 || time.Now().After(deadline) {
				break
			}
		}
		checkReply(t, "suspended", a)
		if !strings.HasSuffix(a.text, "(casella in verifica: e' cosi')") {
			t.Errorf("the reason is not quoted in ASCII: %q", a.text)
		}
	})

	t.Run("lockouts", func(t *testing.T) {
		try := func(local, user, password string) rawAnswer {
			rc, _ := dialRaw(t, local, smtps, tc)
			defer rc.c.Close()
			rc.must(t, "EHLO client.example", 250)
			return rc.cmd(authPlainLine(user, password))
		}
		// Each failure with another password: the same wrong one again
		// within a minute counts once (a client retrying a saved one).
		for i := range 2 {
			try("127.0.9.1", mario, fmt.Sprint("wrong", i))
		}
		a := checkReplyText(t, "auth-locked", try("127.0.9.1", mario, pw))
		if !strings.Contains(a, "per mario@pec.example.it da 127.0.9.1") {
			t.Errorf("lockout of the account: %q", a)
		}
		for i := range 2 {
			try("127.0.9.2", "not an address", fmt.Sprint("wrong", i))
		}
		checkReplyText(t, "auth-locked-name", try("127.0.9.2", "not an address", "wrong9"))
		for i := range 4 {
			try("127.0.9.3", fmt.Sprintf("nobody%d@pec.example.it", i), "wrong")
		}
		checkReplyText(t, "auth-locked-address", try("127.0.9.3", mario, pw))
	})

	t.Run("connection limits", func(t *testing.T) {
		var open []net.Conn
		defer func() {
			for _, c := range open {
				c.Close()
			}
		}()
		hold := func(local string) {
			rc, g := dialRaw(t, local, smtps, tc)
			if g.code != 220 {
				t.Fatalf("connection from %s: %v", local, g)
			}
			open = append(open, rc.c)
		}
		for range 3 {
			hold("127.0.8.1")
		}
		_, a := dialRaw(t, "127.0.8.1", smtps, tc)
		checkReply(t, "connections-address", a)
		if !strings.HasPrefix(a.text, "pec.example.it troppe connessioni da questo indirizzo 127.0.8.1") {
			t.Errorf("421: %q", a.text)
		}
		for range 3 {
			hold("127.0.8.2")
		}
		_, a = dialRaw(t, "127.0.8.3", smtps, tc)
		checkReply(t, "connections-network", a)
	})
}

// checkReplyText is checkReply for replies without a lead; it returns the
// text.
func checkReplyText(t *testing.T, key string, a rawAnswer) string {
	t.Helper()
	checkReply(t, key, a)
	return a.text
}

// TestTemporaryRepliesOverTheBinary: the 4xx that can be brought about
// from outside the daemon: all connections taken, a message the disk
// cannot take while it is read, a hand-off that fails, an upload that
// stalls, the accounts that cannot be checked, too many logins at once.
// Each says, in Italian and English, that nothing was certified and to
// retry. (in-flight, timeout and busy-memory need a transaction held
// inside the daemon: gateway's TestTemporaryReplies has them.)
func TestTemporaryRepliesOverTheBinary(t *testing.T) {
	const mario, pw = "mario@pec.example.it", "correct horse"
	both := []string{"anna@pec.altro.it", "luca@example.com"}
	dir, _, smtps, tc, _ := replyDaemon(t, map[string]map[string]string{
		"[limits]": {"max_connections": `5`, "max_connections_per_ip": `5`, "command_timeout": `"1s"`},
		"[users]":  {"hash_slots": `1`, "hash_wait": `"10ms"`},
	})

	t.Run("connections", func(t *testing.T) {
		var open []*rawClient
		for _, local := range []string{"127.0.12.1", "127.0.13.1", "127.0.14.1", "127.0.15.1", "127.0.16.1"} {
			rc, g := dialRaw(t, local, smtps, tc)
			if g.code != 220 {
				t.Fatalf("connection from %s: %v", local, g)
			}
			open = append(open, rc)
		}
		_, a := dialRaw(t, "127.0.17.1", smtps, tc)
		checkReply(t, "connections", a)
		for _, rc := range open {
			rc.c.Close()
		}
		time.Sleep(200 * time.Millisecond) // the daemon sees them close
	})

	t.Run("auth-busy", func(t *testing.T) {
		// One hashing slot, a wait of 10 ms: of four logins at once (to
		// accounts that do not exist: each is hashed, against a hash of
		// the same cost, and none shares another's check), at least one
		// finds the slot taken for longer.
		var wg sync.WaitGroup
		answers := make([]rawAnswer, 4)
		for i := range answers {
			wg.Go(func() {
				c, err := tls.DialWithDialer(&net.Dialer{Timeout: rawWait, LocalAddr: &net.TCPAddr{IP: net.ParseIP(fmt.Sprintf("127.0.18.%d", i+1))}}, "tcp", smtps, tc)
				if err != nil {
					answers[i] = rawAnswer{err: err}
					return
				}
				defer c.Close()
				rc := &rawClient{c: c, r: bufio.NewReader(c)}
				rc.read()
				rc.cmd("EHLO client.example")
				answers[i] = rc.cmd(authPlainLine(fmt.Sprintf("nobody%d@pec.example.it", i), "guess"))
			})
			if i == 2 {
				time.Sleep(200 * time.Millisecond) // let the last open after the others wait
			}
		}
		wg.Wait()
		busy := 0
		for _, a := range answers {
			if a.code == 454 {
				busy++
				checkReply(t, "auth-busy", a)
			} else if a.code != 535 {
				t.Errorf("login: %v", a)
			}
		}
		if busy == 0 {
			t.Errorf("four logins at once with one slot and a 10 ms wait, none busy: %v", answers)
		}
	})

	t.Run("data-stalled", func(t *testing.T) {
		rc := loggedIn(t, "", smtps, tc, mario, pw)
		rc.must(t, "MAIL FROM:<"+mario+">", 250)
		rc.must(t, "RCPT TO:<anna@pec.altro.it>", 250)
		rc.must(t, "DATA", 354)
		rc.c.Write([]byte("Subject: a metà\r\n"))
		time.Sleep(2500 * time.Millisecond) // command_timeout is 1s
		checkReply(t, "data-stalled", rc.read())
	})

	t.Run("no-storage", func(t *testing.T) {
		// A message over 256 KiB goes to delivery.incoming while it is
		// read: without the folder it cannot.
		incoming := filepath.Join(dir, "incoming")
		if err := os.RemoveAll(incoming); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(incoming, nil, 0o600); err != nil { // a file where the folder was
			t.Fatal(err)
		}
		defer func() { os.Remove(incoming); os.Mkdir(incoming, 0o700) }()
		rc := loggedIn(t, "", smtps, tc, mario, pw)
		_, a := rc.transaction(t, mario, both, replyMessage(60)+strings.Repeat(strings.Repeat("x", 98)+"\r\n", 3000))
		checkReply(t, "no-storage", a)
	})

	t.Run("temporary", func(t *testing.T) {
		// The envelopes' maildir is gone: the hand-off fails, nothing is
		// certified, the client is told to retry.
		outbound := filepath.Join(dir, "outbound")
		moved := outbound + ".away"
		if err := os.Rename(outbound, moved); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(outbound, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		defer func() { os.Remove(outbound); os.Rename(moved, outbound) }()
		rc := loggedIn(t, "", smtps, tc, mario, pw)
		_, a := rc.transaction(t, mario, both, replyMessage(61))
		checkReply(t, "temporary", a)
	})

	t.Run("line-too-long-smtp", func(t *testing.T) {
		rc := loggedIn(t, "", smtps, tc, mario, pw)
		_, a := rc.transaction(t, mario, both, replyMessage(62)+strings.Repeat("y", gateway.MaxLineLength+100)+"\r\n")
		checkReply(t, "line-too-long-smtp", a)
	})
}

// TestAccountsUnavailableOverTheBinary: users.backend = "dovecot" with
// no Dovecot behind the socket: 454 4.7.0, try again later; in Italian
// only, with submission.reply_language = "it".
func TestAccountsUnavailableOverTheBinary(t *testing.T) {
	_, _, smtps, tc, _ := replyDaemon(t, map[string]map[string]string{
		"[users]":      {"backend": `"dovecot"`, "dovecot_socket": strconv.Quote(filepath.Join(t.TempDir(), "no-dovecot")), "dovecot_timeout": `"200ms"`},
		"[submission]": {"reply_language": `"it"`},
	})
	rc, _ := dialRaw(t, "", smtps, tc)
	rc.must(t, "EHLO client.example", 250)
	a := rc.cmd(authPlainLine("mario@pec.example.it", "correct horse"))
	checkReplyIn(t, "auth-unavailable", gateway.Italian, a)
	if a.text != "gli account non sono verificabili in questo momento, riprovare piu' tardi" {
		t.Errorf("reply_language = \"it\": %q", a.text)
	}
}
