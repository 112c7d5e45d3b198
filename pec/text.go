package pec

import "strings"

// The user-readable text part of each message. The wording is the model
// of the Regole tecniche (DM 2 novembre 2005, allegato) as real providers
// emit it (digest §2.2-§2.4): some client software scrapes these lines, so
// they stay close to the model. Lines end in LF here; the quoted-printable
// encoder turns them into CRLF.

// textModel is one of the Regole tecniche text models: a title, the
// sentence naming the day, the message, the sender and the recipients,
// then the closing lines and the identifier.
type textModel struct {
	title   string
	subject string // "il messaggio" or "nel messaggio"
	sender  string // the words before the sender
	to      string // the words before the recipients
	typed   bool   // recipients with ("posta certificata") / ("posta ordinaria")
	closing []string
}

func (m textModel) render(tx Transaction, recips []Recipient) string {
	var b strings.Builder
	b.WriteString(m.title + "\n\n")
	b.WriteString("Il giorno " + tx.At.Day() + " alle ore " + tx.At.Clock() + " (" + tx.At.Zone() + ") " + m.subject + "\n")
	b.WriteString(quoted(tx.Submission.Subject) + " " + m.sender + " " + quoted(tx.Submission.Sender) + "\n")
	b.WriteString(m.to + "\n")
	for _, r := range recips {
		b.WriteString(oneLine(r.Address))
		if m.typed {
			b.WriteString(" (\"" + r.Label() + "\")")
		}
		b.WriteString("\n")
	}
	for _, l := range m.closing {
		b.WriteString(l + "\n")
	}
	b.WriteString("Identificativo messaggio: " + tx.ID + "\n")
	return b.String()
}

// envelopeText: RFC 6109 §3.1.5, wording of Namirial's 2024 envelope
// (the RT model verbatim).
func envelopeText(tx Transaction, recips []Recipient) string {
	return textModel{
		title: "Messaggio di posta certificata", subject: "il messaggio",
		sender: "è stato inviato da", to: "indirizzato a:",
		closing: []string{"Il messaggio originale è incluso in allegato."},
	}.render(tx, recips)
}

// acceptanceText: RFC 6109 §3.1.4, wording of Aruba's receipt (the RT
// model), each recipient with its type.
func acceptanceText(tx Transaction, recips []Recipient) string {
	return textModel{
		title: "Ricevuta di accettazione", subject: "il messaggio",
		sender: "proveniente da", to: "ed indirizzato a:", typed: true,
		closing: []string{"Il messaggio è stato accettato dal sistema ed inoltrato."},
	}.render(tx, recips)
}

// nonAcceptanceText: RFC 6109 §3.1.2, wording confirmed by a real
// Regione Marche notice (digest §2.4).
func nonAcceptanceText(tx Transaction, recips []Recipient, cause string) string {
	return textModel{
		title: "Errore nell'accettazione del messaggio", subject: "nel messaggio",
		sender: "proveniente da", to: "ed indirizzato a:",
		closing: []string{
			"è stato rilevato un problema che ne impedisce l'accettazione",
			"a causa di " + strings.TrimSuffix(oneLine(cause), ".") + ".",
			"Il messaggio non è stato accettato.",
		},
	}.render(tx, recips)
}

// virusText: RFC 6109 §3.1.3. UNCERTAIN: the Italian wording is rebuilt
// from the RFC's English (no real provider's virus notice was available;
// digest §2.4); the structure follows the formal notice above.
func virusText(tx Transaction, recips []Recipient, finding string) string {
	return textModel{
		title: "Errore nell'accettazione del messaggio per presenza di virus", subject: "nel messaggio",
		sender: "proveniente da", to: "ed indirizzato a:",
		closing: []string{
			"è stato rilevato un problema di sicurezza: " + strings.TrimSuffix(oneLine(finding), ".") + ".",
			"Il messaggio non è stato accettato.",
		},
	}.render(tx, recips)
}

func quoted(s string) string { return "\"" + oneLine(s) + "\"" }

// latin1 converts text to ISO-8859-1 (RFC 6109 §4.3.1: the text part's
// charset). Typographic punctuation that Latin-1 lacks gets its ASCII
// look-alike; any other character outside Latin-1 becomes "?" (the exact
// subject is always in daticert.xml, which is UTF-8).
func latin1(s string) []byte {
	out := make([]byte, 0, len(s))
	for _, r := range s {
		switch {
		case r < 0x100:
			out = append(out, byte(r))
		case r == '\u2018' || r == '\u2019' || r == '\u201A' || r == '\u2032':
			out = append(out, '\'')
		case r == '\u201C' || r == '\u201D' || r == '\u201E' || r == '\u2033':
			out = append(out, '"')
		case r == '\u2013' || r == '\u2014' || r == '\u2212':
			out = append(out, '-')
		case r == '\u2026':
			out = append(out, "..."...)
		case r == '\u20AC':
			out = append(out, "EUR"...)
		default:
			out = append(out, '?')
		}
	}
	return out
}
