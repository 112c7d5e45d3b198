package delivery

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/pecgw/pecgw/internal/durable"
	"github.com/pecgw/pecgw/internal/safeio"
)

// Spool keeps each signed acceptance receipt durably from just before its
// transport envelope is handed off until the receipt itself is. Without
// it, a crash (or a failed receipt hand-off) after the envelope went out
// loses the receipt for good: it cannot be signed again, since a new
// signature would carry another signing time than the transaction's (DM 2
// novembre 2005 art. 9), and the client's retry would be answered 250
// while the sender never got it (invariant 1 of docs/architecture.md).
//
// A pending receipt is an entry of the spool's journal (spooljournal.go:
// one append-only file, group-committed); the other states are a file
// each, named by the PEC identifier and a mark (the suffix). The
// transaction's state is its log's (the gateway's transaction table,
// docs/architecture.md); the marks are that state's durable form here,
// written before its record (evidence for a crash in between), and the
// operator's decision on an unknown outcome:
//
//	pending.journal   pending: written before the envelope hand-off
//	                  (<id>.receipt, a file of its own, in spools written
//	                  by pecgw before the journal: still read)
//	<id>.out          the envelope is out, the receipt's hand-off failed
//	<id>.unconfirmed  the envelope's fate is unknown (a next hop that did not
//	                  answer): kept for the operator, never delivered by
//	                  pecgw on its own
//	<id>.confirmed    the operator confirmed the next hop has the envelope
//	                  (pecgw spool confirm): delivered by pecgw serve
//	<id>.rejected     the operator found it does not (pecgw spool reject):
//	                  dropped by pecgw serve, the submission freed
//
// Each file is one JSON line (the entry's metadata) followed by the
// receipt's bytes, written with safeio (fsync, rename, folder fsync); a
// journal entry holds the same two parts. A file wins over a journal
// entry of the same identifier (a mark writes the file, then ends the
// entry). The gateway's Transactions know who is working on an entry.
type Spool struct {
	dir string
	w   safeio.Writer // the marked files
	j   *journal      // the pending entries
	// Torn names the file where OpenSpool kept what followed a damaged
	// frame of the journal (a crash in the middle of a write leaves one;
	// anything else is damage for the operator to look at); "" when
	// nothing did.
	Torn string
}

// SpoolEntry is one spooled receipt.
type SpoolEntry struct {
	ID string `json:"id"` // the PEC identifier of the transaction
	// Record is the caller's description of the transaction (the gateway
	// keeps its log record there, to log the late hand-off with the
	// transaction's own fields and time reference). Opaque here.
	Record   json.RawMessage `json:"record,omitempty"`
	From     string          `json:"from"`
	To       []string        `json:"to"`
	UTF8     bool            `json:"utf8"`
	EightBit bool            `json:"8bit"`

	State SpoolState `json:"-"`
	Data  []byte     `json:"-"` // the signed receipt, as handed off
}

// SpoolState is where an entry stands, from its file name.
type SpoolState string

const (
	SpoolPending     SpoolState = "receipt"     // envelope outcome not recorded here
	SpoolOut         SpoolState = "out"         // envelope out: receipt to deliver
	SpoolUnconfirmed SpoolState = "unconfirmed" // envelope outcome unknown: for the operator
	SpoolConfirmed   SpoolState = "confirmed"   // the operator confirmed the envelope arrived: deliver
	SpoolRejected    SpoolState = "rejected"    // the operator found the envelope did not arrive: drop
)

// spoolStates are all the states, most advanced first.
var spoolStates = []SpoolState{SpoolConfirmed, SpoolRejected, SpoolOut, SpoolPending, SpoolUnconfirmed}

// Message is the entry's receipt as a delivery message.
func (e *SpoolEntry) Message() *Message {
	return &Message{ReversePath: e.From, ForwardPaths: e.To, Data: e.Data, UTF8: e.UTF8, EightBit: e.EightBit}
}

// OpenSpool opens (creating it) the spool folder dir for pecgw serve:
// it takes the folder's lock (one daemon per spool), loads the journal
// and rewrites it with its live entries only.
func OpenSpool(dir string) (*Spool, error) {
	if err := safeio.MkdirAllSync(dir, 0o700); err != nil {
		return nil, fmt.Errorf("delivery: spool: %w", err)
	}
	j, torn, err := openJournal(dir)
	if err != nil {
		return nil, err
	}
	return &Spool{dir: dir, w: safeio.Writer{Point: durable.SpoolMark}, j: j, Torn: torn}, nil
}

// ReadSpool opens the spool folder dir beside a running pecgw serve (the
// operator's pecgw spool): it reads the journal afresh at each call and
// never writes it, so it cannot Put, nor Mark or Remove a pending entry;
// it renames marked files (Mark), as the operator's decision does.
func ReadSpool(dir string) (*Spool, error) {
	if fi, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("delivery: spool: %w", err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("delivery: spool: %s is not a folder", dir)
	}
	return &Spool{dir: dir, w: safeio.Writer{Point: durable.SpoolMark}, j: readJournal(dir)}, nil
}

// Close releases the journal and the lock.
func (s *Spool) Close() error { return s.j.close() }

// Dir is the spool's folder.
func (s *Spool) Dir() string { return s.dir }

// spoolName is the file name stem of id: PEC identifiers (pec.NewID) are
// digits, a dot, base32 letters, '@' and the provider's domain, which may
// be written in Unicode (città.it); every octet outside [A-Za-z0-9.@_-],
// and a leading dot, is written %XX, so no identifier can name a hidden
// file or one outside the folder.
func spoolName(id string) (string, error) {
	if id == "" {
		return "", errors.New("delivery: spool: empty identifier")
	}
	var b strings.Builder
	for i := 0; i < len(id); i++ {
		c := id[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '@' || c == '_' || c == '-' || c == '.' && i > 0
		if ok {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	if b.Len() > 240 { // NAME_MAX 255, less the longest suffix
		return "", fmt.Errorf("delivery: spool: identifier too long (%d octets)", len(id))
	}
	return b.String(), nil
}

// spoolID is the identifier of the file name stem name.
func spoolID(name string) (string, bool) {
	id, err := url.PathUnescape(name)
	if err != nil {
		return "", false
	}
	if back, err := spoolName(id); err != nil || back != name {
		return "", false // not a name spoolName writes
	}
	return id, true
}

// path is the file of id in state st.
func (s *Spool) path(id string, st SpoolState) (string, error) {
	name, err := spoolName(id)
	if err != nil {
		return "", err
	}
	return filepath.Join(s.dir, name+"."+string(st)), nil
}

// Put writes e durably as a pending entry: it returns once the journal
// holding it is fsync'd (shared with the concurrent Puts).
func (s *Spool) Put(e *SpoolEntry) error {
	if _, err := spoolName(e.ID); err != nil { // a mark makes it a file
		return err
	}
	if len(e.To) == 0 {
		return fmt.Errorf("delivery: spool: %s: no recipient", e.ID)
	}
	return s.j.put(e)
}

// writeFile writes e as the file of state st, durably.
func (s *Spool) writeFile(e *SpoolEntry, st SpoolState) error {
	path, err := s.path(e.ID, st)
	if err != nil {
		return err
	}
	head, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("delivery: spool: %w", err)
	}
	data := make([]byte, 0, len(head)+1+len(e.Data))
	data = append(append(append(data, head...), '\n'), e.Data...)
	if err := s.w.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("delivery: spool: %w", err)
	}
	return nil
}

// Mark moves the entry of id to state st (SpoolOut, SpoolUnconfirmed),
// durably: a pending entry of the journal becomes the file of st (then
// its journal entry ends), a file is renamed (then the folder fsync'd).
func (s *Spool) Mark(id string, st SpoolState) error {
	if e, err := s.j.get(id); err != nil {
		return err
	} else if e != nil && st != SpoolPending {
		if s.j.lock == nil {
			return fmt.Errorf("delivery: spool: %s is pending: pecgw serve takes care of it", id)
		}
		if err := s.writeFile(e, st); err != nil {
			return err
		}
		s.j.del(id)
		return nil
	}
	cur, err := s.find(id)
	if err != nil {
		return err
	}
	if cur == st {
		return nil
	}
	from, _ := s.path(id, cur)
	to, err := s.path(id, st)
	if err != nil {
		return err
	}
	if err := os.Rename(from, to); err != nil {
		return fmt.Errorf("delivery: spool: %w", err)
	}
	if err := safeio.SyncDirAt(durable.SpoolMark, s.dir); err != nil {
		return fmt.Errorf("delivery: spool: %w", err)
	}
	return nil
}

// find returns the state of id's file; fs.ErrNotExist when there is none.
func (s *Spool) find(id string) (SpoolState, error) { return findFile(s.dir, id) }

// findFile returns the state of id's file in the spool folder dir;
// fs.ErrNotExist when there is none.
func findFile(dir, id string) (SpoolState, error) {
	name, err := spoolName(id)
	if err != nil {
		return "", err
	}
	for _, st := range spoolStates {
		path := filepath.Join(dir, name+"."+string(st))
		if _, err := os.Lstat(path); err == nil {
			return st, nil
		} else if !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("delivery: spool: %w", err)
		}
	}
	return "", fmt.Errorf("delivery: spool: no entry %s: %w", id, fs.ErrNotExist)
}

// Get reads the entry of id; an error wrapping fs.ErrNotExist when there
// is none.
func (s *Spool) Get(id string) (*SpoolEntry, error) {
	if e, err := s.j.get(id); err != nil || e != nil {
		return e, err
	}
	st, err := s.find(id)
	if err != nil {
		return nil, err
	}
	path, _ := s.path(id, st)
	return s.read(path, st)
}

func (s *Spool) read(path string, st SpoolState) (*SpoolEntry, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("delivery: spool: %w", err)
	}
	i := bytes.IndexByte(raw, '\n')
	if i < 0 {
		return nil, fmt.Errorf("delivery: spool: %s: no header line", path)
	}
	e := &SpoolEntry{}
	if err := json.Unmarshal(raw[:i], e); err != nil {
		return nil, fmt.Errorf("delivery: spool: %s: header: %w", path, err)
	}
	if name, _ := spoolName(e.ID); name+"."+string(st) != filepath.Base(path) || len(e.To) == 0 {
		return nil, fmt.Errorf("delivery: spool: %s: header does not match the file", path)
	}
	e.State, e.Data = st, raw[i+1:]
	return e, nil
}

// Remove deletes the entry of id, whatever its mark; none is no error.
// Nothing is fsync'd: an entry that comes back after a crash is found
// again by the reconciliation, which drops it when the log says its
// transaction is over, and finds its receipt already delivered when not
// (MailboxFinder).
//
// A journal entry goes first, and when it was there it was the only one
// (a mark writes the file and ends the entry), so the acceptance path,
// whose receipt is still pending, pays one line and no unlink.
func (s *Spool) Remove(id string) error {
	if s.j.del(id) {
		return nil
	}
	if e, err := s.j.get(id); err != nil {
		return err
	} else if e != nil {
		return fmt.Errorf("delivery: spool: %s is pending: pecgw serve takes care of it", id)
	}
	for _, st := range spoolStates {
		path, err := s.path(id, st)
		if err != nil {
			return err
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("delivery: spool: %w", err)
		}
	}
	return nil
}

// List returns the identifiers and states of the entries, the journal's
// and the files', sorted by identifier (which starts with the
// transaction's time). Temporary files of an interrupted write, the
// journal and the lock are skipped.
func (s *Spool) List() (map[string]SpoolState, []string, error) {
	des, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, nil, fmt.Errorf("delivery: spool: %w", err)
	}
	states := map[string]SpoolState{}
	var ids []string
	for _, de := range des {
		name := de.Name()
		if strings.HasPrefix(name, ".") || !de.Type().IsRegular() {
			continue
		}
		dot := strings.LastIndexByte(name, '.')
		if dot <= 0 {
			continue
		}
		id, ok := spoolID(name[:dot])
		if !ok {
			continue
		}
		st := SpoolState(name[dot+1:])
		if !slices.Contains(spoolStates, st) {
			continue
		}
		// Mark renames: one file per identifier.
		if _, ok := states[id]; !ok {
			ids = append(ids, id)
		}
		states[id] = st
	}
	live, err := s.j.entries()
	if err != nil {
		return nil, nil, err
	}
	for id := range live {
		if _, ok := states[id]; !ok { // a file wins
			ids = append(ids, id)
			states[id] = SpoolPending
		}
	}
	sort.Strings(ids)
	return states, ids, nil
}
