package gateway

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// dialFrom opens a TCP connection from the loopback address local to
// addr (Linux routes all of 127.0.0.0/8 to lo).
func dialFrom(t *testing.T, local, addr string) net.Conn {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// firstLine reads the first line the server sends on c (over TLS when
// tc is not nil).
func firstLine(t *testing.T, c net.Conn, tc *tls.Config) string {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var r io.Reader = c
	if tc != nil {
		tlsc := tls.Client(c, tc)
		if err := tlsc.Handshake(); err != nil {
			return "handshake: " + err.Error()
		}
		r = tlsc
	}
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil && line == "" {
		return "read: " + err.Error()
	}
	return strings.TrimRight(line, "\r\n")
}

func wantRefused(t *testing.T, what, line, reason string) {
	t.Helper()
	if !strings.HasPrefix(line, "421 4.7.0 ") || !strings.Contains(line, reason) {
		t.Errorf("%s: first line %q, want 421 4.7.0 … %s", what, line, reason)
	}
}

func wantGreeting(t *testing.T, what, line string) {
	t.Helper()
	if !strings.HasPrefix(line, "220 ") {
		t.Errorf("%s: first line %q, want the 220 greeting", what, line)
	}
}

// eventuallyGreeted retries until a connection from local is greeted:
// the server sees a closed connection a moment after the client closes.
func eventuallyGreeted(t *testing.T, what, local, addr string, tc *tls.Config) {
	t.Helper()
	var line string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		c := dialFrom(t, local, addr)
		line = firstLine(t, c, tc)
		c.Close()
		if strings.HasPrefix(line, "220 ") {
			return
		}
	}
	t.Errorf("%s: %q", what, line)
}

// TestConnectionsCountedFromAccept: a connection that never says a word
// (plain, or SMTPS without a TLS handshake) holds its slot, and the next
// one over the limit gets 421 4.7.0 at once instead of the greeting, in
// clear on the submission port and over TLS on the SMTPS one.
func TestConnectionsCountedFromAccept(t *testing.T) {
	ts := startTestServerConns(t, 10*time.Second, nil, ConnLimits{PerAddress: 2})
	dialFrom(t, "127.0.0.1", ts.starttls) // silent
	dialFrom(t, "127.0.0.1", ts.smtps)    // never handshakes
	time.Sleep(50 * time.Millisecond)     // both accepted
	wantRefused(t, "third connection, submission port", firstLine(t, dialFrom(t, "127.0.0.1", ts.starttls), nil), "too many connections from your address 127.0.0.1")
	wantRefused(t, "third connection, SMTPS port", firstLine(t, dialFrom(t, "127.0.0.1", ts.smtps), ts.client), "too many connections from your address 127.0.0.1")
	wantGreeting(t, "another address", firstLine(t, dialFrom(t, "127.0.0.2", ts.starttls), nil))
	if n := ts.gate.Open(); n != 3 {
		t.Errorf("gate counts %d connections, want 3", n)
	}
}

// TestConnectionLimitsPerNetworkAndTotal: the /24 of the client counts,
// and the total over both listeners.
func TestConnectionLimitsPerNetworkAndTotal(t *testing.T) {
	ts := startTestServerConns(t, 10*time.Second, nil, ConnLimits{PerAddress: 5, PerNetwork: 2, Total: 4})
	a := dialFrom(t, "127.0.5.1", ts.starttls)
	wantGreeting(t, "first of 127.0.5.0/24", firstLine(t, a, nil))
	wantGreeting(t, "second of 127.0.5.0/24", firstLine(t, dialFrom(t, "127.0.5.2", ts.smtps), ts.client))
	wantRefused(t, "third of 127.0.5.0/24", firstLine(t, dialFrom(t, "127.0.5.3", ts.starttls), nil), "too many connections from your network 127.0.5.0/24")
	wantGreeting(t, "127.0.6.1", firstLine(t, dialFrom(t, "127.0.6.1", ts.starttls), nil))
	wantGreeting(t, "127.0.7.1", firstLine(t, dialFrom(t, "127.0.7.1", ts.starttls), nil))
	wantRefused(t, "fifth in all", firstLine(t, dialFrom(t, "127.0.8.1", ts.smtps), ts.client), "too many connections")
	// A slot comes back when its connection closes.
	a.Close()
	eventuallyGreeted(t, "after one closed", "127.0.5.3", ts.starttls, nil)
}

// TestSTARTTLSKeepsOneSlot: STARTTLS ends go-smtp's session and the next
// EHLO starts one; the connection still holds one slot.
func TestSTARTTLSKeepsOneSlot(t *testing.T) {
	ts := startTestServerConns(t, 10*time.Second, nil, ConnLimits{PerAddress: 1})
	c, err := smtp.DialStartTLS(ts.starttls, ts.client)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", "mario@pec.example.it", "s3cret")); err != nil {
		t.Fatal(err)
	}
	if n := ts.gate.Open(); n != 1 {
		t.Errorf("gate counts %d connections, want 1", n)
	}
	c.Quit()
	for deadline := time.Now().Add(5 * time.Second); ts.gate.Open() != 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := ts.gate.Open(); n != 0 {
		t.Errorf("gate counts %d connections after QUIT, want 0", n)
	}
}

// TestPreAuthDeadlines: before AUTH a connection lives under
// PreAuthTimeout per step and LoginTimeout in all, whatever go-smtp's
// 10 s; after AUTH only go-smtp's timeouts apply.
func TestPreAuthDeadlines(t *testing.T) {
	const step, login = 300 * time.Millisecond, 1500 * time.Millisecond
	ts := startTestServerConns(t, 10*time.Second, nil, ConnLimits{PreAuthTimeout: step, LoginTimeout: login})
	closedWithin := func(what string, c net.Conn, within time.Duration, keepAlive bool) {
		t.Helper()
		start := time.Now()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		r := bufio.NewReader(c)
		for {
			if keepAlive {
				if _, err := io.WriteString(c, "NOOP\r\n"); err != nil {
					break
				}
			}
			if _, err := r.ReadString('\n'); err != nil {
				break
			}
			if keepAlive {
				time.Sleep(step / 3)
			}
		}
		if got := time.Since(start); got > within {
			t.Errorf("%s: closed after %v, want within %v", what, got, within)
		}
	}
	closedWithin("silent after the greeting", dialFrom(t, "127.0.0.1", ts.starttls), step+time.Second, false)
	closedWithin("SMTPS without a handshake", dialFrom(t, "127.0.0.1", ts.smtps), step+time.Second, false)
	closedWithin("NOOPs without AUTH", dialFrom(t, "127.0.0.1", ts.starttls), login+time.Second, true)

	// After AUTH, a pause longer than both bounds is fine.
	c := ts.dial(t, true)
	if err := c.Auth(sasl.NewPlainClient("", "mario@pec.example.it", "s3cret")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(login + step)
	if err := c.Noop(); err != nil {
		t.Errorf("NOOP after AUTH and a long pause: %v", err)
	}
}

func TestNetwork(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.77":              "192.0.2.0/24",
		"::ffff:192.0.2.77":       "192.0.2.0/24",
		"2001:db8:1:2:3:4:5:6":    "2001:db8:1:2::/64",
		"fe80::1234:5678:9abc:de": "fe80::/64",
	} {
		if got := Network(netip.MustParseAddr(in)).String(); got != want {
			t.Errorf("Network(%s) = %s, want %s", in, got, want)
		}
	}
}
