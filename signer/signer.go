// Package signer turns a MIME entity into an S/MIME multipart/signed entity
// with a detached CMS signature that OpenSSL and every S/MIME client verify
// (RFC 8551 §3.5.3, RFC 5652), and checks such signatures and the signing
// certificate's profile (RFC 6109 §5.5).
//
// The private key is a crypto.Signer (a key file today, an HSM later); the
// package knows nothing of PEC headers or formats.
package signer

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"
)

// minRSABits is the smallest RSA modulus we sign with: the AgID profile and
// current practice (RFC 8551 §4.1 requires receivers to handle 2048 bits and
// above) rule out the 1024-bit keys still seen in 2014 PEC messages.
const minRSABits = 2048

// Signer signs S/MIME multipart/signed entities with a provider key behind
// crypto.Signer (key file today, HSM later). It is immutable and safe for
// concurrent use.
type Signer struct {
	key   crypto.Signer
	cert  *x509.Certificate
	chain []*x509.Certificate
	alg   signatureAlgorithm
}

// New returns a Signer for key, whose public half must be the one in cert.
// chain holds the intermediates above cert (not the root), each the issuer
// of the one before; they are carried in every signature so that a receiver
// can build the path (RFC 6109 §2.1: the signer certificate is included).
// Only RSA keys of at least 2048 bits and ECDSA P-256 keys are accepted.
func New(key crypto.Signer, cert *x509.Certificate, chain []*x509.Certificate) (*Signer, error) {
	if key == nil {
		return nil, errors.New("no signing key")
	}
	if cert == nil {
		return nil, errors.New("no signing certificate")
	}
	alg, err := algorithmFor(key.Public())
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("signing key does not match the public key of certificate %q", cert.Subject.String())
	}
	child := cert
	for i, c := range chain {
		if c == nil {
			return nil, fmt.Errorf("chain certificate %d is nil", i+1)
		}
		if !bytes.Equal(child.RawIssuer, c.RawSubject) {
			return nil, fmt.Errorf("chain certificate %d (%q) is not the issuer of %q (issued by %q)",
				i+1, c.Subject.String(), child.Subject.String(), child.Issuer.String())
		}
		if err := child.CheckSignatureFrom(c); err != nil {
			return nil, fmt.Errorf("chain certificate %d (%q) did not sign %q: %w",
				i+1, c.Subject.String(), child.Subject.String(), err)
		}
		child = c
	}
	return &Signer{
		key:   key,
		cert:  cert,
		chain: append([]*x509.Certificate(nil), chain...),
		alg:   alg,
	}, nil
}

// algorithmFor picks the CMS signature algorithm for a public key, refusing
// what we do not sign with.
func algorithmFor(pub crypto.PublicKey) (signatureAlgorithm, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k == nil || k.N == nil {
			return signatureAlgorithm{}, errors.New("empty RSA public key")
		}
		if bits := k.N.BitLen(); bits < minRSABits {
			return signatureAlgorithm{}, fmt.Errorf("RSA key of %d bits is too small: at least %d bits required", bits, minRSABits)
		}
		return rsaWithSHA256, nil
	case *ecdsa.PublicKey:
		if k == nil || k.Curve == nil {
			return signatureAlgorithm{}, errors.New("empty ECDSA public key")
		}
		if k.Curve != elliptic.P256() {
			return signatureAlgorithm{}, fmt.Errorf("ECDSA key on curve %s is not supported: only P-256 is", k.Curve.Params().Name)
		}
		return ecdsaWithSHA256, nil
	default:
		return signatureAlgorithm{}, fmt.Errorf("key type %T is not supported: RSA (%d bits or more) or ECDSA P-256 required", pub, minRSABits)
	}
}

// Load returns a Signer from PEM text. keyPEM holds one private key as
// PKCS#8 ("PRIVATE KEY"), PKCS#1 ("RSA PRIVATE KEY") or SEC1 ("EC PRIVATE
// KEY"); certPEM holds the signer certificate first, then its intermediates.
// Other PEM blocks (such as "EC PARAMETERS") are skipped.
func Load(keyPEM, certPEM []byte) (*Signer, error) {
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	certs, err := parseCertsPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("signing certificate: %w", err)
	}
	return New(key, certs[0], certs[1:])
}

// LoadFiles is Load reading keyFile and certFile; every error names the file
// it is about.
func LoadFiles(keyFile, certFile string) (*Signer, error) {
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", keyFile, err)
	}
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("signing certificate: %w", err)
	}
	certs, err := parseCertsPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("signing certificate %s: %w", certFile, err)
	}
	s, err := New(key, certs[0], certs[1:])
	if err != nil {
		return nil, fmt.Errorf("%s, %s: %w", keyFile, certFile, err)
	}
	return s, nil
}

func parseKeyPEM(data []byte) (crypto.Signer, error) {
	var (
		key     any
		blocks  int
		skipped []string
	)
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		blocks++
		if _, enc := b.Headers["Proc-Type"]; enc || b.Type == "ENCRYPTED PRIVATE KEY" {
			return nil, errors.New("encrypted private keys are not supported: decrypt it (openssl pkey) or use an HSM")
		}
		var (
			k   any
			err error
		)
		switch b.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(b.Bytes)
		default:
			skipped = append(skipped, b.Type)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("parse %q PEM block: %w", b.Type, err)
		}
		if key != nil {
			return nil, errors.New("more than one private key")
		}
		key = k
	}
	switch {
	case blocks == 0:
		return nil, errors.New("no PEM data found")
	case key == nil:
		return nil, fmt.Errorf("no private key among the PEM blocks %q", skipped)
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key type %T cannot sign", key)
	}
	return s, nil
}

func parseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	var (
		certs   []*x509.Certificate
		blocks  int
		skipped []string
	)
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		blocks++
		if b.Type != "CERTIFICATE" {
			skipped = append(skipped, b.Type)
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	switch {
	case blocks == 0:
		return nil, errors.New("no PEM data found")
	case len(certs) == 0:
		return nil, fmt.Errorf("no CERTIFICATE among the PEM blocks %q", skipped)
	}
	return certs, nil
}

// Certificate returns the signer certificate.
func (s *Signer) Certificate() *x509.Certificate { return s.cert }

// Chain returns the intermediates carried with every signature.
func (s *Signer) Chain() []*x509.Certificate {
	return append([]*x509.Certificate(nil), s.chain...)
}

// Sign returns content as the first part of a multipart/signed entity whose
// second part is a detached CMS SignedData over it (RFC 8551 §3.5.3),
// header included and CRLF throughout. content is a complete MIME entity
// (header fields, blank line, body); bare LF line ends are turned into CRLF
// first (RFC 8551 §3.1.1: the signature covers the canonical form).
//
// at is the transaction's time reference (DM 2 novembre 2005 art. 9): it
// becomes the signingTime attribute, to the second, and must fall within
// the certificate's validity, or receivers reject the signature.
func (s *Signer) Sign(content []byte, at time.Time) ([]byte, error) {
	return s.SignAppend(nil, content, at)
}

// SignAppend appends to dst what Sign returns: a caller that puts header
// fields before the entity builds the whole message in one buffer, with
// no copy of the entity of its own (a 100 MB envelope is a copy fewer).
func (s *Signer) SignAppend(dst, content []byte, at time.Time) ([]byte, error) {
	if len(content) == 0 {
		return nil, errors.New("nothing to sign: empty content")
	}
	canon := toCRLF(content)
	der, b, err := s.signCanonical(canon, at)
	if err != nil {
		return nil, err
	}
	return assemble(dst, canon, der, b), nil
}

// signCanonical signs canonical content (CRLF line ends): the CMS
// SignedData, and a boundary the content does not hold.
func (s *Signer) signCanonical(canon []byte, at time.Time) (der []byte, boundary string, err error) {
	at, err = s.signingTime(at)
	if err != nil {
		return nil, "", err
	}
	digest := sha256.Sum256(canon)
	if der, err = s.signedDigest(digest, at, standardAttributes); err != nil {
		return nil, "", err
	}
	return der, chooseBoundary(digest, func(b string) bool {
		return bytes.Contains(canon, []byte(b))
	}), nil
}

// SignInPlace signs buf[at:], as SignAppend(buf[:at-PrefixLen],
// buf[at:]) would, in buf itself: the PrefixLen octets before at
// are room (pec.BuildEnvelopeRoom leaves it), filled with the
// multipart/signed prefix, and the signature part is appended after the
// content. A 100 MB envelope is then built, signed and assembled in one
// array with no copy of the message of its own (docs/configuration.md,
// "Message memory"). Content that is not canonical (a bare LF) is
// signed as SignAppend does, in a new buffer.
func (s *Signer) SignInPlace(buf []byte, at int, t time.Time) ([]byte, error) {
	room := at - PrefixLen
	if room < 0 || at >= len(buf) {
		return nil, fmt.Errorf("sign in place: content at %d of %d octets, after less than the %d octets of room it needs, or empty", at, len(buf), PrefixLen)
	}
	content := buf[at:]
	if bareLFs(content) > 0 {
		return s.SignAppend(append([]byte(nil), buf[:room]...), content, t)
	}
	der, b, err := s.signCanonical(content, t)
	if err != nil {
		return nil, err
	}
	if n := len(appendPrefix(buf[room:room], b)); n != PrefixLen {
		return nil, fmt.Errorf("sign in place: a prefix of %d octets, want %d", n, PrefixLen)
	}
	return appendSuffix(buf, der, b), nil
}

// SignDetached returns a detached CMS SignedData (DER) over data exactly
// as given (no canonicalisation: data is not MIME), with the same
// algorithms and signed attributes as Sign. The transaction log signs its
// checkpoints with it; openssl cms -verify -binary -inform DER checks them.
func (s *Signer) SignDetached(data []byte, at time.Time) ([]byte, error) {
	at, err := s.signingTime(at)
	if err != nil {
		return nil, err
	}
	return s.signedDigest(sha256.Sum256(data), at, standardAttributes)
}

// signingTime checks the instant to sign at, to the second: it must fall
// within the certificate's validity, or receivers reject the signature.
func (s *Signer) signingTime(at time.Time) (time.Time, error) {
	if at.IsZero() {
		return at, errors.New("no signing time")
	}
	at = at.UTC().Truncate(time.Second)
	if at.Before(s.cert.NotBefore) || at.After(s.cert.NotAfter) {
		return at, fmt.Errorf("signing time %s is outside the certificate validity %s to %s",
			at.Format(time.RFC3339), s.cert.NotBefore.UTC().Format(time.RFC3339), s.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	return at, nil
}

// assemble lays out the multipart/signed entity (RFC 8551 §3.5.3, RFC 1847
// §2.1). The CRLF before each delimiter belongs to the delimiter (RFC 2046
// §5.1.1), so the first body part is exactly canon.
func assemble(dst, canon, der []byte, boundary string) []byte {
	dst = slices.Grow(dst, PrefixLen+len(canon)+len(der)*4/3*78/76+512)
	dst = appendPrefix(dst, boundary)
	return appendSuffix(append(dst, canon...), der, boundary)
}

// appendPrefix appends what comes before the signed content: always
// PrefixLen octets, the boundary being of fixed length (chooseBoundary).
func appendPrefix(dst []byte, boundary string) []byte {
	// Folded so that no header line exceeds 78 characters (RFC 5322 §2.1.1).
	dst = append(dst, "Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\";\r\n"...)
	dst = append(dst, "\tmicalg=sha-256; boundary=\""+boundary+"\"\r\n"...)
	dst = append(dst, "\r\nThis is an S/MIME signed message\r\n\r\n"...)
	return append(dst, "--"+boundary+"\r\n"...)
}

// appendSuffix appends what comes after the signed content: the
// signature part and the closing boundary.
func appendSuffix(dst, der []byte, boundary string) []byte {
	b64 := base64.StdEncoding.EncodeToString(der)
	dst = append(dst, "\r\n--"+boundary+"\r\n"...)
	dst = append(dst, "Content-Type: application/pkcs7-signature; name=\"smime.p7s\"\r\n"...)
	dst = append(dst, "Content-Transfer-Encoding: base64\r\n"...)
	dst = append(dst, "Content-Disposition: attachment; filename=\"smime.p7s\"\r\n\r\n"...)
	// RFC 2045 §6.8: base64 lines of at most 76 characters.
	for len(b64) > 76 {
		dst = append(append(dst, b64[:76]...), "\r\n"...)
		b64 = b64[76:]
	}
	dst = append(dst, b64...)
	return append(dst, "\r\n--"+boundary+"--\r\n"...)
}

// PrefixLen is the room SignInPlace needs before the content: what
// appendPrefix writes.
var PrefixLen = len(appendPrefix(nil, boundaryPrefix+strings.Repeat("0", 32)))
