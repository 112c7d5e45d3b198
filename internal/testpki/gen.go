//go:build ignore

// gen writes the fixed test PKI of this folder: a CA and two provider
// signing certificates (RSA-2048 and P-256) with the RFC 6109 §5.5 profile,
// valid 2020-2049 so golden files signed with a fixed instant stay valid.
// Run: go run gen.go (only when the files must change; goldens follow).
package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log"
	"math/big"
	"os"
	"time"
)

func main() {
	nb := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	na := time.Date(2049, 12, 31, 23, 59, 59, 0, time.UTC)
	caKey, err := rsa.GenerateKey(rand.Reader, 2048)
	check(err)
	ca := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Country: []string{"IT"}, Organization: []string{"Example PEC S.p.A."}, CommonName: "pecgw test CA (not for production)"},
		NotBefore:             nb,
		NotAfter:              na,
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		SubjectKeyId:          ski(&caKey.PublicKey),
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	check(err)
	ca, err = x509.ParseCertificate(caDER)
	check(err)
	write("ca.pem", "CERTIFICATE", caDER)
	keyDER, err := x509.MarshalPKCS8PrivateKey(caKey)
	check(err)
	write("ca-key.pem", "PRIVATE KEY", keyDER)

	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	check(err)
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	check(err)
	for i, k := range []crypto.Signer{rsaKey, ecKey} {
		name := []string{"rsa", "p256"}[i]
		tmpl := &x509.Certificate{
			SerialNumber:   big.NewInt(int64(10 + i)),
			Subject:        pkix.Name{Country: []string{"IT"}, Organization: []string{"Example PEC S.p.A."}, CommonName: "Posta Certificata Example PEC S.p.A."},
			NotBefore:      nb,
			NotAfter:       na,
			KeyUsage:       x509.KeyUsageDigitalSignature,
			ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection},
			EmailAddresses: []string{"posta-certificata@pec.example.it"},
			SubjectKeyId:   ski(k.Public()),
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, k.Public(), caKey)
		check(err)
		write("signing-"+name+".pem", "CERTIFICATE", der)
		kd, err := x509.MarshalPKCS8PrivateKey(k)
		check(err)
		write("signing-"+name+"-key.pem", "PRIVATE KEY", kd)
	}
}

func ski(pub crypto.PublicKey) []byte {
	der, err := x509.MarshalPKIXPublicKey(pub)
	check(err)
	s := sha1.Sum(der)
	return s[:]
}

func write(name, typ string, der []byte) {
	check(os.WriteFile(name, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o644))
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
