package logstore

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// Filter selects log records. Every field that is set must match (AND).
type Filter struct {
	// PECID matches the record's pec_id or one of its generated ids
	// (envelope, receipt, notice); angle brackets are optional.
	PECID string
	// MsgID matches the client's Message-ID; angle brackets are optional.
	MsgID string
	// Mailbox matches the sender or any recipient, case-insensitively.
	Mailbox string
	// From (inclusive) and To (exclusive) bound the record's Time.
	From, To time.Time
}

// Hit is one record found by Query or Tail.
type Hit struct {
	Segment string // segment file name
	Offset  int64  // of the line in the segment
	Line    []byte // the line exactly as stored, final LF included
	Record  *Record
}

// normalized returns f with its identifiers in the form stored in the log.
func (f Filter) normalized() Filter {
	f.PECID = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(f.PECID), "<"), ">")
	if m := strings.TrimSpace(f.MsgID); m != "" {
		f.MsgID = "<" + strings.TrimSuffix(strings.TrimPrefix(m, "<"), ">") + ">"
	}
	f.Mailbox = strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(f.Mailbox), "<"), ">"))
	return f
}

// Match reports whether r satisfies f.
func (f Filter) Match(r *Record) bool {
	n := f.normalized()
	return n.match(r)
}

// match is Match for a normalized filter.
func (f *Filter) match(r *Record) bool {
	if f.PECID != "" {
		g := r.Generated
		if r.PECID != f.PECID && (g == nil || (g.Envelope != f.PECID && g.Receipt != f.PECID && g.Notice != f.PECID)) {
			return false
		}
	}
	if f.MsgID != "" && r.MsgID != f.MsgID {
		return false
	}
	if f.Mailbox != "" && strings.ToLower(r.Sender) != f.Mailbox &&
		!slices.ContainsFunc(r.Recipients, func(rc Recipient) bool { return strings.ToLower(rc.Addr) == f.Mailbox }) {
		return false
	}
	if !f.From.IsZero() || !f.To.IsZero() {
		t, err := time.Parse(time.RFC3339, r.Time)
		if err != nil || t.Before(f.From) || (!f.To.IsZero() && !t.Before(f.To)) {
			return false
		}
	}
	return true
}

// digests returns the index key digests of the identifiers in f (already
// normalized), the most selective first.
func (f *Filter) digests() [][32]byte {
	var ds [][32]byte
	if f.PECID != "" {
		ds = append(ds, keyDigest(keyID, f.PECID))
	}
	if f.MsgID != "" {
		ds = append(ds, keyDigest(keyMsgID, f.MsgID))
	}
	if f.Mailbox != "" {
		ds = append(ds, keyDigest(keyMailbox, f.Mailbox))
	}
	return ds
}

// queryStats counts what a query read, for tests and benchmarks.
type queryStats struct {
	indexes  int      // indexes opened that passed the quick check
	segments []string // segment files read (scanned, hashed or probed)
}

func (s *queryStats) read(name string) {
	if s != nil && !slices.Contains(s.segments, name) {
		s.segments = append(s.segments, name)
	}
}

// Query calls fn for each record of the log in dir that matches f, in
// chain order. Sealed segments are looked up in their index when it is
// valid (index.go) and scanned otherwise; the active segment is scanned.
// A last line without LF (being written) is not a record yet and is
// skipped; a complete line that is not a record is an error naming its
// segment and offset. fn may stop the query by returning an error, which
// Query returns.
func Query(dir string, f Filter, fn func(Hit) error) error {
	return query(dir, f, fn, nil)
}

func query(dir string, f Filter, fn func(Hit) error, stats *queryStats) error {
	f = f.normalized()
	segs, err := ListSegments(dir)
	if err != nil {
		return err
	}
	ds := f.digests()
	for _, seg := range segs {
		if seg.Sealed {
			done, err := queryIndexed(dir, seg, &f, ds, fn, stats)
			if err != nil {
				return err
			}
			if done {
				continue
			}
		}
		if err := scanSegment(dir, seg.Name, &f, fn, stats); err != nil {
			return err
		}
	}
	return nil
}

// queryIndexed answers the query for one sealed segment from its index.
// done is false when the index cannot be used and the segment must be
// scanned instead. Errors from fn are returned; problems with the index
// only make it fall back.
func queryIndexed(dir string, seg SegmentFile, f *Filter, ds [][32]byte, fn func(Hit) error, stats *queryStats) (done bool, err error) {
	x := openSegmentIndex(dir, seg)
	if x == nil {
		return false, nil
	}
	defer x.Close()
	if stats != nil {
		stats.indexes++
	}
	path := filepath.Join(dir, seg.Name)
	hashed := false // the whole segment was checked
	if !x.exact {
		// Copied or restored: check it all before trusting the filter.
		stats.read(seg.Name)
		sum, err := segmentSHA256(path)
		if err != nil || sum != x.h.segSHA256 {
			return false, nil
		}
		hashed = true
	}
	if (!f.From.IsZero() && x.h.maxTime < f.From.UnixNano()) || (!f.To.IsZero() && x.h.minTime >= f.To.UnixNano()) {
		return true, nil
	}
	if len(ds) == 0 {
		return false, nil // time range only: scan
	}
	for i := range ds {
		ok, err := x.mayHave(&ds[i])
		if err != nil {
			return false, nil
		}
		if !ok {
			return true, nil
		}
	}
	offs, err := x.offsets(&ds[0])
	if err != nil {
		return false, nil
	}
	if len(offs) == 0 {
		return true, nil
	}
	// Collect first: if a candidate is not a record, or its chunk of the
	// segment is not the one indexed, the whole segment is scanned, with
	// nothing reported twice.
	stats.read(seg.Name)
	sf, err := os.Open(path)
	if err != nil {
		return false, nil
	}
	defer sf.Close()
	verified := make(map[int64]bool)
	var hits []Hit
	for i, off := range offs {
		if i > 0 && off == offs[i-1] {
			continue
		}
		line, err := readLineAt(sf, off)
		if err != nil {
			return false, nil
		}
		if !hashed && !x.checkChunks(sf, off, int64(len(line)), verified) {
			return false, nil
		}
		r, err := Decode(line)
		if err != nil {
			return false, nil
		}
		if f.match(r) {
			hits = append(hits, Hit{Segment: seg.Name, Offset: off, Line: line, Record: r})
		}
	}
	for _, h := range hits {
		if err := fn(h); err != nil {
			return true, err
		}
	}
	return true, nil
}

// readLineAt reads the complete line that starts at off.
func readLineAt(f io.ReaderAt, off int64) ([]byte, error) {
	buf := make([]byte, 4096)
	n := 0
	for {
		got, err := f.ReadAt(buf[n:], off+int64(n))
		if i := bytes.IndexByte(buf[n:n+got], '\n'); i >= 0 {
			return buf[:n+i+1], nil
		}
		n += got
		if err == io.EOF {
			return nil, errors.New("line without LF")
		}
		if err != nil {
			return nil, err
		}
		if n >= MaxLine {
			return nil, fmt.Errorf("line longer than %d octets", MaxLine)
		}
		buf = append(buf, make([]byte, len(buf))...)
	}
}

// scanSegment reads a whole segment and reports the matching records.
func scanSegment(dir, name string, f *Filter, fn func(Hit) error, stats *queryStats) error {
	path := filepath.Join(dir, name)
	stats.read(name)
	file, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("log segment: %w", err)
	}
	defer file.Close()
	pre := newPrefilter(f)
	var hitErr error
	err = ReadLines(file, func(off int64, line []byte, complete bool) error {
		if !complete || !pre.mayMatch(line) {
			return nil
		}
		r, err := Decode(line)
		if err != nil {
			return fmt.Errorf("%s offset %d: %w (pecgw log verify names the damage)", path, off, err)
		}
		if !f.match(r) {
			return nil
		}
		if err := fn(Hit{Segment: name, Offset: off, Line: line, Record: r}); err != nil {
			hitErr = err
			return err
		}
		return nil
	})
	if hitErr != nil {
		return hitErr
	}
	return err
}

// prefilter skips, without decoding, lines that cannot hold the filter's
// identifiers: a record holding one has it in its line verbatim, as long
// as encoding/json writes it unchanged (no quote, backslash, control
// character, U+2028/U+2029 or invalid UTF-8).
type prefilter struct {
	exact [][]byte // case-sensitive
	lower []byte   // ASCII mailbox, compared with the line lower-cased
	buf   []byte
}

func newPrefilter(f *Filter) *prefilter {
	p := &prefilter{}
	for _, s := range []string{f.PECID, f.MsgID} {
		if s != "" && jsonVerbatim(s) {
			p.exact = append(p.exact, []byte(s))
		}
	}
	if f.Mailbox != "" && jsonVerbatim(f.Mailbox) && isASCII(f.Mailbox) {
		p.lower = []byte(f.Mailbox)
	}
	return p
}

func (p *prefilter) mayMatch(line []byte) bool {
	for _, s := range p.exact {
		if !bytes.Contains(line, s) {
			return false
		}
	}
	if p.lower != nil {
		p.buf = append(p.buf[:0], line...)
		for i, c := range p.buf {
			if 'A' <= c && c <= 'Z' {
				p.buf[i] = c + 'a' - 'A'
			}
		}
		if !bytes.Contains(p.buf, p.lower) {
			return false
		}
	}
	return true
}

func jsonVerbatim(s string) bool {
	if !utf8.ValidString(s) || strings.ContainsAny(s, "\"\\\u2028\u2029") {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return false
		}
	}
	return true
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
