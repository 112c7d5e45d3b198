package delivery

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

func testMessage() *Message {
	return &Message{
		ReversePath:  "posta-certificata@pec.example.it",
		ForwardPaths: []string{"bob@pec.other.it", "carol@pec.other.it"},
		Data:         testData,
	}
}

// smtpError returns the next hop's reply carried by err, or fails the test.
func smtpError(t *testing.T, err error) *smtp.SMTPError {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		t.Fatalf("error %q carries no *smtp.SMTPError", err)
	}
	return se
}

func TestSMTPStartTLSAuth(t *testing.T) {
	pki := newTestPKI(t)
	hop := &fakeHop{user: "pecgw", pass: "secret"}
	addr := startHop(t, hop, "tcp", func(s *smtp.Server) { s.TLSConfig = pki.server }, nil)

	target := NewSMTP(SMTPOptions{Address: addr, RootCAs: pki.roots, Username: "pecgw", Password: "secret", HelloName: "pecgw.pec.example.it"})
	m := testMessage()
	if err := target.Deliver(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	_, _, authed, got := hop.snapshot()
	if !slices.Equal(authed, []string{"pecgw"}) {
		t.Errorf("AUTH PLAIN users = %q, want [pecgw]", authed)
	}
	if len(got) != 1 {
		t.Fatalf("next hop received %d messages, want 1", len(got))
	}
	r := got[0]
	if !r.tls {
		t.Error("the message did not travel over TLS")
	}
	if r.from != m.ReversePath || !slices.Equal(r.to, m.ForwardPaths) {
		t.Errorf("envelope = %q → %q, want %q → %q", r.from, r.to, m.ReversePath, m.ForwardPaths)
	}
	if !bytes.Equal(r.data, m.Data) {
		t.Errorf("data = %q, want %q", r.data, m.Data)
	}
	if r.opts.Size != int64(len(m.Data)) {
		t.Errorf("SIZE = %d, want %d", r.opts.Size, len(m.Data))
	}
}

func TestSMTPImplicitTLS(t *testing.T) {
	pki := newTestPKI(t)
	hop := &fakeHop{}
	addr := startHop(t, hop, "tcp", nil, func(l net.Listener) net.Listener { return tls.NewListener(l, pki.server) })
	if err := NewSMTP(SMTPOptions{Address: addr, TLS: TLSImplicit, RootCAs: pki.roots}).Deliver(context.Background(), testMessage()); err != nil {
		t.Fatal(err)
	}
	if _, _, _, got := hop.snapshot(); len(got) != 1 || !got[0].tls {
		t.Errorf("received %+v, want one message over TLS", got)
	}
}

func TestSMTPStartTLSNotOffered(t *testing.T) {
	hop := &fakeHop{user: "pecgw", pass: "secret"}
	addr := startHop(t, hop, "tcp", func(s *smtp.Server) { s.AllowInsecureAuth = true }, nil)
	err := NewSMTP(SMTPOptions{Address: addr, Username: "pecgw", Password: "secret"}).Deliver(context.Background(), testMessage())
	if err == nil || !strings.Contains(err.Error(), "STARTTLS") {
		t.Fatalf("err = %v, want a STARTTLS error", err)
	}
	if mails, _, authed, got := hop.snapshot(); mails != 0 || len(authed) != 0 || len(got) != 0 {
		t.Errorf("without TLS the next hop saw %d MAIL, %d AUTH, %d messages; want nothing", mails, len(authed), len(got))
	}
}

func TestSMTPUntrustedCertificate(t *testing.T) {
	pki, other := newTestPKI(t), newTestPKI(t)
	for _, mode := range []string{TLSStartTLS, TLSImplicit} {
		t.Run(mode, func(t *testing.T) {
			hop := &fakeHop{user: "pecgw", pass: "secret"}
			var wrap func(net.Listener) net.Listener
			if mode == TLSImplicit {
				wrap = func(l net.Listener) net.Listener { return tls.NewListener(l, pki.server) }
			}
			addr := startHop(t, hop, "tcp", func(s *smtp.Server) { s.TLSConfig = pki.server }, wrap)
			err := NewSMTP(SMTPOptions{Address: addr, TLS: mode, RootCAs: other.roots, Username: "pecgw", Password: "secret"}).Deliver(context.Background(), testMessage())
			var verr *tls.CertificateVerificationError
			if !errors.As(err, &verr) {
				t.Fatalf("err = %v, want a certificate verification error", err)
			}
			if mails, _, authed, _ := hop.snapshot(); mails != 0 || len(authed) != 0 {
				t.Errorf("next hop saw %d MAIL and %d AUTH over an untrusted channel", mails, len(authed))
			}
		})
	}
}

func TestSMTPWrongServerName(t *testing.T) {
	pki := newTestPKI(t)
	addr := startHop(t, &fakeHop{}, "tcp", func(s *smtp.Server) { s.TLSConfig = pki.server }, nil)
	err := NewSMTP(SMTPOptions{Address: addr, ServerName: "mx.elsewhere.it", RootCAs: pki.roots}).Deliver(context.Background(), testMessage())
	var verr *tls.CertificateVerificationError
	if !errors.As(err, &verr) {
		t.Fatalf("err = %v, want a certificate verification error for the wrong name", err)
	}
}

func TestSMTPNoTLSOnlyOnLoopback(t *testing.T) {
	for _, addr := range []string{"192.0.2.1:25", "mx.pec.other.it:25", "[2001:db8::1]:25"} {
		o := SMTPOptions{Address: addr, TLS: TLSNone}
		if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "loopback") {
			t.Errorf("Validate(%s, none) = %v, want a loopback error", addr, err)
		}
		start := time.Now()
		err := NewSMTP(o).Deliver(context.Background(), testMessage())
		if err == nil || !strings.Contains(err.Error(), "loopback") {
			t.Errorf("Deliver(%s, none) = %v, want a loopback error", addr, err)
		}
		if time.Since(start) > time.Second {
			t.Errorf("Deliver(%s, none) tried to connect", addr)
		}
	}
	if err := (SMTPOptions{Address: "127.0.0.1:25", TLS: TLSNone, Username: "u", Password: "p"}).Validate(); err == nil {
		t.Error("AUTH PLAIN without TLS was accepted")
	}
	if err := (SMTPOptions{Address: "127.0.0.1:25", TLS: "maybe"}).Validate(); err == nil {
		t.Error("TLS mode \"maybe\" was accepted")
	}

	// On loopback, clear text works (a relay on this host).
	hop := &fakeHop{}
	addr := startHop(t, hop, "tcp", nil, nil)
	if err := NewSMTP(SMTPOptions{Address: addr, TLS: TLSNone}).Deliver(context.Background(), testMessage()); err != nil {
		t.Fatal(err)
	}
	if _, _, _, got := hop.snapshot(); len(got) != 1 || !bytes.Equal(got[0].data, testData) {
		t.Errorf("received %+v", got)
	}
}

func TestSMTPRecipientRefused(t *testing.T) {
	pki := newTestPKI(t)
	hop := &fakeHop{rcptReply: map[string]error{
		"carol@pec.other.it": &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such mailbox"},
	}}
	addr := startHop(t, hop, "tcp", func(s *smtp.Server) { s.TLSConfig = pki.server }, nil)
	m := testMessage()
	m.ForwardPaths = []string{"bob@pec.other.it", "carol@pec.other.it", "dave@pec.other.it"}
	err := NewSMTP(SMTPOptions{Address: addr, RootCAs: pki.roots}).Deliver(context.Background(), m)
	if err == nil || !strings.Contains(err.Error(), "carol@pec.other.it") || !strings.Contains(err.Error(), "no such mailbox") {
		t.Fatalf("err = %v, want one naming carol and the reply", err)
	}
	if se := smtpError(t, err); se.Code != 550 || se.Temporary() {
		t.Errorf("code = %d, want permanent 550", se.Code)
	}
	var pe *PartialError
	if errors.As(err, &pe) {
		t.Error("SMTP delivery returned a PartialError: it is all or nothing")
	}
	_, resets, _, got := hop.snapshot()
	if len(got) != 0 {
		t.Errorf("DATA was sent after a refused recipient: %+v", got)
	}
	if resets == 0 {
		t.Error("no RSET after the refused recipient")
	}
}

func TestSMTPReplyCodes(t *testing.T) {
	pki := newTestPKI(t)
	for _, tc := range []struct {
		name      string
		hop       *fakeHop
		code      int
		temporary bool
	}{
		{"rcpt 452", &fakeHop{rcptReply: map[string]error{"bob@pec.other.it": &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 2, 2}, Message: "mailbox full"}}}, 452, true},
		{"data 451", &fakeHop{dataReply: &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}}, 451, true},
		{"data 554", &fakeHop{dataReply: &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "refused"}}, 554, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := startHop(t, tc.hop, "tcp", func(s *smtp.Server) { s.TLSConfig = pki.server }, nil)
			err := NewSMTP(SMTPOptions{Address: addr, RootCAs: pki.roots}).Deliver(context.Background(), testMessage())
			se := smtpError(t, err)
			if errors.Is(err, ErrOutcomeUnknown) {
				t.Errorf("a reply is a known outcome: %v", err)
			}
			if se.Code != tc.code || se.Temporary() != tc.temporary {
				t.Errorf("code %d temporary %v, want %d %v (err %v)", se.Code, se.Temporary(), tc.code, tc.temporary, err)
			}
		})
	}
}

func TestSMTPUTF8(t *testing.T) {
	pki := newTestPKI(t)
	m := testMessage()
	m.UTF8 = true
	m.ForwardPaths = []string{"zoë@pec.other.it"}

	hop := &fakeHop{}
	addr := startHop(t, hop, "tcp", func(s *smtp.Server) { s.TLSConfig = pki.server }, nil)
	err := NewSMTP(SMTPOptions{Address: addr, RootCAs: pki.roots}).Deliver(context.Background(), m)
	if err == nil || !strings.Contains(err.Error(), "SMTPUTF8") {
		t.Fatalf("err = %v, want an SMTPUTF8 error", err)
	}
	if mails, _, _, _ := hop.snapshot(); mails != 0 {
		t.Errorf("MAIL sent to a server without SMTPUTF8")
	}

	hop = &fakeHop{}
	addr = startHop(t, hop, "tcp", func(s *smtp.Server) { s.TLSConfig = pki.server; s.EnableSMTPUTF8 = true }, nil)
	if err := NewSMTP(SMTPOptions{Address: addr, RootCAs: pki.roots}).Deliver(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	if _, _, _, got := hop.snapshot(); len(got) != 1 || !got[0].opts.UTF8 || !slices.Equal(got[0].to, m.ForwardPaths) {
		t.Errorf("received %+v, want one message with SMTPUTF8", got)
	}
}

func TestSMTPEightBit(t *testing.T) {
	pki := newTestPKI(t)
	hop := &fakeHop{}
	addr := startHop(t, hop, "tcp", func(s *smtp.Server) { s.TLSConfig = pki.server }, nil)
	m := testMessage()
	m.EightBit = true
	m.Data = []byte("Subject: caffè\r\n\r\nperché\r\n")
	if err := NewSMTP(SMTPOptions{Address: addr, RootCAs: pki.roots}).Deliver(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	if _, _, _, got := hop.snapshot(); len(got) != 1 || got[0].opts.Body != smtp.Body8BitMIME || !bytes.Equal(got[0].data, m.Data) {
		t.Errorf("received %+v, want the 8-bit message with BODY=8BITMIME", got)
	}
}

// TestSMTPTimeout: a next hop that stops answering is given up after
// Timeout, at the greeting exchange (inside go-smtp's NewClientStartTLS,
// whose own default is 5 minutes) and at the end of DATA.
func TestSMTPTimeout(t *testing.T) {
	pki := newTestPKI(t)
	for _, tc := range []struct {
		name string
		hop  *fakeHop
		// unknown: the whole message was sent, the reply never came: the
		// hop may have it (ErrOutcomeUnknown).
		unknown bool
	}{
		{"EHLO", &fakeHop{hangHello: make(chan struct{})}, false},
		{"end of DATA", &fakeHop{hangData: make(chan struct{})}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := startHop(t, tc.hop, "tcp", func(s *smtp.Server) { s.TLSConfig = pki.server }, nil)
			const timeout = 300 * time.Millisecond
			start := time.Now()
			err := NewSMTP(SMTPOptions{Address: addr, RootCAs: pki.roots, Timeout: timeout}).Deliver(context.Background(), testMessage())
			elapsed := time.Since(start)
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("err = %v, want a timeout", err)
			}
			if errors.Is(err, ErrOutcomeUnknown) != tc.unknown {
				t.Errorf("err = %v: outcome unknown %v, want %v", err, !tc.unknown, tc.unknown)
			}
			if elapsed < timeout || elapsed > 10*timeout {
				t.Errorf("gave up after %v, want about %v", elapsed, timeout)
			}
		})
	}
}

func TestSMTPContextCanceled(t *testing.T) {
	pki := newTestPKI(t)
	hop := &fakeHop{hangData: make(chan struct{})}
	addr := startHop(t, hop, "tcp", func(s *smtp.Server) { s.TLSConfig = pki.server }, nil)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	start := time.Now()
	err := NewSMTP(SMTPOptions{Address: addr, RootCAs: pki.roots, Timeout: time.Minute}).Deliver(ctx, testMessage())
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if elapsed := time.Since(start); elapsed > 10*time.Second {
		t.Errorf("cancel honoured only after %v", elapsed)
	}

	// A context already over does not even connect.
	if err := NewSMTP(SMTPOptions{Address: addr, RootCAs: pki.roots}).Deliver(ctx, testMessage()); !errors.Is(err, context.Canceled) {
		t.Errorf("with a canceled context: err = %v", err)
	}
}

func TestMessageCheck(t *testing.T) {
	for _, m := range []*Message{
		nil,
		{ReversePath: "a@x", Data: testData},
		{ReversePath: "a@x", ForwardPaths: []string{""}, Data: testData},
		{ReversePath: "a@x\r\nRCPT TO:<evil@x>", ForwardPaths: []string{"b@y"}, Data: testData},
		{ReversePath: "a@x", ForwardPaths: []string{"b@y>"}, Data: testData},
	} {
		if err := NewSMTP(SMTPOptions{Address: "127.0.0.1:1"}).Deliver(context.Background(), m); err == nil {
			t.Errorf("message %+v accepted", m)
		}
	}
}
