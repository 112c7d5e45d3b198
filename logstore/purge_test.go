package logstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// dailyLog writes 3 records a day at 10:00 from 10 to 14 January 2024:
// four sealed segments (each sealed by the first record of the next day)
// and an open one.
func dailyLog(t *testing.T) (Options, *testClock, []SegmentFile) {
	t.Helper()
	o, clock := testOptions(t, "")
	for d := 10; d <= 14; d++ {
		clock.Set(romeTime(2024, 1, d, 10, 0, 0))
		l := openLog(t, o)
		appendN(t, l, d*10, 3, clock.Now())
		closeLog(t, l)
	}
	segs, _ := ListSegments(o.Dir)
	if len(segs) != 5 {
		t.Fatalf("fixture: %d segments", len(segs))
	}
	return o, clock, segs
}

func TestPurge(t *testing.T) {
	o, clock, segs := dailyLog(t)
	for _, s := range segs[:4] {
		if _, err := os.Stat(filepath.Join(o.Dir, s.Name+indexExt)); err != nil {
			t.Fatalf("fixture: index of %s: %v", s.Name, err)
		}
	}
	// 30 months after noon of 12 January 2024: the segments sealed on the
	// 11th and the 12th at 10:00 are past retention, not the one sealed on the 13th.
	clock.Set(romeTime(2026, 7, 12, 12, 0, 0))
	removed, err := Purge(o)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{segs[0].Name, segs[1].Name}; !reflect.DeepEqual(removed, want) {
		t.Fatalf("removed %v, want %v", removed, want)
	}
	for _, s := range segs {
		_, errLog := os.Stat(filepath.Join(o.Dir, s.Name))
		_, errIdx := os.Stat(filepath.Join(o.Dir, s.Name+indexExt))
		gone := s.Name == removed[0] || s.Name == removed[1]
		if gone != errors.Is(errLog, os.ErrNotExist) || (s.Sealed && gone != errors.Is(errIdx, os.ErrNotExist)) {
			t.Errorf("%s: segment %v, index %v", s.Name, errLog, errIdx)
		}
	}
	lines := readLog(t, o.Dir)
	tomb := firstOf(t, lines, EventPurge)
	if len(tomb.rec.Files) != 2 || !strings.HasPrefix(tomb.rec.Files[1], segs[1].Name+" ") ||
		!strings.HasSuffix(tomb.rec.Files[1], " "+lines[0].rec.Prev) || !strings.Contains(tomb.rec.Detail, "retention 30 months") ||
		tomb.rec.Signed != CheckpointText(EventPurge, tomb.rec.Upto, tomb.rec.Head, mustTime(t, tomb.rec.Time)) {
		t.Errorf("tombstone %s", tomb.line)
	}
	rep := mustVerify(t, o.Dir)
	if rep.FirstSeq != segs[2].First || rep.PurgedUpto != segs[2].First-1 || rep.Purges != 1 {
		t.Errorf("report %+v", rep)
	}

	// Nothing more is due: no tombstone.
	if removed, err := Purge(o); err != nil || len(removed) != 0 {
		t.Errorf("second Purge: %v %v", removed, err)
	}
	if n := len(readLog(t, o.Dir)); n != len(lines) {
		t.Errorf("a Purge that removed nothing wrote %d records", n-len(lines))
	}

	// Two days later, from a running Log.
	clock.Set(romeTime(2026, 7, 14, 12, 0, 0))
	l := openLog(t, o)
	removed, err = l.Purge()
	closeLog(t, l)
	if err != nil || !reflect.DeepEqual(removed, []string{segs[2].Name, segs[3].Name}) {
		t.Fatalf("third Purge: %v %v", removed, err)
	}
	rep = mustVerify(t, o.Dir)
	if rep.FirstSeq != segs[4].First || rep.PurgedUpto != segs[4].First-1 || rep.Purges != 2 {
		t.Errorf("report %+v", rep)
	}
}

func TestPurgeKeepsDamagedSegments(t *testing.T) {
	o, clock, segs := dailyLog(t)
	lines := readLog(t, o.Dir)
	rewrite(t, o.Dir, segs[0].Name, reencode(t, lines[1], func(r *Record) { r.Subject = "altered" }))
	clock.Set(romeTime(2026, 7, 12, 12, 0, 0))
	removed, err := Purge(o)
	var de *DamageError
	if err == nil || !errors.As(err, &de) || de.Segment != segs[0].Name || len(removed) != 0 {
		t.Fatalf("Purge of a damaged segment: %v %v", removed, err)
	}
	if after, _ := ListSegments(o.Dir); len(after) != len(segs) {
		t.Errorf("%d segments left, want %d", len(after), len(segs))
	}
}

// TestPurgeRemovedWithoutTombstone: the same files removed by hand are
// damage.
func TestPurgeRemovedWithoutTombstone(t *testing.T) {
	o, _, segs := dailyLog(t)
	os.Remove(filepath.Join(o.Dir, segs[0].Name))
	rep, err := Verify(o.Dir, nil)
	if err != nil || rep.Problem == nil || rep.Problem.Segment != segs[1].Name || !strings.Contains(rep.Problem.Problem, fmt.Sprintf("records 1..%d missing", segs[1].First-1)) {
		t.Fatalf("Verify: %v %v", rep.Problem, err)
	}
}

func TestPurgeRetention(t *testing.T) {
	o, clock, _ := dailyLog(t)
	o.RetentionMonths = 36
	clock.Set(romeTime(2026, 7, 12, 12, 0, 0))
	if removed, err := Purge(o); err != nil || len(removed) != 0 {
		t.Errorf("Purge with 36 months: %v %v", removed, err)
	}
	o.RetentionMonths = 12
	if _, err := Purge(o); err == nil || !strings.Contains(err.Error(), "12") {
		t.Errorf("Purge with 12 months: %v", err)
	}
}
