package pec

import (
	"bytes"
	"fmt"
	"io"
	"mime"
	"net/mail"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-message/charset"
)

// Violation codes returned by Inspect, one per formal check of RFC 6109
// §3.1.1 (the controlli formali of the punto di accesso). They are stable:
// logs, tests and the SMTP layer rely on them.
const (
	// RFC 6109 §3.1.1: the message must conform to RFC 5322.
	CodeEmptyMessage   = "empty-message"   // nothing but white space
	CodeBareLF         = "bare-lf"         // RFC 5322 §2.1, §2.3: a line ends in LF without CR
	CodeBareCR         = "bare-cr"         // RFC 5322 §2.3: a CR not followed by LF
	CodeLineTooLong    = "line-too-long"   // RFC 5322 §2.1.1: over 998 octets before CRLF
	CodeHeaderSyntax   = "header-syntax"   // RFC 5322 §2.2: neither a field nor a continuation
	CodeHeader8bit     = "header-8bit"     // RFC 6532 §3.2: 8-bit header without SMTPUTF8, or invalid UTF-8
	CodeMissingDate    = "missing-date"    // RFC 5322 §3.6: Date is required
	CodeInvalidDate    = "invalid-date"    // RFC 5322 §3.3: Date is not a date-time
	CodeDuplicateField = "duplicate-field" // RFC 5322 §3.6: a field allowed once appears again
	CodeInvalidReplyTo = "invalid-reply-to"

	// RFC 6109 §3.1.1: a From with one valid address.
	CodeMissingFrom  = "missing-from"
	CodeInvalidFrom  = "invalid-from"
	CodeMultipleFrom = "multiple-from"

	// RFC 6109 §3.1.1: a To with at least one valid address.
	CodeMissingTo = "missing-to"
	CodeInvalidTo = "invalid-to"
	CodeInvalidCc = "invalid-cc"

	// RFC 6109 §3.1.1: the SMTP envelope must coincide with From, To and Cc.
	CodeSenderMismatch    = "sender-mismatch"
	CodeHiddenBcc         = "hidden-bcc"
	CodeRecipientMismatch = "recipient-mismatch"
	CodeNoRecipients      = "no-recipients"

	// RFC 6109 §2.1, §3.1.1: no Bcc value.
	CodeBccHeader = "bcc-header"

	// RFC 6109 §3.1.1, §3.1.2: provider limits.
	CodeSizeLimit         = "size-limit"
	CodeTooManyRecipients = "too-many-recipients"
)

// Codes returns every violation code Inspect can report, in the order of
// the checks.
func Codes() []string {
	return []string{
		CodeEmptyMessage, CodeBareLF, CodeBareCR, CodeLineTooLong, CodeHeaderSyntax, CodeHeader8bit,
		CodeMissingDate, CodeInvalidDate, CodeDuplicateField,
		CodeMissingFrom, CodeInvalidFrom, CodeMultipleFrom,
		CodeMissingTo, CodeInvalidTo, CodeInvalidCc, CodeInvalidReplyTo, CodeBccHeader,
		CodeNoRecipients, CodeTooManyRecipients, CodeSizeLimit,
		CodeSenderMismatch, CodeHiddenBcc, CodeRecipientMismatch,
	}
}

// maxLineLen is the longest line RFC 5322 §2.1.1 allows, excluding CRLF.
const maxLineLen = 998

// maxNamed bounds the addresses named in one violation's English text, so
// a log line stays short however many recipients are wrong; the notice's
// Italian text names up to maxNamedNotice (RFC 6109 §3.1.2: the notice
// says why the message was refused, and whom it was refused for is the
// first thing its sender needs to know).
const (
	maxNamed       = 3
	maxNamedNotice = 20
)

// Header fields Inspect looks at. The ones before hTipoRicevuta may appear
// at most once (RFC 5322 §3.6, the table of field counts).
const (
	hDate = iota
	hFrom
	hSender
	hReplyTo
	hTo
	hCc
	hBcc
	hMessageID
	hInReplyTo
	hReferences
	hSubject
	hTipoRicevuta
	numFields

	hNone = -1
)

// fieldName is the canonical spelling of each field Inspect looks at.
func fieldName(i int) string {
	return [numFields]string{
		"Date", "From", "Sender", "Reply-To", "To", "Cc", "Bcc",
		"Message-ID", "In-Reply-To", "References", "Subject", "X-TipoRicevuta",
	}[i]
}

// fieldIndex returns the index of the field named name (case-insensitive,
// RFC 5322 §1.2.2) or hNone.
func fieldIndex(name []byte) int {
	for i := range numFields {
		if len(name) == len(fieldName(i)) && strings.EqualFold(string(name), fieldName(i)) {
			return i
		}
	}
	return hNone
}

// keepsValue says whether Inspect needs the value of field i; the others are
// only counted (the first Bcc is kept to name its addresses in the notice).
func keepsValue(i int) bool {
	switch i {
	case hSender, hInReplyTo, hReferences:
		return false
	}
	return i >= 0
}

// maxAddressField bounds an address field handed to net/mail. Its parser
// is linear but slow (about 100 ms per MiB, more as the garbage collector
// works), and a real field is far smaller: 500 recipients with display
// names fit in 64 KiB. A longer field is reported as invalid unparsed.
const maxAddressField = 1 << 20

// header is what the single pass over the message gathers.
type header struct {
	count  [numFields]int
	values [numFields]string // unfolded value of the first occurrence
	bcc    bool              // some Bcc field has a non-blank value

	headerLen int // Submission.HeaderLen

	bareLF, bareCR    int // first offending line (1-based), 0 if none
	longLine, longLen int
	badSyntax         int
	badSyntaxFirst    bool // badSyntax is a continuation with no field before it
	bad8bit           int
}

// Inspect parses a submission and runs the formal checks of RFC 6109
// §3.1.1 (controlli formali). It never fails: the Submission is always
// returned, filled in as far as the message allows, together with every
// violation found in a fixed order. No violations means the message is
// accepted.
//
// Only the header section is parsed; the body is scanned once, for line
// ends and line length, so the time is linear in len(raw).
func Inspect(raw []byte, env SMTPEnvelope, lim Limits) (*Submission, []Violation) {
	sub := &Submission{
		Raw:         raw,
		Sender:      env.From,
		ReceiptType: ReceiptComplete,
		Recipients:  slices.Clone(env.To),
	}
	var vs []Violation
	// args: pairs of name and value, the details of the SMTP reply texts.
	add := func(code, italian, english string, args ...string) {
		v := Violation{Code: code, Italian: italian, English: english}
		if len(args) > 0 {
			v.Args = map[string]string{}
			for i := 0; i+1 < len(args); i += 2 {
				v.Args[args[i]] = args[i+1]
			}
		}
		vs = append(vs, v)
	}

	h := scan(raw, env.UTF8)
	sub.HeaderLen = h.headerLen
	p := newAddressParser()

	// RFC 6109 §3.1.1 first check: RFC 5322 conformance. A message with
	// nothing in it is reported once, not as a list of missing fields; only
	// the envelope checks still apply.
	if len(bytes.TrimSpace(raw)) == 0 {
		add(CodeEmptyMessage,
			"un messaggio vuoto",
			"empty message: RFC 6109 §3.1.1 requires an RFC 5322 message with From, To and Date")
		envelopeChecks(sub, env, lim, false, add)
		return sub, vs
	}
	if h.bareLF > 0 {
		add(CodeBareLF,
			fmt.Sprintf("una riga non terminata da CRLF (riga %d)", h.bareLF),
			fmt.Sprintf("line %d ends in a bare LF: every line must end in CRLF (RFC 5322 §2.1, §2.3; RFC 5321 §2.3.8)", h.bareLF),
			"line", itoa(h.bareLF))
	}
	if h.bareCR > 0 {
		add(CodeBareCR,
			fmt.Sprintf("un carattere CR isolato (riga %d)", h.bareCR),
			fmt.Sprintf("line %d holds a bare CR: CR may only appear in CRLF (RFC 5322 §2.3)", h.bareCR),
			"line", itoa(h.bareCR))
	}
	if h.longLine > 0 {
		add(CodeLineTooLong,
			fmt.Sprintf("una riga più lunga di %d caratteri (riga %d)", maxLineLen, h.longLine),
			fmt.Sprintf("line %d is %d octets long: at most %d are allowed before CRLF (RFC 5322 §2.1.1)", h.longLine, h.longLen, maxLineLen),
			"line", itoa(h.longLine), "length", itoa(h.longLen))
	}
	if h.badSyntax > 0 {
		if h.badSyntaxFirst {
			add(CodeHeaderSyntax,
				fmt.Sprintf("un'intestazione malformata (riga %d)", h.badSyntax),
				fmt.Sprintf("line %d continues a header field that does not exist (RFC 5322 §2.2.3)", h.badSyntax),
				"line", itoa(h.badSyntax))
		} else {
			add(CodeHeaderSyntax,
				fmt.Sprintf("un'intestazione malformata (riga %d)", h.badSyntax),
				fmt.Sprintf("line %d is not a header field \"name: value\" nor a continuation starting with white space (RFC 5322 §2.2)", h.badSyntax),
				"line", itoa(h.badSyntax))
		}
	}
	if h.bad8bit > 0 {
		if env.UTF8 {
			add(CodeHeader8bit,
				fmt.Sprintf("caratteri UTF-8 non validi nelle intestazioni (riga %d)", h.bad8bit),
				fmt.Sprintf("line %d of the header is not valid UTF-8 (RFC 6532 §3.2)", h.bad8bit),
				"line", itoa(h.bad8bit))
		} else {
			add(CodeHeader8bit,
				fmt.Sprintf("caratteri non ASCII nelle intestazioni senza SMTPUTF8 (riga %d)", h.bad8bit),
				fmt.Sprintf("line %d of the header holds non-ASCII octets: they need SMTPUTF8 (RFC 5322 §2.2, RFC 6532 §3.2)", h.bad8bit),
				"line", itoa(h.bad8bit))
		}
	}
	if h.count[hDate] == 0 {
		add(CodeMissingDate,
			"assenza del campo Date obbligatorio",
			"missing Date field: it must appear exactly once (RFC 5322 §3.6)")
	} else if !validDate(h.values[hDate]) {
		add(CodeInvalidDate,
			"un campo Date non valido",
			"Date field is not an RFC 5322 date-time (RFC 5322 §3.3)")
	}
	// RFC 5322 §3.6: Date and From exactly once, the others at most once.
	for i := range hTipoRicevuta {
		if h.count[i] > 1 {
			add(CodeDuplicateField,
				fmt.Sprintf("presenza ripetuta del campo %s", fieldName(i)),
				fmt.Sprintf("field %s appears %d times: it is allowed only once (RFC 5322 §3.6)", fieldName(i), h.count[i]),
				"field", fieldName(i), "count", itoa(h.count[i]))
		}
	}

	// RFC 6109 §3.1.1: "a From header with an RFC 5322-valid address".
	// RFC 5322 §3.6.2 allows a mailbox-list in From; RFC 6109 certifies one
	// sender, so we require exactly one mailbox and no group.
	switch {
	case h.count[hFrom] == 0:
		add(CodeMissingFrom,
			"assenza del campo From (mittente)",
			"missing From field: RFC 6109 §3.1.1 requires a From with one valid address")
	default:
		from, code := p.mailbox(h.values[hFrom])
		switch code {
		case "":
			sub.From = from
		case CodeInvalidFrom:
			add(CodeInvalidFrom,
				"un indirizzo del mittente (From) non valido",
				"From field is not a valid mailbox (RFC 6109 §3.1.1, RFC 5322 §3.6.2)")
		case CodeMultipleFrom:
			add(CodeMultipleFrom,
				"un campo From con più di un indirizzo",
				"From field holds more than one mailbox or a group: exactly one address is allowed (RFC 6109 §3.1.1)")
		}
	}

	// RFC 6109 §3.1.1: "a To header with one or more valid addresses". A
	// message with only Cc is refused. Groups (RFC 5322 §3.4, e.g.
	// "undisclosed-recipients:;") contribute no address.
	// RFC 5322 §3.6 allows one To and one Cc; when a client repeats one
	// (already a duplicate-field violation) only the first is read, and the
	// recipients are not compared: the second might hold any of them.
	toOK, ccOK := true, true
	if h.count[hTo] > 0 {
		sub.To, toOK = p.addressList(h.values[hTo])
	}
	if h.count[hCc] > 0 {
		sub.Cc, ccOK = p.addressList(h.values[hCc])
	}
	listsOK := toOK && ccOK && h.count[hTo] <= 1 && h.count[hCc] <= 1
	switch {
	case h.count[hTo] == 0:
		add(CodeMissingTo,
			"assenza del campo To (destinatari)",
			"missing To field: RFC 6109 §3.1.1 requires a To with at least one valid address")
	case !toOK:
		add(CodeInvalidTo,
			"un campo To (destinatari) non valido",
			"To field is not a valid address list (RFC 6109 §3.1.1, RFC 5322 §3.6.3)")
	case len(sub.To) == 0:
		add(CodeInvalidTo,
			"un campo To privo di indirizzi validi",
			"To field names no address: RFC 6109 §3.1.1 requires at least one valid address")
	}
	if !ccOK {
		add(CodeInvalidCc,
			"un campo Cc (destinatari in copia) non valido",
			"Cc field is not a valid address list (RFC 5322 §3.6.3)")
	}

	// RFC 5322 §3.6.2: Reply-To is an address-list. RFC 6109 §2.1: receipts
	// never go there, but a malformed one is still non-conformant.
	if h.count[hReplyTo] > 0 {
		addrs, ok := p.addressList(h.values[hReplyTo])
		if len(addrs) > 0 {
			sub.ReplyTo = addrs[0]
		}
		if !ok {
			add(CodeInvalidReplyTo,
				"un campo Reply-To non valido",
				"Reply-To field is not a valid address list (RFC 5322 §3.6.2)")
		}
	}

	// RFC 6109 §2.1, §3.1.1: Bcc must not contain any value. RFC 5322
	// §3.6.3 allows an empty Bcc, and an empty one carries no hidden
	// recipient, so by the letter of the rule it is tolerated. The notice
	// names the addresses of the (first) field: they are the sender's own.
	if h.bcc {
		it := "presenza di destinatari nel campo Bcc, non ammessi nella PEC"
		if bcc, _ := p.addressList(h.values[hBcc]); len(bcc) > 0 {
			it += ": " + nameForNotice(bcc)
		}
		add(CodeBccHeader, it,
			"Bcc field with a value: hidden recipients are not allowed (RFC 6109 §2.1, §3.1.1)")
	}

	if h.count[hSubject] > 0 {
		sub.Subject = p.subject(h.values[hSubject])
	}
	if h.count[hMessageID] > 0 {
		sub.MessageID = messageID(h.values[hMessageID], env.UTF8)
	}
	// RFC 6109 §3.3.2: X-TipoRicevuta selects the delivery receipt type. An
	// absent or unknown value means the default, completa; an unknown value
	// is not a formal exception (RFC 6109 §3.1.1 does not list it), so it
	// is not a violation.
	if h.count[hTipoRicevuta] > 0 {
		switch t := strings.ToLower(strings.Trim(h.values[hTipoRicevuta], " \t")); t {
		case ReceiptComplete, ReceiptBrief, ReceiptConcise:
			sub.ReceiptType = t
		}
	}

	envelopeChecks(sub, env, lim, listsOK, add)
	return sub, vs
}

// envelopeChecks compares the SMTP envelope with the header (RFC 6109
// §3.1.1) and applies the provider's limits. listsOK is false when To or
// Cc could not be read reliably (unparseable, repeated, or no message at
// all), and then the comparison of recipients is skipped: it would
// only repeat invalid-to, invalid-cc or duplicate-field with wrong names.
func envelopeChecks(sub *Submission, env SMTPEnvelope, lim Limits, listsOK bool, add func(code, italian, english string, args ...string)) {
	n := len(env.To)
	if n == 0 {
		add(CodeNoRecipients,
			"assenza di destinatari nella sessione SMTP (RCPT TO)",
			"no RCPT TO: RFC 6109 §3.1.1 requires forward-paths coinciding with To and Cc")
	}
	maxRcpt := lim.MaxRecipients
	if maxRcpt <= 0 {
		maxRcpt = DefaultMaxRecipients
	}
	// The recipients are counted in the envelope and in To ∪ Cc: the SMTP
	// server answers the RCPT TO beyond the limit with 452 4.5.3 (RFC 5321
	// §4.5.3.1.10; the limit it announces as LIMITS RCPTMAX, RFC 9422), so
	// a client that goes on to DATA hands over at most maxRcpt
	// forward-paths, and the header is what still says how many
	// recipients the message has. headerOver: that is why forward-paths
	// are missing, and the refusal says so rather than recipient-mismatch.
	count, headerOver := n, false
	if listsOK {
		if h := distinct(sub.To, sub.Cc); h > maxRcpt && h > n {
			count, headerOver = h, true
		}
	}
	if count > maxRcpt {
		// Provider policy; RFC 5321 §4.5.3.1.8 requires at least 100.
		add(CodeTooManyRecipients,
			fmt.Sprintf("un numero di destinatari (%d) superiore al massimo consentito (%d)", count, maxRcpt),
			fmt.Sprintf("%d recipients exceed the provider limit of %d per message (RFC 5321 §4.5.3.1.8)", count, maxRcpt),
			"n", itoa(count), "max", itoa(maxRcpt))
	}
	maxSize := lim.MaxSizeTimesRecipients
	if maxSize <= 0 {
		maxSize = DefaultMaxSizeTimesRecipients
	}
	// RFC 6109 §3.1.1: size × recipients within the limit. size*n > max
	// is computed as size > max/n (integer division is exact for this
	// comparison) so that it cannot overflow.
	if size := int64(len(sub.Raw)); n > 0 && size > maxSize/int64(n) {
		add(CodeSizeLimit,
			fmt.Sprintf("una dimensione del messaggio moltiplicata per il numero di destinatari oltre il limite consentito (%d byte)", maxSize),
			fmt.Sprintf("message size %d octets x %d recipients exceeds the limit of %d (RFC 6109 §3.1.1)", size, n, maxSize),
			"size", fmt.Sprint(size), "n", itoa(n), "max", fmt.Sprint(maxSize))
	}

	// RFC 6109 §3.1.1: the reverse-path must coincide with the From
	// address. An empty reverse-path (<>) never does: the receipts could
	// not be delivered.
	if strings.TrimSpace(env.From) == "" {
		add(CodeSenderMismatch,
			"un mittente della sessione SMTP (MAIL FROM) vuoto, diverso dal mittente (From)",
			"empty reverse-path: MAIL FROM must coincide with the From address (RFC 6109 §3.1.1)")
	} else if sub.From != "" && foldAddr(env.From) != foldAddr(sub.From) {
		add(CodeSenderMismatch,
			"un mittente (From) diverso da quello della sessione SMTP (MAIL FROM)",
			fmt.Sprintf("reverse-path %s does not coincide with From %s (RFC 6109 §3.1.1)", env.From, sub.From))
	}

	if !listsOK {
		return
	}
	// RFC 6109 §3.1.1: every forward-path must be in To or Cc; this is what
	// forbids hidden recipients at the SMTP level (RFC 6109 §2.1). The
	// forward-paths are the client's own, so naming them leaks nothing.
	header := map[string]bool{}
	for _, a := range sub.To {
		header[foldAddr(a)] = true
	}
	for _, a := range sub.Cc {
		header[foldAddr(a)] = true
	}
	rcpt := map[string]bool{}
	var hidden []string
	for _, a := range env.To {
		k := foldAddr(a)
		if !header[k] && !rcpt[k] {
			hidden = append(hidden, a)
		}
		rcpt[k] = true
	}
	if len(hidden) > 0 {
		// The notice names them (its text and daticert <errore-esteso>):
		// daticert <destinatari> lists To ∪ Cc only (RFC 6109 §4.4), and
		// these are exactly the recipients that are not there.
		it := "presenza di un destinatario nascosto (Bcc), non ammesso nella PEC: "
		if len(hidden) > 1 {
			it = "presenza di destinatari nascosti (Bcc), non ammessi nella PEC: "
		}
		add(CodeHiddenBcc,
			it+nameForNotice(hidden)+" (in RCPT TO ma non in To o Cc)",
			fmt.Sprintf("hidden Bcc %s %s: every RCPT TO must appear in To or Cc (RFC 6109 §3.1.1)", plural(len(hidden), "recipient", "recipients"), nameSome(hidden)))
	}
	// RFC 6109 §3.1.1 says the forward-paths must "coincide" with To and
	// Cc. The wording is ambiguous (subset or equality); we require
	// equality, because daticert.xml and the receipts list To ∪ Cc as the
	// certified recipients (RFC 6109 §4.4) and an address there without a
	// forward-path would be certified as sent without being sent. With no
	// forward-path at all, no-recipients already says it.
	if n == 0 || headerOver {
		return
	}
	var missing []string
	seen := map[string]bool{}
	for _, a := range slices.Concat(sub.To, sub.Cc) {
		k := foldAddr(a)
		if !rcpt[k] && !seen[k] {
			missing = append(missing, a)
		}
		seen[k] = true
	}
	if len(missing) > 0 {
		add(CodeRecipientMismatch,
			"destinatari indicati in To o Cc non presenti nella sessione SMTP (RCPT TO)",
			fmt.Sprintf("%s %s of To/Cc %s no RCPT TO: forward-paths must coincide with To and Cc (RFC 6109 §3.1.1)", plural(len(missing), "recipient", "recipients"), nameSome(missing), plural(len(missing), "has", "have")))
	}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// nameForNotice lists the first maxNamedNotice addresses, in Italian, and
// counts the rest.
func nameForNotice(addrs []string) string {
	if len(addrs) <= maxNamedNotice {
		return strings.Join(addrs, ", ")
	}
	return fmt.Sprintf("%s e altri %d", strings.Join(addrs[:maxNamedNotice], ", "), len(addrs)-maxNamedNotice)
}

// distinct counts the addresses of the lists, case-insensitively.
func distinct(lists ...[]string) int {
	seen := map[string]bool{}
	for _, l := range lists {
		for _, a := range l {
			seen[foldAddr(a)] = true
		}
	}
	return len(seen)
}

func itoa(n int) string { return strconv.Itoa(n) }

// nameSome lists the first maxNamed addresses and counts the rest.
func nameSome(addrs []string) string {
	if len(addrs) <= maxNamed {
		return strings.Join(addrs, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(addrs[:maxNamed], ", "), len(addrs)-maxNamed)
}

// scan makes the single pass over raw: it checks every line for CRLF and
// length (RFC 5322 §2.1, §2.1.1, §2.3) and, up to the first empty line,
// splits the header section into fields (RFC 5322 §2.2).
func scan(raw []byte, utf8OK bool) *header {
	h := &header{}
	inHeader := true
	cur := hNone        // field the next continuation line belongs to
	keep := false       // cur's value is kept: the first of a field we read
	var curVal []byte   // its value so far, unfolded
	afterField := false // a continuation line is legal here

	// value takes a piece of the current field's value.
	value := func(b []byte) {
		if keep {
			curVal = append(curVal, b...)
		}
		if cur == hBcc && !h.bcc && len(bytes.Trim(b, " \t")) > 0 {
			h.bcc = true
		}
	}
	finish := func() {
		if keep {
			h.values[cur] = string(curVal)
		}
		cur, keep, curVal = hNone, false, nil
	}

	for pos, lineNo := 0, 1; pos < len(raw); lineNo++ {
		var line []byte
		next, hasLF := len(raw), false
		if i := bytes.IndexByte(raw[pos:], '\n'); i >= 0 {
			line, next, hasLF = raw[pos:pos+i], pos+i+1, true
		} else {
			line = raw[pos:]
		}
		pos = next

		// RFC 5322 §2.1, §2.3: lines end in CRLF; CR and LF appear only
		// together. The last line may lack a line end (RFC 5322 §3.5:
		// body = *(*998text CRLF) *998text).
		content := line
		if hasLF {
			if n := len(line); n > 0 && line[n-1] == '\r' {
				content = line[:n-1]
			} else if h.bareLF == 0 {
				h.bareLF = lineNo
			}
		}
		if h.bareCR == 0 && bytes.IndexByte(content, '\r') >= 0 {
			h.bareCR = lineNo
		}
		// RFC 5322 §2.1.1: at most 998 octets excluding CRLF.
		if h.longLine == 0 && len(content) > maxLineLen {
			h.longLine, h.longLen = lineNo, len(content)
		}

		if !inHeader {
			if h.bareLF > 0 && h.bareCR > 0 && h.longLine > 0 {
				break // nothing more to learn from the body
			}
			continue
		}
		if len(content) == 0 && hasLF {
			// RFC 5322 §2.1: the empty line ends the header section.
			finish()
			inHeader = false
			h.headerLen = next
			continue
		}
		// RFC 6532 §3.2: UTF-8 in header fields only with SMTPUTF8
		// (RFC 6531); otherwise RFC 5322 §2.2 allows US-ASCII only.
		if h.bad8bit == 0 {
			if utf8OK {
				if !utf8.Valid(content) {
					h.bad8bit = lineNo
				}
			} else if !isASCII(content) {
				h.bad8bit = lineNo
			}
		}
		if content[0] == ' ' || content[0] == '\t' {
			// RFC 5322 §2.2.3: a line starting with WSP continues the
			// field above; unfolding removes the CRLF only.
			if !afterField {
				if h.badSyntax == 0 {
					h.badSyntax, h.badSyntaxFirst = lineNo, lineNo == 1
				}
				continue
			}
			value(content)
			continue
		}
		finish()
		name, val, ok := splitField(content)
		if !ok {
			// Continuations of a malformed line are part of it: one report.
			afterField = true
			if h.badSyntax == 0 {
				h.badSyntax = lineNo
			}
			continue
		}
		afterField = true
		cur = fieldIndex(name)
		if cur != hNone {
			h.count[cur]++
			keep = keepsValue(cur) && h.count[cur] == 1
			value(val)
		}
	}
	if inHeader {
		finish()
	}
	return h
}

// splitField splits a header line "name: value". RFC 5322 §2.2: the name is
// printable US-ASCII (33–126) except colon; RFC 5322 §4.5 (obs-optional)
// tolerates white space before the colon, which is dropped.
func splitField(line []byte) (name, value []byte, ok bool) {
	i := bytes.IndexByte(line, ':')
	if i < 0 {
		return nil, nil, false
	}
	name = bytes.TrimRight(line[:i], " \t")
	if len(name) == 0 {
		return nil, nil, false
	}
	for _, c := range name {
		if c < 33 || c > 126 {
			return nil, nil, false
		}
	}
	return name, line[i+1:], true
}

func isASCII(b []byte) bool {
	for _, c := range b {
		if c >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// maxDateLen bounds the Date value handed to mail.ParseDate; an RFC 5322
// date-time with a comment fits easily.
const maxDateLen = 256

// validDate reports whether v is an RFC 5322 §3.3 date-time (net/mail also
// accepts the obsolete forms of RFC 5322 §4.3).
func validDate(v string) bool {
	if len(v) > maxDateLen {
		return false
	}
	_, err := mail.ParseDate(v)
	return err == nil
}

// messageID returns the msg-id of a Message-ID value with its angle
// brackets (RFC 5322 §3.6.4), adding them when the client left them out
// but the id is otherwise plausible, or "" when it is not an id at all.
// A bad Message-ID is not refused: the field is optional (RFC 5322 §3.6.4
// "SHOULD") and the access point replaces it anyway (RFC 6109 §2.2.1).
func messageID(v string, utf8OK bool) string {
	s := strings.Trim(v, " \t")
	if len(s) >= 2 && s[0] == '<' && s[len(s)-1] == '>' {
		s = s[1 : len(s)-1]
	}
	at := strings.LastIndexByte(s, '@')
	if at <= 0 || at == len(s)-1 || len(s) > maxLineLen {
		return ""
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '<' || c == '>':
			return ""
		case c >= utf8.RuneSelf:
			// RFC 6532 §3.2: UTF-8 ids only with SMTPUTF8.
			if !utf8OK {
				return ""
			}
		case c < 33 || c > 126:
			return ""
		}
	}
	if !utf8.ValidString(s) {
		return ""
	}
	return "<" + s + ">"
}

// addressParser parses address fields and decodes RFC 2047 words. It is
// built per call: no package-level state.
type addressParser struct {
	words *mime.WordDecoder // RFC 2047, every charset go-message knows
	addrs *mail.AddressParser
}

func newAddressParser() *addressParser {
	return &addressParser{
		words: &mime.WordDecoder{CharsetReader: charset.Reader},
		// net/mail fails a whole address list when a display name uses an
		// encoded-word in a charset it cannot convert. A display name is
		// not an address (RFC 2047 §6.2 lets a reader show such a word as
		// is), so for addresses an unknown charset passes the octets
		// through instead of failing; the name is never used.
		addrs: &mail.AddressParser{WordDecoder: &mime.WordDecoder{
			CharsetReader: func(cs string, in io.Reader) (io.Reader, error) {
				r, err := charset.Reader(cs, in)
				if err != nil {
					return in, nil
				}
				return r, nil
			},
		}},
	}
}

// mailbox parses a From value: exactly one mailbox (RFC 6109 §3.1.1). It
// returns the address, or the violation code.
func (p *addressParser) mailbox(v string) (string, string) {
	if strings.Trim(v, " \t") == "" || len(v) > maxAddressField {
		return "", CodeInvalidFrom
	}
	parts, group := splitAddressList(v)
	if group || len(parts) > 1 {
		return "", CodeMultipleFrom
	}
	list, err := p.addrs.ParseList(v)
	switch {
	case err != nil:
		return "", CodeInvalidFrom
	case len(list) != 1:
		return "", CodeMultipleFrom
	}
	return list[0].Address, ""
}

// addressList parses an RFC 5322 §3.4 address-list. ok is false when the
// value is blank or does not parse; the addresses of the entries that do
// parse are still returned, so a notice can name them. Addresses are
// addr-specs as net/mail returns them: a quoted local part is unquoted,
// which is also how go-smtp returns forward-paths.
func (p *addressParser) addressList(v string) (addrs []string, ok bool) {
	if strings.Trim(v, " \t") == "" || len(v) > maxAddressField {
		return nil, false
	}
	if list, err := p.addrs.ParseList(v); err == nil {
		return addresses(list), true
	}
	parts, _ := splitAddressList(v)
	for _, part := range parts {
		if list, err := p.addrs.ParseList(part); err == nil {
			addrs = append(addrs, addresses(list)...)
		}
	}
	return addrs, false
}

func addresses(list []*mail.Address) []string {
	out := make([]string, 0, len(list))
	for _, a := range list {
		out = append(out, a.Address)
	}
	return out
}

// splitAddressList splits an address-list at the commas that separate its
// entries (RFC 5322 §3.4), skipping those inside quoted strings, comments,
// domain literals, angle brackets and groups. group reports whether an
// entry is a group ("display-name:" … ";"). Blank entries are dropped.
func splitAddressList(v string) (parts []string, group bool) {
	var (
		depth                         int // comment nesting
		inQuote, inLit, inAngle, inGr bool
		start                         int
	)
	cut := func(end int) {
		if s := v[start:end]; strings.Trim(s, " \t") != "" {
			parts = append(parts, s)
		}
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case inQuote:
			if c == '\\' {
				i++
			} else if c == '"' {
				inQuote = false
			}
		case depth > 0:
			switch c {
			case '\\':
				i++
			case '(':
				depth++
			case ')':
				depth--
			}
		case inLit:
			if c == '\\' {
				i++
			} else if c == ']' {
				inLit = false
			}
		case c == '"':
			inQuote = true
		case c == '(':
			depth = 1
		case c == '[':
			inLit = true
		case c == '<':
			inAngle = true
		case c == '>':
			inAngle = false
		case inAngle:
		case c == ':':
			inGr, group = true, true
		case c == ';':
			inGr = false
		case c == ',' && !inGr:
			cut(i)
			start = i + 1
		}
	}
	cut(len(v))
	return parts, group
}

// subject decodes an unfolded Subject value: RFC 2047 encoded-words in any
// charset go-message knows; raw UTF-8 (RFC 6532 §3.2) is kept; invalid
// UTF-8 becomes U+FFFD. Folding CRLFs are already gone (RFC 5322 §2.2.3).
func (p *addressParser) subject(v string) string {
	s := decodeWords(p.words, strings.Trim(v, " \t"))
	return strings.ToValidUTF8(s, "\uFFFD")
}

// decodeWords decodes the RFC 2047 encoded-words of unstructured text.
// mime.WordDecoder.DecodeHeader would do, but it rescans the rest of the
// text after each false start ("=?" that is not a word), which is
// quadratic on hostile input. Here an encoded-word is exactly
// "=?" charset "?" encoding "?" encoded-text "?=" (RFC 2047 §2: none of
// the three parts holds a "?"), so each attempt stops at the third "?"
// after its start and the whole scan is linear. Like DecodeHeader, a word
// need not be delimited by white space (many clients glue words), and the
// white space between two adjacent words is dropped (RFC 2047 §6.2). A
// word in an unknown charset, or badly encoded, is kept as written.
func decodeWords(dec *mime.WordDecoder, s string) string {
	if !strings.Contains(s, "=?") {
		return s
	}
	var b strings.Builder
	lastWord := -1 // end of the last decoded word, -1 if none
	i := 0         // start of the text not yet written
	for from := 0; ; {
		k := strings.Index(s[from:], "=?")
		if k < 0 {
			break
		}
		start := from + k
		end := wordEnd(s, start)
		if end < 0 {
			from = start + 2
			continue
		}
		text, err := dec.Decode(s[start:end])
		if err != nil {
			// Keep it as written and go on after it.
			from = end
			continue
		}
		gap := s[i:start]
		if lastWord != i || strings.Trim(gap, " \t") != "" {
			b.WriteString(gap)
		}
		b.WriteString(text)
		i, lastWord, from = end, end, end
	}
	b.WriteString(s[i:])
	return b.String()
}

// wordEnd returns the end of the encoded-word starting at s[start] ("=?"),
// or -1 if there is none there.
func wordEnd(s string, start int) int {
	q1 := strings.IndexByte(s[start+2:], '?')
	if q1 < 0 {
		return -1
	}
	q1 += start + 2 // charset ends
	if q1 == start+2 || q1+2 >= len(s) || s[q1+2] != '?' {
		return -1
	}
	q3 := strings.IndexByte(s[q1+3:], '?')
	if q3 < 0 {
		return -1
	}
	q3 += q1 + 3 // encoded-text ends
	if q3+1 >= len(s) || s[q3+1] != '=' {
		return -1
	}
	return q3 + 2
}
