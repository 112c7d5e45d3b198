package pec_test

import (
	"strings"
	"testing"
	"time"

	"github.com/pecgw/pecgw/pec"
)

// TestAddMissingDate: RFC 6409 §8.2, a missing Date is added with the
// transaction's instant, last in the header; a message with a Date, even
// an invalid one, and an empty one are left alone.
func TestAddMissingDate(t *testing.T) {
	at := pec.At(time.Date(2026, 3, 29, 1, 0, 0, 0, time.UTC))
	date := "Date: Sun, 29 Mar 2026 03:00:00 +0200\r\n"
	for _, c := range []struct{ name, in, want string }{
		{"body", "From: a@b.it\r\nTo: c@d.it\r\n\r\nciao\r\n", "From: a@b.it\r\nTo: c@d.it\r\n" + date + "\r\nciao\r\n"},
		{"folded last field", "From: a@b.it\r\nSubject: a\r\n b\r\n\r\nciao\r\n", "From: a@b.it\r\nSubject: a\r\n b\r\n" + date + "\r\nciao\r\n"},
		{"all header", "From: a@b.it\r\nTo: c@d.it\r\n", "From: a@b.it\r\nTo: c@d.it\r\n" + date},
		{"all header without CRLF", "From: a@b.it\r\nTo: c@d.it", "From: a@b.it\r\nTo: c@d.it\r\n" + date},
		{"has Date", "date: yesterday\r\nFrom: a@b.it\r\n\r\nx\r\n", "date: yesterday\r\nFrom: a@b.it\r\n\r\nx\r\n"},
		{"empty", "\r\n", "\r\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, added := pec.AddMissingDate([]byte(c.in), at)
			if string(got) != c.want || added != (c.in != c.want) {
				t.Errorf("AddMissingDate(%q) = %q, %v; want %q", c.in, got, added, c.want)
			}
		})
	}
	// What it adds passes the formal checks.
	raw, _ := pec.AddMissingDate([]byte("From: mario.rossi@pec.example.it\r\nTo: luigi@pec.altro.it\r\nSubject: x\r\n\r\nciao\r\n"), at)
	if _, vs := pec.Inspect(raw, pec.SMTPEnvelope{From: "mario.rossi@pec.example.it", To: []string{"luigi@pec.altro.it"}}, pec.Limits{}); len(vs) != 0 {
		t.Errorf("message with the added Date refused: %v", vs)
	}
	if !strings.Contains(string(raw), date) {
		t.Errorf("no %q in %q", date, raw)
	}
}
