package pec

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// Directory says whether a domain is a PEC domain (RFC 6109 §5.3: the
// managedDomains of the providers' index, indice dei gestori).
type Directory interface {
	IsPEC(domain string) bool
}

// Recipient is an addressee classified for receipts and daticert.xml
// (RFC 6109 §3.1.4, §4.4).
type Recipient struct {
	Address string
	// Certified is true when the address's domain is a PEC domain
	// (destinatario certificato); false for ordinary mail (esterno).
	Certified bool
}

// Tipo is the daticert.xml destinatari type (RFC 6109 §4.4):
// "certificato" or "esterno".
func (r Recipient) Tipo() string {
	if r.Certified {
		return "certificato"
	}
	return "esterno"
}

// Label is the text that follows the address in the receipts (RFC 6109
// §3.1.4): "posta certificata" or "posta ordinaria".
func (r Recipient) Label() string {
	if r.Certified {
		return "posta certificata"
	}
	return "posta ordinaria"
}

// DomainDirectory is a Directory backed by a list of domains: the
// provider's own mail domains plus the managedDomains of the local copy of
// the providers' index (RFC 6109 §5.3). It is read-only once built, so it
// is safe for concurrent use.
type DomainDirectory struct {
	domains map[string]struct{}
}

// NewDomainDirectory returns a directory of the PEC domains own (the
// provider's own mail domains, always PEC) and domains (usually the
// result of ParseLDIF). Names are compared case-insensitively, without a
// trailing dot, in their ASCII (A-label) form, so "città.it" and
// "xn--citt-3na.it" are the same domain.
func NewDomainDirectory(own []string, domains []string) *DomainDirectory {
	d := &DomainDirectory{domains: make(map[string]struct{}, len(own)+len(domains))}
	for _, list := range [][]string{own, domains} {
		for _, name := range list {
			if k := domainKey(name); k != "" {
				d.domains[k] = struct{}{}
			}
		}
	}
	return d
}

// IsPEC reports whether domain is in the directory. RFC 6109 §5.3: the
// lookup is case-insensitive.
func (d *DomainDirectory) IsPEC(domain string) bool {
	if d == nil {
		return false
	}
	k := domainKey(domain)
	if k == "" {
		return false
	}
	_, ok := d.domains[k]
	return ok
}

// Classify classifies each address by the domain after its last '@'
// (RFC 5322 §3.4.1: a local part may hold a quoted '@'). The result has
// one Recipient per address, in order. A nil Directory classifies every
// address as ordinary mail.
func Classify(dir Directory, addrs []string) []Recipient {
	out := make([]Recipient, 0, len(addrs))
	for _, a := range addrs {
		r := Recipient{Address: a}
		if i := strings.LastIndexByte(a, '@'); i >= 0 && dir != nil {
			r.Certified = dir.IsPEC(a[i+1:])
		}
		out = append(out, r)
	}
	return out
}

// domainKey is the comparison key of a domain: lower case, no trailing
// dot, A-labels (RFC 5890 §2.3.2.1). A name IDNA rejects keeps its
// lower-case form, so it still matches itself.
func domainKey(name string) string {
	name = strings.TrimSuffix(strings.TrimSpace(name), ".")
	if name == "" {
		return ""
	}
	if !utf8.ValidString(name) {
		return strings.ToLower(name)
	}
	if a, err := idna.Lookup.ToASCII(name); err == nil {
		return strings.ToLower(a)
	}
	return strings.ToLower(name)
}

// maxDomainLen and maxLabelLen are the DNS limits of RFC 1035 §2.3.4.
const (
	maxDomainLen = 253
	maxLabelLen  = 63
)

// errBadDomain is wrapped by the errors of checkDomain.
var errBadDomain = errors.New("not a valid domain name")

// checkDomain returns the key of a managedDomains value, or an error when
// it is not a domain name: RFC 6109 §5.3 declares managedDomains as
// dot-atom domains; we require host names (RFC 1123 §2.1 letters, digits,
// hyphens; RFC 5891 for internationalized labels).
func checkDomain(name string) (string, error) {
	v := strings.TrimSuffix(strings.TrimSpace(name), ".")
	if v == "" {
		return "", fmt.Errorf("empty domain: %w", errBadDomain)
	}
	if !utf8.ValidString(v) {
		return "", fmt.Errorf("%q is not UTF-8: %w", name, errBadDomain)
	}
	a, err := idna.Lookup.ToASCII(v)
	if err != nil {
		return "", fmt.Errorf("%q: %w: %w", name, errBadDomain, err)
	}
	a = strings.ToLower(a)
	if len(a) > maxDomainLen {
		return "", fmt.Errorf("%q is longer than %d octets: %w", name, maxDomainLen, errBadDomain)
	}
	for label := range strings.SplitSeq(a, ".") {
		if len(label) == 0 || len(label) > maxLabelLen {
			return "", fmt.Errorf("%q has an empty or over-long label: %w", name, errBadDomain)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return "", fmt.Errorf("%q has a label starting or ending with '-': %w", name, errBadDomain)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
				return "", fmt.Errorf("%q holds %q: %w", name, c, errBadDomain)
			}
		}
	}
	return a, nil
}

// managedDomainsOID is the OID of the managedDomains attribute type
// (RFC 6109 §5.6), which LDIF may use instead of its name (RFC 2849
// AttributeType = ldap-oid / name).
const managedDomainsOID = "1.3.6.1.4.1.16572.2.2.5"

// ParseLDIF returns every managedDomains value of an LDIF export of the
// providers' index (RFC 6109 §5.3, §5.6), in the key form of
// NewDomainDirectory (lower case, A-labels, no trailing dot), without
// duplicates, in order of first appearance.
//
// It reads LDIF content records (RFC 2849): CRLF or LF line ends, folded
// lines (a continuation starts with one space), '#' comments, an optional
// "version: 1", records separated by empty lines and starting with "dn:",
// attribute names case-insensitive with options ("managedDomains;x-foo"),
// base64 values ("attr:: "). URL values ("attr:< ") are not fetched: one
// for managedDomains is an error. Errors name the line: "ldif line 12: …".
func ParseLDIF(data []byte) ([]string, error) {
	var (
		out      []string
		seen     = map[string]bool{}
		inRecord bool
		first    = true // no record seen yet: "version:" allowed
	)
	lines := ldifLines(data)
	for _, l := range lines {
		if l.err != nil {
			return nil, fmt.Errorf("ldif line %d: %w", l.no, l.err)
		}
		if len(l.text) == 0 {
			inRecord = false // RFC 2849: records are separated by empty lines
			continue
		}
		if l.text[0] == '#' {
			continue // RFC 2849: comment lines are ignored
		}
		attr, value, err := ldifAttrVal(l.text)
		if err != nil {
			return nil, fmt.Errorf("ldif line %d: %w", l.no, err)
		}
		if !inRecord {
			if first && strings.EqualFold(attr.name, "version") {
				if string(value.data) != "1" {
					return nil, fmt.Errorf("ldif line %d: unsupported version %q", l.no, value.data)
				}
				first = false
				continue
			}
			// RFC 2849: ldif-attrval-record = dn-spec SEP 1*attrval-spec.
			if !strings.EqualFold(attr.name, "dn") {
				return nil, fmt.Errorf("ldif line %d: record starts with %q, not dn", l.no, attr.name)
			}
			inRecord, first = true, false
			continue
		}
		if !strings.EqualFold(attr.name, "managedDomains") && attr.name != managedDomainsOID {
			continue
		}
		if value.url {
			return nil, fmt.Errorf("ldif line %d: managedDomains from a url is not supported", l.no)
		}
		d, err := checkDomain(string(value.data))
		if err != nil {
			return nil, fmt.Errorf("ldif line %d: managedDomains: %w", l.no, err)
		}
		if !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	return out, nil
}

// ldifLine is a logical LDIF line: a physical line and its continuations.
type ldifLine struct {
	no   int // number of its first physical line, 1-based
	text []byte
	err  error
}

// ldifLines unfolds data (RFC 2849 note 2: a line that begins with a single
// space continues the previous line; the space and the line end are
// removed). SEP is CRLF or LF.
func ldifLines(data []byte) []ldifLine {
	var out []ldifLine
	for no := 1; len(data) > 0; no++ {
		var line []byte
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			line, data = data, nil
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) > 0 && line[0] == ' ' {
			if len(out) == 0 || len(out[len(out)-1].text) == 0 {
				return append(out, ldifLine{no: no, err: errors.New("continuation line with no line to continue")})
			}
			prev := &out[len(out)-1]
			prev.text = append(prev.text, line[1:]...)
			continue
		}
		// Copy: continuations are appended in place.
		out = append(out, ldifLine{no: no, text: append([]byte(nil), line...)})
	}
	return out
}

type ldifAttr struct {
	name    string // AttributeType, without options
	options []string
}

type ldifValue struct {
	data []byte
	url  bool
}

// ldifAttrVal parses an attrval-spec (RFC 2849):
// AttributeDescription ":" ( FILL SAFE-STRING / ":" FILL BASE64-STRING /
// "<" FILL url ).
func ldifAttrVal(line []byte) (ldifAttr, ldifValue, error) {
	i := bytes.IndexByte(line, ':')
	if i < 0 {
		return ldifAttr{}, ldifValue{}, errors.New("missing ':' after the attribute name")
	}
	desc := strings.Split(string(line[:i]), ";")
	attr := ldifAttr{name: desc[0], options: desc[1:]}
	if !validAttrType(attr.name) {
		return ldifAttr{}, ldifValue{}, fmt.Errorf("invalid attribute name %q", line[:i])
	}
	for _, o := range attr.options {
		if !validAttrOption(o) {
			return ldifAttr{}, ldifValue{}, fmt.Errorf("invalid attribute option %q", o)
		}
	}
	rest := line[i+1:]
	var v ldifValue
	switch {
	case len(rest) > 0 && rest[0] == ':':
		enc := bytes.Trim(rest[1:], " ")
		v.data = make([]byte, base64.StdEncoding.DecodedLen(len(enc)))
		n, err := base64.StdEncoding.Decode(v.data, enc)
		if err != nil {
			return ldifAttr{}, ldifValue{}, fmt.Errorf("attribute %s: invalid base64 value: %w", attr.name, err)
		}
		v.data = v.data[:n]
	case len(rest) > 0 && rest[0] == '<':
		v.data, v.url = bytes.TrimLeft(rest[1:], " "), true
	default:
		v.data = bytes.TrimLeft(rest, " ")
		// RFC 2849 SAFE-STRING excludes NUL, CR, LF and 8-bit octets
		// (those values must be base64). 8-bit octets are tolerated: the
		// index is UTF-8 (RFC 6109 §5.3) and some exporters write it raw.
		if i := bytes.IndexAny(v.data, "\x00\r"); i >= 0 {
			return ldifAttr{}, ldifValue{}, fmt.Errorf("attribute %s: octet 0x%02x needs a base64 value", attr.name, v.data[i])
		}
	}
	return attr, v, nil
}

// validAttrType checks RFC 2849 AttributeType: an OID (digits and dots) or
// a letter followed by letters, digits and hyphens.
func validAttrType(s string) bool {
	if s == "" {
		return false
	}
	if '0' <= s[0] && s[0] <= '9' {
		for _, part := range strings.Split(s, ".") {
			if part == "" || strings.Trim(part, "0123456789") != "" {
				return false
			}
		}
		return true
	}
	if !isLetter(s[0]) {
		return false
	}
	return validAttrOption(s)
}

// validAttrOption checks RFC 2849 option: 1*opt-char (letters, digits,
// hyphen).
func validAttrOption(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isLetter(c) && !('0' <= c && c <= '9') && c != '-' {
			return false
		}
	}
	return true
}

func isLetter(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }
