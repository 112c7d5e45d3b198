package pec

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"mime/quotedprintable"
	"strings"
)

// Provider is the certifying provider (gestore) that emits the messages.
type Provider struct {
	// Name is the provider's name as in the providers' index
	// (providerName) and in daticert's <gestore-emittente>.
	Name string
	// Domain is the provider's mail domain: system messages come from
	// posta-certificata@Domain, the rfc822Name of the signing certificate
	// (RFC 6109 §5.5; digest §2.1), and PEC identifiers end in @Domain.
	Domain string
}

// Address is the provider's system address, posta-certificata@<domain>.
// The RFC's English rendering ("certified-mail@") is not what the network
// uses (digest §9 item 1).
func (p Provider) Address() string { return "posta-certificata@" + strings.ToLower(p.Domain) }

// Transaction is what one acceptance transaction decided: who certifies,
// when, under which identifier, for which submission. Every message built
// from one Transaction carries the same instant (DM 2 novembre 2005 art. 9).
type Transaction struct {
	Provider   Provider
	At         Instant
	ID         string // the PEC identifier (NewID), without angle brackets
	Submission *Submission
	Directory  Directory // classifies the recipients (RFC 6109 §5.3)
}

func (tx Transaction) check() error {
	var errs []error
	if tx.Provider.Name == "" {
		errs = append(errs, errors.New("provider name is empty"))
	}
	if tx.Provider.Domain == "" {
		errs = append(errs, errors.New("provider domain is empty"))
	}
	if tx.At.IsZero() {
		errs = append(errs, errors.New("time reference is unset"))
	}
	if tx.ID == "" || strings.ContainsAny(tx.ID, "<> \t\r\n") {
		errs = append(errs, fmt.Errorf("invalid pec identifier %q", tx.ID))
	}
	switch {
	case tx.Submission == nil:
		errs = append(errs, errors.New("no submission"))
	case strings.TrimSpace(tx.Submission.Sender) == "":
		// RFC 6109 §2.1: receipts and notices go to the reverse-path.
		errs = append(errs, errors.New("empty reverse-path: no sender to certify or notify"))
	case len(tx.Submission.Addressees()) == 0:
		// RFC 6109 §4.4: daticert.xml lists at least one destinatari.
		errs = append(errs, errors.New("no recipient"))
	}
	if tx.Directory == nil {
		errs = append(errs, errors.New("no directory"))
	}
	return errors.Join(errs...)
}

// Message is a PEC message built but not yet signed. The provider signs
// Body (signer.Sign) and Bytes assembles the message to hand off.
type Message struct {
	// Tipo is the daticert postacert@tipo of the message.
	Tipo string
	// MessageID is the message's own Message-ID, without angle brackets.
	MessageID string
	// Header holds the outer header fields, CRLF-terminated, without
	// MIME-Version and Content-Type (those come with the signed entity).
	Header []byte
	// Body is the entity to sign: the multipart/mixed with the text part,
	// daticert.xml and, for the envelope, postacert.eml. A receipt or a
	// notice gets the log position of its record in the header of this
	// entity before it is signed (SetLogPosition, logpos.go).
	Body []byte
	// DatiCert is the daticert.xml carried in Body.
	DatiCert []byte
	// ReversePath and ForwardPaths are the SMTP envelope to hand the
	// message off with.
	ReversePath  string
	ForwardPaths []string

	// whole is Body's array from its start, when BuildEnvelopeRoom left
	// bodyRoom octets before Body (EnvelopeBuffer).
	whole    []byte
	bodyRoom int
}

// Bytes returns the complete message: the outer header, MIME-Version and
// the signed entity returned by signer.Sign (which starts with its own
// Content-Type field).
func (m *Message) Bytes(signed []byte) []byte {
	return append(m.AppendHead(make([]byte, 0, len(m.Header)+len(mimeVersion)+len(signed))), signed...)
}

// AppendHead appends to dst what comes before the signed entity in Bytes:
// the header fields and MIME-Version. A signer that appends its entity
// (signer.Signer.SignAppend) after it builds the message in one buffer.
func (m *Message) AppendHead(dst []byte) []byte {
	return append(append(dst, m.Header...), mimeVersion...)
}

const mimeVersion = "MIME-Version: 1.0\r\n"

// EnvelopeBuffer returns the envelope's header fields and MIME-Version
// written in the room BuildEnvelopeRoom left before Body, then room
// octets for the caller, then Body: one slice of the array that holds
// Body, with capacity beyond it for the tail. ok is false when m was not
// built with that room (then nothing is written).
func (m *Message) EnvelopeBuffer(room int) (buf []byte, ok bool) {
	head := len(m.Header) + len(mimeVersion)
	if m.bodyRoom != head+room {
		return nil, false
	}
	// Body's array from its first octet on is Body[:cap]; the room is
	// before it: reach it through the slice the builder kept.
	buf = m.whole[:head+room+len(m.Body)]
	m.AppendHead(buf[:0])
	return buf, true
}

// Subject prefixes (RFC 6109 §3.1.2-§3.1.5; digest §9 item 2).
const (
	subjectEnvelope      = "POSTA CERTIFICATA: "
	subjectAcceptance    = "ACCETTAZIONE: "
	subjectNonAcceptance = "AVVISO DI NON ACCETTAZIONE: "
	subjectVirus         = "AVVISO DI NON ACCETTAZIONE PER VIRUS: "
)

// BuildEnvelope builds the transport envelope (busta di trasporto), RFC
// 6109 §3.1.5 and digest §2.2: the original's Received, Return-Path, To
// and Cc fields copied unchanged; From "Per conto di: <sender>"
// <posta-certificata@domain>; Reply-To copied, or the sender when the
// original had none; Message-ID the PEC identifier; X-Riferimento-Message-ID
// the client's Message-ID; X-Trasporto: posta-certificata; X-TipoRicevuta
// always written (Aruba omits it when the client did not ask; the daticert
// value is then still completa, so writing it says the same thing plainly).
// Parts: text, daticert.xml, postacert.eml. It is relayed with the original
// reverse-path and forward-paths (RFC 6109 §3.1.5).
func BuildEnvelope(tx Transaction) (*Message, error) { return BuildEnvelopeRoom(tx, 0, 0) }

// BuildEnvelopeRoom builds the transport envelope as BuildEnvelope does,
// with its Body at the end of a buffer that keeps, before it, room for
// the header fields (AppendHead) and room more octets, and after it
// capacity for tail more: a signer that writes its prefix there and
// appends its signature (signer.Signer.SignInPlace) assembles the signed
// envelope with no copy of the message of its own (docs/configuration.md,
// "Message memory"). Those octets come before Body in the same array
// (EnvelopeBuffer).
func BuildEnvelopeRoom(tx Transaction, room, tail int) (*Message, error) {
	if err := tx.check(); err != nil {
		return nil, fmt.Errorf("build transport envelope: %w", err)
	}
	s := tx.Submission
	recips := Classify(tx.Directory, s.Addressees())
	fields, _ := splitHeader(s.Raw)
	receipt := s.ReceiptType
	if receipt == "" {
		receipt = ReceiptComplete
	}

	var h bytes.Buffer
	// RFC 6109 §3.1.5: these fields of the original are inherited unchanged.
	for _, name := range []string{"Return-Path", "Received"} {
		for _, f := range fieldsNamed(fields, name) {
			h.Write(withCRLF(f.Raw))
		}
	}
	writeField(&h, "Date", tx.At.Header())
	writeField(&h, "From", quotePhrase("Per conto di: "+s.Sender)+" <"+tx.Provider.Address()+">")
	writeSubject(&h, subjectEnvelope, s.Subject)
	for _, name := range []string{"To", "Cc"} {
		for _, f := range fieldsNamed(fields, name) {
			h.Write(withCRLF(f.Raw))
		}
	}
	// RFC 6109 §3.1.5: Reply-To is inserted with the sender's address only
	// when the original has none; otherwise the original's is kept.
	if rt := fieldsNamed(fields, "Reply-To"); len(rt) > 0 {
		h.Write(withCRLF(rt[0].Raw))
	} else {
		writeField(&h, "Reply-To", s.Sender)
	}
	writeField(&h, "Message-ID", "<"+tx.ID+">")
	if s.MessageID != "" {
		writeField(&h, "X-Riferimento-Message-ID", s.MessageID)
	}
	writeField(&h, "X-Trasporto", TipoPostaCertificata)
	writeField(&h, "X-TipoRicevuta", receipt)

	dc := tx.datiCert(TipoPostaCertificata, recips)
	dc.Ricevuta = receipt
	xml := dc.Marshal()
	text := envelopeText(tx, recips)
	seed, parts := tx.ID+"/"+TipoPostaCertificata, []part{textPart(text), xmlPart(xml), rfc822Part(originalSegments(s, tx.ID))}
	head := len(h.Bytes()) + len(mimeVersion) + room
	whole := mixedIn(make([]byte, head, head+mixedSize(seed, parts...)+tail), seed, parts...)
	body := whole[head:len(whole):len(whole)]
	return &Message{
		whole:        whole,
		bodyRoom:     head,
		Tipo:         TipoPostaCertificata,
		MessageID:    tx.ID,
		Header:       h.Bytes(),
		Body:         body,
		DatiCert:     xml,
		ReversePath:  s.Sender,
		ForwardPaths: append([]string(nil), s.Recipients...),
	}, nil
}

// BuildAcceptance builds the acceptance receipt (ricevuta di
// accettazione), RFC 6109 §3.1.4 and digest §2.3: to the sender's
// reverse-path, never to Reply-To (RFC 6109 §2.1); text and daticert.xml,
// never the original. Its own Message-ID is derived from the PEC
// identifier; daticert's <identificativo> is the envelope's identifier.
func BuildAcceptance(tx Transaction) (*Message, error) {
	if err := tx.check(); err != nil {
		return nil, fmt.Errorf("build acceptance receipt: %w", err)
	}
	recips := Classify(tx.Directory, tx.Submission.Addressees())
	dc := tx.datiCert(TipoAccettazione, recips)
	return tx.notice(TipoAccettazione, subjectAcceptance, nil, dc, acceptanceText(tx, recips))
}

// BuildNonAcceptance builds the non-acceptance notice for formal
// exceptions (avviso di non accettazione per eccezioni formali), RFC 6109
// §3.1.2 and digest §2.4: errore="altro", the causes in <errore-esteso> and
// in the text's "a causa di …" sentence; never the original message. It
// carries the PEC identifier the envelope would have had.
func BuildNonAcceptance(tx Transaction, violations []Violation) (*Message, error) {
	if err := tx.check(); err != nil {
		return nil, fmt.Errorf("build non-acceptance notice: %w", err)
	}
	if len(violations) == 0 {
		return nil, errors.New("build non-acceptance notice: no violation given")
	}
	causes := make([]string, len(violations))
	for i, v := range violations {
		causes[i] = v.Italian
	}
	cause := strings.Join(causes, "; ")
	recips := Classify(tx.Directory, tx.Submission.Addressees())
	dc := tx.datiCert(TipoNonAccettazione, recips)
	dc.Errore = ErroreAltro
	dc.ErroreEsteso = cause
	return tx.notice(TipoNonAccettazione, subjectNonAcceptance, nil, dc, nonAcceptanceText(tx, recips, cause))
}

// BuildVirusNotice builds the non-acceptance notice for a virus (avviso di
// non accettazione per virus), RFC 6109 §3.1.3 and digest §2.4:
// X-VerificaSicurezza: errore, errore="virus", the finding in
// <errore-esteso>; never the original message.
func BuildVirusNotice(tx Transaction, finding string) (*Message, error) {
	if err := tx.check(); err != nil {
		return nil, fmt.Errorf("build virus non-acceptance notice: %w", err)
	}
	finding = strings.TrimSpace(oneLine(finding))
	if finding == "" {
		return nil, errors.New("build virus non-acceptance notice: empty finding")
	}
	recips := Classify(tx.Directory, tx.Submission.Addressees())
	dc := tx.datiCert(TipoNonAccettazione, recips)
	dc.Errore = ErroreVirus
	dc.ErroreEsteso = finding
	extra := [][2]string{{"X-VerificaSicurezza", "errore"}}
	return tx.notice(TipoNonAccettazione, subjectVirus, extra, dc, virusText(tx, recips, finding))
}

// notice builds a receipt or notice addressed to the sender: From the
// provider address, To the reverse-path, X-Ricevuta the tipo (RFC 6109
// §3.1.2-§3.1.4).
func (tx Transaction) notice(tipo, prefix string, extra [][2]string, dc DatiCert, text string) (*Message, error) {
	s := tx.Submission
	id := DerivedID(tx.ID, tipo)
	var h bytes.Buffer
	writeField(&h, "Date", tx.At.Header())
	writeField(&h, "From", tx.Provider.Address())
	writeField(&h, "To", s.Sender)
	writeSubject(&h, prefix, s.Subject)
	writeField(&h, "Message-ID", "<"+id+">")
	if s.MessageID != "" {
		writeField(&h, "X-Riferimento-Message-ID", s.MessageID)
	}
	writeField(&h, "X-Ricevuta", tipo)
	for _, f := range extra {
		writeField(&h, f[0], f[1])
	}
	xml := dc.Marshal()
	return &Message{
		Tipo:         tipo,
		MessageID:    id,
		Header:       h.Bytes(),
		Body:         mixed(id, textPart(text), xmlPart(xml)),
		DatiCert:     xml,
		ReversePath:  tx.Provider.Address(),
		ForwardPaths: []string{s.Sender},
	}, nil
}

func (tx Transaction) datiCert(tipo string, recips []Recipient) DatiCert {
	s := tx.Submission
	risposte := s.ReplyTo
	if risposte == "" {
		risposte = s.Sender // as every sample: <risposte> is the sender when there was no Reply-To
	}
	return DatiCert{
		Tipo:           tipo,
		Errore:         ErroreNessuno,
		Mittente:       s.Sender,
		Destinatari:    recips,
		Risposte:       risposte,
		Oggetto:        oneLine(s.Subject),
		Gestore:        tx.Provider.Name,
		At:             tx.At,
		Identificativo: tx.ID,
		MsgID:          s.MessageID,
	}
}

// OriginalForEnvelope returns the original message as it goes into
// postacert.eml (RFC 6109 §2.2.1, §3.1.5): byte for byte the submitted
// message, except that its Message-ID becomes <id> and, when it had one,
// X-Riferimento-Message-ID carries the client's Message-ID right after it.
// A message without Message-ID gets one at the end of its header.
func OriginalForEnvelope(s *Submission, id string) []byte {
	return bytes.Join(originalSegments(s, id), nil)
}

// originalSegments is OriginalForEnvelope as pieces that share the
// submission's memory, so a large original is copied once, into the
// envelope. Every piece but the last ends in LF.
func originalSegments(s *Submission, id string) [][]byte {
	raw := s.Raw
	fields, blank := splitHeader(raw)
	repl := "Message-ID: <" + id + ">\r\n"
	if s.MessageID != "" {
		repl += "X-Riferimento-Message-ID: " + s.MessageID + "\r\n"
	}
	switch mid := fieldsNamed(fields, "Message-ID"); {
	case len(mid) > 0:
		// Replace the field in place, folding lines included.
		return [][]byte{raw[:mid[0].Off], []byte(repl), raw[mid[0].Off+len(mid[0].Raw):]}
	case blank >= 0:
		// Add it as the last field, before the empty line.
		return [][]byte{raw[:blank], []byte(repl), raw[blank:]}
	default:
		// All header and no body: add the field at the end.
		return [][]byte{withCRLF(raw), []byte(repl)}
	}
}

// writeField writes "Name: value" CRLF, with value made safe for a header
// line (no CR, LF or NUL can end the line early and inject a field).
func writeField(b *bytes.Buffer, name, value string) {
	b.WriteString(name)
	b.WriteString(": ")
	b.WriteString(oneLine(value))
	b.WriteString("\r\n")
}

// writeSubject writes the Subject field, prefix (ASCII) then the
// original subject: unstructured text, folded at white space under 78
// octets where it can be, the subject RFC 2047-encoded (UTF-8, B) when it
// is not ASCII or has a word too long for a line (RFC 5322 §2.1.1,
// §2.2.3; RFC 2047 §2, §5). The prefix stays readable.
func writeSubject(b *bytes.Buffer, prefix, subject string) {
	subject = oneLine(subject)
	encode := strings.Contains(subject, "=?") // a literal "=?…?=" must not be decoded as an encoded-word
	for _, w := range strings.Split(subject, " ") {
		if len(w) > 900 {
			encode = true
		}
	}
	for i := 0; i < len(subject); i++ {
		if subject[i] >= 0x80 || subject[i] < 0x20 || subject[i] == 0x7f {
			encode = true
			break
		}
	}
	words := strings.Fields(prefix)
	if encode {
		words = append(words, encodeWords(subject)...)
	} else {
		words = append(words, strings.Split(subject, " ")...)
	}
	line := len("Subject:")
	b.WriteString("Subject:")
	for i, w := range words {
		if i > 0 && w != "" && line+1+len(w) > 78 {
			b.WriteString("\r\n")
			line = 0
		}
		b.WriteByte(' ')
		b.WriteString(w)
		line += 1 + len(w)
	}
	b.WriteString("\r\n")
}

// encodeWords splits s into RFC 2047 encoded-words (UTF-8, B encoding) of
// at most 75 octets each, never splitting a UTF-8 sequence.
func encodeWords(s string) []string {
	const maxRaw = 45 // base64 of 45 octets is 60 characters; with =?utf-8?b??= it makes 72
	var words []string
	for len(s) > 0 {
		n := min(maxRaw, len(s))
		for n < len(s) && n > 0 && s[n]&0xC0 == 0x80 {
			n-- // back off to a rune boundary
		}
		if n == 0 {
			n = min(maxRaw, len(s))
		}
		words = append(words, "=?utf-8?b?"+base64.StdEncoding.EncodeToString([]byte(s[:n]))+"?=")
		s = s[n:]
	}
	return words
}

// oneLine neutralises what could break a header line or a line of text:
// CR, LF, NUL and the other C0 controls (but tab) become a space.
func oneLine(s string) string {
	if !strings.ContainsFunc(s, isControl) {
		return s
	}
	return strings.Map(func(r rune) rune {
		if isControl(r) {
			return ' '
		}
		return r
	}, s)
}

func isControl(r rune) bool { return (r < 0x20 && r != '\t') || r == 0x7f }

// quotePhrase renders a display name as an RFC 5322 quoted-string
// (§3.2.4), escaping backslash and double quote.
func quotePhrase(s string) string {
	s = oneLine(s)
	s = strings.ReplaceAll(s, `\`, `\\`)
	s = strings.ReplaceAll(s, `"`, `\"`)
	return `"` + s + `"`
}

// part is one body part of the multipart/mixed as pieces: its header and
// content, possibly in several slices. Every piece but the last ends in a
// line end, so a boundary (which holds no CR or LF) cannot straddle two.
type part [][]byte

// mixed assembles the multipart/mixed entity that is signed. Its boundary
// is derived from seed and the parts, so the output is reproducible, and
// is checked not to occur in any part (RFC 2046 §5.1.1).
func mixed(seed string, parts ...part) []byte {
	return mixedIn(make([]byte, 0, mixedSize(seed, parts...)), seed, parts...)
}

// mixedSize is a bound on the length of what mixed writes.
func mixedSize(seed string, parts ...part) int {
	size := 256 + len(seed)
	for _, p := range parts {
		size += 80 + 8
		for _, seg := range p {
			size += len(seg)
		}
	}
	return size
}

// mixedIn appends to dst the multipart/mixed entity of parts.
func mixedIn(dst []byte, seed string, parts ...part) []byte {
	boundary := pickBoundary(seed, parts...)
	b := bytes.NewBuffer(dst)
	b.WriteString("MIME-Version: 1.0\r\n")
	b.WriteString("Content-Type: multipart/mixed;\r\n boundary=\"" + boundary + "\"\r\n")
	b.WriteString("\r\n")
	b.WriteString("This is a multi-part message in MIME format.\r\n")
	for _, p := range parts {
		b.WriteString("\r\n--" + boundary + "\r\n")
		var last []byte
		for _, seg := range p {
			b.Write(seg)
			if len(seg) > 0 {
				last = seg
			}
		}
		if !bytes.HasSuffix(last, []byte("\r\n")) {
			b.WriteString("\r\n")
		}
	}
	b.WriteString("\r\n--" + boundary + "--\r\n")
	return b.Bytes()
}

func pickBoundary(seed string, parts ...part) string {
	for n := 0; ; n++ {
		sum := sha256.Sum256([]byte(fmt.Sprintf("%s/%d", seed, n)))
		boundary := []byte("----=_pecgw_" + hex.EncodeToString(sum[:12]))
		clash := false
		for _, p := range parts {
			for _, seg := range p {
				if bytes.Contains(seg, boundary) {
					clash = true
				}
			}
		}
		if !clash {
			return string(boundary)
		}
	}
}

// textPart is the user-readable part: Italian, ISO-8859-1,
// quoted-printable (RFC 6109 §4.3.1; digest §2.1).
func textPart(text string) part {
	var b bytes.Buffer
	b.WriteString("Content-Type: text/plain; charset=\"iso-8859-1\"\r\n")
	b.WriteString("Content-Disposition: inline\r\n")
	b.WriteString("Content-Transfer-Encoding: quoted-printable\r\n\r\n")
	w := quotedprintable.NewWriter(&b)
	_, _ = w.Write(latin1(text)) // writes to a bytes.Buffer do not fail
	_ = w.Close()
	return part{b.Bytes()}
}

// xmlPart carries daticert.xml: application/xml, base64, with both name
// and filename, as every provider writes it (RFC 6109 §4.3.3; digest §2.1).
func xmlPart(xml []byte) part {
	var b bytes.Buffer
	b.WriteString("Content-Type: application/xml; name=\"daticert.xml\"\r\n")
	b.WriteString("Content-Disposition: inline; filename=\"daticert.xml\"\r\n")
	b.WriteString("Content-Transfer-Encoding: base64\r\n\r\n")
	enc := base64.StdEncoding.EncodeToString(xml)
	for len(enc) > 76 {
		b.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	b.WriteString(enc + "\r\n")
	return part{b.Bytes()}
}

// rfc822Part carries the original as postacert.eml (RFC 6109 §4.3.2).
// MIME forbids encoding a message/rfc822 body (RFC 2046 §5.2.1): it is
// 7bit when the original is, else 8bit, and then the next hop must offer
// 8BITMIME (digest §2.1 leaves this open; real providers label it 7bit).
func rfc822Part(msg [][]byte) part {
	cte := "7bit"
	for _, seg := range msg {
		if has8bit(seg) {
			cte = "8bit"
		}
	}
	var b bytes.Buffer
	b.WriteString("Content-Type: message/rfc822; name=\"postacert.eml\"\r\n")
	b.WriteString("Content-Disposition: inline; filename=\"postacert.eml\"\r\n")
	b.WriteString("Content-Transfer-Encoding: " + cte + "\r\n\r\n")
	return append(part{b.Bytes()}, msg...)
}

// has8bit reports whether b holds an octet above 0x7F, eight at a time.
func has8bit(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b)&0x8080808080808080 != 0 {
			return true
		}
		b = b[8:]
	}
	for _, c := range b {
		if c >= 0x80 {
			return true
		}
	}
	return false
}
