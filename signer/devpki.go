package signer

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// DevPKIOptions describes a development PKI.
type DevPKIOptions struct {
	Domain       string    // provider mail domain, e.g. "pec.example.it"
	ProviderName string    // e.g. "Example PEC S.p.A."
	Hosts        []string  // DNS names / IPs for the TLS server certificate (default: localhost, 127.0.0.1, ::1)
	KeyType      string    // "rsa" (2048, default) or "p256"
	Now          time.Time // zero = time.Now()
	Rand         io.Reader // zero = crypto/rand.Reader; serial numbers (since Go 1.26 key generation always uses the system source)
}

// DevPKI is a private CA with a signing certificate in the RFC 6109 §5.5
// profile and a TLS server certificate, for development and tests: a new
// provider cannot sign production PEC mail without an AgID-issued
// certificate.
type DevPKI struct {
	CACert      *x509.Certificate
	CAKey       crypto.Signer
	SigningCert *x509.Certificate
	SigningKey  crypto.Signer
	TLSCert     *x509.Certificate
	TLSKey      crypto.Signer
}

const (
	devCAValidity   = 10 * 365 * 24 * time.Hour
	devLeafValidity = 3 * 365 * 24 * time.Hour
	devBackdate     = time.Hour // tolerate clocks slightly behind
)

// GenerateDevPKI creates a CA, a signing certificate for
// posta-certificata@<Domain> that passes CheckProfile, and a TLS server
// certificate for Hosts, each with its own new key.
func GenerateDevPKI(o DevPKIOptions) (*DevPKI, error) {
	if o.Domain == "" || strings.ContainsAny(o.Domain, "@ \t\r\n/\\") {
		return nil, fmt.Errorf("dev PKI: invalid mail domain %q", o.Domain)
	}
	if strings.TrimSpace(o.ProviderName) == "" {
		return nil, errors.New("dev PKI: no provider name")
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	if o.Rand == nil {
		o.Rand = rand.Reader
	}
	if len(o.Hosts) == 0 {
		o.Hosts = []string{"localhost", "127.0.0.1", "::1"}
	}
	var (
		newKey func() (crypto.Signer, error)
		err    error
	)
	switch strings.ToLower(o.KeyType) {
	case "", "rsa":
		newKey = func() (crypto.Signer, error) { return rsa.GenerateKey(o.Rand, 2048) }
	case "p256":
		newKey = func() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P256(), o.Rand) }
	default:
		return nil, fmt.Errorf("dev PKI: key type %q: want \"rsa\" or \"p256\"", o.KeyType)
	}
	p := &DevPKI{}
	for _, k := range []*crypto.Signer{&p.CAKey, &p.SigningKey, &p.TLSKey} {
		if *k, err = newKey(); err != nil {
			return nil, fmt.Errorf("dev PKI: generate key: %w", err)
		}
	}
	notBefore := o.Now.Add(-devBackdate).UTC().Truncate(time.Second)

	ca := &x509.Certificate{
		Subject: pkix.Name{
			CommonName:   "pecgw development CA (" + o.ProviderName + ")",
			Organization: []string{o.ProviderName},
		},
		NotBefore:             notBefore,
		NotAfter:              notBefore.Add(devCAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	if p.CACert, err = issue(o.Rand, ca, nil, p.CAKey.Public(), p.CAKey); err != nil {
		return nil, fmt.Errorf("dev PKI: CA certificate: %w", err)
	}

	// RFC 6109 §5.5 profile. BasicConstraintsValid stays false: that is
	// how crypto/x509 leaves the BasicConstraints extension out.
	signing := &x509.Certificate{
		Subject: pkix.Name{
			Country:      []string{"IT"},
			Organization: []string{o.ProviderName},
			CommonName:   "Posta Certificata " + o.ProviderName,
		},
		NotBefore:      notBefore,
		NotAfter:       notBefore.Add(devLeafValidity),
		KeyUsage:       x509.KeyUsageDigitalSignature, // crypto/x509 marks KeyUsage critical
		ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection},
		EmailAddresses: []string{providerLocalPart + "@" + o.Domain},
	}
	if p.SigningCert, err = issue(o.Rand, signing, p.CACert, p.SigningKey.Public(), p.CAKey); err != nil {
		return nil, fmt.Errorf("dev PKI: signing certificate: %w", err)
	}

	tlsTemplate := &x509.Certificate{
		Subject: pkix.Name{
			Organization: []string{o.ProviderName},
			CommonName:   o.Hosts[0],
		},
		NotBefore:   notBefore,
		NotAfter:    notBefore.Add(devLeafValidity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if _, ok := p.TLSKey.Public().(*rsa.PublicKey); ok {
		tlsTemplate.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	for _, h := range o.Hosts {
		switch ip := net.ParseIP(h); {
		case ip != nil:
			tlsTemplate.IPAddresses = append(tlsTemplate.IPAddresses, ip)
		case h == "" || strings.ContainsAny(h, "@ \t\r\n/\\"):
			return nil, fmt.Errorf("dev PKI: invalid TLS host %q", h)
		default:
			tlsTemplate.DNSNames = append(tlsTemplate.DNSNames, h)
		}
	}
	if p.TLSCert, err = issue(o.Rand, tlsTemplate, p.CACert, p.TLSKey.Public(), p.CAKey); err != nil {
		return nil, fmt.Errorf("dev PKI: TLS certificate: %w", err)
	}
	return p, nil
}

// issue fills in serial number and subject key identifier, signs template
// with key (self-signed when parent is nil) and parses the result. The
// authority key identifier comes from the parent's subject key identifier.
func issue(random io.Reader, template, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) (*x509.Certificate, error) {
	serial, err := rand.Int(random, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	template.SerialNumber = serial.Add(serial, big.NewInt(1)) // positive, RFC 5280 §4.1.2.2
	if template.SubjectKeyId, err = subjectKeyID(pub); err != nil {
		return nil, err
	}
	if parent == nil {
		parent = template
	}
	der, err := x509.CreateCertificate(random, template, parent, pub, key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// subjectKeyID is RFC 7093 §2 method 1: the leftmost 160 bits of the
// SHA-256 of the subjectPublicKey bits.
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("subject key identifier: %w", err)
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil, fmt.Errorf("subject key identifier: %w", err)
	}
	sum := sha256.Sum256(spki.PublicKey.Bytes)
	return sum[:20], nil
}

// Signer returns a Signer with the signing key and certificate. The CA is a
// root, so the chain is empty: receivers must hold the CA.
func (p *DevPKI) Signer() (*Signer, error) {
	return New(p.SigningKey, p.SigningCert, nil)
}

// Names of the files PEM returns and WriteDir writes.
const (
	DevCAFile         = "ca.pem"
	DevCAKeyFile      = "ca-key.pem"
	DevSigningFile    = "signing.pem"
	DevSigningKeyFile = "signing-key.pem"
	DevTLSFile        = "tls.pem"
	DevTLSKeyFile     = "tls-key.pem"
)

// PEM returns the PKI as PEM files by name: keys in PKCS #8, certificates
// alone (signing.pem holds only the signing certificate: the CA is a root
// and stays out of the chain).
func (p *DevPKI) PEM() (files map[string][]byte, err error) {
	files = make(map[string][]byte, 6)
	for _, c := range []struct {
		name string
		cert *x509.Certificate
	}{{DevCAFile, p.CACert}, {DevSigningFile, p.SigningCert}, {DevTLSFile, p.TLSCert}} {
		if c.cert == nil {
			return nil, fmt.Errorf("%s: no certificate", c.name)
		}
		files[c.name] = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.cert.Raw})
	}
	for _, k := range []struct {
		name string
		key  crypto.Signer
	}{{DevCAKeyFile, p.CAKey}, {DevSigningKeyFile, p.SigningKey}, {DevTLSKeyFile, p.TLSKey}} {
		der, err := x509.MarshalPKCS8PrivateKey(k.key)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", k.name, err)
		}
		files[k.name] = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
	return files, nil
}

// WriteDir writes the PEM files into dir, creating it (0700) if needed:
// keys 0600, certificates 0644. It refuses to overwrite any existing file,
// and removes what it wrote if it fails half-way.
func (p *DevPKI) WriteDir(dir string) (err error) {
	files, err := p.PEM()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	names := []string{DevCAFile, DevCAKeyFile, DevSigningFile, DevSigningKeyFile, DevTLSFile, DevTLSKeyFile}
	for _, n := range names {
		path := filepath.Join(dir, n)
		if _, err := os.Lstat(path); err == nil {
			return fmt.Errorf("%s: %w", path, fs.ErrExist)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	var written []string
	defer func() {
		if err != nil {
			for _, w := range written {
				_ = os.Remove(w)
			}
		}
	}()
	for _, n := range names {
		mode := os.FileMode(0o644)
		if strings.HasSuffix(n, "-key.pem") {
			mode = 0o600
		}
		path := filepath.Join(dir, n)
		if err := writeNew(path, files[n], mode); err != nil {
			return err
		}
		written = append(written, path)
	}
	return syncDir(dir)
}

// writeNew creates path (failing if it exists) with data, and syncs it.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	err = f.Chmod(mode) // the mode asked for, whatever the umask
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
