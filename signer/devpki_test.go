package signer

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestGenerateDevPKI(t *testing.T) {
	now := time.Date(2027, time.March, 1, 12, 0, 0, 0, time.UTC)
	for _, kt := range []string{"rsa", "p256"} {
		t.Run(kt, func(t *testing.T) {
			p, err := GenerateDevPKI(DevPKIOptions{Domain: testDomain, ProviderName: "Example PEC S.p.A.", KeyType: kt, Now: now})
			if err != nil {
				t.Fatal(err)
			}
			switch k := p.SigningKey.Public().(type) {
			case *rsa.PublicKey:
				if kt != "rsa" || k.N.BitLen() != 2048 {
					t.Errorf("signing key RSA-%d for %q", k.N.BitLen(), kt)
				}
			case *ecdsa.PublicKey:
				if kt != "p256" || k.Curve.Params().Name != "P-256" {
					t.Errorf("signing key %s for %q", k.Curve.Params().Name, kt)
				}
			}

			ca := p.CACert
			if ca.Subject.String() != "CN=pecgw development CA (Example PEC S.p.A.),O=Example PEC S.p.A." {
				t.Errorf("CA subject %q", ca.Subject)
			}
			if !ca.IsCA || ca.MaxPathLen != 0 || !ca.MaxPathLenZero || ca.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
				t.Errorf("CA: IsCA %v, MaxPathLen %d (zero %v), KeyUsage %b", ca.IsCA, ca.MaxPathLen, ca.MaxPathLenZero, ca.KeyUsage)
			}
			if critical, ok := extension(ca, oidKeyUsage); !ok || !critical {
				t.Error("CA KeyUsage not critical")
			}
			if err := ca.CheckSignatureFrom(ca); err != nil {
				t.Errorf("CA not self-signed: %v", err)
			}
			wantBefore := now.Add(-time.Hour)
			if !ca.NotBefore.Equal(wantBefore) || !ca.NotAfter.Equal(wantBefore.Add(10*365*24*time.Hour)) {
				t.Errorf("CA validity %v to %v", ca.NotBefore, ca.NotAfter)
			}

			sc := p.SigningCert
			if sc.Subject.String() != "CN=Posta Certificata Example PEC S.p.A.,O=Example PEC S.p.A.,C=IT" {
				t.Errorf("signing subject %q", sc.Subject)
			}
			if _, ok := extension(sc, oidBasicConstraints); ok {
				t.Error("signing certificate has a BasicConstraints extension")
			}
			if sc.KeyUsage != x509.KeyUsageDigitalSignature {
				t.Errorf("signing KeyUsage %b, want digitalSignature only", sc.KeyUsage)
			}
			if w := CheckProfile(sc, testDomain); len(w) != 0 {
				t.Errorf("signing certificate profile: %q", w)
			}
			if !sc.NotBefore.Equal(wantBefore) || !sc.NotAfter.Equal(wantBefore.Add(3*365*24*time.Hour)) {
				t.Errorf("signing validity %v to %v", sc.NotBefore, sc.NotAfter)
			}
			roots := x509.NewCertPool()
			roots.AddCert(ca)
			if _, err := sc.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}}); err != nil {
				t.Errorf("signing certificate does not chain for S/MIME: %v", err)
			}

			for _, host := range []string{"localhost", "127.0.0.1", "::1"} {
				if _, err := p.TLSCert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, DNSName: host}); err != nil {
					t.Errorf("TLS certificate for %s: %v", host, err)
				}
			}

			s, err := p.Signer()
			if err != nil {
				t.Fatal(err)
			}
			out, err := s.Sign(fixtureContent(t), now)
			if err != nil {
				t.Fatal(err)
			}
			res, err := Verify(asMessage(out), roots)
			if err != nil || !res.ChainVerified {
				t.Fatalf("Verify: %v", err)
			}
		})
	}
}

func extension(c *x509.Certificate, oid []int) (critical, present bool) {
	for _, e := range c.Extensions {
		if e.Id.Equal(oid) {
			return e.Critical, true
		}
	}
	return false, false
}

func TestGenerateDevPKIOptions(t *testing.T) {
	for _, o := range []DevPKIOptions{
		{ProviderName: "P"},
		{Domain: "posta@pec.example.it", ProviderName: "P"},
		{Domain: testDomain},
		{Domain: testDomain, ProviderName: "P", KeyType: "p384"},
		{Domain: testDomain, ProviderName: "P", KeyType: "p256", Hosts: []string{"ok.example", ""}},
	} {
		if _, err := GenerateDevPKI(o); err == nil {
			t.Errorf("GenerateDevPKI(%+v) accepted", o)
		}
	}
	p, err := GenerateDevPKI(DevPKIOptions{Domain: testDomain, ProviderName: "P", KeyType: "p256", Hosts: []string{"pec.example.it", "192.0.2.1"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.TLSCert.DNSNames) != 1 || p.TLSCert.DNSNames[0] != "pec.example.it" || len(p.TLSCert.IPAddresses) != 1 || !p.TLSCert.IPAddresses[0].Equal(net.ParseIP("192.0.2.1")) {
		t.Errorf("TLS names %v %v", p.TLSCert.DNSNames, p.TLSCert.IPAddresses)
	}
}

// TestDevPKITLSHandshake: the written TLS files serve a real handshake
// that a client trusting ca.pem accepts.
func TestDevPKITLSHandshake(t *testing.T) {
	p, err := GenerateDevPKI(DevPKIOptions{Domain: testDomain, ProviderName: "Example PEC S.p.A.", KeyType: "p256"})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := p.WriteDir(dir); err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, DevTLSFile), filepath.Join(dir, DevTLSKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, DevCAFile))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatal("no CA in ca.pem")
	}
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	errc := make(chan error, 1)
	go func() {
		errc <- tls.Server(c1, &tls.Config{Certificates: []tls.Certificate{pair}}).Handshake()
	}()
	if err := tls.Client(c2, &tls.Config{RootCAs: roots, ServerName: "localhost"}).Handshake(); err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
}

func TestDevPKIWriteDir(t *testing.T) {
	p, err := GenerateDevPKI(DevPKIOptions{Domain: testDomain, ProviderName: "Example PEC S.p.A.", KeyType: "p256"})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "pki")
	if err := p.WriteDir(dir); err != nil {
		t.Fatal(err)
	}
	files, err := p.PEM()
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 6 {
		t.Fatalf("PEM returned %d files, want 6", len(files))
	}
	for name, data := range files {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		want := fs.FileMode(0o644)
		if name == DevCAKeyFile || name == DevSigningKeyFile || name == DevTLSKeyFile {
			want = 0o600
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", name, fi.Mode().Perm(), want)
		}
		got, _ := os.ReadFile(filepath.Join(dir, name))
		if !bytes.Equal(got, data) {
			t.Errorf("%s differs from PEM()", name)
		}
	}
	if n := bytes.Count(files[DevSigningFile], []byte("BEGIN CERTIFICATE")); n != 1 {
		t.Errorf("signing.pem holds %d certificates, want the signing certificate alone", n)
	}

	// A second run must not touch anything.
	before := files[DevSigningKeyFile]
	p2, err := GenerateDevPKI(DevPKIOptions{Domain: testDomain, ProviderName: "Example PEC S.p.A.", KeyType: "p256"})
	if err != nil {
		t.Fatal(err)
	}
	if err := p2.WriteDir(dir); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second WriteDir: %v, want fs.ErrExist", err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, DevSigningKeyFile)); !bytes.Equal(got, before) {
		t.Fatal("WriteDir overwrote the signing key")
	}

	// One existing file is enough to refuse, and nothing else is written.
	dir2 := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir2, DevTLSFile), []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := p.WriteDir(dir2); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("WriteDir with tls.pem present: %v, want fs.ErrExist", err)
	}
	if entries, _ := os.ReadDir(dir2); len(entries) != 1 {
		t.Fatalf("%d files after a refused WriteDir, want 1", len(entries))
	}
}
