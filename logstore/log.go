package logstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/pecgw/pecgw/internal/durable"
	"github.com/pecgw/pecgw/pec"
)

// CheckpointSigner signs the text of checkpoints, seals and purge
// tombstones: a detached CMS SignedData (DER) over data, with signingTime
// at. *signer.Signer is one.
type CheckpointSigner interface {
	SignDetached(data []byte, at time.Time) ([]byte, error)
}

// Options configures a Log. Zero values take the defaults written beside
// each field.
type Options struct {
	Dir      string           // the log folder; it must exist (a missing volume must not start a new log)
	Signer   CheckpointSigner // required: signs checkpoints, seals and purge tombstones
	Provider string           // provider name (gestore, RFC 6109 §2.3 item 8), written in the log's own records
	// CheckpointInterval is the least time between two checkpoint
	// signatures: a record is covered by a signed checkpoint at most
	// CheckpointInterval plus one signature and one fsync after its Append
	// returned (docs/logformat.md, "Checkpoints"). Default 20ms; at most 1s.
	CheckpointInterval time.Duration
	// CheckpointEvery bounds the records not yet covered by a checkpoint:
	// the writer waits for the signature in flight rather than go beyond
	// it. Default 1000.
	CheckpointEvery int
	MaxSegmentSize  int64            // octets of records in a segment before it is sealed; default 256 MiB
	RetentionMonths int              // default 30; less than 30 is an error (RFC 6109 §2.3)
	Now             func() time.Time // default time.Now
	Warn            func(msg string) // non-fatal problems (index not written, checkpoint not signed); nil = ignore
	// Witnesses keep the latest signed checkpoint outside the log folder
	// (witness.go). Open refuses a log behind any of them; each is written
	// after the checkpoint is on disk, never before.
	Witnesses []Witness
	// Broken is called once when a write or fsync fails and the log stops
	// taking records; Healed once when it took them again (heal.go).
	Broken func(err error)
	Healed func(detail string)
}

// Defaults of Options.
const (
	DefaultCheckpointEvery    = 1000
	DefaultCheckpointInterval = 20 * time.Millisecond
	MaxCheckpointInterval     = time.Second
	DefaultMaxSegmentSize     = 256 << 20
	// MinRetentionMonths is the legal minimum: RFC 6109 §2.3 and DPR
	// 68/2005 keep the log 30 months.
	MinRetentionMonths = 30
)

func (o Options) withDefaults() (Options, error) {
	var errs []error
	if o.Dir == "" {
		errs = append(errs, errors.New("log: no folder (Dir)"))
	}
	if o.Signer == nil {
		errs = append(errs, errors.New("log: no checkpoint signer (Signer)"))
	}
	if o.CheckpointEvery == 0 {
		o.CheckpointEvery = DefaultCheckpointEvery
	}
	if o.CheckpointEvery < 0 {
		errs = append(errs, fmt.Errorf("log: CheckpointEvery %d is negative", o.CheckpointEvery))
	}
	if o.CheckpointInterval == 0 {
		o.CheckpointInterval = DefaultCheckpointInterval
	}
	if o.CheckpointInterval < 0 || o.CheckpointInterval > MaxCheckpointInterval {
		errs = append(errs, fmt.Errorf("log: CheckpointInterval %s is not between 0 and %s (records must not stay unsigned longer)", o.CheckpointInterval, MaxCheckpointInterval))
	}
	if o.MaxSegmentSize == 0 {
		o.MaxSegmentSize = DefaultMaxSegmentSize
	}
	if o.MaxSegmentSize < 0 {
		errs = append(errs, fmt.Errorf("log: MaxSegmentSize %d is negative", o.MaxSegmentSize))
	}
	if o.RetentionMonths == 0 {
		o.RetentionMonths = MinRetentionMonths
	}
	if o.RetentionMonths < MinRetentionMonths {
		// RFC 6109 §2.3: "the data must be kept for 30 months".
		errs = append(errs, fmt.Errorf("log: RetentionMonths %d is less than the legal %d months (RFC 6109 §2.3, DPR 68/2005)", o.RetentionMonths, MinRetentionMonths))
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o, errors.Join(errs...)
}

// Log is the writer of a transaction log folder. One process at a time
// holds it (a lock file, see lockName). Its methods are safe for
// concurrent use.
//
// Every record goes through one writer goroutine (group commit): it takes
// all the records queued, gives them their seq and prev, writes them with
// one write(2) and one fsync, and only then releases their Appends. The
// head so written is signed in the background and its checkpoint goes
// into the next write (sign.go): nothing stays unsigned at rest longer
// than CheckpointInterval and one signature.
//
// After a failed write or fsync the Log does not go on blindly: Appends
// fail until it has cut what was written after the last good fsync and
// read its files again as a start does (heal.go). Retrying the fsync
// itself is wrong: Linux may have dropped the dirty pages and cleared the
// error, so a second fsync "succeeds" over lost data (the PostgreSQL
// fsync-gate, 2018).
type Log struct {
	o    Options
	lock *os.File

	mu       sync.Mutex // guards the fields below
	queue    []*request
	spare    []*request
	closed   bool
	broken   error
	closeErr error

	wake    chan struct{} // capacity 1: something was queued
	stop    chan struct{} // closed by Close
	done    chan struct{} // closed when the writer goroutine has ended
	indexWG sync.WaitGroup
	pool    sync.Pool  // of *request
	once    sync.Once  // Close
	purgeMu sync.Mutex // one purge at a time
	warnMu  sync.Mutex

	// Owned by the writer goroutine (and by Open before it starts).
	f          *os.File // the active segment; nil when a new one is to be created
	segName    string
	segDay     string // yyyymmdd, Italian time
	segSize    int64  // octets in the file, written or in buf
	segRecords int    // records in the active segment, written or in buf
	seq        uint64 // seq of the last record, written or in buf
	head       string // hash of the last record, written or in buf
	buf        []byte
	// The signed records (sign.go): the seq of the last one and the seq
	// it certifies (upto); the records after upto are not yet covered.
	signedSeq, signedUpto uint64
	signedLine            []byte // the last signed record's line, for the witnesses
	gen                   uint64 // bumped by a seal, a purge, a heal: a signature started before is stale
	signing               bool   // a checkpoint signature is in flight
	sigDone               chan sigResult
	lastSign              time.Time // monotonic: when the last checkpoint signature started
	signFailing           bool      // the last signature failed (warned once)
	readyCk               *Record   // a signed checkpoint to write first in the next batch
	startNote             string    // said by the first checkpoint when Open found the tail unsigned
	// The octets known durable: the file and its size at the last good
	// fsync. A heal cuts what follows.
	durSeg string
	durOff int64
	// Heal state (heal.go).
	failedAt  time.Time
	healDelay time.Duration
	failing   bool     // between a failure and the first good write of callers' records
	notes     []string // what the heals of this failure cut
	witness   *witnessWriter
}

// request is one record waiting for the writer.
type request struct {
	// tail is the record's line after its chain fields: Encode of the
	// record with Seq 0 and Prev "", without the `{"seq":0,"prev":""`
	// prefix. The writer puts the real seq and prev in front.
	tail []byte
	own  *Record // a log's own record (torn-tail, purge) instead of tail
	sign bool    // own is signed like a checkpoint (purge)

	seq        uint64
	prev, hash string
	err        error
	done       chan struct{} // capacity 1, reused
	state      int           // guarded by Log.mu
	encBuf     bytes.Buffer
	enc        *json.Encoder
	ownWritten *Record
}

const (
	reqQueued = iota
	reqTaken
	reqWithdrawn
)

func newRequest() any {
	r := &request{done: make(chan struct{}, 1)}
	r.enc = json.NewEncoder(&r.encBuf)
	r.enc.SetEscapeHTML(false)
	return r
}

// getRequest returns a request from the Log's pool: requests, their
// channel and their encoding buffer are reused, so an Append allocates
// little beyond what encoding/json does.
func (l *Log) getRequest() *request {
	r := l.pool.Get().(*request)
	r.tail, r.own, r.sign, r.seq, r.prev, r.hash, r.err, r.state, r.ownWritten = nil, nil, false, 0, "", "", nil, reqQueued, nil
	r.encBuf.Reset()
	return r
}

func (l *Log) putRequest(r *request) {
	if r.encBuf.Cap() > 64<<10 {
		return // do not keep big buffers around
	}
	l.pool.Put(r)
}

// lockName is the lock file in the log folder: one writer per folder.
const lockName = "lock"

// ErrClosed is returned by Append after Close.
var ErrClosed = errors.New("log: closed")

// Open opens the log in o.Dir (an empty folder starts a new log) and
// recovers it after a crash (recover.go): the active segment is read and
// checked, a torn last record is cut off and noted by a torn-tail record.
// Damage is reported as a *DamageError and nothing is written. Sealed
// segments are not re-read at every start (Verify does that).
func Open(o Options) (*Log, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	info, err := os.Stat(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("log folder: %w", err)
	}
	if !info.IsDir() {
		return nil, fmt.Errorf("log folder %s: not a folder", o.Dir)
	}
	lock, err := lockDir(o.Dir)
	if err != nil {
		return nil, err
	}
	l := &Log{
		o:    o,
		lock: lock,
		wake: make(chan struct{}, 1),
		stop: make(chan struct{}),
		done: make(chan struct{}),
		head: GenesisPrev,
	}
	l.pool.New = newRequest
	l.sigDone = make(chan sigResult, 1)
	l.witness = newWitnessWriter(l)
	if err := l.recover(); err != nil {
		l.indexWG.Wait()
		l.closeFiles()
		return nil, err
	}
	if err := l.checkWitnesses(); err != nil {
		l.indexWG.Wait()
		l.closeFiles()
		return nil, err
	}
	if l.tailUnsigned() {
		// A stop between a batch and its checkpoint (a crash), or a log of
		// a pecgw that signed only every CheckpointEvery records: the first
		// checkpoint says so (a record appended by someone with the disk
		// but not the key would be signed too: the witness, checked above,
		// and this note are what tells them apart).
		l.startNote = fmt.Sprintf("at start: records %d..%d were not covered by a signed checkpoint (the log was stopped between a write and its checkpoint, or written by an older pecgw); signed now", l.signedUpto+1, l.seq)
	}
	l.witness.start()
	l.lastSign = time.Now() // the first checkpoint comes CheckpointInterval after the start
	go l.writer()
	return l, nil
}

// lockDir takes an exclusive flock on the folder's lock file, so that two
// processes never write one chain.
func lockDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, lockName)
	_, statErr := os.Stat(path)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("log lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("log folder %s is in use by another writer", dir)
		}
		return nil, fmt.Errorf("log lock: %w", err)
	}
	if statErr != nil {
		if err := syncDir(dir); err != nil {
			f.Close()
			return nil, err
		}
	}
	return f, nil
}

// Append writes r to the log and returns when it is on disk (written and
// fsync'd, together with the records of concurrent Appends). It sets
// r.Seq, r.Prev and r.V (any value the caller put there is replaced) and
// returns the seq and the hash of the record's line. A record that
// format 2 could not hold (dedup_key, a state on a record of the wrong
// type) is refused.
//
// The caller sets Time (the transaction's time reference, RFC 3339 in
// Italian legal time: pec.At(t).Time().Format(time.RFC3339)) and the
// other fields; the log's own types (checkpoint, seal, torn-tail, purge)
// are refused. ctx is honoured while the record waits in the queue; once
// the writer has taken it, Append waits for the outcome, and a record
// that was written and fsync'd is reported as a success.
//
// An error means the record is not known to be durable. After a write or
// fsync failure (the Log is broken) it may still be found in the file by
// the next Open: the log is written ahead of the actions it describes, so
// a record of an action that then did not happen is to be expected.
func (l *Log) Append(ctx context.Context, r *Record) (seq uint64, hash string, err error) {
	seqs, hashes, err := l.AppendAll(ctx, r)
	if err != nil {
		return 0, "", err
	}
	return seqs[0], hashes[0], nil
}

// AppendAll appends recs as Append does, in this order, one after the
// other in the same group commit: the records of one transaction that go
// together (the write-ahead busta-trasporto and accettazione,
// docs/architecture.md) share one fsync instead of waiting for one each.
// It returns the seq and hash of each. An error means that some of them
// are not known to be durable (those before may be: each record stands
// on its own in the log, as after two Appends).
func (l *Log) AppendAll(ctx context.Context, recs ...*Record) (seqs []uint64, hashes []string, err error) {
	for _, r := range recs {
		switch r.Type {
		case EventCheckpoint, EventSeal, EventTornTail, EventPurge:
			return nil, nil, fmt.Errorf("log: a %s record is written by the log itself, not by Append", r.Type)
		}
		if !r.Type.Known() {
			return nil, nil, fmt.Errorf("log: unknown event type %q", r.Type)
		}
		if _, err := time.Parse(time.RFC3339, r.Time); err != nil {
			return nil, nil, fmt.Errorf("log: record time %q is not RFC 3339: %w", r.Time, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	reqs := make([]*request, 0, len(recs))
	putAll := func(list []*request) {
		for _, req := range list {
			l.putRequest(req)
		}
	}
	for _, r := range recs {
		req := l.getRequest()
		tail, err := encodeTail(req, r)
		if err != nil {
			putAll(append(reqs, req))
			return nil, nil, err
		}
		req.tail = tail
		reqs = append(reqs, req)
	}
	if err := l.enqueue(reqs...); err != nil {
		putAll(reqs)
		return nil, nil, err
	}
	// Wait for each; when ctx ends, the records still queued are
	// withdrawn (the writer skips them; they are not put back in the
	// pool: the writer's current batch may still point at them), and
	// those taken are waited for and reported.
	var firstErr error
	for i, req := range reqs {
		select {
		case <-req.done:
		case <-ctx.Done():
			l.mu.Lock()
			if req.state == reqQueued {
				for _, q := range reqs[i:] {
					q.state = reqWithdrawn
				}
				l.mu.Unlock()
				// Queued together, taken together: the ones after i are
				// withdrawn too.
				putAll(reqs[:i])
				return nil, nil, ctx.Err()
			}
			l.mu.Unlock()
			<-req.done // taken: it is being written; report what happened
		}
		if req.err != nil && firstErr == nil {
			firstErr = req.err
		}
	}
	if firstErr != nil {
		putAll(reqs)
		return nil, nil, firstErr
	}
	seqs, hashes = make([]uint64, len(reqs)), make([]string, len(reqs))
	for i, req := range reqs {
		seqs[i], hashes[i] = req.seq, req.hash
		recs[i].Seq, recs[i].Prev, recs[i].V = req.seq, req.prev, FormatVersion
	}
	putAll(reqs)
	return seqs, hashes, nil
}

// chainPrefix is what Encode writes for Seq 0 and Prev "".
const chainPrefix = `{"seq":0,"prev":""`

// maxChainPrefix is the longest real chain prefix: 20 digits of seq and
// 64 of hash.
const maxChainPrefix = len(`{"seq":18446744073709551615,"prev":"`) + 64 + 1

// encodeTail encodes r as Encode does, with Seq 0 and Prev "", in the
// request's buffer and returns what follows the chain fields. The costly
// JSON encoding is so done by each Append in parallel; the writer only
// prepends seq and prev and hashes.
func encodeTail(req *request, r *Record) ([]byte, error) {
	c := Canonical(r)
	c.Seq, c.Prev, c.V = 0, "", FormatVersion
	fit(&c)
	if err := checkFormat(&c); err != nil {
		return nil, fmt.Errorf("log record: %w", err)
	}
	tail, err := encodeOnce(req, &c)
	if err == errTooLong && len(c.Recipients) > 0 {
		allRecipientsCut(&c, Canonical(r).Recipients)
		tail, err = encodeOnce(req, &c)
	}
	if err == errTooLong {
		return nil, fmt.Errorf("log record: more than %d octets with every value cut (unreachable)", MaxLine)
	}
	return tail, err
}

var errTooLong = errors.New("log record too long")

func encodeOnce(req *request, c *Record) ([]byte, error) {
	req.encBuf.Reset()
	if err := req.enc.Encode(c); err != nil {
		return nil, fmt.Errorf("log record: %w", err)
	}
	b := req.encBuf.Bytes()
	if len(b) < len(chainPrefix) || string(b[:len(chainPrefix)]) != chainPrefix {
		return nil, errors.New("log record: unexpected encoding") // Record's first fields are seq and prev
	}
	tail := b[len(chainPrefix):]
	if len(tail)+maxChainPrefix > MaxLine {
		return nil, errTooLong
	}
	return tail, nil
}

// enqueue queues reqs together: the writer takes them in the same batch.
func (l *Log) enqueue(reqs ...*request) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	if err := l.broken; err != nil {
		l.mu.Unlock()
		return err
	}
	l.queue = append(l.queue, reqs...)
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
	return nil
}

// appendOwn queues one of the log's own records and waits for it: the
// purge tombstone. Its Time, Seq, Prev (and if sign, Head, Upto, Signed,
// Sig) are set by the writer.
func (l *Log) appendOwn(r *Record, sign bool) (*Record, error) {
	req := l.getRequest()
	req.own, req.sign = r, sign
	if err := l.enqueue(req); err != nil {
		l.putRequest(req)
		return nil, err
	}
	<-req.done
	written, err := req.ownWritten, req.err
	l.putRequest(req)
	return written, err
}

// Close waits for the queued records to be written, stops the writer and
// closes the files. It does not seal the active segment: the next Open
// continues it. Close is idempotent; it returns the error that broke the
// log, if any.
func (l *Log) Close() error {
	l.once.Do(func() {
		l.mu.Lock()
		l.closed = true
		l.mu.Unlock()
		close(l.stop)
		<-l.done
		l.indexWG.Wait()
		err := l.closeFiles()
		l.mu.Lock()
		if l.broken != nil {
			err = errors.Join(l.broken, err)
		}
		l.closeErr = err
		l.mu.Unlock()
	})
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closeErr
}

func (l *Log) closeFiles() error {
	var errs []error
	if l.f != nil {
		if err := l.f.Close(); err != nil {
			errs = append(errs, fmt.Errorf("log segment: %w", err))
		}
		l.f = nil
	}
	if l.lock != nil {
		if err := l.lock.Close(); err != nil { // releases the flock
			errs = append(errs, fmt.Errorf("log lock: %w", err))
		}
		l.lock = nil
	}
	return errors.Join(errs...)
}

func (l *Log) warn(format string, args ...any) {
	if l.o.Warn == nil {
		return
	}
	l.warnMu.Lock()
	defer l.warnMu.Unlock()
	l.o.Warn(fmt.Sprintf(format, args...))
}

// writer is the single goroutine that writes the log.
func (l *Log) writer() {
	defer close(l.done)
	defer l.witness.stop()
	// The day is checked at every batch and, when the log is quiet, every
	// second: a quiet day's segment is still sealed soon after midnight.
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	spacing := time.NewTimer(time.Hour)
	spacing.Stop()
	heal := time.NewTimer(time.Hour)
	heal.Stop()
	lonely := time.NewTimer(time.Hour)
	lonely.Stop()
	l.scheduleSign(spacing)
	for {
		final := false
		var res *sigResult
		if l.signing && l.uncovered() >= uint64(l.o.CheckpointEvery) && l.broken == nil {
			// CheckpointEvery records wait for their checkpoint: take no
			// more until it is here.
			select {
			case r := <-l.sigDone:
				res = &r
			case <-l.stop:
				final = true
			}
		} else {
			select {
			case <-l.wake:
			case <-tick.C:
			case r := <-l.sigDone:
				res = &r
			case <-spacing.C:
			case <-lonely.C:
			case <-heal.C:
				l.tryHeal(heal)
			case <-l.stop:
				final = true
			}
		}
		if res != nil {
			l.takeSignature(*res)
		}
		l.mu.Lock()
		batch := l.queue
		l.queue, l.spare = l.spare[:0], nil
		n := 0
		for _, r := range batch {
			if r.state == reqQueued {
				r.state = reqTaken
				batch[n] = r
				n++
			}
		}
		l.mu.Unlock()
		if res != nil && n == 0 && l.readyCk != nil && !final {
			// A checkpoint ready and no record to go with it: wait a little
			// for one, so that a lone writer does not pay an fsync for the
			// checkpoint alone (it stays within the bound: one more
			// CheckpointInterval).
			clear(batch[:cap(batch)])
			l.mu.Lock()
			l.spare = batch[:0]
			l.mu.Unlock()
			lonely.Reset(l.o.CheckpointInterval)
			continue
		}
		wasBroken := l.broken != nil
		l.commit(batch[:n])
		clear(batch[:cap(batch)])
		l.mu.Lock()
		l.spare = batch[:0]
		l.mu.Unlock()
		if l.broken != nil && !wasBroken {
			l.startHealing(heal)
		}
		if final {
			l.finish()
			return
		}
		l.scheduleSign(spacing)
	}
}

// commit writes batch (possibly empty: a timer tick, a signature ready)
// and releases its requests. Rules applied, in order: a segment whose
// Italian day is over is sealed; a signed checkpoint ready goes first;
// each record goes to the active segment, which is sealed first if the
// record would take it over MaxSegmentSize.
func (l *Log) commit(batch []*request) {
	if l.broken != nil { // only this goroutine sets it
		for _, r := range batch {
			r.err = l.broken
			r.done <- struct{}{}
		}
		return
	}
	now := l.o.Now()
	err := l.commitRecords(batch, now)
	if err == nil {
		err = l.flush()
	}
	if err != nil {
		l.breakLog(err)
	}
	if err == nil && l.failing {
		for _, r := range batch {
			if r.own == nil {
				l.healed()
				break
			}
		}
	}
	// After done is signalled, the request belongs to its Append again.
	for _, r := range batch {
		if err != nil {
			r.err = l.broken
		}
		r.done <- struct{}{}
	}
}

func (l *Log) breakLog(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.broken == nil {
		l.broken = fmt.Errorf("log broken, no records are accepted until it has healed: %w", err)
	}
	for _, r := range l.queue {
		if r.state == reqQueued {
			r.state = reqTaken
			r.err = l.broken
			r.done <- struct{}{}
		}
	}
	l.queue = l.queue[:0]
}

func (l *Log) commitRecords(batch []*request, now time.Time) error {
	day := romeDay(now)
	if l.f != nil && l.segDay != day {
		if err := l.rotate(now, false); err != nil {
			return err
		}
	}
	if ck := l.readyCk; ck != nil {
		l.readyCk = nil
		if err := l.addCheckpoint(ck); err != nil {
			return err
		}
	}
	for _, r := range batch {
		if err := l.addRequest(r, now); err != nil {
			return err
		}
	}
	return nil
}

// addRequest puts one queued record in the buffer.
func (l *Log) addRequest(r *request, now time.Time) error {
	size := int64(maxChainPrefix + len(r.tail))
	if r.own != nil {
		size = 8 << 10 // the log's own records are small
	}
	if err := l.ensureRoom(now, size); err != nil {
		return err
	}
	var line []byte
	switch {
	case r.own != nil && r.sign:
		tmpl := *r.own
		w, err := l.addSigned(tmpl.Type, now, &tmpl)
		if err != nil {
			return err
		}
		if w == nil {
			r.err = fmt.Errorf("log: %s record not written: it could not be signed", tmpl.Type)
			return nil
		}
		r.seq, r.hash, r.prev, r.ownWritten = w.Seq, l.head, w.Prev, w
		return nil
	case r.own != nil:
		own := *r.own
		own.Time, own.Provider = rfc3339(now), l.o.Provider
		own.Seq, own.Prev, own.V = l.seq+1, l.head, FormatVersion
		b, err := Encode(&own)
		if err != nil {
			return err
		}
		line, r.ownWritten = b, &own
	default:
		line = l.chainLine(r.tail)
	}
	r.prev = l.head
	l.addLine(line)
	r.seq, r.hash = l.seq, l.head
	return nil
}

// chainLine builds a record's line from its tail: the same octets as
// Encode with the next seq and the current head as prev.
func (l *Log) chainLine(tail []byte) []byte {
	line := make([]byte, 0, maxChainPrefix+len(tail))
	line = append(line, `{"seq":`...)
	line = strconv.AppendUint(line, l.seq+1, 10)
	line = append(line, `,"prev":"`...)
	line = append(line, l.head...)
	line = append(line, '"')
	return append(line, tail...)
}

// addLine appends a complete line (seq l.seq+1, prev l.head) to the buffer.
func (l *Log) addLine(line []byte) {
	l.buf = append(l.buf, line...)
	l.seq++
	l.head = Hash(line)
	l.segSize += int64(len(line))
	l.segRecords++
}

// ensureRoom makes sure a line of n octets can go into the active
// segment: a segment is created if there is none, and sealed first if
// the line would take it over MaxSegmentSize (a segment with no record
// takes any line).
func (l *Log) ensureRoom(now time.Time, n int64) error {
	if l.f != nil && l.segRecords > 0 && l.segSize+n > l.o.MaxSegmentSize {
		if err := l.rotate(now, true); err != nil {
			return err
		}
	}
	if l.f == nil {
		return l.createSegment(now)
	}
	return nil
}

// addSigned appends a seal or purge record (or, at Close, a
// checkpoint) certifying the current head, signed here and now: Head =
// hash of the record before, Upto = its seq, Signed = CheckpointText,
// Sig = the CMS signature of Signed. tmpl holds the other fields (purge:
// Files, Detail). A signing failure is not fatal: it is reported through
// Warn and nil is returned; the next batch tries again.
func (l *Log) addSigned(kind Event, now time.Time, tmpl *Record) (*Record, error) {
	if l.f == nil {
		if err := l.createSegment(now); err != nil {
			return nil, err
		}
	}
	at := pec.At(now).Time()
	text := CheckpointText(kind, l.seq, l.head, at)
	der, err := l.o.Signer.SignDetached([]byte(text), at)
	if err != nil {
		l.warn("log: %s at seq %d not written: signing failed: %v", kind, l.seq+1, err)
		return nil, nil
	}
	r := &Record{}
	if tmpl != nil {
		*r = *tmpl
	}
	r.Seq, r.Prev, r.V = l.seq+1, l.head, FormatVersion
	r.Time, r.Type, r.Provider = at.Format(time.RFC3339), kind, l.o.Provider
	r.Head, r.Upto, r.Signed, r.Sig = l.head, l.seq, text, base64.StdEncoding.EncodeToString(der)
	if err := l.addSignedLine(r); err != nil {
		return nil, err
	}
	// A checkpoint signed before this record, in flight or ready, is
	// stale: this one certifies a later head (and a seal closes the
	// segment the ready one belonged to).
	l.gen++
	l.readyCk = nil
	return r, nil
}

// addSignedLine appends a signed record (Seq, Prev and the signed
// fields set) and notes it as the last signed record.
func (l *Log) addSignedLine(r *Record) error {
	line, err := Encode(r)
	if err != nil {
		return err
	}
	l.addLine(line)
	l.signedSeq, l.signedUpto = r.Seq, r.Upto
	l.signedLine = line
	return nil
}

// flush writes the buffer to the active segment with one write(2) and
// fsyncs it.
func (l *Log) flush() error {
	if len(l.buf) == 0 {
		return nil
	}
	if l.f == nil {
		return errors.New("log: no active segment") // unreachable: lines go to a segment
	}
	_, err := l.f.Write(l.buf)
	if err != nil {
		return fmt.Errorf("write %s: %w", l.segName, err)
	}
	if err := durable.Sync(durable.LogAppend, l.f); err != nil {
		return fmt.Errorf("fsync %s: %w", l.segName, err)
	}
	l.durSeg, l.durOff = l.segName, l.segSize
	if l.signedLine != nil {
		l.witness.offer(l.signedSeq, l.signedLine) // on disk: the witnesses may have it
	}
	if cap(l.buf) > 4<<20 {
		l.buf = nil
	} else {
		l.buf = l.buf[:0]
	}
	return nil
}

// rotate closes the active segment. A segment with records gets a seal
// record and is made read-only; an empty one (opened on an earlier day,
// nothing written) is removed. create says whether the next segment is
// created now or when the next record comes. A seal that cannot be
// signed leaves the segment open (Warn): it is tried again later.
func (l *Log) rotate(now time.Time, create bool) error {
	if l.segRecords == 0 {
		name := l.segName
		if err := l.f.Close(); err != nil {
			return fmt.Errorf("close %s: %w", name, err)
		}
		l.f = nil
		if err := os.Remove(filepath.Join(l.o.Dir, name)); err != nil {
			return fmt.Errorf("remove the empty segment %s: %w", name, err)
		}
		if err := syncDir(l.o.Dir); err != nil {
			return err
		}
	} else {
		seal, err := l.addSigned(EventSeal, now, nil)
		if err != nil {
			return err
		}
		if seal == nil {
			return nil // not signed: keep writing this segment
		}
		if err := l.flush(); err != nil {
			return err
		}
		if err := l.finishSeal(); err != nil {
			return err
		}
	}
	if create {
		return l.createSegment(now)
	}
	return nil
}

// finishSeal makes the active segment, which ends with its seal on disk,
// read-only for good, and starts its index.
func (l *Log) finishSeal() error {
	name := l.segName
	if err := l.f.Chmod(0o444); err != nil {
		return fmt.Errorf("seal %s: %w", name, err)
	}
	if err := l.f.Sync(); err != nil { // the mode too
		return fmt.Errorf("fsync %s: %w", name, err)
	}
	if err := l.f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", name, err)
	}
	l.f = nil
	l.durSeg = "" // sealed: nothing of it is ever cut
	if err := syncDir(l.o.Dir); err != nil {
		return err
	}
	l.startIndex(name)
	return nil
}

// startIndex writes the index of a sealed segment in the background (it
// reads the whole segment; appends must not wait for it). Close waits.
func (l *Log) startIndex(name string) {
	l.indexWG.Add(1)
	go func() {
		defer l.indexWG.Done()
		if err := writeIndex(l.o.Dir, name); err != nil {
			l.warn("log: index of %s not written: %v", name, err)
		}
	}()
}

// createSegment creates the next segment, named by the seq of its first
// record and the Italian day.
func (l *Log) createSegment(now time.Time) error {
	day := now.In(pec.Rome())
	name := SegmentName(l.seq+1, day)
	f, err := os.OpenFile(filepath.Join(l.o.Dir, name), os.O_WRONLY|os.O_APPEND|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("new segment: %w", err)
	}
	if err := f.Chmod(0o644); err != nil { // whatever the umask
		f.Close()
		return fmt.Errorf("new segment %s: %w", name, err)
	}
	if err := durable.SyncDir(durable.LogSegmentDir, l.o.Dir); err != nil {
		f.Close()
		return err
	}
	l.f, l.segName, l.segDay, l.segSize, l.segRecords = f, name, romeDay(now), 0, 0
	l.durSeg, l.durOff = name, 0
	return nil
}

func romeDay(t time.Time) string { return t.In(pec.Rome()).Format("20060102") }

func rfc3339(t time.Time) string { return pec.At(t).Time().Format(time.RFC3339) }

// syncDir fsyncs a folder, so that a file created, renamed or removed in
// it is durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fsync folder: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync folder %s: %w", dir, err)
	}
	return nil
}

// fileSHA256 returns the hex SHA-256 of a file.
func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := f.WriteTo(h); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
