package pec

import "strings"

// SMTPEnvelope is the SMTP transaction that carried a submission: the
// reverse-path (MAIL FROM) and the forward-paths (RCPT TO). RFC 6109 §2.1:
// these are the certification data, MAIL FROM certifies the sender and
// RCPT TO the recipients.
type SMTPEnvelope struct {
	From string   // reverse-path, without angle brackets
	To   []string // forward-paths, without angle brackets, in RCPT order
	// UTF8 is true when the client used the SMTPUTF8 extension (RFC 6531),
	// which allows UTF-8 in header fields (RFC 6532).
	UTF8 bool
}

// Limits are the provider's limits applied by Inspect.
type Limits struct {
	// MaxSizeTimesRecipients bounds message size × number of recipients
	// (RFC 6109 §3.1.1). Zero means DefaultMaxSizeTimesRecipients.
	MaxSizeTimesRecipients int64
	// MaxRecipients bounds the number of forward-paths. Zero means
	// DefaultMaxRecipients.
	MaxRecipients int
}

const (
	// DefaultMaxSizeTimesRecipients is 100 MB (decimal), the figure most
	// Italian providers advertise today. RFC 6109 §3.1.2 quotes 30 MB from
	// the 2005 rules; providers have since raised it.
	DefaultMaxSizeTimesRecipients int64 = 100 * 1000 * 1000
	// DefaultMaxRecipients is the default bound on recipients per message.
	DefaultMaxRecipients = 500
)

// Receipt types (tipo ricevuta) a sender may request with X-TipoRicevuta
// (RFC 6109 §3.3.2; digest §3.3).
const (
	ReceiptComplete = "completa"
	ReceiptBrief    = "breve"
	ReceiptConcise  = "sintetica"
)

// Submission is a message as submitted by a user, parsed by Inspect. When
// Inspect finds violations the Submission is still filled in as far as the
// message allowed, so that the non-acceptance notice can name the sender,
// the subject and the recipients.
type Submission struct {
	// Raw is the message exactly as received (CRLF line ends).
	Raw []byte
	// HeaderLen is the length of the header section in Raw, including
	// the empty line that ends it (0 if the message has no body separator
	// and is all header).
	HeaderLen int

	// Sender is the reverse-path: the address the receipts and notices
	// go to (RFC 6109 §2.1: never Reply-To).
	Sender string
	// From is the address in the From: field ("" when missing or invalid).
	From string
	// To and Cc are the addresses of the To: and Cc: fields, in order,
	// as written (no duplicates removed).
	To, Cc []string
	// ReplyTo is the first address of Reply-To: ("" when absent).
	ReplyTo string
	// Subject is the decoded subject (RFC 2047 or UTF-8), "" when absent.
	Subject string
	// MessageID is the client's Message-ID including angle brackets,
	// "" when the message has none.
	MessageID string
	// ReceiptType is the X-TipoRicevuta requested: completa (default),
	// breve or sintetica.
	ReceiptType string
	// Recipients is the set of forward-paths (RCPT TO), in order.
	Recipients []string
}

// Addressees returns the certification recipients listed in receipts and
// daticert.xml: the To: and Cc: addresses with duplicates removed
// (case-insensitively), or the forward-paths when the message names none.
func (s *Submission) Addressees() []string {
	var out []string
	seen := map[string]bool{}
	add := func(list []string) {
		for _, a := range list {
			k := foldAddr(a)
			if a == "" || seen[k] {
				continue
			}
			seen[k] = true
			out = append(out, a)
		}
	}
	add(s.To)
	add(s.Cc)
	if len(out) == 0 {
		add(s.Recipients)
	}
	return out
}

// Violation is one failed formal check. Code is stable (logs, tests and
// the SMTP replies rely on it); Italian completes the notice's sentence
// "a causa di …" and is its daticert <errore-esteso>; English says the
// same for logs and tools. Args are the details the SMTP reply texts fill
// in (gateway, docs/replies.md): "line", "length", "field", "count", "n",
// "max", "size", by code.
type Violation struct {
	Code    string
	Italian string
	English string
	Args    map[string]string
}

func (v Violation) Error() string { return v.Code + ": " + v.English }

// foldAddr is the comparison key of an address: RFC 6109 §3.1.1 checks
// compare addresses case-insensitively (RFC 5321 §2.4 lets a server treat
// local parts as case-sensitive, but no PEC provider does).
func foldAddr(a string) string { return strings.ToLower(strings.TrimSpace(a)) }
