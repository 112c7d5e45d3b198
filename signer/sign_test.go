package signer

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// signedParts cuts a Sign result into its boundary, signed content and
// DER signature, checking the layout line by line against RFC 8551 §3.5.3
// as we promise it.
func signedParts(t *testing.T, out []byte) (boundary string, content, der []byte) {
	t.Helper()
	m := regexp.MustCompile(`\A` +
		`Content-Type: multipart/signed; protocol="application/pkcs7-signature";\r\n` +
		`\tmicalg=sha-256; boundary="(----=_pecgw_[0-9a-f]{32})"\r\n` +
		`\r\n` +
		`This is an S/MIME signed message\r\n` +
		`\r\n` +
		`--(----=_pecgw_[0-9a-f]{32})\r\n`).FindSubmatch(out)
	if m == nil || string(m[1]) != string(m[2]) {
		t.Fatalf("header and preamble not as promised:\n%.400s", out)
	}
	boundary = string(m[1])
	rest := out[len(m[0]):]
	sigHeader := "\r\n--" + boundary + "\r\n" +
		"Content-Type: application/pkcs7-signature; name=\"smime.p7s\"\r\n" +
		"Content-Transfer-Encoding: base64\r\n" +
		"Content-Disposition: attachment; filename=\"smime.p7s\"\r\n\r\n"
	i := bytes.Index(rest, []byte(sigHeader))
	if i < 0 {
		t.Fatalf("signature part header not found:\n%s", rest)
	}
	content = rest[:i]
	rest = rest[i+len(sigHeader):]
	end := "\r\n--" + boundary + "--\r\n"
	if !bytes.HasSuffix(rest, []byte(end)) {
		t.Fatalf("does not end with the close delimiter: %q", rest[max(0, len(rest)-80):])
	}
	lines := strings.Split(string(rest[:len(rest)-len(end)]), "\r\n")
	for i, l := range lines {
		if len(l) > 76 || (i < len(lines)-1 && len(l) != 76) {
			t.Fatalf("base64 line %d has %d characters, want 76 (all but the last)", i+1, len(l))
		}
	}
	der, err := base64.StdEncoding.DecodeString(strings.Join(lines, ""))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(bytes.ReplaceAll(out, []byte("\r\n"), nil), []byte("\n")) {
		t.Fatal("output has a bare LF")
	}
	return boundary, content, der
}

// Our own reading of the CMS (RFC 5652 §5), independent of the code under
// test and of smallstep/pkcs7.
type testContentInfo struct {
	ContentType asn1.ObjectIdentifier
	Content     asn1.RawValue `asn1:"explicit,tag:0"`
}

type testSignedData struct {
	Version          int
	DigestAlgorithms []pkix.AlgorithmIdentifier `asn1:"set"`
	EncapContentInfo struct {
		EContentType asn1.ObjectIdentifier
		EContent     asn1.RawValue `asn1:"optional,explicit,tag:0"`
	}
	Certificates asn1.RawValue    `asn1:"optional,tag:0"`
	CRLs         asn1.RawValue    `asn1:"optional,tag:1"`
	SignerInfos  []testSignerInfo `asn1:"set"`
}

type testSignerInfo struct {
	Version            int
	SID                asn1.RawValue
	DigestAlgorithm    pkix.AlgorithmIdentifier
	SignedAttrs        asn1.RawValue `asn1:"optional,tag:0"`
	SignatureAlgorithm pkix.AlgorithmIdentifier
	Signature          []byte
	UnsignedAttrs      asn1.RawValue `asn1:"optional,tag:1"`
}

type testAttribute struct {
	Type   asn1.ObjectIdentifier
	Values asn1.RawValue `asn1:"set"`
}

var (
	oidData          = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
	oidSignedData    = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}
	oidContentType   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 3}
	oidMessageDigest = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 4}
	oidSigningTime   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 5}
	oidSHA256        = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
	oidRSAEncryption = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}
	oidECDSAWithSHA2 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
)

func TestSignCMSStructure(t *testing.T) {
	for _, tc := range []struct {
		kind   string
		sigAlg asn1.ObjectIdentifier
		x509   x509.SignatureAlgorithm
	}{
		{"rsa", oidRSAEncryption, x509.SHA256WithRSA},
		{"p256", oidECDSAWithSHA2, x509.ECDSAWithSHA256},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			s := fixtureSigner(t, tc.kind)
			out, err := s.Sign(fixtureContent(t), testAt)
			if err != nil {
				t.Fatal(err)
			}
			_, content, der := signedParts(t, out)
			want := bytes.ReplaceAll(fixtureContent(t), []byte("\n"), []byte("\r\n"))
			if !bytes.Equal(content, want) {
				t.Fatalf("signed part is not the CRLF content:\n%q\nwant\n%q", content, want)
			}

			var ci testContentInfo
			if rest, err := asn1.Unmarshal(der, &ci); err != nil || len(rest) > 0 {
				t.Fatalf("ContentInfo: %v (%d trailing bytes)", err, len(rest))
			}
			if !ci.ContentType.Equal(oidSignedData) {
				t.Fatalf("contentType %v, want signedData", ci.ContentType)
			}
			var sd testSignedData
			if _, err := asn1.Unmarshal(ci.Content.Bytes, &sd); err != nil {
				t.Fatalf("SignedData: %v", err)
			}
			if sd.Version != 1 || len(sd.DigestAlgorithms) != 1 || !sd.DigestAlgorithms[0].Algorithm.Equal(oidSHA256) {
				t.Errorf("version %d, digestAlgorithms %v; want 1, [sha256]", sd.Version, sd.DigestAlgorithms)
			}
			if !sd.EncapContentInfo.EContentType.Equal(oidData) || len(sd.EncapContentInfo.EContent.FullBytes) != 0 {
				t.Errorf("encapContentInfo %v with eContent %d bytes; want id-data, detached", sd.EncapContentInfo.EContentType, len(sd.EncapContentInfo.EContent.FullBytes))
			}
			certs, err := x509.ParseCertificates(sd.Certificates.Bytes)
			if err != nil || len(certs) != 1 || !certs[0].Equal(s.Certificate()) {
				t.Errorf("certificates: %d (%v), want the signer certificate", len(certs), err)
			}
			if len(sd.SignerInfos) != 1 {
				t.Fatalf("%d SignerInfos", len(sd.SignerInfos))
			}
			si := sd.SignerInfos[0]
			if !si.DigestAlgorithm.Algorithm.Equal(oidSHA256) || !si.SignatureAlgorithm.Algorithm.Equal(tc.sigAlg) {
				t.Errorf("digest %v, signature %v; want sha256, %v", si.DigestAlgorithm.Algorithm, si.SignatureAlgorithm.Algorithm, tc.sigAlg)
			}
			if len(si.UnsignedAttrs.FullBytes) != 0 {
				t.Error("unsigned attributes present")
			}

			// Exactly contentType, messageDigest and one signingTime, in
			// DER order (X.690 §11.6).
			got := map[string][]asn1.RawValue{}
			var prev []byte
			for rest := si.SignedAttrs.Bytes; len(rest) > 0; {
				var a testAttribute
				var err error
				start := rest
				if rest, err = asn1.Unmarshal(rest, &a); err != nil {
					t.Fatal(err)
				}
				enc := start[:len(start)-len(rest)]
				if prev != nil && bytes.Compare(prev, enc) >= 0 {
					t.Error("signed attributes not in DER order")
				}
				prev = enc
				var vals []asn1.RawValue
				for vr := a.Values.Bytes; len(vr) > 0; {
					var v asn1.RawValue
					if vr, err = asn1.Unmarshal(vr, &v); err != nil {
						t.Fatal(err)
					}
					vals = append(vals, v)
				}
				got[a.Type.String()] = append(got[a.Type.String()], vals...)
			}
			if len(got) != 3 {
				t.Errorf("signed attributes %v, want exactly contentType, messageDigest, signingTime", got)
			}
			if v := got[oidContentType.String()]; len(v) != 1 || !bytes.Equal(v[0].FullBytes, mustMarshal(t, oidData)) {
				t.Errorf("contentType %v, want one id-data", v)
			}
			digest := sha256.Sum256(want)
			if v := got[oidMessageDigest.String()]; len(v) != 1 || !bytes.Equal(v[0].Bytes, digest[:]) {
				t.Errorf("messageDigest %v, want one SHA-256 of the content", v)
			}
			v := got[oidSigningTime.String()]
			if len(v) != 1 || v[0].Tag != asn1.TagUTCTime || string(v[0].Bytes) != "270114093000Z" {
				t.Errorf("signingTime %v, want one UTCTime 270114093000Z", v)
			}

			// The signature is over the DER SET OF (RFC 5652 §5.4).
			set := bytes.Clone(si.SignedAttrs.FullBytes)
			set[0] = 0x31
			if err := s.Certificate().CheckSignature(tc.x509, set, si.Signature); err != nil {
				t.Errorf("signature over the signed attributes: %v", err)
			}
		})
	}
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSignOpenSSLVerifies has OpenSSL, an independent implementation, judge
// our signatures: chain to the CA, S/MIME signing purpose, and the signed
// attributes as it decodes them.
func TestSignOpenSSLVerifies(t *testing.T) {
	type signerCase struct {
		name   string
		signer *Signer
		caFile string
	}
	cases := []signerCase{
		{"fixture-rsa", fixtureSigner(t, "rsa"), filepath.Join("testdata", "ca.pem")},
		{"fixture-p256", fixtureSigner(t, "p256"), filepath.Join("testdata", "ca.pem")},
	}
	for _, kt := range []string{"rsa", "p256"} {
		p, err := GenerateDevPKI(DevPKIOptions{Domain: "pec.example.it", ProviderName: "Example PEC S.p.A.", KeyType: kt})
		if err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(t.TempDir(), "pki")
		if err := p.WriteDir(dir); err != nil {
			t.Fatal(err)
		}
		s, err := LoadFiles(filepath.Join(dir, DevSigningKeyFile), filepath.Join(dir, DevSigningFile))
		if err != nil {
			t.Fatal(err)
		}
		cases = append(cases, signerCase{"devpki-" + kt, s, filepath.Join(dir, DevCAFile)})
	}
	at := time.Now().Add(-time.Minute) // within the dev certificates' validity
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := tc.signer.Sign(fixtureContent(t), at)
			if err != nil {
				t.Fatal(err)
			}
			file := writeTemp(t, "msg.eml", asMessage(out))
			res := runOpenSSL(t, "cms", "-verify", "-CAfile", tc.caFile, "-in", file, "-out", os.DevNull)
			if !strings.Contains(res, "Verification successful") {
				t.Fatalf("openssl cms -verify: %s", res)
			}

			printed := runOpenSSL(t, "cms", "-cmsout", "-print", "-in", file)
			attrs := printedSignedAttrs(t, printed)
			want := []string{"contentType", "messageDigest", "signingTime"}
			if fmt.Sprint(attrs) != fmt.Sprint(want) {
				t.Errorf("openssl sees signed attributes %v, want %v", attrs, want)
			}
			wantTime := "UTCTIME:" + at.UTC().Format("Jan _2 15:04:05 2006") + " GMT"
			if n := strings.Count(printed, "UTCTIME:"); n != 1 || !strings.Contains(printed, wantTime) {
				t.Errorf("openssl sees %d UTCTIME values, want one %q", n, wantTime)
			}
			if !strings.Contains(printed, "algorithm: sha256 (2.16.840.1.101.3.4.2.1)") {
				t.Error("openssl does not see a SHA-256 digest algorithm")
			}
		})
	}
}

// printedSignedAttrs returns the sorted names of the signed attributes in
// the output of openssl cms -cmsout -print.
func printedSignedAttrs(t *testing.T, printed string) []string {
	t.Helper()
	_, after, ok := strings.Cut(printed, "signedAttrs:")
	if !ok {
		t.Fatalf("no signedAttrs in openssl output:\n%s", printed)
	}
	section, _, _ := strings.Cut(after, "signatureAlgorithm:")
	var names []string
	for _, m := range regexp.MustCompile(`object: (\w+) \(`).FindAllStringSubmatch(section, -1) {
		names = append(names, m[1])
	}
	slices.Sort(names) // the DER order is checked in TestSignCMSStructure
	return names
}

func TestSignDeterministic(t *testing.T) {
	s := fixtureSigner(t, "rsa")
	a, err := s.Sign(fixtureContent(t), testAt)
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Sign(fixtureContent(t), testAt)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatal("two RSA signatures of the same content at the same instant differ")
	}
	c, err := s.Sign(fixtureContent(t), testAt.Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(a, c) {
		t.Fatal("signatures at different instants are equal")
	}
	// Sub-second parts do not reach the signature (second precision).
	d, err := s.Sign(fixtureContent(t), testAt.Add(400*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, d) {
		t.Fatal("a sub-second difference changed the signature")
	}
}

// TestSignAppend: SignAppend after a prefix gives the prefix, then exactly
// what Sign gives (RSA PKCS #1 v1.5 is deterministic), and leaves the
// prefix's bytes alone.
func TestSignAppend(t *testing.T) {
	s := fixtureSigner(t, "rsa")
	want, err := s.Sign(fixtureContent(t), testAt)
	if err != nil {
		t.Fatal(err)
	}
	prefix := []byte("Subject: prova\r\nMIME-Version: 1.0\r\n")
	dst := append(make([]byte, 0, 8), prefix...) // too small: SignAppend grows it
	got, err := s.SignAppend(dst, fixtureContent(t), testAt)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(got, prefix) || !bytes.Equal(got[len(prefix):], want) {
		t.Fatalf("SignAppend = %.80q…, want the prefix then Sign's %d octets", got, len(want))
	}
	if _, err := s.SignAppend(prefix, nil, testAt); err == nil {
		t.Error("SignAppend of nothing: no error")
	}
}

// TestSignGolden pins the exact bytes; run with -update after a deliberate
// change and review the diff.
func TestSignGolden(t *testing.T) {
	out, err := fixtureSigner(t, "rsa").Sign(fixtureContent(t), testAt)
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "signed-rsa.golden")
	if *update {
		if err := os.WriteFile(golden, out, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -run TestSignGolden -update)", err)
	}
	if !bytes.Equal(out, want) {
		t.Fatalf("Sign output differs from %s (run with -update if intended):\n%s", golden, out)
	}
}

func TestSignCanonicalisesLineEnds(t *testing.T) {
	s := fixtureSigner(t, "rsa")
	lf := fixtureContent(t)
	crlf := bytes.ReplaceAll(lf, []byte("\n"), []byte("\r\n"))
	mixed := bytes.Replace(crlf, []byte("\r\n"), []byte("\n"), 5)
	var outs [][]byte
	for _, in := range [][]byte{lf, crlf, mixed} {
		out, err := s.Sign(in, testAt)
		if err != nil {
			t.Fatal(err)
		}
		outs = append(outs, out)
	}
	if !bytes.Equal(outs[0], outs[1]) || !bytes.Equal(outs[0], outs[2]) {
		t.Fatal("LF, CRLF and mixed line ends give different signed entities")
	}
	// A CR not followed by LF is content, not a line end: left alone.
	out, err := s.Sign([]byte("Content-Type: text/plain\n\na\rb\n"), testAt)
	if err != nil {
		t.Fatal(err)
	}
	_, content, _ := signedParts(t, out)
	if string(content) != "Content-Type: text/plain\r\n\r\na\rb\r\n" {
		t.Fatalf("signed content %q", content)
	}
}

func TestSignRefuses(t *testing.T) {
	s := fixtureSigner(t, "rsa")
	cert := s.Certificate()
	for _, tc := range []struct {
		name    string
		content []byte
		at      time.Time
		want    string
	}{
		{"empty content", nil, testAt, "empty content"},
		{"zero time", fixtureContent(t), time.Time{}, "no signing time"},
		{"before validity", fixtureContent(t), cert.NotBefore.Add(-time.Second), "outside the certificate validity"},
		{"after validity", fixtureContent(t), cert.NotAfter.Add(time.Second), "outside the certificate validity"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.Sign(tc.content, tc.at)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Sign: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestChooseBoundaryAvoidsContent(t *testing.T) {
	seed := sha256.Sum256([]byte("content"))
	first := chooseBoundary(seed, func(string) bool { return false })
	if len(first) > 70 || !strings.HasPrefix(first, boundaryPrefix) {
		t.Fatalf("boundary %q: want %s prefix and at most 70 characters (RFC 2046)", first, boundaryPrefix)
	}
	var tried []string
	second := chooseBoundary(seed, func(b string) bool {
		tried = append(tried, b)
		return b == first // as if the content held the first candidate
	})
	if second == first || len(tried) != 2 || second != tried[1] {
		t.Fatalf("boundary %q after trying %q: want a second, different candidate", second, tried)
	}
	if again := chooseBoundary(seed, func(b string) bool { return b == first }); again != second {
		t.Fatal("the fallback boundary is not deterministic")
	}

	// End to end: content that quotes its own first-choice boundary.
	s := fixtureSigner(t, "rsa")
	content := fixtureContent(t)
	out, err := s.Sign(content, testAt)
	if err != nil {
		t.Fatal(err)
	}
	b, _, _ := signedParts(t, out)
	if bytes.Contains(toCRLF(content), []byte(b)) {
		t.Fatalf("boundary %q occurs in the content", b)
	}
}

// hsmKey stands for a key we cannot see into (an HSM behind PKCS #11): only
// crypto.Signer, and optionally a fault that corrupts its signatures.
type hsmKey struct {
	key    crypto.Signer
	faulty bool
}

func (h hsmKey) Public() crypto.PublicKey { return h.key.Public() }

func (h hsmKey) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts.HashFunc() != crypto.SHA256 || len(digest) != sha256.Size {
		return nil, fmt.Errorf("asked to sign %d bytes with %v", len(digest), opts.HashFunc())
	}
	sig, err := h.key.Sign(r, digest, opts)
	if err == nil && h.faulty {
		sig[len(sig)/2] ^= 0x01
	}
	return sig, err
}

func TestSignThroughCryptoSigner(t *testing.T) {
	fixture := fixtureSigner(t, "rsa")
	s, err := New(hsmKey{key: fixture.key}, fixture.Certificate(), nil)
	if err != nil {
		t.Fatal(err)
	}
	out, err := s.Sign(fixtureContent(t), testAt)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(asMessage(out), fixtureRoots(t)); err != nil {
		t.Fatal(err)
	}
	// A key that signs wrongly must not let a message out.
	bad, err := New(hsmKey{key: fixture.key, faulty: true}, fixture.Certificate(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bad.Sign(fixtureContent(t), testAt); err == nil || !strings.Contains(err.Error(), "does not verify") {
		t.Fatalf("faulty key: %v, want a refusal", err)
	}
}

// TestSignConcurrent lets the race detector watch one Signer used from
// many goroutines, as the gateway does.
func TestSignConcurrent(t *testing.T) {
	s := fixtureSigner(t, "p256")
	content := fixtureContent(t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Go(func() {
			out, err := s.Sign(content, testAt.Add(time.Duration(i)*time.Second))
			if err == nil {
				_, err = Verify(asMessage(out), nil)
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

// TestSignInPlace: the content at the end of a buffer, with PrefixLen
// octets of room before it, is signed in that buffer into exactly what
// SignAppend gives after the octets before the room; content with a bare
// LF is canonicalised as Sign does; too little room is an error.
func TestSignInPlace(t *testing.T) {
	s := fixtureSigner(t, "rsa")
	head := []byte("Subject: prova\r\nMIME-Version: 1.0\r\n")
	crlf := toCRLF(fixtureContent(t))
	for _, content := range [][]byte{crlf, toLF(fixtureContent(t))} {
		want, err := s.SignAppend(append([]byte(nil), head...), content, testAt)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 0, len(head)+PrefixLen+len(content)+8<<10)
		buf = append(append(append(buf, head...), make([]byte, PrefixLen)...), content...)
		at := len(buf) - len(content)
		got, err := s.SignInPlace(buf, at, testAt)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("SignInPlace = %.120q…, want %.120q…", got, want)
		}
		if canonical := bytes.Equal(content, crlf); canonical != (&got[0] == &buf[0]) {
			t.Errorf("canonical content %v, signed in the same array %v", canonical, &got[0] == &buf[0])
		}
	}
	buf := append(make([]byte, PrefixLen-1), fixtureContent(t)...)
	if _, err := s.SignInPlace(buf, PrefixLen-1, testAt); err == nil {
		t.Error("SignInPlace with too little room: no error")
	}
	if _, err := s.SignInPlace(buf, len(buf), testAt); err == nil {
		t.Error("SignInPlace of nothing: no error")
	}
}
