package pec_test

import (
	"bytes"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/pecgw/pecgw/pec"
)

const (
	sender = "mario.rossi@pec.example.it"
	rcpt   = "luigi@pec.altro.it"
)

// baseFields is the header of a clean submission from sender to rcpt.
func baseFields() []string {
	return []string{
		"Date: Mon, 3 Mar 2025 10:00:00 +0100",
		"From: Mario Rossi <" + sender + ">",
		"To: Luigi Bianchi <" + rcpt + ">",
		"Subject: prova",
		"Message-ID: <abc.123@client.example.it>",
	}
}

// submission builds a message with CRLF line ends from baseFields edited
// by edits and a short body. An edit "Name: value" replaces the first
// field of that name (case-insensitively) or appends it; "+Name: value"
// appends even if the field exists; "-Name" removes every such field.
func submission(edits ...string) []byte {
	fields := baseFields()
	name := func(f string) string { n, _, _ := strings.Cut(f, ":"); return strings.TrimSpace(n) }
	for _, e := range edits {
		switch {
		case strings.HasPrefix(e, "-"):
			fields = slices.DeleteFunc(fields, func(f string) bool { return strings.EqualFold(name(f), e[1:]) })
		case strings.HasPrefix(e, "+"):
			fields = append(fields, e[1:])
		default:
			i := slices.IndexFunc(fields, func(f string) bool { return strings.EqualFold(name(f), name(e)) })
			if i >= 0 {
				fields[i] = e
			} else {
				fields = append(fields, e)
			}
		}
	}
	return []byte(strings.Join(fields, "\r\n") + "\r\n\r\nCiao,\r\nun saluto.\r\n")
}

func envelope(to ...string) pec.SMTPEnvelope {
	if to == nil {
		to = []string{rcpt}
	}
	return pec.SMTPEnvelope{From: sender, To: to}
}

func codes(vs []pec.Violation) []string {
	var out []string
	for _, v := range vs {
		out = append(out, v.Code)
	}
	return out
}

// checkTexts asserts the contract of every violation: a stable code, an
// Italian text that completes "a causa di …" (lower-case start, no
// trailing dot) and an English text.
func checkTexts(t *testing.T, vs []pec.Violation) {
	t.Helper()
	for _, v := range vs {
		if v.Code == "" || v.Italian == "" || v.English == "" {
			t.Errorf("violation with an empty text: %+v", v)
			continue
		}
		if r, _ := utf8.DecodeRuneInString(v.Italian); unicode.IsUpper(r) {
			t.Errorf("%s: Italian text starts upper-case: %q", v.Code, v.Italian)
		}
		if strings.HasSuffix(v.Italian, ".") || strings.HasSuffix(v.English, ".") {
			t.Errorf("%s: text ends with a dot: %q / %q", v.Code, v.Italian, v.English)
		}
		if strings.ContainsAny(v.Italian+v.English, "\r\n") {
			t.Errorf("%s: text holds a line end", v.Code)
		}
		if !strings.Contains(v.English, "RFC ") {
			t.Errorf("%s: English text cites no rule: %q", v.Code, v.English)
		}
	}
}

func TestInspectCleanSubmission(t *testing.T) {
	header := strings.Join([]string{
		"Date: Mon, 3 Mar 2025 10:00:00 +0100 (CET)",
		"From: =?ISO-8859-1?Q?Mario_Ross=EC?= <" + sender + ">",
		"To: Luigi Bianchi <" + rcpt + ">,",
		" anna@example.com",
		`Cc: "Bianchi, Carlo" <carlo@pec.altro.it>, =?UTF-8?B?w6g=?= <Eva@Example.COM>`,
		"Reply-To: segreteria@example.it",
		"Subject: =?ISO-8859-1?Q?Citt=E0_di?= =?UTF-8?B?w6g=?= -",
		" =?windows-1252?Q?=80_100?= - =?KOI8-R?B?8NLJ18XU?= -",
		" =?ISO-2022-JP?B?GyRCRnxLXBsoQg==?=",
		"Message-ID: <20250303.abc@client.example.it>",
		"X-TipoRicevuta: Breve",
		"MIME-Version: 1.0",
		"Content-Type: text/plain; charset=utf-8",
	}, "\r\n") + "\r\n\r\n"
	raw := []byte(header + "Ciao.\r\n")
	env := pec.SMTPEnvelope{From: sender, To: []string{rcpt, "anna@example.com", "carlo@pec.altro.it", "eva@example.com"}}

	sub, vs := pec.Inspect(raw, env, pec.Limits{})
	if len(vs) != 0 {
		t.Fatalf("violations %v, want none", vs)
	}
	if &sub.Raw[0] != &raw[0] || len(sub.Raw) != len(raw) {
		t.Error("Raw is not the message as received")
	}
	sub.Raw = nil
	want := &pec.Submission{
		HeaderLen:   len(header),
		Sender:      sender,
		From:        sender,
		To:          []string{rcpt, "anna@example.com"},
		Cc:          []string{"carlo@pec.altro.it", "Eva@Example.COM"},
		ReplyTo:     "segreteria@example.it",
		Subject:     "Città diè - € 100 - Привет - 日本",
		MessageID:   "<20250303.abc@client.example.it>",
		ReceiptType: pec.ReceiptBrief,
		Recipients:  env.To,
	}
	if !reflect.DeepEqual(sub, want) {
		t.Errorf("Inspect =\n%#v\nwant\n%#v", sub, want)
	}
}

func TestInspectViolations(t *testing.T) {
	long := func(n int) string { return strings.Repeat("x", n) }
	lf := func(b []byte) []byte { return bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n")) }
	plain := submission()
	two := submission("To: " + rcpt + ", anna@example.com")
	tests := []struct {
		name string
		raw  []byte
		env  pec.SMTPEnvelope
		lim  pec.Limits
		want []string
	}{
		{name: "clean", raw: plain},

		// RFC 5322 conformance.
		{name: "empty message", raw: nil, want: []string{pec.CodeEmptyMessage}},
		{name: "blank message", raw: []byte("\r\n\r\n"), want: []string{pec.CodeEmptyMessage}},
		{name: "LF-only message", raw: lf(plain), want: []string{pec.CodeBareLF}},
		{name: "one LF-only line", raw: bytes.Replace(plain, []byte("prova\r\n"), []byte("prova\n"), 1), want: []string{pec.CodeBareLF}},
		{name: "bare CR in body", raw: append(submission(), "a\rb\r\n"...), want: []string{pec.CodeBareCR}},
		{name: "998-octet line", raw: append(submission(), long(998)+"\r\n"...)},
		{name: "999-octet line", raw: append(submission(), long(999)+"\r\n"...), want: []string{pec.CodeLineTooLong}},
		{name: "999-octet header line", raw: submission("X-Long: " + long(999-8)), want: []string{pec.CodeLineTooLong}},
		{name: "line without colon", raw: submission("+Garbage line"), want: []string{pec.CodeHeaderSyntax}},
		{name: "space in field name", raw: submission("+X Bad: 1"), want: []string{pec.CodeHeaderSyntax}},
		{name: "empty field name", raw: submission("+: 1"), want: []string{pec.CodeHeaderSyntax}},
		{name: "continuation first", raw: append([]byte(" folded\r\n"), plain...), want: []string{pec.CodeHeaderSyntax}},
		{name: "space before colon tolerated", raw: submission("Subject : prova")},
		{name: "8-bit header without SMTPUTF8", raw: submission("Subject: Città"), want: []string{pec.CodeHeader8bit}},
		{name: "invalid UTF-8 with SMTPUTF8", raw: submission("Subject: Citt\xe0"), env: pec.SMTPEnvelope{From: sender, To: []string{rcpt}, UTF8: true}, want: []string{pec.CodeHeader8bit}},
		{name: "8-bit body is fine", raw: append(submission(), "città\r\n"...)},
		{name: "missing Date", raw: submission("-Date"), want: []string{pec.CodeMissingDate}},
		{name: "invalid Date", raw: submission("Date: yesterday"), want: []string{pec.CodeInvalidDate}},
		{name: "duplicate Subject", raw: submission("+Subject: altra"), want: []string{pec.CodeDuplicateField}},
		{name: "duplicate Date", raw: submission("+date: Mon, 3 Mar 2025 10:00:00 +0100"), want: []string{pec.CodeDuplicateField}},
		{name: "duplicate From", raw: submission("+FROM: " + sender), want: []string{pec.CodeDuplicateField}},
		{name: "duplicate To", raw: submission("+To: " + rcpt), env: envelope(rcpt, "anna@example.com"), want: []string{pec.CodeDuplicateField}},
		{name: "second Bcc with value", raw: submission("Bcc:", "+Bcc:\r\n "+rcpt), want: []string{pec.CodeBccHeader, pec.CodeDuplicateField}},
		{name: "huge To", raw: submission("To: " + rcpt + strings.Repeat(",\r\n "+rcpt, 1<<16)), want: []string{pec.CodeInvalidTo}},
		{name: "duplicate Message-ID and References", raw: submission("+Message-ID: <x@y>", "References: <a@b>", "+References: <c@d>"), want: []string{pec.CodeDuplicateField, pec.CodeDuplicateField}},
		{name: "invalid Reply-To", raw: submission("Reply-To: segreteria@"), want: []string{pec.CodeInvalidReplyTo}},

		// From (RFC 6109 §3.1.1).
		{name: "missing From", raw: submission("-From"), want: []string{pec.CodeMissingFrom}},
		{name: "invalid From", raw: submission("From: mario.rossi@"), want: []string{pec.CodeInvalidFrom}},
		{name: "empty From", raw: submission("From:  "), want: []string{pec.CodeInvalidFrom}},
		{name: "two From mailboxes", raw: submission("From: " + sender + ", altro@pec.example.it"), want: []string{pec.CodeMultipleFrom}},
		{name: "From group of one", raw: submission("From: ufficio: " + sender + ";"), want: []string{pec.CodeMultipleFrom}},
		{name: "From with comment", raw: submission("From: " + sender + " (Mario Rossi)")},
		{name: "From unknown charset name", raw: submission("From: =?x-unknown?Q?Mario?= <" + sender + ">")},

		// To and Cc (RFC 6109 §3.1.1).
		{name: "only Cc", raw: submission("-To", "Cc: "+rcpt), want: []string{pec.CodeMissingTo}},
		{name: "invalid To", raw: submission("To: luigi@"), want: []string{pec.CodeInvalidTo}},
		{name: "partly invalid To", raw: submission("To: " + rcpt + ", luigi@"), want: []string{pec.CodeInvalidTo}},
		{name: "empty To", raw: submission("To:", "Cc: "+rcpt), want: []string{pec.CodeInvalidTo}},
		{name: "To only empty group", raw: submission("To: undisclosed-recipients:;", "Cc: "+rcpt), want: []string{pec.CodeInvalidTo}},
		{name: "To only empty group, RCPT hidden", raw: submission("To: undisclosed-recipients:;"), want: []string{pec.CodeInvalidTo, pec.CodeHiddenBcc}},
		{name: "invalid Cc", raw: submission("Cc: carlo@"), want: []string{pec.CodeInvalidCc}},
		{name: "empty group in Cc", raw: submission("Cc: nessuno:;")},
		{name: "group syntax", raw: submission("To: amici: " + rcpt + ", anna@example.com;, carlo@pec.altro.it"),
			env: envelope(rcpt, "anna@example.com", "carlo@pec.altro.it")},
		{name: "same address in To and Cc", raw: submission("Cc: LUIGI@pec.altro.it")},
		{name: "same address twice in To", raw: submission("To: " + rcpt + ", " + rcpt)},

		// Envelope (RFC 6109 §3.1.1).
		{name: "case-insensitive match", raw: submission("From: mario.rossi@pec.example.it", "To: luigi@pec.altro.it"),
			env: pec.SMTPEnvelope{From: "Mario.Rossi@PEC.example.it", To: []string{"Luigi@PEC.Altro.it"}}},
		{name: "reverse-path differs", raw: plain, env: pec.SMTPEnvelope{From: "altro@pec.example.it", To: []string{rcpt}}, want: []string{pec.CodeSenderMismatch}},
		{name: "empty reverse-path", raw: plain, env: pec.SMTPEnvelope{To: []string{rcpt}}, want: []string{pec.CodeSenderMismatch}},
		{name: "hidden recipient", raw: plain, env: envelope(rcpt, "nascosto@pec.altro.it"), want: []string{pec.CodeHiddenBcc}},
		{name: "To address not sent to", raw: submission("Cc: carlo@pec.altro.it"), want: []string{pec.CodeRecipientMismatch}},
		{name: "no forward-path", raw: plain, env: pec.SMTPEnvelope{From: sender}, want: []string{pec.CodeNoRecipients}},
		{name: "Bcc with value", raw: submission("Bcc: " + rcpt), want: []string{pec.CodeBccHeader}},
		{name: "empty Bcc tolerated", raw: submission("Bcc:")},
		{name: "blank Bcc tolerated", raw: submission("Bcc:   \t")},

		// Limits (RFC 6109 §3.1.1).
		{name: "size at the limit", raw: two, env: envelope(rcpt, "anna@example.com"),
			lim: pec.Limits{MaxSizeTimesRecipients: int64(2 * len(two))}},
		{name: "size one over the limit", raw: two, env: envelope(rcpt, "anna@example.com"),
			lim: pec.Limits{MaxSizeTimesRecipients: int64(2*len(two) - 1)}, want: []string{pec.CodeSizeLimit}},
		{name: "recipients at the limit", raw: submission("To: " + rcpt + ", anna@example.com"), env: envelope(rcpt, "anna@example.com"),
			lim: pec.Limits{MaxRecipients: 2}},
		{name: "recipients over the limit", raw: submission("To: " + rcpt + ", anna@example.com, eva@example.com"), env: envelope(rcpt, "anna@example.com", "eva@example.com"),
			lim: pec.Limits{MaxRecipients: 2}, want: []string{pec.CodeTooManyRecipients}},
		// The SMTP server refused the RCPT TO beyond the limit (452 4.5.3):
		// the header still says how many recipients there are, and the
		// missing forward-paths are not a mismatch of their own.
		{name: "recipients over the limit, RCPT cut at it", raw: submission("To: " + rcpt + ", anna@example.com, eva@example.com"), env: envelope(rcpt, "anna@example.com"),
			lim: pec.Limits{MaxRecipients: 2}, want: []string{pec.CodeTooManyRecipients}},

		// Several at once: all reported.
		{name: "several", raw: lf(submission("-Date", "Bcc: x@example.com", "From: a@x.it, b@x.it")),
			env:  pec.SMTPEnvelope{From: sender, To: []string{rcpt, "x@example.com"}},
			want: []string{pec.CodeBareLF, pec.CodeMissingDate, pec.CodeMultipleFrom, pec.CodeBccHeader, pec.CodeHiddenBcc}},
		{name: "nothing right", raw: []byte("oops\r\n\r\n"), env: pec.SMTPEnvelope{To: []string{}},
			want: []string{pec.CodeHeaderSyntax, pec.CodeMissingDate, pec.CodeMissingFrom, pec.CodeMissingTo, pec.CodeNoRecipients, pec.CodeSenderMismatch}},

		// Shapes RFC 5322 allows.
		{name: "all header, no body", raw: []byte(strings.Join(baseFields(), "\r\n") + "\r\n")},
		{name: "all header, no final CRLF", raw: []byte(strings.Join(baseFields(), "\r\n"))},
		{name: "unknown X-TipoRicevuta", raw: submission("X-TipoRicevuta: rapida")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := tt.env
			if reflect.ValueOf(env).IsZero() {
				env = envelope()
			}
			sub, vs := pec.Inspect(tt.raw, env, tt.lim)
			if sub == nil {
				t.Fatal("nil Submission")
			}
			got, want := codes(vs), slices.Clone(tt.want)
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("codes = %q, want %q\n%v", got, want, vs)
			}
			checkTexts(t, vs)
			// Stable order: the same input gives the same list.
			if _, again := pec.Inspect(tt.raw, env, tt.lim); !reflect.DeepEqual(vs, again) {
				t.Errorf("second run gave %v, first %v", again, vs)
			}
		})
	}
}

// TestInspectTexts pins the details a user reads in the notice and the SMTP
// reply: line numbers, field names, addresses.
func TestInspectTexts(t *testing.T) {
	lfAt3 := bytes.Replace(submission(), []byte("To: Luigi Bianchi <"+rcpt+">\r\n"), []byte("To: Luigi Bianchi <"+rcpt+">\n"), 1)
	tests := []struct {
		name         string
		raw          []byte
		env          pec.SMTPEnvelope
		code         string
		italian, eng string // substrings
	}{
		{"bare LF line", lfAt3, envelope(), pec.CodeBareLF, "riga 3", "line 3 "},
		{"long line", append(submission(), strings.Repeat("x", 999)+"\r\n"...), envelope(), pec.CodeLineTooLong, "riga 9", "line 9 is 999 octets"},
		{"bad header line", submission("+Garbage"), envelope(), pec.CodeHeaderSyntax, "riga 6", "line 6 "},
		{"8-bit", submission("Subject: Città"), envelope(), pec.CodeHeader8bit, "riga 4", "line 4 "},
		{"duplicate", submission("+subject: x"), envelope(), pec.CodeDuplicateField, "presenza ripetuta del campo Subject", "field Subject appears 2 times"},
		{"hidden", submission(), envelope(rcpt, "a@x.it", "b@x.it", "c@x.it", "d@x.it"), pec.CodeHiddenBcc,
			"destinatari nascosti (Bcc), non ammessi nella PEC: a@x.it, b@x.it, c@x.it, d@x.it (in RCPT TO ma non in To o Cc)", "hidden Bcc recipients a@x.it, b@x.it, c@x.it and 1 more: every RCPT TO must appear in To or Cc (RFC 6109 §3.1.1)"},
		{"one hidden", submission(), envelope(rcpt, "bob@pec.altro.it"), pec.CodeHiddenBcc,
			"presenza di un destinatario nascosto (Bcc), non ammesso nella PEC: bob@pec.altro.it", "hidden Bcc recipient bob@pec.altro.it"},
		{"Bcc field", submission("Bcc: Bob <bob@pec.altro.it>, eva@example.com"), envelope(), pec.CodeBccHeader,
			"nel campo Bcc, non ammessi nella PEC: bob@pec.altro.it, eva@example.com", "Bcc field with a value"},
		{"mismatch", submission("Cc: carlo@pec.altro.it"), envelope(), pec.CodeRecipientMismatch, "RCPT TO", "recipient carlo@pec.altro.it of To/Cc has no RCPT TO"},
		{"sender", submission(), pec.SMTPEnvelope{From: "x@y.it", To: []string{rcpt}}, pec.CodeSenderMismatch, "From", "reverse-path x@y.it does not coincide with From " + sender},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, vs := pec.Inspect(tt.raw, tt.env, pec.Limits{})
			i := slices.IndexFunc(vs, func(v pec.Violation) bool { return v.Code == tt.code })
			if i < 0 {
				t.Fatalf("no %s in %v", tt.code, vs)
			}
			if v := vs[i]; !strings.Contains(v.Italian, tt.italian) || !strings.Contains(v.English, tt.eng) {
				t.Errorf("got %q / %q, want them to contain %q / %q", v.Italian, v.English, tt.italian, tt.eng)
			}
		})
	}
}

func TestInspectFields(t *testing.T) {
	utf8Env := pec.SMTPEnvelope{From: "pàolo@città.it", To: []string{"zoë@例え.jp"}, UTF8: true}
	tests := []struct {
		name string
		raw  []byte
		env  pec.SMTPEnvelope
		get  func(*pec.Submission) any
		want any
	}{
		{"folded subject", submission("Subject: =?UTF-8?Q?a?=\r\n =?UTF-8?Q?b?=\r\n c"), envelope(), subject, "ab c"},
		{"subject words glued", submission("Subject: =?UTF-8?Q?a?==?UTF-8?Q?b?="), envelope(), subject, "ab"},
		{"subject keeps space between text and word", submission("Subject: Re: =?UTF-8?Q?caff=C3=A8?= ok"), envelope(), subject, "Re: caffè ok"},
		{"subject unknown charset", submission("Subject: =?x-klingon?Q?abc?= ok"), envelope(), subject, "=?x-klingon?Q?abc?= ok"},
		{"subject bad encoding", submission("Subject: =?UTF-8?Q?=ZZ?="), envelope(), subject, "=?UTF-8?Q?=ZZ?="},
		{"subject not a word", submission("Subject: 2 =? 3"), envelope(), subject, "2 =? 3"},
		{"subject invalid UTF-8 word", submission("Subject: =?UTF-8?B?/w==?=x"), envelope(), subject, "\uFFFDx"},
		{"subject folded CRLF gone", submission("Subject: a\r\n\tb"), envelope(), subject, "a\tb"},
		{"subject absent", submission("-Subject"), envelope(), subject, ""},
		{"SMTPUTF8 subject and address", submission("From: Pàolo <pàolo@città.it>", "To: zoë@例え.jp", "Subject: Città è"), utf8Env,
			func(s *pec.Submission) any { return []string{s.From, s.To[0], s.Subject} },
			[]string{"pàolo@città.it", "zoë@例え.jp", "Città è"}},
		{"message-id without brackets", submission("Message-ID:  abc@x.it "), envelope(), messageID, "<abc@x.it>"},
		{"message-id trimmed", submission("Message-ID:\r\n <abc@x.it> "), envelope(), messageID, "<abc@x.it>"},
		{"message-id garbage", submission("Message-ID: not an id"), envelope(), messageID, ""},
		{"receipt sintetica", submission("x-tiporicevuta: SINTETICA"), envelope(), receipt, pec.ReceiptConcise},
		{"receipt unknown", submission("X-TipoRicevuta: rapida"), envelope(), receipt, pec.ReceiptComplete},
		{"receipt absent", submission(), envelope(), receipt, pec.ReceiptComplete},
		{"reply-to first", submission("Reply-To: a@x.it, b@x.it"), envelope(), func(s *pec.Submission) any { return s.ReplyTo }, "a@x.it"},
		{"quoted local part", submission(`To: "luigi bianchi"@pec.altro.it`), envelope("luigi bianchi@pec.altro.it"), func(s *pec.Submission) any { return s.To }, []string{"luigi bianchi@pec.altro.it"}},
		{"header only", []byte(strings.Join(baseFields(), "\r\n") + "\r\n"), envelope(), func(s *pec.Submission) any { return s.HeaderLen }, 0},
		{"no header", []byte("\r\nbody\r\n"), envelope(), func(s *pec.Submission) any { return s.HeaderLen }, 2},
		{"LF header", []byte("From: " + sender + "\nTo: " + rcpt + "\n\nbody\n"), envelope(),
			func(s *pec.Submission) any { return []any{s.HeaderLen, s.From, s.To} }, []any{len("From: " + sender + "\nTo: " + rcpt + "\n\n"), sender, []string{rcpt}}},
		{"invalid From leaves From empty", submission("From: a@x.it, b@x.it"), envelope(), func(s *pec.Submission) any { return s.From }, ""},
		{"salvaged To", submission("To: " + rcpt + ", bad@, anna@example.com"), envelope(), func(s *pec.Submission) any { return s.To }, []string{rcpt, "anna@example.com"}},
		{"duplicate To: the first is read", submission("+To: anna@example.com"), envelope(), func(s *pec.Submission) any { return s.To }, []string{rcpt}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sub, _ := pec.Inspect(tt.raw, tt.env, pec.Limits{})
			if got := tt.get(sub); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %#v, want %#v", got, tt.want)
			}
		})
	}
}

func subject(s *pec.Submission) any   { return s.Subject }
func messageID(s *pec.Submission) any { return s.MessageID }
func receipt(s *pec.Submission) any   { return s.ReceiptType }

func TestInspectSMTPUTF8Accepted(t *testing.T) {
	raw := submission("From: Pàolo <pàolo@città.it>", "To: zoë@例え.jp", "Subject: Città è")
	_, vs := pec.Inspect(raw, pec.SMTPEnvelope{From: "PÀOLO@città.it", To: []string{"zoë@例え.jp"}, UTF8: true}, pec.Limits{})
	if len(vs) != 0 {
		t.Errorf("violations %v, want none", vs)
	}
	_, vs = pec.Inspect(raw, pec.SMTPEnvelope{From: "pàolo@città.it", To: []string{"zoë@例え.jp"}}, pec.Limits{})
	if got := codes(vs); !slices.Equal(got, []string{pec.CodeHeader8bit}) {
		t.Errorf("without SMTPUTF8: codes %q, want [header-8bit]", got)
	}
}

func TestInspectSizeLimitNoOverflow(t *testing.T) {
	raw := submission()
	many := make([]string, 1<<20)
	for i := range many {
		many[i] = rcpt
	}
	_, vs := pec.Inspect(raw, envelope(many...), pec.Limits{MaxSizeTimesRecipients: 1<<63 - 1, MaxRecipients: 1 << 30})
	if len(vs) != 0 {
		t.Errorf("violations %v, want none", vs)
	}
	_, vs = pec.Inspect(raw, envelope(many...), pec.Limits{MaxRecipients: 1 << 30})
	if got := codes(vs); !slices.Equal(got, []string{pec.CodeSizeLimit}) {
		t.Errorf("codes %q, want [size-limit]", got)
	}
}

// TestInspectHostileInputLinear feeds inputs built to make a careless
// parser quadratic. Each is a few megabytes: quadratic work would take
// hours, linear work well under a second.
func TestInspectHostileInputLinear(t *testing.T) {
	const n = 4 << 20
	rep := func(s string) string { return strings.Repeat(s, n/len(s)) }
	inputs := map[string][]byte{
		"subject false starts":    submission("Subject: " + rep("=?")),
		"subject open words":      submission("Subject: " + rep("=?a?q?")),
		"subject long open word":  submission("Subject: =?utf-8?q?" + rep("a")),
		"subject failing words":   submission("Subject: " + rep("=?x?q?=Z?= ")),
		"subject folded":          submission("Subject: " + rep("=?utf-8?q?a?=\r\n ")),
		"to many addresses":       submission("To: " + rep("a@b.it, ") + "bad@"),
		"to long phrase":          submission("To: " + rep("a ")),
		"to comments":             submission("To: " + rep("(")),
		"to quotes":               submission("To: " + rep(`"`)),
		"to angles":               submission("To: " + rep("<")),
		"to groups":               submission("To: " + rep("g:a@b;")),
		"from long":               submission("From: " + rep("a")),
		"date long":               submission("Date: " + rep("1 ")),
		"many continuation lines": submission("Subject: x\r\n" + rep(" y\r\n")),
		"many fields":             []byte(rep("To: a@b.it\r\n")),
		"many short lines":        []byte(rep("\n")),
		"many bare CR":            []byte(rep("\r")),
		"message-id long":         submission("Message-ID: <" + rep("a") + "@b>"),
		"long body line":          append(submission(), rep("x")...),
	}
	// No timing is asserted (speed is for benchmarks): a quadratic path
	// shows up as this test running into go test's timeout.
	for name, raw := range inputs {
		sub, _ := pec.Inspect(raw, envelope(), pec.Limits{})
		if sub == nil {
			t.Fatalf("%s: nil Submission", name)
		}
	}
}

func ExampleInspect() {
	raw := "Date: Mon, 3 Mar 2025 10:00:00 +0100\r\n" +
		"From: Mario Rossi <mario.rossi@pec.example.it>\r\n" +
		"To: luigi@pec.altro.it\r\n" +
		"Bcc: anna@example.com\r\n" +
		"Subject: =?ISO-8859-1?Q?Fattura_n=B0_12?=\r\n" +
		"\r\n" +
		"In allegato.\r\n"
	env := pec.SMTPEnvelope{From: "mario.rossi@pec.example.it", To: []string{"luigi@pec.altro.it", "anna@example.com"}}
	sub, vs := pec.Inspect([]byte(raw), env, pec.Limits{})
	fmt.Println(sub.From, sub.To, sub.Subject)
	for _, v := range vs {
		fmt.Println(v.Code + ": a causa di " + v.Italian)
	}
	// Output:
	// mario.rossi@pec.example.it [luigi@pec.altro.it] Fattura n° 12
	// bcc-header: a causa di presenza di destinatari nel campo Bcc, non ammessi nella PEC: anna@example.com
	// hidden-bcc: a causa di presenza di un destinatario nascosto (Bcc), non ammesso nella PEC: anna@example.com (in RCPT TO ma non in To o Cc)
}
