package gateway

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/pecgw/pecgw/internal/testpki"
	"github.com/pecgw/pecgw/logstore"
	"github.com/pecgw/pecgw/signer"
)

// pipeListener hands go-smtp one in-memory connection: no network.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}
func (l *pipeListener) Close() error   { l.once.Do(func() { close(l.done) }); return nil }
func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

// captureBackend keeps the *smtp.Conn go-smtp creates.
type captureBackend struct{ conn chan *smtp.Conn }

func (b captureBackend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	b.conn <- c
	return idleSession{}, nil
}

// idleSession stands in for the session go-smtp itself runs on the
// captured connection; the fuzzed Sessions are separate.
type idleSession struct{}

func (idleSession) Mail(string, *smtp.MailOptions) error { return smtp.ErrAuthRequired }
func (idleSession) Rcpt(string, *smtp.RcptOptions) error { return smtp.ErrAuthRequired }
func (idleSession) Data(io.Reader) error                 { return smtp.ErrAuthRequired }
func (idleSession) Reset()                               {}
func (idleSession) Logout() error                        { return nil }

// tlsSMTPConn returns a real go-smtp connection that has done a TLS
// handshake over an in-memory pipe, for Sessions driven directly.
func tlsSMTPConn(tb testing.TB) *smtp.Conn {
	tb.Helper()
	pki, err := signer.GenerateDevPKI(signer.DevPKIOptions{Domain: testpki.Domain, ProviderName: testpki.ProviderName, KeyType: "p256"})
	if err != nil {
		tb.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{pki.TLSCert.Raw}, PrivateKey: pki.TLSKey, Leaf: pki.TLSCert}
	serverSide, clientSide := net.Pipe()
	l := &pipeListener{conns: make(chan net.Conn, 1), done: make(chan struct{})}
	l.conns <- tls.Server(serverSide, &tls.Config{Certificates: []tls.Certificate{cert}})
	be := captureBackend{conn: make(chan *smtp.Conn, 1)}
	srv := smtp.NewServer(be)
	srv.Domain = "localhost"
	go srv.Serve(l)
	tb.Cleanup(func() { srv.Close(); clientSide.Close() })
	c := tls.Client(clientSide, &tls.Config{InsecureSkipVerify: true})
	if err := c.Handshake(); err != nil {
		tb.Fatal(err)
	}
	r := bufio.NewReader(c)
	if _, err := r.ReadString('\n'); err != nil { // greeting
		tb.Fatal(err)
	}
	if _, err := c.Write([]byte("EHLO fuzz\r\n")); err != nil {
		tb.Fatal(err)
	}
	conn := <-be.conn
	// Keep the pipe drained so go-smtp's replies never block.
	go func() {
		for {
			if _, err := r.ReadByte(); err != nil {
				return
			}
		}
	}()
	return conn
}

// fuzzInput decodes the fuzzer's bytes into operations.
type fuzzInput struct{ b []byte }

func (in *fuzzInput) byte() byte {
	if len(in.b) == 0 {
		return 0
	}
	c := in.b[0]
	in.b = in.b[1:]
	return c
}

func (in *fuzzInput) chunk() string {
	n := int(in.byte())
	n = min(n, len(in.b))
	s := string(in.b[:n])
	in.b = in.b[n:]
	return s
}

func (in *fuzzInput) address() string {
	switch in.byte() % 5 {
	case 0:
		return mario
	case 1:
		return "anna@pec.altro.it"
	case 2:
		return "luca@example.com"
	case 3:
		return "Mario@PEC.example.it"
	}
	return in.chunk()
}

func (in *fuzzInput) body() string {
	switch in.byte() % 4 {
	case 0:
		return goodMessage
	case 1:
		return in.chunk()
	case 2: // the good message with fuzz bytes in the header
		return strings.Replace(goodMessage, "Subject: prova", "Subject: "+in.chunk(), 1)
	}
	// the good message with a fuzz header field or body
	return strings.Replace(goodMessage, "\r\n\r\nciao", "\r\n"+in.chunk()+"\r\n\r\n"+in.chunk(), 1)
}

func (in *fuzzInput) credentials() string {
	switch in.byte() % 3 {
	case 0:
		return "\x00" + mario + "\x00s3cret"
	case 1:
		return "\x00" + mario + "\x00" + in.chunk()
	}
	return in.chunk()
}

// mustBeSMTPError fails unless err is nil or an *smtp.SMTPError itself: a
// plain error would reach the client as go-smtp's default text with our
// internal detail in it.
func mustBeSMTPError(t *testing.T, what string, err error) *smtp.SMTPError {
	t.Helper()
	if err == nil {
		return nil
	}
	se, ok := err.(*smtp.SMTPError)
	if !ok {
		t.Fatalf("%s returned %T %q, not an *smtp.SMTPError", what, err, err)
	}
	return se
}

// FuzzSession drives a Session through a fuzz-chosen sequence of AUTH,
// MAIL, RCPT, DATA and RSET. Properties: no panic; every error is an
// *smtp.SMTPError; an accepted DATA hands off exactly one envelope and one
// receipt and logs three records; a refused one exactly one notice and one
// record; anything else nothing at all.
func FuzzSession(f *testing.F) {
	f.Add([]byte("\x00\x00\x01\x00\x02\x01\x02\x02\x03\x00"))                         // auth, mail, two rcpt, good data
	f.Add([]byte("\x00\x00\x01\x00\x02\x01\x02\x02\x02\x04x@y\x03\x00"))              // hidden bcc
	f.Add([]byte("\x00\x00\x01\x00\x02\x01\x03\x01\x05a\nb\r\n\x04\x03\x00"))         // data before rcpt, reset, data
	f.Add([]byte("\x00\x01\x03xyz\x01\x00\x05\x05\x04mario\x00\x00\x01\x01\x03\x02")) // wrong auth, login
	f.Add([]byte("\x00\x00\x01\x00\x02\x01\x02\x02\x03\x03\x04X: y\x03a\n."))
	conn := tlsSMTPConn(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 4096 {
			return
		}
		fx := newFixture(t)
		be := &Backend{Acceptor: fx.a, Auth: NewGuard(mapUsers{mario: "s3cret"}, AuthPolicy{MinAuthTime: time.Nanosecond, Delay: time.Nanosecond}, nil), MaxMessageBytes: 1 << 20}
		s := &Session{b: be, conn: conn}
		in := &fuzzInput{b: data}
		var wantEnvelopes, wantBox, wantRecords int
		for ops := 0; len(in.b) > 0 && ops < 32; ops++ {
			switch in.byte() % 6 {
			case 0, 5:
				mech := "PLAIN"
				if len(in.b) > 0 && in.b[0]%2 == 1 {
					mech = "LOGIN"
				}
				srv, err := s.Auth(mech)
				mustBeSMTPError(t, "Auth", err)
				if err != nil {
					continue
				}
				if mech == "PLAIN" {
					// go-sasl's own errors (a malformed response) are
					// its business; ours must be SMTP replies.
					if _, _, err := srv.Next([]byte(in.credentials())); err != nil {
						var se *smtp.SMTPError
						if errors.As(err, &se) {
							mustBeSMTPError(t, "PLAIN", err)
						}
					}
					continue
				}
				for step := 0; step < 3; step++ {
					_, done, err := srv.Next([]byte(in.chunk()))
					mustBeSMTPError(t, "LOGIN", err)
					if done || err != nil {
						break
					}
				}
			case 1:
				mustBeSMTPError(t, "Mail", s.Mail(in.address(), &smtp.MailOptions{}))
			case 2:
				mustBeSMTPError(t, "Rcpt", s.Rcpt(in.address(), &smtp.RcptOptions{}))
			case 3:
				out, box := len(fx.out.got), len(fx.box.got)
				se := mustBeSMTPError(t, "Data", s.Data(strings.NewReader(in.body())))
				dOut, dBox := len(fx.out.got)-out, len(fx.box.got)-box
				switch {
				case se == nil:
					t.Fatal("Data returned nil: the client would get a reply without the PEC identifier")
				case se.Code == 250:
					if dOut != 1 || dBox != 1 || !strings.Contains(se.Message, "Accepted as certified mail") {
						t.Fatalf("accepted (%q) with %d envelopes and %d receipts", se.Message, dOut, dBox)
					}
					wantEnvelopes++
					wantBox++
					wantRecords += 3
				case strings.Contains(se.Message, "Not accepted: "):
					if se.Code/100 != 5 || dOut != 0 || dBox != 1 {
						t.Fatalf("refused (%d %q) with %d envelopes and %d notices", se.Code, se.Message, dOut, dBox)
					}
					wantBox++
					wantRecords++
				default:
					if dOut+dBox != 0 {
						t.Fatalf("reply %d %q with %d envelopes and %d notices", se.Code, se.Message, dOut, dBox)
					}
				}
			case 4:
				s.Reset()
			}
		}
		if len(fx.out.got) != wantEnvelopes || len(fx.box.got) != wantBox {
			t.Fatalf("%d envelopes, %d receipts or notices; want %d, %d", len(fx.out.got), len(fx.box.got), wantEnvelopes, wantBox)
		}
		if wantRecords > 0 || len(data)%8 == 0 { // querying is slow: sample the empty case
			recs := fx.records(t)
			if len(recs) != wantRecords {
				t.Fatalf("%d log records, want %d", len(recs), wantRecords)
			}
			for _, r := range recs {
				if r.Type == logstore.EventAborted {
					t.Fatalf("aborted transaction: %s", r.Detail)
				}
			}
		}
	})
}
