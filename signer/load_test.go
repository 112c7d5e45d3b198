package signer

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// selfSigned returns PEM key (PKCS #8) and certificate for key.
func selfSigned(t *testing.T, key crypto.Signer) (keyPEM, certPEM []byte) {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	k, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: k}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func TestLoadKeyFormats(t *testing.T) {
	rsaPKCS1 := readTestdata(t, "rsa-key.pem")
	if !bytes.Contains(rsaPKCS1, []byte("BEGIN RSA PRIVATE KEY")) {
		t.Fatal("testdata/rsa-key.pem is not PKCS #1")
	}
	ecSEC1 := readTestdata(t, "p256-key.pem")
	if !bytes.Contains(ecSEC1, []byte("BEGIN EC PARAMETERS")) || !bytes.Contains(ecSEC1, []byte("BEGIN EC PRIVATE KEY")) {
		t.Fatal("testdata/p256-key.pem is not OpenSSL's SEC1 with EC PARAMETERS")
	}
	toPKCS8 := func(keyPEM []byte) []byte {
		b, _ := pem.Decode(keyPEM)
		var k any
		var err error
		if b.Type == "RSA PRIVATE KEY" {
			k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		} else {
			b, _ = pem.Decode(bytes.SplitAfterN(keyPEM, []byte("-----END EC PARAMETERS-----\n"), 2)[1])
			k, err = x509.ParseECPrivateKey(b.Bytes)
		}
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return pemBlock("PRIVATE KEY", der)
	}
	for _, tc := range []struct {
		name      string
		key, cert []byte
	}{
		{"RSA PKCS #1", rsaPKCS1, readTestdata(t, "rsa.pem")},
		{"RSA PKCS #8", toPKCS8(rsaPKCS1), readTestdata(t, "rsa.pem")},
		{"EC SEC1", ecSEC1, readTestdata(t, "p256.pem")},
		{"EC PKCS #8", toPKCS8(ecSEC1), readTestdata(t, "p256.pem")},
		{"certificate file with text around", rsaPKCS1, append(append([]byte("subject=...\n"), readTestdata(t, "rsa.pem")...), "trailing\n"...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Load(tc.key, tc.cert)
			if err != nil {
				t.Fatal(err)
			}
			out, err := s.Sign([]byte("Content-Type: text/plain\r\n\r\nciao\r\n"), testAt)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Verify(asMessage(out), fixtureRoots(t)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestLoadRefuses(t *testing.T) {
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k1024, c1024 := selfSigned(t, rsa1024)
	k384, c384 := selfSigned(t, p384)
	ked, ced := selfSigned(t, ed)
	rsaKey, rsaCert := readTestdata(t, "rsa-key.pem"), readTestdata(t, "rsa.pem")
	encrypted := []byte("-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00000000000000000000000000000000\n\nAAAA\n-----END RSA PRIVATE KEY-----\n")

	for _, tc := range []struct {
		name      string
		key, cert []byte
		want      string
	}{
		{"RSA-1024", k1024, c1024, "RSA key of 1024 bits is too small"},
		{"P-384", k384, c384, "curve P-384 is not supported"},
		{"Ed25519", ked, ced, "key type ed25519.PublicKey is not supported"},
		{"key of another certificate", rsaKey, readTestdata(t, "p256.pem"), "does not match the public key of certificate"},
		{"garbage key", []byte("not a key"), rsaCert, "signing key: no PEM data found"},
		{"garbage key block", pemBlock("RSA PRIVATE KEY", []byte("junk")), rsaCert, `parse "RSA PRIVATE KEY" PEM block`},
		{"no key block", rsaCert, rsaCert, `no private key among the PEM blocks ["CERTIFICATE"]`},
		{"two keys", append(bytes.Clone(rsaKey), rsaKey...), rsaCert, "more than one private key"},
		{"encrypted key", encrypted, rsaCert, "encrypted private keys are not supported"},
		{"PKCS #8 encrypted key", pemBlock("ENCRYPTED PRIVATE KEY", []byte{0x30, 0}), rsaCert, "encrypted private keys are not supported"},
		{"garbage certificate", rsaKey, []byte("garbage"), "signing certificate: no PEM data found"},
		{"garbage certificate block", rsaKey, pemBlock("CERTIFICATE", []byte("junk")), "parse certificate 1"},
		{"no certificate block", rsaKey, rsaKey, "no CERTIFICATE among the PEM blocks"},
		{"chain not issuing", rsaKey, append(bytes.Clone(rsaCert), c384...), "chain certificate 1 (\"CN=test\") is not the issuer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(tc.key, tc.cert)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Load: %v, want an error containing %q", err, tc.want)
			}
		})
	}
	if _, err := New(nil, nil, nil); err == nil {
		t.Error("New(nil, nil, nil) accepted")
	}
}

func TestLoadChain(t *testing.T) {
	s, err := Load(readTestdata(t, "rsa-key.pem"), append(readTestdata(t, "rsa.pem"), readTestdata(t, "ca.pem")...))
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Chain()) != 1 || s.Chain()[0].Subject.CommonName != "pecgw test CA" {
		t.Fatalf("chain %v, want the test CA", s.Chain())
	}
	s.Chain()[0] = nil // a copy: the Signer is not changed
	out, err := s.Sign(fixtureContent(t), testAt)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Verify(asMessage(out), fixtureRoots(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Certificates) != 2 || !res.Certificates[0].Equal(s.Certificate()) || !res.Certificates[1].Equal(s.Chain()[0]) {
		t.Fatalf("CMS certificates %d, want signer then CA", len(res.Certificates))
	}
}

func TestLoadFilesNamesTheFile(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "key.pem")
	cert := filepath.Join(dir, "cert.pem")
	missing := filepath.Join(dir, "missing.pem")
	if err := os.WriteFile(key, readTestdata(t, "rsa-key.pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cert, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, key, cert, want string
	}{
		{"missing key", missing, cert, missing},
		{"missing certificate", key, missing, missing},
		{"bad certificate", key, cert, cert},
		{"bad key", cert, key, cert},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadFiles(tc.key, tc.cert)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("LoadFiles: %v, want an error naming %s", err, tc.want)
			}
		})
	}
	if err := os.WriteFile(cert, readTestdata(t, "p256.pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadFiles(key, cert); err == nil || !strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), cert) {
		t.Fatalf("mismatched files: %v, want both names", err)
	}
}
