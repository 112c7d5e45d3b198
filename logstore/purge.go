package logstore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/pecgw/pecgw/pec"
)

// Purge opens the log with o, removes the segments past retention as
// (*Log).Purge does, and closes it. The log must not be open elsewhere
// (Open's lock): a running server calls (*Log).Purge on its own Log.
func Purge(o Options) (removed []string, err error) {
	l, err := Open(o)
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := l.Close(); err == nil && cerr != nil {
			err = cerr
		}
	}()
	return l.Purge()
}

// Purge removes the sealed segments, and their indexes, whose records are
// all older than RetentionMonths (RFC 6109 §2.3 and DPR 68/2005: 30
// months): by the Time of each segment's last record (its seal), compared
// with Options.Now in Italian time. Only a run of such segments from the
// start of the log is removed, oldest first, so the log stays one chain.
//
// Before removing anything it verifies the chain and signatures of those
// segments (a damaged one is not removed: it is evidence) and appends a
// signed purge tombstone to the active segment: Files holds "name
// sha256-of-the-file hash-of-its-last-record" for each, so Verify can
// still link the first record left to the chain, and the removed files
// can be matched against an archived copy. A crash after the tombstone
// leaves files that a later Purge removes (with a new tombstone).
func (l *Log) Purge() (removed []string, err error) {
	l.purgeMu.Lock()
	defer l.purgeMu.Unlock()
	dir := l.o.Dir
	now := l.o.Now()
	cutoff := now.In(pec.Rome()).AddDate(0, -l.o.RetentionMonths, 0)
	segs, err := ListSegments(dir)
	if err != nil {
		return nil, err
	}
	var run []SegmentFile
	var lastSeal *Record
	for _, s := range segs {
		if !s.Sealed {
			break
		}
		off, line, err := lastLine(filepath.Join(dir, s.Name))
		if err != nil {
			return nil, fmt.Errorf("purge: %w", err)
		}
		r, derr := Decode(line)
		if derr != nil || r.Type != EventSeal {
			return nil, &DamageError{Segment: s.Name, Offset: off, Seq: s.First, Problem: "sealed segment does not end with a readable seal record"}
		}
		t, err := time.Parse(time.RFC3339, r.Time)
		if err != nil || !t.Before(cutoff) {
			break
		}
		run, lastSeal = append(run, s), r
	}
	if len(run) == 0 {
		return nil, nil
	}
	v := newVerifier(dir, nil)
	if err := v.run(run, false); err != nil {
		return nil, fmt.Errorf("purge: %w", err)
	}
	if v.rep.Problem != nil {
		return nil, fmt.Errorf("purge refused, the segments to remove are damaged: %w", v.rep.Problem)
	}
	entries := make([]string, 0, len(run))
	for _, s := range run {
		sum, err := fileSHA256(filepath.Join(dir, s.Name))
		if err != nil {
			return nil, fmt.Errorf("purge: %w", err)
		}
		_, line, err := lastLine(filepath.Join(dir, s.Name))
		if err != nil {
			return nil, fmt.Errorf("purge: %w", err)
		}
		entries = append(entries, s.Name+" "+sum+" "+Hash(line))
	}
	tomb := &Record{Type: EventPurge, Files: entries,
		Detail: fmt.Sprintf("retention %d months (RFC 6109 §2.3, DPR 68/2005): removed %d segments, records %d..%d, the last of them sealed %s, before %s",
			l.o.RetentionMonths, len(run), run[0].First, lastSeal.Seq, lastSeal.Time, cutoff.Format(time.RFC3339))}
	if _, err := l.appendOwn(tomb, true); err != nil {
		return nil, fmt.Errorf("purge tombstone: %w", err)
	}
	for _, s := range run {
		for _, name := range []string{s.Name, s.Name + indexExt} {
			if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return removed, fmt.Errorf("purge: %w", err)
			}
		}
		// Oldest first, each removal durable before the next: a crash
		// never leaves a hole in the middle of the chain.
		if err := syncDir(dir); err != nil {
			return removed, fmt.Errorf("purge: %w", err)
		}
		removed = append(removed, s.Name)
	}
	return removed, nil
}
