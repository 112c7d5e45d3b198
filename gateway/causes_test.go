package gateway

import (
	"bytes"
	"strings"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/pecgw/pecgw/internal/testpki"
	"github.com/pecgw/pecgw/logstore"
	"github.com/pecgw/pecgw/pec"
	"github.com/pecgw/pecgw/signer"
)

const mario = "mario@pec.example.it"

// newAuthedClient is a client of ts authenticated as mario with AUTH
// PLAIN, over STARTTLS or implicit TLS (SMTPS).
func newAuthedClient(t *testing.T, ts *testServer, implicit bool) *smtp.Client {
	t.Helper()
	c := ts.dial(t, implicit)
	if err := c.Auth(sasl.NewPlainClient("", mario, "s3cret")); err != nil {
		t.Fatalf("auth: %v", err)
	}
	return c
}

// assertOneNotice checks invariant 4 of a refusal: exactly one signed
// non-acceptance notice (errore="altro") to the sender, exactly one log
// record naming every violation in wantCodes, and no transport envelope.
func assertOneNotice(t *testing.T, f *fixture, wantCodes ...string) {
	t.Helper()
	if len(f.out.got) != 0 {
		t.Errorf("%d transport envelopes handed off for a refused message", len(f.out.got))
	}
	if len(f.box.got) != 1 {
		t.Fatalf("%d messages to the mailboxes, want exactly one notice", len(f.box.got))
	}
	n := f.box.got[0]
	if len(n.ForwardPaths) != 1 || n.ForwardPaths[0] != mario {
		t.Errorf("notice addressed to %q, want the sender", n.ForwardPaths)
	}
	if !bytes.Contains(n.Data, []byte("X-Ricevuta: non-accettazione")) {
		t.Errorf("notice without X-Ricevuta: non-accettazione:\n%.400s", n.Data)
	}
	res, err := signer.Verify(n.Data, testpki.Roots())
	if err != nil || !res.ChainVerified {
		t.Fatalf("notice signature: %v", err)
	}
	x, err := pec.FindDatiCert(res.Content)
	if err != nil {
		t.Fatalf("notice daticert: %v", err)
	}
	d, err := pec.ParseDatiCert(x)
	if err != nil {
		t.Fatal(err)
	}
	if d.Tipo != pec.TipoNonAccettazione || d.Errore != pec.ErroreAltro {
		t.Errorf("daticert tipo=%q errore=%q", d.Tipo, d.Errore)
	}
	recs := f.records(t)
	if len(recs) != 1 || recs[0].Type != logstore.EventNonAccettazione {
		t.Fatalf("log %+v, want one non-accettazione record", recs)
	}
	if recs[0].Generated == nil || recs[0].Generated.Notice == "" || !bytes.Contains(n.Data, []byte(recs[0].Generated.Notice)) {
		t.Errorf("log record %+v does not name the notice", recs[0])
	}
	for _, c := range wantCodes {
		found := false
		for _, v := range recs[0].Violations {
			found = found || v == c
		}
		if !found {
			t.Errorf("log violations %v, want %s", recs[0].Violations, c)
		}
	}
}

// assertNothing checks that no message was handed off and nothing logged.
func assertNothing(t *testing.T, f *fixture) {
	t.Helper()
	if len(f.out.got)+len(f.box.got) != 0 {
		t.Errorf("handed off %d envelopes and %d receipts or notices, want none", len(f.out.got), len(f.box.got))
	}
	if recs := f.records(t); len(recs) != 0 {
		t.Errorf("log %+v, want empty", recs)
	}
}

func withHeader(old, replacement string) string {
	if !strings.Contains(goodMessage, old) {
		panic("no " + old)
	}
	return strings.Replace(goodMessage, old, replacement, 1)
}

// TestNonAcceptanceCauses submits, through a real authenticated session,
// one message for each cause of non-acceptance (RFC 6109 §3.1.1, §3.1.2).
func TestNonAcceptanceCauses(t *testing.T) {
	both := []string{"anna@pec.altro.it", "luca@example.com"}
	for _, c := range []struct {
		name     string
		limits   pec.Limits
		rcpt     []string
		msg      string
		code     int
		enh      smtp.EnhancedCode
		vcode    string
		mentions string // the reply names the rule
		raw      bool   // sent byte for byte: go-smtp's client would turn a bare LF into CRLF
	}{
		{"bcc-header", pec.Limits{}, both, withHeader("Subject: prova\r\n", "Subject: prova\r\nBcc: spy@example.com\r\n"),
			550, smtp.EnhancedCode{5, 7, 1}, pec.CodeBccHeader, "Bcc", false},
		{"hidden-bcc", pec.Limits{}, append(both, "spy@example.com"), goodMessage,
			550, smtp.EnhancedCode{5, 7, 1}, pec.CodeHiddenBcc, "destinatario nascosto (Ccn/Bcc) non ammesso nella PEC", false},
		{"sender-mismatch", pec.Limits{}, both, withHeader("From: Mario <mario@pec.example.it>\r\n", "From: Anna <anna@pec.altro.it>\r\n"),
			550, smtp.EnhancedCode{5, 7, 1}, pec.CodeSenderMismatch, "does not coincide with MAIL FROM", false},
		{"missing-to", pec.Limits{}, []string{"luca@example.com"}, withHeader("To: anna@pec.altro.it\r\n", ""),
			550, smtp.EnhancedCode{5, 6, 0}, pec.CodeMissingTo, "To", false},
		{"size-limit", pec.Limits{MaxSizeTimesRecipients: int64(2*len(goodMessage) - 1)}, both, goodMessage,
			552, smtp.EnhancedCode{5, 3, 4}, pec.CodeSizeLimit, "recipients exceeds the limit of", false},
		{"too-many-recipients", pec.Limits{MaxRecipients: 1}, both, goodMessage,
			550, smtp.EnhancedCode{5, 5, 3}, pec.CodeTooManyRecipients, "2 recipients exceed the limit of 1 per message", false},
		{"bare-lf", pec.Limits{}, both, withHeader("Subject: prova\r\n", "Subject: prova\n"),
			550, smtp.EnhancedCode{5, 6, 0}, pec.CodeBareLF, "the sending program must end every line with CRLF", true},
		{"header-without-colon", pec.Limits{}, both, withHeader("Subject: prova\r\n", "Subject prova\r\n"),
			550, smtp.EnhancedCode{5, 6, 0}, pec.CodeHeaderSyntax, "malformed header at line", false},
	} {
		for _, implicit := range []bool{false, true} {
			name := c.name + "/starttls"
			if implicit {
				name = c.name + "/smtps"
			}
			t.Run(name, func(t *testing.T) {
				ts := newTestServer(t)
				ts.a.Limits = c.limits
				var code int
				var enh smtp.EnhancedCode
				var msg string
				if c.raw {
					rc := newRawAuthed(t, ts, implicit)
					r := rc.transaction(t, mario, c.rcpt, c.msg)
					code, enh, msg = r.code, r.enh, r.text
				} else {
					cl := newAuthedClient(t, ts, implicit)
					code, enh, msg = smtpCode(sendMail(cl, mario, c.rcpt, c.msg))
					// The session goes on: the next message is judged afresh.
					if c.limits == (pec.Limits{}) {
						defer func() {
							if err := sendMail(cl, mario, both, goodMessage); err != nil {
								t.Errorf("good message after a refusal: %v", err)
							}
						}()
					}
				}
				if code != c.code || enh != c.enh || !strings.Contains(msg, c.mentions) || !strings.Contains(msg, "Messaggio non accettato: ") {
					t.Errorf("reply %d %v %q, want %d %v naming %q", code, enh, msg, c.code, c.enh, c.mentions)
				}
				assertOneNotice(t, ts.fixture, c.vcode)
			})
		}
	}
}

// TestSessionRefusalsTouchNothing extends TestSessionRefusals: the
// refusals of the session itself produce no notice, no envelope and no
// log record, and their codes are exact.
func TestSessionRefusalsTouchNothing(t *testing.T) {
	t.Run("mail-rcpt-data-without-auth-over-tls", func(t *testing.T) {
		ts := newTestServer(t)
		for _, implicit := range []bool{false, true} {
			c := ts.dial(t, implicit)
			if code, enh, _ := smtpCode(c.Mail(mario, nil)); code != 530 || enh != (smtp.EnhancedCode{5, 7, 0}) {
				t.Errorf("MAIL without AUTH (implicit=%v): %d %v", implicit, code, enh)
			}
			if code, _, _ := smtpCode(c.Rcpt("anna@pec.altro.it", nil)); code/100 != 5 {
				t.Errorf("RCPT without AUTH: %d", code)
			}
			if _, err := c.Data(); err == nil {
				t.Error("DATA without AUTH accepted")
			}
		}
		assertNothing(t, ts.fixture)
	})
	t.Run("auth-without-tls", func(t *testing.T) {
		ts := newTestServer(t)
		plain, err := smtp.Dial(ts.starttls)
		if err != nil {
			t.Fatal(err)
		}
		defer plain.Close()
		if err := plain.Hello("client.example"); err != nil {
			t.Fatal(err)
		}
		for _, a := range []sasl.Client{sasl.NewPlainClient("", mario, "s3cret"), sasl.NewLoginClient(mario, "s3cret")} {
			code, enh, _ := smtpCode(plain.Auth(a))
			if code/100 != 5 || enh[0] != 5 || enh[1] != 7 {
				t.Errorf("AUTH without TLS: %d %v, want 5xx 5.7.x", code, enh)
			}
		}
		if code, enh, _ := smtpCode(plain.Mail(mario, nil)); code != 530 || enh != (smtp.EnhancedCode{5, 7, 0}) {
			t.Errorf("MAIL after a refused AUTH: %d %v", code, enh)
		}
		assertNothing(t, ts.fixture)
	})
	t.Run("wrong-credentials", func(t *testing.T) {
		ts := newTestServer(t)
		for _, a := range []sasl.Client{
			sasl.NewPlainClient("", mario, "wrong"),
			sasl.NewPlainClient("", "nobody@pec.example.it", "s3cret"),
			sasl.NewLoginClient(mario, "wrong"),
			sasl.NewPlainClient("", mario, ""),
		} {
			c := ts.dial(t, true)
			if code, enh, _ := smtpCode(c.Auth(a)); code != 535 || enh != (smtp.EnhancedCode{5, 7, 8}) {
				t.Errorf("wrong credentials: %d %v", code, enh)
			}
			if code, _, _ := smtpCode(c.Mail(mario, nil)); code != 530 {
				t.Errorf("MAIL after a failed AUTH: %d", code)
			}
		}
		assertNothing(t, ts.fixture)
	})
	t.Run("mail-from-not-the-user", func(t *testing.T) {
		ts := newTestServer(t)
		c := newAuthedClient(t, ts, false)
		for _, from := range []string{"anna@pec.altro.it", "", "mario@pec.example.it.evil.example", "mario@pec.example"} {
			if code, enh, _ := smtpCode(c.Mail(from, nil)); code != 550 || enh != (smtp.EnhancedCode{5, 7, 1}) {
				t.Errorf("MAIL FROM:<%s>: %d %v", from, code, enh)
			}
		}
		// RCPT without a MAIL accepted: a bad sequence, nothing else.
		if code, _, _ := smtpCode(c.Rcpt("anna@pec.altro.it", nil)); code/100 != 5 {
			t.Errorf("RCPT after a refused MAIL: %d", code)
		}
		// The address is case-insensitive (RFC 5321 §2.4 in practice).
		if err := c.Mail("Mario@PEC.Example.IT", nil); err != nil {
			t.Errorf("MAIL FROM own mailbox in capitals: %v", err)
		}
		if err := c.Reset(); err != nil {
			t.Fatal(err)
		}
		assertNothing(t, ts.fixture)
	})
	t.Run("auth-twice", func(t *testing.T) {
		ts := newTestServer(t)
		c := newAuthedClient(t, ts, true)
		if code, _, _ := smtpCode(c.Auth(sasl.NewPlainClient("", "anna@pec.altro.it", "x"))); code != 503 {
			t.Errorf("second AUTH: %d", code)
		}
		assertNothing(t, ts.fixture)
	})
}
