package logstore

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// tailPoll is how often Tail looks for new records when following.
const tailPoll = 200 * time.Millisecond

// Tail calls fn for the last n records of the log in dir (none when n is
// 0), in chain order. With follow it then waits for new records and calls
// fn for each as it is written, across segment rotation, until ctx is
// canceled, which ends Tail with a nil error. A last line without LF is a
// record being written: Tail waits for its LF. A complete line that is not
// a record is an error naming its segment and offset, as is a segment
// that shrinks below what was already reported.
func Tail(ctx context.Context, dir string, n int, follow bool, fn func(Hit) error) error {
	return tail(ctx, dir, n, follow, tailPoll, fn)
}

func tail(ctx context.Context, dir string, n int, follow bool, poll time.Duration, fn func(Hit) error) error {
	segs, err := ListSegments(dir)
	if err != nil {
		return err
	}
	// Find where the last n records start, walking back from the end.
	type span struct {
		seg        SegmentFile
		start, end int64
	}
	var spans []span
	var lastEnd int64 // end of the last complete line of the last segment
	need := max(n, 0)
	for i := len(segs) - 1; i >= 0 && (need > 0 || i == len(segs)-1); i-- {
		start, end, count, err := tailStart(dir, segs[i].Name, need)
		if err != nil {
			return err
		}
		if i == len(segs)-1 {
			lastEnd = end
		}
		if count > 0 {
			spans = append(spans, span{segs[i], start, end})
			need -= count
		}
	}
	for i := len(spans) - 1; i >= 0; i-- {
		s := spans[i]
		if _, err := emitLines(dir, s.seg.Name, s.start, s.end, fn); err != nil {
			return err
		}
	}
	if !follow {
		return nil
	}

	// Follow: from the end of the last complete line of the last segment.
	var cur *SegmentFile
	pos := lastEnd
	if len(segs) > 0 {
		cur = &segs[len(segs)-1]
	}
	ticker := time.NewTicker(poll)
	defer ticker.Stop()
	for {
		if cur != nil {
			if pos, err = emitNew(dir, cur.Name, pos, fn); err != nil {
				return err
			}
		}
		segs, err := ListSegments(dir)
		if err != nil {
			return err
		}
		var next *SegmentFile
		for i := range segs {
			if cur == nil || segs[i].First > cur.First {
				next = &segs[i]
				break
			}
		}
		if next != nil {
			// Rotation: what was written to the old segment before the new
			// one appeared (its seal) is read first.
			if cur != nil {
				if _, err = emitNew(dir, cur.Name, pos, fn); err != nil {
					return err
				}
			}
			cur, pos = next, 0
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
	}
}

// tailStart finds, reading the segment backwards, the start of its last
// n complete lines: start, the end of the last complete line, and how
// many complete lines (at most n) lie in between.
func tailStart(dir, name string, n int) (start, end int64, count int, err error) {
	path := filepath.Join(dir, name)
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("log segment: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, 0, 0, fmt.Errorf("log segment: %w", err)
	}
	buf := make([]byte, 64<<10)
	end = -1
	for pos := st.Size(); pos > 0; {
		c := min(int64(len(buf)), pos)
		pos -= c
		b := buf[:c]
		if _, err := f.ReadAt(b, pos); err != nil {
			return 0, 0, 0, fmt.Errorf("log segment %s: %w", path, err)
		}
		for i := len(b) - 1; i >= 0; i-- {
			if b[i] != '\n' {
				continue
			}
			at := pos + int64(i)
			if end < 0 {
				end = at + 1
				if n == 0 {
					return end, end, 0, nil
				}
				continue
			}
			count++ // the line after this LF is complete
			if count == n {
				return at + 1, end, count, nil
			}
		}
	}
	if end < 0 {
		return 0, 0, 0, nil
	}
	if n == 0 {
		return end, end, 0, nil
	}
	return 0, end, count + 1, nil // the first line of the segment
}

// emitLines reports the complete lines of a segment in [start, end) and
// returns the end of the last one.
func emitLines(dir, name string, start, end int64, fn func(Hit) error) (int64, error) {
	path := filepath.Join(dir, name)
	f, err := os.Open(path)
	if err != nil {
		return start, fmt.Errorf("log segment: %w", err)
	}
	defer f.Close()
	pos := start
	var fnErr error
	err = ReadLines(io.NewSectionReader(f, start, end-start), func(off int64, line []byte, complete bool) error {
		if !complete {
			return nil
		}
		r, err := Decode(line)
		if err != nil {
			return fmt.Errorf("%s offset %d: %w (pecgw log verify names the damage)", path, start+off, err)
		}
		if err := fn(Hit{Segment: name, Offset: start + off, Line: line, Record: r}); err != nil {
			fnErr = err
			return err
		}
		pos = start + off + int64(len(line))
		return nil
	})
	if fnErr != nil {
		return pos, fnErr
	}
	return pos, err
}

// emitNew reports the complete lines written to a segment from pos on
// and returns the new position.
func emitNew(dir, name string, pos int64, fn func(Hit) error) (int64, error) {
	st, err := os.Stat(filepath.Join(dir, name))
	if os.IsNotExist(err) {
		return pos, nil // gone (purged): the caller moves on to the next segment
	}
	if err != nil {
		return pos, fmt.Errorf("log segment: %w", err)
	}
	switch {
	case st.Size() < pos:
		return pos, fmt.Errorf("log segment %s shrank to %d octets, below the %d already shown", filepath.Join(dir, name), st.Size(), pos)
	case st.Size() == pos:
		return pos, nil
	}
	return emitLines(dir, name, pos, st.Size(), fn)
}
