package signer

import (
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"fmt"
	"mime"
	"strings"
	"time"

	"github.com/smallstep/pkcs7"
)

// Errors that Verify wraps, so that a caller can tell a message that is not
// signed from one that was altered and from one signed by an unknown party.
var (
	// ErrNotSigned: the message is not an S/MIME multipart/signed message.
	ErrNotSigned = errors.New("not a multipart/signed message")
	// ErrMalformed: the message claims to be signed but its structure or
	// its CMS signature cannot be read.
	ErrMalformed = errors.New("malformed signed message")
	// ErrBadSignature: the signature does not verify; the signed content
	// (or the signature) was changed after signing.
	ErrBadSignature = errors.New("signature does not match content: message altered")
	// ErrUntrusted: the signature is intact but its certificate does not
	// chain to the given roots, or was not valid when it signed.
	ErrUntrusted = errors.New("signer certificate not trusted")
)

// Limits on untrusted input. A CMS signature with a few certificates is a
// few kilobytes; these leave room for CRLs while keeping a hostile message
// from costing much.
const (
	maxSignatureSize = 1 << 20 // decoded DER
	maxBERDepth      = 64
)

// Result describes a verified signature.
type Result struct {
	Signer        *x509.Certificate
	Certificates  []*x509.Certificate // all certificates in the CMS
	SigningTime   time.Time           // zero if the attribute is absent
	Digest        string              // micalg style: "sha-256", "sha1", ...
	Legacy        bool                // protocol was application/x-pkcs7-signature
	Content       []byte              // the signed entity, canonical CRLF bytes (what a reader parses next)
	ChainVerified bool                // true only when roots were given and the chain verified
}

// Verify checks the S/MIME signature of msg, a whole message (header and
// body, LF or CRLF line ends): the top-level entity must be multipart/signed
// (RFC 1847 §2.1, RFC 8551 §3.5.3) with protocol application/pkcs7-signature
// or the legacy application/x-pkcs7-signature. The first body part is taken
// byte for byte as it stands between the delimiters, in CRLF form, and
// checked against the detached CMS signature in the second part.
//
// With roots nil only integrity is checked (the signer certificate's own
// validity is compared with the signing time, nothing else). With roots, the
// signer certificate must also chain to one of them at the signing time
// (or now when the message has none); ChainVerified then reports success.
//
// Errors wrap ErrNotSigned, ErrMalformed, ErrBadSignature or ErrUntrusted.
func Verify(msg []byte, roots *x509.CertPool) (*Result, error) {
	// The message is scanned as it stands, CRLF or LF: only the signed
	// part is canonicalised, and a binary signature part is left intact.
	header, body := splitHeader(msg)
	fields := parseHeader(header)
	cts := fieldValues(fields, "Content-Type")
	switch len(cts) {
	case 0:
		return nil, fmt.Errorf("%w: no Content-Type header", ErrNotSigned)
	case 1:
	default:
		return nil, fmt.Errorf("%w: %d Content-Type header fields", ErrMalformed, len(cts))
	}
	mt, params, err := mime.ParseMediaType(cts[0])
	switch {
	case err != nil && mt == "multipart/signed":
		return nil, fmt.Errorf("%w: Content-Type %q: %w", ErrMalformed, cts[0], err)
	case err != nil:
		return nil, fmt.Errorf("%w: Content-Type %q: %w", ErrNotSigned, cts[0], err)
	case mt != "multipart/signed":
		return nil, fmt.Errorf("%w: Content-Type is %s", ErrNotSigned, mt)
	}
	res := &Result{}
	switch protocol := strings.ToLower(params["protocol"]); protocol {
	case "application/pkcs7-signature":
	case "application/x-pkcs7-signature":
		res.Legacy = true
	case "":
		return nil, fmt.Errorf("%w: multipart/signed without protocol parameter", ErrNotSigned)
	default:
		return nil, fmt.Errorf("%w: protocol %q is not S/MIME", ErrNotSigned, protocol)
	}
	// micalg (RFC 8551 §3.5.3) only lets a one-pass reader pick the hash in
	// advance; we read the whole message first, so the SignerInfo is the
	// authority and micalg is not checked.
	boundary := params["boundary"]
	if boundary == "" {
		return nil, fmt.Errorf("%w: multipart/signed without boundary", ErrMalformed)
	}

	part, sigPart, err := splitSigned(body, boundary)
	if err != nil {
		return nil, err
	}
	der, err := decodeSignaturePart(sigPart)
	if err != nil {
		return nil, err
	}
	// RFC 8551 §3.1.1: the signature covers the CRLF form. The Result
	// must not share memory with msg.
	content := toCRLF(part)
	if len(content) == len(part) {
		content = bytes.Clone(part)
	}
	info, err := verifyCMS(der, content)
	if err != nil {
		return nil, err
	}
	res.Signer = info.signer
	res.Certificates = info.certs
	res.SigningTime = info.signingTime
	res.Digest = info.digest
	res.Content = content

	if roots != nil {
		if err := verifyChain(info, roots); err != nil {
			return nil, err
		}
		res.ChainVerified = true
	}
	return res, nil
}

// verifyChain checks the signer's certificate up to roots at the signing
// time (now when the CMS has none), with the other CMS certificates as
// intermediates.
func verifyChain(info cmsInfo, roots *x509.CertPool) error {
	intermediates := x509.NewCertPool()
	for _, c := range info.certs {
		if c != info.signer {
			intermediates.AddCert(c)
		}
	}
	at := info.signingTime
	if at.IsZero() {
		at = time.Now()
	}
	_, err := info.signer.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: intermediates,
		CurrentTime:   at,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUntrusted, err)
	}
	return nil
}

// VerifyDetached checks a detached CMS SignedData (DER, as SignDetached
// makes it) over data, and with roots its chain. It is what a third party
// does with openssl cms -verify -binary -content DATA -inform DER.
func VerifyDetached(data, der []byte, roots *x509.CertPool) (*Result, error) {
	info, err := verifyCMS(der, data)
	if err != nil {
		return nil, err
	}
	res := &Result{Signer: info.signer, Certificates: info.certs, SigningTime: info.signingTime, Digest: info.digest, Content: data}
	if roots != nil {
		if err := verifyChain(info, roots); err != nil {
			return nil, err
		}
		res.ChainVerified = true
	}
	return res, nil
}

// splitSigned returns the two body parts of a multipart/signed body (RFC
// 1847 §2.1: exactly two, the signed content and the signature).
func splitSigned(body []byte, boundary string) (content, sig []byte, err error) {
	first, ok := nextDelimiter(body, boundary, 0)
	if !ok {
		return nil, nil, fmt.Errorf("%w: boundary %q not found in the body", ErrMalformed, boundary)
	}
	if first.close {
		return nil, nil, fmt.Errorf("%w: multipart/signed without body parts", ErrMalformed)
	}
	second, ok := nextDelimiter(body, boundary, first.next)
	if !ok || second.close {
		return nil, nil, fmt.Errorf("%w: multipart/signed without a signature part", ErrMalformed)
	}
	last, ok := nextDelimiter(body, boundary, second.next)
	if !ok {
		return nil, nil, fmt.Errorf("%w: multipart/signed without close delimiter", ErrMalformed)
	}
	if !last.close {
		return nil, nil, fmt.Errorf("%w: multipart/signed with more than two body parts", ErrMalformed)
	}
	return partBefore(body, first.next, second), partBefore(body, second.next, last), nil
}

// decodeSignaturePart returns the DER of the CMS in the second body part,
// which must be application/(x-)pkcs7-signature (RFC 8551 §3.5.3), base64
// or binary (RFC 8551 §3.1.3, in binary-clean transports).
func decodeSignaturePart(part []byte) ([]byte, error) {
	header, body := splitHeader(part)
	fields := parseHeader(header)
	cts := fieldValues(fields, "Content-Type")
	if len(cts) != 1 {
		return nil, fmt.Errorf("%w: signature part has %d Content-Type fields", ErrMalformed, len(cts))
	}
	mt, _, err := mime.ParseMediaType(cts[0])
	if err != nil {
		return nil, fmt.Errorf("%w: signature part Content-Type %q: %w", ErrMalformed, cts[0], err)
	}
	if mt != "application/pkcs7-signature" && mt != "application/x-pkcs7-signature" {
		return nil, fmt.Errorf("%w: second body part is %s, not application/pkcs7-signature", ErrMalformed, mt)
	}
	cte := "7bit" // RFC 2045 §6.1: the default
	if v := fieldValues(fields, "Content-Transfer-Encoding"); len(v) > 0 {
		cte = strings.ToLower(v[0])
	}
	var der []byte
	switch cte {
	// DER is binary: in a 7bit part (a sender that left the encoding
	// out) it can only be base64.
	case "base64", "7bit":
		text := make([]byte, 0, len(body))
		for _, c := range body {
			if c != '\r' && c != '\n' && c != ' ' && c != '\t' {
				text = append(text, c)
			}
		}
		if base64.StdEncoding.DecodedLen(len(text)) > maxSignatureSize {
			return nil, fmt.Errorf("%w: signature larger than %d bytes", ErrMalformed, maxSignatureSize)
		}
		der = make([]byte, base64.StdEncoding.DecodedLen(len(text)))
		n, err := base64.StdEncoding.Decode(der, text)
		if err != nil {
			return nil, fmt.Errorf("%w: signature part base64: %w", ErrMalformed, err)
		}
		der = der[:n]
	case "binary", "8bit":
		der = body
	default:
		return nil, fmt.Errorf("%w: signature part Content-Transfer-Encoding %q", ErrMalformed, cte)
	}
	if len(der) == 0 {
		return nil, fmt.Errorf("%w: empty signature part", ErrMalformed)
	}
	if len(der) > maxSignatureSize {
		return nil, fmt.Errorf("%w: signature larger than %d bytes", ErrMalformed, maxSignatureSize)
	}
	return der, nil
}

// cmsInfo is what verifyCMS learnt from a valid signature.
type cmsInfo struct {
	signer      *x509.Certificate
	certs       []*x509.Certificate
	signingTime time.Time
	digest      string
}

// verifyCMS parses the detached CMS SignedData in der and checks it over
// content. smallstep/pkcs7 does the parsing and the cryptography; around
// it we check what it leaves out (RFC 5652 §5.3, §11) and turn any panic
// of its decoder on hostile input into an error.
func verifyCMS(der, content []byte) (info cmsInfo, err error) {
	defer func() {
		if r := recover(); r != nil {
			info, err = cmsInfo{}, fmt.Errorf("%w: CMS decoder failed: %v", ErrMalformed, r)
		}
	}()
	// smallstep's BER decoder recurses once per nesting level; refuse
	// absurd nesting before it sees the data.
	if err := checkBERNesting(der, maxBERDepth); err != nil {
		return cmsInfo{}, fmt.Errorf("%w: CMS: %w", ErrMalformed, err)
	}
	p7, err := pkcs7.Parse(der)
	if err != nil {
		return cmsInfo{}, fmt.Errorf("%w: CMS: %w", ErrMalformed, err)
	}
	if len(p7.Signers) != 1 {
		return cmsInfo{}, fmt.Errorf("%w: CMS has %d signers, want 1", ErrMalformed, len(p7.Signers))
	}
	si := p7.Signers[0]
	info.signer = p7.GetOnlySigner()
	if info.signer == nil {
		return cmsInfo{}, fmt.Errorf("%w: the signer certificate is not in the CMS", ErrMalformed)
	}
	info.certs = p7.Certificates
	var ok bool
	if info.digest, ok = digestName(si.DigestAlgorithm.Algorithm); !ok {
		return cmsInfo{}, fmt.Errorf("%w: unsupported digest algorithm %v", ErrMalformed, si.DigestAlgorithm.Algorithm)
	}
	if !supportedSignature(si.DigestEncryptionAlgorithm.Algorithm) {
		return cmsInfo{}, fmt.Errorf("%w: unsupported signature algorithm %v", ErrMalformed, si.DigestEncryptionAlgorithm.Algorithm)
	}

	if len(si.AuthenticatedAttributes) > 0 {
		var n struct{ contentType, messageDigest, signingTime int }
		for _, a := range si.AuthenticatedAttributes {
			switch {
			case a.Type.Equal(pkcs7.OIDAttributeContentType):
				n.contentType++
				var ct asn1.ObjectIdentifier
				if err := singleValue(a.Value.Bytes, &ct); err != nil {
					return cmsInfo{}, fmt.Errorf("%w: contentType attribute: %w", ErrMalformed, err)
				}
				// RFC 8551 §3.5.3 signs a MIME entity: id-data.
				if !ct.Equal(pkcs7.OIDData) {
					return cmsInfo{}, fmt.Errorf("%w: contentType attribute is %v, not id-data", ErrBadSignature, ct)
				}
			case a.Type.Equal(pkcs7.OIDAttributeMessageDigest):
				n.messageDigest++
				var d []byte
				if err := singleValue(a.Value.Bytes, &d); err != nil {
					return cmsInfo{}, fmt.Errorf("%w: messageDigest attribute: %w", ErrMalformed, err)
				}
			case a.Type.Equal(pkcs7.OIDAttributeSigningTime):
				n.signingTime++
				if err := singleValue(a.Value.Bytes, &info.signingTime); err != nil {
					return cmsInfo{}, fmt.Errorf("%w: signingTime attribute: %w", ErrMalformed, err)
				}
			}
		}
		// RFC 5652 §5.3: with signed attributes, contentType and
		// messageDigest MUST be present; §11: none of the three may occur
		// more than once.
		if n.contentType != 1 || n.messageDigest != 1 || n.signingTime > 1 {
			return cmsInfo{}, fmt.Errorf("%w: signed attributes hold %d contentType, %d messageDigest, %d signingTime (want 1, 1, at most 1)",
				ErrMalformed, n.contentType, n.messageDigest, n.signingTime)
		}
	}

	p7.Content = content
	if err := p7.Verify(); err != nil {
		var mismatch *pkcs7.MessageDigestMismatchError
		var outside *pkcs7.SigningTimeNotValidError
		switch {
		case errors.As(err, &mismatch):
			return cmsInfo{}, fmt.Errorf("%w: the content digest differs from the signed messageDigest", ErrBadSignature)
		case errors.As(err, &outside):
			return cmsInfo{}, fmt.Errorf("%w: signed at %s, outside the certificate validity %s to %s", ErrUntrusted,
				outside.SigningTime.UTC().Format(time.RFC3339), outside.NotBefore.UTC().Format(time.RFC3339), outside.NotAfter.UTC().Format(time.RFC3339))
		default:
			return cmsInfo{}, fmt.Errorf("%w: %w", ErrBadSignature, err)
		}
	}
	return info, nil
}

// singleValue decodes the one value of an attribute's SET OF values (RFC
// 5652 §11.1–11.3: these attributes are single-valued).
func singleValue(set []byte, out any) error {
	rest, err := asn1.Unmarshal(set, out)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return errors.New("more than one value")
	}
	return nil
}

// digestName names a digest algorithm as micalg does (RFC 8551 §3.4.3.2;
// "sha1" as RFC 3851 and the PEC providers write it).
func digestName(oid asn1.ObjectIdentifier) (string, bool) {
	switch {
	case oid.Equal(pkcs7.OIDDigestAlgorithmSHA1):
		return "sha1", true
	case oid.Equal(pkcs7.OIDDigestAlgorithmSHA256):
		return "sha-256", true
	case oid.Equal(pkcs7.OIDDigestAlgorithmSHA384):
		return "sha-384", true
	case oid.Equal(pkcs7.OIDDigestAlgorithmSHA512):
		return "sha-512", true
	}
	return "", false
}

// supportedSignature reports whether we accept a SignerInfo signature
// algorithm: RSA PKCS #1 v1.5 or ECDSA (no DSA, no MD5).
func supportedSignature(oid asn1.ObjectIdentifier) bool {
	for _, ok := range []asn1.ObjectIdentifier{
		pkcs7.OIDEncryptionAlgorithmRSA,
		pkcs7.OIDEncryptionAlgorithmRSASHA1,
		pkcs7.OIDEncryptionAlgorithmRSASHA256,
		pkcs7.OIDEncryptionAlgorithmRSASHA384,
		pkcs7.OIDEncryptionAlgorithmRSASHA512,
		pkcs7.OIDDigestAlgorithmECDSASHA1,
		pkcs7.OIDDigestAlgorithmECDSASHA256,
		pkcs7.OIDDigestAlgorithmECDSASHA384,
		pkcs7.OIDDigestAlgorithmECDSASHA512,
		pkcs7.OIDEncryptionAlgorithmECDSAP256,
		pkcs7.OIDEncryptionAlgorithmECDSAP384,
		pkcs7.OIDEncryptionAlgorithmECDSAP521,
	} {
		if oid.Equal(ok) {
			return true
		}
	}
	return false
}

// checkBERNesting walks the first BER element of b (X.690 §8.1) without
// recursion and fails when it is truncated or nests constructed elements
// deeper than maxDepth.
func checkBERNesting(b []byte, maxDepth int) error {
	const indefinite = -1
	var ends []int // end offset of each open constructed element
	i := 0
	for {
		for len(ends) > 0 {
			top := ends[len(ends)-1]
			if top == indefinite {
				if i+1 < len(b) && b[i] == 0 && b[i+1] == 0 {
					i += 2
					ends = ends[:len(ends)-1]
					continue
				}
				break
			}
			if i > top {
				return errors.New("BER element overruns its parent")
			}
			if i < top {
				break
			}
			ends = ends[:len(ends)-1]
		}
		if len(ends) == 0 && i > 0 {
			return nil
		}
		if i >= len(b) {
			return errors.New("truncated BER")
		}
		id := b[i]
		i++
		if id&0x1f == 0x1f { // high tag number form
			for {
				if i >= len(b) {
					return errors.New("truncated BER tag")
				}
				c := b[i]
				i++
				if c&0x80 == 0 {
					break
				}
			}
		}
		if i >= len(b) {
			return errors.New("truncated BER length")
		}
		l := int(b[i])
		i++
		constructed := id&0x20 != 0
		end := indefinite
		switch {
		case l == 0x80:
			if !constructed {
				return errors.New("indefinite length on a primitive BER element")
			}
		case l > 0x80:
			n := l & 0x7f
			if n > 4 || i+n > len(b) {
				return errors.New("bad BER length")
			}
			length := 0
			for ; n > 0; n-- {
				length = length<<8 | int(b[i])
				i++
			}
			end = i + length
		default:
			end = i + l
		}
		if end != indefinite {
			if end > len(b) {
				return errors.New("BER length beyond the data")
			}
			if len(ends) > 0 && ends[len(ends)-1] != indefinite && end > ends[len(ends)-1] {
				return errors.New("BER element overruns its parent")
			}
		}
		if !constructed {
			i = end
			continue
		}
		if len(ends) >= maxDepth {
			return fmt.Errorf("BER nested deeper than %d levels", maxDepth)
		}
		ends = append(ends, end)
	}
}
