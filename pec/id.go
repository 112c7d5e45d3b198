package pec

import (
	"encoding/base32"
	"fmt"
	"io"
	"strings"

	"golang.org/x/net/idna"
)

// idRandomBytes is the random part of an identifier: 128 bits, above the
// 96 that make a collision negligible over the lifetime of the service.
const idRandomBytes = 16

var idEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// NewID returns a new PEC identifier (RFC 6109 §2.2.1, §1.2.3: unique,
// "[alphanumeric string]@[provider mail domain]"), of the form
// <yyyymmddhhmmss>.<128 random bits, base32>@<domain>, without angle
// brackets. It is the envelope's Message-ID, the new Message-ID of the
// original inside postacert.eml and daticert's <identificativo>. The
// random source is the caller's (crypto/rand.Reader in production).
func NewID(at Instant, random io.Reader, domain string) (string, error) {
	if domain == "" || strings.ContainsAny(domain, "@<> \t\r\n") {
		return "", fmt.Errorf("pec identifier: invalid provider domain %q", domain)
	}
	// The identifier is the envelope's Message-ID (RFC 5322 §3.6.4): a
	// provider domain written in Unicode goes in as its A-label
	// (RFC 5890), so the field stays ASCII and needs no SMTPUTF8 on the
	// way. UNCERTAIN in the rules; real providers use ASCII domains.
	ascii, err := idna.Lookup.ToASCII(domain)
	if err != nil {
		return "", fmt.Errorf("pec identifier: invalid provider domain %q: %w", domain, err)
	}
	b := make([]byte, idRandomBytes)
	if _, err := io.ReadFull(random, b); err != nil {
		return "", fmt.Errorf("pec identifier: reading random bits: %w", err)
	}
	return at.Stamp() + "." + strings.ToLower(idEncoding.EncodeToString(b)) + "@" + strings.ToLower(ascii), nil
}

// DerivedID returns the identifier of a message generated for the
// transaction whose PEC identifier is id (a receipt, a notice): it shares
// the identifier's random part, so the two are visibly related, as in
// Aruba's receipts, and differs by a kind label.
// Example: 20241107165200.abc…@pec.example.it → 20241107165200.abc….accettazione@pec.example.it
func DerivedID(id, kind string) string {
	at := strings.LastIndexByte(id, '@')
	if at < 0 {
		return id + "." + kind
	}
	return id[:at] + "." + kind + id[at:]
}
