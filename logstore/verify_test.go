package logstore

import (
	"bytes"
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pecgw/pecgw/internal/testpki"
	"github.com/pecgw/pecgw/signer"
)

// sealedLog writes a log of 30 records with a checkpoint every 5 records
// in segments of at most 4 KiB: several sealed segments and an open one.
func sealedLog(t testing.TB) (dir string, lines []diskLine) {
	t.Helper()
	o, clock := testOptions(t, "")
	o.MaxSegmentSize = 4096
	o.CheckpointEvery = 5
	l := openLog(t, o)
	appendN(t, l, 1, 30, clock.Now())
	closeLog(t, l)
	lines = readLog(t, o.Dir)
	segs, _ := ListSegments(o.Dir)
	if len(segs) < 4 {
		t.Fatalf("fixture: %d segments, want at least 4", len(segs))
	}
	return o.Dir, lines
}

// copyLog copies the segments of a log folder to a new folder, modes
// included.
func copyLog(t testing.TB, src string) string {
	t.Helper()
	dst := t.TempDir()
	segs, err := ListSegments(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range segs {
		b, err := os.ReadFile(filepath.Join(src, s.Name))
		if err != nil {
			t.Fatal(err)
		}
		info, _ := os.Stat(filepath.Join(src, s.Name))
		p := filepath.Join(dst, s.Name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, info.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// rewrite changes the content of a segment file as an attacker with
// write access would: made writable, rewritten, its mode put back.
func rewrite(t testing.TB, dir, seg string, fn func(b []byte) []byte) {
	t.Helper()
	p := filepath.Join(dir, seg)
	info, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, fn(b), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, info.Mode().Perm()); err != nil {
		t.Fatal(err)
	}
}

// record returns the line of seq.
func record(t testing.TB, lines []diskLine, seq uint64) diskLine {
	t.Helper()
	for _, dl := range lines {
		if dl.rec.Seq == seq {
			return dl
		}
	}
	t.Fatalf("no record %d", seq)
	return diskLine{}
}

// firstOf returns the first record of type typ.
func firstOf(t testing.TB, lines []diskLine, typ Event) diskLine {
	t.Helper()
	for _, dl := range lines {
		if dl.rec.Type == typ {
			return dl
		}
	}
	t.Fatalf("no %s record", typ)
	return diskLine{}
}

// lastOf returns the last record of segment seg.
func lastOf(lines []diskLine, seg string) diskLine {
	var last diskLine
	for _, dl := range lines {
		if dl.seg == seg {
			last = dl
		}
	}
	return last
}

// reencode replaces the line of a record with the encoding of a changed
// copy of it.
func reencode(t testing.TB, dl diskLine, change func(r *Record)) func([]byte) []byte {
	c := *dl.rec
	change(&c)
	line, err := Encode(&c)
	if err != nil {
		t.Fatal(err)
	}
	return func(b []byte) []byte { return bytes.Replace(b, dl.line, line, 1) }
}

func TestVerifyIntact(t *testing.T) {
	dir, lines := sealedLog(t)
	rep := mustVerify(t, dir)
	segs, _ := ListSegments(dir)
	if rep.Records != uint64(len(lines)) || rep.FirstSeq != 1 || rep.LastSeq != uint64(len(lines)) || rep.Segments != len(segs) ||
		rep.Seals != len(segs)-1 || rep.Checkpoints < rep.Seals+3 || !rep.ChainVerified || rep.FirstTime == "" || rep.LastTime == "" {
		t.Errorf("report %+v for %d records in %d segments", rep, len(lines), len(segs))
	}
}

func TestVerifyFindsTampering(t *testing.T) {
	dir, lines := sealedLog(t)
	segs, _ := ListSegments(dir)
	seg0 := segs[0].Name
	r2, r3, r4 := record(t, lines, 2), record(t, lines, 3), record(t, lines, 4)
	if r3.seg != seg0 || r4.seg != seg0 || r3.rec.Type != EventAccettazione || r4.rec.Type != EventAccettazione {
		t.Fatalf("fixture: records 3 and 4 are not acceptances in the first segment")
	}
	seal0 := lastOf(lines, seg0)
	cp := firstOf(t, lines, EventCheckpoint)
	seg1 := segs[1].Name
	seg1First := record(t, lines, segs[1].First)
	size0 := int64(0)
	for _, dl := range lines {
		if dl.seg == seg0 {
			size0 += int64(len(dl.line))
		}
	}

	other, err := signer.GenerateDevPKI(signer.DevPKIOptions{Domain: "pec.example.it", ProviderName: "Other", KeyType: "p256", Now: romeTime(2026, 1, 1, 0, 0, 0)})
	if err != nil {
		t.Fatal(err)
	}
	otherSigner, err := other.Signer()
	if err != nil {
		t.Fatal(err)
	}

	type want struct {
		seg     string
		off     int64
		seq     uint64
		problem string
	}
	for _, tc := range []struct {
		name   string
		tamper func(t *testing.T, dir string)
		want   want
	}{
		{"changed byte, record still decodes", func(t *testing.T, dir string) {
			rewrite(t, dir, seg0, reencode(t, r3, func(r *Record) { r.Subject = strings.Replace(r.Subject, "3", "8", 1) }))
		}, want{seg0, r3.off, 3, "the record was changed: its hash does not match the prev of the next record (seq 4)"}},
		{"changed byte, record no longer decodes", func(t *testing.T, dir string) {
			rewrite(t, dir, seg0, func(b []byte) []byte {
				b[r3.off+int64(bytes.Index(r3.line, []byte(`"accettazione"`))+5)] ^= 1
				return b
			})
		}, want{seg0, r3.off, 3, "does not decode"}},
		{"changed prev", func(t *testing.T, dir string) {
			rewrite(t, dir, seg0, reencode(t, r3, func(r *Record) { r.Prev = strings.Repeat("1", 64) }))
		}, want{seg0, r3.off, 3, "the record was changed: its prev does not match"}},
		{"changed seq", func(t *testing.T, dir string) {
			rewrite(t, dir, seg0, reencode(t, r3, func(r *Record) { r.Seq = 9 }))
		}, want{seg0, r3.off, 9, "seq 9 where 3 was expected, yet prev links to the record before: the record was changed"}},
		{"changed byte in a seal's signature", func(t *testing.T, dir string) {
			rewrite(t, dir, seg0, reencode(t, seal0, func(r *Record) {
				der, _ := base64.StdEncoding.DecodeString(r.Sig)
				der[len(der)-10] ^= 0x40
				r.Sig = base64.StdEncoding.EncodeToString(der)
			}))
		}, want{seg0, seal0.off, seal0.rec.Seq, "seal: signature does not verify"}},
		{"changed seal time", func(t *testing.T, dir string) {
			rewrite(t, dir, seg0, reencode(t, seal0, func(r *Record) { r.Time = "2026-11-24T10:00:00+01:00" }))
		}, want{seg0, seal0.off, seal0.rec.Seq, "seal: signed text"}},
		{"deleted record", func(t *testing.T, dir string) {
			rewrite(t, dir, seg0, func(b []byte) []byte { return bytes.Replace(b, r3.line, nil, 1) })
		}, want{seg0, r3.off, 4, "records 3..3 missing: deleted"}},
		{"inserted copy of a record", func(t *testing.T, dir string) {
			rewrite(t, dir, seg0, func(b []byte) []byte {
				return bytes.Replace(b, r3.line, append(append([]byte{}, r3.line...), r3.line...), 1)
			})
		}, want{seg0, r4.off, 3, "a copy of record 3 was inserted"}},
		{"inserted older record", func(t *testing.T, dir string) {
			rewrite(t, dir, seg0, func(b []byte) []byte {
				return bytes.Replace(b, r4.line, append(append([]byte{}, r4.line...), r2.line...), 1)
			})
		}, want{seg0, r4.off + int64(len(r4.line)), 2, "seq 2 where 5 was expected: a record was inserted or records were reordered"}},
		{"two records swapped", func(t *testing.T, dir string) {
			rewrite(t, dir, seg0, func(b []byte) []byte {
				return bytes.Replace(b, append(append([]byte{}, r3.line...), r4.line...), append(append([]byte{}, r4.line...), r3.line...), 1)
			})
		}, want{seg0, r3.off, 4, "records out of order: seq 4 comes before seq 3"}},
		{"sealed segment cut in the middle of a record", func(t *testing.T, dir string) {
			rewrite(t, dir, seg0, func(b []byte) []byte { return b[:r4.off+20] })
		}, want{seg0, r4.off, 4, "incomplete last line"}},
		{"sealed segment cut after a record", func(t *testing.T, dir string) {
			rewrite(t, dir, seg0, func(b []byte) []byte { return b[:r4.off] })
		}, want{seg0, r4.off, 4, "does not end with its seal"}},
		{"whole segment removed", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, seg1))
		}, want{segs[2].Name, 0, segs[2].First, "missing: deleted (a whole segment file"}},
		{"first segment removed, no tombstone", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, seg0))
		}, want{seg1, 0, seg1First.rec.Seq, "records 1.." + itoa(seg1First.rec.Seq-1) + " missing and no purge tombstone"}},
		{"segment renamed", func(t *testing.T, dir string) {
			os.Rename(filepath.Join(dir, seg1), filepath.Join(dir, SegmentName(segs[1].First+1, time.Now())))
		}, want{SegmentName(segs[1].First+1, time.Now()), 0, segs[1].First, "name says its first seq"}},
		{"record appended after a seal", func(t *testing.T, dir string) {
			rewrite(t, dir, seg0, func(b []byte) []byte { return append(b, seg1First.line...) })
		}, want{seg0, size0, seg1First.rec.Seq, "record after the seal"}},
		{"checkpoint signature changed", func(t *testing.T, dir string) {
			rewrite(t, dir, cp.seg, reencode(t, cp, func(r *Record) { r.Sig = r.Sig[:40] + "AAAA" + r.Sig[44:] }))
		}, want{cp.seg, cp.off, cp.rec.Seq, "checkpoint: signature does not verify"}},
		{"checkpoint re-signed by a foreign key", func(t *testing.T, dir string) {
			rewrite(t, dir, cp.seg, reencode(t, cp, func(r *Record) {
				der, err := otherSigner.SignDetached([]byte(r.Signed), mustTime(t, r.Time))
				if err != nil {
					t.Fatal(err)
				}
				r.Sig = base64.StdEncoding.EncodeToString(der)
			}))
		}, want{cp.seg, cp.off, cp.rec.Seq, "checkpoint: signature does not verify: " + signer.ErrUntrusted.Error()}},
		{"checkpoint head changed", func(t *testing.T, dir string) {
			rewrite(t, dir, cp.seg, reencode(t, cp, func(r *Record) { r.Head = strings.Repeat("a", 64) }))
		}, want{cp.seg, cp.off, cp.rec.Seq, "checkpoint: head is not the hash of the record it certifies"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := copyLog(t, dir)
			tc.tamper(t, d)
			rep, err := Verify(d, testpki.Roots())
			if err != nil {
				t.Fatal(err)
			}
			p := rep.Problem
			if p == nil {
				t.Fatal("Verify found nothing")
			}
			if p.Segment != tc.want.seg || p.Offset != tc.want.off || p.Seq != tc.want.seq || !strings.Contains(p.Problem, tc.want.problem) {
				t.Errorf("Verify: %v\nwant:  segment %s offset %d seq %d: …%s…", p, tc.want.seg, tc.want.off, tc.want.seq, tc.want.problem)
			}
			if !strings.Contains(p.Error(), "segment "+p.Segment+" offset "+itoa(uint64(p.Offset))+" seq "+itoa(p.Seq)+": ") {
				t.Errorf("Error() = %q", p.Error())
			}
		})
	}
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

// TestVerifyRoots: a log signed by a key of another CA is intact without
// roots, and untrusted with the provider's roots.
func TestVerifyRoots(t *testing.T) {
	other, err := signer.GenerateDevPKI(signer.DevPKIOptions{Domain: "pec.example.it", ProviderName: "Other", KeyType: "p256"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := other.Signer()
	if err != nil {
		t.Fatal(err)
	}
	o, clock := testOptions(t, "")
	clock.Set(time.Now()) // the dev PKI is valid from now
	o.Signer = s
	o.CheckpointEvery = 2
	l := openLog(t, o)
	appendN(t, l, 1, 2, clock.Now())
	closeLog(t, l)
	rep, err := Verify(o.Dir, nil)
	if err != nil || rep.Problem != nil || rep.Checkpoints != 1 || rep.ChainVerified {
		t.Fatalf("Verify without roots: %+v, %v", rep, err)
	}
	rep, err = Verify(o.Dir, testpki.Roots())
	if err != nil || rep.Problem == nil || rep.Problem.Seq != 3 || !strings.Contains(rep.Problem.Problem, signer.ErrUntrusted.Error()) || rep.ChainVerified {
		t.Fatalf("Verify with the test roots: %+v, %v", rep.Problem, err)
	}
	roots := testpki.Roots()
	roots.AddCert(other.CACert)
	if rep, err := Verify(o.Dir, roots); err != nil || rep.Problem != nil || !rep.ChainVerified {
		t.Fatalf("Verify with the other CA in the roots: %+v, %v", rep, err)
	}
}

func TestVerifyIOError(t *testing.T) {
	if _, err := Verify(filepath.Join(t.TempDir(), "missing"), nil); err == nil {
		t.Error("Verify of a missing folder: no error")
	}
	rep, err := Verify(t.TempDir(), nil)
	if err != nil || rep.Problem != nil || rep.Records != 0 {
		t.Errorf("Verify of an empty folder: %+v, %v", rep, err)
	}
}

// TestVerifyLive verifies a log while it is being written.
func TestVerifyLive(t *testing.T) {
	o, clock := testOptions(t, "")
	o.CheckpointEvery = 7
	o.CheckpointInterval = time.Millisecond
	l := openLog(t, o)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 300 {
			if _, _, err := l.Append(context.Background(), sampleAcceptance(i, clock.Now())); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for {
		select {
		case <-done:
			closeLog(t, l)
			mustVerify(t, o.Dir)
			return
		default:
		}
		rep, err := Verify(o.Dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		// A write may be seen half done, or before its checkpoint; nothing
		// else may be wrong.
		if rep.Problem != nil && !strings.Contains(rep.Problem.Problem, "incomplete last line") && rep.Unsigned == nil {
			t.Fatalf("Verify of a live log: %v", rep.Problem)
		}
	}
}
