package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/pecgw/pecgw/internal/testtool"
	"github.com/pecgw/pecgw/logstore"
)

// TestReceiptWitnessesTheLog: an acceptance receipt and a non-acceptance
// notice carry, inside their signed part, the position of their record
// in the log; pecgw verify --log finds it there, and says so when the
// record was removed or changed (docs/formats.md, "The log position").
func TestReceiptWitnessesTheLog(t *testing.T) {
	openssl := testtool.Need(t, "openssl")
	const user, pwd = "mario@pec.example.it", "correct horse"
	dir, cfg, caFile, sub, _ := setUpBinary(t, "pec.example.it", "Example PEC S.p.A.", user, pwd)
	setConfig(t, cfg, "[limits]", map[string]string{"min_auth_time": `"5ms"`})
	srv := &crashServer{bin: pecgwBinary(t), cfg: cfg, addrs: []string{sub}, out: &lockedBuffer{}}
	t.Cleanup(srv.kill)
	if err := srv.start(); err != nil {
		t.Fatal(err)
	}
	cl, err := smtp.DialStartTLS(sub, clientTLS(t, caFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Auth(sasl.NewPlainClient("", user, pwd)); err != nil {
		t.Fatal(err)
	}
	msg := func(id string) string {
		return "Date: Wed, 02 Dec 2026 10:00:00 +0100\r\nFrom: " + user + "\r\nTo: anna@pec.altro.it\r\nSubject: prova\r\nMessage-ID: <" + id + "@client>\r\n\r\nciao\r\n"
	}
	if _, err := sendOne(cl, user, []string{"anna@pec.altro.it"}, msg("ok")); err != nil {
		t.Fatal(err)
	}
	// A hidden Bcc: refused, with its notice (RFC 6109 §3.1.1).
	if _, err := sendOne(cl, user, []string{"anna@pec.altro.it", "bob@pec.altro.it"}, msg("bcc")); err == nil {
		t.Fatal("a hidden Bcc was accepted")
	}
	cl.Quit()
	if err := srv.term(); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "mailboxes", user, "new", "*"))
	kinds := map[string]string{}
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, k := range []string{"accettazione", "non-accettazione"} {
			if bytes.Contains(b, []byte("X-Ricevuta: "+k+"\r\n")) {
				kinds[k] = f
			}
		}
	}
	if len(kinds) != 2 {
		t.Fatalf("mailbox: %v", files)
	}
	logDir := filepath.Join(dir, "log")
	segs, _ := logstore.ListSegments(logDir)
	seg := filepath.Join(logDir, segs[len(segs)-1].Name)
	for kind, f := range kinds {
		t.Run(kind, func(t *testing.T) {
			// openssl, the independent judge, still verifies the signature
			// over the entity that now carries the position.
			if out, err := exec.Command(openssl, "cms", "-verify", "-CAfile", caFile, "-in", f, "-out", os.DevNull).CombinedOutput(); err != nil {
				t.Fatalf("openssl cms -verify: %v\n%s", err, out)
			}
			code, out, errOut := runBin(t, "", "verify", f, "--ca", caFile, "--log", logDir)
			if code != 0 || !strings.Contains(out, "is in the log, its hash as the receipt says") || !strings.Contains(out, "("+kind+" of ") {
				t.Fatalf("verify --log: exit %d\n%s%s", code, out, errOut)
			}
			var seq uint64
			fmt.Sscanf(out[strings.Index(out, "record seq "):], "record seq %d", &seq)
			line, _, err := logstore.FindRecord(logDir, seq)
			if err != nil {
				t.Fatal(err)
			}
			for _, tc := range []struct {
				name, want string
				edit       func(b []byte) []byte
			}{
				{"record removed", "MISSING: the receipt names record seq " + fmt.Sprint(seq), func(b []byte) []byte { return bytes.Replace(b, line, nil, 1) }},
				{"record changed", fmt.Sprintf("ALTERED: record seq %d has hash", seq), func(b []byte) []byte {
					return bytes.Replace(b, line, bytes.Replace(line, []byte(`"subject":"prova"`), []byte(`"subject":"altro"`), 1), 1)
				}},
			} {
				d := copyDir(t, logDir)
				editFile(t, filepath.Join(d, filepath.Base(seg)), tc.edit)
				code, out, errOut := runBin(t, "", "verify", f, "--ca", caFile, "--log", d)
				if code == 0 || !strings.Contains(out, tc.want) {
					t.Errorf("%s: verify --log: exit %d, want …%s…\n%s%s", tc.name, code, tc.want, out, errOut)
				}
			}
		})
	}
}
