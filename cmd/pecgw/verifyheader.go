package main

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"io"
	"mime"
	"net/mail"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/charset"

	"github.com/pecgw/pecgw/pec"
)

// The outer header of a PEC message is not signed: the signature covers
// the multipart/mixed entity (the text, daticert.xml and, in an envelope,
// postacert.eml; RFC 6109 §4.3), and anyone on the way can edit the
// Subject, From, To, Cc and Date around it. PEC messages are read in
// ordinary mail clients, which show those fields: a receipt whose outer
// Subject was edited still verifies, yet shows what nobody certified. So
// pecgw verify compares them with what is signed (daticert.xml, the
// signer certificate, the envelope's postacert.eml) and warns of every
// difference; with --strict a difference makes the message not valid.

// subjectPrefixes are the Subject prefixes of each message kind (RFC 6109
// §3.1.2-§3.3; digest §2.2-§2.7), before the original subject.
var subjectPrefixes = map[string][]string{
	pec.TipoPostaCertificata:    {"POSTA CERTIFICATA:"},
	pec.TipoAccettazione:        {"ACCETTAZIONE:"},
	pec.TipoNonAccettazione:     {"AVVISO DI NON ACCETTAZIONE:", "AVVISO DI NON ACCETTAZIONE PER VIRUS:"},
	"presa-in-carico":           {"PRESA IN CARICO:"},
	"avvenuta-consegna":         {"CONSEGNA:"},
	"errore-consegna":           {"AVVISO DI MANCATA CONSEGNA:", "AVVISO DI MANCATA CONSEGNA PER VIRUS:"},
	"preavviso-errore-consegna": {"AVVISO DI MANCATA CONSEGNA PER SUP. TEMPO MASSIMO:"},
	"rilevazione-virus":         {"PROBLEMA DI SICUREZZA:"},
}

// toSender are the kinds addressed to the original sender (the
// reverse-path, RFC 6109 §2.1): their To is daticert's <mittente>. A
// take-charge receipt and a virus detection notice go to a provider's
// service mailbox instead.
var toSender = []string{pec.TipoAccettazione, pec.TipoNonAccettazione, "avvenuta-consegna", "errore-consegna", "preavviso-errore-consegna"}

// outerHeaderDiffs lists how the outer header h differs from what the
// signed part certifies: daticert dc, the signer certificate, and the
// signed entity content (for an envelope's postacert.eml).
func outerHeaderDiffs(h mail.Header, dc pec.DatiCert, signer *x509.Certificate, content []byte) []string {
	var diffs []string
	add := func(format string, args ...any) { diffs = append(diffs, fmt.Sprintf(format, args...)) }
	for _, name := range []string{"Subject", "From", "To", "Cc", "Date"} {
		if n := len(h[name]); n > 1 {
			add("the outer header has %d %s fields: a mail client shows one of them, and none is signed", n, name)
		}
	}

	// Subject: the kind's prefix, then daticert <oggetto>.
	dec := mime.WordDecoder{CharsetReader: charset.Reader}
	subject, err := dec.DecodeHeader(h.Get("Subject"))
	if err != nil {
		subject = h.Get("Subject")
	}
	if prefixes, ok := subjectPrefixes[dc.Tipo]; ok {
		want := prefixes[0] + " " + dc.Oggetto
		match := false
		for _, p := range prefixes {
			match = match || sameText(subject, p+" "+dc.Oggetto, len(p))
		}
		if !match {
			add("Subject %q, but what is signed says %q (daticert oggetto %q)", oneLine(subject), oneLine(strings.TrimSpace(want)), oneLine(dc.Oggetto))
		}
	}

	// From: the provider's address, the signer's (RFC 6109 §2.1: the
	// sender address must coincide with the certificate's); an envelope
	// says for whom: "Per conto di: <mittente>" (RFC 6109 §3.1.5).
	from, err := mail.ParseAddress(h.Get("From"))
	switch {
	case err != nil:
		add("From %q is not an address", oneLine(h.Get("From")))
	default:
		if signer != nil && len(signer.EmailAddresses) > 0 && !containsFold(signer.EmailAddresses, from.Address) {
			add("From %s, but the message is signed by %s", from.Address, strings.Join(signer.EmailAddresses, ", "))
		}
		if dc.Tipo == pec.TipoPostaCertificata && !strings.EqualFold(strings.TrimSpace(from.Name), "Per conto di: "+dc.Mittente) {
			add("From says %q, but the signed daticert mittente is %s", oneLine(from.Name), dc.Mittente)
		}
	}

	// To and Cc.
	to, toErr := addressSet(h.Get("To"))
	cc, ccErr := addressSet(h.Get("Cc"))
	if toErr != nil {
		add("To %q is not an address list", oneLine(h.Get("To")))
	}
	if ccErr != nil {
		add("Cc %q is not an address list", oneLine(h.Get("Cc")))
	}
	switch {
	case toErr != nil || ccErr != nil:
	case dc.Tipo == pec.TipoPostaCertificata:
		// The original's To and Cc, copied unchanged (RFC 6109 §3.1.5):
		// those of postacert.eml, or daticert's destinatari (To ∪ Cc).
		if eto, ecc, ok := postacertRecipients(content); ok {
			if !slices.Equal(to, eto) {
				add("To %s, but the signed postacert.eml says To %s", strings.Join(to, ", "), strings.Join(eto, ", "))
			}
			if !slices.Equal(cc, ecc) {
				add("Cc %s, but the signed postacert.eml says Cc %s", orNone(cc), orNone(ecc))
			}
		} else if got, want := union(to, cc), destinatari(dc); !slices.Equal(got, want) {
			add("To and Cc %s, but the signed daticert destinatari are %s", strings.Join(got, ", "), strings.Join(want, ", "))
		}
	case slices.Contains(toSender, dc.Tipo):
		if want := strings.ToLower(dc.Mittente); !slices.Equal(to, []string{want}) {
			add("To %s, but the message is for the sender the signed daticert names, %s", orNone(to), dc.Mittente)
		}
		if len(cc) > 0 {
			add("Cc %s, in a message only for the sender", strings.Join(cc, ", "))
		}
	}

	// Date: the transaction's instant, daticert <data> (RFC 6109 §4.1).
	date, err := mail.ParseDate(h.Get("Date"))
	signed, serr := time.Parse("02/01/2006 15:04:05 -0700", dc.Day+" "+dc.Clock+" "+dc.ZoneText)
	switch {
	case err != nil:
		add("Date %q is not a date", oneLine(h.Get("Date")))
	case serr == nil && !date.Equal(signed):
		add("Date %s, but the signed daticert data is %s %s (%s)", date.Format(time.RFC1123Z), dc.Day, dc.Clock, dc.ZoneText)
	}
	return diffs
}

// sameText compares an outer subject with the signed one: white space
// runs are one space (folding and the text part's renderings differ),
// and the first prefixLen octets, the kind's prefix, ignore case.
func sameText(got, want string, prefixLen int) bool {
	got, want = strings.Join(strings.Fields(got), " "), strings.Join(strings.Fields(want), " ")
	if len(got) < prefixLen || len(want) < prefixLen {
		return got == want
	}
	return strings.EqualFold(got[:prefixLen], want[:prefixLen]) && got[prefixLen:] == want[prefixLen:]
}

// addressSet parses an address list into its addresses, lower-case and
// sorted; "" is none.
func addressSet(v string) ([]string, error) {
	if strings.TrimSpace(v) == "" {
		return nil, nil
	}
	list, err := (&mail.AddressParser{WordDecoder: &mime.WordDecoder{CharsetReader: charset.Reader}}).ParseList(v)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, a := range list {
		out = append(out, strings.ToLower(a.Address))
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// postacertRecipients reads To and Cc of the postacert.eml in the signed
// entity, as addressSet; ok false when there is none or it does not
// parse.
func postacertRecipients(entity []byte) (to, cc []string, ok bool) {
	e, err := message.Read(bytes.NewReader(entity))
	if err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err) {
		return nil, nil, false
	}
	mr := e.MultipartReader()
	if mr == nil {
		return nil, nil, false
	}
	for {
		p, err := mr.NextPart()
		if err != nil {
			return nil, nil, false
		}
		if mt, params, _ := p.Header.ContentType(); mt != "message/rfc822" || params["name"] != "postacert.eml" {
			continue
		}
		m, err := mail.ReadMessage(io.LimitReader(p.Body, maxVerifySize))
		if err != nil {
			return nil, nil, false
		}
		to, terr := addressSet(m.Header.Get("To"))
		cc, cerr := addressSet(m.Header.Get("Cc"))
		return to, cc, terr == nil && cerr == nil
	}
}

func destinatari(dc pec.DatiCert) []string {
	var out []string
	for _, r := range dc.Destinatari {
		out = append(out, strings.ToLower(r.Address))
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func union(a, b []string) []string {
	out := slices.Concat(a, b)
	slices.Sort(out)
	return slices.Compact(out)
}

func containsFold(list []string, s string) bool {
	return slices.ContainsFunc(list, func(x string) bool { return strings.EqualFold(x, s) })
}

func orNone(l []string) string {
	if len(l) == 0 {
		return "(none)"
	}
	return strings.Join(l, ", ")
}

// oneLine shows a header value on the report's line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
