package gateway

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// FuzzDovecotReply: no server line panics the parser; a reply it takes
// is OK, FAIL, CONT or CANCELLED with a valid id, and written again with
// its parameters escaped it parses the same.
func FuzzDovecotReply(f *testing.F) {
	for _, s := range []string{
		"OK\t1\tuser=alice@example.it",
		"OK\t7\tuser=bob\tnologin\treason=Disabled",
		"FAIL\t2\tuser=alice\tcode=temp_fail\treason=db\x01tdown",
		"FAIL\t3\ttemp",
		"FAIL\t4294967295",
		"FAIL\t4294967296",
		"CONT\t3\t",
		"CONT\t3\tdGVzdA==",
		"CANCELLED\t9",
		"OK",
		"OK\t",
		"OK\t-1",
		"OK\t+1",
		"OK\t01\t\x01",
		"\t\t\t",
		"",
		"MECH\tPLAIN",
		"OK\t1\t\x010\x011\x01t\x01r\x01n\x01x\x01",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		id, rep, err := parseDovecotReply(line)
		if err != nil {
			if rep.cmd != "" || id != 0 {
				t.Fatalf("error %v with a reply %q %d", err, rep.cmd, id)
			}
			return
		}
		switch rep.cmd {
		case "OK", "FAIL", "CONT", "CANCELLED":
		default:
			t.Fatalf("command %q accepted", rep.cmd)
		}
		again := rep.cmd + "\t" + strings.Split(line, "\t")[1]
		for _, a := range rep.args {
			again += "\t" + dovecotEscape(a)
		}
		id2, rep2, err := parseDovecotReply(again)
		if err != nil || id2 != id || rep2.cmd != rep.cmd || strings.Join(rep2.args, "\x00") != strings.Join(rep.args, "\x00") || len(rep2.args) != len(rep.args) {
			t.Fatalf("%q parsed as %d %q %q; written again %q, parsed as %d %q %q (%v)", line, id, rep.cmd, rep.args, again, id2, rep2.cmd, rep2.args, err)
		}
	})
}

// FuzzDovecotEscape: unescape(escape(s)) == s, and an escaped value holds
// no TAB, CR or LF (it stays one parameter of one line).
func FuzzDovecotEscape(f *testing.F) {
	for _, s := range []string{"", "plain", "a\tb", "\x01", "\x011", "\x00\x01\t\r\n", "\x01\x01t", "pässwörd\t€", "\xff\xfe", "trailing\x01"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e := dovecotEscape(s)
		if strings.ContainsAny(e, "\t\r\n\x00") {
			t.Fatalf("escape(%q) = %q holds TAB, CR, LF or NUL", s, e)
		}
		if u := dovecotUnescape(e); u != s {
			t.Fatalf("unescape(escape(%q)) = %q (escaped %q)", s, u, e)
		}
		// Unescaping any input never panics, and never grows it.
		if u := dovecotUnescape(s); len(u) > len(s) {
			t.Fatalf("unescape(%q) = %q is longer", s, u)
		}
	})
}

// FuzzDovecotServer: whatever a server sends (the handshake and the
// replies, then it hangs up), Verify returns, without panic, within
// its timeout, and an error never comes with true.
func FuzzDovecotServer(f *testing.F) {
	for _, s := range []string{
		fakeGreeting + "OK\t1\tuser=u\n",
		fakeGreeting + "FAIL\t1\tuser=u\n",
		fakeGreeting + "FAIL\t1\tcode=temp_fail\n",
		fakeGreeting + "OK\t1\tnologin\n",
		fakeGreeting + "CONT\t1\t\n",
		fakeGreeting + "CANCELLED\t1\n",
		fakeGreeting + "OK\t2\nOK\t1\n",
		fakeGreeting + "WHAT\n",
		fakeGreeting + "OK\t1",
		"VERSION\t1\t2\nDONE\n",
		"VERSION\t2\t0\n",
		"VERSION\t1\t2\nMECH\tPLAIN\nDONE\nOK\t1\n",
		"\n\n\n",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, server string) {
		d := NewDovecot(DovecotOptions{Address: "fuzz", Timeout: time.Second})
		d.dial = func(ctx context.Context) (net.Conn, error) {
			c, s := net.Pipe()
			go func() {
				go io.Copy(io.Discard, s)
				io.WriteString(s, server)
				s.Close()
			}()
			return c, nil
		}
		start := time.Now()
		ok, err := d.Verify(context.Background(), "u", "pw", DovecotInfo{})
		if ok && err != nil {
			t.Fatalf("true with an error: %v", err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Fatalf("Verify took %v", took)
		}
		if ok && !strings.Contains(server, "OK\t") {
			t.Fatalf("true without an OK")
		}
		d.Close()
	})
}
