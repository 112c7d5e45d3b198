package signer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pecgw/pecgw/internal/testtool"
)

const testDomain = "pec.example.it"

func TestCheckProfileConforming(t *testing.T) {
	for _, kt := range []string{"rsa", "p256"} {
		p, err := GenerateDevPKI(DevPKIOptions{Domain: testDomain, ProviderName: "Example PEC S.p.A.", KeyType: kt})
		if err != nil {
			t.Fatal(err)
		}
		if w := CheckProfile(p.SigningCert, testDomain); len(w) != 0 {
			t.Errorf("dev PKI %s signing certificate: %q, want no warnings", kt, w)
		}
		if w := CheckProfile(p.SigningCert, "PEC.Example.IT"); len(w) != 0 {
			t.Errorf("domain in other case: %q, want no warnings", w)
		}
	}
	// The OpenSSL-made fixtures follow the profile too.
	for _, kind := range []string{"rsa", "p256"} {
		if w := CheckProfile(fixtureSigner(t, kind).Certificate(), testDomain); len(w) != 0 {
			t.Errorf("fixture %s: %q, want no warnings", kind, w)
		}
	}
}

// profileCA is a CA to issue deviant certificates from.
type profileCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newProfileCA(t *testing.T) profileCA {
	t.Helper()
	p, err := GenerateDevPKI(DevPKIOptions{Domain: testDomain, ProviderName: "Example PEC S.p.A.", KeyType: "p256"})
	if err != nil {
		t.Fatal(err)
	}
	return profileCA{cert: p.CACert, key: p.CAKey.(*ecdsa.PrivateKey)}
}

// issue makes a certificate from the §5.5 profile template after edit has
// changed it; parent, when not nil, replaces the CA certificate as issuer
// template (to drop the AuthorityKeyIdentifier).
func (ca profileCA) issue(t *testing.T, edit func(tmpl, parent *x509.Certificate)) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ski, err := subjectKeyID(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:   big.NewInt(time.Now().UnixNano()),
		Subject:        pkix.Name{Country: []string{"IT"}, Organization: []string{"Example PEC S.p.A."}, CommonName: "Posta Certificata Example PEC S.p.A."},
		NotBefore:      time.Now().Add(-time.Hour),
		NotAfter:       time.Now().Add(time.Hour),
		KeyUsage:       x509.KeyUsageDigitalSignature,
		EmailAddresses: []string{"posta-certificata@" + testDomain},
		SubjectKeyId:   ski,
	}
	parent := *ca.cert
	edit(tmpl, &parent)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, &parent, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func keyUsageExtension(t *testing.T, critical bool, usage byte) pkix.Extension {
	t.Helper()
	v, err := asn1.Marshal(asn1.BitString{Bytes: []byte{usage}, BitLength: 8})
	if err != nil {
		t.Fatal(err)
	}
	return pkix.Extension{Id: oidKeyUsage, Critical: critical, Value: v}
}

func TestCheckProfileDeviations(t *testing.T) {
	ca := newProfileCA(t)
	if w := CheckProfile(ca.issue(t, func(_, _ *x509.Certificate) {}), testDomain); len(w) != 0 {
		t.Fatalf("unchanged template: %q, want no warnings", w)
	}
	for _, tc := range []struct {
		name   string
		domain string
		edit   func(tmpl, parent *x509.Certificate)
		want   []string // one warning containing each, and no other
	}{
		{"BasicConstraints CA:FALSE", testDomain, func(c, _ *x509.Certificate) { c.BasicConstraintsValid = true },
			[]string{"BasicConstraints extension present (CA:FALSE)"}},
		{"no subjectAltName", testDomain, func(c, _ *x509.Certificate) { c.EmailAddresses = nil },
			[]string{"subjectAltName extension missing"}},
		{"other domain", "pec.other.it", func(_, _ *x509.Certificate) {},
			[]string{"subjectAltName has no rfc822Name posta-certificata@pec.other.it"}},
		{"other local part", testDomain, func(c, _ *x509.Certificate) { c.EmailAddresses = []string{"info@" + testDomain} },
			[]string{"subjectAltName has no rfc822Name posta-certificata@pec.example.it"}},
		{"KeyUsage not critical", testDomain, func(c, _ *x509.Certificate) {
			c.ExtraExtensions = append(c.ExtraExtensions, keyUsageExtension(t, false, 0x80))
		}, []string{"KeyUsage extension is not critical"}},
		{"KeyUsage without digitalSignature", testDomain, func(c, _ *x509.Certificate) { c.KeyUsage = x509.KeyUsageContentCommitment },
			[]string{"KeyUsage lacks digitalSignature"}},
		{"no KeyUsage", testDomain, func(c, _ *x509.Certificate) { c.KeyUsage = 0 },
			[]string{"KeyUsage extension missing"}},
		{"no SubjectKeyIdentifier", testDomain, func(c, _ *x509.Certificate) { c.SubjectKeyId = nil },
			[]string{"SubjectKeyIdentifier extension missing"}},
		{"no AuthorityKeyIdentifier", testDomain, func(_, parent *x509.Certificate) { parent.SubjectKeyId = nil },
			[]string{"AuthorityKeyIdentifier extension missing"}},
		{"email in subject", testDomain, func(c, _ *x509.Certificate) {
			c.Subject.ExtraNames = []pkix.AttributeTypeAndValue{{Type: oidEmailAddress, Value: "posta-certificata@" + testDomain}}
		}, []string{"subject DN contains an emailAddress"}},
		// crypto/x509 marks subjectAltName critical when the subject is empty
		// (RFC 5280 §4.2.1.6), so both show.
		{"empty subject", testDomain, func(c, _ *x509.Certificate) { c.Subject = pkix.Name{} },
			[]string{"neither CN nor O", "subjectAltName extension is critical"}},
		{"O only is fine", testDomain, func(c, _ *x509.Certificate) { c.Subject.CommonName = "" }, nil},
		{"critical extra extension", testDomain, func(c, _ *x509.Certificate) {
			c.ExtraExtensions = append(c.ExtraExtensions, pkix.Extension{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}, Critical: true, Value: []byte{5, 0}})
		}, []string{"extension 1.3.6.1.4.1.99999.1 is critical"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := CheckProfile(ca.issue(t, tc.edit), tc.domain)
			if len(w) != len(tc.want) {
				t.Fatalf("warnings %q, want %d containing %q", w, len(tc.want), tc.want)
			}
			for _, want := range tc.want {
				n := 0
				for _, got := range w {
					if strings.Contains(got, want) {
						n++
					}
				}
				if n != 1 {
					t.Errorf("warnings %q: want exactly one containing %q", w, want)
				}
			}
		})
	}
	if w := CheckProfile(nil, testDomain); len(w) != 1 {
		t.Errorf("nil certificate: %q", w)
	}
}

// TestCheckProfileAruba: Aruba's 2014 certificate carries BasicConstraints
// CA:FALSE and a non-critical KeyUsage, against RFC 6109 §5.5; nothing else
// in it differs.
func TestCheckProfileAruba(t *testing.T) {
	msg, err := os.ReadFile(filepath.Join(testtool.SharedSamples(t), "oca_aruba_accettazione.eml"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := Verify(msg, nil)
	if err != nil {
		t.Fatal(err)
	}
	w := CheckProfile(res.Signer, "pec.aruba.it")
	if len(w) != 2 || !strings.Contains(strings.Join(w, "\n"), "KeyUsage extension is not critical") ||
		!strings.Contains(strings.Join(w, "\n"), "BasicConstraints extension present (CA:FALSE)") {
		t.Fatalf("warnings %q, want exactly the non-critical KeyUsage and BasicConstraints", w)
	}
}
