package logstore

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pecgw/pecgw/internal/testpki"
	"github.com/pecgw/pecgw/internal/testtool"
	"github.com/pecgw/pecgw/pec"
)

// testClock is an injectable Options.Now.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock(t time.Time) *testClock { return &testClock{t: t} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// romeTime is a wall-clock time in Italian legal time.
func romeTime(y int, m time.Month, d, h, min, s int) time.Time {
	return time.Date(y, m, d, h, min, s, 0, pec.Rome())
}

// testOptions returns Options for a log in dir (a new temporary folder
// when empty) with the P-256 test key and a fixed clock.
func testOptions(t testing.TB, dir string) (Options, *testClock) {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	clock := newClock(romeTime(2026, 11, 23, 10, 0, 0))
	return Options{
		Dir:      dir,
		Signer:   testpki.Signer(t, "p256"),
		Provider: testpki.ProviderName,
		Now:      clock.Now,
		// Background checkpoints come at most once a second: a test that
		// appends in less has its checkpoints where CheckpointEvery and
		// Close put them (TestCheckpointInterval tests the background).
		CheckpointInterval: MaxCheckpointInterval,
	}, clock
}

func openLog(t testing.TB, o Options) *Log {
	t.Helper()
	l, err := Open(o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return l
}

func closeLog(t testing.TB, l *Log) {
	t.Helper()
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// sampleAcceptance returns a realistic acceptance record number i.
func sampleAcceptance(i int, at time.Time) *Record {
	id := fmt.Sprintf("%s.%06d@pec.example.it", pec.At(at).Stamp(), i)
	return &Record{
		Time: pec.At(at).Time().Format(time.RFC3339), Type: EventAccettazione,
		PECID: id, MsgID: fmt.Sprintf("<m%d@client.example>", i), Sender: "mario.rossi@pec.example.it",
		Recipients: []Recipient{{Addr: "ufficio@pec.altro.it", Tipo: "certificato"}, {Addr: "info@example.com", Tipo: "esterno"}},
		Subject:    fmt.Sprintf("Fattura n. %d <&> \"saldo\"", i),
		Generated:  &Generated{Envelope: id, Receipt: strings.Replace(id, "@", ".accettazione@", 1)},
		Provider:   testpki.ProviderName, User: "mario.rossi@pec.example.it", ClientIP: "192.0.2.7", TLS: "TLS1.3",
		Size: 4321, SHA256: strings.Repeat("5a", 32),
	}
}

type appended struct {
	seq  uint64
	hash string
}

func appendN(t testing.TB, l *Log, from, n int, at time.Time) []appended {
	t.Helper()
	var out []appended
	for i := from; i < from+n; i++ {
		seq, hash, err := l.Append(context.Background(), sampleAcceptance(i, at))
		if err != nil {
			t.Fatalf("Append %d: %v", i, err)
		}
		out = append(out, appended{seq, hash})
	}
	return out
}

// diskLine is one line of the log as found on disk.
type diskLine struct {
	seg  string
	off  int64
	line []byte
	rec  *Record
}

// readLog reads every record of the log in dir; it fails the test on a
// line that does not decode.
func readLog(t testing.TB, dir string) []diskLine {
	t.Helper()
	segs, err := ListSegments(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []diskLine
	for _, s := range segs {
		b, err := os.ReadFile(filepath.Join(dir, s.Name))
		if err != nil {
			t.Fatal(err)
		}
		err = ReadLines(bytes.NewReader(b), func(off int64, line []byte, complete bool) error {
			r, err := Decode(line)
			if err != nil || !complete {
				return fmt.Errorf("%s offset %d: %v (complete %v)", s.Name, off, err, complete)
			}
			out = append(out, diskLine{s.Name, off, append([]byte(nil), line...), r})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func mustVerify(t testing.TB, dir string) *Report {
	t.Helper()
	rep, err := Verify(dir, testpki.Roots())
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if rep.Problem != nil {
		t.Fatalf("Verify: %v", rep.Problem)
	}
	return rep
}

func TestAppendReopen(t *testing.T) {
	o, _ := testOptions(t, "")
	l := openLog(t, o)
	at := romeTime(2026, 11, 23, 9, 59, 58)
	r := sampleAcceptance(1, at)
	seq, hash, err := l.Append(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	if seq != 1 || r.Seq != 1 || r.Prev != GenesisPrev {
		t.Errorf("first record: seq %d, r.Seq %d, r.Prev %s", seq, r.Seq, r.Prev)
	}
	first := append([]appended{{seq, hash}}, appendN(t, l, 2, 9, at)...)
	closeLog(t, l)
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, _, err := l.Append(context.Background(), sampleAcceptance(99, at)); !errors.Is(err, ErrClosed) {
		t.Errorf("Append after Close: %v, want ErrClosed", err)
	}

	l = openLog(t, o)
	second := appendN(t, l, 11, 5, at)
	closeLog(t, l)
	all := append(first, second...)

	// Each Close ends the log with a checkpoint of the record before it.
	lines := readLog(t, o.Dir)
	if len(lines) != 17 || lines[10].rec.Type != EventCheckpoint || lines[10].rec.Upto != 10 || lines[16].rec.Type != EventCheckpoint || lines[16].rec.Upto != 16 {
		t.Fatalf("%d records on disk, want 17, checkpoints at 11 and 17", len(lines))
	}
	prev := GenesisPrev
	var records []diskLine
	for i, dl := range lines {
		if dl.rec.Seq != uint64(i+1) || dl.rec.Prev != prev {
			t.Errorf("record %d: seq %d prev %s", i, dl.rec.Seq, dl.rec.Prev)
		}
		prev = Hash(dl.line)
		if dl.rec.Type != EventCheckpoint {
			records = append(records, dl)
		}
	}
	for i, dl := range records {
		if all[i].seq != dl.rec.Seq || all[i].hash != Hash(dl.line) {
			t.Errorf("record %d: seq %d hash %s; Append said %d %s", i, dl.rec.Seq, Hash(dl.line), all[i].seq, all[i].hash)
		}
		// What is on disk is what was appended, byte for byte as Encode does it.
		want := sampleAcceptance(i+1, at)
		want.Seq, want.Prev, want.V = dl.rec.Seq, dl.rec.Prev, FormatVersion
		enc, _ := Encode(want)
		if !bytes.Equal(enc, dl.line) || !reflect.DeepEqual(want, dl.rec) {
			t.Errorf("record %d on disk:\n%s\nwant\n%s", i+1, dl.line, enc)
		}
	}
	segs, _ := ListSegments(o.Dir)
	if len(segs) != 1 || segs[0].Sealed || segs[0].Name != "00000000000000000001-20261123.log" {
		t.Errorf("segments %+v, want one open segment 00000000000000000001-20261123.log", segs)
	}
	if info, _ := os.Stat(filepath.Join(o.Dir, segs[0].Name)); info.Mode().Perm() != 0o644 {
		t.Errorf("active segment mode %v, want 0644", info.Mode().Perm())
	}
	rep := mustVerify(t, o.Dir)
	if rep.Records != 17 || rep.FirstSeq != 1 || rep.LastSeq != 17 || rep.Segments != 1 || rep.Checkpoints != 2 {
		t.Errorf("report %+v", rep)
	}
}

func TestAppendRefuses(t *testing.T) {
	o, _ := testOptions(t, "")
	l := openLog(t, o)
	defer closeLog(t, l)
	at := romeTime(2026, 11, 23, 10, 0, 0)
	for _, typ := range []Event{EventCheckpoint, EventSeal, EventTornTail, EventPurge, "consegna"} {
		r := sampleAcceptance(1, at)
		r.Type = typ
		if _, _, err := l.Append(context.Background(), r); err == nil || !strings.Contains(err.Error(), string(typ)) {
			t.Errorf("Append of a %s record: %v", typ, err)
		}
	}
	for _, tm := range []string{"", "2026-11-23 10:00:00", "23/11/2026"} {
		r := sampleAcceptance(1, at)
		r.Time = tm
		if _, _, err := l.Append(context.Background(), r); err == nil || !strings.Contains(err.Error(), "RFC 3339") {
			t.Errorf("Append with time %q: %v", tm, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := l.Append(ctx, sampleAcceptance(1, at)); !errors.Is(err, context.Canceled) {
		t.Errorf("Append with a cancelled context: %v", err)
	}
	if seq, _, err := l.Append(context.Background(), sampleAcceptance(1, at)); err != nil || seq != 1 {
		t.Errorf("Append after the refusals: seq %d, %v; want seq 1", seq, err)
	}
}

func TestOptionsRefused(t *testing.T) {
	o, _ := testOptions(t, "")
	o.RetentionMonths = 29
	if _, err := Open(o); err == nil || !strings.Contains(err.Error(), "29") {
		t.Errorf("Open with 29 months retention: %v", err)
	}
	if _, err := Purge(o); err == nil || !strings.Contains(err.Error(), "29") {
		t.Errorf("Purge with 29 months retention: %v", err)
	}
	o, _ = testOptions(t, "")
	o.Signer = nil
	if _, err := Open(o); err == nil || !strings.Contains(err.Error(), "signer") {
		t.Errorf("Open without a signer: %v", err)
	}
	o, _ = testOptions(t, "")
	o.Dir = filepath.Join(o.Dir, "missing")
	if _, err := Open(o); err == nil {
		t.Error("Open of a missing folder succeeded")
	}
}

func TestOneWriterPerFolder(t *testing.T) {
	o, _ := testOptions(t, "")
	l := openLog(t, o)
	if _, err := Open(o); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second Open: %v", err)
	}
	closeLog(t, l)
	closeLog(t, openLog(t, o))
}

func TestConcurrentAppend(t *testing.T) {
	o, _ := testOptions(t, "")
	o.CheckpointEvery = 97
	l := openLog(t, o)
	const writers, each = 16, 100
	at := romeTime(2026, 11, 23, 10, 0, 0)
	results := make([][]appended, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				seq, hash, err := l.Append(context.Background(), sampleAcceptance(w*each+i, at))
				if err != nil {
					t.Error(err)
					return
				}
				results[w] = append(results[w], appended{seq, hash})
			}
		}()
	}
	wg.Wait()
	closeLog(t, l)
	lines := readLog(t, o.Dir)
	bySeq := map[uint64]string{}
	for _, dl := range lines {
		bySeq[dl.rec.Seq] = Hash(dl.line)
	}
	seen := map[uint64]bool{}
	for _, rs := range results {
		for _, a := range rs {
			if seen[a.seq] {
				t.Errorf("seq %d given twice", a.seq)
			}
			seen[a.seq] = true
			if bySeq[a.seq] != a.hash {
				t.Errorf("seq %d: Append said hash %s, disk has %s", a.seq, a.hash, bySeq[a.seq])
			}
		}
	}
	if len(seen) != writers*each {
		t.Errorf("%d seqs, want %d", len(seen), writers*each)
	}
	rep := mustVerify(t, o.Dir)
	if want := uint64(writers*each + rep.Checkpoints); rep.Records != want {
		t.Errorf("report: %d records, %d checkpoints; want %d records", rep.Records, rep.Checkpoints, want)
	}
	// No more than CheckpointEvery records (and the batch that crossed
	// it: one record per writer) wait for their checkpoint; Close signs
	// the last.
	run := 0
	for _, dl := range lines {
		if dl.rec.Type == EventCheckpoint {
			run = 0
			continue
		}
		if run++; run > o.CheckpointEvery+writers {
			t.Fatalf("%d records without a checkpoint at seq %d", run, dl.rec.Seq)
		}
	}
	if last := lines[len(lines)-1].rec; last.Type != EventCheckpoint || last.Upto != last.Seq-1 {
		t.Errorf("the log ends with %s", lines[len(lines)-1].line)
	}
}

// TestAppendAll: the records of one AppendAll are written together, in
// their order: between them in the log there is no record of another
// writer, only the log's own (a checkpoint, a seal); Append's seq and
// hash are those on disk; a context already ended writes nothing.
func TestAppendAll(t *testing.T) {
	o, _ := testOptions(t, "")
	o.CheckpointEvery = 13
	o.MaxSegmentSize = 64 << 10 // seals too
	l := openLog(t, o)
	const writers, each = 16, 50
	at := romeTime(2026, 11, 23, 10, 0, 0)
	results := make([][][2]appended, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				a, b := sampleAcceptance(w*each+i, at), sampleAcceptance(w*each+i, at)
				a.Type = EventBustaTrasporto
				seqs, hashes, err := l.AppendAll(context.Background(), a, b)
				if err != nil {
					t.Error(err)
					return
				}
				if a.Seq != seqs[0] || b.Seq != seqs[1] {
					t.Errorf("records got seq %d, %d; AppendAll said %v", a.Seq, b.Seq, seqs)
				}
				results[w] = append(results[w], [2]appended{{seqs[0], hashes[0]}, {seqs[1], hashes[1]}})
			}
		}()
	}
	wg.Wait()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := l.AppendAll(ctx, sampleAcceptance(0, at), sampleAcceptance(1, at)); !errors.Is(err, context.Canceled) {
		t.Errorf("AppendAll with its context ended: %v, want context.Canceled", err)
	}
	closeLog(t, l)
	lines := readLog(t, o.Dir)
	bySeq := map[uint64]diskLine{}
	for _, dl := range lines {
		bySeq[dl.rec.Seq] = dl
	}
	n := 0
	for _, rs := range results {
		for _, pair := range rs {
			for _, a := range pair {
				if got := Hash(bySeq[a.seq].line); got != a.hash {
					t.Errorf("seq %d: AppendAll said hash %s, disk has %s", a.seq, a.hash, got)
				}
			}
			if pair[1].seq <= pair[0].seq {
				t.Fatalf("seqs %d then %d", pair[0].seq, pair[1].seq)
			}
			for seq := pair[0].seq + 1; seq < pair[1].seq; seq++ {
				if typ := bySeq[seq].rec.Type; typ != EventCheckpoint && typ != EventSeal {
					t.Errorf("a %s record (seq %d) between the two of one AppendAll (%d, %d)", typ, seq, pair[0].seq, pair[1].seq)
				}
			}
			n += 2
		}
	}
	if n != 2*writers*each {
		t.Errorf("%d records appended, want %d", n, 2*writers*each)
	}
	rep := mustVerify(t, o.Dir)
	if want := uint64(n + rep.Checkpoints); rep.Records != want { // Checkpoints counts the seals
		t.Errorf("report: %d records (%d checkpoints, %d seals); want %d", rep.Records, rep.Checkpoints, rep.Seals, want)
	}
}

func TestRotationByDay(t *testing.T) {
	o, clock := testOptions(t, "")
	clock.Set(romeTime(2026, 3, 28, 23, 59, 58))
	l := openLog(t, o)
	appendN(t, l, 1, 3, clock.Now())
	// 29 March 2026, after midnight in Rome (still 28 March in UTC).
	clock.Set(romeTime(2026, 3, 29, 0, 0, 1))
	appendN(t, l, 4, 2, clock.Now())
	closeLog(t, l)
	// The next day: Open continues the segment, the first record seals it.
	clock.Set(romeTime(2026, 3, 30, 8, 0, 0))
	l = openLog(t, o)
	appendN(t, l, 6, 1, clock.Now())
	closeLog(t, l)

	segs, _ := ListSegments(o.Dir)
	// 1-3, seal 4 | 5-6, the checkpoint of Close 7, seal 8 | 9, checkpoint 10.
	names := []string{"00000000000000000001-20260328.log", "00000000000000000005-20260329.log", "00000000000000000009-20260330.log"}
	if len(segs) != 3 {
		t.Fatalf("segments %+v", segs)
	}
	for i, s := range segs {
		if s.Name != names[i] || s.Sealed != (i < 2) {
			t.Errorf("segment %d: %+v, want %s sealed %v", i, s, names[i], i < 2)
		}
	}
	checkSealed(t, o.Dir, segs[:2])
	rep := mustVerify(t, o.Dir)
	if rep.Records != 10 || rep.Seals != 2 || rep.Checkpoints != 4 || rep.Segments != 3 {
		t.Errorf("report %+v", rep)
	}
}

// checkSealed checks that each segment is read-only, ends with a seal and
// that the next segment's first record links to the seal.
func checkSealed(t *testing.T, dir string, segs []SegmentFile) {
	t.Helper()
	lines := readLog(t, dir)
	for _, s := range segs {
		info, err := os.Stat(filepath.Join(dir, s.Name))
		if err != nil {
			t.Fatal(err)
		}
		if info.Mode().Perm() != 0o444 {
			t.Errorf("%s: mode %v, want 0444", s.Name, info.Mode().Perm())
		}
		for i, dl := range lines {
			if dl.seg == s.Name && (i+1 == len(lines) || lines[i+1].seg != s.Name) {
				if dl.rec.Type != EventSeal || dl.rec.Upto != dl.rec.Seq-1 || dl.rec.Head != dl.rec.Prev || dl.rec.Sig == "" ||
					dl.rec.Signed != CheckpointText(EventSeal, dl.rec.Upto, dl.rec.Head, mustTime(t, dl.rec.Time)) {
					t.Errorf("%s ends with %s", s.Name, dl.line)
				}
				if i+1 < len(lines) && lines[i+1].rec.Prev != Hash(dl.line) {
					t.Errorf("the segment after %s does not link to its seal", s.Name)
				}
			}
		}
	}
}

func mustTime(t testing.TB, s string) time.Time {
	t.Helper()
	tm, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatal(err)
	}
	return tm
}

func TestRotationBySize(t *testing.T) {
	o, _ := testOptions(t, "")
	o.MaxSegmentSize = 4096
	l := openLog(t, o)
	appendN(t, l, 1, 40, romeTime(2026, 11, 23, 10, 0, 0))
	closeLog(t, l)
	segs, _ := ListSegments(o.Dir)
	if len(segs) < 4 {
		t.Fatalf("%d segments for 40 records of ~600 octets in 4096-octet segments", len(segs))
	}
	for _, s := range segs {
		lines := 0
		for _, dl := range readLog(t, o.Dir) {
			if dl.seg == s.Name && dl.rec.Type != EventSeal && dl.rec.Type != EventCheckpoint {
				lines += len(dl.line)
			}
		}
		if lines > 4096 {
			t.Errorf("%s: %d octets of records, more than MaxSegmentSize", s.Name, lines)
		}
	}
	checkSealed(t, o.Dir, segs[:len(segs)-1])
	if segs[len(segs)-1].Sealed {
		t.Error("the last segment is sealed")
	}
	mustVerify(t, o.Dir)
}

func TestCheckpointEvery(t *testing.T) {
	o, _ := testOptions(t, "")
	o.CheckpointEvery = 10
	l := openLog(t, o)
	appendN(t, l, 1, 35, romeTime(2026, 11, 23, 10, 0, 0))
	closeLog(t, l)
	var cps []uint64
	for _, dl := range readLog(t, o.Dir) {
		if dl.rec.Type == EventCheckpoint {
			cps = append(cps, dl.rec.Seq)
			if dl.rec.Upto != dl.rec.Seq-1 || dl.rec.Head != dl.rec.Prev || dl.rec.Provider != testpki.ProviderName || dl.rec.Time != "2026-11-23T10:00:00+01:00" {
				t.Errorf("checkpoint %s", dl.line)
			}
		}
	}
	// Every 10 records, and at Close.
	if !reflect.DeepEqual(cps, []uint64{11, 22, 33, 39}) {
		t.Errorf("checkpoints at %v, want [11 22 33 39]", cps)
	}
	if rep := mustVerify(t, o.Dir); rep.Checkpoints != 4 || !rep.ChainVerified {
		t.Errorf("report %+v", rep)
	}
}

func TestCheckpointInterval(t *testing.T) {
	o, _ := testOptions(t, "")
	o.Now = time.Now
	o.CheckpointInterval = 30 * time.Millisecond
	l := openLog(t, o)
	appendN(t, l, 1, 1, time.Now())
	deadline := time.Now().Add(5 * time.Second)
	for {
		lines := readLog(t, o.Dir)
		if len(lines) == 2 && lines[1].rec.Type == EventCheckpoint {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no checkpoint after the interval: %d records", len(lines))
		}
		time.Sleep(10 * time.Millisecond)
	}
	// No record since the checkpoint: no new checkpoint.
	time.Sleep(100 * time.Millisecond)
	closeLog(t, l)
	if n := len(readLog(t, o.Dir)); n != 2 {
		t.Errorf("%d records after an idle interval, want 2", n)
	}
}

// failingSigner fails while fail is set.
type failingSigner struct {
	CheckpointSigner
	mu   sync.Mutex
	fail bool
}

func (s *failingSigner) SignDetached(data []byte, at time.Time) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail {
		return nil, errors.New("HSM unreachable")
	}
	return s.CheckpointSigner.SignDetached(data, at)
}

func TestCheckpointSignerFails(t *testing.T) {
	o, clock := testOptions(t, "")
	fs := &failingSigner{CheckpointSigner: o.Signer, fail: true}
	o.Signer = fs
	o.CheckpointEvery = 5
	var warnings []string
	var mu sync.Mutex
	o.Warn = func(m string) { mu.Lock(); warnings = append(warnings, m); mu.Unlock() }
	l := openLog(t, o)
	appendN(t, l, 1, 7, clock.Now())
	clock.Set(clock.Now().AddDate(0, 0, 1)) // the seal fails too
	appendN(t, l, 8, 1, clock.Now())
	fs.mu.Lock()
	fs.fail = false
	fs.mu.Unlock()
	appendN(t, l, 9, 1, clock.Now())
	closeLog(t, l)
	mu.Lock()
	if len(warnings) < 2 || !strings.Contains(warnings[0], "HSM unreachable") {
		t.Errorf("warnings %q", warnings)
	}
	mu.Unlock()
	var types []Event
	for _, dl := range readLog(t, o.Dir) {
		types = append(types, dl.rec.Type)
	}
	// Records 1-8 in the first segment; at record 9 the signer is back:
	// the seal closes the first segment (day change), record 9 starts the
	// next, Close signs it.
	want := []Event{"accettazione", "accettazione", "accettazione", "accettazione", "accettazione", "accettazione", "accettazione", "accettazione", "seal", "accettazione", "checkpoint"}
	if !reflect.DeepEqual(types, want) {
		t.Errorf("records %v, want %v", types, want)
	}
	mustVerify(t, o.Dir)
}

func TestWriteFailureBreaksLog(t *testing.T) {
	o, clock := testOptions(t, "")
	l := openLog(t, o)
	appendN(t, l, 1, 2, clock.Now())
	// The writer is idle (Append returned): make its next write fail.
	l.f.Close()
	_, _, err := l.Append(context.Background(), sampleAcceptance(3, clock.Now()))
	if err == nil || !strings.Contains(err.Error(), "broken") {
		t.Fatalf("Append after a write failure: %v", err)
	}
	// Never again, even if the disk came back.
	if _, _, err := l.Append(context.Background(), sampleAcceptance(4, clock.Now())); err == nil || !strings.Contains(err.Error(), "broken") {
		t.Errorf("second Append: %v", err)
	}
	if err := l.Close(); err == nil {
		t.Error("Close of a broken log reported no error")
	}
	l = openLog(t, o)
	if seq, _, err := l.Append(context.Background(), sampleAcceptance(3, clock.Now())); err != nil || seq != 3 {
		t.Errorf("after reopening: seq %d, %v", seq, err)
	}
	closeLog(t, l)
	mustVerify(t, o.Dir)
}

// TestCheckpointOpenSSL checks a checkpoint as a third party would, with
// openssl and the CA certificate alone (docs/logformat.md).
func TestCheckpointOpenSSL(t *testing.T) {
	openssl := testtoolNeed(t, "openssl")
	for _, kind := range []string{"rsa", "p256"} {
		t.Run(kind, func(t *testing.T) {
			o, clock := testOptions(t, "")
			o.Signer = testpki.Signer(t, kind)
			o.CheckpointEvery = 3
			l := openLog(t, o)
			appendN(t, l, 1, 3, clock.Now())
			closeLog(t, l)
			var cp *Record
			for _, dl := range readLog(t, o.Dir) {
				if dl.rec.Type == EventCheckpoint {
					cp = dl.rec
				}
			}
			if cp == nil {
				t.Fatal("no checkpoint")
			}
			work := t.TempDir()
			data, sig := filepath.Join(work, "data"), filepath.Join(work, "sig.der")
			der, err := base64.StdEncoding.DecodeString(cp.Sig)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(data, []byte(cp.Signed), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(sig, der, 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := runCmd(openssl, "cms", "-verify", "-binary", "-inform", "DER", "-in", sig, "-content", data, "-CAfile", testpki.CAFile(t), "-out", os.DevNull)
			if err != nil || !strings.Contains(out, "Verification successful") {
				t.Fatalf("openssl: %v\n%s", err, out)
			}
			// A changed text does not verify.
			if err := os.WriteFile(data, []byte(strings.Replace(cp.Signed, "upto=3", "upto=2", 1)), 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := runCmd(openssl, "cms", "-verify", "-binary", "-inform", "DER", "-in", sig, "-content", data, "-CAfile", testpki.CAFile(t), "-out", os.DevNull); err == nil {
				t.Errorf("openssl verified a changed checkpoint text:\n%s", out)
			}
		})
	}
}

func testtoolNeed(t testing.TB, name string) string {
	t.Helper()
	return testtool.Need(t, name)
}

// runCmd runs a program and returns its combined output.
func runCmd(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

// TestQuietDaySealed: with no record after midnight, the timer seals the
// day's segment all the same.
func TestQuietDaySealed(t *testing.T) {
	o, clock := testOptions(t, "")
	o.CheckpointInterval = 20 * time.Millisecond
	l := openLog(t, o)
	appendN(t, l, 1, 2, clock.Now())
	clock.Set(romeTime(2026, 11, 24, 0, 0, 5))
	deadline := time.Now().Add(5 * time.Second)
	for {
		segs, _ := ListSegments(o.Dir)
		if len(segs) == 1 && segs[0].Sealed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("segment not sealed after the day changed: %+v", segs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	appendN(t, l, 3, 1, clock.Now())
	closeLog(t, l)
	segs, _ := ListSegments(o.Dir)
	if len(segs) != 2 || segs[1].Name != "00000000000000000004-20261124.log" {
		t.Errorf("segments %+v", segs)
	}
	mustVerify(t, o.Dir)
}
