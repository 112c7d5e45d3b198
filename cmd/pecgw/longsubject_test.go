package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/pecgw/pecgw/logstore"
)

// TestFoldedMegabyteSubject: a Subject folded over a megabyte is legal
// (RFC 5322 §2.1.1 bounds lines, not fields) and larger than a log line;
// the submission gets a definite answer on the first try, and its
// records hold the subject cut, with its length and SHA-256
// (docs/logformat.md, "Long values").
func TestFoldedMegabyteSubject(t *testing.T) {
	const user, pwd = "mario@pec.example.it", "correct horse"
	dir, cfg, caFile, sub, _ := setUpBinary(t, "pec.example.it", "Example PEC S.p.A.", user, pwd)
	setConfig(t, cfg, "[limits]", map[string]string{"min_auth_time": `"5ms"`})
	srv := &crashServer{bin: pecgwBinary(t), cfg: cfg, addrs: []string{sub}, out: &lockedBuffer{}}
	t.Cleanup(srv.kill)
	if err := srv.start(); err != nil {
		t.Fatal(err)
	}
	var subject strings.Builder
	subject.WriteString("Subject: Fattura")
	for subject.Len() < 1<<20+1000 {
		subject.WriteString("\r\n " + strings.Repeat("lungo ", 12))
	}
	msg := "Date: Wed, 02 Dec 2026 10:00:00 +0100\r\nFrom: " + user + "\r\nTo: anna@pec.altro.it\r\n" + subject.String() +
		"\r\nMessage-ID: <long@client>\r\n\r\nciao\r\n"
	cl, err := smtp.DialStartTLS(sub, clientTLS(t, caFile))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.Auth(sasl.NewPlainClient("", user, pwd)); err != nil {
		t.Fatal(err)
	}
	reply, err := sendOne(cl, user, []string{"anna@pec.altro.it"}, msg)
	if err != nil {
		t.Fatalf("a folded 1 MB subject: %v\n%s", err, lastLine(srv.out.String()))
	}
	cl.Quit()
	if err := srv.term(); err != nil {
		t.Fatal(err)
	}
	t.Logf("reply: %s", reply)
	segs, _ := logstore.ListSegments(filepath.Join(dir, "log"))
	var found bool
	for _, s := range segs {
		for _, l := range segmentLines(t, filepath.Join(dir, "log", s.Name)) {
			if l.rec.Type != logstore.EventAccettazione {
				continue
			}
			found = true
			if len(l.rec.Subject) > logstore.MaxText || !strings.Contains(l.rec.Subject, "…[cut: ") || !strings.HasPrefix(l.rec.Subject, "Fattura") {
				t.Errorf("subject in the log: %d octets, %q…", len(l.rec.Subject), l.rec.Subject[:min(80, len(l.rec.Subject))])
			}
		}
	}
	if !found {
		t.Errorf("no accettazione record\n%s", srv.out.String())
	}
	if code, out, errOut := runBin(t, "", "log", "verify", "--config", cfg, "--ca", caFile); code != 0 {
		t.Errorf("log verify: exit %d\n%s%s", code, out, errOut)
	}
}
