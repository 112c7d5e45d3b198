package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/pecgw/pecgw/logstore"
)

// TestTamperWithTheLog is the attack of someone with write access to the
// log folder and without the signing key (an insider, a compromised
// backup, a restore from an old snapshot), against a log written by the
// binary (max_segment_mb = 1, checkpoint_every = 100): every attack makes
// pecgw log verify exit non-zero, naming the records lost or altered;
// those that leave a valid shorter log (cut at a checkpoint, the newest
// segments deleted, an old copy restored) only its witness can see, and
// it does; pecgw serve refuses to start on a log behind its witness
// (docs/logformat.md, "Checkpoints", "Witnesses").
func TestTamperWithTheLog(t *testing.T) {
	if testing.Short() {
		t.Skip("tamper test: writes a log of several segments through the binary")
	}
	const user, pwd = "mario@pec.example.it", "correct horse"
	dir, cfg, caFile, sub, _ := setUpBinary(t, "pec.example.it", "Example PEC S.p.A.", user, pwd)
	setConfig(t, cfg, "[limits]", map[string]string{"min_auth_time": `"5ms"`})
	setConfig(t, cfg, "[log]", map[string]string{"max_segment_mb": "1", "checkpoint_every": "100", "name": `"mx1"`})
	bin := pecgwBinary(t)
	srv := &crashServer{bin: bin, cfg: cfg, addrs: []string{sub}, out: &lockedBuffer{}}
	t.Cleanup(srv.kill)
	submit := func(from, n int) {
		t.Helper()
		cl, err := smtp.DialStartTLS(sub, clientTLS(t, caFile))
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		if err := cl.Auth(sasl.NewPlainClient("", user, pwd)); err != nil {
			t.Fatal(err)
		}
		for i := from; i < from+n; i++ {
			msg := fmt.Sprintf("Date: Wed, 02 Dec 2026 10:00:00 +0100\r\nFrom: %s\r\nTo: anna@pec.altro.it\r\nSubject: fattura %d %s\r\nMessage-ID: <t%d@client>\r\n\r\nciao\r\n",
				user, i, strings.Repeat("x", 700), i)
			if _, err := sendOne(cl, user, []string{"anna@pec.altro.it"}, msg); err != nil {
				t.Fatalf("message %d: %v", i, err)
			}
		}
	}
	if err := srv.start(); err != nil {
		t.Fatal(err)
	}
	submit(0, 200)
	// An old copy of the log, as a snapshot or a backup would keep it
	// (the daemon stopped, so it is a clean one).
	if err := srv.term(); err != nil {
		t.Fatal(err)
	}
	logDir := filepath.Join(dir, "log")
	snapshot := copyDir(t, logDir)
	if err := srv.start(); err != nil {
		t.Fatal(err)
	}
	submit(200, 300)
	if err := srv.term(); err != nil {
		t.Fatalf("stop: %v\n%s", err, srv.out.String())
	}
	segs, err := logstore.ListSegments(logDir)
	if err != nil || len(segs) < 3 {
		t.Fatalf("fixture: %d segments (%v)", len(segs), err)
	}
	witness := filepath.Join(dir, "witness", "mx1.head")
	if code, out, errOut := runBin(t, "", "log", "verify", "--dir", logDir, "--ca", caFile, "--witness", witness); code != 0 {
		t.Fatalf("the untouched log: exit %d\n%s%s", code, out, errOut)
	}
	active := segs[len(segs)-1]
	lines := segmentLines(t, filepath.Join(logDir, active.Name))
	last := lines[len(lines)-1]
	if last.rec.Type != logstore.EventCheckpoint || len(lines) < 12 {
		t.Fatalf("fixture: the active segment has %d records and ends with %s", len(lines), last.line)
	}
	// A checkpoint with some records after it (where the background
	// checkpoints fall depends on timing).
	ck := -1
	for i := len(lines) - 5; i >= 0; i-- {
		if lines[i].rec.Type == logstore.EventCheckpoint || lines[i].rec.Type == logstore.EventSeal {
			ck = i
			break
		}
	}
	if ck < 0 {
		t.Fatalf("fixture: no checkpoint well before the end of the active segment (%d of %d)", ck, len(lines))
	}
	// recompute re-chains records from one whose prev is given, as anyone
	// can: hashes need no key.
	recompute := func(recs []*logstore.Record, prev string) []byte {
		var out []byte
		for _, r := range recs {
			r.Prev = prev
			b, err := logstore.Encode(r)
			if err != nil {
				t.Fatal(err)
			}
			out, prev = append(out, b...), logstore.Hash(b)
		}
		return out
	}
	copies := func(from int) []*logstore.Record {
		var out []*logstore.Record
		for _, l := range lines[from:] {
			c := *l.rec
			out = append(out, &c)
		}
		return out
	}
	cut := func(i int) func(b []byte) []byte { return func(b []byte) []byte { return b[:lines[i].off] } }
	plainRecord := len(lines) - 3
	for lines[plainRecord].rec.Type == logstore.EventCheckpoint {
		plainRecord--
	}
	// A cut that does not end at a checkpoint: about 5 records.
	five := len(lines) - 5
	for lines[five-1].rec.Type == logstore.EventCheckpoint {
		five--
	}
	forged := func() []byte {
		r := *lines[plainRecord].rec
		r.Seq, r.Prev, r.PECID = last.rec.Seq+1, logstore.Hash(last.line), "20261202100000.forged@pec.example.it"
		b, err := logstore.Encode(&r)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	type attack struct {
		name    string
		tamper  func(d string)
		plain   string // what verify without witness says; "" if it cannot see it
		witness string // what the witness shows
	}
	edit := func(fn func(b []byte) []byte) func(d string) {
		return func(d string) { editFile(t, filepath.Join(d, active.Name), fn) }
	}
	lastSeq := last.rec.Seq
	attacks := []attack{
		{"5 records cut from the active segment", edit(cut(five)), "are not covered by a signed checkpoint",
			fmt.Sprintf("records %d..%d are missing", lines[five-1].rec.Seq+1, lastSeq)},
		{"all but one record of the active segment cut", edit(cut(1)), "are not covered by a signed checkpoint",
			fmt.Sprintf("records %d..%d are missing", lines[0].rec.Seq+1, lastSeq)},
		{"cut right after a checkpoint", edit(cut(ck + 1)), "",
			fmt.Sprintf("records %d..%d are missing", lines[ck].rec.Seq+1, lastSeq)},
		{"active segment deleted", func(d string) { os.Remove(filepath.Join(d, active.Name)) }, "",
			fmt.Sprintf("records %d..%d are missing", active.First, lastSeq)},
		{"the last two segments deleted", func(d string) {
			for _, s := range segs[len(segs)-2:] {
				os.Remove(filepath.Join(d, s.Name))
				os.Remove(filepath.Join(d, s.Name+".idx"))
			}
		}, "", fmt.Sprintf("records %d..%d are missing", segs[len(segs)-2].First, lastSeq)},
		{"restored from an older copy", func(d string) {
			os.RemoveAll(d)
			os.Rename(copyDir(t, snapshot), d)
		}, "", "are missing"},
		{"the last record changed", edit(func(b []byte) []byte {
			return bytes.Replace(b, last.line, bytes.Replace(last.line, []byte(`"upto":`), []byte(`"upto":1`), 1), 1)
		}), fmt.Sprintf("seq %d", lastSeq), ""},
		{"a record after a checkpoint changed, the chain recomputed", edit(func(b []byte) []byte {
			recs := copies(ck + 1)
			recs[1].Subject = "changed"
			return append(b[:lines[ck+1].off], recompute(recs, logstore.Hash(lines[ck].line))...)
		}), "head is not the hash of the record it certifies", ""},
		{"a record after a checkpoint deleted, renumbered, the chain recomputed", edit(func(b []byte) []byte {
			recs := copies(ck + 1)
			recs = append(recs[:1], recs[2:]...)
			for i, r := range recs {
				r.Seq = lines[ck].rec.Seq + 1 + uint64(i)
			}
			return append(b[:lines[ck+1].off], recompute(recs, logstore.Hash(lines[ck].line))...)
		}), "checkpoint: ", ""}, // its upto or its head no longer fits
		{"a forged record appended", edit(func(b []byte) []byte { return append(b, forged()...) }),
			fmt.Sprintf("records %d..%d are not covered by a signed checkpoint", lastSeq, lastSeq+1), ""},
	}
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			d := copyDir(t, logDir)
			a.tamper(d)
			code, out, errOut := runBin(t, "", "log", "verify", "--dir", d, "--ca", caFile)
			if a.plain != "" && (code == 0 || !strings.Contains(out, a.plain)) {
				t.Errorf("log verify: exit %d, want non-zero and …%s…\n%s%s", code, a.plain, out, errOut)
			}
			if a.plain == "" && code != 0 && !strings.Contains(out, "are not covered by a signed checkpoint") {
				t.Errorf("log verify without a witness: exit %d\n%s%s", code, out, errOut)
			}
			code, out, errOut = runBin(t, "", "log", "verify", "--dir", d, "--ca", caFile, "--witness", witness)
			want := a.witness
			if want == "" {
				want = a.plain
			}
			if code == 0 || !strings.Contains(out, want) {
				t.Errorf("log verify --witness: exit %d, want non-zero and …%s…\n%s%s", code, want, out, errOut)
			}
		})
	}

	// pecgw serve on a log behind its witness: refused, naming both heads
	// and the way on.
	os.Chmod(filepath.Join(logDir, active.Name), 0o644)
	if err := os.Remove(filepath.Join(logDir, active.Name)); err != nil {
		t.Fatal(err)
	}
	seal := segmentLines(t, filepath.Join(logDir, segs[len(segs)-2].Name))
	code, out, errOut := runBin(t, "", "serve", "--config", cfg)
	for _, want := range []string{
		fmt.Sprintf("the log ends at seq %d (hash %s)", active.First-1, logstore.Hash(seal[len(seal)-1].line)),
		fmt.Sprintf("holds the signed checkpoint seq %d (hash %s", lastSeq, logstore.Hash(last.line)),
		"pecgw log accept-loss",
	} {
		if code == 0 || !strings.Contains(out+errOut, want) {
			t.Errorf("serve on a log behind its witness: exit %d, want …%s…\n%s%s", code, want, out, errOut)
		}
	}
	// The operator finds the segment lost for good: accept-loss records it
	// and the daemon starts again.
	code, out, errOut = runBin(t, "", "log", "accept-loss", "--config", cfg, "--reason", "disk of mx1 replaced 2026-12-02, no backup of the active segment")
	if code != 0 || !strings.Contains(out, fmt.Sprintf("records %d..%d are missing", active.First, lastSeq)) {
		t.Fatalf("accept-loss: exit %d\n%s%s", code, out, errOut)
	}
	if err := srv.start(); err != nil {
		t.Fatalf("serve after accept-loss: %v\n%s", err, srv.out.String())
	}
	submit(500, 1)
	if err := srv.term(); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := runBin(t, "", "log", "verify", "--config", cfg, "--ca", caFile); code != 0 || !strings.Contains(out, "the log holds it") {
		t.Errorf("verify after accept-loss: exit %d\n%s%s", code, out, errOut)
	}
	if _, out, _ := runBin(t, "", "log", "tail", "--config", cfg, "--json", "-n", "20"); !strings.Contains(out, "loss accepted by the operator: records "+fmt.Sprint(active.First)) {
		t.Errorf("the loss is not in the log:\n%s", out)
	}
}

// diskRecord is one record of a segment file, with its line and offset.
type diskRecord struct {
	off  int64
	line []byte
	rec  *logstore.Record
}

func segmentLines(t *testing.T, path string) []diskRecord {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []diskRecord
	err = logstore.ReadLines(bytes.NewReader(b), func(off int64, line []byte, _ bool) error {
		r, err := logstore.Decode(line)
		if err != nil {
			return fmt.Errorf("%s offset %d: %w", path, off, err)
		}
		out = append(out, diskRecord{off, append([]byte(nil), line...), r})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// copyDir copies the files of a folder (one level) to a new folder,
// modes included.
func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), fmt.Sprint(time.Now().UnixNano()))
	if err := os.Mkdir(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		info, _ := e.Info()
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, info.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// editFile rewrites a file as an attacker with write access would: made
// writable, rewritten, its mode put back.
func editFile(t *testing.T, path string, fn func(b []byte) []byte) {
	t.Helper()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, 0o644)
	if err := os.WriteFile(path, fn(b), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, info.Mode().Perm())
}
