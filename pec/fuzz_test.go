package pec_test

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/pecgw/pecgw/pec"
)

// FuzzInspect feeds Inspect arbitrary messages and envelopes (forward-paths
// separated by newlines). Inspect must not panic, must always return a
// Submission, must give every violation its three texts, and must accept
// only a message whose From is set, whose To names someone, and whose
// To ∪ Cc is exactly the set of forward-paths (RFC 6109 §3.1.1).
func FuzzInspect(f *testing.F) {
	lf := func(b []byte) []byte { return bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n")) }
	seeds := [][]byte{
		submission(),
		submission("From: =?ISO-8859-1?Q?Mario_Ross=EC?= <"+sender+">", "Cc: \"Bianchi, Carlo\" <carlo@pec.altro.it>",
			"Subject: =?ISO-8859-1?Q?Citt=E0_di?= =?UTF-8?B?w6g=?= -\r\n =?windows-1252?Q?=80_100?= =?KOI8-R?B?8NLJ18XU?=",
			"Reply-To: segreteria@example.it", "X-TipoRicevuta: breve"),
		submission("To: amici: " + rcpt + ", anna@example.com;, carlo@pec.altro.it"),
		submission("To: undisclosed-recipients:;", "Cc: "+rcpt),
		submission("Bcc:"),
		submission("Bcc: " + rcpt),
		submission("From: a@x.it, b@x.it", "-Date", "+Subject: due"),
		submission("From: Pàolo <pàolo@città.it>", "To: zoë@例え.jp", "Subject: Città è"),
		submission("Subject: =?x-klingon?Q?abc?= =?UTF-8?Q?=ZZ?= =?UTF-8?B?/w==?="),
		submission("Message-ID: abc@x.it", `To: "luigi bianchi"@pec.altro.it`),
		lf(submission()),
		append(submission(), strings.Repeat("x", 999)+"\r\n"...),
		append([]byte(" folded\r\n"), submission()...),
		[]byte(strings.Join(baseFields(), "\r\n")),
		[]byte("From: " + sender + "\nTo: " + rcpt + "\n\nbody\n"),
		{},
	}
	for _, raw := range seeds {
		f.Add(raw, sender, rcpt, false)
	}
	f.Add(submission("From: pàolo@città.it", "To: zoë@例え.jp"), "PÀOLO@città.it", "zoë@例え.jp", true)
	f.Add(submission("To: "+rcpt+", anna@example.com"), sender, rcpt+"\nANNA@example.com", false)
	f.Add(submission(), "", "", false)

	f.Fuzz(func(t *testing.T, raw []byte, from, to string, smtputf8 bool) {
		env := pec.SMTPEnvelope{From: from, UTF8: smtputf8}
		if to != "" {
			env.To = strings.Split(to, "\n")
		}
		sub, vs := pec.Inspect(raw, env, pec.Limits{})
		if sub == nil {
			t.Fatal("nil Submission")
		}
		if !bytes.Equal(sub.Raw, raw) || sub.Sender != from || sub.HeaderLen < 0 || sub.HeaderLen > len(raw) {
			t.Fatalf("Raw, Sender or HeaderLen wrong: %d of %d", sub.HeaderLen, len(raw))
		}
		if !utf8.ValidString(sub.Subject) {
			t.Fatalf("Subject %q is not UTF-8", sub.Subject)
		}
		switch sub.ReceiptType {
		case pec.ReceiptComplete, pec.ReceiptBrief, pec.ReceiptConcise:
		default:
			t.Fatalf("ReceiptType %q", sub.ReceiptType)
		}
		for _, v := range vs {
			if v.Code == "" || v.Italian == "" || v.English == "" {
				t.Fatalf("violation with an empty text: %+v", v)
			}
		}
		if len(vs) > 0 {
			return
		}
		if sub.From == "" || len(sub.To) == 0 {
			t.Fatalf("accepted with From %q, To %q", sub.From, sub.To)
		}
		fold := func(list ...[]string) map[string]bool {
			m := map[string]bool{}
			for _, l := range list {
				for _, a := range l {
					m[strings.ToLower(strings.TrimSpace(a))] = true
				}
			}
			return m
		}
		rcpts, header := fold(sub.Recipients), fold(sub.To, sub.Cc)
		if len(rcpts) != len(header) {
			t.Fatalf("accepted with RCPT %q, To %q, Cc %q", sub.Recipients, sub.To, sub.Cc)
		}
		for a := range rcpts {
			if !header[a] {
				t.Fatalf("accepted with RCPT %q not in To %q, Cc %q", a, sub.To, sub.Cc)
			}
		}
	})
}
