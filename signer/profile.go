package signer

import (
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"strings"
)

// Extension and attribute OIDs checked by CheckProfile (RFC 5280 §4.2.1,
// PKCS #9).
var (
	oidKeyUsage               = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidSubjectAltName         = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidBasicConstraints       = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidAuthorityKeyIdentifier = asn1.ObjectIdentifier{2, 5, 29, 35}
	oidSubjectKeyIdentifier   = asn1.ObjectIdentifier{2, 5, 29, 14}
	oidEmailAddress           = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 1}
)

// providerLocalPart is the local part of the address a PEC provider signs
// with and names in its certificate: posta-certificata@<domain>.
const providerLocalPart = "posta-certificata"

// CheckProfile checks a provider signing certificate against RFC 6109 §5.5
// and returns one warning per difference, each naming what differs (empty =
// conforms). domain is the provider mail domain: the certificate must name
// posta-certificata@<domain> (RFC 6109 §5.5, and §2.1: it is the From of
// every message the provider signs).
//
// The raw extensions are read, not crypto/x509's digest of them, since
// what matters here is presence and criticality.
func CheckProfile(cert *x509.Certificate, domain string) []string {
	if cert == nil {
		return []string{"no certificate"}
	}
	var warnings []string
	warn := func(format string, args ...any) {
		warnings = append(warnings, fmt.Sprintf(format, args...))
	}
	if cert.Version != 3 {
		warn("certificate is X.509 version %d; RFC 6109 §5.5 requires version 3", cert.Version)
	}

	find := func(oid asn1.ObjectIdentifier) (critical, present bool) {
		for _, e := range cert.Extensions {
			if e.Id.Equal(oid) {
				return e.Critical, true
			}
		}
		return false, false
	}

	// RFC 6109 §5.5: KeyUsage critical, with digitalSignature.
	if critical, ok := find(oidKeyUsage); !ok {
		warn("KeyUsage extension missing; RFC 6109 §5.5 requires it, critical, with digitalSignature")
	} else {
		if !critical {
			warn("KeyUsage extension is not critical; RFC 6109 §5.5 requires it critical")
		}
		if cert.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
			warn("KeyUsage lacks digitalSignature; RFC 6109 §5.5 requires it")
		}
	}

	// RFC 6109 §5.5: the address in subjectAltName rfc822Name, non-critical.
	want := providerLocalPart + "@" + domain
	matches := func(addr string) bool {
		if domain == "" { // any provider domain will do
			return strings.HasPrefix(strings.ToLower(addr), providerLocalPart+"@")
		}
		return strings.EqualFold(addr, want)
	}
	if domain == "" {
		want = providerLocalPart + "@<domain>"
	}
	if critical, ok := find(oidSubjectAltName); !ok {
		warn("subjectAltName extension missing; RFC 6109 §5.5 requires rfc822Name %s", want)
	} else {
		if critical {
			warn("subjectAltName extension is critical; RFC 6109 §5.5 wants it non-critical")
		}
		found := false
		for _, a := range cert.EmailAddresses {
			found = found || matches(a)
		}
		if !found {
			warn("subjectAltName has no rfc822Name %s (it has %q)", want, cert.EmailAddresses)
		}
	}

	// RFC 6109 §5.5: BasicConstraints MUST NOT be present, not even CA:FALSE.
	if _, ok := find(oidBasicConstraints); ok {
		if cert.IsCA {
			warn("BasicConstraints extension present (CA:TRUE); RFC 6109 §5.5 forbids it in a signing certificate")
		} else {
			warn("BasicConstraints extension present (CA:FALSE); RFC 6109 §5.5 says it MUST NOT be present")
		}
	}

	// RFC 6109 §5.5 (and RFC 5280 §4.2.1.1–2): AKI with keyIdentifier and
	// SKI, both non-critical.
	if critical, ok := find(oidAuthorityKeyIdentifier); !ok {
		warn("AuthorityKeyIdentifier extension missing; RFC 6109 §5.5 requires it")
	} else {
		if critical {
			warn("AuthorityKeyIdentifier extension is critical; RFC 6109 §5.5 wants it non-critical")
		}
		if len(cert.AuthorityKeyId) == 0 {
			warn("AuthorityKeyIdentifier has no keyIdentifier; RFC 6109 §5.5 requires one")
		}
	}
	if critical, ok := find(oidSubjectKeyIdentifier); !ok {
		warn("SubjectKeyIdentifier extension missing; RFC 6109 §5.5 requires it")
	} else if critical {
		warn("SubjectKeyIdentifier extension is critical; RFC 6109 §5.5 wants it non-critical")
	}

	// RFC 6109 §5.5: other extensions are optional and non-critical.
	for _, e := range cert.Extensions {
		switch {
		case e.Id.Equal(oidKeyUsage), e.Id.Equal(oidSubjectAltName), e.Id.Equal(oidBasicConstraints),
			e.Id.Equal(oidAuthorityKeyIdentifier), e.Id.Equal(oidSubjectKeyIdentifier):
		case e.Critical:
			warn("extension %v is critical; RFC 6109 §5.5 wants extensions other than KeyUsage non-critical", e.Id)
		}
	}

	// RFC 6109 §5.5: the address SHOULD NOT be in the subject DN; the
	// provider name must be in CN or O.
	for _, n := range cert.Subject.Names {
		if n.Type.Equal(oidEmailAddress) {
			warn("subject DN contains an emailAddress (%v); RFC 6109 §5.5 says it SHOULD NOT", n.Value)
		}
	}
	if cert.Subject.CommonName == "" && len(cert.Subject.Organization) == 0 {
		warn("subject DN has neither CN nor O; RFC 6109 §5.5 wants the provider name in one of them")
	}
	return warnings
}
