package logstore

import (
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pecgw/pecgw/signer"
)

// Report is what Verify found.
type Report struct {
	Segments    int    // segment files read
	Records     uint64 // records read and found in order
	Checkpoints int    // checkpoint, seal and purge records whose signature verified
	Seals       int
	Purges      int
	TornTails   int
	FirstSeq    uint64 // of the first record present
	LastSeq     uint64
	FirstTime   string // Time of the first and the last record present
	LastTime    string
	// PurgedUpto: records 1..PurgedUpto were removed at the end of their
	// retention, as a signed purge tombstone in the log states.
	PurgedUpto uint64
	// ChainVerified: roots were given and every signature checked
	// verified, its signer certificate chaining to them.
	ChainVerified bool
	// Problem is the first damage found, nil if none. Verify stops there:
	// the counts above cover the log up to it.
	Problem *DamageError
}

// OK reports whether the log verified.
func (r *Report) OK() bool { return r.Problem == nil }

// Verify reads every segment of the log in dir, in order, and checks that
// nobody altered it (RFC 6109 §2.3: the log is kept unmodified):
//
//   - every line is a record in canonical form (Decode);
//   - seqs run 1, 2, 3… across files with no gap, repeat or reordering,
//     and each segment's name gives the seq of its first record;
//   - each record's prev is the hash of the line before (GenesisPrev for
//     seq 1);
//   - each checkpoint, seal and purge record certifies the record before
//     it (Head, Upto), Signed is CheckpointText of its own fields, and Sig
//     is a valid CMS signature over Signed (with roots: by a certificate
//     that chains to them), made at the record's Time;
//   - every segment but the last ends with a seal, and nothing follows a
//     seal in its file;
//   - each record is of a known format (1 or 2, docs/logformat.md) and none
//     is of an older format than one before it;
//   - when the first segment present does not start at seq 1, a signed
//     purge tombstone names the removed segment whose last record's hash
//     is the prev of the first record present.
//
// A problem is reported in the Report, naming the first bad record; the
// error is only for I/O. When records were removed from the start and
// damage comes before the purge tombstone, the damage is reported.
//
// What Verify cannot see: a change to records after the last checkpoint
// made together with all the records after them. That is why a checkpoint
// is signed every CheckpointInterval.
func Verify(dir string, roots *x509.CertPool) (*Report, error) {
	segs, err := ListSegments(dir)
	if err != nil {
		return nil, err
	}
	v := newVerifier(dir, roots)
	if err := v.run(segs, true); err != nil {
		return nil, err
	}
	return v.rep, nil
}

// where is the place of a record.
type where struct {
	seg string
	off int64
	seq uint64
}

// suspect is a problem whose nature the next record decides.
type suspect struct {
	kind     int // suspectGap or suspectPrev
	at       where
	before   where  // the record before
	expected uint64 // gap: the seq expected at 'at'
	hash     string // hash of the line at 'at'
}

const (
	suspectGap = iota + 1
	suspectPrev
)

type verifier struct {
	dir      string
	roots    *x509.CertPool
	rep      *Report
	started  bool // a record was read
	expected uint64
	head     string
	last     where // the record before the current one
	sus      *suspect
	// The first record present does not start at seq 1: a purge
	// tombstone must account for the records before it.
	startPrev string
	startAt   where
	pending   bool
	format    int // the highest record format seen so far
}

func newVerifier(dir string, roots *x509.CertPool) *verifier {
	return &verifier{dir: dir, roots: roots, rep: &Report{ChainVerified: roots != nil}}
}

// errStop ends a walk once a problem is recorded.
var errStop = errors.New("stop")

// run verifies segs in order; end says whether the last of them is the
// end of the log (it may then be open).
func (v *verifier) run(segs []SegmentFile, end bool) error {
	for i, s := range segs {
		last := end && i == len(segs)-1
		if err := v.segment(s, last); err != nil {
			if err == errStop {
				return nil
			}
			return err
		}
	}
	if v.sus != nil {
		v.resolve(nil, "")
		return nil
	}
	if end && v.pending {
		v.problem(v.startAt, fmt.Sprintf("records 1..%d missing and no purge tombstone accounts for them (removed from the start of the log)", v.startAt.seq-1))
	}
	return nil
}

// problem records the first damage; a suspect before it is reported
// instead, being earlier.
func (v *verifier) problem(at where, what string) {
	if v.sus != nil {
		v.resolve(nil, "")
		return
	}
	if v.rep.Problem == nil {
		v.rep.Problem = &DamageError{Segment: at.seg, Offset: at.off, Seq: at.seq, Problem: what}
	}
}

func (v *verifier) segment(s SegmentFile, last bool) error {
	f, err := os.Open(filepath.Join(v.dir, s.Name))
	if err != nil {
		return fmt.Errorf("log segment: %w", err)
	}
	defer f.Close()
	v.rep.Segments++
	records := 0
	sealed := false
	var end int64
	err = walkLines(f, func(off int64, line []byte, complete, tooLong bool) error {
		at := where{s.Name, off, v.expected}
		if !v.started {
			at.seq = s.First
		}
		if sealed {
			v.problem(at, "record after the seal of the segment (a sealed segment is never written again)")
			return errStop
		}
		if !complete {
			v.problem(at, "incomplete last line: the file was cut, or a crash left a torn write that Open has not yet repaired")
			return errStop
		}
		if tooLong {
			v.problem(at, fmt.Sprintf("line longer than %d octets: not a record (changed or inserted octets)", MaxLine))
			return errStop
		}
		r, err := Decode(line)
		if err != nil {
			v.problem(at, "record does not decode, a byte was changed: "+err.Error())
			return errStop
		}
		at.seq = r.Seq
		hash := Hash(line)
		if v.sus != nil {
			v.resolve(r, hash)
			return errStop
		}
		if !v.started {
			v.started = true
			v.rep.FirstSeq, v.rep.FirstTime = r.Seq, r.Time
			if r.Seq == 1 {
				v.expected, v.head = 1, GenesisPrev
			} else {
				// Records before were purged, or deleted: decided at the end.
				v.expected, v.head = r.Seq, r.Prev
				v.startPrev, v.startAt, v.pending = r.Prev, at, true
			}
		}
		if records == 0 && r.Seq == v.expected && r.Seq != s.First {
			v.problem(at, fmt.Sprintf("the segment's name says its first seq is %d but its first record has seq %d (file renamed)", s.First, r.Seq))
			return errStop
		}
		switch {
		case r.Seq > v.expected && r.Prev == v.head:
			v.problem(at, fmt.Sprintf("seq %d where %d was expected, yet prev links to the record before: the record was changed", r.Seq, v.expected))
			return errStop
		case r.Seq > v.expected:
			v.sus = &suspect{kind: suspectGap, at: at, before: v.last, expected: v.expected, hash: hash}
		case r.Seq < v.expected && hash == v.head:
			v.problem(at, fmt.Sprintf("a copy of record %d was inserted after it", r.Seq))
			return errStop
		case r.Seq < v.expected:
			v.problem(at, fmt.Sprintf("seq %d where %d was expected: a record was inserted or records were reordered", r.Seq, v.expected))
			return errStop
		case r.Seq == 1 && r.Prev != GenesisPrev:
			v.problem(at, "the first record's prev is not the genesis value (64 zeros): the record was changed")
			return errStop
		case r.Prev != v.head:
			v.sus = &suspect{kind: suspectPrev, at: at, before: v.last, hash: hash}
		}
		format := max(r.V, 1)
		if v.sus == nil && format < v.format {
			v.problem(at, fmt.Sprintf("a record of format %d after records of format %d: pecgw never writes an older format after a newer one", format, v.format))
			return errStop
		}
		v.format = max(v.format, format)
		if v.sus == nil {
			if what := v.checkRecord(r); what != "" {
				v.problem(at, what)
				return errStop
			}
		}
		v.head, v.expected, v.last = hash, r.Seq+1, at
		v.rep.Records++
		v.rep.LastSeq, v.rep.LastTime = r.Seq, r.Time
		records++
		sealed = r.Type == EventSeal
		end = off + int64(len(line))
		return nil
	})
	if err != nil {
		if err == errStop {
			return err
		}
		return fmt.Errorf("log segment %s: %w", s.Name, err)
	}
	if records == 0 && !last {
		v.problem(where{s.Name, 0, s.First}, "empty segment that is not the last one")
		return errStop
	}
	if !sealed && (!last || s.Sealed) && records > 0 {
		v.problem(where{s.Name, end, v.expected}, "segment does not end with its seal record (the file was truncated)")
		return errStop
	}
	if v.rep.Problem != nil {
		return errStop
	}
	return nil
}

// resolve decides a suspect with the record after it (nil at the end of
// the log or before a line that is not a record).
func (v *verifier) resolve(next *Record, nextHash string) {
	s := v.sus
	v.sus = nil
	var at where
	var what string
	switch s.kind {
	case suspectGap:
		at = s.at
		if next != nil && next.Seq == s.expected {
			what = fmt.Sprintf("records out of order: seq %d comes before seq %d", s.at.seq, s.expected)
		} else if s.at.off == 0 {
			what = fmt.Sprintf("records %d..%d missing: deleted (a whole segment file, or the start of this one)", s.expected, s.at.seq-1)
		} else {
			what = fmt.Sprintf("records %d..%d missing: deleted", s.expected, s.at.seq-1)
		}
	case suspectPrev:
		if next != nil && next.Seq == s.at.seq+1 && next.Prev != s.hash {
			// Neither link holds: this record itself was changed.
			at = s.at
			what = "the record was changed: its prev does not match the hash of the record before, nor its hash the next record's prev"
		} else {
			at = s.before
			what = fmt.Sprintf("the record was changed: its hash does not match the prev of the next record (seq %d)", s.at.seq)
		}
	}
	if v.rep.Problem == nil {
		v.rep.Problem = &DamageError{Segment: at.seg, Offset: at.off, Seq: at.seq, Problem: what}
	}
}

// checkRecord checks what a record carries beyond the chain: the
// certificate of a checkpoint, seal or purge record, and the files of a
// purge tombstone. It returns the problem, or "".
func (v *verifier) checkRecord(r *Record) string {
	switch r.Type {
	case EventTornTail:
		v.rep.TornTails++
		return ""
	case EventCheckpoint, EventSeal, EventPurge:
	default:
		return ""
	}
	var sigFailed bool
	if what := checkSigned(r, v.head, v.roots, &sigFailed); what != "" {
		if sigFailed {
			v.rep.ChainVerified = false
		}
		return what
	}
	v.rep.Checkpoints++
	switch r.Type {
	case EventSeal:
		v.rep.Seals++
	case EventPurge:
		v.rep.Purges++
		if len(r.Files) == 0 {
			return "purge tombstone without files"
		}
		for _, e := range r.Files {
			name, sum, hash, ok := parsePurgeFile(e)
			if !ok {
				return fmt.Sprintf("purge tombstone: files entry %q is not \"name sha256 last-record-hash\"", e)
			}
			if v.pending && hash == v.startPrev {
				v.pending = false
				v.rep.PurgedUpto = v.startAt.seq - 1
			}
			_, _ = name, sum
		}
	}
	return ""
}

// checkSigned checks a checkpoint, seal or purge record r whose
// predecessor has hash head. It returns the problem, or "", and sets
// *chainFailed when the signature did not verify.
func checkSigned(r *Record, head string, roots *x509.CertPool, chainFailed *bool) string {
	if r.Head != head {
		return fmt.Sprintf("%s: head is not the hash of the record before", r.Type)
	}
	if r.Upto != r.Seq-1 {
		return fmt.Sprintf("%s: upto %d is not the seq of the record before", r.Type, r.Upto)
	}
	at, err := time.Parse(time.RFC3339, r.Time)
	if err != nil {
		return fmt.Sprintf("%s: time: %v", r.Type, err)
	}
	if want := CheckpointText(r.Type, r.Upto, r.Head, at); r.Signed != want {
		return fmt.Sprintf("%s: signed text %q is not %q", r.Type, r.Signed, want)
	}
	der, err := base64.StdEncoding.DecodeString(r.Sig)
	if err != nil {
		return fmt.Sprintf("%s: signature is not base64: %v", r.Type, err)
	}
	res, err := signer.VerifyDetached([]byte(r.Signed), der, roots)
	if err != nil {
		if chainFailed != nil {
			*chainFailed = true
		}
		return fmt.Sprintf("%s: signature does not verify: %v", r.Type, err)
	}
	if !res.SigningTime.Equal(at) {
		return fmt.Sprintf("%s: signing time %s is not the record's time %s", r.Type, res.SigningTime.UTC().Format(time.RFC3339), r.Time)
	}
	return ""
}

// parsePurgeFile splits a purge tombstone's files entry.
func parsePurgeFile(e string) (name, sum, hash string, ok bool) {
	f := strings.Split(e, " ")
	if len(f) != 3 {
		return "", "", "", false
	}
	if _, _, ok := ParseSegmentName(f[0]); !ok || len(f[1]) != 64 || !isHex(f[1]) || len(f[2]) != 64 || !isHex(f[2]) {
		return "", "", "", false
	}
	return f[0], f[1], f[2], true
}
