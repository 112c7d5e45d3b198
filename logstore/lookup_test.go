package logstore

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// lookupLog writes a log of three segments (three Italian days) with a
// real Log and returns its folder and what Append returned for each of
// the six records appended.
func lookupLog(t *testing.T) (string, []appended) {
	t.Helper()
	o, clock := testOptions(t, "")
	clock.Set(romeTime(2026, 3, 28, 23, 59, 58))
	l := openLog(t, o)
	out := appendN(t, l, 1, 3, clock.Now())
	clock.Set(romeTime(2026, 3, 29, 0, 0, 1))
	out = append(out, appendN(t, l, 4, 2, clock.Now())...)
	closeLog(t, l)
	clock.Set(romeTime(2026, 3, 30, 8, 0, 0))
	l = openLog(t, o)
	out = append(out, appendN(t, l, 6, 1, clock.Now())...)
	closeLog(t, l)
	if segs, _ := ListSegments(o.Dir); len(segs) != 3 {
		t.Fatalf("segments %+v", segs)
	}
	return o.Dir, out
}

// editLine rewrites the line of record seq in the log in dir with fn.
func editLine(t *testing.T, dir string, seq uint64, fn func(line []byte) []byte) {
	t.Helper()
	for _, l := range readLog(t, dir) {
		if l.rec.Seq != seq {
			continue
		}
		p := filepath.Join(dir, l.seg)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b = append(append(append([]byte(nil), b[:l.off]...), fn(l.line)...), b[l.off+int64(len(l.line)):]...)
		os.Chmod(p, 0o644) // a sealed segment is read-only
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatalf("no record seq %d", seq)
}

func TestLookupRecordFindsEveryRecord(t *testing.T) {
	dir, appended := lookupLog(t)
	for _, a := range appended {
		line, rec, err := LookupRecord(dir, a.seq)
		if err != nil || rec.Seq != a.seq || Hash(line) != a.hash || rec.Type != EventAccettazione || !bytes.HasSuffix(line, []byte("\n")) {
			t.Errorf("LookupRecord(%d) = %q %+v %v, Append gave %s", a.seq, line, rec, err, a.hash)
		}
	}
	// Every line on disk, seals and checkpoints included.
	for _, l := range readLog(t, dir) {
		line, rec, err := LookupRecord(dir, l.rec.Seq)
		if err != nil || !bytes.Equal(line, l.line) || rec.Type != l.rec.Type {
			t.Errorf("LookupRecord(%d): %q %v", l.rec.Seq, line, err)
		}
	}
}

func TestLookupRecordSaysWhyThereIsNone(t *testing.T) {
	dir, appended := lookupLog(t)
	lines := readLog(t, dir)
	last := lines[len(lines)-1].rec.Seq
	segs, _ := ListSegments(dir)
	// The first records of the second and third segments, and the seal
	// that ends the first.
	second, third := segs[1].First, segs[2].First
	var firstSeal uint64
	for _, l := range lines {
		if l.seg == segs[0].Name {
			firstSeal = l.rec.Seq
		}
	}

	noRecord := func(t *testing.T, dir string, seq uint64, want string) {
		t.Helper()
		line, rec, err := LookupRecord(dir, seq)
		var nr *NoRecordError
		if !errors.As(err, &nr) || line != nil || rec != nil || err.Error() != want {
			t.Errorf("LookupRecord(%d) = %q, %v, %v\nwant %s", seq, line, rec, err, want)
		}
	}
	t.Run("beyond the end", func(t *testing.T) {
		noRecord(t, dir, last+1, "the log has no record seq "+u(last+1)+": it ends at seq "+u(last))
		noRecord(t, dir, last+1000, "the log has no record seq "+u(last+1000)+": it ends at seq "+u(last))
	})
	t.Run("cut at the record", func(t *testing.T) {
		d := copyLog(t, dir)
		editLine(t, d, last-1, func([]byte) []byte { return nil })
		editLine(t, d, last, func([]byte) []byte { return nil })
		noRecord(t, d, last-1, "the log has no record seq "+u(last-1)+": it ends at seq "+u(last-2))
	})
	t.Run("purged", func(t *testing.T) {
		d := copyLog(t, dir)
		if err := os.Remove(filepath.Join(d, segs[0].Name)); err != nil {
			t.Fatal(err)
		}
		noRecord(t, d, 2, "the log has no record seq 2: its first record is seq "+u(second)+" ("+segs[1].Name+"): the records before it were purged at the end of their retention, or deleted")
	})
	t.Run("removed", func(t *testing.T) {
		d := copyLog(t, dir)
		editLine(t, d, second, func([]byte) []byte { return nil })
		editLine(t, d, second+1, func([]byte) []byte { return nil })
		noRecord(t, d, second+1, "the log has no record seq "+u(second+1)+": in "+segs[1].Name+" seq "+u(second-1)+" is followed by seq "+u(second+2)+": records were removed")
		editLine(t, d, firstSeal, func([]byte) []byte { return nil })
		noRecord(t, d, firstSeal, "the log has no record seq "+u(firstSeal)+": "+segs[0].Name+" ends at seq "+u(firstSeal-1)+" and the next segment starts after it: records were removed")
		// The others are still found.
		if _, _, err := LookupRecord(d, third); err != nil {
			t.Error(err)
		}
	})
	t.Run("empty", func(t *testing.T) {
		d := t.TempDir()
		noRecord(t, d, 1, "the log has no record seq 1: the log folder "+d+" holds no segment")
	})
	t.Run("changed", func(t *testing.T) {
		d := copyLog(t, dir)
		a := appended[1]
		// Still a valid record: only the hash tells.
		editLine(t, d, a.seq, func(l []byte) []byte { return bytes.Replace(l, []byte("Fattura"), []byte("Fatture"), 1) })
		line, rec, err := LookupRecord(d, a.seq)
		if err != nil || rec.Seq != a.seq || Hash(line) == a.hash {
			t.Errorf("changed record: %q %v", line, err)
		}
		// No longer a record: the line is given with the error.
		editLine(t, d, a.seq, func(l []byte) []byte { return bytes.Replace(l, []byte(`{"seq"`), []byte(`{ "seq"`), 1) })
		line, rec, err = LookupRecord(d, a.seq)
		if err == nil || rec != nil || !strings.HasPrefix(string(line), `{ "seq"`) || !strings.Contains(err.Error(), "does not decode") {
			t.Errorf("damaged record: %q %v %v", line, rec, err)
		}
		// The records after it are still found.
		if line, _, err := LookupRecord(d, a.seq+1); err != nil || Hash(line) != appended[2].hash {
			t.Errorf("next record: %v", err)
		}
	})
	t.Run("torn", func(t *testing.T) {
		d := copyLog(t, dir)
		p := filepath.Join(d, segs[2].Name)
		os.Chmod(p, 0o644)
		f, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString(`{"seq":` + u(last+1) + `,"pr`)
		f.Close()
		line, rec, err := LookupRecord(d, last+1)
		if err == nil || rec != nil || line == nil || !strings.Contains(err.Error(), "is incomplete") {
			t.Errorf("torn line: %q %v %v", line, rec, err)
		}
		noRecord(t, d, last+2, "the log has no record seq "+u(last+2)+": it ends at seq "+u(last))
	})
	if _, _, err := LookupRecord(dir, 0); err == nil {
		t.Error("seq 0 found")
	}
	if _, _, err := LookupRecord(filepath.Join(dir, "nope"), 1); err == nil {
		t.Error("a missing folder is a log")
	}
}

func u(n uint64) string { return strconv.FormatUint(n, 10) }
