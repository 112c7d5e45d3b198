package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pecgw/pecgw/internal/testpki"
	"github.com/pecgw/pecgw/internal/testtool"
	"github.com/pecgw/pecgw/pec"
	"github.com/pecgw/pecgw/signer"
)

func runCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(args, strings.NewReader(""), &out, &errOut)
	return code, out.String(), errOut.String()
}

// TestVerifySamples: the four real Aruba 2014 messages verify for
// integrity (their chain expired long ago) and show the right type.
func TestVerifySamples(t *testing.T) {
	dir := testtool.SharedSamples(t)
	want := map[string]string{
		"oca_message1.eml":           "busta di trasporto (transport envelope) [posta-certificata]",
		"oca_message2.eml":           "busta di trasporto (transport envelope) [posta-certificata]",
		"oca_aruba_accettazione.eml": "ricevuta di accettazione (acceptance receipt) [accettazione]",
		"oca_aruba_consegna.eml":     "ricevuta di avvenuta consegna (delivery receipt) [avvenuta-consegna]",
	}
	for name, typ := range want {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, name)
			code, out, errOut := runCmd(t, "verify", path)
			if code != 0 {
				t.Fatalf("exit %d\n%s%s", code, out, errOut)
			}
			for _, line := range []string{"type:         " + typ, "signature:    signature valid", "result:       valid", "sender:       ", "recipients:   "} {
				if !strings.Contains(out, line) {
					t.Errorf("output lacks %q:\n%s", line, out)
				}
			}

			// One letter changed in the signed text part: not valid.
			msg, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			i := bytes.Index(msg, []byte("Il giorno"))
			if i < 0 {
				t.Fatal("no text part found to tamper with")
			}
			msg[i+3] = 'G'
			bad := filepath.Join(t.TempDir(), name)
			if err := os.WriteFile(bad, msg, 0o644); err != nil {
				t.Fatal(err)
			}
			code, out, _ = runCmd(t, "verify", bad)
			if code != 1 || !strings.Contains(out, "signature:    INVALID") || !strings.Contains(out, "result:       NOT VALID") {
				t.Errorf("tampered copy: exit %d\n%s", code, out)
			}
		})
	}
}

func ourMessage(t *testing.T, tamperHeader bool) string {
	t.Helper()
	if !tamperHeader {
		return ourMessageWith(t, nil)
	}
	return ourMessageWith(t, func(m *pec.Message) {
		// The outer header is not signed: claim another type there.
		m.Header = bytes.Replace(m.Header, []byte("X-Ricevuta: accettazione"), []byte("X-Ricevuta: avvenuta-consegna"), 1)
	})
}

// ourMessageWith is an acceptance receipt built and signed with the test
// key, edit (when not nil) applied to it before it is signed.
func ourMessageWith(t *testing.T, edit func(m *pec.Message)) string {
	t.Helper()
	raw := "Date: Mon, 23 Nov 2026 10:00:00 +0100\r\nFrom: a@pec.example.it\r\nTo: b@pec.altro.it, c@example.com\r\nSubject: prova\r\nMessage-ID: <m1@client>\r\n\r\nciao\r\n"
	s, v := pec.Inspect([]byte(raw), pec.SMTPEnvelope{From: "a@pec.example.it", To: []string{"b@pec.altro.it", "c@example.com"}}, pec.Limits{})
	if len(v) > 0 {
		t.Fatal(v)
	}
	at := pec.At(time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC))
	tx := pec.Transaction{
		Provider: pec.Provider{Name: testpki.ProviderName, Domain: testpki.Domain}, At: at,
		ID: "20261123100000.x@pec.example.it", Submission: s,
		Directory: pec.NewDomainDirectory([]string{testpki.Domain}, []string{"pec.altro.it"}),
	}
	m, err := pec.BuildAcceptance(tx)
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(m)
	}
	entity, err := testpki.Signer(t, "p256").Sign(m.Body, at.Time())
	if err != nil {
		t.Fatal(err)
	}
	msg := m.Bytes(entity)
	p := filepath.Join(t.TempDir(), "msg.eml")
	if err := os.WriteFile(p, msg, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestVerifyOwnMessagesWithChain(t *testing.T) {
	p := ourMessage(t, false)
	code, out, errOut := runCmd(t, "verify", p, "--ca", testpki.CAFile(t))
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	for _, line := range []string{
		"type:         ricevuta di accettazione (acceptance receipt) [accettazione]",
		"identifier:   20261123100000.x@pec.example.it",
		"recipients:   b@pec.altro.it (certificato)\n              c@example.com (esterno)",
		"time:         23/11/2026 10:00:00 (+0100)",
		"signed at:    23/11/2026 10:00:00 (+0100)",
		"algorithm:    sha-256",
		"chain:        valid",
	} {
		if !strings.Contains(out, line) {
			t.Errorf("output lacks %q:\n%s", line, out)
		}
	}
	if strings.Contains(out, "profile:") {
		t.Errorf("the test certificate follows RFC 6109 §5.5, yet:\n%s", out)
	}

	// Trusting another CA: the chain does not verify, exit 1.
	otherCA := filepath.Join(t.TempDir(), "other.pem")
	if err := os.WriteFile(otherCA, []byte(sampleOtherCA(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, _ = runCmd(t, "verify", "--ca", otherCA, p)
	if code != 1 || !strings.Contains(out, "chain:        INVALID") || !strings.Contains(out, "signature:    signature valid") {
		t.Errorf("untrusted chain: exit %d\n%s", code, out)
	}
}

func TestVerifyHeaderMustAgreeWithDatiCert(t *testing.T) {
	code, out, _ := runCmd(t, "verify", ourMessage(t, true))
	if code != 1 || !strings.Contains(out, `MISMATCH: the header says "avvenuta-consegna", daticert.xml says "accettazione"`) {
		t.Errorf("exit %d\n%s", code, out)
	}
}

func TestVerifyUsageAndBadFiles(t *testing.T) {
	if code, _, errOut := runCmd(t, "verify"); code != 2 || !strings.Contains(errOut, "want one message file") {
		t.Errorf("no file: exit %d, %s", code, errOut)
	}
	if code, _, errOut := runCmd(t, "verify", "--nope", "x"); code != 2 || !strings.Contains(errOut, "flag provided but not defined") {
		t.Errorf("bad flag: exit %d, %s", code, errOut)
	}
	if code, _, errOut := runCmd(t, "verify", "does-not-exist.eml"); code != 1 || !strings.Contains(errOut, "does-not-exist.eml") {
		t.Errorf("missing file: exit %d, %s", code, errOut)
	}
	plain := filepath.Join(t.TempDir(), "plain.eml")
	if err := os.WriteFile(plain, []byte("From: a@b\r\nSubject: x\r\n\r\nhello\r\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out, _ := runCmd(t, "verify", plain); code != 1 || !strings.Contains(out, "INVALID: not a multipart/signed message") {
		t.Errorf("unsigned message: exit %d\n%s", code, out)
	}
	notPEM := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(notPEM, []byte("nothing"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := runCmd(t, "verify", plain, "--ca", notPEM); code != 1 || !strings.Contains(errOut, "no PEM certificate") {
		t.Errorf("bad CA file: exit %d, %s", code, errOut)
	}
	if code, _, _ := runCmd(t, "frobnicate"); code != 2 {
		t.Errorf("unknown command: exit %d", code)
	}
	if code, out, _ := runCmd(t, "version"); code != 0 || !strings.HasPrefix(out, "pecgw ") {
		t.Errorf("version: exit %d %q", code, out)
	}
}

// sampleOtherCA is a CA that did not sign the test certificates.
func sampleOtherCA(t *testing.T) string {
	t.Helper()
	p, err := signer.GenerateDevPKI(signer.DevPKIOptions{Domain: "pec.other.it", ProviderName: "Other", KeyType: "p256"})
	if err != nil {
		t.Fatal(err)
	}
	files, err := p.PEM()
	if err != nil {
		t.Fatal(err)
	}
	return string(files["ca.pem"])
}

// TestVerifyAnomalyEnvelope: a busta di anomalia (RFC 6109 §3.2.2) is
// signed but carries no daticert.xml; it is valid when its signature is.
func TestVerifyAnomalyEnvelope(t *testing.T) {
	inner := "Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n" +
		"From: x@example.com\r\nTo: y@pec.example.it\r\nSubject: hi\r\n\r\nhello\r\n\r\n--b--\r\n"
	at := time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC)
	entity, err := testpki.Signer(t, "rsa").Sign([]byte(inner), at)
	if err != nil {
		t.Fatal(err)
	}
	msg := "Date: Mon, 23 Nov 2026 10:00:00 +0100\r\nFrom: \"Per conto di: x@example.com\" <posta-certificata@pec.example.it>\r\n" +
		"To: y@pec.example.it\r\nSubject: ANOMALIA MESSAGGIO: hi\r\nX-Trasporto: errore\r\nMIME-Version: 1.0\r\n" + string(entity)
	p := filepath.Join(t.TempDir(), "anomalia.eml")
	if err := os.WriteFile(p, []byte(msg), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, _ := runCmd(t, "verify", p)
	if code != 0 || !strings.Contains(out, "type:         busta di anomalia") || !strings.Contains(out, "signature:    signature valid") {
		t.Errorf("exit %d\n%s", code, out)
	}
}

// TestVerifyOuterHeader: the outer Subject, From, To, Cc and Date are not
// signed; an acceptance receipt whose outer header was edited still
// verifies, and pecgw verify warns of each difference, or with --strict
// exits 1.
func TestVerifyOuterHeader(t *testing.T) {
	clean := ourMessage(t, false)
	code, out, _ := runCmd(t, "verify", "--strict", clean)
	if code != 0 || !strings.Contains(out, "header:       Subject, From, To, Cc and Date agree with what is signed") {
		t.Errorf("untouched receipt, --strict: exit %d\n%s", code, out)
	}
	for _, c := range []struct{ name, old, new, warning string }{
		{"subject", "Subject: ACCETTAZIONE: prova", "Subject: ACCETTAZIONE: fattura pagata",
			`Subject "ACCETTAZIONE: fattura pagata", but what is signed says "ACCETTAZIONE: prova" (daticert oggetto "prova")`},
		{"to", "To: a@pec.example.it", "To: b@pec.altro.it", "To b@pec.altro.it, but the message is for the sender the signed daticert names, a@pec.example.it"},
		{"cc", "To: a@pec.example.it", "To: a@pec.example.it\r\nCc: spia@example.com", "Cc spia@example.com, in a message only for the sender"},
		{"from", "From: posta-certificata@pec.example.it", "From: posta-certificata@pec.falso.it", "From posta-certificata@pec.falso.it, but the message is signed by posta-certificata@pec.example.it"},
		{"date", "Date: Mon, 23 Nov 2026 10:00:00 +0100", "Date: Tue, 24 Nov 2026 10:00:00 +0100", "Date Tue, 24 Nov 2026 10:00:00 +0100, but the signed daticert data is 23/11/2026 10:00:00 (+0100)"},
		{"second subject", "Subject: ACCETTAZIONE: prova", "Subject: ACCETTAZIONE: prova\r\nSubject: altro", "the outer header has 2 Subject fields"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := ourMessageWith(t, func(m *pec.Message) {
				if !bytes.Contains(m.Header, []byte(c.old)) {
					t.Fatalf("no %q in the header:\n%s", c.old, m.Header)
				}
				m.Header = bytes.Replace(m.Header, []byte(c.old), []byte(c.new), 1)
			})
			code, out, _ := runCmd(t, "verify", p, "--ca", testpki.CAFile(t))
			if code != 0 || !strings.Contains(out, "header:       WARNING: "+c.warning) || !strings.Contains(out, "signature:    signature valid") ||
				!strings.Contains(out, "result:       valid") {
				t.Errorf("edited %s: exit %d\n%s\nwant a warning %q", c.name, code, out, c.warning)
			}
			code, out, _ = runCmd(t, "verify", "--strict", p, "--ca", testpki.CAFile(t))
			if code != 1 || !strings.Contains(out, "header:       MISMATCH: "+c.warning) || !strings.Contains(out, "result:       NOT VALID") {
				t.Errorf("edited %s, --strict: exit %d\n%s", c.name, code, out)
			}
		})
	}
}

// TestVerifyOuterHeaderOfEnvelope: an envelope's outer To and Cc are the
// original's, as its signed postacert.eml has them; its From says for
// whom ("Per conto di: <mittente>").
func TestVerifyOuterHeaderOfEnvelope(t *testing.T) {
	raw := "Date: Mon, 23 Nov 2026 10:00:00 +0100\r\nFrom: a@pec.example.it\r\nTo: b@pec.altro.it\r\nCc: c@example.com\r\nSubject: =?utf-8?q?citt=C3=A0?=\r\nMessage-ID: <m1@client>\r\n\r\nciao\r\n"
	s, v := pec.Inspect([]byte(raw), pec.SMTPEnvelope{From: "a@pec.example.it", To: []string{"b@pec.altro.it", "c@example.com"}}, pec.Limits{})
	if len(v) > 0 {
		t.Fatal(v)
	}
	at := pec.At(time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC))
	tx := pec.Transaction{Provider: pec.Provider{Name: testpki.ProviderName, Domain: testpki.Domain}, At: at,
		ID: "20261123100000.x@pec.example.it", Submission: s, Directory: pec.NewDomainDirectory([]string{testpki.Domain}, []string{"pec.altro.it"})}
	write := func(edit func([]byte) []byte) string {
		m, err := pec.BuildEnvelope(tx)
		if err != nil {
			t.Fatal(err)
		}
		m.Header = edit(m.Header)
		entity, err := testpki.Signer(t, "p256").Sign(m.Body, at.Time())
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(t.TempDir(), "env.eml")
		if err := os.WriteFile(p, m.Bytes(entity), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if code, out, _ := runCmd(t, "verify", "--strict", write(func(h []byte) []byte { return h })); code != 0 || !strings.Contains(out, "agree with what is signed") {
		t.Errorf("untouched envelope: exit %d\n%s", code, out)
	}
	for old, warning := range map[string]string{
		"Cc: c@example.com":       "Cc d@example.com, but the signed postacert.eml says Cc c@example.com",
		"Per conto di: a@pec.":    `From says "Per conto di: boss@pec.example.it", but the signed daticert mittente is a@pec.example.it`,
		"POSTA CERTIFICATA: =?ut": `Subject "POSTA CERTIFICATA: altro", but what is signed says "POSTA CERTIFICATA: città"`,
	} {
		p := write(func(h []byte) []byte {
			switch old {
			case "Cc: c@example.com":
				return bytes.Replace(h, []byte(old), []byte("Cc: d@example.com"), 1)
			case "Per conto di: a@pec.":
				return bytes.Replace(h, []byte("Per conto di: a@pec.example.it"), []byte("Per conto di: boss@pec.example.it"), 1)
			}
			i := bytes.Index(h, []byte("Subject: "))
			j := bytes.Index(h[i:], []byte("\r\nTo:")) + i
			return append(append(append([]byte{}, h[:i]...), "Subject: POSTA CERTIFICATA: altro"...), h[j:]...)
		})
		if code, out, _ := runCmd(t, "verify", "--strict", p); code != 1 || !strings.Contains(out, "MISMATCH: "+warning) {
			t.Errorf("edited %q: exit %d\n%s\nwant %q", old, code, out, warning)
		}
	}
}
