package pec

import (
	"strings"
	"unicode/utf8"
)

// Values of postacert@tipo (RFC 6109 §4.4) for the messages an access
// point emits.
const (
	TipoAccettazione     = "accettazione"
	TipoNonAccettazione  = "non-accettazione"
	TipoPostaCertificata = "posta-certificata"
)

// Values of postacert@errore (RFC 6109 §4.4).
const (
	ErroreNessuno = "nessuno"
	ErroreAltro   = "altro"
	ErroreVirus   = "virus"
)

// DatiCert is the certification data attached to every PEC message as
// daticert.xml (RFC 6109 §4.4; digest §2.6).
type DatiCert struct {
	Tipo   string // postacert@tipo
	Errore string // postacert@errore; "" is written as "nessuno"

	Mittente    string      // sender address
	Destinatari []Recipient // To ∪ Cc, with their type
	Risposte    string      // Reply-To, or the sender when there was none
	Oggetto     string      // the decoded original subject

	Gestore        string  // gestore-emittente: the provider's name
	At             Instant // the transaction's time reference
	Identificativo string  // the PEC identifier, without angle brackets
	MsgID          string  // the client's Message-ID with angle brackets; "" omits <msgid>
	Ricevuta       string  // requested receipt type; "" omits <ricevuta> (only envelopes carry it)
	Consegna       string  // "" omits <consegna>
	Ricezione      []string
	ErroreEsteso   string // "" omits <errore-esteso>

	// Day, Clock and ZoneText are <giorno>, <ora> and data@zona as read
	// by ParseDatiCert; Marshal renders At instead.
	Day, Clock, ZoneText string
}

// Marshal renders daticert.xml as real providers do: UTF-8 declaration, no
// DOCTYPE, no namespace, 4-space indentation, LF line ends (the file is
// carried base64-encoded, and Aruba's and Namirial's use LF), element order
// of the DTD, and the attributes tipo, errore and destinatari@tipo always
// written even where the DTD has a default (java-pec-parser rejects
// daticert.xml without them; digest §2.6). <risposte> and <oggetto> are
// always written.
func (d DatiCert) Marshal() []byte {
	var b strings.Builder
	errore := d.Errore
	if errore == "" {
		errore = ErroreNessuno
	}
	b.WriteString(`<?xml version="1.0" encoding="UTF-8"?>` + "\n")
	b.WriteString(`<postacert tipo="` + xmlEscape(d.Tipo) + `" errore="` + xmlEscape(errore) + `">` + "\n")
	b.WriteString("    <intestazione>\n")
	elem(&b, 2, "mittente", d.Mittente)
	for _, r := range d.Destinatari {
		b.WriteString(`        <destinatari tipo="` + r.Tipo() + `">` + xmlEscape(r.Address) + "</destinatari>\n")
	}
	elem(&b, 2, "risposte", d.Risposte)
	elem(&b, 2, "oggetto", d.Oggetto)
	b.WriteString("    </intestazione>\n")
	b.WriteString("    <dati>\n")
	elem(&b, 2, "gestore-emittente", d.Gestore)
	b.WriteString(`        <data zona="` + d.At.Zone() + `">` + "\n")
	elem(&b, 3, "giorno", d.At.Day())
	elem(&b, 3, "ora", d.At.Clock())
	b.WriteString("        </data>\n")
	elem(&b, 2, "identificativo", d.Identificativo)
	if d.MsgID != "" {
		elem(&b, 2, "msgid", d.MsgID)
	}
	if d.Ricevuta != "" {
		b.WriteString(`        <ricevuta tipo="` + xmlEscape(d.Ricevuta) + `" />` + "\n")
	}
	if d.Consegna != "" {
		elem(&b, 2, "consegna", d.Consegna)
	}
	for _, r := range d.Ricezione {
		elem(&b, 2, "ricezione", r)
	}
	if d.ErroreEsteso != "" {
		elem(&b, 2, "errore-esteso", d.ErroreEsteso)
	}
	b.WriteString("    </dati>\n")
	b.WriteString("</postacert>\n")
	return []byte(b.String())
}

func elem(b *strings.Builder, depth int, name, text string) {
	b.WriteString(strings.Repeat("    ", depth))
	b.WriteString("<" + name + ">")
	b.WriteString(xmlEscape(text))
	b.WriteString("</" + name + ">\n")
}

// xmlEscape escapes text for an XML 1.0 element or attribute, and replaces
// what XML 1.0 §2.2 cannot carry at all (control characters other than
// tab, LF and CR; invalid UTF-8; U+FFFE/U+FFFF) with U+FFFD, so no
// subject or address can make daticert.xml ill-formed. CR and LF are
// written as character references so the value survives parsing intact.
func xmlEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 {
			b.WriteRune('\uFFFD')
			i++
			continue
		}
		i += n
		switch {
		case r == '&':
			b.WriteString("&amp;")
		case r == '<':
			b.WriteString("&lt;")
		case r == '>':
			b.WriteString("&gt;")
		case r == '"':
			b.WriteString("&quot;")
		case r == '\t':
			b.WriteString("&#x9;")
		case r == '\n':
			b.WriteString("&#xA;")
		case r == '\r':
			b.WriteString("&#xD;")
		case r < 0x20 || r == 0xFFFE || r == 0xFFFF || (r >= 0xD800 && r <= 0xDFFF):
			b.WriteRune('\uFFFD')
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}
