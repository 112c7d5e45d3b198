package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/pecgw/pecgw/signer"
)

// mapUsers is a test Verifier (the real ones are Users and Dovecot).
type mapUsers map[string]string

func (m mapUsers) Verify(_ context.Context, address, password string, _ ClientInfo) (bool, error) {
	pw, ok := m[strings.ToLower(address)]
	return ok && pw == password, nil
}

// testUsers is the one user of the test servers.
func testUsers() mapUsers { return mapUsers{"mario@pec.example.it": "s3cret"} }

// fastPolicy is the AUTH policy of the test servers unless a test sets
// its own Guard: the time floor and the delays shortened.
func fastPolicy() AuthPolicy {
	return AuthPolicy{MinAuthTime: time.Millisecond, Delay: time.Millisecond}
}

type testServer struct {
	*fixture
	be              *Backend
	gate            *ConnGate // of both listeners
	starttls, smtps string    // addresses of the two listeners
	client          *tls.Config
}

// newTestServer starts the submission service on real loopback TCP with
// real TLS: a STARTTLS listener and an implicit-TLS one.
func newTestServer(t *testing.T) *testServer {
	t.Helper()
	return newTestServerWith(t, nil)
}

// newTestServerWith is newTestServer with a chance to change the Backend
// before any connection.
func newTestServerWith(t *testing.T, setup func(*Backend)) *testServer {
	t.Helper()
	return startTestServer(t, 10*time.Second, setup)
}

// startTestServer starts both listeners on one Backend, as pecgw serve
// does, with go-smtp's per-command timeout set to readTimeout; configure
// (may be nil) sets the Backend's fields before any connection. Unless it
// sets Auth, the Guard checks testUsers under fastPolicy.
func startTestServer(t *testing.T, readTimeout time.Duration, configure func(*Backend)) *testServer {
	t.Helper()
	return startTestServerConns(t, readTimeout, configure, ConnLimits{})
}

// startTestServerConns is startTestServer with the listeners' connection
// limits lim (listener.go).
func startTestServerConns(t *testing.T, readTimeout time.Duration, configure func(*Backend), lim ConnLimits) *testServer {
	t.Helper()
	f := newFixture(t)
	pki, err := signer.GenerateDevPKI(signer.DevPKIOptions{Domain: "pec.example.it", ProviderName: "Example", KeyType: "p256"})
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{pki.TLSCert.Raw}, PrivateKey: pki.TLSKey, Leaf: pki.TLSCert}
	serverTLS := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	roots := x509.NewCertPool()
	roots.AddCert(pki.CACert)
	be := &Backend{Acceptor: f.a, MaxMessageBytes: 1 << 20, TransactionTimeout: 30 * time.Second}
	if configure != nil {
		configure(be)
	}
	if be.Auth == nil {
		be.Auth = NewGuard(testUsers(), fastPolicy(), be.Log)
	}
	ts := &testServer{fixture: f, be: be, client: &tls.Config{RootCAs: roots, ServerName: "localhost"}}
	ts.gate = NewConnGate(lim, "localhost", be.Log)
	for _, implicit := range []bool{false, true} {
		s := smtp.NewServer(be)
		s.Domain = "localhost"
		s.TLSConfig = serverTLS
		s.MaxMessageBytes = be.MaxMessageBytes
		s.MaxLineLength = MaxLineLength
		s.ReadTimeout, s.WriteTimeout = readTimeout, 10*time.Second
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var implicitTLS *tls.Config
		if implicit {
			implicitTLS = serverTLS
			ts.smtps = ln.Addr().String()
		} else {
			ts.starttls = ln.Addr().String()
		}
		ln = NewListener(ln, ts.gate, implicitTLS)
		go s.Serve(ln)
		t.Cleanup(func() { s.Close() })
	}
	return ts
}

func (ts *testServer) dial(t *testing.T, implicit bool) *smtp.Client {
	t.Helper()
	var c *smtp.Client
	var err error
	if implicit {
		c, err = smtp.DialTLS(ts.smtps, ts.client)
	} else {
		c, err = smtp.DialStartTLS(ts.starttls, ts.client)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func smtpCode(err error) (int, smtp.EnhancedCode, string) {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se.Code, se.EnhancedCode, se.Message
	}
	return 0, smtp.EnhancedCode{}, ""
}

func sendMail(c *smtp.Client, from string, to []string, msg string) error {
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write([]byte(msg)); err != nil {
		return err
	}
	return w.Close()
}

func TestSubmitOverBothListeners(t *testing.T) {
	ts := newTestServer(t)
	for _, c := range []struct {
		name     string
		implicit bool
		auth     sasl.Client
	}{
		{"starttls-plain", false, sasl.NewPlainClient("", "mario@pec.example.it", "s3cret")},
		{"smtps-login", true, sasl.NewLoginClient("Mario@PEC.example.it", "s3cret")},
	} {
		t.Run(c.name, func(t *testing.T) {
			cl := ts.dial(t, c.implicit)
			if err := cl.Auth(c.auth); err != nil {
				t.Fatalf("auth: %v", err)
			}
			before := len(ts.out.got)
			if err := cl.Mail("mario@pec.example.it", nil); err != nil {
				t.Fatal(err)
			}
			for _, r := range []string{"anna@pec.altro.it", "luca@example.com"} {
				if err := cl.Rcpt(r, nil); err != nil {
					t.Fatal(err)
				}
			}
			w, err := cl.Data()
			if err != nil {
				t.Fatal(err)
			}
			w.Write([]byte(goodMessage))
			resp, err := w.CloseWithResponse()
			if err != nil {
				t.Fatalf("DATA: %v", err)
			}
			if id := ReplyPECID(resp.StatusText); !strings.HasSuffix(id, "@pec.example.it") || !strings.HasSuffix(resp.StatusText, id+" Messaggio accettato come posta certificata / Accepted as certified mail") {
				t.Errorf("reply %q", resp.StatusText)
			}
			if len(ts.out.got) != before+1 {
				t.Errorf("no envelope handed off")
			}
		})
	}
}

func TestSessionRefusals(t *testing.T) {
	ts := newTestServer(t)

	// AUTH is not offered, and refused, before TLS (RFC 6109 §5.3).
	plain, err := smtp.Dial(ts.starttls)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if err := plain.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := plain.Extension("AUTH"); ok {
		t.Error("AUTH offered without TLS")
	}
	if err := plain.Auth(sasl.NewPlainClient("", "mario@pec.example.it", "s3cret")); err == nil {
		t.Error("AUTH accepted without TLS")
	}
	// MAIL without AUTH.
	if code, enh, _ := smtpCode(plain.Mail("mario@pec.example.it", nil)); code != 530 || enh != (smtp.EnhancedCode{5, 7, 0}) {
		t.Errorf("MAIL without AUTH: %d %v", code, enh)
	}

	// A wrong password: 535 5.7.8, permanent.
	c := ts.dial(t, false)
	if code, enh, _ := smtpCode(c.Auth(sasl.NewPlainClient("", "mario@pec.example.it", "wrong"))); code != 535 || enh != (smtp.EnhancedCode{5, 7, 8}) {
		t.Errorf("wrong password: %d %v", code, enh)
	}
	if code, _, _ := smtpCode(c.Auth(sasl.NewPlainClient("someone@pec.example.it", "mario@pec.example.it", "s3cret"))); code != 535 {
		t.Errorf("authorization identity of another user: %d", code)
	}
	if code, _, _ := smtpCode(c.Mail("mario@pec.example.it", nil)); code != 530 {
		t.Errorf("MAIL after a failed AUTH: %d", code)
	}

	// MAIL FROM another mailbox: never an open relay.
	c = ts.dial(t, true)
	if err := c.Auth(sasl.NewPlainClient("", "mario@pec.example.it", "s3cret")); err != nil {
		t.Fatal(err)
	}
	if code, enh, _ := smtpCode(c.Mail("anna@pec.altro.it", nil)); code != 550 || enh != (smtp.EnhancedCode{5, 7, 1}) {
		t.Errorf("MAIL FROM another mailbox: %d %v", code, enh)
	}

	// A Bcc header: refused with the rule and the notice's identifier.
	bcc := strings.Replace(goodMessage, "Subject: prova\r\n", "Subject: prova\r\nBcc: spy@example.com\r\n", 1)
	err = sendMail(c, "mario@pec.example.it", []string{"anna@pec.altro.it", "luca@example.com"}, bcc)
	code, enh, msg := smtpCode(err)
	if code != 550 || enh != (smtp.EnhancedCode{5, 7, 1}) || !strings.Contains(msg, "Bcc") || !strings.Contains(msg, "Messaggio non accettato: ") {
		t.Errorf("Bcc: %d %v %q", code, enh, msg)
	}
	if len(ts.box.got) != 1 || len(ts.out.got) != 0 {
		t.Errorf("%d notices, %d envelopes", len(ts.box.got), len(ts.out.got))
	}
}
