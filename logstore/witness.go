package logstore

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pecgw/pecgw/signer"
)

// A witness keeps the latest signed checkpoint of the log somewhere the
// log folder's own accidents and attackers do not reach: another volume,
// the shared Redis (docs/logformat.md, "Witnesses"). A log behind its
// witness has lost records: truncated at a record boundary, its newest
// segments deleted, restored from an older snapshot. Neither the chain
// nor the signatures can see that, since what is left is a valid log.
//
// A witness is written after the checkpoint it holds is fsync'd in the
// log, never before, so a log is never behind its witness through a
// crash of its own.
type Witness interface {
	// String names the witness for people: "folder /srv/witness",
	// "redis key pecgw:log-head:mx1".
	String() string
	// Load returns the head the witness holds, ErrNoWitness if none.
	Load(ctx context.Context) (*WitnessHead, error)
	// Store replaces the head the witness holds by h if h.Seq is greater.
	Store(ctx context.Context, h *WitnessHead) error
	// Reset replaces the head whatever it was (AcceptLoss).
	Reset(ctx context.Context, h *WitnessHead) error
}

// ErrNoWitness: the witness holds no head yet (a new log, a new witness).
var ErrNoWitness = errors.New("the witness holds no head")

// WitnessHead is what a witness holds: the line of a signed record
// (checkpoint, seal, purge tombstone) of the log, its seq and its hash.
// The line carries its own signature, so a witness cannot be made up
// without the provider's key.
type WitnessHead struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
	Line string `json:"line"` // without its LF
}

// NewWitnessHead returns the head of a signed record's line.
func NewWitnessHead(seq uint64, line []byte) *WitnessHead {
	return &WitnessHead{Seq: seq, Hash: Hash(line), Line: strings.TrimSuffix(string(line), "\n")}
}

// Check checks that h is a signed record of a log: the line decodes, its
// seq and hash are h's, and its signature verifies (integrity only: the
// certificate is not checked against roots).
func (h *WitnessHead) Check() (*Record, error) {
	r, err := Decode([]byte(h.Line))
	if err != nil {
		return nil, fmt.Errorf("witness head: %w", err)
	}
	if !r.Type.signed() {
		return nil, fmt.Errorf("witness head: a %s record, not a signed one", r.Type)
	}
	if r.Seq != h.Seq || Hash([]byte(h.Line)) != h.Hash {
		return nil, fmt.Errorf("witness head: seq %d hash %s do not match its line (seq %d)", h.Seq, h.Hash, r.Seq)
	}
	if _, err := verifySig(r); err != nil {
		return nil, fmt.Errorf("witness head seq %d: %w", h.Seq, err)
	}
	return r, nil
}

// verifySig checks the signature of a signed record over its Signed text
// (integrity, no roots).
func verifySig(r *Record) (*signer.Result, error) {
	der, err := decodeSig(r.Sig)
	if err != nil {
		return nil, err
	}
	return signer.VerifyDetached([]byte(r.Signed), der, nil)
}

func decodeSig(s string) ([]byte, error) {
	der, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("signature is not base64: %w", err)
	}
	return der, nil
}

// FolderWitness keeps the head in the file <Dir>/<Name>.head, replaced
// atomically (a temporary file, fsync, rename, fsync of the folder).
type FolderWitness struct {
	Dir  string
	Name string // the log's name (one folder may witness several logs)
}

func (w *FolderWitness) path() string { return filepath.Join(w.Dir, w.Name+".head") }

func (w *FolderWitness) String() string { return "folder witness " + w.path() }

// Load reads the head file.
func (w *FolderWitness) Load(context.Context) (*WitnessHead, error) {
	b, err := os.ReadFile(w.path())
	if errors.Is(err, fs.ErrNotExist) {
		if _, derr := os.Stat(w.Dir); derr != nil {
			return nil, fmt.Errorf("%s: %w", w, derr) // a missing volume is not a new witness
		}
		return nil, ErrNoWitness
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", w, err)
	}
	var h WitnessHead
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, fmt.Errorf("%s: not a witness head: %w", w, err)
	}
	return &h, nil
}

// Store writes the head file, unless it holds a later head.
func (w *FolderWitness) Store(ctx context.Context, h *WitnessHead) error {
	if cur, err := w.Load(ctx); err == nil && cur.Seq >= h.Seq {
		return nil
	}
	return w.Reset(ctx, h)
}

// Reset writes the head file.
func (w *FolderWitness) Reset(_ context.Context, h *WitnessHead) error {
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	tmp := filepath.Join(w.Dir, "."+w.Name+".head.tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("%s: %w", w, err)
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, w.path())
	}
	if err == nil {
		err = syncDir(w.Dir)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("%s: %w", w, err)
	}
	return nil
}

// BehindError: the log ends before the head its witness holds, or holds
// another record at the witnessed seq.
type BehindError struct {
	Witness   string
	Head      *WitnessHead
	HeadTime  string
	LogSeq    uint64 // the log's last seq
	LogHash   string // and its hash
	Rewritten bool   // the log has a record at Head.Seq, but another one
}

func (e *BehindError) Error() string {
	what := fmt.Sprintf("records %d..%d are missing (the newest segments deleted, the active segment truncated, or the folder restored from an older copy)", e.LogSeq+1, e.Head.Seq)
	if e.Rewritten {
		what = fmt.Sprintf("the log's record seq %d is not the one the witness saw: the records from there on were rewritten", e.Head.Seq)
	}
	return fmt.Sprintf("log behind its witness: the log ends at seq %d (hash %s); %s holds the signed checkpoint seq %d (hash %s, %s): %s. "+
		"Restore the missing segments from a backup into the log folder; if they are lost for good, `pecgw log accept-loss` records the loss in the log and lets pecgw start",
		e.LogSeq, e.LogHash, e.Witness, e.Head.Seq, e.Head.Hash, e.HeadTime, what)
}

// witnessTimeout bounds one witness read or write.
const witnessTimeout = 5 * time.Second

// CompareWitness compares the log in dir, whose last record has seq
// lastSeq and hash lastHash, with the head h of witness w. It returns a
// *BehindError when the log lacks the witnessed record or holds another.
func CompareWitness(dir string, lastSeq uint64, lastHash string, w Witness, h *WitnessHead) error {
	r, err := h.Check()
	if err != nil {
		return fmt.Errorf("%s: %w", w, err)
	}
	be := &BehindError{Witness: w.String(), Head: h, HeadTime: r.Time, LogSeq: lastSeq, LogHash: lastHash}
	if h.Seq > lastSeq {
		return be
	}
	var hash string
	if h.Seq == lastSeq {
		hash = lastHash
	} else {
		line, err := lineAt(dir, h.Seq)
		if errors.Is(err, errPurged) {
			return nil // older than what retention keeps: nothing to compare
		}
		if err != nil {
			return err
		}
		hash = Hash(line)
	}
	if hash != h.Hash {
		be.Rewritten = true
		return be
	}
	return nil
}

// WitnessCheck is what VerifyWitnesses found about one witness.
type WitnessCheck struct {
	Witness string
	Head    *WitnessHead // nil when the witness holds none or could not be read
	Behind  *BehindError // the log lacks records the witness saw
	Err     error        // the witness could not be read or holds no valid head
}

// VerifyWitnesses compares a verified log (rep, of Verify(dir)) with each
// witness: a log behind one has lost the records after its last, up to
// the witnessed head.
func VerifyWitnesses(dir string, rep *Report, ws []Witness) []WitnessCheck {
	var out []WitnessCheck
	for _, w := range ws {
		c := WitnessCheck{Witness: w.String()}
		h, err := loadHead(w)
		switch {
		case err != nil:
			c.Err = err
		default:
			c.Head = h
			err := CompareWitness(dir, rep.LastSeq, rep.LastHash, w, h)
			if !errors.As(err, &c.Behind) {
				c.Err = err
			}
		}
		out = append(out, c)
	}
	return out
}

// loadHead reads a witness, within witnessTimeout.
func loadHead(w Witness) (*WitnessHead, error) {
	ctx, cancel := context.WithTimeout(context.Background(), witnessTimeout)
	defer cancel()
	return w.Load(ctx)
}

// checkWitnesses is Open's check: a log behind any witness is refused.
// A witness that cannot be read is reported (Warn) and not checked: the
// log is still checked against the others.
func (l *Log) checkWitnesses() error {
	for _, w := range l.o.Witnesses {
		h, err := loadHead(w)
		if errors.Is(err, ErrNoWitness) {
			continue
		}
		if err != nil {
			l.warn("log: %v: the log's head is not checked against it", err)
			continue
		}
		if err := CompareWitness(l.o.Dir, l.seq, l.head, w, h); err != nil {
			var be *BehindError
			if errors.As(err, &be) {
				return err
			}
			l.warn("log: %v: the log's head is not checked against it", err)
		}
	}
	return nil
}

var errPurged = errors.New("record purged")

// lineAt returns the line of the record with the given seq, read from
// the segment that holds it.
func lineAt(dir string, seq uint64) ([]byte, error) {
	segs, err := ListSegments(dir)
	if err != nil {
		return nil, err
	}
	i := len(segs) - 1
	for i >= 0 && segs[i].First > seq {
		i--
	}
	if i < 0 {
		return nil, errPurged
	}
	f, err := os.Open(filepath.Join(dir, segs[i].Name))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var found []byte
	err = ReadLines(bufio.NewReader(f), func(_ int64, line []byte, complete bool) error {
		r, err := Decode(line)
		if err != nil {
			return fmt.Errorf("segment %s: %w", segs[i].Name, err)
		}
		if r.Seq == seq {
			found = append([]byte(nil), line...)
			return errStop
		}
		return nil
	})
	if err != nil && err != errStop {
		return nil, err
	}
	if found == nil {
		return nil, fmt.Errorf("the log has no record seq %d: it is not in %s, which ends before it (the log ends there, or records were removed)", seq, segs[i].Name)
	}
	return found, nil
}

// witnessWriter brings the witnesses up to date in the background, with
// the latest signed record made durable (offer), at most every
// witnessSpacing: a witness lags the log by that much at most, plus its
// own write.
type witnessWriter struct {
	l       *Log
	mu      sync.Mutex // guards latest
	latest  *WitnessHead
	storeMu sync.Mutex // one flush at a time; guards the fields below
	stored  uint64     // seq of the head the witnesses were last given
	failing map[Witness]bool
	wake    chan struct{}
	quit    chan struct{}
	done    chan struct{}
}

const witnessSpacing = 100 * time.Millisecond

func newWitnessWriter(l *Log) *witnessWriter {
	return &witnessWriter{l: l, failing: map[Witness]bool{}, wake: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
}

// start starts the background writer: after Open checked the witnesses
// (until then offer only notes the head).
func (ww *witnessWriter) start() {
	if len(ww.l.o.Witnesses) == 0 {
		close(ww.done)
		return
	}
	go ww.run()
}

// offer notes the latest signed record on disk.
func (ww *witnessWriter) offer(seq uint64, line []byte) {
	if len(ww.l.o.Witnesses) == 0 {
		return
	}
	ww.mu.Lock()
	if ww.latest == nil || seq > ww.latest.Seq {
		ww.latest = NewWitnessHead(seq, line)
	}
	ww.mu.Unlock()
	select {
	case ww.wake <- struct{}{}:
	default:
	}
}

func (ww *witnessWriter) run() {
	defer close(ww.done)
	for {
		select {
		case <-ww.wake:
		case <-ww.quit:
			return
		}
		ww.flush()
		select {
		case <-time.After(witnessSpacing):
		case <-ww.quit:
			return
		}
	}
}

// flush gives every witness the latest head, if newer than the last given.
func (ww *witnessWriter) flush() {
	ww.storeMu.Lock()
	defer ww.storeMu.Unlock()
	ww.mu.Lock()
	h := ww.latest
	ww.mu.Unlock()
	if h == nil || h.Seq <= ww.stored {
		return
	}
	for _, w := range ww.l.o.Witnesses {
		ctx, cancel := context.WithTimeout(context.Background(), witnessTimeout)
		err := w.Store(ctx, h)
		cancel()
		switch {
		case err != nil && !ww.failing[w]:
			ww.failing[w] = true
			ww.l.warn("log: witness not written (retried with every checkpoint): %v", err)
		case err == nil && ww.failing[w]:
			ww.failing[w] = false
			ww.l.warn("log: %s written again (seq %d)", w, h.Seq)
		}
	}
	ww.stored = h.Seq
}

// stop ends the background writer (after a final flush by the caller).
func (ww *witnessWriter) stop() {
	select {
	case <-ww.done:
		return
	default:
	}
	close(ww.quit)
	<-ww.done
}

// InUse reports whether a writer (a running pecgw) holds the log in dir.
func InUse(dir string) bool {
	f, err := os.Open(filepath.Join(dir, lockName))
	if err != nil {
		return false
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
		return errors.Is(err, syscall.EWOULDBLOCK)
	}
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return false
}
