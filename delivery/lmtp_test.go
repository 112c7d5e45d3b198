package delivery

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
)

func startLMTP(t *testing.T, hop *fakeHop, network string) string {
	t.Helper()
	addr := startHop(t, hop, network, func(s *smtp.Server) { s.LMTP = true }, nil)
	if network == "unix" {
		return "unix:" + addr
	}
	return addr
}

func receipt() *Message {
	return &Message{
		ReversePath:  "posta-certificata@pec.example.it",
		ForwardPaths: []string{"alice@pec.example.it", "bob@pec.example.it", "carol@pec.example.it"},
		Data:         testData,
	}
}

func TestLMTPAllAccepted(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			hop := &fakeHop{}
			addr := startLMTP(t, hop, network)
			m := receipt()
			if err := NewLMTP(LMTPOptions{Address: addr, HelloName: "pecgw.pec.example.it"}).Deliver(context.Background(), m); err != nil {
				t.Fatal(err)
			}
			_, _, _, got := hop.snapshot()
			if len(got) != 1 || !slices.Equal(got[0].to, m.ForwardPaths) || !bytes.Equal(got[0].data, m.Data) || got[0].from != m.ReversePath {
				t.Errorf("received %+v", got)
			}
		})
	}
}

// TestLMTPRefusedAfterData: RFC 2033 §4.2, one reply per recipient after
// DATA; one refusal makes a PartialError that lists who has the message.
func TestLMTPRefusedAfterData(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			hop := &fakeHop{lmtpReply: map[string]error{
				"bob@pec.example.it": &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 2, 2}, Message: "mailbox full"},
			}}
			addr := startLMTP(t, hop, network)
			err := NewLMTP(LMTPOptions{Address: addr}).Deliver(context.Background(), receipt())
			var pe *PartialError
			if !errors.As(err, &pe) {
				t.Fatalf("err = %v, want a *PartialError", err)
			}
			if want := []string{"alice@pec.example.it", "carol@pec.example.it"}; !slices.Equal(pe.Delivered, want) {
				t.Errorf("Delivered = %q, want %q", pe.Delivered, want)
			}
			if want := []string{"bob@pec.example.it"}; !slices.Equal(pe.Failed, want) {
				t.Errorf("Failed = %q, want %q", pe.Failed, want)
			}
			var se *smtp.SMTPError
			if !errors.As(pe.Errs["bob@pec.example.it"], &se) || se.Code != 552 {
				t.Errorf("Errs[bob] = %v, want the 552 reply", pe.Errs["bob@pec.example.it"])
			}
			if !strings.Contains(err.Error(), "bob@pec.example.it") || !strings.Contains(err.Error(), "mailbox full") {
				t.Errorf("error %q does not name the refused recipient and reply", err)
			}
			if _, _, _, got := hop.snapshot(); len(got) != 1 || !slices.Equal(got[0].to, pe.Delivered) {
				t.Errorf("the server kept %+v, want the message for %q", got, pe.Delivered)
			}
		})
	}
}

func TestLMTPRefusedAtRcpt(t *testing.T) {
	hop := &fakeHop{rcptReply: map[string]error{
		"carol@pec.example.it": &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"},
	}}
	addr := startLMTP(t, hop, "tcp")
	err := NewLMTP(LMTPOptions{Address: addr}).Deliver(context.Background(), receipt())
	var pe *PartialError
	if !errors.As(err, &pe) {
		t.Fatalf("err = %v, want a *PartialError", err)
	}
	if !slices.Equal(pe.Delivered, []string{"alice@pec.example.it", "bob@pec.example.it"}) || !slices.Equal(pe.Failed, []string{"carol@pec.example.it"}) {
		t.Errorf("Delivered %q Failed %q", pe.Delivered, pe.Failed)
	}
	if se := smtpError(t, err); se.Code != 550 {
		t.Errorf("code %d, want 550", se.Code)
	}
}

func TestLMTPNoneAccepted(t *testing.T) {
	refuse := &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try again"}
	hop := &fakeHop{lmtpReply: map[string]error{
		"alice@pec.example.it": refuse, "bob@pec.example.it": refuse, "carol@pec.example.it": refuse,
	}}
	addr := startLMTP(t, hop, "unix")
	err := NewLMTP(LMTPOptions{Address: addr}).Deliver(context.Background(), receipt())
	if err == nil {
		t.Fatal("no error when every recipient refused")
	}
	var pe *PartialError
	if errors.As(err, &pe) {
		t.Errorf("err is a PartialError although nothing was delivered: %v", err)
	}
	if se := smtpError(t, err); !se.Temporary() {
		t.Errorf("code %d, want a temporary failure", se.Code)
	}
}

func TestLMTPDuplicateRecipients(t *testing.T) {
	hop := &fakeHop{}
	addr := startLMTP(t, hop, "tcp")
	m := receipt()
	m.ForwardPaths = []string{"alice@pec.example.it", "alice@pec.example.it"}
	if err := NewLMTP(LMTPOptions{Address: addr}).Deliver(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	if _, _, _, got := hop.snapshot(); len(got) != 1 || !slices.Equal(got[0].to, []string{"alice@pec.example.it"}) {
		t.Errorf("received %+v, want one copy for alice", got)
	}
}

func TestLMTPOptionsValidate(t *testing.T) {
	for _, addr := range []string{"192.0.2.1:24", "dovecot.internal:24", "unix:", "nonsense"} {
		if err := (LMTPOptions{Address: addr}).Validate(); err == nil {
			t.Errorf("LMTP address %q accepted", addr)
		}
		if err := NewLMTP(LMTPOptions{Address: addr}).Deliver(context.Background(), receipt()); err == nil {
			t.Errorf("Deliver to LMTP address %q did not fail", addr)
		}
	}
	for _, addr := range []string{"127.0.0.1:24", "[::1]:24", "localhost:24", "unix:/run/dovecot/lmtp"} {
		if err := (LMTPOptions{Address: addr}).Validate(); err != nil {
			t.Errorf("LMTP address %q refused: %v", addr, err)
		}
	}
}
