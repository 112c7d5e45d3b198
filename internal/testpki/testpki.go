// Package testpki holds a fixed test PKI for tests and golden files: a CA
// and provider signing certificates (RSA-2048 and P-256) with the RFC 6109
// §5.5 profile for the domain pec.example.it, valid 2020-2049. The keys
// are public test material: never use them for anything else.
package testpki

import (
	"crypto/x509"
	"embed"
	"os"
	"path/filepath"
	"testing"

	"github.com/pecgw/pecgw/signer"
)

// Domain is the provider mail domain of the signing certificates.
const Domain = "pec.example.it"

// ProviderName is the provider name in the certificates' subject.
const ProviderName = "Example PEC S.p.A."

//go:embed *.pem
var files embed.FS

func read(name string) []byte {
	b, err := files.ReadFile(name)
	if err != nil {
		panic("testpki: " + err.Error()) // the files are embedded at build time
	}
	return b
}

// CAPEM returns the test CA certificate.
func CAPEM() []byte { return read("ca.pem") }

// Roots returns a pool holding the test CA.
func Roots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(CAPEM())
	return p
}

// CAFile writes the test CA to a temporary file and returns its path, for
// openssl -CAfile.
func CAFile(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(p, CAPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// KeyPEM and CertPEM return the signing key and certificate of kind "rsa"
// or "p256".
func KeyPEM(kind string) []byte  { return read("signing-" + kind + "-key.pem") }
func CertPEM(kind string) []byte { return read("signing-" + kind + ".pem") }

// Signer returns a signer with the test key of kind "rsa" or "p256".
func Signer(t testing.TB, kind string) *signer.Signer {
	t.Helper()
	s, err := signer.Load(KeyPEM(kind), CertPEM(kind))
	if err != nil {
		t.Fatalf("test signer %s: %v", kind, err)
	}
	return s
}
