package logstore

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// LookupRecord returns the line (as in its segment, with its LF: Hash
// gives its chain hash) and the record with the given seq in the log in
// dir, reading only the segment that holds it: the last whose name gives
// a first seq at or before it (ListSegments). It is what checks a
// receipt's log position (pecgw verify --log, docs/formats.md), and it
// reads a copy as well as the folder of a running log.
//
// When the log has no record with that seq the error is a
// *NoRecordError, which says where the log stands: it ends before the
// seq, its first record present comes after it (purged, or deleted), or
// the seqs around it run past it (records removed). When the line at
// the place of the record does not decode (a changed octet, a torn
// write), LookupRecord returns that line, a nil record and the error, so
// that its hash can still be compared. Other lines that do not decode
// are passed over: the record looked for is judged by itself, and
// logstore.Verify is what judges the whole log.
func LookupRecord(dir string, seq uint64) (line []byte, rec *Record, err error) {
	if seq == 0 {
		return nil, nil, errors.New("log: no record has seq 0: seqs start at 1")
	}
	segs, err := ListSegments(dir)
	if err != nil {
		return nil, nil, err
	}
	if len(segs) == 0 {
		return nil, nil, &NoRecordError{Dir: dir, Seq: seq}
	}
	i := len(segs) - 1
	for i >= 0 && segs[i].First > seq {
		i--
	}
	if i < 0 {
		return nil, nil, &NoRecordError{Dir: dir, Seq: seq, First: segs[0].First, Segment: segs[0].Name}
	}
	seg := segs[i]
	f, err := os.Open(filepath.Join(dir, seg.Name))
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	// last is the seq of the last record read that decoded; the line
	// after it is where the record belongs while last is seq-1.
	last := seg.First - 1
	var next uint64 // the first seq read beyond seq
	read := false   // a record of the segment decoded
	err = ReadLines(bufio.NewReader(f), func(off int64, l []byte, complete bool) error {
		r, derr := Decode(l)
		if derr != nil {
			if last+1 != seq {
				return nil
			}
			line = append([]byte(nil), l...)
			what := "does not decode"
			if !complete {
				what = "is incomplete (no line end: the file was cut, or is being written)"
			}
			return fmt.Errorf("record seq %d: the line at offset %d of %s, after seq %d, %s: %w", seq, off, seg.Name, last, what, derr)
		}
		read = true
		switch {
		case r.Seq == seq:
			line, rec = append([]byte(nil), l...), r
			return errStop
		case r.Seq > seq:
			next = r.Seq
			return errStop
		}
		last = r.Seq
		return nil
	})
	switch {
	case rec != nil:
		return line, rec, nil
	case line != nil:
		return line, nil, err
	case err != nil && err != errStop:
		return nil, nil, fmt.Errorf("segment %s: %w", seg.Name, err)
	}
	e := &NoRecordError{Dir: dir, Seq: seq, First: segs[0].First, Segment: seg.Name, Before: last, After: next}
	if next == 0 && i == len(segs)-1 {
		e.Last, e.End, e.Empty = last, true, !read
		// An empty last segment: the log ends with the segments before.
		for j := i - 1; e.Empty && j >= 0; j-- {
			if n, ok := lastSeq(filepath.Join(dir, segs[j].Name)); ok {
				e.Last, e.Empty = n, false
			}
		}
	}
	return nil, nil, e
}

// lastSeq is the seq of the last record of the segment file p that
// decodes; ok false when none does.
func lastSeq(p string) (seq uint64, ok bool) {
	f, err := os.Open(p)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	_ = ReadLines(bufio.NewReader(f), func(_ int64, l []byte, _ bool) error {
		if r, err := Decode(l); err == nil {
			seq, ok = r.Seq, true
		}
		return nil
	})
	return seq, ok
}

// NoRecordError: the log has no record with seq Seq.
type NoRecordError struct {
	Dir string
	Seq uint64
	// First is the seq of the first segment present (0: the folder holds
	// no segment); Segment the segment that should hold Seq (or the
	// first, when Seq comes before it).
	First   uint64
	Segment string
	// End: the log ends before Seq, its last record is Last; Empty: no
	// segment from Segment, the last, back holds a record that decodes.
	End, Empty bool
	Last       uint64
	// Before and After are the seqs read around the place of Seq in
	// Segment (After 0: none after it in Segment).
	Before, After uint64
}

func (e *NoRecordError) Error() string {
	head := fmt.Sprintf("the log has no record seq %d: ", e.Seq)
	switch {
	case e.First == 0:
		return head + "the log folder " + e.Dir + " holds no segment"
	case e.Seq < e.First:
		return head + fmt.Sprintf("its first record is seq %d (%s): the records before it were purged at the end of their retention, or deleted", e.First, e.Segment)
	case e.End && e.Empty:
		return head + fmt.Sprintf("it ends before it: its segments, up to %s, hold no record", e.Segment)
	case e.End:
		return head + fmt.Sprintf("it ends at seq %d", e.Last)
	case e.After != 0:
		return head + fmt.Sprintf("in %s seq %d is followed by seq %d: records were removed", e.Segment, e.Before, e.After)
	}
	return head + fmt.Sprintf("%s ends at seq %d and the next segment starts after it: records were removed", e.Segment, e.Before)
}
