package signer

import (
	"bytes"
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/pecgw/pecgw/internal/testtool"
)

// testAt is the instant every deterministic test signs at: inside the
// validity of the committed fixtures (2026-11-23 to 2046-11-18).
var testAt = time.Date(2027, time.January, 14, 10, 30, 0, 0, time.FixedZone("CET", 3600))

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fixtureSigner returns a Signer with a committed OpenSSL-made key and
// certificate: kind is "rsa" (PKCS #1, 2048 bits) or "p256" (SEC1).
func fixtureSigner(t testing.TB, kind string) *Signer {
	t.Helper()
	s, err := Load(readTestdata(t, kind+"-key.pem"), readTestdata(t, kind+".pem"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// fixtureRoots is a pool holding the CA of the committed fixtures.
func fixtureRoots(t testing.TB) *x509.CertPool {
	t.Helper()
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(readTestdata(t, "ca.pem")) {
		t.Fatal("testdata/ca.pem: no certificate")
	}
	return roots
}

// fixtureContent is a MIME entity with LF line ends, as on disk.
func fixtureContent(t testing.TB) []byte {
	t.Helper()
	return readTestdata(t, "content.eml")
}

// asMessage makes a whole message of a signed entity by putting the
// header fields a mail needs in front of it.
func asMessage(entity []byte) []byte {
	var b bytes.Buffer
	b.WriteString("From: posta-certificata@pec.example.it\r\n")
	b.WriteString("To: destinatario@pec.example.org\r\n")
	b.WriteString("Subject: ACCETTAZIONE: prova\r\n")
	b.WriteString("MIME-Version: 1.0\r\n")
	b.Write(entity)
	return b.Bytes()
}

// signedMessage signs the fixture content with the fixture signer of kind
// and returns the whole message.
func signedMessage(t testing.TB, kind string) []byte {
	t.Helper()
	out, err := fixtureSigner(t, kind).Sign(fixtureContent(t), testAt)
	if err != nil {
		t.Fatal(err)
	}
	return asMessage(out)
}

// writeTemp writes data into a new file in t's temporary folder.
func writeTemp(t testing.TB, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// runOpenSSL runs openssl with args and returns its combined output,
// failing the test when it exits non-zero.
func runOpenSSL(t testing.TB, args ...string) string {
	t.Helper()
	bin := testtool.Need(t, "openssl")
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl %q: %v\n%s", args, err, out)
	}
	return string(out)
}

// toLF turns every CRLF into LF, as a Unix mailbox stores mail.
func toLF(b []byte) []byte {
	return bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n"))
}
