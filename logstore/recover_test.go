package logstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// activeSegment returns the path of the last segment of dir.
func activeSegment(t testing.TB, dir string) string {
	t.Helper()
	segs, err := ListSegments(dir)
	if err != nil || len(segs) == 0 {
		t.Fatalf("segments: %v %v", segs, err)
	}
	return filepath.Join(dir, segs[len(segs)-1].Name)
}

func appendBytes(t testing.TB, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestRecoverTornTail(t *testing.T) {
	for _, tc := range []struct {
		name string
		tail func(next []byte) []byte
	}{
		{"half a record", func(next []byte) []byte { return next[:len(next)/2] }},
		{"a record without its LF", func(next []byte) []byte { return next[:len(next)-1] }},
		{"zeros (a hole left by a crash)", func([]byte) []byte { return make([]byte, 4096) }},
		{"half a record then zeros", func(next []byte) []byte { return append(next[:100:100], make([]byte, 3000)...) }},
		{"zeros with a LF", func([]byte) []byte { return append(make([]byte, 100), '\n', 0, 0) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, clock := testOptions(t, "")
			var warned []string
			o.Warn = func(m string) { warned = append(warned, m) }
			l := openLog(t, o)
			appendN(t, l, 1, 5, clock.Now())
			closeLog(t, l) // records 1-5, the checkpoint of Close 6
			path := activeSegment(t, o.Dir)
			before, _ := os.ReadFile(path)
			last := readLog(t, o.Dir)[5]
			next := sampleAcceptance(6, clock.Now())
			next.Seq, next.Prev = 7, Hash(last.line)
			line, _ := Encode(next)
			tail := tc.tail(line)
			appendBytes(t, path, tail)

			l = openLog(t, o)
			seq, _, err := l.Append(context.Background(), sampleAcceptance(7, clock.Now()))
			if err != nil || seq != 8 {
				t.Fatalf("Append after recovery: seq %d, %v", seq, err)
			}
			closeLog(t, l)
			after, _ := os.ReadFile(path)
			if !bytes.HasPrefix(after, before) {
				t.Fatal("recovery changed the records before the torn tail")
			}
			lines := readLog(t, o.Dir)
			tt := lines[6].rec
			sum := sha256.Sum256(tail)
			wantDetail := fmt.Sprintf("cut %d octets at offset %d of %s, sha256 %s", len(tail), len(before), filepath.Base(path), hex.EncodeToString(sum[:]))
			// 1-5, checkpoint 6, torn-tail 7, record 8, checkpoint 9.
			if len(lines) != 9 || tt.Type != EventTornTail || tt.Seq != 7 || !strings.HasPrefix(tt.Detail, wantDetail) {
				t.Fatalf("after recovery: %d records; record 7: %s\nwant detail %s", len(lines), lines[6].line, wantDetail)
			}
			if len(warned) != 1 || !strings.Contains(warned[0], wantDetail) {
				t.Errorf("warnings %q", warned)
			}
			if rep := mustVerify(t, o.Dir); rep.TornTails != 1 {
				t.Errorf("report: %d torn tails", rep.TornTails)
			}
		})
	}
}

func TestRecoverRefusesDamage(t *testing.T) {
	dir, lines := sealedLog(t)
	segs, _ := ListSegments(dir)
	active := segs[len(segs)-1].Name
	var act []diskLine
	for _, dl := range lines {
		if dl.seg == active {
			act = append(act, dl)
		}
	}
	if len(act) < 3 {
		t.Fatalf("fixture: %d records in the active segment", len(act))
	}
	a1, a2 := act[1], act[2]
	for _, tc := range []struct {
		name    string
		tamper  func(t *testing.T, dir string)
		seg     string
		off     int64
		seq     uint64
		problem string
	}{
		{"garbage followed by valid records", func(t *testing.T, dir string) {
			rewrite(t, dir, active, func(b []byte) []byte {
				return bytes.Replace(b, a1.line, append([]byte("garbage\n"), a1.line...), 1)
			})
		}, active, a1.off, a1.rec.Seq, "valid records follow it"},
		{"zeros in the middle", func(t *testing.T, dir string) {
			rewrite(t, dir, active, func(b []byte) []byte {
				return bytes.Replace(b, a1.line, append(make([]byte, 512), a1.line...), 1)
			})
		}, active, a1.off, a1.rec.Seq, "valid records follow it"},
		{"a record deleted", func(t *testing.T, dir string) {
			rewrite(t, dir, active, func(b []byte) []byte { return bytes.Replace(b, a1.line, nil, 1) })
		}, active, a1.off, a2.rec.Seq, fmt.Sprintf("seq %d where %d was expected", a2.rec.Seq, a1.rec.Seq)},
		{"a record changed", func(t *testing.T, dir string) {
			rewrite(t, dir, active, reencode(t, a1, func(r *Record) { r.Sender = "mario.rozzi@pec.example.it" }))
		}, active, a2.off, a2.rec.Seq, problemPrevMismatch},
		{"a sealed segment made writable", func(t *testing.T, dir string) {
			os.Chmod(filepath.Join(dir, segs[1].Name), 0o644)
		}, segs[1].Name, 0, segs[1].First, "writable but is not the last one"},
		{"the seal before the active segment cut", func(t *testing.T, dir string) {
			prev := lastOf(lines, segs[len(segs)-2].Name)
			rewrite(t, dir, prev.seg, func(b []byte) []byte { return b[:prev.off] })
		}, segs[len(segs)-2].Name, 0, 0, "does not end with a seal record"},
		{"the segment before the active one removed", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, segs[len(segs)-2].Name))
		}, active, 0, segs[len(segs)-1].First, "the segment before ends at seq"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := copyLog(t, dir)
			tc.tamper(t, d)
			snapshot := snapshotDir(t, d)
			o, _ := testOptions(t, d)
			l, err := Open(o)
			if err == nil {
				l.Close()
				t.Fatal("Open succeeded")
			}
			var de *DamageError
			if !errors.As(err, &de) {
				t.Fatalf("Open: %v, not a *DamageError", err)
			}
			if de.Segment != tc.seg || (tc.off != 0 && de.Offset != tc.off) || (tc.seq != 0 && de.Seq != tc.seq) || !strings.Contains(de.Problem, tc.problem) {
				t.Errorf("Open: %v\nwant segment %s offset %d seq %d: …%s…", de, tc.seg, tc.off, tc.seq, tc.problem)
			}
			if after := snapshotDir(t, d); after != snapshot {
				t.Errorf("Open wrote to a damaged log:\n%s\n%s", snapshot, after)
			}
		})
	}
}

// snapshotDir describes the segment files of dir: names, modes, hashes.
func snapshotDir(t testing.TB, dir string) string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), segmentExt) {
			continue
		}
		info, _ := e.Info()
		data, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		fmt.Fprintf(&b, "%s %v %x\n", e.Name(), info.Mode().Perm(), sha256.Sum256(data))
	}
	return b.String()
}

// TestRecoverUnfinishedSeal: a crash after the seal was written but
// before the file was made read-only. Open finishes the sealing.
func TestRecoverUnfinishedSeal(t *testing.T) {
	o, clock := testOptions(t, "")
	l := openLog(t, o)
	appendN(t, l, 1, 3, clock.Now())
	clock.Set(clock.Now().AddDate(0, 0, 1))
	appendN(t, l, 4, 1, clock.Now())
	closeLog(t, l)
	segs, _ := ListSegments(o.Dir)
	if len(segs) != 2 {
		t.Fatalf("fixture: %d segments", len(segs))
	}
	os.Remove(filepath.Join(o.Dir, segs[1].Name))
	os.Chmod(filepath.Join(o.Dir, segs[0].Name), 0o644)

	l = openLog(t, o)
	if seq, _, err := l.Append(context.Background(), sampleAcceptance(5, clock.Now())); err != nil || seq != 5 {
		t.Fatalf("Append: %d %v", seq, err)
	}
	closeLog(t, l)
	segs, _ = ListSegments(o.Dir)
	if len(segs) != 2 || !segs[0].Sealed || segs[1].First != 5 {
		t.Fatalf("segments %+v", segs)
	}
	mustVerify(t, o.Dir)
}

// TestRecoverEmptySegment: a crash right after a segment was created.
func TestRecoverEmptySegment(t *testing.T) {
	o, clock := testOptions(t, "")
	l := openLog(t, o)
	appendN(t, l, 1, 2, clock.Now())
	clock.Set(clock.Now().AddDate(0, 0, 1))
	appendN(t, l, 3, 1, clock.Now())
	closeLog(t, l)
	segs, _ := ListSegments(o.Dir)
	p := filepath.Join(o.Dir, segs[1].Name)
	if err := os.Truncate(p, 0); err != nil {
		t.Fatal(err)
	}
	// The next day: the empty segment of the day before is replaced.
	clock.Set(clock.Now().AddDate(0, 0, 1))
	l = openLog(t, o)
	if seq, _, err := l.Append(context.Background(), sampleAcceptance(3, clock.Now())); err != nil || seq != 4 {
		t.Fatalf("Append: %d %v", seq, err)
	}
	closeLog(t, l)
	segs, _ = ListSegments(o.Dir)
	if len(segs) != 2 || segs[1].Name != SegmentName(4, clock.Now()) {
		t.Errorf("segments %+v", segs)
	}
	mustVerify(t, o.Dir)
}

// FuzzRecover appends arbitrary octets to a valid active segment: Open
// must not panic, and must never drop a complete valid record.
func FuzzRecover(f *testing.F) {
	o, clock := testOptions(f, "")
	l := openLog(f, o)
	done := appendN(f, l, 1, 4, clock.Now())
	closeLog(f, l)
	base, err := os.ReadFile(activeSegment(f, o.Dir))
	if err != nil {
		f.Fatal(err)
	}
	name := filepath.Base(activeSegment(f, o.Dir))
	next := sampleAcceptance(5, clock.Now())
	next.Seq, next.Prev = 5, done[3].hash
	line, _ := Encode(next)
	f.Add([]byte{})
	f.Add(line)
	f.Add(line[:len(line)/2])
	f.Add(make([]byte, 600))
	f.Add(append([]byte("x\n"), line...))
	f.Add(append(line[:50:50], line...))
	f.Add([]byte("\n\n\n"))
	f.Add(append(line, line...))
	signer := o.Signer
	f.Fuzz(func(t *testing.T, extra []byte) {
		dir := t.TempDir()
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, append(append([]byte{}, base...), extra...), 0o644); err != nil {
			t.Fatal(err)
		}
		o := Options{Dir: dir, Signer: signer, Now: clock.Now}
		l, err := Open(o)
		if err != nil {
			var de *DamageError
			if !errors.As(err, &de) {
				t.Fatalf("Open: %v (not a DamageError)", err)
			}
			return
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		after, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(after, base) {
			t.Fatal("records before the appended octets were changed")
		}
		// Every complete valid record of the input is still there.
		_ = walkLines(bytes.NewReader(append(append([]byte{}, base...), extra...)), func(off int64, line []byte, complete, tooLong bool) error {
			if complete && !tooLong {
				if _, err := Decode(line); err == nil && !bytes.Equal(after[off:min(int64(len(after)), off+int64(len(line)))], line) {
					t.Fatalf("valid record at offset %d dropped", off)
				}
			}
			return nil
		})
		rep, err := Verify(dir, nil)
		if err != nil || rep.Problem != nil {
			t.Fatalf("Verify after recovery: %v %v", rep.Problem, err)
		}
	})
}
