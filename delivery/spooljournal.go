package delivery

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/pecgw/pecgw/internal/durable"
	"github.com/pecgw/pecgw/internal/safeio"
)

// The pending receipts live in one append-only file, the spool's
// journal, rather than a file each: every acceptance writes one, and
// one file per receipt cost an inode, a data fsync, a rename and a
// folder fsync per message, none of them shared between transactions.
// In the journal, concurrent Puts share their fsync (group commit, as the
// transaction log's records do), and a Remove is one more line, not
// fsync'd (as the unlink of a receipt file was not). The other marks
// (out, unconfirmed, confirmed, rejected) are rare, and the operator's
// pecgw spool renames them: they stay a file each.
//
// The file, pending.journal, starts with the line journalMagic; then
// frames, each a line and its payload:
//
//	put <json octets> <receipt octets> <crc32c>\n<json><receipt>\n
//	del <id octets> <crc32c>\n<id>\n
//
// The CRC-32C (Castagnoli) covers the payload. A put is the entry's JSON
// header (as a spool file's first line) and the signed receipt; a del
// ends the put of that identifier before it. Reading stops at the first
// frame that does not check: only the tail written after the last fsync
// can be torn by a crash, and no Put returned for it. What follows a bad
// frame is kept in a file of its own for the operator (journalTorn).
//
// The journal is rewritten with only its live entries when its dead
// frames pass journalRewrite octets, and at every start: a fresh file
// written with safeio's discipline (fsync, rename over the old one,
// folder fsync), so that a crash leaves either the old journal or the
// new one, each holding every entry whose Put returned.
const (
	journalName    = "pending.journal"
	journalMagic   = "pecgw-spool-journal 1\n"
	journalRewrite = 4 << 20
	journalLock    = "lock"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// journal is the spool's pending entries: in memory (live) and in the
// journal file, which a daemon (OpenSpool) owns and a reader (ReadSpool)
// only reads.
type journal struct {
	dir string

	mu        sync.Mutex
	f         *os.File // nil for a reader
	size      int64    // octets in the file
	liveBytes int64    // octets of the live entries' frames
	live      map[string]*SpoolEntry
	frames    map[string]int64 // octets of each live entry's frame
	broken    error            // a failed write or fsync: rewrite before the next Put
	lock      *os.File

	fmu   sync.RWMutex // an fsync of f against its replacement
	group durable.Group

	rewriteAt int64 // dead octets that make a Put rewrite the file (journalRewrite)
}

func (j *journal) path() string { return filepath.Join(j.dir, journalName) }

// openJournal takes the spool's lock and loads the journal, then
// rewrites it with its live entries only. torn names the file that keeps
// what followed a bad frame, "" when nothing did.
func openJournal(dir string) (j *journal, torn string, err error) {
	lock, err := os.OpenFile(filepath.Join(dir, journalLock), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, "", fmt.Errorf("delivery: spool: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, "", fmt.Errorf("delivery: spool %s: in use by another pecgw serve (lock: %w)", dir, err)
	}
	j = &journal{dir: dir, lock: lock, rewriteAt: journalRewrite}
	raw, err := os.ReadFile(j.path())
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		lock.Close()
		return nil, "", fmt.Errorf("delivery: spool: %w", err)
	}
	live, good := parseJournal(raw)
	if good < int64(len(raw)) {
		torn = filepath.Join(dir, fmt.Sprintf("%s.torn-%d", journalName, time.Now().UnixNano()))
		w := safeio.Writer{Point: durable.SpoolMark}
		if err := w.WriteFile(torn, raw[good:], 0o600); err != nil {
			lock.Close()
			return nil, "", fmt.Errorf("delivery: spool: keep the journal's damaged tail: %w", err)
		}
	}
	j.setLive(live)
	// An entry that also has a file was marked: the file is its state.
	for id := range live {
		if st, err := findFile(dir, id); err == nil && st != "" {
			j.drop(id)
		}
	}
	if err := j.rewrite(); err != nil {
		lock.Close()
		return nil, "", err
	}
	return j, torn, nil
}

// readJournal is the journal of a reader: loaded afresh by each call of
// entries.
func readJournal(dir string) *journal { return &journal{dir: dir} }

func (j *journal) setLive(live map[string]*SpoolEntry) {
	j.live, j.frames, j.liveBytes = live, map[string]int64{}, 0
	for id, e := range live {
		n := int64(len(putFrame(e)))
		j.frames[id] = n
		j.liveBytes += n
	}
}

// drop forgets id's entry in memory (j.mu held).
func (j *journal) drop(id string) {
	if _, ok := j.live[id]; ok {
		delete(j.live, id)
		j.liveBytes -= j.frames[id]
		delete(j.frames, id)
	}
}

// entries returns the live entries: a daemon's from memory, a reader's
// read from the file now.
func (j *journal) entries() (map[string]*SpoolEntry, error) {
	if j.f == nil && j.lock == nil {
		raw, err := os.ReadFile(j.path())
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("delivery: spool: %w", err)
		}
		live, _ := parseJournal(raw) // a tail being written is not there yet
		return live, nil
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	out := make(map[string]*SpoolEntry, len(j.live))
	for id, e := range j.live {
		out[id] = e
	}
	return out, nil
}

// get returns a copy of id's live entry, or nil.
func (j *journal) get(id string) (*SpoolEntry, error) {
	live, err := j.entries()
	if err != nil || live[id] == nil {
		return nil, err
	}
	c := *live[id]
	return &c, nil
}

// put appends e and returns once an fsync of the journal that started
// after the append has ended.
func (j *journal) put(e *SpoolEntry) error {
	if j.lock == nil {
		return errors.New("delivery: spool: opened for reading only")
	}
	frame := putFrame(e)
	j.mu.Lock()
	if j.broken != nil || j.size-j.liveBytes > j.rewriteAt {
		if err := j.rewrite(); err != nil {
			j.mu.Unlock()
			return err
		}
	}
	if _, ok := j.live[e.ID]; ok {
		j.mu.Unlock()
		return fmt.Errorf("delivery: spool: %s is spooled already", e.ID)
	}
	if _, err := j.f.Write(frame); err != nil {
		j.broken = err
		j.mu.Unlock()
		return fmt.Errorf("delivery: spool: journal: %w", err)
	}
	c := *e
	c.State = SpoolPending
	j.live[e.ID], j.frames[e.ID] = &c, int64(len(frame))
	j.size += int64(len(frame))
	j.liveBytes += int64(len(frame))
	j.mu.Unlock()
	err := j.group.Do(func() error {
		j.fmu.RLock()
		defer j.fmu.RUnlock()
		return durable.Sync(durable.SpoolPut.File(), j.f)
	})
	if err != nil {
		// After a failed fsync the kernel may have dropped the pages:
		// the file proves nothing until it is rewritten.
		j.mu.Lock()
		j.broken = err
		if j.live[e.ID] == &c {
			j.drop(e.ID)
		}
		j.mu.Unlock()
		return fmt.Errorf("delivery: spool: journal fsync: %w", err)
	}
	return nil
}

// del ends id's live entry; false when there is none. The line is not
// fsync'd: a del lost in a crash brings the entry back, which the
// reconciliation drops as the log says (Spool.Remove).
func (j *journal) del(id string) bool {
	if j.lock == nil {
		return false
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if _, ok := j.live[id]; !ok {
		return false
	}
	j.drop(id)
	if j.broken == nil {
		frame := delFrame(id)
		if _, err := j.f.Write(frame); err != nil {
			j.broken = err // the rewrite before the next Put leaves it out
		} else {
			j.size += int64(len(frame))
		}
	}
	return true
}

// rewrite replaces the journal with one holding the live entries only
// (j.mu held, or before anyone else has j).
func (j *journal) rewrite() error {
	tmp := filepath.Join(j.dir, "."+journalName+".tmp")
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("delivery: spool: journal: %w", err)
	}
	ids := make([]string, 0, len(j.live))
	for id := range j.live {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	buf := bytes.NewBufferString(journalMagic)
	for _, id := range ids {
		buf.Write(putFrame(j.live[id]))
	}
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		j.broken = err
		return fmt.Errorf("delivery: spool: journal: %w", err)
	}
	if _, err := f.Write(buf.Bytes()); err != nil {
		return fail(err)
	}
	if err := durable.Sync(durable.SpoolPut.File(), f); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, j.path()); err != nil {
		return fail(err)
	}
	if err := durable.SyncDir(durable.SpoolPut.Dir(), j.dir); err != nil {
		return fail(err)
	}
	j.fmu.Lock()
	old := j.f
	j.f = f
	j.fmu.Unlock()
	if old != nil {
		old.Close()
	}
	j.size, j.broken = int64(buf.Len()), nil
	return nil
}

func (j *journal) close() error {
	if j.lock == nil {
		return nil
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	var err error
	if j.f != nil {
		err = j.f.Close()
		j.f = nil
	}
	if e := j.lock.Close(); err == nil {
		err = e
	}
	return err
}

func putFrame(e *SpoolEntry) []byte {
	head, _ := json.Marshal(e) // strings, a raw message and booleans
	crc := crc32.Update(crc32.Checksum(head, castagnoli), castagnoli, e.Data)
	b := fmt.Appendf(nil, "put %d %d %08x\n", len(head), len(e.Data), crc)
	b = append(append(append(b, head...), e.Data...), '\n')
	return b
}

func delFrame(id string) []byte {
	return fmt.Appendf(nil, "del %d %08x\n%s\n", len(id), crc32.Checksum([]byte(id), castagnoli), id)
}

// parseJournal returns the live entries of raw and the length of its
// prefix that checks; an empty or absent journal has none.
func parseJournal(raw []byte) (map[string]*SpoolEntry, int64) {
	live := map[string]*SpoolEntry{}
	if len(raw) == 0 {
		return live, 0
	}
	if !bytes.HasPrefix(raw, []byte(journalMagic)) {
		return live, 0
	}
	off := len(journalMagic)
	for off < len(raw) {
		n, e, del, ok := parseFrame(raw[off:])
		if !ok {
			break
		}
		if del != "" {
			delete(live, del)
		} else {
			live[e.ID] = e
		}
		off += n
	}
	return live, int64(off)
}

// parseFrame reads the frame at the start of b: its length, and the
// entry it puts or the identifier it deletes.
func parseFrame(b []byte) (n int, e *SpoolEntry, del string, ok bool) {
	nl := bytes.IndexByte(b, '\n')
	if nl < 0 || nl > 64 {
		return 0, nil, "", false
	}
	f := bytes.Fields(b[:nl])
	num := func(s []byte) (int, bool) {
		v, err := strconv.Atoi(string(s))
		return v, err == nil && v >= 0 && v <= len(b)
	}
	sum := func(s []byte) (uint32, bool) {
		v, err := strconv.ParseUint(string(s), 16, 32)
		return uint32(v), err == nil && len(s) == 8
	}
	switch {
	case len(f) == 4 && string(f[0]) == "put":
		hl, ok1 := num(f[1])
		dl, ok2 := num(f[2])
		crc, ok3 := sum(f[3])
		end := nl + 1 + hl + dl
		if !ok1 || !ok2 || !ok3 || end >= len(b) || b[end] != '\n' {
			return 0, nil, "", false
		}
		head, data := b[nl+1:nl+1+hl], b[nl+1+hl:end]
		if crc32.Update(crc32.Checksum(head, castagnoli), castagnoli, data) != crc {
			return 0, nil, "", false
		}
		e := &SpoolEntry{}
		if err := json.Unmarshal(head, e); err != nil || e.ID == "" || len(e.To) == 0 {
			return 0, nil, "", false
		}
		e.State, e.Data = SpoolPending, append([]byte(nil), data...)
		return end + 1, e, "", true
	case len(f) == 3 && string(f[0]) == "del":
		il, ok1 := num(f[1])
		crc, ok2 := sum(f[2])
		end := nl + 1 + il
		if !ok1 || !ok2 || il == 0 || end >= len(b) || b[end] != '\n' {
			return 0, nil, "", false
		}
		id := b[nl+1 : end]
		if crc32.Checksum(id, castagnoli) != crc {
			return 0, nil, "", false
		}
		return end + 1, nil, string(id), true
	}
	return 0, nil, "", false
}
