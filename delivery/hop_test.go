package delivery

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"log"
	"net"
	"path/filepath"
	"sync"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/pecgw/pecgw/signer"
)

// testData is a message with CRLF line ends and a line that needs
// dot-stuffing on the wire (RFC 5321 §4.5.2), to show it arrives unchanged.
var testData = []byte("From: alice@pec.example.it\r\nTo: bob@pec.other.it\r\nSubject: test\r\n\r\n.a line that begins with a dot\r\nbody\r\n")

// fakeHop is a next hop built with go-smtp's server: another provider's
// MTA or a local LMTP server. Its zero value accepts everything.
type fakeHop struct {
	user, pass string // AUTH PLAIN credentials accepted, if set

	rcptReply map[string]error // RCPT refusals
	dataReply error            // SMTP reply to the end of DATA
	lmtpReply map[string]error // LMTP per-recipient replies after DATA
	hangHello chan struct{}    // when set, EHLO hangs until it is closed
	hangData  chan struct{}    // when set, the end of DATA hangs until it is closed

	mu       sync.Mutex
	authed   []string
	mails    int
	resets   int
	received []received
}

type received struct {
	from string
	to   []string
	opts smtp.MailOptions
	tls  bool
	data []byte
}

func (h *fakeHop) NewSession(c *smtp.Conn) (smtp.Session, error) {
	if h.hangHello != nil {
		<-h.hangHello
	}
	return &fakeSession{hop: h, conn: c}, nil
}

func (h *fakeHop) snapshot() (mails, resets int, authed []string, got []received) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.mails, h.resets, append([]string(nil), h.authed...), append([]received(nil), h.received...)
}

type fakeSession struct {
	hop  *fakeHop
	conn *smtp.Conn
	cur  received
}

func (s *fakeSession) AuthMechanisms() []string { return []string{sasl.Plain} }

func (s *fakeSession) Auth(mech string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(identity, username, password string) error {
		if s.hop.user == "" || username != s.hop.user || password != s.hop.pass {
			return smtp.ErrAuthFailed
		}
		s.hop.mu.Lock()
		s.hop.authed = append(s.hop.authed, username)
		s.hop.mu.Unlock()
		return nil
	}), nil
}

func (s *fakeSession) Mail(from string, opts *smtp.MailOptions) error {
	s.hop.mu.Lock()
	s.hop.mails++
	s.hop.mu.Unlock()
	_, isTLS := s.conn.TLSConnectionState()
	s.cur = received{from: from, opts: *opts, tls: isTLS}
	return nil
}

func (s *fakeSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if err := s.hop.rcptReply[to]; err != nil {
		return err
	}
	s.cur.to = append(s.cur.to, to)
	return nil
}

func (s *fakeSession) Data(r io.Reader) error {
	if err := s.read(r); err != nil {
		return err
	}
	if s.hop.hangData != nil {
		<-s.hop.hangData
	}
	if s.hop.dataReply != nil {
		return s.hop.dataReply
	}
	s.keep(s.cur.to)
	return nil
}

func (s *fakeSession) LMTPData(r io.Reader, status smtp.StatusCollector) error {
	if err := s.read(r); err != nil {
		return err
	}
	var took []string
	for _, rcpt := range s.cur.to {
		err := s.hop.lmtpReply[rcpt]
		status.SetStatus(rcpt, err)
		if err == nil {
			took = append(took, rcpt)
		}
	}
	s.keep(took)
	return nil
}

func (s *fakeSession) read(r io.Reader) error {
	data, err := io.ReadAll(r)
	s.cur.data = data
	return err
}

func (s *fakeSession) keep(to []string) {
	m := s.cur
	m.to = to
	s.hop.mu.Lock()
	s.hop.received = append(s.hop.received, m)
	s.hop.mu.Unlock()
}

func (s *fakeSession) Reset() {
	s.hop.mu.Lock()
	s.hop.resets++
	s.hop.mu.Unlock()
	s.cur = received{}
}

func (s *fakeSession) Logout() error { return nil }

// testPKI is a development PKI: the fake next hop's certificate and the
// client's trust anchors.
type testPKI struct {
	server *tls.Config
	roots  *x509.CertPool
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	p, err := signer.GenerateDevPKI(signer.DevPKIOptions{Domain: "pec.example.it", ProviderName: "Example PEC S.p.A.", KeyType: "p256"})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(p.CACert)
	return testPKI{
		server: &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{p.TLSCert.Raw}, PrivateKey: p.TLSKey}}},
		roots:  roots,
	}
}

// startHop serves h on a loopback TCP port (or, with network "unix", a
// socket in a temporary folder) and returns its address. configure
// adjusts the server before it starts; wrap, if not nil, wraps the
// listener (implicit TLS).
func startHop(t *testing.T, h *fakeHop, network string, configure func(*smtp.Server), wrap func(net.Listener) net.Listener) string {
	t.Helper()
	s := smtp.NewServer(h)
	s.Domain = "mx.pec.other.it"
	s.ErrorLog = log.New(io.Discard, "", 0)
	if configure != nil {
		configure(s)
	}
	var (
		l   net.Listener
		err error
	)
	if network == "unix" {
		l, err = net.Listen("unix", filepath.Join(t.TempDir(), "lmtp.sock"))
	} else {
		l, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		t.Fatal(err)
	}
	if wrap != nil {
		l = wrap(l)
	}
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	// Registered after s.Close, so it runs first: let a hung handler go.
	t.Cleanup(func() {
		for _, c := range []chan struct{}{h.hangHello, h.hangData} {
			if c != nil {
				close(c)
			}
		}
	})
	return l.Addr().String()
}
