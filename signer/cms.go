package signer

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"math/big"
	"slices"
	"time"

	"github.com/smallstep/pkcs7"
)

// We encode the SignedData ourselves instead of using smallstep/pkcs7's
// SignedData.AddSignerChain: v0.2.3 hard-codes signingTime = time.Now()
// (sign.go, AddSignerChain), while a PEC signature must carry the
// transaction's instant (DM 2 novembre 2005 art. 9), the same one written
// in Date:, the text and daticert.xml. smallstep/pkcs7 is still what parses
// and verifies, and supplies the OIDs.

// signatureAlgorithm is what goes into SignerInfo.signatureAlgorithm and the
// matching algorithm crypto/x509 checks our own signature with.
type signatureAlgorithm struct {
	id   pkix.AlgorithmIdentifier
	x509 x509.SignatureAlgorithm
}

var (
	// RFC 3370 §3.2 / RFC 8017: rsaEncryption with NULL parameters,
	// PKCS #1 v1.5 (deterministic, so equal inputs give equal signatures).
	rsaWithSHA256 = signatureAlgorithm{
		id:   pkix.AlgorithmIdentifier{Algorithm: pkcs7.OIDEncryptionAlgorithmRSA, Parameters: asn1.NullRawValue},
		x509: x509.SHA256WithRSA,
	}
	// RFC 5753 §2.1.1, RFC 5758 §3.2: ecdsa-with-SHA256, parameters absent.
	ecdsaWithSHA256 = signatureAlgorithm{
		id:   pkix.AlgorithmIdentifier{Algorithm: pkcs7.OIDDigestAlgorithmECDSASHA256},
		x509: x509.ECDSAWithSHA256,
	}
	// RFC 5754 §2: SHA-256 parameters SHOULD be absent.
	sha256Algorithm = pkix.AlgorithmIdentifier{Algorithm: pkcs7.OIDDigestAlgorithmSHA256}
)

type contentInfo struct {
	ContentType asn1.ObjectIdentifier
	Content     asn1.RawValue // [0] EXPLICIT, pre-encoded
}

type encapsulatedContentInfo struct {
	EContentType asn1.ObjectIdentifier // eContent absent: detached (RFC 5652 §5.2)
}

type issuerAndSerialNumber struct {
	Issuer       asn1.RawValue
	SerialNumber *big.Int
}

type signerInfo struct {
	Version            int
	SID                issuerAndSerialNumber
	DigestAlgorithm    pkix.AlgorithmIdentifier
	SignedAttrs        asn1.RawValue // [0] IMPLICIT SET OF Attribute, pre-encoded
	SignatureAlgorithm pkix.AlgorithmIdentifier
	Signature          []byte
}

type signedData struct {
	Version          int
	DigestAlgorithms []pkix.AlgorithmIdentifier `asn1:"set"`
	EncapContentInfo encapsulatedContentInfo
	Certificates     asn1.RawValue // [0] IMPLICIT CertificateSet, pre-encoded
	SignerInfos      []signerInfo  `asn1:"set"`
}

type attribute struct {
	Type   asn1.ObjectIdentifier
	Values asn1.RawValue // SET OF AttributeValue
}

// attributeSource returns the DER encodings of the signed attributes for a
// content digest and signing time; tests swap it to build broken CMS.
type attributeSource func(digest []byte, at time.Time) ([][]byte, error)

// standardAttributes are exactly the signed attributes RFC 8551 §2.5 and
// RFC 5652 §11 ask for: contentType (id-data), messageDigest and one
// signingTime (RFC 5652 §11.3: UTCTime through 2049, GeneralizedTime after,
// which is what encoding/asn1 chooses for a time.Time in UTC).
func standardAttributes(digest []byte, at time.Time) ([][]byte, error) {
	ct, err := encodeAttribute(pkcs7.OIDAttributeContentType, pkcs7.OIDData)
	if err != nil {
		return nil, err
	}
	md, err := encodeAttribute(pkcs7.OIDAttributeMessageDigest, digest)
	if err != nil {
		return nil, err
	}
	st, err := encodeAttribute(pkcs7.OIDAttributeSigningTime, at.UTC())
	if err != nil {
		return nil, err
	}
	return [][]byte{ct, md, st}, nil
}

// encodeAttribute encodes an Attribute with a single value (RFC 5652 §5.3).
func encodeAttribute(oid asn1.ObjectIdentifier, value any) ([]byte, error) {
	v, err := asn1.Marshal(value)
	if err != nil {
		return nil, fmt.Errorf("encode attribute %v: %w", oid, err)
	}
	return asn1.Marshal(attribute{
		Type:   oid,
		Values: asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSet, IsCompound: true, Bytes: v},
	})
}

// signedData returns the DER ContentInfo holding a detached SignedData over
// content (RFC 5652 §5), signed at the instant at.
func (s *Signer) signedData(content []byte, at time.Time, attrs attributeSource) ([]byte, error) {
	return s.signedDigest(sha256.Sum256(content), at, attrs)
}

// signedDigest is signedData for content whose SHA-256 is digest, so
// that Sign hashes a large entity once.
func (s *Signer) signedDigest(digest [sha256.Size]byte, at time.Time, attrs attributeSource) ([]byte, error) {
	list, err := attrs(digest[:], at)
	if err != nil {
		return nil, err
	}
	// DER orders a SET OF by the encodings of its elements (X.690 §11.6);
	// the receiver re-encodes the set as DER to check the signature.
	list = slices.Clone(list)
	slices.SortFunc(list, bytes.Compare)
	set, err := asn1.Marshal(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSet, IsCompound: true, Bytes: bytes.Join(list, nil)})
	if err != nil {
		return nil, fmt.Errorf("encode signed attributes: %w", err)
	}
	// RFC 5652 §5.4: the signature is over the DER encoding of the SET OF
	// (tag 0x31), not over the [0] IMPLICIT form carried in SignerInfo.
	sum := sha256.Sum256(set)
	sig, err := s.key.Sign(rand.Reader, sum[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	// A key (or an HSM) that signs wrongly must not let an unverifiable
	// message out: check the signature against the certificate first.
	if err := s.cert.CheckSignature(s.alg.x509, set, sig); err != nil {
		return nil, fmt.Errorf("the key produced a signature the certificate does not verify: %w", err)
	}
	implicit := slices.Clone(set)
	implicit[0] = 0xa0 // [0] IMPLICIT, constructed; same length octets

	var certs []byte
	certs = append(certs, s.cert.Raw...)
	for _, c := range s.chain {
		certs = append(certs, c.Raw...)
	}
	sd := signedData{
		Version:          1, // RFC 5652 §5.1: no attribute certificates, id-data, issuerAndSerialNumber
		DigestAlgorithms: []pkix.AlgorithmIdentifier{sha256Algorithm},
		EncapContentInfo: encapsulatedContentInfo{EContentType: pkcs7.OIDData},
		Certificates:     asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: certs},
		SignerInfos: []signerInfo{{
			Version: 1, // RFC 5652 §5.3: sid is issuerAndSerialNumber
			SID: issuerAndSerialNumber{
				Issuer:       asn1.RawValue{FullBytes: s.cert.RawIssuer},
				SerialNumber: s.cert.SerialNumber,
			},
			DigestAlgorithm:    sha256Algorithm,
			SignedAttrs:        asn1.RawValue{FullBytes: implicit},
			SignatureAlgorithm: s.alg.id,
			Signature:          sig,
		}},
	}
	inner, err := asn1.Marshal(sd)
	if err != nil {
		return nil, fmt.Errorf("encode SignedData: %w", err)
	}
	out, err := asn1.Marshal(contentInfo{
		ContentType: pkcs7.OIDSignedData,
		Content:     asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: inner},
	})
	if err != nil {
		return nil, fmt.Errorf("encode ContentInfo: %w", err)
	}
	return out, nil
}
