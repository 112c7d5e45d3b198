package logstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pecgw/pecgw/internal/testpki"
	"github.com/pecgw/pecgw/pec"
)

// The log's evidence against someone with the disk but not the key
// (docs/logformat.md, "Checkpoints", "Witnesses").

// TestBackgroundCheckpoints: under concurrent writers every batch is
// signed in the background, a checkpoint may certify a record a few
// lines above it, and a log left alone (not closed) ends signed within
// the interval and one signature.
func TestBackgroundCheckpoints(t *testing.T) {
	for _, kind := range []string{"rsa", "p256"} {
		t.Run(kind, func(t *testing.T) {
			o, _ := testOptions(t, "")
			o.Signer = testpki.Signer(t, kind)
			o.Now = time.Now
			o.CheckpointInterval = 2 * time.Millisecond
			l := openLog(t, o)
			var wg sync.WaitGroup
			for w := range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range 50 {
						if _, _, err := l.Append(context.Background(), sampleAcceptance(w*50+i, time.Now())); err != nil {
							t.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			deadline := time.Now().Add(5 * time.Second)
			for {
				rep, err := Verify(o.Dir, testpki.Roots())
				if err != nil {
					t.Fatal(err)
				}
				if rep.Problem == nil {
					break
				}
				if rep.Unsigned == nil || time.Now().After(deadline) {
					t.Fatalf("Verify of the log left open: %v", rep.Problem)
				}
				time.Sleep(time.Millisecond)
			}
			lines := readLog(t, o.Dir)
			cks, earlier := 0, 0
			for _, dl := range lines {
				if dl.rec.Type == EventCheckpoint {
					cks++
					if dl.rec.Upto != dl.rec.Seq-1 {
						earlier++
					}
				}
			}
			t.Logf("%d records, %d checkpoints, %d of them certify a record above the line before", len(lines), cks, earlier)
			if cks < 2 {
				t.Errorf("%d checkpoints for 800 records written over many batches", cks)
			}
			closeLog(t, l)
			if n := len(readLog(t, o.Dir)); n != len(lines) {
				t.Errorf("Close of a signed log wrote %d records", n-len(lines))
			}
		})
	}
}

// signedRecord returns a checkpoint of kind certifying (upto, head) at
// seq with prev, signed by the test key.
func signedRecord(t *testing.T, seq uint64, prev string, upto uint64, head string) []byte {
	t.Helper()
	at := pec.At(romeTime(2026, 11, 23, 10, 0, 0)).Time()
	text := CheckpointText(EventCheckpoint, upto, head, at)
	der, err := testpki.Signer(t, "p256").SignDetached([]byte(text), at)
	if err != nil {
		t.Fatal(err)
	}
	line, err := Encode(&Record{Seq: seq, Prev: prev, V: FormatVersion, Time: at.Format(time.RFC3339), Type: EventCheckpoint,
		Provider: testpki.ProviderName, Head: head, Upto: upto, Signed: text, Sig: base64.StdEncoding.EncodeToString(der)})
	if err != nil {
		t.Fatal(err)
	}
	return line
}

// chained returns record i as the line after (seq, prev).
func chained(t *testing.T, i int, seq uint64, prev string) []byte {
	t.Helper()
	r := sampleAcceptance(i, romeTime(2026, 11, 23, 10, 0, 0))
	r.Seq, r.Prev, r.V = seq, prev, FormatVersion
	line, err := Encode(r)
	if err != nil {
		t.Fatal(err)
	}
	return line
}

// TestVerifyCheckpointOfAnEarlierRecord: a checkpoint certifies a record
// after the one the signed record before it certified, never one already
// covered; the records between it and its head stay unsigned until the
// next.
func TestVerifyCheckpointOfAnEarlierRecord(t *testing.T) {
	o, clock := testOptions(t, "")
	l := openLog(t, o)
	appendN(t, l, 1, 3, clock.Now())
	closeLog(t, l) // 1-3, checkpoint 4
	lines := readLog(t, o.Dir)
	seg := lines[0].seg
	h4 := Hash(lines[3].line)
	r5 := chained(t, 5, 5, h4)
	r6 := chained(t, 6, 6, Hash(r5))
	for _, tc := range []struct {
		name    string
		upto    uint64 // the checkpoint at seq 7
		head    string
		closing bool // a checkpoint of record 7 follows
		problem string
	}{
		{"certifies record 5", 5, Hash(r5), true, ""},
		{"certifies record 5, nothing after", 5, Hash(r5), false, "records 6..7 are not covered by a signed checkpoint"},
		{"certifies record 3, already covered", 3, lines[2].rec.Prev, true, "already covered"},
		{"certifies record 5 with another hash", 5, Hash(r6), true, "head is not the hash of the record it certifies (seq 5)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := copyLog(t, o.Dir)
			c7 := signedRecord(t, 7, Hash(r6), tc.upto, tc.head)
			tail := append(append(append([]byte(nil), r5...), r6...), c7...)
			if tc.closing {
				tail = append(tail, signedRecord(t, 8, Hash(c7), 7, Hash(c7))...)
			}
			rewrite(t, d, seg, func(b []byte) []byte { return append(b, tail...) })
			rep, err := Verify(d, testpki.Roots())
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case tc.problem == "" && rep.Problem != nil:
				t.Errorf("Verify: %v", rep.Problem)
			case tc.problem != "" && (rep.Problem == nil || !strings.Contains(rep.Problem.Problem, tc.problem)):
				t.Errorf("Verify: %v, want …%s…", rep.Problem, tc.problem)
			}
		})
	}
}

// TestVerifyUnsignedTail: what someone with the disk but not the key can
// do after the last checkpoint (cut records, change them and recompute
// the chain, append forged ones) leaves a tail no signature covers, and
// Verify says which records.
func TestVerifyUnsignedTail(t *testing.T) {
	o, clock := testOptions(t, "")
	o.CheckpointEvery = 10
	l := openLog(t, o)
	appendN(t, l, 1, 25, clock.Now())
	// Checkpoints at 11, 22 and 28 (Close). A checkpoint's own line is
	// not under its signature (its prev is the record before): the
	// unsigned range starts after the record the last good one certified.
	closeLog(t, l)
	lines := readLog(t, o.Dir)
	seg := lines[0].seg
	last := lines[len(lines)-1]
	if last.rec.Type != EventCheckpoint || last.rec.Seq != 28 {
		t.Fatalf("fixture: ends with %s", last.line)
	}
	// recompute rewrites the chain from record at on, as anyone can.
	recompute := func(recs []*Record, prev string) []byte {
		var out []byte
		for _, r := range recs {
			r.Prev = prev
			line, err := Encode(r)
			if err != nil {
				t.Fatal(err)
			}
			out, prev = append(out, line...), Hash(line)
		}
		return out
	}
	records := func(from, to int) []*Record {
		var out []*Record
		for _, dl := range lines[from-1 : to] {
			c := *dl.rec
			out = append(out, &c)
		}
		return out
	}
	for _, tc := range []struct {
		name    string
		tamper  func(b []byte) []byte
		problem string
	}{
		{"the checkpoint of Close and 2 records cut", func(b []byte) []byte { return b[:lines[25].off] }, "records 22..25 are not covered"},
		{"all but one record of the tail cut", func(b []byte) []byte { return b[:lines[23].off] }, "records 22..23 are not covered"},
		{"forged record appended", func(b []byte) []byte {
			return append(b, chained(t, 99, 29, Hash(last.line))...)
		}, "records 28..29 are not covered"},
		{"records after a checkpoint changed, the chain recomputed, the final checkpoint cut", func(b []byte) []byte {
			recs := records(23, 27)
			recs[1].Subject = "changed"
			return append(b[:lines[22].off], recompute(recs, Hash(lines[21].line))...)
		}, "records 22..27 are not covered"},
		{"a record deleted after a checkpoint, renumbered, the chain recomputed", func(b []byte) []byte {
			recs := records(23, 27)
			recs = append(recs[:1], recs[2:]...)
			for i, r := range recs {
				r.Seq = uint64(23 + i)
			}
			return append(b[:lines[22].off], recompute(recs, Hash(lines[21].line))...)
		}, "records 22..26 are not covered"},
		{"the last record changed, the chain recomputed", func(b []byte) []byte {
			recs := records(23, 28)
			recs[4].Subject = "changed"
			return append(b[:lines[22].off], recompute(recs, Hash(lines[21].line))...)
		}, "checkpoint: head is not the hash of the record it certifies (seq 27)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := copyLog(t, o.Dir)
			rewrite(t, d, seg, tc.tamper)
			rep, err := Verify(d, testpki.Roots())
			if err != nil {
				t.Fatal(err)
			}
			if rep.Problem == nil || !strings.Contains(rep.Problem.Problem, tc.problem) {
				t.Errorf("Verify: %v, want …%s…", rep.Problem, tc.problem)
			}
		})
	}
}

// TestWitnessFolder: the folder witness holds the last signed record
// once it is on disk, never an older one after a newer.
func TestWitnessFolder(t *testing.T) {
	o, clock := testOptions(t, "")
	w := &FolderWitness{Dir: t.TempDir(), Name: "mx1"}
	o.Witnesses = []Witness{w}
	l := openLog(t, o)
	if _, err := w.Load(context.Background()); !errors.Is(err, ErrNoWitness) {
		t.Errorf("Load of a new witness: %v", err)
	}
	appendN(t, l, 1, 5, clock.Now())
	closeLog(t, l)
	lines := readLog(t, o.Dir)
	h, err := w.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if last := lines[len(lines)-1]; h.Seq != last.rec.Seq || h.Hash != Hash(last.line) || h.Line+"\n" != string(last.line) {
		t.Errorf("witness %+v, want the last record %s", h, last.line)
	}
	if _, err := h.Check(); err != nil {
		t.Errorf("Check: %v", err)
	}
	older := NewWitnessHead(lines[0].rec.Seq, lines[0].line)
	if err := w.Store(context.Background(), older); err != nil {
		t.Fatal(err)
	}
	if again, _ := w.Load(context.Background()); again.Seq != h.Seq {
		t.Errorf("an older head replaced the witness: %+v", again)
	}
	// A head that is not a signed record, or whose signature was changed.
	if _, err := older.Check(); err == nil {
		t.Error("Check of an accettazione record passed")
	}
	forged := *h
	forged.Line = strings.Replace(h.Line, `"sig":"MII`, `"sig":"MIJ`, 1)
	forged.Hash = Hash([]byte(forged.Line))
	if _, err := forged.Check(); err == nil {
		t.Error("Check of a witness head with a changed signature passed")
	}
	// A missing witness volume is not a new witness.
	gone := &FolderWitness{Dir: filepath.Join(t.TempDir(), "unmounted"), Name: "mx1"}
	if _, err := gone.Load(context.Background()); err == nil || errors.Is(err, ErrNoWitness) {
		t.Errorf("Load from a missing folder: %v", err)
	}
}

// TestOpenRefusesALogBehindItsWitness: truncation at a checkpoint, the
// active segment deleted, the folder restored from an older copy: the
// log that is left is valid, and only the witness shows what is gone.
func TestOpenRefusesALogBehindItsWitness(t *testing.T) {
	o, clock := testOptions(t, "")
	o.CheckpointEvery = 3
	o.MaxSegmentSize = 16384
	wdir := t.TempDir()
	o.Witnesses = []Witness{&FolderWitness{Dir: wdir, Name: "mx1"}}
	l := openLog(t, o)
	appendN(t, l, 1, 20, clock.Now())
	closeLog(t, l)
	snapshot := copyLog(t, o.Dir)
	l = openLog(t, o)
	appendN(t, l, 21, 12, clock.Now())
	closeLog(t, l)
	lines := readLog(t, o.Dir)
	segs, _ := ListSegments(o.Dir)
	if len(segs) < 3 {
		t.Fatalf("fixture: %d segments", len(segs))
	}
	last := lines[len(lines)-1]
	var ckBefore diskLine // a checkpoint in the active segment before its last record
	for _, dl := range lines[:len(lines)-1] {
		if dl.seg == last.seg && dl.rec.Type == EventCheckpoint {
			ckBefore = dl
		}
	}
	if ckBefore.rec == nil {
		t.Fatal("fixture: no checkpoint before the last record in the active segment")
	}
	for _, tc := range []struct {
		name   string
		tamper func(dir string)
		logSeq uint64
	}{
		{"cut at a checkpoint", func(dir string) {
			rewrite(t, dir, last.seg, func(b []byte) []byte { return b[:ckBefore.off+int64(len(ckBefore.line))] })
		}, ckBefore.rec.Seq},
		{"active segment deleted", func(dir string) { os.Remove(filepath.Join(dir, last.seg)) }, segs[len(segs)-1].First - 1},
		{"restored from an older copy", func(dir string) {
			for _, s := range segs {
				os.Chmod(filepath.Join(dir, s.Name), 0o644)
				os.Remove(filepath.Join(dir, s.Name))
			}
			ss, _ := ListSegments(snapshot)
			for _, s := range ss {
				b, _ := os.ReadFile(filepath.Join(snapshot, s.Name))
				info, _ := os.Stat(filepath.Join(snapshot, s.Name))
				os.WriteFile(filepath.Join(dir, s.Name), b, info.Mode().Perm())
			}
		}, readLog(t, snapshot)[len(readLog(t, snapshot))-1].rec.Seq},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := copyLog(t, o.Dir)
			tc.tamper(d)
			rep, err := Verify(d, testpki.Roots())
			if err != nil || rep.Problem != nil {
				t.Fatalf("fixture: the log left must be valid alone: %v %v", rep.Problem, err)
			}
			checks := VerifyWitnesses(d, rep, o.Witnesses)
			if len(checks) != 1 || checks[0].Behind == nil || checks[0].Behind.LogSeq != tc.logSeq || checks[0].Behind.Head.Seq != last.rec.Seq {
				t.Errorf("VerifyWitnesses: %+v", checks)
			}
			o2 := o
			o2.Dir = d
			_, err = Open(o2)
			var be *BehindError
			want := fmt.Sprintf("records %d..%d are missing", tc.logSeq+1, last.rec.Seq)
			if !errors.As(err, &be) || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "pecgw log accept-loss") {
				t.Errorf("Open: %v\nwant …%s…", err, want)
			}
		})
	}
	// A log rewritten from the witnessed record on.
	d := copyLog(t, o.Dir)
	rewrite(t, d, last.seg, func(b []byte) []byte {
		return append(b[:last.off], signedRecord(t, last.rec.Seq, last.rec.Prev, last.rec.Upto, last.rec.Head)...)
	})
	o2 := o
	o2.Dir = d
	if _, err := Open(o2); err == nil || !strings.Contains(err.Error(), "were rewritten") {
		t.Errorf("Open of a rewritten log: %v", err)
	}
	// The untouched log opens.
	closeLog(t, openLog(t, o))
}

// TestHealAfterWriteFailure: a failed write does not stop the log for
// good: the octets after the last good fsync are cut and said so, and
// Append works again without a new Open; Broken and Healed are told once.
func TestHealAfterWriteFailure(t *testing.T) {
	o, clock := testOptions(t, "")
	var mu sync.Mutex
	var broken []error
	var healed []string
	o.Broken = func(err error) { mu.Lock(); broken = append(broken, err); mu.Unlock() }
	o.Healed = func(d string) { mu.Lock(); healed = append(healed, d); mu.Unlock() }
	l := openLog(t, o)
	appendN(t, l, 1, 2, clock.Now())
	// What a write that failed half way leaves: octets after the last
	// good fsync, never acknowledged.
	junk := []byte(`{"seq":3,"prev":"half a rec`)
	appendBytes(t, activeSegment(t, o.Dir), junk)
	l.f.Close() // the writer is idle: its next write fails
	if _, _, err := l.Append(context.Background(), sampleAcceptance(3, clock.Now())); err == nil || !strings.Contains(err.Error(), "broken") {
		t.Fatalf("Append after a write failure: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	var seq uint64
	for {
		s, _, err := l.Append(context.Background(), sampleAcceptance(3, clock.Now()))
		if err == nil {
			seq = s
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the log did not heal: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	closeLog(t, l)
	lines := readLog(t, o.Dir)
	tt := lines[2].rec
	sum := sha256.Sum256(junk)
	want := fmt.Sprintf("cut %d octets at offset %d of %s, sha256 %s: written after the last successful fsync", len(junk), lines[2].off, lines[2].seg, hex.EncodeToString(sum[:]))
	if tt.Type != EventTornTail || !strings.HasPrefix(tt.Detail, want) || seq != 4 {
		t.Errorf("after healing: record 3 %s, Append seq %d\nwant detail %s…", lines[2].line, seq, want)
	}
	mu.Lock()
	if len(broken) != 1 || len(healed) != 1 || !strings.Contains(healed[0], "takes records again") {
		t.Errorf("broken %v, healed %q", broken, healed)
	}
	mu.Unlock()
	mustVerify(t, o.Dir)
}

// TestLongValuesCut: no value makes a record too long to write; a cut
// value keeps its length and SHA-256.
func TestLongValuesCut(t *testing.T) {
	o, clock := testOptions(t, "")
	l := openLog(t, o)
	r := sampleAcceptance(1, clock.Now())
	// A Subject folded over a megabyte (RFC 5322 §2.1.1 limits lines, not fields).
	subject := strings.Repeat("Fattura è pagata ", 70_000)
	r.Subject, r.Detail = subject, strings.Repeat("x", MaxLine)
	for i := range 700 {
		r.Recipients = append(r.Recipients, Recipient{Addr: fmt.Sprintf("u%d@pec.example.it", i), Tipo: "certificato"})
	}
	all := append([]Recipient(nil), r.Recipients...)
	if _, _, err := l.Append(context.Background(), r); err != nil {
		t.Fatalf("Append of a record with a 1 MB subject: %v", err)
	}
	// Values that JSON writes at six octets each.
	ctl := sampleAcceptance(2, clock.Now())
	ctl.Subject = strings.Repeat("\x01", MaxLine)
	for i := range MaxRecipients {
		ctl.Recipients = append(ctl.Recipients, Recipient{Addr: strings.Repeat("\x02", 1000) + fmt.Sprint(i), Tipo: "esterno"})
	}
	if _, _, err := l.Append(context.Background(), ctl); err != nil {
		t.Fatalf("Append of a record of control characters: %v", err)
	}
	closeLog(t, l)
	lines := readLog(t, o.Dir)
	got := lines[0].rec
	sum := sha256.Sum256([]byte(subject))
	if len(got.Subject) > MaxText || !strings.HasPrefix(subject, strings.Split(got.Subject, "…[cut")[0]) ||
		!strings.HasSuffix(got.Subject, fmt.Sprintf("…[cut: %d octets, sha256 %s]", len(subject), hex.EncodeToString(sum[:]))) {
		t.Errorf("subject written as %q…", got.Subject[:100])
	}
	if len(got.Recipients) != MaxRecipients+1 || got.Recipients[MaxRecipients-1] != all[MaxRecipients-1] ||
		!strings.HasPrefix(got.Recipients[MaxRecipients].Addr, "…[cut: 202 recipients, sha256 of the whole list ") {
		t.Errorf("%d recipients written, the last %+v", len(got.Recipients), got.Recipients[len(got.Recipients)-1])
	}
	if c := lines[1].rec; len(c.Recipients) != 1 || !strings.Contains(c.Recipients[0].Addr, "cut: 502 recipients") || len(lines[1].line) > MaxLine {
		t.Errorf("the record of control characters: %d octets, %d recipients", len(lines[1].line), len(c.Recipients))
	}
	if !bytes.Contains(lines[0].line, []byte(`"detail":"xxx`)) {
		t.Error("detail not written")
	}
	mustVerify(t, o.Dir)
}
