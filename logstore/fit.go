package logstore

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"unicode/utf8"
)

// No record too large (docs/logformat.md, "Long values"). A line is at
// most MaxLine octets, but what a client sends is not: a Subject folded
// over a megabyte is legal under the line-length rules of RFC 5322 §2.1.1,
// and a record that cannot be written would leave its submission neither
// accepted nor refused. So Append cuts every long value the caller gives
// to a fixed size and ends it with a marker that holds the length and the
// SHA-256 of the whole value: the record still identifies the message
// (the envelope, kept in the log's sha256, holds the whole Subject).

// Field limits, in octets of the value as written (before JSON escaping).
const (
	// MaxText bounds subject and detail.
	MaxText = 4096
	// MaxValue bounds every other string a caller sets: addresses,
	// identifiers, violation codes.
	MaxValue = 1024
	// MaxRecipients bounds the recipients written in one record; the
	// marker entry that follows says how many more there were. Should a
	// record still not fit (values that JSON escapes at six octets each),
	// its recipients are all replaced by the marker (allRecipientsCut).
	MaxRecipients = 500
)

// cutValue returns s if it fits in limit octets, else its longest prefix
// on a character boundary that fits with the marker
// "…[cut: <octets> octets, sha256 <hex>]".
func cutValue(s string, limit int) string {
	if len(s) <= limit {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	marker := fmt.Sprintf("…[cut: %d octets, sha256 %s]", len(s), hex.EncodeToString(sum[:]))
	keep := max(limit-len(marker), 0)
	for keep > 0 && !utf8.RuneStart(s[keep]) {
		keep--
	}
	return s[:keep] + marker
}

// fit cuts the long values of r (a copy the caller no longer shares).
func fit(r *Record) {
	r.Subject, r.Detail = cutValue(r.Subject, MaxText), cutValue(r.Detail, MaxText)
	for _, p := range []*string{&r.PECID, &r.MsgID, &r.Sender, &r.Provider, &r.User, &r.ClientIP, &r.TLS, &r.SHA256} {
		*p = cutValue(*p, MaxValue)
	}
	if r.Generated != nil {
		g := *r.Generated
		g.Envelope, g.Receipt, g.Notice = cutValue(g.Envelope, MaxValue), cutValue(g.Receipt, MaxValue), cutValue(g.Notice, MaxValue)
		r.Generated = &g
	}
	if len(r.Recipients) > 0 {
		list := make([]Recipient, 0, min(len(r.Recipients), MaxRecipients+1))
		for i, x := range r.Recipients {
			if i == MaxRecipients {
				list = append(list, recipientsMarker(r.Recipients, len(r.Recipients)-MaxRecipients))
				break
			}
			list = append(list, Recipient{Addr: cutValue(x.Addr, MaxValue), Tipo: cutValue(x.Tipo, 32)})
		}
		r.Recipients = list
	}
	if len(r.Violations) > 0 {
		v := make([]string, len(r.Violations))
		for i, s := range r.Violations {
			v[i] = cutValue(s, MaxValue)
		}
		r.Violations = v
	}
}

// recipientsMarker is the entry that stands for the last n recipients of
// all: their number and the SHA-256 of the whole list ("addr tipo\n"
// for each).
func recipientsMarker(all []Recipient, n int) Recipient {
	h := sha256.New()
	for _, y := range all {
		fmt.Fprintf(h, "%s %s\n", y.Addr, y.Tipo)
	}
	return Recipient{Addr: fmt.Sprintf("…[cut: %d recipients, sha256 of the whole list %s]", n, hex.EncodeToString(h.Sum(nil)))}
}

// allRecipientsCut replaces the recipients of r by the marker alone.
func allRecipientsCut(r *Record, orig []Recipient) {
	r.Recipients = []Recipient{recipientsMarker(orig, len(orig))}
}
