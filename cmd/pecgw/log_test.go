package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pecgw/pecgw/internal/testpki"
	"github.com/pecgw/pecgw/logstore"
	"github.com/pecgw/pecgw/pec"
)

// writtenLog writes a log with the real writer: n transactions of two
// records each (accettazione, handed-off) from clock on, one a minute,
// in small segments so that it has several sealed ones. Transaction i has
// the PEC identifier txID(i), sender sender(i) and two recipients.
func writtenLog(t *testing.T, clock time.Time, n int) string {
	t.Helper()
	dir := t.TempDir()
	var mu sync.Mutex
	now := clock
	l, err := logstore.Open(logstore.Options{Dir: dir, Signer: testpki.Signer(t, "p256"), Provider: testpki.ProviderName,
		MaxSegmentSize: 4096, Now: func() time.Time { mu.Lock(); defer mu.Unlock(); return now }})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		mu.Lock()
		now = clock.Add(time.Duration(i) * time.Minute)
		at := pec.At(now).Time().Format(time.RFC3339)
		mu.Unlock()
		id := txID(i)
		r := &logstore.Record{Time: at, Type: logstore.EventAccettazione, PECID: id, MsgID: fmt.Sprintf("<m%d@client>", i),
			Sender: sender(i), Recipients: []logstore.Recipient{{Addr: "Dest@pec.altro.it", Tipo: "certificato"}, {Addr: fmt.Sprintf("x%d@example.com", i), Tipo: "esterno"}},
			Subject: fmt.Sprintf("Fattura, \"n. %d\"\r\nBcc: x", i), Generated: &logstore.Generated{Envelope: id, Receipt: "ric." + id},
			Provider: testpki.ProviderName, User: sender(i), ClientIP: "192.0.2.1", TLS: "TLS1.3", Size: 1234}
		if _, _, err := l.Append(context.Background(), r); err != nil {
			t.Fatal(err)
		}
		if _, _, err := l.Append(context.Background(), &logstore.Record{Time: at, Type: logstore.EventHandedOff, PECID: id,
			State: logstore.TxReceiptOut, Cause: logstore.CauseReceiptDelivered}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

func txID(i int) string   { return fmt.Sprintf("20261123%06d.tx%d@pec.example.it", i, i) }
func sender(i int) string { return fmt.Sprintf("utente%d@pec.example.it", i%3) }

var logClock = time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC) // 10:00 in Italy

func sealedCount(t *testing.T, dir string) int {
	t.Helper()
	segs, err := logstore.ListSegments(dir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, s := range segs {
		if s.Sealed {
			n++
		}
	}
	return n
}

func TestLogQueryFormats(t *testing.T) {
	dir := writtenLog(t, logClock, 30)
	if n := sealedCount(t, dir); n < 3 {
		t.Fatalf("only %d sealed segments", n)
	}

	// text: one line per event, the subject quoted.
	code, out, errOut := runCmd(t, "log", "query", "--dir", dir, "--id", txID(7))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 lines:\n%s", out)
	}
	want := "2026-11-23T10:07:00+01:00 #"
	if !strings.HasPrefix(lines[0], want) || !strings.Contains(lines[0], " accettazione "+txID(7)+" utente1@pec.example.it → Dest@pec.altro.it (certificato), x7@example.com (esterno) subject=\"Fattura, \\\"n. 7\\\"\\r\\nBcc: x\" msgid=<m7@client> user=utente1@pec.example.it") ||
		!strings.Contains(lines[1], " handed-off "+txID(7)+" state=receipt-out cause=receipt-delivered") {
		t.Errorf("text:\n%s", out)
	}

	// json: the lines exactly as stored.
	code, out, _ = runCmd(t, "log", "query", "--dir", dir, "--mailbox", "DEST@pec.altro.it", "--format", "json")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	stored := storedLines(t, dir)
	var n int
	for _, line := range strings.SplitAfter(out, "\n") {
		if line == "" {
			continue
		}
		r, err := logstore.Decode([]byte(line))
		if err != nil {
			t.Fatalf("json line %q: %v", line, err)
		}
		if r.Type != logstore.EventAccettazione || !slices.Contains(stored, line) {
			t.Errorf("json line is not a stored accettazione: %s", line)
		}
		n++
	}
	if n != 30 {
		t.Errorf("json: %d records, want 30", n)
	}

	// csv: parses back, recipients joined with ";" (encoding/csv reads
	// the CRLF inside the quoted subject as LF).
	code, out, _ = runCmd(t, "log", "query", "--dir", dir, "--mailbox", "utente2@pec.example.it", "--format", "csv")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	rows, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if err != nil {
		t.Fatalf("csv: %v\n%s", err, out)
	}
	if len(rows) != 11 || !slices.Equal(rows[0], csvHeader) {
		t.Fatalf("csv: %d rows, header %v", len(rows), rows[0])
	}
	col := func(name string) int { return slices.Index(csvHeader, name) }
	r := rows[1]
	if r[col("pec_id")] != txID(2) || r[col("recipients")] != "Dest@pec.altro.it;x2@example.com" || r[col("recipient_types")] != "certificato;esterno" ||
		r[col("subject")] != "Fattura, \"n. 2\"\nBcc: x" || r[col("size")] != "1234" || r[col("type")] != "accettazione" {
		t.Errorf("csv row: %q", r)
	}
}

func storedLines(t *testing.T, dir string) []string {
	t.Helper()
	segs, _ := logstore.ListSegments(dir)
	var all []string
	for _, s := range segs {
		b, err := os.ReadFile(filepath.Join(dir, s.Name))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.SplitAfter(string(b), "\n") {
			if line != "" {
				all = append(all, line)
			}
		}
	}
	return all
}

func TestLogQueryCriteria(t *testing.T) {
	dir := writtenLog(t, logClock, 30)
	count := func(args ...string) int {
		t.Helper()
		code, out, errOut := runCmd(t, append([]string{"log", "query", "--dir", dir, "--format", "json"}, args...)...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errOut)
		}
		return strings.Count(out, "\n")
	}
	for _, tc := range []struct {
		args []string
		want int
	}{
		{[]string{"--id", "<" + txID(3) + ">"}, 2},
		{[]string{"--id", "ric." + txID(3)}, 1},
		{[]string{"--msgid", "m4@client"}, 1},
		{[]string{"--mailbox", "utente0@pec.example.it", "--msgid", "<m3@client>"}, 1},
		{[]string{"--mailbox", "utente0@pec.example.it", "--msgid", "<m4@client>"}, 0},
		{[]string{"--mailbox", "x5@EXAMPLE.com"}, 1},
		// Transactions 0-29 at 10:00-10:29 Italian time.
		{[]string{"--mailbox", "dest@pec.altro.it", "--since", "2026-11-23T10:10:00+01:00", "--until", "2026-11-23T09:20:00Z"}, 10},
		{[]string{"--mailbox", "dest@pec.altro.it", "--until", "2026-11-23"}, 30},
		{[]string{"--mailbox", "dest@pec.altro.it", "--until", "2026-11-22"}, 0},
		{[]string{"--mailbox", "dest@pec.altro.it", "--since", "2026-11-24"}, 0},
		{[]string{"--since", "2026-11-23T10:29:00+01:00", "--id", txID(29)}, 2},
		{[]string{"--since", "2026-11-23T10:29:00+01:00", "--id", txID(28)}, 0},
	} {
		if got := count(tc.args...); got != tc.want {
			t.Errorf("%v: %d records, want %d", tc.args, got, tc.want)
		}
	}
}

func TestLogTail(t *testing.T) {
	dir := writtenLog(t, logClock, 30)
	code, out, _ := runCmd(t, "log", "tail", "--dir", dir, "-n", "3")
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	// The last record is the checkpoint of the Close (a background one
	// may come just before it).
	if code != 0 || len(lines) != 3 || !strings.Contains(strings.Join(lines[:2], "\n"), " handed-off "+txID(29)) || !strings.Contains(lines[2], " checkpoint upto=") {
		t.Errorf("tail -n 3: exit %d\n%s", code, out)
	}
	code, out, _ = runCmd(t, "log", "tail", "--json", "--dir", dir)
	stored := storedLines(t, dir)
	if code != 0 || out != strings.Join(stored[len(stored)-10:], "") {
		t.Errorf("tail --json: exit %d\n%s", code, out)
	}

	// -f: new records, until canceled.
	ctx, cancel := context.WithCancel(context.Background())
	var buf syncBuffer
	done := make(chan error)
	go func() { done <- logTail(ctx, []string{"-f", "-n", "1", "--dir", dir}, &buf) }()
	l, err := logstore.Open(logstore.Options{Dir: dir, Signer: testpki.Signer(t, "p256"), Now: func() time.Time { return logClock.Add(time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := l.Append(context.Background(), &logstore.Record{Time: "2026-11-23T11:00:00+01:00", Type: logstore.EventAborted, PECID: txID(29), Detail: "test"}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(buf.String(), " aborted "+txID(29)) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("tail -f: %v", err)
	}
	if s := buf.String(); !strings.Contains(s, " aborted "+txID(29)+" detail=\"test\"") {
		t.Errorf("tail -f:\n%s", s)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestLogVerify(t *testing.T) {
	dir := writtenLog(t, logClock, 30)
	code, out, errOut := runCmd(t, "log", "verify", "--dir", dir, "--ca", testpki.CAFile(t))
	if code != 0 || !strings.Contains(out, "result:       log verified") || !strings.Contains(out, "records:      ") || !strings.Contains(out, "chain:        valid") {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}

	// One octet changed in a sealed segment: exit 1, the damage named.
	segs, _ := logstore.ListSegments(dir)
	path := filepath.Join(dir, segs[1].Name)
	b, _ := os.ReadFile(path)
	i := bytes.Index(b, []byte("Fattura"))
	b[i] = 'f'
	os.Chmod(path, 0o644)
	if err := os.WriteFile(path, b, 0o444); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, 0o444)
	code, out, _ = runCmd(t, "log", "verify", "--dir", dir)
	if code != 1 || !strings.Contains(out, "damage:       segment "+segs[1].Name+" offset ") || !strings.Contains(out, "result:       NOT VERIFIED") {
		t.Errorf("tampered: exit %d\n%s", code, out)
	}
}

func TestLogPurge(t *testing.T) {
	dir := writtenLog(t, time.Date(2022, 1, 10, 9, 0, 0, 0, time.UTC), 30)
	before := sealedCount(t, dir)
	keyFile, certFile := filepath.Join(t.TempDir(), "key.pem"), filepath.Join(t.TempDir(), "cert.pem")
	os.WriteFile(keyFile, testpki.KeyPEM("p256"), 0o600)
	os.WriteFile(certFile, testpki.CertPEM("p256"), 0o644)

	code, out, errOut := runCmd(t, "log", "purge", "--dir", dir, "--key", keyFile, "--cert", certFile, "--provider", testpki.ProviderName)
	if code != 0 || strings.Count(out, "removed ") != before {
		t.Fatalf("purge: exit %d (%d sealed segments)\n%s%s", code, before, out, errOut)
	}
	code, out, _ = runCmd(t, "log", "verify", "--dir", dir)
	if code != 0 || !strings.Contains(out, "purged:") {
		t.Errorf("verify after purge: exit %d\n%s", code, out)
	}
	code, out, _ = runCmd(t, "log", "purge", "--dir", dir, "--key", keyFile, "--cert", certFile)
	if code != 0 || !strings.Contains(out, "nothing to remove") {
		t.Errorf("second purge: exit %d\n%s", code, out)
	}
	code, _, errOut = runCmd(t, "log", "purge", "--dir", dir, "--key", keyFile+".missing", "--cert", certFile)
	if code != 1 || !strings.Contains(errOut, keyFile+".missing") {
		t.Errorf("missing key: exit %d %s", code, errOut)
	}
}

func TestLogReindex(t *testing.T) {
	dir := writtenLog(t, logClock, 30)
	segs, _ := logstore.ListSegments(dir)
	if err := os.Remove(filepath.Join(dir, segs[0].Name+".idx")); err != nil {
		t.Fatal(err)
	}
	code, out, _ := runCmd(t, "log", "reindex", "--dir", dir)
	if code != 0 || out != "indexed "+segs[0].Name+".idx\n" {
		t.Errorf("exit %d\n%s", code, out)
	}
	code, out, _ = runCmd(t, "log", "reindex", "--dir", dir)
	if code != 0 || !strings.Contains(out, "every sealed segment has its index") {
		t.Errorf("exit %d\n%s", code, out)
	}
}

func TestLogUsage(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"log"}, "want a subcommand"},
		{[]string{"log", "cat"}, `unknown subcommand "cat"`},
		{[]string{"log", "query", "--dir", dir}, "give at least one of"},
		{[]string{"log", "query", "--dir", dir, "--id", "x", "--format", "xml"}, `--format "xml"`},
		{[]string{"log", "query", "--dir", dir, "--since", "yesterday"}, "--since"},
		{[]string{"log", "query", "--dir", dir, "--since", "2026-11-23", "--until", "2026-11-22"}, "is not before"},
		{[]string{"log", "query", "--dir", dir, "--bogus"}, "bogus"},
		{[]string{"log", "tail", "--dir", dir, "extra"}, `unexpected argument "extra"`},
		{[]string{"log", "tail", "--dir", dir, "-n", "-1"}, "-n -1"},
		{[]string{"log", "purge", "--dir", dir}, "--key and --cert are required"},
		{[]string{"log", "purge", "--dir", dir, "--key", "k", "--cert", "c", "--retention-months", "12"}, "--retention-months 12"},
	} {
		code, _, errOut := runCmd(t, tc.args...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, %q; want 2 and %q", tc.args, code, errOut, tc.want)
		}
	}
	code, out, _ := runCmd(t, "help")
	if code != 0 || !strings.Contains(out, "pecgw log ") {
		t.Errorf("help: %s", out)
	}
}

// TestLogMissingFolder: every subcommand fails with exit 1 naming the
// folder.
func TestLogMissingFolder(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-log")
	keyFile, certFile := filepath.Join(t.TempDir(), "key.pem"), filepath.Join(t.TempDir(), "cert.pem")
	os.WriteFile(keyFile, testpki.KeyPEM("p256"), 0o600)
	os.WriteFile(certFile, testpki.CertPEM("p256"), 0o644)
	for _, args := range [][]string{
		{"log", "tail", "--dir", missing},
		{"log", "tail", "-f", "--dir", missing},
		{"log", "query", "--id", "x", "--dir", missing},
		{"log", "verify", "--dir", missing},
		{"log", "reindex", "--dir", missing},
		{"log", "purge", "--dir", missing, "--key", keyFile, "--cert", certFile},
	} {
		code, _, errOut := runCmd(t, args...)
		if code != 1 || !strings.Contains(errOut, missing) {
			t.Errorf("%v: exit %d, %q", args, code, errOut)
		}
	}
}

// TestLogThroughConfig: without --dir the commands find the log through
// the daemon's configuration, and purge takes its key from there too.
func TestLogThroughConfig(t *testing.T) {
	cfg := newInitialized(t)
	code, out, errOut := runCmd(t, "log", "verify", "--config", cfg)
	if code != 0 || !strings.Contains(out, "log verified") {
		t.Errorf("verify --config: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = runCmd(t, "log", "purge", "--config", cfg)
	if code != 0 || !strings.Contains(out, "nothing to remove: no sealed segment is older than 30 months") {
		t.Errorf("purge --config: exit %d\n%s%s", code, out, errOut)
	}
	code, _, errOut = runCmd(t, "log", "tail", "--config", "missing.toml")
	if code != 1 || !strings.Contains(errOut, "missing.toml") || !strings.Contains(errOut, "--dir") {
		t.Errorf("missing config: exit %d, %q", code, errOut)
	}
}
