package signer

import (
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pecgw/pecgw/internal/testtool"
	"github.com/smallstep/pkcs7"
)

func TestVerifyOwnOutput(t *testing.T) {
	for _, kind := range []string{"rsa", "p256"} {
		t.Run(kind, func(t *testing.T) {
			msg := signedMessage(t, kind)
			want := bytes.ReplaceAll(fixtureContent(t), []byte("\n"), []byte("\r\n"))

			res, err := Verify(msg, nil)
			if err != nil {
				t.Fatal(err)
			}
			if res.ChainVerified || res.Legacy || res.Digest != "sha-256" || !res.SigningTime.Equal(testAt) {
				t.Errorf("without roots: ChainVerified %v, Legacy %v, Digest %q, SigningTime %v; want false, false, sha-256, %v",
					res.ChainVerified, res.Legacy, res.Digest, res.SigningTime, testAt)
			}
			if !res.Signer.Equal(fixtureSigner(t, kind).Certificate()) || len(res.Certificates) != 1 {
				t.Errorf("signer %v with %d certificates, want the fixture certificate alone", res.Signer.Subject, len(res.Certificates))
			}
			if !bytes.Equal(res.Content, want) {
				t.Errorf("Content is not the canonical signed entity:\n%q", res.Content)
			}

			res, err = Verify(msg, fixtureRoots(t))
			if err != nil {
				t.Fatal(err)
			}
			if !res.ChainVerified {
				t.Error("ChainVerified false with the right root")
			}
		})
	}
}

// TestVerifyDetectsAlteration changes each byte of the signed part in turn:
// every change must be caught as an altered message.
func TestVerifyDetectsAlteration(t *testing.T) {
	msg := signedMessage(t, "rsa")
	content := bytes.ReplaceAll(fixtureContent(t), []byte("\n"), []byte("\r\n"))
	start := bytes.Index(msg, content)
	if start < 0 {
		t.Fatal("signed content not found in the message")
	}
	for i := start; i < start+len(content); i++ {
		bad := bytes.Clone(msg)
		if c := bad[i]; c >= 'A' && c <= 'z' {
			bad[i] ^= 0x20 // swap case
		} else {
			bad[i] ^= 0x01
		}
		_, err := Verify(bad, nil)
		if !errors.Is(err, ErrBadSignature) {
			t.Fatalf("byte %d of the signed part changed from %q to %q: Verify returned %v, want ErrBadSignature",
				i-start, msg[i], bad[i], err)
		}
	}
}

func TestVerifyLFCopy(t *testing.T) {
	for _, kind := range []string{"rsa", "p256"} {
		msg := toLF(signedMessage(t, kind))
		if bytes.Contains(msg, []byte("\r")) {
			t.Fatal("LF copy still has CR")
		}
		if _, err := Verify(msg, fixtureRoots(t)); err != nil {
			t.Errorf("%s, LF line ends: %v", kind, err)
		}
	}
}

// TestVerifyBinarySignature: a binary signature part (RFC 8551 §3.1.3) is
// taken as it stands, even in a message stored with LF line ends, while the
// signed part is still canonicalised.
func TestVerifyBinarySignature(t *testing.T) {
	s := fixtureSigner(t, "rsa")
	content := fixtureContent(t) // LF line ends
	der, err := s.signedData(toCRLF(content), testAt, standardAttributes)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(der, []byte("\n")) {
		t.Fatal("want a DER signature containing an LF byte for this test")
	}
	var msg bytes.Buffer
	msg.WriteString("MIME-Version: 1.0\nContent-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256; boundary=\"b\"\n\n")
	msg.WriteString("--b\n")
	msg.Write(content)
	msg.WriteString("\n--b\nContent-Type: application/pkcs7-signature\nContent-Transfer-Encoding: binary\n\n")
	msg.Write(der)
	msg.WriteString("\n--b--\n")
	res, err := Verify(msg.Bytes(), fixtureRoots(t))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(res.Content, toCRLF(content)) {
		t.Errorf("Content %q", res.Content)
	}
}

// TestVerifyContentIsACopy: the Result does not alias the caller's buffer.
func TestVerifyContentIsACopy(t *testing.T) {
	msg := signedMessage(t, "rsa")
	res, err := Verify(msg, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(res.Content)
	for i := range msg {
		msg[i] = 'x'
	}
	if !bytes.Equal(res.Content, want) {
		t.Fatal("Result.Content changed with the message buffer")
	}
}

// TestVerifyLegacyOpenSSL checks the form the 2014 providers sent, made here
// and now by OpenSSL: SHA-1, application/x-pkcs7-signature.
func TestVerifyLegacyOpenSSL(t *testing.T) {
	testtool.Need(t, "openssl")
	p, err := GenerateDevPKI(DevPKIOptions{Domain: "pec.example.it", ProviderName: "Example PEC S.p.A."})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := p.WriteDir(filepath.Join(dir, "pki")); err != nil {
		t.Fatal(err)
	}
	content := filepath.Join(dir, "content.txt")
	if err := os.WriteFile(content, fixtureContent(t), 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "msg.eml")
	runOpenSSL(t, "smime", "-sign", "-md", "sha1", "-in", content,
		"-signer", filepath.Join(dir, "pki", DevSigningFile), "-inkey", filepath.Join(dir, "pki", DevSigningKeyFile), "-out", out)
	msg, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(p.CACert)
	res, err := Verify(msg, roots)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Legacy || res.Digest != "sha1" || !res.ChainVerified || !res.Signer.Equal(p.SigningCert) {
		t.Errorf("Legacy %v, Digest %q, ChainVerified %v; want true, sha1, true", res.Legacy, res.Digest, res.ChainVerified)
	}
	if time.Since(res.SigningTime).Abs() > time.Hour {
		t.Errorf("signing time %v, want about now", res.SigningTime)
	}
	bad := bytes.Replace(msg, []byte("Il giorno"), []byte("Il Giorno"), 1)
	if bytes.Equal(bad, msg) {
		t.Fatal("test text not found")
	}
	if _, err := Verify(bad, nil); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("altered legacy message: %v, want ErrBadSignature", err)
	}
}

// TestVerifyCommittedLegacy keeps the committed OpenSSL legacy message (a
// fuzz seed) honest.
func TestVerifyCommittedLegacy(t *testing.T) {
	res, err := Verify(readTestdata(t, "legacy-sha1.eml"), fixtureRoots(t))
	if err != nil {
		t.Fatal(err)
	}
	if !res.Legacy || res.Digest != "sha1" || !res.ChainVerified {
		t.Errorf("Legacy %v, Digest %q, ChainVerified %v; want true, sha1, true", res.Legacy, res.Digest, res.ChainVerified)
	}
}

// TestVerifySamples reads the four signed messages Aruba PEC produced in
// 2014 (kept beside the repository, not in it).
func TestVerifySamples(t *testing.T) {
	dir := testtool.SharedSamples(t)
	names, err := filepath.Glob(filepath.Join(dir, "*.eml"))
	if err != nil || len(names) != 4 {
		t.Fatalf("want the 4 samples in %s, found %d (%v)", dir, len(names), err)
	}
	for _, name := range names {
		t.Run(filepath.Base(name), func(t *testing.T) {
			msg, err := os.ReadFile(name)
			if err != nil {
				t.Fatal(err)
			}
			res, err := Verify(msg, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !res.Legacy || res.Digest != "sha1" || res.ChainVerified {
				t.Errorf("Legacy %v, Digest %q, ChainVerified %v; want true, sha1, false", res.Legacy, res.Digest, res.ChainVerified)
			}
			if got := res.Signer.EmailAddresses; len(got) != 1 || got[0] != "posta-certificata@pec.aruba.it" {
				t.Errorf("signer SAN %q, want posta-certificata@pec.aruba.it", got)
			}
			if len(res.Certificates) != 2 {
				t.Errorf("%d certificates, want signer and DigitPA CA1", len(res.Certificates))
			}
			if res.SigningTime.Year() != 2014 || res.SigningTime.Month() != time.November {
				t.Errorf("signing time %v, want November 2014", res.SigningTime)
			}
			if !bytes.HasPrefix(res.Content, []byte("MIME-Version: 1.0\r\nContent-Type: multipart/mixed;")) {
				t.Errorf("Content starts %q", res.Content[:min(60, len(res.Content))])
			}

			// The 2014 chain is SHA-1 and long expired: trust fails, and
			// says so as a trust failure, not as alteration.
			if _, err := Verify(msg, fixtureRoots(t)); !errors.Is(err, ErrUntrusted) {
				t.Errorf("with foreign roots: %v, want ErrUntrusted", err)
			}

			bad := bytes.Replace(msg, []byte("Il giorno"), []byte("Il giornO"), 1)
			if bytes.Equal(bad, msg) {
				t.Fatal("text to alter not found")
			}
			if _, err := Verify(bad, nil); !errors.Is(err, ErrBadSignature) {
				t.Errorf("tampered sample: %v, want ErrBadSignature", err)
			}
		})
	}
}

func TestVerifyHeaderVariants(t *testing.T) {
	msg := signedMessage(t, "rsa")
	for _, tc := range []struct{ name, from, to string }{
		{"quoted micalg", "micalg=sha-256;", `micalg="sha-256";`},
		{"sha1 micalg", "micalg=sha-256;", "micalg=sha1;"},
		{"upper-case protocol", "application/pkcs7-signature\";", "APPLICATION/PKCS7-SIGNATURE\";"},
		{"legacy protocol", "protocol=\"application/pkcs7-signature\"", "protocol=\"application/x-pkcs7-signature\""},
		{"unfolded", ";\r\n\tmicalg", "; micalg"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := bytes.Replace(msg, []byte(tc.from), []byte(tc.to), 1)
			if bytes.Equal(m, msg) {
				t.Fatalf("%q not found", tc.from)
			}
			res, err := Verify(append([]byte("Return-Path: <posta-certificata@pec.example.it>\r\nReceived: from x\r\n\tby y; Thu, 14 Jan 2027 10:30:00 +0100\r\n"), m...), nil)
			if err != nil {
				t.Fatal(err)
			}
			if res.Legacy != strings.Contains(tc.to, "x-pkcs7") {
				t.Errorf("Legacy %v", res.Legacy)
			}
		})
	}
	// Linear white space after a delimiter is allowed (RFC 2046 §5.1.1).
	b, _, _ := signedParts(t, mustSign(t))
	padded := bytes.ReplaceAll(msg, []byte("--"+b+"\r\n"), []byte("--"+b+" \t \r\n"))
	if _, err := Verify(padded, nil); err != nil {
		t.Errorf("delimiters with trailing white space: %v", err)
	}
}

func mustSign(t *testing.T) []byte {
	t.Helper()
	out, err := fixtureSigner(t, "rsa").Sign(fixtureContent(t), testAt)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestVerifyErrors(t *testing.T) {
	msg := signedMessage(t, "rsa")
	other, err := fixtureSigner(t, "p256").Sign([]byte("Content-Type: text/plain\r\n\r\nother\r\n"), testAt)
	if err != nil {
		t.Fatal(err)
	}
	boundary, _, _ := signedParts(t, mustSign(t))
	otherBoundary, _, _ := signedParts(t, other)
	sigOf := func(m []byte, b string) []byte { // the signature part, delimiters excluded
		i := bytes.LastIndex(m, []byte("--"+b+"\r\nContent-Type: application/pkcs7"))
		j := bytes.LastIndex(m, []byte("\r\n--"+b+"--"))
		return m[i+len("--"+b+"\r\n") : j]
	}
	swapped := bytes.Replace(msg, sigOf(msg, boundary), sigOf(other, otherBoundary), 1)
	cut := func(from string) []byte {
		i := bytes.Index(msg, []byte(from))
		if i < 0 {
			t.Fatalf("%q not found", from)
		}
		return msg[:i]
	}

	for _, tc := range []struct {
		name string
		msg  []byte
		want error
	}{
		{"empty", nil, ErrNotSigned},
		{"plain text", []byte("From: a@b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"), ErrNotSigned},
		{"no content type", []byte("From: a@b\r\n\r\nhello\r\n"), ErrNotSigned},
		{"PGP", bytes.Replace(msg, []byte(`"application/pkcs7-signature";`), []byte(`"application/pgp-signature";`), 1), ErrNotSigned},
		{"no protocol", bytes.Replace(msg, []byte(`protocol="application/pkcs7-signature";`), nil, 1), ErrNotSigned},
		{"two content types", append([]byte("Content-Type: text/plain\r\n"), msg...), ErrMalformed},
		{"no boundary found", bytes.ReplaceAll(msg, []byte("--"+boundary), []byte("--x"+boundary)), ErrMalformed},
		{"truncated after content", cut("\r\n--" + boundary + "\r\nContent-Type: application/pkcs7"), ErrMalformed},
		{"no close delimiter", cut("\r\n--" + boundary + "--"), ErrMalformed},
		{"three parts", bytes.Replace(msg, []byte("--"+boundary+"--"), []byte("--"+boundary+"\r\n\r\nx\r\n--"+boundary+"--"), 1), ErrMalformed},
		{"bad base64", bytes.Replace(msg, []byte("smime.p7s\"\r\n\r\nMII"), []byte("smime.p7s\"\r\n\r\n!II"), 1), ErrMalformed},
		{"not CMS", bytes.Replace(msg, []byte("smime.p7s\"\r\n\r\nMII"), []byte("smime.p7s\"\r\n\r\nAII"), 1), ErrMalformed},
		{"signature of another message", swapped, ErrBadSignature},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := Verify(tc.msg, nil)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify: %v, want %v", err, tc.want)
			}
			if res != nil {
				t.Fatal("a Result with an error")
			}
		})
	}
	if _, err := Verify(msg, x509.NewCertPool()); !errors.Is(err, ErrUntrusted) {
		t.Errorf("empty root pool: %v, want ErrUntrusted", err)
	}
}

// TestVerifySignedAttributeRules builds CMS that sign correctly but break
// RFC 5652 §5.3 / §11 on signed attributes, which smallstep/pkcs7 does not
// check by itself.
func TestVerifySignedAttributeRules(t *testing.T) {
	s := fixtureSigner(t, "rsa")
	content := []byte("Content-Type: text/plain\r\n\r\nciao\r\n")
	attr := func(oid asn1.ObjectIdentifier, v any) []byte {
		b, err := encodeAttribute(oid, v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		name  string
		attrs attributeSource
		want  error
	}{
		{"two signingTime", func(d []byte, at time.Time) ([][]byte, error) {
			l, err := standardAttributes(d, at)
			return append(l, attr(pkcs7.OIDAttributeSigningTime, at.Add(time.Hour))), err
		}, ErrMalformed},
		{"no contentType", func(d []byte, at time.Time) ([][]byte, error) {
			return [][]byte{attr(pkcs7.OIDAttributeMessageDigest, d), attr(pkcs7.OIDAttributeSigningTime, at)}, nil
		}, ErrMalformed},
		{"contentType not id-data", func(d []byte, at time.Time) ([][]byte, error) {
			return [][]byte{attr(pkcs7.OIDAttributeContentType, pkcs7.OIDSignedData), attr(pkcs7.OIDAttributeMessageDigest, d)}, nil
		}, ErrBadSignature},
		{"no messageDigest", func(d []byte, at time.Time) ([][]byte, error) {
			return [][]byte{attr(pkcs7.OIDAttributeContentType, pkcs7.OIDData)}, nil
		}, ErrMalformed},
		{"no signingTime is fine", func(d []byte, at time.Time) ([][]byte, error) {
			return [][]byte{attr(pkcs7.OIDAttributeContentType, pkcs7.OIDData), attr(pkcs7.OIDAttributeMessageDigest, d)}, nil
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			der, err := s.signedData(content, testAt, tc.attrs)
			if err != nil {
				t.Fatal(err)
			}
			msg := asMessage(assemble(nil, content, der, "b"))
			res, err := Verify(msg, nil)
			if !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
				t.Fatalf("Verify: %v, want %v", err, tc.want)
			}
			if err == nil && !res.SigningTime.IsZero() {
				t.Errorf("SigningTime %v, want zero when absent", res.SigningTime)
			}
		})
	}
}

// TestVerifySignedOutsideValidity: a signature made (or claimed) outside
// the certificate's validity is a trust failure even without roots.
func TestVerifySignedOutsideValidity(t *testing.T) {
	s := fixtureSigner(t, "rsa")
	content := []byte("Content-Type: text/plain\r\n\r\nciao\r\n")
	der, err := s.signedData(content, s.Certificate().NotAfter.Add(time.Hour), standardAttributes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(asMessage(assemble(nil, content, der, "b")), nil); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("Verify: %v, want ErrUntrusted", err)
	}
}

func TestCheckBERNesting(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		ok   bool
	}{
		{"primitive", []byte{0x04, 0x01, 0xff}, true},
		{"empty sequence", []byte{0x30, 0x00}, true},
		{"nested definite", []byte{0x30, 0x04, 0x30, 0x02, 0x05, 0x00}, true},
		{"indefinite", []byte{0x30, 0x80, 0x04, 0x01, 0x00, 0x00, 0x00}, true},
		{"trailing data ignored", []byte{0x05, 0x00, 0xff, 0xff}, true},
		{"empty", nil, false},
		{"truncated length", []byte{0x30}, false},
		{"length beyond data", []byte{0x30, 0x05, 0x05, 0x00}, false},
		{"child overruns parent", []byte{0x30, 0x02, 0x04, 0x02, 0x00, 0x00}, false},
		{"unterminated indefinite", []byte{0x30, 0x80, 0x05, 0x00}, false},
		{"indefinite primitive", []byte{0x04, 0x80, 0x00, 0x00}, false},
		{"long length form too long", []byte{0x04, 0x85, 1, 1, 1, 1, 1}, false},
		{"deep", bytes.Repeat([]byte{0x30, 0x80}, 100), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkBERNesting(tc.in, 64)
			if (err == nil) != tc.ok {
				t.Fatalf("checkBERNesting(% x): %v, want ok=%v", tc.in, err, tc.ok)
			}
		})
	}
	// Our own signatures pass with room to spare.
	_, _, sig := signedParts(t, mustSign(t))
	if err := checkBERNesting(sig, 16); err != nil {
		t.Fatalf("our CMS: %v", err)
	}
}
