package dedup

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/pecgw/pecgw/internal/durable"
	"github.com/pecgw/pecgw/internal/safeio"
)

// Embedded is a Store for one machine: an in-memory map behind a mutex, and
// an append-only journal of commits in a folder, fsync'd on every Commit
// and replayed on open, so that commits survive a restart. Leases live in
// memory only: after a restart nothing is in flight (reconciling
// half-done transactions is the transaction log's job).
//
// The journal holds one line per commit:
//
//	<crc32 of the JSON, 8 hex digits> <JSON {"id","fp","pec","exp"}>\n
//
// Claims and releases are not journalled, as leases do not survive a
// restart. A last line without its newline or with a bad checksum is a
// write torn by a crash and is ignored; a bad line before the last is
// corruption and OpenEmbedded refuses the journal. On open, expired lines
// are dropped, and the journal is rewritten (safeio.WriteFile) when most of
// it is garbage or its last line was torn.
type Embedded struct {
	mu      sync.Mutex
	entries map[string]*embEntry // by Key.ID
	journal *os.File
	lock    *os.File
	size    int64 // of the journal: a failed append is cut back to it
	broken  error // a failed append that could not be undone, or a failed fsync
	closed  bool
	ops     int           // since the last sweep of expired entries
	jsync   durable.Group // the journal's fsyncs, shared by concurrent commits
}

type embEntry struct {
	token      string // lease owner; "" when no lease
	leaseUntil time.Time
	hold       string               // the PEC id when the lease is a hold (Prepare)
	commits    map[string]embCommit // by Key.Fingerprint
}

type embCommit struct {
	pecID string
	exp   time.Time
}

type journalRecord struct {
	ID  string `json:"id"`
	FP  string `json:"fp"`
	PEC string `json:"pec"`
	Exp int64  `json:"exp"` // Unix nanoseconds
}

const (
	journalName = "journal"
	lockName    = "lock"
	sweepEvery  = 1024
)

// OpenEmbedded opens (creating it if needed) the embedded store in dir. It
// takes an exclusive lock on dir/lock: a second process gets an error.
func OpenEmbedded(dir string) (*Embedded, error) {
	if err := safeio.MkdirAllSync(dir, 0o700); err != nil {
		return nil, fmt.Errorf("dedup: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("dedup: lock: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("dedup: %s is in use by another process", dir)
		}
		return nil, fmt.Errorf("dedup: lock %s: %w", dir, err)
	}
	e := &Embedded{entries: map[string]*embEntry{}, lock: lock}
	if err := e.open(filepath.Join(dir, journalName)); err != nil {
		lock.Close() // closing drops the flock
		return nil, err
	}
	return e, nil
}

// open replays the journal at path, compacts it if worthwhile, and opens
// it for appending.
func (e *Embedded) open(path string) error {
	data, err := os.ReadFile(path)
	existed := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("dedup: read journal: %w", err)
	}
	now := time.Now()
	lines, torn, err := e.replay(data, now)
	if err != nil {
		return err
	}
	live := 0
	for _, en := range e.entries {
		live += len(en.commits)
	}
	if torn || lines-live > live {
		if err := safeio.WriteFile(path, e.snapshot(), 0o600); err != nil {
			return fmt.Errorf("dedup: compact journal: %w", err)
		}
		existed = true
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("dedup: open journal: %w", err)
	}
	if !existed {
		if err := safeio.SyncDirAt(durable.DedupJournalDir, filepath.Dir(path)); err != nil {
			f.Close()
			return fmt.Errorf("dedup: %w", err)
		}
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("dedup: stat journal: %w", err)
	}
	e.journal, e.size = f, fi.Size()
	return nil
}

// replay loads the journal's unexpired commits. It returns the number of
// complete lines and whether the last one was torn.
func (e *Embedded) replay(data []byte, now time.Time) (lines int, torn bool, err error) {
	for n := 1; len(data) > 0; n++ {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			return lines, true, nil // torn: the newline never made it
		}
		line := data[:i]
		data = data[i+1:]
		rec, ok := parseJournalLine(line)
		if !ok {
			if len(data) == 0 {
				return lines, true, nil
			}
			return lines, false, fmt.Errorf("dedup: journal line %d is corrupt", n)
		}
		lines++
		exp := time.Unix(0, rec.Exp)
		if !now.Before(exp) {
			continue
		}
		e.entry(rec.ID).commits[rec.FP] = embCommit{pecID: rec.PEC, exp: exp}
	}
	return lines, false, nil
}

func parseJournalLine(line []byte) (journalRecord, bool) {
	var rec journalRecord
	if len(line) < 10 || line[8] != ' ' {
		return rec, false
	}
	sum, err := strconv.ParseUint(string(line[:8]), 16, 32)
	if err != nil || uint32(sum) != crc32.ChecksumIEEE(line[9:]) {
		return rec, false
	}
	if json.Unmarshal(line[9:], &rec) != nil || rec.ID == "" || rec.FP == "" {
		return rec, false
	}
	return rec, true
}

func journalLine(rec journalRecord) []byte {
	js, _ := json.Marshal(rec) // strings and an int: cannot fail
	line := fmt.Appendf(nil, "%08x ", crc32.ChecksumIEEE(js))
	line = append(line, js...)
	return append(line, '\n')
}

// snapshot is the journal of the live commits only.
func (e *Embedded) snapshot() []byte {
	var b []byte
	for id, en := range e.entries {
		for fp, c := range en.commits {
			b = append(b, journalLine(journalRecord{ID: id, FP: fp, PEC: c.pecID, Exp: c.exp.UnixNano()})...)
		}
	}
	return b
}

func (e *Embedded) entry(id string) *embEntry {
	en := e.entries[id]
	if en == nil {
		en = &embEntry{commits: map[string]embCommit{}}
		e.entries[id] = en
	}
	return en
}

// lookup returns the entry of id with its expired commits and lease
// removed, or nil when nothing live is left.
func (e *Embedded) lookup(id string, now time.Time) *embEntry {
	en := e.entries[id]
	if en == nil {
		return nil
	}
	if en.token != "" && !now.Before(en.leaseUntil) {
		en.token, en.hold = "", ""
	}
	for fp, c := range en.commits {
		if !now.Before(c.exp) {
			delete(en.commits, fp)
		}
	}
	if en.token == "" && len(en.commits) == 0 {
		delete(e.entries, id)
		return nil
	}
	return en
}

// commitOf returns the commit of fp, if en has one (en may be nil).
func (en *embEntry) commitOf(fp string) (embCommit, bool) {
	if en == nil {
		return embCommit{}, false
	}
	c, ok := en.commits[fp]
	return c, ok
}

// sweep drops expired entries now and then, so that keys never looked up
// again do not stay in memory.
func (e *Embedded) sweep(now time.Time) {
	if e.ops++; e.ops < sweepEvery {
		return
	}
	e.ops = 0
	for id := range e.entries {
		e.lookup(id, now)
	}
}

var errClosed = errors.New("dedup: store closed")

// usable reports why the store cannot serve, if it cannot.
func (e *Embedded) usable() error {
	if e.closed {
		return errClosed
	}
	if e.broken != nil {
		return fmt.Errorf("%w: journal failed, reopen the store: %w", ErrUnavailable, e.broken)
	}
	return nil
}

// writeJournal writes line at the end of the journal; e.mu is held. A
// failed write is cut back, so the next line does not follow a fragment.
func (e *Embedded) writeJournal(line []byte) error {
	if _, err := e.journal.Write(line); err != nil {
		if terr := e.journal.Truncate(e.size); terr != nil {
			e.broken = err
		}
		return fmt.Errorf("%w: write journal: %w", ErrUnavailable, err)
	}
	e.size += int64(len(line))
	return nil
}

// syncJournal makes the lines written so far durable. It runs without
// e.mu, so that concurrent commits share their fsyncs (group commit,
// durable.Group): one fsync per batch, not per commit, and claims are
// not kept waiting behind it. After a failed fsync the state of the file
// is unknown (the kernel may have dropped the dirty pages), so the store
// stops serving until it is reopened and replays what is on disk.
func (e *Embedded) syncJournal() error {
	err := e.jsync.Do(func() error { return durable.Sync(durable.DedupJournal, e.journal) })
	if err != nil {
		e.mu.Lock()
		if e.broken == nil {
			e.broken = err
		}
		e.mu.Unlock()
		return fmt.Errorf("%w: fsync journal: %w", ErrUnavailable, err)
	}
	return nil
}

// Claim implements Store.
func (e *Embedded) Claim(ctx context.Context, k Key, lease time.Duration) (Claim, error) {
	if err := ctx.Err(); err != nil {
		return Claim{}, err
	}
	token, err := newToken()
	if err != nil {
		return Claim{}, fmt.Errorf("dedup: lease token: %w", err)
	}
	id, fp := k.ID(), k.Fingerprint()
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.usable(); err != nil {
		return Claim{}, err
	}
	now := time.Now()
	e.sweep(now)
	en := e.lookup(id, now)
	if en != nil {
		if c, ok := en.commits[fp]; ok {
			return Claim{State: Duplicate, PECID: c.pecID}, nil
		}
		if en.token != "" {
			return Claim{State: InFlight, PECID: en.hold}, nil
		}
	}
	state := New
	if en != nil && len(en.commits) > 0 {
		state = Reused
	}
	en = e.entry(id)
	en.token, en.leaseUntil = token, now.Add(lease)
	return Claim{State: state, Token: token}, nil
}

// Commit implements Store. The journal line is written before the map
// changes, under the mutex, and fsync'd after, outside it (syncJournal):
// Commit returns once the line is durable. The map may so show a commit a
// moment before it is durable; that can only make a retry be answered as
// a duplicate of a transaction whose envelope and receipt are out (a
// commit comes after both), never let a second envelope through
// (invariant 3, docs/architecture.md); if the fsync fails, the caller
// gets the error and the store stops serving.
func (e *Embedded) Commit(ctx context.Context, k Key, token, pecID string, window time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	id, fp := k.ID(), k.Fingerprint()
	e.mu.Lock()
	if err := e.usable(); err != nil {
		e.mu.Unlock()
		return err
	}
	now := time.Now()
	en := e.lookup(id, now)
	if en != nil && en.token != "" && en.token != token {
		e.mu.Unlock()
		return ErrNotOwner
	}
	exp := now.Add(window)
	line := journalLine(journalRecord{ID: id, FP: fp, PEC: pecID, Exp: exp.UnixNano()})
	if err := e.writeJournal(line); err != nil {
		e.mu.Unlock()
		return err
	}
	en = e.entry(id)
	en.token, en.hold = "", ""
	en.commits[fp] = embCommit{pecID: pecID, exp: exp}
	e.mu.Unlock()
	return e.syncJournal()
}

// Renew implements Store.
func (e *Embedded) Renew(ctx context.Context, k Key, token string, lease time.Duration) error {
	return e.owned(ctx, k, token, func(en *embEntry, now time.Time) {
		if en.hold == "" {
			en.leaseUntil = now.Add(lease)
		}
	})
}

// Prepare implements Store. A hold, as a lease, lives in memory: after a
// restart of the one process that could hold it, reconciliation of the
// transaction log decides (gateway.Reconcile).
func (e *Embedded) Prepare(ctx context.Context, k Key, token, pecID string, hold time.Duration) error {
	return e.owned(ctx, k, token, func(en *embEntry, now time.Time) {
		en.hold, en.leaseUntil = pecID, now.Add(hold)
	})
}

// owned runs f on the entry of k under the mutex when token holds its
// live lease or hold, and is ErrNotOwner otherwise.
func (e *Embedded) owned(ctx context.Context, k Key, token string, f func(*embEntry, time.Time)) error {
	id := k.ID()
	return e.do(ctx, func(now time.Time) error {
		en := e.lookup(id, now)
		if en == nil || en.token == "" || en.token != token {
			return ErrNotOwner
		}
		f(en, now)
		return nil
	})
}

// Trace implements Store: a commit is in the journal; a hold lives in
// memory only, so without a commit the answer is TraceUnknown.
func (e *Embedded) Trace(ctx context.Context, id, fingerprint, pecID string) (Trace, error) {
	tr := TraceUnknown
	err := e.do(ctx, func(now time.Time) error {
		if c, ok := e.lookup(id, now).commitOf(fingerprint); ok && c.pecID == pecID {
			tr = TraceCommitted
		}
		return nil
	})
	return tr, err
}

// Hold implements Store. The hold lives in memory, as every lease.
func (e *Embedded) Hold(ctx context.Context, id, fingerprint, pecID string, hold time.Duration) error {
	if id == "" || fingerprint == "" || pecID == "" {
		return errors.New("dedup: hold: empty id, fingerprint or PEC identifier")
	}
	return e.do(ctx, func(now time.Time) error {
		en := e.lookup(id, now)
		if _, ok := en.commitOf(fingerprint); ok || (en != nil && en.token != "") {
			return nil
		}
		en = e.entry(id)
		en.token, en.hold, en.leaseUntil = "reconciled", pecID, now.Add(hold)
		return nil
	})
}

// Abandon implements Store.
func (e *Embedded) Abandon(ctx context.Context, id, pecID string) error {
	if id == "" || pecID == "" {
		return errors.New("dedup: abandon: empty id or PEC identifier")
	}
	return e.do(ctx, func(now time.Time) error {
		if en := e.lookup(id, now); en != nil && en.hold == pecID {
			en.token, en.hold = "", ""
			e.lookup(id, now)
		}
		return nil
	})
}

// do runs f under the mutex, with the current time, once the context and
// the store allow it.
func (e *Embedded) do(ctx context.Context, f func(now time.Time) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.usable(); err != nil {
		return err
	}
	return f(time.Now())
}

// Remember implements Store: a journalled commit that needs no lease; it
// drops a hold naming pecID and keeps a commit of another PEC id.
func (e *Embedded) Remember(ctx context.Context, id, fingerprint, pecID string, window time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if id == "" || fingerprint == "" {
		return errors.New("dedup: remember: empty id or fingerprint")
	}
	e.mu.Lock()
	if err := e.usable(); err != nil {
		e.mu.Unlock()
		return err
	}
	now := time.Now()
	exp := now.Add(window)
	en := e.lookup(id, now)
	wrote := false
	if c, ok := en.commitOf(fingerprint); !ok || c.pecID == pecID {
		// A committed entry of another PEC id is kept, as by Redis.
		if err := e.writeJournal(journalLine(journalRecord{ID: id, FP: fingerprint, PEC: pecID, Exp: exp.UnixNano()})); err != nil {
			e.mu.Unlock()
			return err
		}
		en = e.entry(id)
		en.commits[fingerprint] = embCommit{pecID: pecID, exp: exp}
		wrote = true
	}
	if en != nil && pecID != "" && en.hold == pecID {
		en.token, en.hold = "", ""
	}
	e.mu.Unlock()
	if !wrote {
		return nil
	}
	return e.syncJournal() // as in Commit
}

// Release implements Store.
func (e *Embedded) Release(ctx context.Context, k Key, token string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	id := k.ID()
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.usable(); err != nil {
		return err
	}
	en := e.lookup(id, time.Now())
	if en == nil || en.token == "" {
		return nil
	}
	if en.token != token {
		return ErrNotOwner
	}
	en.token, en.hold = "", ""
	e.lookup(id, time.Now())
	return nil
}

// Close implements Store: it closes the journal and drops the lock.
func (e *Embedded) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil
	}
	e.closed = true
	return errors.Join(e.journal.Close(), e.lock.Close())
}
