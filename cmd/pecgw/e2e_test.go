package main

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-message"
	_ "github.com/emersion/go-message/charset"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/pecgw/pecgw/gateway"
	"github.com/pecgw/pecgw/internal/testtool"
	"github.com/pecgw/pecgw/logstore"
	"github.com/pecgw/pecgw/pec"
	"github.com/pecgw/pecgw/signer"
)

// The pecgw binary, built once for the package's tests (TestMain removes it).
// The binaries the tests run, built once: the one pecgw ships, and one
// built with -tags pecgw_faults for the power-loss test (it can skip one
// fsync, internal/durable).
var (
	binMu    sync.Mutex
	binDir   string
	binPaths = map[string]string{}
)

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "hash-worker" {
		// newServer in this process starts its password worker as
		// os.Executable() hash-worker: this test binary.
		os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	if spec := os.Getenv(holdEnv); spec != "" {
		os.Exit(holdConnections(spec)) // limits_test.go: a process that only holds connections
	}
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// pecgwBinary builds ./cmd/pecgw with the go command of the toolchain
// running the tests, once.
func pecgwBinary(t *testing.T) string { t.Helper(); return buildPecgw(t, "") }

// buildPecgw builds ./cmd/pecgw with the build tags tags ("" for none),
// once per tags.
func buildPecgw(t *testing.T, tags string) string {
	t.Helper()
	binMu.Lock()
	defer binMu.Unlock()
	if p, ok := binPaths[tags]; ok {
		if p == "" {
			t.Fatal("go build failed before")
		}
		return p
	}
	if binDir == "" {
		dir, err := os.MkdirTemp("", "pecgw-e2e-")
		if err != nil {
			t.Fatal(err)
		}
		binDir = dir
	}
	goTool := "go"
	//lint:ignore SA1019 the go command of the toolchain running the tests, as go test puts it on PATH too
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); runtime.GOROOT() != "" {
		if _, err := os.Stat(p); err == nil {
			goTool = p
		}
	}
	path := filepath.Join(binDir, "pecgw"+strings.ReplaceAll(tags, ",", "-"))
	args := []string{"build", "-o", path}
	if tags != "" {
		args = append(args, "-tags", tags)
	}
	binPaths[tags] = ""
	if out, err := exec.Command(goTool, append(args, ".")...).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	binPaths[tags] = path
	return path
}

// runBin runs the binary to completion and returns its exit status,
// standard output and standard error.
func runBin(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(pecgwBinary(t), args...)
	cmd.Dir = t.TempDir()
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String(), errOut.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String(), errOut.String()
	}
	t.Fatalf("pecgw %s: %v", strings.Join(args, " "), err)
	return -1, "", ""
}

// lockedBuffer takes the daemon's stderr while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// sendOne submits msg over c and returns the text of the reply to DATA.
func sendOne(c *smtp.Client, from string, rcpts []string, msg string) (string, error) {
	if err := c.Mail(from, nil); err != nil {
		return "", err
	}
	for _, r := range rcpts {
		if err := c.Rcpt(r, nil); err != nil {
			return "", err
		}
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	if _, err := io.WriteString(w, msg); err != nil {
		return "", err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	return resp.StatusText, nil
}

// pecFile is one message found in a maildir, read back with independent
// parsers.
type pecFile struct {
	name        string
	raw         []byte
	hdr         message.Header
	subject     string // decoded
	text        []byte // decoded to UTF-8 by go-message
	eml         []byte // postacert.eml, envelopes only
	dc          pec.DatiCert
	signingTime time.Time
}

var textInstant = regexp.MustCompile(`Il giorno (\d{2}/\d{2}/\d{4}) alle ore (\d{2}:\d{2}:\d{2}) \(([+-]\d{4})\)`)

// instants returns every rendering of the time reference the message
// carries: the Date header, daticert's data, the text part's line and
// the CMS signingTime.
func (f *pecFile) instants(t *testing.T) map[string]time.Time {
	t.Helper()
	got := map[string]time.Time{"signingTime": f.signingTime}
	if d, err := mail.ParseDate(f.hdr.Get("Date")); err != nil {
		t.Errorf("%s: Date %q: %v", f.name, f.hdr.Get("Date"), err)
	} else {
		got["Date"] = d
	}
	if d, err := time.Parse("02/01/2006 15:04:05 -0700", f.dc.Day+" "+f.dc.Clock+" "+f.dc.ZoneText); err != nil {
		t.Errorf("%s: daticert data %q %q %q: %v", f.name, f.dc.Day, f.dc.Clock, f.dc.ZoneText, err)
	} else {
		got["daticert"] = d
	}
	if m := textInstant.FindStringSubmatch(string(f.text)); m == nil {
		t.Errorf("%s: no \"Il giorno … alle ore …\" line in the text part:\n%s", f.name, f.text)
	} else if d, err := time.Parse("02/01/2006 15:04:05 -0700", m[1]+" "+m[2]+" "+m[3]); err != nil {
		t.Errorf("%s: text part time %q: %v", f.name, m[0], err)
	} else {
		got["text"] = d
	}
	return got
}

// readPEC checks one delivered file: the delivery lines in front, the
// signature with openssl and with signer.Verify, daticert.xml against
// the DTD with xmllint; and returns it parsed.
func readPEC(t *testing.T, path, caFile string, roots *x509.CertPool, openssl, xmllint, dtd string) *pecFile {
	t.Helper()
	f := &pecFile{name: filepath.Base(filepath.Dir(filepath.Dir(path))) + "/" + filepath.Base(path)}
	var err error
	if f.raw, err = os.ReadFile(path); err != nil {
		t.Fatal(err)
	}
	if l := strings.SplitN(string(f.raw), "\r\n", 3); len(l) < 3 || !strings.HasPrefix(l[0], "Return-Path: <") ||
		!strings.HasSuffix(l[0], ">") || !strings.HasPrefix(l[1], "Delivered-To: ") {
		t.Errorf("%s does not start with Return-Path and Delivered-To lines:\n%.200s", f.name, f.raw)
	}
	if o, err := exec.Command(openssl, "cms", "-verify", "-CAfile", caFile, "-in", path, "-out", os.DevNull).CombinedOutput(); err != nil {
		t.Errorf("%s: openssl cms -verify: %v\n%s", f.name, err, o)
	}
	res, err := signer.Verify(f.raw, roots)
	if err != nil {
		t.Fatalf("%s: signer.Verify: %v", f.name, err)
	}
	f.signingTime = res.SigningTime

	e, err := message.Read(bytes.NewReader(f.raw))
	if err != nil {
		t.Fatalf("%s: go-message: %v", f.name, err)
	}
	f.hdr = e.Header
	if f.subject, err = new(mime.WordDecoder).DecodeHeader(f.hdr.Get("Subject")); err != nil {
		t.Errorf("%s: Subject: %v", f.name, err)
	}
	var xmlData []byte
	var walk func(e *message.Entity)
	walk = func(e *message.Entity) {
		mt, params, _ := e.Header.ContentType()
		if mr := e.MultipartReader(); mr != nil && mt != "message/rfc822" {
			for {
				p, err := mr.NextPart()
				if err == io.EOF {
					return
				}
				if err != nil {
					t.Fatalf("%s: reading parts: %v", f.name, err)
				}
				walk(p)
			}
		}
		b, err := io.ReadAll(e.Body)
		if err != nil {
			t.Fatalf("%s: reading part %s: %v", f.name, mt, err)
		}
		switch {
		case mt == "text/plain":
			f.text = b
		case mt == "application/xml" && params["name"] == "daticert.xml":
			xmlData = b
		case mt == "message/rfc822" && params["name"] == "postacert.eml":
			f.eml = b
		}
	}
	walk(e)
	if f.text == nil || xmlData == nil {
		t.Fatalf("%s: text part or daticert.xml missing", f.name)
	}
	xmlFile := filepath.Join(t.TempDir(), "daticert.xml")
	if err := os.WriteFile(xmlFile, xmlData, 0o644); err != nil {
		t.Fatal(err)
	}
	if o, err := exec.Command(xmllint, "--noout", "--dtdvalid", dtd, xmlFile).CombinedOutput(); err != nil {
		t.Errorf("%s: daticert.xml does not validate against the DTD: %v\n%s\n%s", f.name, err, o, xmlData)
	}
	if f.dc, err = pec.ParseDatiCert(xmlData); err != nil {
		t.Fatalf("%s: ParseDatiCert: %v", f.name, err)
	}
	return f
}

// TestEndToEndBinary runs the built binary as an operator and a user do:
// init, user add, serve; two submissions (STARTTLS + PLAIN, implicit TLS
// + LOGIN) and a refused one; SIGHUP after adding a user; SIGTERM; log
// verify. It checks what lands in the maildirs against the PEC rules, and
// that one instant is written everywhere a transaction's time appears.
func TestEndToEndBinary(t *testing.T) {
	openssl := testtool.Need(t, "openssl")
	xmllint := testtool.Need(t, "xmllint")
	dtd, err := filepath.Abs(filepath.Join("..", "..", "pec", "testdata", "daticert.dtd"))
	if err != nil {
		t.Fatal(err)
	}
	pecgwBinary(t)

	const (
		domain   = "pec.example.it"
		mario    = "mario@pec.example.it"
		anna     = "anna@pec.example.it"
		service  = "posta-certificata@pec.example.it"
		marioPwd = "correct horse battery"
		annaPwd  = "staple è sicura"
		subject  = "Fattura n. 42 è pronta"
		toHdr    = `"Anna Bianchi" <anna.bianchi@pec.example.it>`
		ccHdr    = "luca.verdi@example.com"
	)
	rcpts := []string{"anna.bianchi@pec.example.it", "luca.verdi@example.com"}

	// 1. init and user add, as an operator runs them.
	dir, cfg, caFile, sub, smtps := setUpBinary(t, domain, "Example PEC S.p.A.", mario, marioPwd)

	// 2. serve in the background until both listeners answer.
	var stderr lockedBuffer
	srv := exec.Command(pecgwBinary(t), "serve", "--config", cfg)
	srv.Dir = t.TempDir()
	srv.Stdout, srv.Stderr = &stderr, &stderr
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- srv.Wait() }()
	stopped := false
	defer func() {
		if !stopped {
			srv.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("pecgw serve output:\n%s", stderr.String())
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for _, addr := range []string{sub, smtps} {
		for {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				c.Close()
				break
			}
			select {
			case err := <-exited:
				stopped = true
				t.Fatalf("pecgw serve exited before listening: %v", err)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s does not accept connections after 10 s: %v", addr, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	tc := clientTLS(t, caFile)
	dialers := map[string]func() (*smtp.Client, error){
		"starttls": func() (*smtp.Client, error) { return smtp.DialStartTLS(sub, tc) },
		"smtps":    func() (*smtp.Client, error) { return smtp.DialTLS(smtps, tc) },
	}
	msgFor := func(msgID, extra string) string {
		return "Date: " + time.Now().Format(time.RFC1123Z) + "\r\n" +
			"From: " + mario + "\r\n" +
			"To: " + toHdr + "\r\n" +
			"Cc: " + ccHdr + "\r\n" + extra +
			"Subject: " + mime.QEncoding.Encode("utf-8", subject) + "\r\n" +
			"Message-ID: " + msgID + "\r\n" +
			"MIME-Version: 1.0\r\n" +
			"Content-Type: text/plain; charset=utf-8\r\n" +
			"\r\n" +
			"Buongiorno,\r\nla fattura è pronta.\r\n"
	}

	// 3. Two submissions, one over each listener.
	ids := map[string]string{} // PEC id -> client Message-ID
	for _, c := range []struct {
		name, msgID string
		auth        sasl.Client
	}{
		{"starttls", "<e2e-plain@client.example>", sasl.NewPlainClient("", mario, marioPwd)},
		{"smtps", "<e2e-login@client.example>", sasl.NewLoginClient(mario, marioPwd)},
	} {
		cl, err := dialers[c.name]()
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if err := cl.Auth(c.auth); err != nil {
			t.Fatalf("%s: AUTH: %v", c.name, err)
		}
		reply, err := sendOne(cl, mario, rcpts, msgFor(c.msgID, ""))
		if err != nil {
			t.Fatalf("%s: submission refused: %v", c.name, err)
		}
		cl.Quit()
		id := gateway.ReplyPECID(reply)
		if id == "" || strings.ContainsAny(id, "<>") || !strings.HasSuffix(id, "@"+domain) {
			t.Fatalf("%s: 250 reply %q carries no PEC id", c.name, reply)
		}
		ids[id] = c.msgID
	}
	if len(ids) != 2 {
		t.Fatalf("the two submissions got the same PEC id: %v", ids)
	}

	// 4. Two envelopes out, two receipts in mario's mailbox.
	outbound, _ := filepath.Glob(filepath.Join(dir, "outbound", "new", "*"))
	mailbox := filepath.Join(dir, "mailboxes", mario, "new")
	box, _ := filepath.Glob(filepath.Join(mailbox, "*"))
	if len(outbound) != 2 || len(box) != 2 {
		t.Fatalf("%d envelopes and %d receipts, want 2 and 2", len(outbound), len(box))
	}
	envelopes := map[string]*pecFile{}
	for _, p := range outbound {
		f := readPEC(t, p, caFile, tc.RootCAs, openssl, xmllint, dtd)
		id := strings.TrimSuffix(strings.TrimPrefix(f.hdr.Get("Message-ID"), "<"), ">")
		clientID, ok := ids[id]
		if !ok {
			t.Errorf("%s: Message-ID %q is none of the PEC ids %v", f.name, f.hdr.Get("Message-ID"), ids)
			continue
		}
		envelopes[id] = f
		want := "Return-Path: <" + mario + ">\r\nDelivered-To: " + rcpts[0] + "\r\nDelivered-To: " + rcpts[1] + "\r\n"
		if !bytes.HasPrefix(f.raw, []byte(want)) {
			t.Errorf("%s: delivery lines:\n%.200s\nwant\n%s", f.name, f.raw, want)
		}
		for h, v := range map[string]string{
			"X-Trasporto":              "posta-certificata",
			"X-Ricevuta":               "",
			"From":                     `"Per conto di: ` + mario + `" <` + service + ">",
			"Message-ID":               "<" + id + ">",
			"X-Riferimento-Message-ID": clientID,
			"Reply-To":                 mario,
			"To":                       toHdr,
			"Cc":                       ccHdr,
		} {
			if got := f.hdr.Get(h); got != v {
				t.Errorf("%s: %s = %q, want %q", f.name, h, got, v)
			}
		}
		if f.subject != "POSTA CERTIFICATA: "+subject {
			t.Errorf("%s: Subject = %q", f.name, f.subject)
		}
		if f.eml == nil {
			t.Errorf("%s: no postacert.eml", f.name)
		} else if m, err := mail.ReadMessage(bytes.NewReader(f.eml)); err != nil {
			t.Errorf("%s: postacert.eml: %v", f.name, err)
		} else if m.Header.Get("Message-ID") != "<"+id+">" || m.Header.Get("X-Riferimento-Message-ID") != clientID {
			t.Errorf("%s: postacert.eml Message-ID %q, X-Riferimento-Message-ID %q", f.name, m.Header.Get("Message-ID"), m.Header.Get("X-Riferimento-Message-ID"))
		}
		var dest []string
		for _, d := range f.dc.Destinatari {
			dest = append(dest, d.Tipo()+":"+d.Address)
		}
		if f.dc.Tipo != pec.TipoPostaCertificata || f.dc.Errore != pec.ErroreNessuno || f.dc.Identificativo != id || f.dc.MsgID != clientID ||
			f.dc.Mittente != mario || f.dc.Oggetto != subject || f.dc.Gestore != "Example PEC S.p.A." ||
			strings.Join(dest, " ") != "certificato:anna.bianchi@pec.example.it esterno:luca.verdi@example.com" {
			t.Errorf("%s: daticert %+v", f.name, f.dc)
		}
		if !strings.Contains(string(f.text), "Identificativo messaggio: "+id) {
			t.Errorf("%s: text part lacks the identifier:\n%s", f.name, f.text)
		}
	}
	receipts := map[string]*pecFile{}
	for _, p := range box {
		f := readPEC(t, p, caFile, tc.RootCAs, openssl, xmllint, dtd)
		id := f.dc.Identificativo
		clientID, ok := ids[id]
		if !ok {
			t.Errorf("%s: daticert identificativo %q is none of the PEC ids %v", f.name, id, ids)
			continue
		}
		receipts[id] = f
		want := "Return-Path: <" + service + ">\r\nDelivered-To: " + mario + "\r\n"
		if !bytes.HasPrefix(f.raw, []byte(want)) {
			t.Errorf("%s: delivery lines:\n%.200s\nwant\n%s", f.name, f.raw, want)
		}
		for h, v := range map[string]string{
			"X-Ricevuta":               "accettazione",
			"X-Trasporto":              "",
			"From":                     service,
			"To":                       mario,
			"X-Riferimento-Message-ID": clientID,
		} {
			if got := f.hdr.Get(h); got != v {
				t.Errorf("%s: %s = %q, want %q", f.name, h, got, v)
			}
		}
		if mid := f.hdr.Get("Message-ID"); mid == "" || mid == "<"+id+">" {
			t.Errorf("%s: receipt Message-ID %q", f.name, mid)
		}
		if f.subject != "ACCETTAZIONE: "+subject {
			t.Errorf("%s: Subject = %q", f.name, f.subject)
		}
		if f.eml != nil {
			t.Errorf("%s: a receipt carries postacert.eml", f.name)
		}
		if f.dc.Tipo != pec.TipoAccettazione || f.dc.Errore != pec.ErroreNessuno || f.dc.MsgID != clientID || f.dc.Oggetto != subject {
			t.Errorf("%s: daticert %+v", f.name, f.dc)
		}
		if !strings.Contains(string(f.text), `anna.bianchi@pec.example.it ("posta certificata")`) ||
			!strings.Contains(string(f.text), `luca.verdi@example.com ("posta ordinaria")`) ||
			!strings.Contains(string(f.text), "Identificativo messaggio: "+id) {
			t.Errorf("%s: text part:\n%s", f.name, f.text)
		}
	}

	// The same instant everywhere: envelope and receipt (Date, daticert,
	// text, signingTime) and the log records of the transaction.
	for id := range ids {
		env, rec := envelopes[id], receipts[id]
		if env == nil || rec == nil {
			t.Errorf("PEC id %s: envelope found %v, receipt found %v", id, env != nil, rec != nil)
			continue
		}
		ref, err := mail.ParseDate(env.hdr.Get("Date"))
		if err != nil {
			t.Errorf("envelope Date %q: %v", env.hdr.Get("Date"), err)
			continue
		}
		zone := ref.Format("-0700")
		if zone != "+0100" && zone != "+0200" {
			t.Errorf("envelope Date %q is not in Italian legal time", env.hdr.Get("Date"))
		}
		all := map[string]time.Time{}
		for k, v := range env.instants(t) {
			all["envelope "+k] = v
		}
		for k, v := range rec.instants(t) {
			all["receipt "+k] = v
		}
		code, out, errOut := runBin(t, "", "log", "query", "--id", id, "--format", "json", "--config", cfg)
		if code != 0 {
			t.Errorf("pecgw log query --id %s: exit %d\n%s%s", id, code, out, errOut)
		}
		var types []string
		sc := bufio.NewScanner(strings.NewReader(out))
		sc.Buffer(nil, logstore.MaxLine)
		for sc.Scan() {
			r, err := logstore.Decode(append(sc.Bytes(), '\n'))
			if err != nil {
				t.Errorf("log query line %q: %v", sc.Text(), err)
				continue
			}
			if r.PECID != id {
				t.Errorf("log query --id %s returned a record of %q", id, r.PECID)
				continue
			}
			types = append(types, string(r.Type))
			lt, err := time.Parse(time.RFC3339, r.Time)
			if err != nil {
				t.Errorf("log record %d time %q: %v", r.Seq, r.Time, err)
				continue
			}
			if lt.Format("-0700") != zone {
				t.Errorf("log record %d time %q, envelope Date %q: zones differ", r.Seq, r.Time, env.hdr.Get("Date"))
			}
			all[fmt.Sprintf("log record %d (%s)", r.Seq, r.Type)] = lt
			if r.Type == logstore.EventAccettazione && (r.MsgID != ids[id] || r.Sender != mario || r.User != mario) {
				t.Errorf("log record %d: msgid %q sender %q user %q", r.Seq, r.MsgID, r.Sender, r.User)
			}
		}
		if !strings.Contains(" "+strings.Join(types, " ")+" ", " "+string(logstore.EventAccettazione)+" ") {
			t.Errorf("PEC id %s: log records %v, no %s", id, types, logstore.EventAccettazione)
		}
		for k, v := range all {
			if !v.Equal(ref) {
				t.Errorf("PEC id %s: %s is %s, envelope Date is %s", id, k, v.Format(time.RFC3339Nano), ref.Format(time.RFC3339Nano))
			}
		}
		for _, f := range []*pecFile{env, rec} {
			if f.dc.ZoneText != zone || f.hdr.Get("Date") != env.hdr.Get("Date") {
				t.Errorf("%s: Date %q, daticert zona %q; envelope Date %q", f.name, f.hdr.Get("Date"), f.dc.ZoneText, env.hdr.Get("Date"))
			}
		}
	}

	// 5. A Bcc: header is refused with 550 5.7.1 and one notice.
	cl, err := dialers["starttls"]()
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Auth(sasl.NewPlainClient("", mario, marioPwd)); err != nil {
		t.Fatalf("AUTH: %v", err)
	}
	reply, err := sendOne(cl, mario, rcpts, msgFor("<e2e-bcc@client.example>", "Bcc: nascosto@example.com\r\n"))
	cl.Quit()
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		t.Fatalf("message with Bcc: accepted (%q) or failed otherwise: %v", reply, err)
	}
	if se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 1}) || !strings.Contains(se.Message, "Bcc") {
		t.Errorf("refusal %d %v %q, want 550 5.7.1 naming Bcc", se.Code, se.EnhancedCode, se.Message)
	}
	box, _ = filepath.Glob(filepath.Join(mailbox, "*"))
	var notices []*pecFile
	for _, p := range box {
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(raw, []byte("\r\nX-Ricevuta: non-accettazione\r\n")) {
			notices = append(notices, readPEC(t, p, caFile, tc.RootCAs, openssl, xmllint, dtd))
		}
	}
	if len(box) != 3 || len(notices) != 1 {
		t.Fatalf("after the refusal the mailbox holds %d messages, %d of them non-acceptance notices; want 3 and 1", len(box), len(notices))
	}
	n := notices[0]
	// The reply starts with the PEC identifier, the notice's daticert
	// <identificativo> (not the notice's own Message-ID).
	if id := gateway.ReplyPECID(se.Message); id == "" || id != n.dc.Identificativo {
		t.Errorf("refusal %q does not start with the notice's PEC identifier %q", se.Message, n.dc.Identificativo)
	}
	if n.hdr.Get("From") != service || n.hdr.Get("To") != mario || n.subject != "AVVISO DI NON ACCETTAZIONE: "+subject ||
		n.dc.Tipo != pec.TipoNonAccettazione || n.dc.Errore != pec.ErroreAltro || n.eml != nil {
		t.Errorf("notice: From %q To %q Subject %q daticert %+v postacert %v", n.hdr.Get("From"), n.hdr.Get("To"), n.subject, n.dc, n.eml != nil)
	}
	if out, _ := filepath.Glob(filepath.Join(dir, "outbound", "new", "*")); len(out) != 2 {
		t.Errorf("after the refusal %d envelopes, want still 2", len(out))
	}

	// 6. A user added while serving can log in at once: the daemon
	// follows its users file (gateway/users.go); SIGHUP still reloads.
	annaAuth := func() error {
		cl, err := dialers["smtps"]()
		if err != nil {
			return err
		}
		defer cl.Close()
		return cl.Auth(sasl.NewPlainClient("", anna, annaPwd))
	}
	if code, out, errOut := runBin(t, annaPwd+"\n", "user", "add", anna, "--config", cfg, "--password-stdin"); code != 0 {
		t.Fatalf("pecgw user add %s: exit %d\n%s%s", anna, code, out, errOut)
	}
	if err := annaAuth(); err != nil {
		t.Errorf("%s, just added, cannot log in: %v", anna, err)
	}
	if err := srv.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		err := annaAuth()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still cannot log in 5 s after SIGHUP: %v", anna, err)
		}
	}

	// 7. SIGTERM: a clean exit, then the log verifies.
	if err := srv.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		stopped = true
		if err != nil {
			t.Errorf("pecgw serve after SIGTERM: %v (want exit status 0)", err)
		}
	case <-time.After(35 * time.Second):
		t.Fatal("pecgw serve still running 35 s after SIGTERM")
	}
	code, out, errOut := runBin(t, "", "log", "verify", "--config", cfg, "--ca", caFile)
	if code != 0 || !strings.Contains(out+errOut, "log verified") {
		t.Errorf("pecgw log verify: exit %d\n%s%s", code, out, errOut)
	}
	for _, pwd := range []string{marioPwd, annaPwd} {
		if strings.Contains(stderr.String(), pwd) {
			t.Errorf("a password appears in the daemon's output")
		}
	}
}

// setUpBinary runs pecgw init (two free loopback ports) and pecgw user
// add with the built binary, as an operator does, and returns the data
// folder, the configuration, the CA and the two listener addresses.
func setUpBinary(t *testing.T, domain, provider, user, password string) (dir, cfg, caFile, sub, smtps string) {
	t.Helper()
	return setUpBinaryIn(t, t.TempDir(), domain, provider, user, password)
}

// setUpBinaryIn is setUpBinary with the data folder root/data.
func setUpBinaryIn(t *testing.T, root, domain, provider, user, password string) (dir, cfg, caFile, sub, smtps string) {
	t.Helper()
	dir = filepath.Join(root, "data")
	sub, smtps = freeAddr(t), freeAddr(t)
	if code, out, errOut := runBin(t, "", "init", "--dir", dir, "--domain", domain, "--provider-name", provider,
		"--submission-addr", sub, "--smtps-addr", smtps); code != 0 {
		t.Fatalf("pecgw init: exit %d\n%s%s", code, out, errOut)
	}
	cfg = filepath.Join(dir, "pecgw.toml")
	caFile = filepath.Join(dir, "pki", "ca.pem")
	if code, out, errOut := runBin(t, password+"\n", "user", "add", user, "--config", cfg, "--password-stdin"); code != 0 {
		t.Fatalf("pecgw user add: exit %d\n%s%s", code, out, errOut)
	}
	return dir, cfg, caFile, sub, smtps
}
