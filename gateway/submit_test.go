package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"strconv"
	"strings"
	"testing"

	"github.com/emersion/go-message"
	"github.com/emersion/go-smtp"

	"github.com/pecgw/pecgw/dedup"
	"github.com/pecgw/pecgw/internal/testpki"
	"github.com/pecgw/pecgw/pec"
	"github.com/pecgw/pecgw/signer"
)

func TestNormalizeBareLF(t *testing.T) {
	for _, c := range []struct{ name, in, want string }{
		{"CRLF untouched", "a\r\nb\r\n", "a\r\nb\r\n"},
		{"all LF", "a\nb\n", "a\r\nb\r\n"},
		{"mixed", "a\r\nb\nc\r\nd", "a\r\nb\r\nc\r\nd"},
		{"empty lines", "a\n\n\nb\n", "a\r\n\r\n\r\nb\r\n"},
		// RFC 5321 §4.5.2 after a bare LF as after a CRLF: Python's
		// smtplib doubles the dot, the server removes one.
		{"dot-stuffed after LF", "a\n..dot\n..\nend\n", "a\r\n.dot\r\n.\r\nend\r\n"},
		// After CRLF go-smtp removed the dot already: nothing more.
		{"dot after CRLF", "a\r\n.dot\n", "a\r\n.dot\r\n"},
		{"lone dot after LF", "a\n.\nMAIL FROM:<x@y>\n", "a\r\n.\r\nMAIL FROM:<x@y>\r\n"},
		{"lone dot CRLF after LF", "a\n.\r\nb\r\n", "a\r\n.\r\nb\r\n"},
		{"bare CR left", "a\rb\nc\r\n", "a\rb\r\nc\r\n"},
		{"first line", "\nx\n", "\r\nx\r\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := string(NormalizeBareLF([]byte(c.in))); got != c.want {
				t.Errorf("NormalizeBareLF(%q) = %q, want %q", c.in, got, c.want)
			}
		})
	}
}

func TestBareLFPolicy(t *testing.T) {
	p, err := ParseBareLFClients([]string{"App@PEC.example.it", "10.1.2.0/24", "2001:db8::/32", "192.0.2.7"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		user, ip string
		want     bool
	}{
		{"app@pec.example.it", "198.51.100.1", true},
		{"mario@pec.example.it", "10.1.2.200", true},
		{"mario@pec.example.it", "10.1.3.1", false},
		{"mario@pec.example.it", "2001:db8:1::5", true},
		{"mario@pec.example.it", "192.0.2.7", true},
		{"mario@pec.example.it", "192.0.2.8", false},
		{"mario@pec.example.it", "::ffff:10.1.2.3", true},
		{"mario@pec.example.it", "pipe", false},
	} {
		if got := p.Applies(c.user, c.ip); got != c.want {
			t.Errorf("Applies(%s, %s) = %v", c.user, c.ip, got)
		}
	}
	if (BareLFPolicy{}).Applies("mario@pec.example.it", "10.1.2.3") {
		t.Error("the zero policy normalises")
	}
	for _, bad := range []string{"app@", "10.0.0.0/40", "host.example"} {
		if _, err := ParseBareLFClients([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if p, _ := ParseBareLFClients([]string{"0.0.0.0/0", "::/0"}); !p.Applies("x@y.it", "203.0.113.9") || !p.Applies("x@y.it", "2001:db8::1") {
		t.Error("0.0.0.0/0 and ::/0 do not cover every client")
	}
}

// postacert is the postacert.eml of a transport envelope handed off.
func postacert(t *testing.T, data []byte) []byte {
	t.Helper()
	res, err := signer.Verify(data, testpki.Roots())
	if err != nil {
		t.Fatalf("envelope signature: %v", err)
	}
	e, err := message.Read(bytes.NewReader(res.Content))
	if err != nil {
		t.Fatal(err)
	}
	mr := e.MultipartReader()
	for {
		p, err := mr.NextPart()
		if err != nil {
			t.Fatalf("no postacert.eml: %v", err)
		}
		if mt, _, _ := p.Header.ContentType(); mt == "message/rfc822" {
			var b bytes.Buffer
			b.ReadFrom(p.Body)
			return b.Bytes()
		}
	}
}

// TestMissingDateAdded: RFC 6409 §8.2, a submission without Date is
// certified, and postacert.eml carries the transaction's instant, the
// envelope's own Date; a retry of it is still a retry (the dedup key is
// the message as the client sent it).
func TestMissingDateAdded(t *testing.T) {
	f := newFixture(t)
	withDedup(t, f)
	raw := strings.Replace(goodMessage, "Date: Mon, 23 Nov 2026 10:29:00 +0100\r\n", "", 1)
	o, err := f.a.Process(context.Background(), submission(raw, "anna@pec.altro.it", "luca@example.com"))
	if err != nil || !o.Accepted {
		t.Fatalf("outcome %+v, %v", o, err)
	}
	eml := postacert(t, f.out.got[0].Data)
	want := "Date: " + o.At.Header() + "\r\n"
	if !bytes.Contains(eml, []byte("\r\n"+want+"\r\nciao")) || bytes.Count(eml, []byte("\r\nDate: ")) != 1 {
		t.Errorf("postacert.eml lacks %q after the last field:\n%s", want, eml)
	}
	if !bytes.Contains(f.out.got[0].Data, []byte("\r\n"+want)) {
		t.Errorf("the envelope's Date is not the one added")
	}
	again, err := f.a.Process(context.Background(), submission(raw, "anna@pec.altro.it", "luca@example.com"))
	if err != nil || !again.Duplicate || again.ID != o.ID {
		t.Errorf("retry: %+v, %v", again, err)
	}
	recs := f.records(t)
	k := dedup.Key{Sender: mario, MessageID: "<c1@mua>", Recipients: []string{"anna@pec.altro.it", "luca@example.com"}, BodyHash: sha256.Sum256([]byte(raw))}
	if recs[0].Dedup == nil || recs[0].Dedup.FP != k.Fingerprint() || recs[0].Size != int64(len(raw)) {
		t.Errorf("record %+v: the key and size of what the client sent", recs[0])
	}
}

// TestBareLFNormalized: submission.bare_lf = "normalize" for mario: his
// LF-only message is certified, made CRLF; anna's is still refused.
func TestBareLFNormalized(t *testing.T) {
	lf := strings.ReplaceAll(goodMessage, "\r\n", "\n") + "..riga con punto\n"
	t.Run("listed", func(t *testing.T) {
		f := newFixture(t)
		f.a.BareLF = BareLFPolicy{Users: []string{mario}}
		o, err := f.a.Process(context.Background(), submission(lf, "anna@pec.altro.it", "luca@example.com"))
		if err != nil || !o.Accepted {
			t.Fatalf("outcome %+v, %v", o, err)
		}
		eml := postacert(t, f.out.got[0].Data)
		if bytes.Contains(bytes.ReplaceAll(f.out.got[0].Data, []byte("\r\n"), nil), []byte("\n")) {
			t.Error("a bare LF in the envelope")
		}
		if !bytes.HasSuffix(eml, []byte("\r\n\r\nciao\r\n.riga con punto\r\n")) {
			t.Errorf("postacert.eml is not the normalised message:\n%q", eml)
		}
	})
	t.Run("not listed", func(t *testing.T) {
		f := newFixture(t)
		f.a.BareLF = BareLFPolicy{Users: []string{"anna@pec.altro.it"}}
		o, err := f.a.Process(context.Background(), submission(lf, "anna@pec.altro.it", "luca@example.com"))
		if err != nil || o.Accepted || o.Violations[0].Code != pec.CodeBareLF {
			t.Fatalf("outcome %+v, %v", o, err)
		}
	})
	t.Run("bare CR still refused", func(t *testing.T) {
		f := newFixture(t)
		f.a.BareLF = BareLFPolicy{Users: []string{mario}}
		o, err := f.a.Process(context.Background(), submission(lf+"a\rb\n", "anna@pec.altro.it", "luca@example.com"))
		if err != nil || o.Accepted || len(o.Violations) != 1 || o.Violations[0].Code != pec.CodeBareCR {
			t.Fatalf("outcome %+v, %v", o, err)
		}
	})
}

// TestSmugglingNormalized is TestSmuggling with submission.bare_lf =
// "normalize" for the sender: only CRLF.CRLF ends DATA (go-smtp), so the
// smuggled transaction is lines of the one message, certified once with
// one reply; made CRLF, they can no longer end DATA anywhere downstream.
func TestSmugglingNormalized(t *testing.T) {
	body := strings.TrimSuffix(goodMessage, "\r\n")
	smuggled := "MAIL FROM:<mario@pec.example.it>\r\nRCPT TO:<anna@pec.altro.it>\r\nRCPT TO:<luca@example.com>\r\nDATA\r\n" +
		strings.Replace(goodMessage, "<c1@mua>", "<smuggled@mua>", 1)
	for _, sep := range []string{"\n.\n", "\r\n.\n", "\n.\r\n", "\n.\n\r\n.\n\n.\r\n"} {
		t.Run(strconv.Quote(sep), func(t *testing.T) {
			ts := newTestServer(t)
			ts.a.BareLF = BareLFPolicy{Users: []string{mario}}
			rc := newRawAuthed(t, ts, true)
			r := rc.transaction(t, mario, []string{"anna@pec.altro.it", "luca@example.com"}, body+sep+smuggled)
			if r.code != 250 || ReplyPECID(r.text) == "" {
				t.Fatalf("reply to the end of data %v", r)
			}
			rc.alive(t)
			if len(ts.out.got) != 1 || len(ts.box.got) != 1 {
				t.Fatalf("%d envelopes and %d receipts, want one of each", len(ts.out.got), len(ts.box.got))
			}
			env := ts.out.got[0].Data
			if bytes.Contains(bytes.ReplaceAll(env, []byte("\r\n"), nil), []byte("\n")) {
				t.Error("a bare LF left in the envelope")
			}
			eml := postacert(t, env)
			if !bytes.Contains(eml, []byte("\r\nMAIL FROM:<mario@pec.example.it>\r\n")) || !bytes.Contains(eml, []byte("<smuggled@mua>")) {
				t.Errorf("the smuggled lines are not content of the one message:\n%s", eml)
			}
		})
	}
}

// TestBareLFRefusalSaysWhatToFix: the default, over a real session.
func TestBareLFRefusalSaysWhatToFix(t *testing.T) {
	ts := newTestServer(t)
	rc := newRawAuthed(t, ts, false)
	r := rc.transaction(t, mario, []string{"anna@pec.altro.it", "luca@example.com"}, strings.ReplaceAll(goodMessage, "\r\n", "\n"))
	want := "Messaggio non accettato: la riga 1 termina con LF senza CR: il programma che invia deve terminare ogni riga con CRLF (RFC 5321 sez. 2.3.8) / " +
		"Not accepted: line 1 ends in a bare LF: the sending program must end every line with CRLF (RFC 5321 section 2.3.8)"
	if r.code != 550 || r.enh != (smtp.EnhancedCode{5, 6, 0}) || !strings.HasSuffix(r.text, " "+want) || !strings.HasPrefix(r.text, ReplyPECID(r.text)+" ") {
		t.Errorf("reply %v, want 550 5.6.0 <id> %s", r, want)
	}
	assertOneNotice(t, ts.fixture, pec.CodeBareLF)
}
