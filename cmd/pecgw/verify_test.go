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
