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
	LastHash    string // hash of the last record read
	// PurgedUpto: records 1..PurgedUpto were removed at the end of their
	// retention, as a signed purge tombstone in the log states.
	PurgedUpto uint64
	// ChainVerified: roots were given and every signature checked
	// verified, its signer certificate chaining to them.
	ChainVerified bool
	// Unsigned: the log does not end with a signed record certifying the
	// record before it, so records From..To are protected by the chain
	// only (Problem says so too). A log stopped cleanly never ends so; a
	// running one does for a few milliseconds at most (Options.CheckpointInterval).
	Unsigned *SeqRange
	// Problem is the first damage found, nil if none. Verify stops there:
	// the counts above cover the log up to it.
	Problem *DamageError
}

// SeqRange is the records From..To.
type SeqRange struct{ From, To uint64 }

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
//   - each seal and purge record certifies the record before it (Head,
//     Upto), each checkpoint a record after the one the signed record
//     before it certified, at most the record before it; Signed is
//     CheckpointText of its own fields, and Sig is a valid CMS signature
//     over Signed (with roots: by a certificate that chains to them), made
//     at the record's Time;
//   - the log ends with a signed record that certifies the record before
//     it: no record is protected by the chain alone (Report.Unsigned);
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
// What Verify cannot see alone: records removed from the end up to a
// signed record (the log is then shorter, but valid). That is what the
// witnesses are for (witness.go, VerifyWitnesses).
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
	// The records after the head the last signed record certified
	// (signedUpto): their hashes and places, for the checkpoint that
	// certifies one of them, and for the report of an unsigned tail.
	signedUpto uint64
	winFirst   uint64 // seq of win[0]
	win        []string
	winAt      []where
	lastSigned bool // the last record read is signed and certifies the one before
}

// maxWindow bounds the records kept for a checkpoint to certify: pecgw
// never writes more than CheckpointEvery (at most 1000000) between two.
const maxWindow = 2_000_000

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
	if end && v.rep.Problem == nil && v.started && !v.lastSigned {
		from := v.signedUpto + 1
		at := v.last
		if i := from - v.winFirst; len(v.win) > 0 && from >= v.winFirst && i < uint64(len(v.winAt)) {
			at = v.winAt[i]
		}
		v.rep.Unsigned = &SeqRange{From: max(from, v.rep.FirstSeq), To: v.rep.LastSeq}
		v.problem(at, fmt.Sprintf("records %d..%d are not covered by a signed checkpoint: appended or changed by someone without the provider's key, "+
			"or left by a stop between a write and its checkpoint or by a pecgw older than record format 2 with a checkpoint per batch (pecgw serve signs them at its next start, saying so)",
			v.rep.Unsigned.From, v.rep.Unsigned.To))
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
		v.remember(r, hash, at)
		v.rep.Records++
		v.rep.LastSeq, v.rep.LastTime, v.rep.LastHash = r.Seq, r.Time, hash
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
	head, what := v.certified(r)
	if what != "" {
		return what
	}
	if what := checkSigned(r, head, v.roots, &sigFailed); what != "" {
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

// remember keeps the hash of a record that a later checkpoint may
// certify, and forgets those a signed record covered.
func (v *verifier) remember(r *Record, hash string, at where) {
	if len(v.win) == 0 {
		v.winFirst = r.Seq
	}
	v.win, v.winAt = append(v.win, hash), append(v.winAt, at)
	v.lastSigned = r.Type.signed() && r.Upto == r.Seq-1
	if r.Type.signed() && r.Upto >= v.winFirst {
		drop := min(r.Upto-v.winFirst+1, uint64(len(v.win)))
		v.win, v.winAt = v.win[drop:], v.winAt[drop:]
		v.winFirst += drop
	}
	if r.Type.signed() {
		v.signedUpto = r.Upto
	}
	if len(v.win) > maxWindow {
		drop := len(v.win) - maxWindow/2
		v.win, v.winAt = append([]string(nil), v.win[drop:]...), append([]where(nil), v.winAt[drop:]...)
		v.winFirst += uint64(drop)
	}
}

// certified returns the hash of the record a signed record r certifies,
// or the problem: a seal or purge tombstone certifies the record before
// it; a checkpoint (signed in the background while the writer went on) a
// record after the one the signed record before it certified, and at
// most the record before it.
func (v *verifier) certified(r *Record) (string, string) {
	if r.Upto == r.Seq-1 {
		return v.head, ""
	}
	if r.Type != EventCheckpoint || r.Upto >= r.Seq {
		return "", fmt.Sprintf("%s: upto %d is not the seq of the record before", r.Type, r.Upto)
	}
	if v.started && r.Upto <= v.signedUpto && v.signedUpto > 0 {
		return "", fmt.Sprintf("%s: certifies seq %d, which the signed record before it already covered (pecgw never goes back)", r.Type, r.Upto)
	}
	if r.Upto < v.winFirst || len(v.win) == 0 {
		return "", fmt.Sprintf("%s: certifies seq %d, which is not among the records read since the last signed one", r.Type, r.Upto)
	}
	return v.win[r.Upto-v.winFirst], ""
}

// checkSigned checks a checkpoint, seal or purge record r that certifies
// the record whose hash is head. It returns the problem, or "", and sets
// *chainFailed when the signature did not verify.
func checkSigned(r *Record, head string, roots *x509.CertPool, chainFailed *bool) string {
	if r.Head != head {
		return fmt.Sprintf("%s: head is not the hash of the record it certifies (seq %d)", r.Type, r.Upto)
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
