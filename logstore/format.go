// Package logstore keeps the PEC transaction log (RFC 6109 §2.3; DPR
// 68/2005): append-only, hash-chained, fsync'd before anyone is told
// "accepted", sealed and signed, kept 30 months. It is the legal record,
// separate from operational logging.
package logstore

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// Event is the type of a log record: a fixed vocabulary. The PEC events
// take the names of daticert.xml's postacert@tipo (RFC 6109 §4.4); the
// others are the log's own.
type Event string

const (
	// EventAccettazione: a submission was accepted and its acceptance
	// receipt (ricevuta di accettazione) emitted (RFC 6109 §3.1.4).
	EventAccettazione Event = "accettazione"
	// EventNonAccettazione: a submission was refused for formal
	// exceptions and its non-acceptance notice emitted (RFC 6109 §3.1.2).
	EventNonAccettazione Event = "non-accettazione"
	// EventNonAccettazioneVirus: refused for a virus (RFC 6109 §3.1.3).
	EventNonAccettazioneVirus Event = "non-accettazione-virus"
	// EventBustaTrasporto: the transport envelope (busta di trasporto) was
	// built and is being handed off (RFC 6109 §3.1.5). Written before the
	// hand-off (write-ahead).
	EventBustaTrasporto Event = "busta-trasporto"
	// EventHandedOff: the hand-off of the envelope and receipt completed.
	EventHandedOff Event = "handed-off"
	// EventDuplicate: a retry of an already accepted submission was
	// answered with the original identifier; nothing new was emitted.
	EventDuplicate Event = "duplicate"
	// EventAborted: a transaction logged as accepted was not handed off
	// (found after a crash, or the hand-off failed).
	EventAborted Event = "aborted"
	// EventCheckpoint: a signed statement of the chain head.
	EventCheckpoint Event = "checkpoint"
	// EventSeal: the last record of a segment, a checkpoint that closes it.
	EventSeal Event = "seal"
	// EventTornTail: at start, an incomplete last record left by a crash
	// was cut off; this record says what was cut.
	EventTornTail Event = "torn-tail"
	// EventPurge: sealed segments past retention were removed; this
	// signed tombstone keeps their hash so the chain stays verifiable.
	EventPurge Event = "purge"
)

// Known reports whether e is in the vocabulary.
func (e Event) Known() bool {
	switch e {
	case EventAccettazione, EventNonAccettazione, EventNonAccettazioneVirus, EventBustaTrasporto,
		EventHandedOff, EventDuplicate, EventAborted, EventCheckpoint, EventSeal, EventTornTail, EventPurge:
		return true
	}
	return false
}

// Recipient is a recipient of the original message with its type
// (RFC 6109 §2.3 item 4; certificato or esterno as in daticert.xml).
type Recipient struct {
	Addr string `json:"addr"`
	Tipo string `json:"tipo"`
}

// Generated holds the identifiers of the messages generated for the
// event (RFC 6109 §2.3 item 7), without angle brackets.
type Generated struct {
	Envelope string `json:"envelope,omitempty"`
	Receipt  string `json:"receipt,omitempty"`
	Notice   string `json:"notice,omitempty"`
}

// Record is one line of the log. The field order below is the order on
// disk and never changes; new fields are only ever added at the end of
// their group, and readers ignore fields they do not know. Empty fields
// are omitted. docs/logformat.md documents every field.
type Record struct {
	// Chain: set by the log on Append, never by the caller.
	Seq  uint64 `json:"seq"`
	Prev string `json:"prev"` // hex SHA-256 of the previous record's line
	// V is the record format version, set by the log on Append
	// (FormatVersion); 0 on the records of format 1, which did not
	// write it.
	V int `json:"v,omitempty"`

	// RFC 6109 §2.3 items 1-8.
	Time       string      `json:"time"` // the transaction's time reference, RFC 3339 in Italian legal time
	Type       Event       `json:"type"`
	PECID      string      `json:"pec_id,omitempty"` // the PEC identifier (daticert identificativo)
	MsgID      string      `json:"msgid,omitempty"`  // the client's Message-ID, with angle brackets
	Sender     string      `json:"sender,omitempty"`
	Recipients []Recipient `json:"recipients,omitempty"`
	Subject    string      `json:"subject,omitempty"`
	Generated  *Generated  `json:"generated,omitempty"`
	Provider   string      `json:"provider,omitempty"`

	// The submission.
	User       string   `json:"user,omitempty"`      // authenticated user
	ClientIP   string   `json:"client_ip,omitempty"` // client address
	TLS        string   `json:"tls,omitempty"`       // e.g. "TLS1.3"
	Size       int64    `json:"size,omitempty"`      // octets of the submitted message
	SHA256     string   `json:"sha256,omitempty"`    // hex SHA-256 of the envelope, or of the refused message
	Violations []string `json:"violations,omitempty"`
	Detail     string   `json:"detail,omitempty"` // free text: the reason of an abort, what a torn tail cut, …
	// DedupKey is format 1's "<key id> <fingerprint>" of the submission;
	// format 2 writes Dedup instead, and Append refuses it.
	DedupKey string `json:"dedup_key,omitempty"`
	// The acceptance transaction (format 2): the state it reached with
	// this record and the event of the transaction table that led there
	// (docs/architecture.md), and the submission's dedup key, what a
	// retry is recognised by. Records of format 1 get them from
	// Record.Tx (compat.go).
	State TxState   `json:"state,omitempty"`
	Cause TxCause   `json:"cause,omitempty"`
	Dedup *DedupKey `json:"dedup,omitempty"`

	// Checkpoints, seals and purge tombstones.
	Head   string   `json:"head,omitempty"`   // hex hash of the record before this one (the chain head it certifies)
	Upto   uint64   `json:"upto,omitempty"`   // the seq of that record
	Signed string   `json:"signed,omitempty"` // the exact text signed
	Sig    string   `json:"sig,omitempty"`    // base64 DER detached CMS SignedData over Signed
	Files  []string `json:"files,omitempty"`  // purge: "name sha256 last-record-hash" of each removed segment
}

// DedupKey is the dedup key of a submission (package dedup): ID is
// Key.ID() (hex SHA-256 of the sender and the Message-ID), FP is
// Key.Fingerprint() (hex SHA-256 of the forward-paths and the message).
type DedupKey struct {
	ID string `json:"id"`
	FP string `json:"fp"`
}

// FormatVersion is the record format the log writes. Format 1 (no "v"
// field) is still read, verified and reconciled (docs/logformat.md).
const FormatVersion = 2

// GenesisPrev is the Prev of the very first record of a log.
var GenesisPrev = strings.Repeat("0", 64)

// MaxLine bounds one record line, newline included.
const MaxLine = 1 << 20

// Encode renders r as its line: compact JSON in the fixed field order,
// HTML characters not escaped (the log is read by people), a final LF.
// The JSON holds no raw newline (encoding/json escapes control characters
// in strings), so one line is one record.
func Encode(r *Record) ([]byte, error) {
	c := Canonical(r)
	r = &c
	if !r.Type.Known() {
		return nil, fmt.Errorf("log record: unknown event type %q", r.Type)
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(r); err != nil { // Encode appends the LF
		return nil, fmt.Errorf("log record: %w", err)
	}
	if b.Len() > MaxLine {
		return nil, fmt.Errorf("log record: %d octets, more than %d", b.Len(), MaxLine)
	}
	return b.Bytes(), nil
}

// Canonical returns a copy of r whose strings are valid UTF-8, invalid
// octets replaced by U+FFFD. encoding/json would write such an octet as
// the escape \ufffd, which decodes to U+FFFD and re-encodes as the raw
// character: a line Decode refuses as not canonical. Subjects, addresses
// and identifiers come from untrusted clients, so every string goes
// through here before it is encoded.
func Canonical(r *Record) Record {
	c := *r
	v := func(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }
	vs := func(l []string) []string {
		if l == nil {
			return nil
		}
		out := make([]string, len(l))
		for i, s := range l {
			out[i] = v(s)
		}
		return out
	}
	c.Prev, c.Time, c.Type = v(c.Prev), v(c.Time), Event(v(string(c.Type)))
	c.PECID, c.MsgID, c.Sender, c.Subject, c.Provider = v(c.PECID), v(c.MsgID), v(c.Sender), v(c.Subject), v(c.Provider)
	c.User, c.ClientIP, c.TLS, c.SHA256, c.Detail = v(c.User), v(c.ClientIP), v(c.TLS), v(c.SHA256), v(c.Detail)
	c.DedupKey = v(c.DedupKey)
	c.State, c.Cause = TxState(v(string(c.State))), TxCause(v(string(c.Cause)))
	if c.Dedup != nil {
		k := DedupKey{ID: v(r.Dedup.ID), FP: v(r.Dedup.FP)}
		c.Dedup = &k
	}
	c.Head, c.Signed, c.Sig = v(c.Head), v(c.Signed), v(c.Sig)
	c.Violations, c.Files = vs(c.Violations), vs(c.Files)
	if c.Recipients != nil {
		c.Recipients = make([]Recipient, len(r.Recipients))
		for i, x := range r.Recipients {
			c.Recipients[i] = Recipient{Addr: v(x.Addr), Tipo: v(x.Tipo)}
		}
	}
	if c.Generated != nil {
		g := Generated{Envelope: v(r.Generated.Envelope), Receipt: v(r.Generated.Receipt), Notice: v(r.Generated.Notice)}
		c.Generated = &g
	}
	return c
}

// Decode parses one line (with or without its final LF). It is strict:
// a line that Encode could not have produced for the same Record is an
// error, so any change to a stored line is seen.
func Decode(line []byte) (*Record, error) {
	body, ok := bytes.CutSuffix(line, []byte("\n"))
	if !ok {
		body = line
	}
	if len(body) == 0 {
		return nil, errors.New("empty line")
	}
	if len(body)+1 > MaxLine {
		return nil, fmt.Errorf("line of %d octets, more than %d", len(body)+1, MaxLine)
	}
	if bytes.IndexByte(body, '\n') >= 0 {
		return nil, errors.New("newline inside a record")
	}
	var r Record
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("not a log record: %w", err)
	}
	if dec.More() {
		return nil, errors.New("trailing data after the record")
	}
	if !r.Type.Known() {
		return nil, fmt.Errorf("unknown event type %q", r.Type)
	}
	if r.Seq == 0 {
		return nil, errors.New("record without seq")
	}
	if len(r.Prev) != 64 || !isHex(r.Prev) {
		return nil, fmt.Errorf("prev %q is not a SHA-256 in hex", r.Prev)
	}
	if _, err := time.Parse(time.RFC3339, r.Time); err != nil {
		return nil, fmt.Errorf("time %q: %w", r.Time, err)
	}
	if err := checkFormat(&r); err != nil {
		return nil, err
	}
	// Canonical form: re-encoding gives the same bytes.
	again, err := Encode(&r)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(bytes.TrimSuffix(again, []byte("\n")), body) {
		return nil, errors.New("record is not in canonical form")
	}
	return &r, nil
}

// Hash is the chain hash of a record line: hex SHA-256 of the line without
// its final LF. The next record's Prev holds it.
func Hash(line []byte) string {
	sum := sha256.Sum256(bytes.TrimSuffix(line, []byte("\n")))
	return hex.EncodeToString(sum[:])
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// CheckpointText is the exact text a checkpoint, seal or purge record
// signs (Record.Signed): the chain head it certifies, its sequence number
// and the time, so a third party can check it with openssl and the
// provider certificate alone (docs/logformat.md).
func CheckpointText(kind Event, upto uint64, head string, at time.Time) string {
	return fmt.Sprintf("pecgw-log %s v1 upto=%d head=%s time=%s", kind, upto, head, at.Format(time.RFC3339))
}

// Segment files are named <first seq, 20 digits>-<yyyymmdd>.log so that
// names sort in chain order; a sealed segment's index is <name>.idx.
const (
	segmentExt = ".log"
	indexExt   = ".idx"
)

// SegmentName returns the file name of the segment whose first record has
// sequence number first and that belongs to the day of t (Italian time).
func SegmentName(first uint64, day time.Time) string {
	return fmt.Sprintf("%020d-%s%s", first, day.Format("20060102"), segmentExt)
}

// ParseSegmentName returns the first sequence number and day of a segment
// file name.
func ParseSegmentName(name string) (first uint64, day string, ok bool) {
	base, found := strings.CutSuffix(name, segmentExt)
	if !found || len(base) != 29 || base[20] != '-' {
		return 0, "", false
	}
	first, err := strconv.ParseUint(base[:20], 10, 64)
	if err != nil || first == 0 {
		return 0, "", false
	}
	if _, err := time.Parse("20060102", base[21:]); err != nil {
		return 0, "", false
	}
	return first, base[21:], true
}

// ReadLines calls fn for each line of r with its offset. complete is false
// for a last line without LF (a torn write, or a segment being written).
// A line longer than MaxLine is passed cut at MaxLine octets, complete
// false, and reading stops there. fn may stop the walk by returning an
// error, which ReadLines returns.
func ReadLines(r io.Reader, fn func(off int64, line []byte, complete bool) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var off int64
	for {
		line, err := readLine(br)
		if len(line) > 0 {
			complete := line[len(line)-1] == '\n'
			if ferr := fn(off, line, complete); ferr != nil {
				return ferr
			}
			if !complete {
				return nil
			}
			off += int64(len(line))
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// readLine reads up to and including the next LF, at most MaxLine octets.
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		frag, err := br.ReadSlice('\n')
		line = append(line, frag...)
		if len(line) >= MaxLine && (len(line) == 0 || line[len(line)-1] != '\n') {
			return line[:MaxLine], io.EOF
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		return line, err
	}
}
