package pec

import (
	"bytes"
	"mime"
	"net/mail"
	"strings"
	"testing"
	"time"
)

func testTx(s *Submission) Transaction {
	return Transaction{
		Provider:   Provider{Name: "Example PEC S.p.A.", Domain: "pec.example.it"},
		At:         At(time.Date(2026, 10, 25, 1, 0, 0, 0, time.UTC)),
		ID:         "20261025020000.aaaa@pec.example.it",
		Submission: s,
		Directory:  NewDomainDirectory([]string{"pec.example.it"}, nil),
	}
}

func headerOf(t *testing.T, m *Message) mail.Header {
	t.Helper()
	msg, err := mail.ReadMessage(bytes.NewReader(append(append([]byte{}, m.Header...), "\r\n"...)))
	if err != nil {
		t.Fatalf("outer header does not parse: %v\n%s", err, m.Header)
	}
	return msg.Header
}

// TestSubjectCannotInjectHeaders: a decoded subject may hold CR, LF or NUL
// (RFC 2047 can encode them); none may start a new header line.
func TestSubjectCannotInjectHeaders(t *testing.T) {
	s := &Submission{
		Raw:        []byte("From: a@pec.example.it\r\nTo: b@pec.example.it\r\n\r\nx\r\n"),
		Sender:     "a@pec.example.it",
		From:       "a@pec.example.it",
		To:         []string{"b@pec.example.it"},
		Recipients: []string{"b@pec.example.it"},
		Subject:    "ciao\r\nBcc: victim@example.com\nX-Ricevuta: accettazione\x00\rfine",
		MessageID:  "<m@x>",
	}
	for _, build := range []func(Transaction) (*Message, error){BuildEnvelope, BuildAcceptance} {
		m, err := build(testTx(s))
		if err != nil {
			t.Fatal(err)
		}
		h := headerOf(t, m)
		if h.Get("Bcc") != "" || len(h["X-Ricevuta"]) > 1 {
			t.Fatalf("subject injected a header field:\n%s", m.Header)
		}
		if bytes.Contains(m.Header, []byte{0}) || bytes.Contains(bytes.ReplaceAll(m.Header, []byte("\r\n"), nil), []byte("\r")) {
			t.Fatalf("control characters in the header:\n%q", m.Header)
		}
		for _, line := range strings.Split(string(m.Body), "\r\n") {
			if strings.HasPrefix(line, "Bcc:") {
				t.Fatalf("subject injected a line into the body: %q", line)
			}
		}
	}
}

// TestSubjectEncoding: non-ASCII subjects are RFC 2047-encoded and long
// ones folded, and every header line stays within RFC 5322 §2.1.1 limits.
func TestSubjectEncoding(t *testing.T) {
	for _, subj := range []string{
		"",
		"plain ascii",
		"Città più bella — “citazione” € 中文 ✓",
		strings.Repeat("parola ", 60),
		strings.Repeat("x", 2000),
		strings.Repeat("è", 700),
		"looks =?utf-8?q?encoded?= but is not",
	} {
		var b bytes.Buffer
		writeSubject(&b, "POSTA CERTIFICATA: ", subj)
		for _, line := range strings.Split(strings.TrimSuffix(b.String(), "\r\n"), "\r\n") {
			if len(line) > 998 {
				t.Errorf("subject line of %d octets", len(line))
			}
			for i := 0; i < len(line); i++ {
				if line[i] >= 0x80 {
					t.Fatalf("raw 8-bit octet in subject %q", line)
				}
			}
		}
		msg, err := mail.ReadMessage(strings.NewReader(b.String() + "\r\n"))
		if err != nil {
			t.Fatal(err)
		}
		got, err := new(mime.WordDecoder).DecodeHeader(msg.Header.Get("Subject"))
		if err != nil {
			t.Fatal(err)
		}
		if want := strings.TrimSpace("POSTA CERTIFICATA: " + subj); strings.TrimSpace(got) != want {
			t.Errorf("subject round trip:\n got %q\nwant %q", got, want)
		}
	}
}

func TestEnvelopeWithoutMessageIDAndWithReplyTo(t *testing.T) {
	raw := "From: a@pec.example.it\r\nTo: b@pec.example.it\r\nReply-To: \"Segreteria\" <segr@pec.example.it>\r\nSubject: s\r\n\r\nbody\r\n"
	s := &Submission{
		Raw: []byte(raw), Sender: "a@pec.example.it", From: "a@pec.example.it",
		To: []string{"b@pec.example.it"}, Recipients: []string{"b@pec.example.it"},
		ReplyTo: "segr@pec.example.it", Subject: "s",
	}
	m, err := BuildEnvelope(testTx(s))
	if err != nil {
		t.Fatal(err)
	}
	h := headerOf(t, m)
	if h.Get("Reply-To") != `"Segreteria" <segr@pec.example.it>` {
		t.Errorf("Reply-To = %q: the original's must be kept", h.Get("Reply-To"))
	}
	if h.Get("X-Riferimento-Message-ID") != "" {
		t.Error("X-Riferimento-Message-ID without a client Message-ID")
	}
	if h.Get("X-TipoRicevuta") != "completa" {
		t.Errorf("X-TipoRicevuta = %q, want the default completa", h.Get("X-TipoRicevuta"))
	}
	if !bytes.Contains(m.DatiCert, []byte("<risposte>segr@pec.example.it</risposte>")) || bytes.Contains(m.DatiCert, []byte("<msgid>")) {
		t.Errorf("daticert:\n%s", m.DatiCert)
	}
	got := string(OriginalForEnvelope(s, "id@pec.example.it"))
	want := strings.Replace(raw, "Subject: s\r\n\r\n", "Subject: s\r\nMessage-ID: <id@pec.example.it>\r\n\r\n", 1)
	if got != want {
		t.Errorf("postacert without Message-ID:\n%q\nwant\n%q", got, want)
	}
	// A message that is all header gets the field appended.
	s.Raw = []byte("From: a@pec.example.it\r\nTo: b@pec.example.it")
	if got := string(OriginalForEnvelope(s, "id@pec.example.it")); got != "From: a@pec.example.it\r\nTo: b@pec.example.it\r\nMessage-ID: <id@pec.example.it>\r\n" {
		t.Errorf("all-header postacert: %q", got)
	}
	// A folded Message-ID is replaced whole.
	s.Raw = []byte("From: a@pec.example.it\r\nMessage-ID:\r\n <folded@x>\r\nTo: b@pec.example.it\r\n\r\nb\r\n")
	s.MessageID = "<folded@x>"
	if got := string(OriginalForEnvelope(s, "id@pec.example.it")); got != "From: a@pec.example.it\r\nMessage-ID: <id@pec.example.it>\r\nX-Riferimento-Message-ID: <folded@x>\r\nTo: b@pec.example.it\r\n\r\nb\r\n" {
		t.Errorf("folded Message-ID: %q", got)
	}
}

func TestBuildersRefuseIncompleteTransactions(t *testing.T) {
	s := &Submission{Sender: "a@pec.example.it", To: []string{"b@pec.example.it"}}
	bad := []Transaction{
		{Provider: Provider{Name: "x", Domain: "d"}, At: At(time.Now()), ID: "i@d", Submission: &Submission{To: []string{"b@d"}}, Directory: NewDomainDirectory(nil, nil)},
		{Provider: Provider{Name: "x", Domain: "d"}, At: At(time.Now()), ID: "i@d", Submission: &Submission{Sender: "a@d"}, Directory: NewDomainDirectory(nil, nil)},
		{},
		{Provider: Provider{Name: "x"}, At: At(time.Now()), ID: "i@d", Submission: s, Directory: NewDomainDirectory(nil, nil)},
		{Provider: Provider{Name: "x", Domain: "d"}, ID: "i@d", Submission: s, Directory: NewDomainDirectory(nil, nil)},
		{Provider: Provider{Name: "x", Domain: "d"}, At: At(time.Now()), ID: "<i@d>", Submission: s, Directory: NewDomainDirectory(nil, nil)},
	}
	for i, tx := range bad {
		if _, err := BuildEnvelope(tx); err == nil {
			t.Errorf("case %d: BuildEnvelope accepted an incomplete transaction", i)
		}
	}
	if _, err := BuildNonAcceptance(testTx(s), nil); err == nil {
		t.Error("BuildNonAcceptance without violations succeeded")
	}
	if _, err := BuildVirusNotice(testTx(s), " \r\n"); err == nil {
		t.Error("BuildVirusNotice without a finding succeeded")
	}
}

func TestDatiCertEscaping(t *testing.T) {
	d := DatiCert{
		Tipo: TipoAccettazione, Mittente: "a&b@x", Destinatari: []Recipient{{Address: "<c>@x", Certified: false}},
		Risposte: "r@x", Oggetto: "a < b & \"c\" \x01 \xff fine\r\n", Gestore: "G & G", At: At(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
		Identificativo: "id@x", MsgID: "<m@x>",
	}
	out := string(d.Marshal())
	for _, want := range []string{
		`<postacert tipo="accettazione" errore="nessuno">`,
		`<mittente>a&amp;b@x</mittente>`,
		`<destinatari tipo="esterno">&lt;c&gt;@x</destinatari>`,
		`<oggetto>a &lt; b &amp; &quot;c&quot; ` + "\uFFFD \uFFFD" + ` fine&#xD;&#xA;</oggetto>`,
		`<gestore-emittente>G &amp; G</gestore-emittente>`,
		`<msgid>&lt;m@x&gt;</msgid>`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("daticert lacks %s:\n%s", want, out)
		}
	}
	back, err := ParseDatiCert([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if back.Oggetto != "a < b & \"c\" \uFFFD \uFFFD fine\r\n" || back.Mittente != "a&b@x" || back.MsgID != "<m@x>" {
		t.Errorf("round trip: %+v", back)
	}
}

// FuzzBuildSubject: whatever the decoded subject and sender hold, every
// builder's outer header has the same fields, one per line, and
// daticert.xml stays well-formed.
func FuzzBuildSubject(f *testing.F) {
	f.Add("ciao\r\nBcc: x@y", "a@pec.example.it")
	f.Add("=?utf-8?q?x?=", "\"a\\\"b\"@pec.example.it")
	f.Add(strings.Repeat("è", 400), "a@pec.example.it")
	f.Fuzz(func(t *testing.T, subject, sender string) {
		if strings.TrimSpace(sender) == "" {
			t.Skip("no reverse-path: the builders refuse it (tested above)")
		}
		s := &Submission{
			Raw:        []byte("From: a@pec.example.it\r\nTo: b@pec.example.it\r\n\r\nx\r\n"),
			Sender:     sender,
			To:         []string{"b@pec.example.it"},
			Recipients: []string{"b@pec.example.it"},
			Subject:    subject,
		}
		tx := testTx(s)
		for _, build := range []func(Transaction) (*Message, error){
			BuildEnvelope, BuildAcceptance,
			func(tx Transaction) (*Message, error) { return BuildVirusNotice(tx, subject+"x") },
		} {
			m, err := build(tx)
			if err != nil {
				t.Fatal(err)
			}
			h := headerOf(t, m)
			for name, v := range h {
				if len(v) != 1 {
					t.Fatalf("field %s appears %d times:\n%q", name, len(v), m.Header)
				}
			}
			if h.Get("Bcc") != "" {
				t.Fatalf("injected Bcc:\n%q", m.Header)
			}
			if _, err := ParseDatiCert(m.DatiCert); err != nil {
				t.Fatalf("daticert.xml does not parse: %v\n%s", err, m.DatiCert)
			}
		}
	})
}
