package pec_test

import (
	"bytes"
	"flag"
	"io"
	"mime"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message"
	_ "github.com/emersion/go-message/charset"

	"github.com/pecgw/pecgw/internal/testpki"
	"github.com/pecgw/pecgw/internal/testtool"
	"github.com/pecgw/pecgw/pec"
	"github.com/pecgw/pecgw/signer"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

// The fixed transaction of the golden files: the first second of summer
// time 2026 in Rome, a fixed identifier, the committed test key.
var (
	goldenAt = pec.At(time.Date(2026, 3, 29, 1, 0, 0, 0, time.UTC))
	goldenID = "20260329030000.uws2ljnfuws2ljnfuws2ljnfuu@pec.example.it"
	provider = pec.Provider{Name: "Example PEC S.p.A.", Domain: "pec.example.it"}
	dir      = pec.NewDomainDirectory([]string{"pec.example.it"}, []string{"pec.altro.it"})
)

const original = "Received: from [192.0.2.10] (helo=mua.example)\r\n" +
	"\tby mua.example; Sun, 29 Mar 2026 02:59:58 +0100\r\n" +
	"Date: Sun, 29 Mar 2026 01:59:58 +0100\r\n" +
	"From: \"Mario Rossi\" <mario.rossi@pec.example.it>\r\n" +
	"To: \"Anna Bianchi\" <anna.bianchi@pec.altro.it>,\r\n luca.verdi@example.com\r\n" +
	"Cc: ufficio@pec.example.it\r\n" +
	"Subject: =?iso-8859-1?q?Fattura_n=2E_42_=E8_pronta?=\r\n" +
	"Message-ID: <client-123@mua.example>\r\n" +
	"X-TipoRicevuta: breve\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: text/plain; charset=us-ascii\r\n" +
	"\r\n" +
	"Buongiorno,\r\n" +
	"in allegato la fattura.\r\n" +
	"From here on the body is not a header.\r\n"

func goldenSubmission(t testing.TB) *pec.Submission {
	t.Helper()
	env := pec.SMTPEnvelope{
		From: "mario.rossi@pec.example.it",
		To:   []string{"anna.bianchi@pec.altro.it", "luca.verdi@example.com", "ufficio@pec.example.it"},
	}
	s, v := pec.Inspect([]byte(original), env, pec.Limits{})
	if len(v) > 0 {
		t.Fatalf("golden original refused: %v", v)
	}
	return s
}

func goldenTx(t testing.TB) pec.Transaction {
	return pec.Transaction{Provider: provider, At: goldenAt, ID: goldenID, Submission: goldenSubmission(t), Directory: dir}
}

type kind struct {
	name  string
	build func(pec.Transaction) (*pec.Message, error)
}

var kinds = []kind{
	{"envelope", pec.BuildEnvelope},
	{"acceptance", pec.BuildAcceptance},
	{"non-acceptance", func(tx pec.Transaction) (*pec.Message, error) {
		return pec.BuildNonAcceptance(tx, []pec.Violation{
			{Code: "hidden-bcc", Italian: "presenza di destinatari nascosti (Bcc) non ammessi", English: "hidden Bcc"},
			{Code: "bcc-header", Italian: "presenza dell'intestazione Bcc", English: "Bcc header"},
		})
	}},
	{"virus", func(tx pec.Transaction) (*pec.Message, error) {
		return pec.BuildVirusNotice(tx, "Eicar-Signature")
	}},
}

func signed(t testing.TB, m *pec.Message, s *signer.Signer, at pec.Instant) []byte {
	t.Helper()
	entity, err := s.Sign(m.Body, at.Time())
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	return m.Bytes(entity)
}

// TestGolden compares every builder's signed output (fixed instant,
// identifier and RSA key; PKCS#1 v1.5 signatures are deterministic) with
// the reviewed files in testdata/golden. Regenerate with -update and
// review the diff.
func TestGolden(t *testing.T) {
	s := testpki.Signer(t, "rsa")
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			m, err := k.build(goldenTx(t))
			if err != nil {
				t.Fatal(err)
			}
			got := signed(t, m, s, goldenAt)
			path := filepath.Join("testdata", "golden", k.name+".eml")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./pec -run TestGolden -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from %s; run with -update and review the diff", k.name, path)
			}
		})
	}
}

// TestOpenSSLVerifies has openssl, an independent CMS implementation,
// verify every message kind signed with RSA-2048 and with P-256 against
// the test CA, and xmllint validate its daticert.xml against the DTD.
func TestOpenSSLVerifies(t *testing.T) {
	openssl := testtool.Need(t, "openssl")
	xmllint := testtool.Need(t, "xmllint")
	ca := testpki.CAFile(t)
	for _, keyKind := range []string{"rsa", "p256"} {
		s := testpki.Signer(t, keyKind)
		for _, k := range kinds {
			t.Run(keyKind+"/"+k.name, func(t *testing.T) {
				m, err := k.build(goldenTx(t))
				if err != nil {
					t.Fatal(err)
				}
				msg := signed(t, m, s, goldenAt)
				f := filepath.Join(t.TempDir(), "msg.eml")
				if err := os.WriteFile(f, msg, 0o644); err != nil {
					t.Fatal(err)
				}
				out, err := exec.Command(openssl, "cms", "-verify", "-CAfile", ca, "-in", f, "-out", os.DevNull).CombinedOutput()
				if err != nil || !strings.Contains(string(out), "Verification successful") {
					t.Fatalf("openssl cms -verify: %v\n%s", err, out)
				}
				x := filepath.Join(t.TempDir(), "daticert.xml")
				if err := os.WriteFile(x, daticertOf(t, msg), 0o644); err != nil {
					t.Fatal(err)
				}
				out, err = exec.Command(xmllint, "--noout", "--dtdvalid", filepath.Join("testdata", "daticert.dtd"), x).CombinedOutput()
				if err != nil {
					t.Fatalf("xmllint --dtdvalid: %v\n%s", err, out)
				}
			})
		}
	}
}

// parts walks the message with go-message, an independent MIME parser, and
// returns the leaf parts of the signed multipart/mixed with their headers.
type part struct {
	header message.Header
	body   []byte
}

func parse(t testing.TB, msg []byte) (message.Header, []part) {
	t.Helper()
	e, err := message.Read(bytes.NewReader(msg))
	if err != nil {
		t.Fatalf("go-message cannot read the message: %v", err)
	}
	var parts []part
	var walk func(e *message.Entity, depth int)
	walk = func(e *message.Entity, depth int) {
		mt, _, _ := e.Header.ContentType()
		if mr := e.MultipartReader(); mr != nil && mt != "message/rfc822" {
			for {
				p, err := mr.NextPart()
				if err == io.EOF {
					return
				}
				if err != nil {
					t.Fatalf("reading parts: %v", err)
				}
				walk(p, depth+1)
			}
		}
		b, err := io.ReadAll(e.Body)
		if err != nil {
			t.Fatalf("reading part %s: %v", mt, err)
		}
		parts = append(parts, part{e.Header, b})
	}
	walk(e, 0)
	return e.Header, parts
}

func daticertOf(t testing.TB, msg []byte) []byte {
	t.Helper()
	_, parts := parse(t, msg)
	for _, p := range parts {
		if mt, params, _ := p.header.ContentType(); mt == "application/xml" && params["name"] == "daticert.xml" {
			return p.body
		}
	}
	t.Fatal("no daticert.xml part")
	return nil
}

// TestMessagesFollowTheSpec reads each built message back with independent
// parsers (go-message, net/mail, encoding/xml, the signer's Verify) and
// checks the headers, parts and certification data the PEC rules require,
// and that one instant appears everywhere (DM 2 novembre 2005 art. 9).
func TestMessagesFollowTheSpec(t *testing.T) {
	s := testpki.Signer(t, "p256")
	tx := goldenTx(t)
	const subject = "Fattura n. 42 è pronta"
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			m, err := k.build(tx)
			if err != nil {
				t.Fatal(err)
			}
			msg := signed(t, m, s, goldenAt)
			if bytes.Contains(bytes.ReplaceAll(msg, []byte("\r\n"), nil), []byte("\n")) || bytes.Contains(bytes.ReplaceAll(msg, []byte("\r\n"), nil), []byte("\r")) {
				t.Error("a line does not end in CRLF")
			}
			res, err := signer.Verify(msg, testpki.Roots())
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if !res.SigningTime.Equal(goldenAt.Time()) {
				t.Errorf("signingTime %v, want %v", res.SigningTime, goldenAt.Time())
			}
			hdr, parts := parse(t, msg)
			get := func(name string) string { return hdr.Get(name) }
			dec := new(mime.WordDecoder)
			subj, err := dec.DecodeHeader(get("Subject"))
			if err != nil {
				t.Fatal(err)
			}
			if get("Date") != "Sun, 29 Mar 2026 03:00:00 +0200" {
				t.Errorf("Date = %q", get("Date"))
			}
			if get("X-Riferimento-Message-ID") != "<client-123@mua.example>" {
				t.Errorf("X-Riferimento-Message-ID = %q", get("X-Riferimento-Message-ID"))
			}
			if mt, params, _ := hdr.ContentType(); mt != "multipart/signed" || params["protocol"] != "application/pkcs7-signature" || params["micalg"] != "sha-256" {
				t.Errorf("Content-Type = %s %v", mt, params)
			}
			var wantTipo, wantErrore, prefix string
			switch k.name {
			case "envelope":
				wantTipo, wantErrore, prefix = "posta-certificata", "nessuno", "POSTA CERTIFICATA: "
				if get("From") != `"Per conto di: mario.rossi@pec.example.it" <posta-certificata@pec.example.it>` {
					t.Errorf("From = %q", get("From"))
				}
				if get("X-Trasporto") != "posta-certificata" || get("X-Ricevuta") != "" {
					t.Errorf("X-Trasporto = %q, X-Ricevuta = %q", get("X-Trasporto"), get("X-Ricevuta"))
				}
				if get("Message-ID") != "<"+goldenID+">" {
					t.Errorf("Message-ID = %q", get("Message-ID"))
				}
				if get("Reply-To") != "mario.rossi@pec.example.it" {
					t.Errorf("Reply-To = %q", get("Reply-To"))
				}
				if get("X-TipoRicevuta") != "breve" {
					t.Errorf("X-TipoRicevuta = %q", get("X-TipoRicevuta"))
				}
				// To and Cc are the original's, unchanged (RFC 6109 §3.1.5).
				if !strings.Contains(string(msg), "To: \"Anna Bianchi\" <anna.bianchi@pec.altro.it>,\r\n luca.verdi@example.com\r\nCc: ufficio@pec.example.it\r\n") {
					t.Error("To/Cc not copied unchanged")
				}
				if !strings.HasPrefix(string(msg), "Received: from [192.0.2.10] (helo=mua.example)\r\n\tby mua.example;") {
					t.Error("Received not copied")
				}
				if m.ReversePath != "mario.rossi@pec.example.it" || len(m.ForwardPaths) != 3 {
					t.Errorf("envelope SMTP paths %q %q", m.ReversePath, m.ForwardPaths)
				}
			default:
				if get("From") != "posta-certificata@pec.example.it" || get("To") != "mario.rossi@pec.example.it" {
					t.Errorf("From = %q, To = %q", get("From"), get("To"))
				}
				if get("X-Trasporto") != "" || get("Reply-To") != "" {
					t.Error("a receipt carries X-Trasporto or Reply-To")
				}
				if !strings.HasSuffix(get("Message-ID"), "@pec.example.it>") || get("Message-ID") == "<"+goldenID+">" {
					t.Errorf("receipt Message-ID = %q", get("Message-ID"))
				}
				if m.ReversePath != "posta-certificata@pec.example.it" || len(m.ForwardPaths) != 1 || m.ForwardPaths[0] != "mario.rossi@pec.example.it" {
					t.Errorf("receipt SMTP paths %q %q", m.ReversePath, m.ForwardPaths)
				}
				switch k.name {
				case "acceptance":
					wantTipo, wantErrore, prefix = "accettazione", "nessuno", "ACCETTAZIONE: "
				case "non-acceptance":
					wantTipo, wantErrore, prefix = "non-accettazione", "altro", "AVVISO DI NON ACCETTAZIONE: "
				case "virus":
					wantTipo, wantErrore, prefix = "non-accettazione", "virus", "AVVISO DI NON ACCETTAZIONE PER VIRUS: "
					if get("X-VerificaSicurezza") != "errore" {
						t.Errorf("X-VerificaSicurezza = %q", get("X-VerificaSicurezza"))
					}
				}
				if get("X-Ricevuta") != wantTipo {
					t.Errorf("X-Ricevuta = %q", get("X-Ricevuta"))
				}
			}
			if subj != prefix+subject {
				t.Errorf("Subject = %q, want %q", subj, prefix+subject)
			}

			// Parts: text, daticert.xml and, only in the envelope, postacert.eml.
			var text, eml []byte
			var xmlData []byte
			for _, p := range parts {
				mt, params, _ := p.header.ContentType()
				_, dparams, _ := p.header.ContentDisposition()
				switch {
				case mt == "text/plain":
					if params["charset"] != "iso-8859-1" || p.header.Get("Content-Transfer-Encoding") != "quoted-printable" {
						t.Errorf("text part %v %q", params, p.header.Get("Content-Transfer-Encoding"))
					}
					text = p.body
				case mt == "application/xml":
					if params["name"] != "daticert.xml" || dparams["filename"] != "daticert.xml" || p.header.Get("Content-Transfer-Encoding") != "base64" {
						t.Errorf("daticert part %v %v", params, dparams)
					}
					xmlData = p.body
				case mt == "message/rfc822":
					if params["name"] != "postacert.eml" || dparams["filename"] != "postacert.eml" {
						t.Errorf("postacert part %v %v", params, dparams)
					}
					eml = p.body
				case mt == "application/pkcs7-signature":
				default:
					t.Errorf("unexpected part %s", mt)
				}
			}
			if (eml != nil) != (k.name == "envelope") {
				t.Errorf("postacert.eml present = %v", eml != nil)
			}
			if text == nil || xmlData == nil {
				t.Fatal("text or daticert.xml missing")
			}
			// go-message decoded the text to UTF-8.
			if !strings.Contains(string(text), "Il giorno 29/03/2026 alle ore 03:00:00 (+0200) ") ||
				!strings.Contains(string(text), "Identificativo messaggio: "+goldenID) ||
				!strings.Contains(string(text), "\""+subject+"\"") {
				t.Errorf("text part:\n%s", text)
			}
			if k.name == "acceptance" && !strings.Contains(string(text), "anna.bianchi@pec.altro.it (\"posta certificata\")\r\nluca.verdi@example.com (\"posta ordinaria\")") {
				t.Errorf("acceptance text does not type the recipients:\n%s", text)
			}
			if k.name == "non-acceptance" && !strings.Contains(string(text), "a causa di presenza di destinatari nascosti (Bcc) non ammessi; presenza dell'intestazione Bcc.") {
				t.Errorf("non-acceptance text lacks the causes:\n%s", text)
			}

			dc, err := pec.ParseDatiCert(xmlData)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(xmlData, []byte(`<?xml version="1.0" encoding="UTF-8"?>`)) {
				t.Error("daticert.xml lacks the UTF-8 declaration")
			}
			if dc.Tipo != wantTipo || dc.Errore != wantErrore {
				t.Errorf("postacert tipo=%q errore=%q", dc.Tipo, dc.Errore)
			}
			if dc.Mittente != "mario.rossi@pec.example.it" || dc.Risposte != "mario.rossi@pec.example.it" || dc.Oggetto != subject {
				t.Errorf("intestazione %+v", dc)
			}
			wantDest := []string{"certificato:anna.bianchi@pec.altro.it", "esterno:luca.verdi@example.com", "certificato:ufficio@pec.example.it"}
			var gotDest []string
			for _, d := range dc.Destinatari {
				gotDest = append(gotDest, d.Tipo()+":"+d.Address)
			}
			if strings.Join(gotDest, " ") != strings.Join(wantDest, " ") {
				t.Errorf("destinatari %v, want %v", gotDest, wantDest)
			}
			if dc.Gestore != "Example PEC S.p.A." || dc.ZoneText != "+0200" || dc.Day != "29/03/2026" || dc.Clock != "03:00:00" {
				t.Errorf("dati %+v", dc)
			}
			if dc.Identificativo != goldenID || dc.MsgID != "<client-123@mua.example>" {
				t.Errorf("identificativo %q msgid %q", dc.Identificativo, dc.MsgID)
			}
			if (dc.Ricevuta != "") != (k.name == "envelope") || (dc.Ricevuta != "" && dc.Ricevuta != "breve") {
				t.Errorf("ricevuta %+v", dc.Ricevuta)
			}
			if (dc.ErroreEsteso != "") != (k.name == "non-acceptance" || k.name == "virus") {
				t.Errorf("errore-esteso %q", dc.ErroreEsteso)
			}
			if k.name == "envelope" {
				checkPostacert(t, eml)
			}
		})
	}
}

// checkPostacert: the original byte for byte, but for the Message-ID
// replaced by the PEC identifier and X-Riferimento-Message-ID added
// (RFC 6109 §2.2.1).
func checkPostacert(t *testing.T, eml []byte) {
	t.Helper()
	want := strings.Replace(original, "Message-ID: <client-123@mua.example>\r\n",
		"Message-ID: <"+goldenID+">\r\nX-Riferimento-Message-ID: <client-123@mua.example>\r\n", 1)
	if string(eml) != want {
		t.Errorf("postacert.eml:\n%q\nwant\n%q", eml, want)
	}
	m, err := mail.ReadMessage(bytes.NewReader(eml))
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get("Message-ID") != "<"+goldenID+">" {
		t.Errorf("postacert Message-ID %q", m.Header.Get("Message-ID"))
	}
}

// TestBuildEnvelopeRoom: the envelope built with room before its body is
// the envelope BuildEnvelope builds, and EnvelopeBuffer gives its header
// fields and MIME-Version, the room, then the body, in one array with
// capacity for the tail.
func TestBuildEnvelopeRoom(t *testing.T) {
	want, err := pec.BuildEnvelope(goldenTx(t))
	if err != nil {
		t.Fatal(err)
	}
	m, err := pec.BuildEnvelopeRoom(goldenTx(t), 150, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m.Body, want.Body) || !bytes.Equal(m.Header, want.Header) {
		t.Fatal("the envelope built with room differs")
	}
	if _, ok := m.EnvelopeBuffer(149); ok {
		t.Error("EnvelopeBuffer with another room: ok")
	}
	buf, ok := m.EnvelopeBuffer(150)
	if !ok {
		t.Fatal("EnvelopeBuffer: not ok")
	}
	head := want.AppendHead(nil)
	if !bytes.HasPrefix(buf, head) || !bytes.Equal(buf[len(head)+150:], want.Body) || &buf[len(buf)-1] != &m.Body[len(m.Body)-1] || cap(buf)-len(buf) < 4096 {
		t.Errorf("EnvelopeBuffer: %d octets (cap %d), head %v, body %v", len(buf), cap(buf), bytes.HasPrefix(buf, head), bytes.Equal(buf[len(head)+150:], want.Body))
	}
}
