package logstore

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// DamageError says where the log is damaged: the segment file, the
// offset of the record in it, the seq of the record there (or the seq
// that was expected there, when the octets are not a record) and what is
// wrong.
type DamageError struct {
	Segment string
	Offset  int64
	Seq     uint64
	Problem string
}

func (e *DamageError) Error() string {
	return fmt.Sprintf("segment %s offset %d seq %d: %s", e.Segment, e.Offset, e.Seq, e.Problem)
}

// Problems found by Open. Verify's are in verify.go.
const (
	problemPrevMismatch = "prev does not match the hash of the record before (a record was changed, deleted or inserted)"
)

// recover reads the state of the log in l.o.Dir before the writer starts
// (Open). Only the active segment is read in full, with the last line of
// the segment before it for the link; sealed segments are read-only and
// checked by Verify, not at every start.
//
// A bad or incomplete last line is what a crash in the middle of a write
// leaves: it is cut off (ftruncate, fsync) only when nothing valid
// follows it, and a torn-tail record says what was cut. A complete valid
// record is never dropped. Anything else (damage followed by valid
// records, a seq gap, a prev mismatch, a sealed segment that is still
// writable) is a *DamageError, and nothing is written.
//
// Between the cut and the torn-tail record there is a window: a crash
// there loses the note (not the records, which were never acknowledged).
func (l *Log) recover() error {
	dir := l.o.Dir
	segs, err := ListSegments(dir)
	if err != nil {
		return err
	}
	if len(segs) == 0 {
		return nil // a new log: the first record gets GenesisPrev
	}
	for _, s := range segs[:len(segs)-1] {
		if !s.Sealed {
			return &DamageError{Segment: s.Name, Seq: s.First,
				Problem: "segment is writable but is not the last one (a sealed segment is read-only, 0444, and never written again)"}
		}
	}
	last := segs[len(segs)-1]

	if last.Sealed {
		// Rotation sealed it and a crash (or a quiet night) came before the
		// next segment: the next record starts a new one.
		seq, head, line, err := readSeal(dir, last)
		if err != nil {
			return err
		}
		l.seq, l.head = seq, head
		l.signedSeq, l.signedUpto, l.signedLine = seq, seq-1, line
		l.indexIfMissing(last.Name)
		return nil
	}

	// The link from the segment before (RFC 6109 §2.3: the log is kept
	// unmodified, so the chain must run across files).
	havePrev := false
	prevSeq, prevHash := uint64(0), GenesisPrev
	var prevLine []byte
	if len(segs) >= 2 {
		p := segs[len(segs)-2]
		prevSeq, prevHash, prevLine, err = readSeal(dir, p)
		if err != nil {
			return err
		}
		havePrev = true
		l.indexIfMissing(p.Name)
	} else if last.First == 1 {
		havePrev = true
	}
	if havePrev && prevSeq+1 != last.First {
		return &DamageError{Segment: last.Name, Seq: last.First,
			Problem: fmt.Sprintf("segment starts at seq %d but the segment before ends at seq %d (records missing or repeated)", last.First, prevSeq)}
	}

	path := filepath.Join(dir, last.Name)
	rf, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("log segment: %w", err)
	}
	defer rf.Close()
	expected, head := last.First, prevHash
	var (
		records  int
		lastType Event
		// The last signed record: the seal of the segment before, until
		// one is read here.
		signedSeq, signedUpto       = prevSeq, prevSeq - min(prevSeq, 1)
		signedLine                  = prevLine
		badOff                int64 = -1
		badWhy                string
		endOff                int64
		format                int // the highest record format read so far
	)
	err = walkLines(rf, func(off int64, line []byte, complete, tooLong bool) error {
		if badOff >= 0 {
			if complete && !tooLong {
				if _, derr := Decode(line); derr == nil {
					return &DamageError{Segment: last.Name, Offset: badOff, Seq: expected,
						Problem: fmt.Sprintf("%s, and valid records follow it (at offset %d): this is not a torn last write", badWhy, off)}
				}
			}
			return nil
		}
		var r *Record
		switch {
		case tooLong:
			badWhy = fmt.Sprintf("line longer than %d octets", MaxLine)
		case !complete:
			badWhy = "incomplete last line"
		default:
			var derr error
			if r, derr = Decode(line); derr != nil {
				badWhy = "unreadable record: " + derr.Error()
			}
		}
		if r == nil {
			badOff = off
			return nil
		}
		if lastType == EventSeal {
			return &DamageError{Segment: last.Name, Offset: off, Seq: r.Seq, Problem: "record after the seal of the segment"}
		}
		if r.Seq != expected {
			return &DamageError{Segment: last.Name, Offset: off, Seq: r.Seq,
				Problem: fmt.Sprintf("seq %d where %d was expected (a record was deleted, inserted or moved)", r.Seq, expected)}
		}
		if (havePrev || records > 0) && r.Prev != head {
			return &DamageError{Segment: last.Name, Offset: off, Seq: r.Seq, Problem: problemPrevMismatch}
		}
		if max(r.V, 1) < format {
			return &DamageError{Segment: last.Name, Offset: off, Seq: r.Seq,
				Problem: fmt.Sprintf("a record of format %d after records of format %d", max(r.V, 1), format)}
		}
		format = max(format, r.V, 1)
		head = Hash(line)
		expected++
		records++
		if r.Type.signed() {
			signedSeq, signedUpto, signedLine = r.Seq, r.Upto, append([]byte(nil), line...)
		}
		lastType = r.Type
		endOff = off + int64(len(line))
		return nil
	})
	if err != nil {
		var de *DamageError
		if errors.As(err, &de) {
			return err
		}
		return fmt.Errorf("log segment %s: %w", last.Name, err)
	}
	if records == 0 && !havePrev {
		return &DamageError{Segment: last.Name, Seq: last.First,
			Problem: "the only segment has no record and does not start at seq 1: the chain cannot be continued"}
	}
	if badOff >= 0 && lastType == EventSeal {
		return &DamageError{Segment: last.Name, Offset: badOff, Seq: expected, Problem: badWhy + " after the seal of the segment"}
	}
	l.seq, l.head = expected-1, head
	l.signedSeq, l.signedUpto, l.signedLine = signedSeq, signedUpto, signedLine

	if lastType == EventSeal {
		// A crash between writing the seal and making the file read-only:
		// finish the sealing; nothing is written into the log.
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return fmt.Errorf("log segment: %w", err)
		}
		l.f, l.segName = f, last.Name
		return l.finishSeal()
	}

	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("log segment: %w", err)
	}
	l.f, l.segName, l.segDay, l.segSize, l.segRecords = f, last.Name, last.Day, endOff, records
	l.durSeg, l.durOff = last.Name, endOff
	if badOff < 0 {
		return nil
	}
	return l.cutTornTail(rf, badOff, badWhy)
}

// cutTornTail cuts the active segment at off and appends a torn-tail
// record saying what was cut: offset, octets and their SHA-256.
func (l *Log) cutTornTail(rf *os.File, off int64, why string) error {
	info, err := rf.Stat()
	if err != nil {
		return fmt.Errorf("log segment: %w", err)
	}
	n := info.Size() - off
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(rf, off, n)); err != nil {
		return fmt.Errorf("log segment %s: %w", l.segName, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if err := l.f.Truncate(off); err != nil {
		return fmt.Errorf("cut the torn tail of %s: %w", l.segName, err)
	}
	if err := l.f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", l.segName, err)
	}
	req := l.getRequest()
	defer l.putRequest(req)
	req.own = &Record{Type: EventTornTail,
		Detail: fmt.Sprintf("cut %d octets at offset %d of %s, sha256 %s: %s left by a crash, no complete valid record after it", n, off, l.segName, sum, why)}
	l.commit([]*request{req})
	<-req.done
	if req.err != nil {
		return req.err
	}
	l.warn("log: torn tail cut: %s", req.ownWritten.Detail)
	return nil
}

// readSeal reads the last line of a segment that must end with its seal
// and returns the seal's seq, hash and line.
func readSeal(dir string, s SegmentFile) (uint64, string, []byte, error) {
	off, line, err := lastLine(filepath.Join(dir, s.Name))
	if err != nil {
		return 0, "", nil, fmt.Errorf("log segment %s: %w", s.Name, err)
	}
	if len(line) == 0 {
		return 0, "", nil, &DamageError{Segment: s.Name, Seq: s.First, Problem: "sealed segment is empty"}
	}
	if line[len(line)-1] != '\n' {
		return 0, "", nil, &DamageError{Segment: s.Name, Offset: off, Seq: s.First, Problem: "sealed segment ends with an incomplete line (truncated)"}
	}
	r, err := Decode(line)
	if err != nil {
		return 0, "", nil, &DamageError{Segment: s.Name, Offset: off, Seq: s.First, Problem: "last record of a sealed segment: " + err.Error()}
	}
	if r.Type != EventSeal {
		return 0, "", nil, &DamageError{Segment: s.Name, Offset: off, Seq: r.Seq, Problem: "sealed segment does not end with a seal record (truncated)"}
	}
	return r.Seq, Hash(line), line, nil
}

// lastLine returns the last line of a file and its offset; the line
// lacks its LF if the file does not end with one.
func lastLine(path string) (int64, []byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, nil, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return 0, nil, err
	}
	size := info.Size()
	for chunk := int64(64 << 10); ; chunk = MaxLine + 1 {
		start := max(size-chunk, 0)
		b := make([]byte, size-start)
		if _, err := f.ReadAt(b, start); err != nil && err != io.EOF {
			return 0, nil, err
		}
		body := bytes.TrimSuffix(b, []byte("\n"))
		if i := bytes.LastIndexByte(body, '\n'); i >= 0 {
			return start + int64(i) + 1, b[i+1:], nil
		}
		if start == 0 || chunk > MaxLine {
			return start, b, nil
		}
	}
}

// indexIfMissing starts the index of a sealed segment when a crash came
// before it was written.
func (l *Log) indexIfMissing(name string) {
	if _, err := os.Stat(filepath.Join(l.o.Dir, name+indexExt)); errors.Is(err, fs.ErrNotExist) {
		l.startIndex(name)
	}
}

// walkLines calls fn for each line of r with its offset, like ReadLines,
// but it does not stop at an over-long line: such a line is passed cut
// at MaxLine octets with tooLong set, and the walk goes on after its LF.
// complete is false only for a last line without LF. line is reused.
func walkLines(r io.Reader, fn func(off int64, line []byte, complete, tooLong bool) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var off int64
	var line []byte
	for {
		line = line[:0]
		tooLong := false
		var n int64
		for {
			frag, err := br.ReadSlice('\n')
			n += int64(len(frag))
			if !tooLong {
				if len(line)+len(frag) > MaxLine {
					tooLong = true
					line = append(line, frag[:MaxLine-len(line)]...)
				} else {
					line = append(line, frag...)
				}
			}
			if err == bufio.ErrBufferFull {
				continue
			}
			if err == io.EOF {
				if n > 0 {
					return fn(off, line, false, tooLong)
				}
				return nil
			}
			if err != nil {
				return err
			}
			break
		}
		if err := fn(off, line, true, tooLong); err != nil {
			return err
		}
		off += n
	}
}
