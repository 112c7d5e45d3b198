package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/pecgw/pecgw/internal/testpki"
	"github.com/pecgw/pecgw/internal/testtool"
	"github.com/pecgw/pecgw/logstore"
	"github.com/pecgw/pecgw/pec"
)

// TestReceiptWitnessesTheLog: an acceptance receipt and a non-acceptance
// notice emitted by the real daemon carry, inside their signed part, the
// position of their record in the log; openssl still verifies them;
// pecgw verify --log finds the record there, and fails, saying what is
// wrong, when the record was removed, when the log was cut before it,
// and when the record was changed (docs/formats.md, "The log position").
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
	// One more acceptance, so that the records under test are not the
	// last of the log.
	if _, err := sendOne(cl, user, []string{"anna@pec.altro.it"}, msg("later")); err != nil {
		t.Fatal(err)
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
			if bytes.Contains(b, []byte("X-Ricevuta: "+k+"\r\n")) && bytes.Contains(b, []byte("X-Riferimento-Message-ID: <"+map[string]string{"accettazione": "ok", "non-accettazione": "bcc"}[k]+"@client>")) {
				kinds[k] = f
			}
		}
	}
	if len(kinds) != 2 {
		t.Fatalf("mailbox: %v", files)
	}
	logDir := filepath.Join(dir, "log")
	for kind, f := range kinds {
		noun := map[string]string{"accettazione": "receipt", "non-accettazione": "notice"}[kind]
		t.Run(kind, func(t *testing.T) {
			// openssl, the independent judge, still verifies the signature
			// over the entity that now carries the position.
			if out, err := exec.Command(openssl, "cms", "-verify", "-CAfile", caFile, "-in", f, "-out", os.DevNull).CombinedOutput(); err != nil {
				t.Fatalf("openssl cms -verify: %v\n%s", err, out)
			}
			code, out, errOut := runBin(t, "", "verify", f, "--ca", caFile, "--log", logDir)
			if code != 0 || !strings.Contains(out, "\nlog:          record seq ") || !strings.Contains(out, "is in the log, its hash as the "+noun+" says") ||
				!strings.Contains(out, "("+kind+" of ") || !strings.HasSuffix(out, "result:       valid\n") {
				t.Fatalf("verify --log: exit %d\n%s%s", code, out, errOut)
			}
			var seq uint64
			fmt.Sscanf(out[strings.Index(out, "record seq "):], "record seq %d", &seq)
			line, rec, err := logstore.LookupRecord(logDir, seq)
			if err != nil || string(rec.Type) != kind {
				t.Fatalf("LookupRecord(%d): %+v %v", seq, rec, err)
			}
			hash := logstore.Hash(line)
			segs, _ := logstore.ListSegments(logDir)
			seg := segs[len(segs)-1].Name
			changed := bytes.Replace(line, []byte(`"subject":"prova"`), []byte(`"subject":"altro"`), 1)
			for _, tc := range []struct {
				name, want string
				edit       func(b []byte) []byte
			}{
				{"record removed", fmt.Sprintf("log:          MISSING: the %s names record seq %d (hash %s); the log has no record seq %d: in %s seq %d is followed by seq %d: records were removed",
					noun, seq, hash, seq, seg, seq-1, seq+1), func(b []byte) []byte { return bytes.Replace(b, line, nil, 1) }},
				{"log cut before the record", fmt.Sprintf("log:          MISSING: the %s names record seq %d (hash %s); the log has no record seq %d: it ends at seq %d",
					noun, seq, hash, seq, seq-1), func(b []byte) []byte { return b[:bytes.Index(b, line)] }},
				{"record changed", fmt.Sprintf("log:          ALTERED: record seq %d has hash %s, the %s says %s: the record was changed or the log rewritten\n",
					seq, logstore.Hash(changed), noun, hash), func(b []byte) []byte { return bytes.Replace(b, line, changed, 1) }},
				{"record damaged", fmt.Sprintf("log:          ALTERED: record seq %d has hash %s, the %s says %s: the record was changed or the log rewritten (",
					seq, logstore.Hash(line[1:]), noun, hash), func(b []byte) []byte { return bytes.Replace(b, line, line[1:], 1) }},
			} {
				d := copyDir(t, logDir)
				editFile(t, filepath.Join(d, seg), tc.edit)
				code, out, errOut := runBin(t, "", "verify", f, "--ca", caFile, "--log", d)
				if code != 1 || !strings.Contains(out, tc.want) || !strings.HasSuffix(out, "result:       NOT VALID\n") {
					t.Errorf("%s: verify --log: exit %d, want …%s…\n%s%s", tc.name, code, tc.want, out, errOut)
				}
			}
		})
	}
}

// TestVerifyLogPosition runs pecgw verify --log in the process on
// receipts signed with the test key against a real log: the record of
// the receipt's own transaction passes; a position naming a record of
// another type or another transaction is a MISMATCH; a receipt without
// a position (a pecgw before it wrote one) and an envelope are not
// valid with --log; a position in the unsigned outer header is not read.
func TestVerifyLogPosition(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC)
	l, err := logstore.Open(logstore.Options{Dir: dir, Signer: testpki.Signer(t, "p256"), Provider: testpki.ProviderName, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	const id = "20261123100000.x@pec.example.it"
	appendRec := func(typ logstore.Event, pecID string) (uint64, string) {
		seq, hash, err := l.Append(context.Background(), &logstore.Record{V: logstore.FormatVersion, Time: "2026-11-23T10:00:00+01:00", Type: typ, PECID: pecID, Provider: testpki.ProviderName})
		if err != nil {
			t.Fatal(err)
		}
		return seq, hash
	}
	// A record of another transaction, then the receipt's own, then a
	// busta-trasporto of it.
	otherSeq, otherHash := appendRec(logstore.EventAccettazione, "20261123095959.y@pec.example.it")
	ownSeq, ownHash := appendRec(logstore.EventAccettazione, id)
	bustaSeq, bustaHash := appendRec(logstore.EventBustaTrasporto, id)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	ca := testpki.CAFile(t)
	receipt := func(seq uint64, hash string) string {
		return ourMessageWith(t, func(m *pec.Message) {
			if err := m.SetLogPosition(seq, hash); err != nil {
				t.Fatal(err)
			}
		})
	}
	for _, tc := range []struct {
		name, file, want string
		code             int
	}{
		{"own record", receipt(ownSeq, ownHash), fmt.Sprintf("log:          record seq %d (accettazione of %s) is in the log, its hash as the receipt says\n", ownSeq, id), 0},
		{"another transaction", receipt(otherSeq, otherHash), fmt.Sprintf("log:          MISMATCH: record seq %d is a accettazione of 20261123095959.y@pec.example.it, the receipt a accettazione of %s", otherSeq, id), 1},
		{"another type", receipt(bustaSeq, bustaHash), fmt.Sprintf("log:          MISMATCH: record seq %d is a busta-trasporto of %s", bustaSeq, id), 1},
		{"beyond the end", receipt(bustaSeq+50, bustaHash), fmt.Sprintf("log:          MISSING: the receipt names record seq %d (hash %s); the log has no record seq %d: it ends at seq ", bustaSeq+50, bustaHash, bustaSeq+50), 1},
		{"no position", ourMessage(t, false), "log:          the receipt carries no log position (no X-Pecgw-Log-Position in its signed part): made by an older pecgw, or not by pecgw\n", 1},
		{"position in the outer header only", ourMessageWith(t, func(m *pec.Message) {
			m.Header = append(m.Header, fmt.Sprintf("X-Pecgw-Log-Position: seq=%d; record=%s\r\n", ownSeq, ownHash)...)
		}), "log:          the receipt carries no log position", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCmd(t, "verify", tc.file, "--ca", ca, "--log", dir)
			if code != tc.code || !strings.Contains(out, tc.want) || !strings.Contains(out, "signature:    signature valid") {
				t.Errorf("exit %d, want %d and …%s…\n%s%s", code, tc.code, tc.want, out, errOut)
			}
		})
	}
	// Without --log nothing is said of the log: a receipt without a
	// position is as valid as it was.
	if code, out, _ := runCmd(t, "verify", ourMessage(t, false), "--ca", ca); code != 0 || strings.Contains(out, "log:") {
		t.Errorf("without --log: exit %d\n%s", code, out)
	}
}
