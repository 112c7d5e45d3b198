package gateway

import (
	"context"
	"errors"
	"regexp"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/pecgw/pecgw/pec"
)

// The replies a client can get from pecgw, in one table: every refusal
// cause and every temporary failure, with its code (RFC 5321 §4.2), its
// enhanced status code (RFC 3463) and its text in Italian and in English.
// PEC users are offices, professionals and public administrations,
// mostly Italian speakers, and a mail client shows the reply's text in
// its error dialog: the Italian comes first, then the English for the
// rest, on one line "<italiano> / <English>" (submission.reply_language
// picks one of the two instead). docs/replies.md lists the table and a
// test compares the two.
//
// Every line is ASCII and at most 512 octets with its code and CRLF (RFC
// 5321 §4.5.3.1.5). RFC 2047 encoding has no place in a reply, and UTF-8
// only in an SMTPUTF8 session (RFC 6531): Italian is written
// without accents, "e'" for "è", as Italian servers do. When there is a
// PEC identifier it comes first and whole, as the daticert.xml
// <identificativo> and `pecgw log query --id` have it, so that a user can
// quote it and the provider find it; only the texts after it are
// shortened when a line would grow too long.

// Language is which language the texts of the replies are in
// (submission.reply_language): "it", "en" or "it+en"; "" is "it+en".
type Language string

// The values of Language.
const (
	Italian           Language = "it"
	English           Language = "en"
	ItalianAndEnglish Language = "it+en"
)

// ParseLanguage checks a submission.reply_language value.
func ParseLanguage(s string) (Language, error) {
	switch l := Language(s); l {
	case Italian, English, ItalianAndEnglish:
		return l, nil
	case "":
		return ItalianAndEnglish, nil
	}
	return "", errors.New(`reply language must be "it", "en" or "it+en", got ` + strconv.Quote(s))
}

// replyText is one row of the table. The texts may hold {name}
// placeholders, filled in by reply.
type replyText struct {
	key     string
	code    int
	enh     smtp.EnhancedCode
	it, en  string
	lead    string // what comes first, before both texts: "id" (the PEC identifier) or "host"; "" none
	refusal bool   // a formal check of RFC 6109 §3.1.1: framed by refusedIt/refusedEn
	// never: in the table for completeness, never sent to a client (the
	// session makes the case impossible; docs/replies.md says why).
	never bool
}

// The frame of a refusal by the formal checks, and what says that more
// causes than fit are in the notice.
const (
	refusedIt  = "Messaggio non accettato: "
	refusedEn  = "Not accepted: "
	moreCauses = "{more}"
	moreIt     = "; altri {more} motivi nell'avviso di non accettazione"
	moreEn     = "; {more} more in the non-acceptance notice"
)

// replyTable is the table; its order is that of docs/replies.md.
func replyTable() []replyText {
	c := func(a, b, d int) smtp.EnhancedCode { return smtp.EnhancedCode{a, b, d} }
	return []replyText{
		// The end of DATA: accepted (RFC 6109 §3.1.4: the acceptance
		// receipt is on its way).
		{key: "accepted", code: 250, enh: c(2, 0, 0), lead: "id",
			it: "Messaggio accettato come posta certificata",
			en: "Accepted as certified mail"},
		{key: "duplicate", code: 250, enh: c(2, 0, 0), lead: "id",
			it: "Messaggio gia' accettato con questo identificativo: nulla di nuovo inviato",
			en: "Already accepted with this PEC identifier: nothing new sent"},

		// The formal checks (RFC 6109 §3.1.1, §3.1.2): a 5xx and the
		// non-acceptance notice, whose identifier leads.
		{key: pec.CodeEmptyMessage, code: 550, enh: c(5, 6, 0), lead: "id", refusal: true,
			it: "messaggio vuoto: servono almeno From, To e Date",
			en: "empty message: From, To and Date are required"},
		// RFC 5321 §2.3.8: the application that sent it must be fixed
		// (submission.bare_lf normalises for the clients listed).
		{key: pec.CodeBareLF, code: 550, enh: c(5, 6, 0), lead: "id", refusal: true,
			it: "la riga {line} termina con LF senza CR: il programma che invia deve terminare ogni riga con CRLF (RFC 5321 sez. 2.3.8)",
			en: "line {line} ends in a bare LF: the sending program must end every line with CRLF (RFC 5321 section 2.3.8)"},
		{key: pec.CodeBareCR, code: 550, enh: c(5, 6, 0), lead: "id", refusal: true,
			it: "la riga {line} contiene un CR isolato: CR e' ammesso solo in CRLF",
			en: "line {line} holds a bare CR: CR is allowed only in CRLF"},
		{key: pec.CodeLineTooLong, code: 550, enh: c(5, 6, 0), lead: "id", refusal: true,
			it: "la riga {line} e' lunga {length} caratteri: al massimo 998 (RFC 5322 sez. 2.1.1)",
			en: "line {line} is {length} octets long: at most 998 are allowed (RFC 5322 section 2.1.1)"},
		{key: pec.CodeHeaderSyntax, code: 550, enh: c(5, 6, 0), lead: "id", refusal: true,
			it: "intestazione malformata alla riga {line}: ogni campo e' \"Nome: valore\"",
			en: "malformed header at line {line}: each field is \"Name: value\""},
		{key: pec.CodeHeader8bit, code: 550, enh: c(5, 6, 0), lead: "id", refusal: true,
			it: "intestazione non valida alla riga {line}: caratteri non ASCII senza SMTPUTF8, o UTF-8 non valido",
			en: "invalid header at line {line}: non-ASCII octets without SMTPUTF8, or invalid UTF-8"},
		// pecgw adds a missing Date (RFC 6409 §8.2): Inspect never finds
		// one missing in what the session hands it.
		{key: pec.CodeMissingDate, code: 550, enh: c(5, 6, 0), lead: "id", refusal: true, never: true,
			it: "manca il campo Date",
			en: "missing Date field"},
		{key: pec.CodeInvalidDate, code: 550, enh: c(5, 6, 0), lead: "id", refusal: true,
			it: "il campo Date non e' una data valida (RFC 5322 sez. 3.3)",
			en: "the Date field is not a valid date (RFC 5322 section 3.3)"},
		{key: pec.CodeDuplicateField, code: 550, enh: c(5, 6, 0), lead: "id", refusal: true,
			it: "il campo {field} compare {count} volte: e' ammesso una volta sola",
			en: "field {field} appears {count} times: it is allowed only once"},
		{key: pec.CodeMissingFrom, code: 550, enh: c(5, 6, 0), lead: "id", refusal: true,
			it: "manca il campo From (mittente)",
			en: "missing From field (sender)"},
		{key: pec.CodeInvalidFrom, code: 550, enh: c(5, 6, 0), lead: "id", refusal: true,
			it: "il campo From non contiene un indirizzo valido",
			en: "the From field holds no valid address"},
		{key: pec.CodeMultipleFrom, code: 550, enh: c(5, 6, 0), lead: "id", refusal: true,
			it: "il campo From contiene piu' di un indirizzo: la PEC ne ammette uno",
			en: "the From field holds more than one address: PEC allows one"},
		{key: pec.CodeMissingTo, code: 550, enh: c(5, 6, 0), lead: "id", refusal: true,
			it: "manca il campo To (destinatari): la PEC lo richiede",
			en: "missing To field: PEC requires one"},
		{key: pec.CodeInvalidTo, code: 550, enh: c(5, 6, 0), lead: "id", refusal: true,
			it: "il campo To non contiene indirizzi validi",
			en: "the To field holds no valid address"},
		{key: pec.CodeInvalidCc, code: 550, enh: c(5, 6, 0), lead: "id", refusal: true,
			it: "il campo Cc non e' un elenco di indirizzi valido",
			en: "the Cc field is not a valid address list"},
		{key: pec.CodeInvalidReplyTo, code: 550, enh: c(5, 6, 0), lead: "id", refusal: true,
			it: "il campo Reply-To non e' un elenco di indirizzi valido",
			en: "the Reply-To field is not a valid address list"},
		// RFC 3463 §3.8 X.7.1: refused by policy, no hidden recipients.
		{key: pec.CodeBccHeader, code: 550, enh: c(5, 7, 1), lead: "id", refusal: true,
			it: "destinatari nel campo Ccn (Bcc) non ammessi nella PEC",
			en: "Bcc recipients are not allowed in PEC"},
		// go-smtp answers DATA without RCPT TO itself (503 5.5.1).
		{key: pec.CodeNoRecipients, code: 554, enh: c(5, 5, 1), lead: "id", refusal: true, never: true,
			it: "nessun destinatario (RCPT TO)",
			en: "no recipient (RCPT TO)"},
		{key: pec.CodeTooManyRecipients, code: 550, enh: c(5, 5, 3), lead: "id", refusal: true,
			it: "{n} destinatari superano il limite di {max} per messaggio",
			en: "{n} recipients exceed the limit of {max} per message"},
		{key: pec.CodeSizeLimit, code: 552, enh: c(5, 3, 4), lead: "id", refusal: true,
			it: "dimensione {size} byte x {n} destinatari oltre il limite di {max} byte",
			en: "size {size} octets x {n} recipients exceeds the limit of {max}"},
		{key: pec.CodeSenderMismatch, code: 550, enh: c(5, 7, 1), lead: "id", refusal: true,
			it: "il mittente (From) non coincide con quello della sessione (MAIL FROM)",
			en: "the From address does not coincide with MAIL FROM"},
		{key: pec.CodeHiddenBcc, code: 550, enh: c(5, 7, 1), lead: "id", refusal: true,
			it: "destinatario nascosto (Ccn/Bcc) non ammesso nella PEC",
			en: "hidden Bcc recipients are not allowed in PEC"},
		{key: pec.CodeRecipientMismatch, code: 550, enh: c(5, 7, 1), lead: "id", refusal: true,
			it: "destinatari in To o Cc senza RCPT TO corrispondente",
			en: "To or Cc recipients without a matching RCPT TO"},

		// The session (RFC 4954 §6 for AUTH).
		{key: "auth-required", code: 530, enh: c(5, 7, 0),
			it: "autenticazione richiesta",
			en: "authentication required"},
		{key: "auth-failed", code: 535, enh: c(5, 7, 8),
			it: "nome utente o password errati",
			en: "authentication credentials invalid"},
		// go-smtp answers AUTH before TLS (523 5.7.10), a second AUTH
		// (503 5.5.1) and RCPT before MAIL (502 5.5.1) itself: these
		// three are pecgw's guard behind it.
		{key: "auth-need-tls", code: 538, enh: c(5, 7, 11), never: true,
			it: "per autenticarsi serve una connessione cifrata (STARTTLS o SMTPS)",
			en: "encryption required for authentication (STARTTLS or SMTPS)"},
		{key: "auth-twice", code: 503, enh: c(5, 5, 1), never: true,
			it: "autenticazione gia' avvenuta",
			en: "already authenticated"},
		{key: "auth-mechanism", code: 504, enh: c(5, 5, 4),
			it: "meccanismo di autenticazione non supportato: usare PLAIN o LOGIN",
			en: "unrecognized authentication mechanism: use PLAIN or LOGIN"},
		{key: "auth-malformed", code: 501, enh: c(5, 5, 2),
			it: "risposta di autenticazione malformata",
			en: "malformed authentication response"},
		// 454 4.7.0, not 535 5.7.8: temporary (see lockedReply).
		{key: "auth-busy", code: 454, enh: c(4, 7, 0),
			it: "troppi accessi in verifica in questo momento, riprovare tra poco",
			en: "too many logins are being checked right now, please try again in a moment"},
		{key: "auth-unavailable", code: 454, enh: c(4, 7, 0),
			it: "gli account non sono verificabili in questo momento, riprovare piu' tardi",
			en: "the accounts cannot be checked right now, please try again later"},
		{key: "auth-locked", code: 454, enh: c(4, 7, 0),
			it: "troppi accessi falliti per {user} da {ip}: rifiutati fino alle {until}, qualunque sia la password",
			en: "too many failed logins for {user} from {ip}: logins for it from there are refused until {until}, whatever the password"},
		{key: "auth-locked-name", code: 454, enh: c(4, 7, 0),
			it: "troppi accessi falliti da {ip}: accessi per questo account rifiutati fino alle {until}, qualunque sia la password",
			en: "too many failed logins from {ip}: logins for this account from there are refused until {until}, whatever the password"},
		{key: "auth-locked-address", code: 454, enh: c(4, 7, 0),
			it: "troppi accessi falliti da {ip}: accessi da questo indirizzo rifiutati fino alle {until}, qualunque sia l'account",
			en: "too many failed logins from {ip}: logins from there are refused until {until}, whatever the account"},
		// RFC 6109 §2.2.1, §3.1.1: the sender is the authenticated user.
		{key: "sender-not-own", code: 550, enh: c(5, 7, 1),
			it: "il mittente (MAIL FROM) deve essere la propria casella {user}",
			en: "sender address must be your own mailbox {user}"},
		{key: "suspended", code: 550, enh: c(5, 7, 1),
			it: "la casella {address} e' sospesa dal {since}: non puo' inviare posta certificata{reason}",
			en: "mailbox {address} is suspended since {since}: it cannot send certified mail{reason}"},
		{key: "mail-first", code: 503, enh: c(5, 5, 1), never: true,
			it: "prima serve il comando MAIL",
			en: "MAIL first"},
		// RFC 1870 §6.
		{key: "too-big", code: 552, enh: c(5, 3, 4),
			it: "messaggio troppo grande: al massimo {max} byte",
			en: "message size exceeds the limit of {max} octets"},
		{key: "line-too-long-smtp", code: 550, enh: c(5, 6, 0),
			it: "una riga del messaggio supera i {limit} caratteri (RFC 5322 sez. 2.1.1 ne ammette 998): nessun avviso, il messaggio non e' arrivato intero",
			en: "a line of the message is longer than {limit} octets (RFC 5322 section 2.1.1 allows 998): no notice, the message did not arrive whole"},
		// RFC 3463 §3.4 X.3.1: mail system full; nothing certified.
		{key: "no-storage", code: 452, enh: c(4, 3, 1),
			it: "spazio insufficiente per il messaggio, riprovare piu' tardi",
			en: "insufficient system storage for the message, please retry later"},
		{key: "busy-memory", code: 451, enh: c(4, 3, 0),
			it: "troppi messaggi grandi in lavorazione in questo momento, riprovare piu' tardi",
			en: "too many large messages are being processed right now, please retry later"},
		// RFC 3463 §3.5 X.4.2: bad connection; nothing certified.
		{key: "data-stalled", code: 451, enh: c(4, 4, 2),
			it: "problema di connessione durante la ricezione del messaggio, riprovare",
			en: "connection problem while reading the message, please retry"},
		{key: "in-flight", code: 451, enh: c(4, 3, 0),
			it: "lo stesso messaggio e' ancora in lavorazione, riprovare tra poco",
			en: "the same message is still being processed, please retry in a moment"},
		// A deadline gets 451 4.4.5 as maddy does.
		{key: "timeout", code: 451, enh: c(4, 4, 5),
			it: "errore temporaneo (tempo scaduto), riprovare piu' tardi",
			en: "temporary failure (timeout), please retry later"},
		{key: "temporary", code: 451, enh: c(4, 3, 0),
			it: "errore temporaneo, riprovare piu' tardi",
			en: "temporary failure, please retry later"},

		// Connections over the limits (listener.go): 421 instead of the
		// greeting, the server's name first (RFC 5321 §3.1, §4.2).
		{key: "connections", code: 421, enh: c(4, 7, 0), lead: "host",
			it: "troppe connessioni, riprovare piu' tardi",
			en: "too many connections, try again later"},
		{key: "connections-address", code: 421, enh: c(4, 7, 0), lead: "host",
			it: "troppe connessioni da questo indirizzo {ip}, riprovare piu' tardi",
			en: "too many connections from your address {ip}, try again later"},
		{key: "connections-network", code: 421, enh: c(4, 7, 0), lead: "host",
			it: "troppe connessioni da questa rete {network}, riprovare piu' tardi",
			en: "too many connections from your network {network}, try again later"},
	}
}

// replyByKey is the table by key, read only.
var replyByKey = func() map[string]replyText {
	m := map[string]replyText{}
	for _, r := range replyTable() {
		m[r.key] = r
	}
	return m
}()

func lookupReply(key string) replyText {
	if r, ok := replyByKey[key]; ok {
		return r
	}
	// Unreachable: every key used is in the table (TestReplyTable).
	return replyByKey["temporary"]
}

// maxReplyLine is the longest reply line RFC 5321 §4.5.3.1.5 allows,
// including the code and the CRLF.
const maxReplyLine = 512

// maxArg bounds one filled-in value (an address, a reason).
const maxArg = 100

// reply builds the reply key with the placeholders filled from args
// (pairs of name and value) and the lead value (the PEC identifier or the
// host name) first.
func (l Language) reply(key, lead string, args ...string) *smtp.SMTPError {
	r := lookupReply(key)
	return l.build(r.code, r.enh, lead, []string{fill(r.it, args)}, []string{fill(r.en, args)}, "", "")
}

// build assembles one reply line: "<lead> <it> / <en>", the texts of
// several causes joined by "; " in each language, as many as fit in the
// line, the rest counted by moreIt and moreEn; then, when one cause alone
// does not fit (a very long lead), its texts cut. The lead is never cut.
func (l Language) build(code int, enh smtp.EnhancedCode, lead string, its, ens []string, prefixIt, prefixEn string) *smtp.SMTPError {
	lead = asciiLine(lead)
	// The longest code and enhanced code, "538 5.7.11 ", and the CRLF.
	room := maxReplyLine - len("538 5.7.11 ") - 2
	assemble := func(it, en string) string {
		var b strings.Builder
		if lead != "" {
			b.WriteString(lead + " ")
		}
		switch l {
		case Italian:
			b.WriteString(it)
		case English:
			b.WriteString(en)
		default:
			b.WriteString(it + " / " + en)
		}
		return b.String()
	}
	more := func(k int) (string, string) {
		if k >= len(its) {
			return "", ""
		}
		n := strconv.Itoa(len(its) - k)
		return strings.ReplaceAll(moreIt, moreCauses, n), strings.ReplaceAll(moreEn, moreCauses, n)
	}
	for k := len(its); k >= 1; k-- {
		mi, me := more(k)
		msg := assemble(prefixIt+strings.Join(its[:k], "; ")+mi, prefixEn+strings.Join(ens[:k], "; ")+me)
		if len(msg) <= room {
			return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: msg}
		}
	}
	// One cause does not fit: cut its texts to their share of the room
	// the lead, the frame and the count leave.
	mi, me := more(1)
	avail := room - len(assemble(prefixIt+mi, prefixEn+me))
	ci, ce := avail/2, avail-avail/2
	switch l {
	case Italian:
		ci = avail
	case English:
		ce = avail
	}
	msg := assemble(prefixIt+shorten(its[0], ci)+mi, prefixEn+shorten(ens[0], ce)+me)
	if len(msg) > room {
		msg = msg[:room] // only a lead that fills the line by itself
	}
	return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: msg}
}

// shorten cuts s to at most n octets, ending in "...".
func shorten(s string, n int) string {
	switch {
	case len(s) <= n:
		return s
	case n < 3:
		return s[:max(0, n)]
	}
	return s[:n-3] + "..."
}

// fill replaces the {name} placeholders of s with the values of args
// (pairs of name and value), each made one ASCII line of at most maxArg
// octets.
func fill(s string, args []string) string {
	for i := 0; i+1 < len(args); i += 2 {
		s = strings.ReplaceAll(s, "{"+args[i]+"}", shorten(asciiLine(args[i+1]), maxArg))
	}
	return s
}

// AcceptedReply is the 250 of an accepted submission: the PEC identifier
// first, so the client (and its user) can quote it.
func AcceptedReply(l Language, o *Outcome) *smtp.SMTPError {
	if o.Duplicate {
		return l.reply("duplicate", o.ID)
	}
	return l.reply("accepted", o.ID)
}

// RefusedReply is the permanent refusal of a submission that failed the
// formal checks (RFC 6109 §3.1.2), its non-acceptance notice already
// delivered: the PEC identifier first (the notice's daticert
// <identificativo>), then every cause, as many as fit on the line, the
// others counted. Its codes are those of the first violation (RFC 3463).
func RefusedReply(l Language, o *Outcome) *smtp.SMTPError {
	r := lookupReply(pec.CodeEmptyMessage)
	if len(o.Violations) > 0 {
		r = lookupReply(o.Violations[0].Code)
	}
	var its, ens []string
	for _, v := range o.Violations {
		vr := lookupReply(v.Code)
		args := make([]string, 0, 2*len(v.Args))
		for k, a := range v.Args {
			args = append(args, k, a)
		}
		its = append(its, fill(vr.it, args))
		ens = append(ens, fill(vr.en, args))
	}
	if len(its) == 0 {
		its, ens = []string{r.it}, []string{r.en}
	}
	return l.build(r.code, r.enh, o.ID, its, ens, refusedIt, refusedEn)
}

// InternalReply is the answer to any internal failure: temporary, so the
// client retries and nothing is lost, and without internal detail (the
// operator's log has it).
func InternalReply(l Language, err error) *smtp.SMTPError {
	switch {
	case errors.Is(err, ErrInFlight):
		return l.reply("in-flight", "")
	case errors.Is(err, context.DeadlineExceeded):
		return l.reply("timeout", "")
	}
	return l.reply("temporary", "")
}

// asciiLine makes s one printable ASCII line for a reply: the Italian
// accented letters become the letter and an apostrophe, as Italian
// servers write them ("è" "e'"), "§" becomes "section", any other
// character outside printable ASCII a "?".
func asciiLine(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= 0x20 && r < 0x7f:
			b.WriteRune(r)
		case r == '§':
			b.WriteString("section ")
		case r == '×':
			b.WriteByte('x')
		case r < 0x20 || r == 0x7f:
			b.WriteByte(' ')
		default:
			b.WriteString(unaccent(r))
		}
	}
	return b.String()
}

// unaccent writes an Italian letter with an accent as the letter and an
// apostrophe; any other character is "?".
func unaccent(r rune) string {
	switch r {
	case 'à', 'á':
		return "a'"
	case 'è', 'é':
		return "e'"
	case 'ì', 'í':
		return "i'"
	case 'ò', 'ó':
		return "o'"
	case 'ù', 'ú':
		return "u'"
	case 'À', 'Á':
		return "A'"
	case 'È', 'É':
		return "E'"
	case 'Ì', 'Í':
		return "I'"
	case 'Ò', 'Ó':
		return "O'"
	case 'Ù', 'Ú':
		return "U'"
	}
	return "?"
}

// ReplyPECID returns the PEC identifier that the text of a reply of pecgw
// starts with (after its enhanced status code, when the text still has
// it, as go-smtp's client leaves it in a 250), or "" when it starts with
// none. For clients and tools: the identifier is the first word.
func ReplyPECID(text string) string {
	f := strings.Fields(text)
	if len(f) > 0 && isEnhancedCode(f[0]) {
		f = f[1:]
	}
	if len(f) == 0 || !strings.Contains(f[0], "@") {
		return ""
	}
	return f[0]
}

func isEnhancedCode(s string) bool {
	p := strings.Split(s, ".")
	if len(p) != 3 {
		return false
	}
	for _, n := range p {
		if _, err := strconv.Atoi(n); err != nil {
			return false
		}
	}
	return true
}

// ReplyPattern is the regular expression the text of reply key (a row of
// docs/replies.md) matches in language l, with one cause when it is a
// refusal and its lead (the PEC identifier, the host name) first; code
// and enh are its codes. For tests and tools that check what a client
// gets; ok is false for a key the table does not have.
func ReplyPattern(key string, l Language) (code int, enh smtp.EnhancedCode, re *regexp.Regexp, ok bool) {
	r, ok := replyByKey[key]
	if !ok {
		return 0, smtp.EnhancedCode{}, nil, false
	}
	text := func(s string) string {
		q := regexp.QuoteMeta(s)
		return regexp.MustCompile(`\\\{[a-z]+\\\}`).ReplaceAllString(q, `.*?`)
	}
	it, en := text(r.it), text(r.en)
	if r.refusal {
		it, en = regexp.QuoteMeta(refusedIt)+it, regexp.QuoteMeta(refusedEn)+en
	}
	var body string
	switch l {
	case Italian:
		body = it
	case English:
		body = en
	default:
		body = it + " / " + en
	}
	switch r.lead {
	case "id":
		body = `[0-9]{14}\.[a-z2-7]{26}@[^ ]+ ` + body
	case "host":
		body = `[^ ]+ ` + body
	}
	return r.code, r.enh, regexp.MustCompile("^" + body + "$"), true
}
