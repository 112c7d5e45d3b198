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
	"sync"

	"github.com/pecgw/pecgw/internal/safeio"
)

// Spool keeps each signed acceptance receipt durably from just before its
// transport envelope is handed off until the receipt itself is. Without
// it, a crash (or a failed receipt hand-off) after the envelope went out
// loses the receipt for good: it cannot be signed again, since a new
// signature would carry another signing time than the transaction's (DM 2
// novembre 2005 art. 9), and the client's retry would be answered 250
// while the sender never got it (ARCHITECTURE.md invariant 1).
//
// One file per transaction, named by its PEC identifier:
//
//	<id>.receipt   written before the envelope hand-off: whether the
//	               envelope went out is for the log and outbound/ to say
//	<id>.out       the envelope is known to be out: deliver the receipt
//	<id>.unconfirmed  the envelope's fate is unknown (a next hop that did not
//	               answer, or a crash with one): kept for the operator,
//	               never delivered by pecgw on its own
//	<id>.confirmed the operator confirmed the next hop has the envelope
//	               (pecgw spool confirm): delivered by pecgw serve
//	<id>.rejected  the operator found it did not (pecgw spool reject):
//	               dropped by pecgw serve, the submission freed
//
// Each file is one JSON line (the entry's metadata) followed by the
// receipt's bytes. Files are written with safeio (fsync, rename, folder
// fsync). A transaction running in this process marks its entry active,
// so that a redelivery never races the transaction's own hand-off.
type Spool struct {
	dir      string
	mu       sync.Mutex
	active   map[string]bool
	recorded map[string]bool
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

// OpenSpool opens (creating it) the spool folder dir.
func OpenSpool(dir string) (*Spool, error) {
	if err := safeio.MkdirAllSync(dir, 0o700); err != nil {
		return nil, fmt.Errorf("delivery: spool: %w", err)
	}
	return &Spool{dir: dir, active: map[string]bool{}, recorded: map[string]bool{}}, nil
}

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

// Put writes e durably as a pending entry and marks it active until Done.
func (s *Spool) Put(e *SpoolEntry) error {
	path, err := s.path(e.ID, SpoolPending)
	if err != nil {
		return err
	}
	head, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("delivery: spool: %w", err)
	}
	data := make([]byte, 0, len(head)+1+len(e.Data))
	data = append(append(append(data, head...), '\n'), e.Data...)
	s.mu.Lock()
	s.active[e.ID] = true
	s.mu.Unlock()
	if err := safeio.WriteFile(path, data, 0o600); err != nil {
		s.Done(e.ID)
		return fmt.Errorf("delivery: spool: %w", err)
	}
	return nil
}

// Done ends the active mark of a transaction's entry (the entry itself
// stays until Remove).
func (s *Spool) Done(id string) {
	s.mu.Lock()
	delete(s.active, id)
	s.mu.Unlock()
}

// Claim marks the entry of id active for a redelivery; false when a
// transaction or another redelivery has it.
func (s *Spool) Claim(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active[id] {
		return false
	}
	s.active[id] = true
	return true
}

// SetRecorded notes that the outcome of the entry of id (a late delivery,
// a rejection) is in the log, so that a removal that failed is retried
// without logging it twice. In memory: after a restart, the
// reconciliation reads it from the log.
func (s *Spool) SetRecorded(id string) {
	s.mu.Lock()
	s.recorded[id] = true
	s.mu.Unlock()
}

// Recorded reports whether SetRecorded was called for id.
func (s *Spool) Recorded(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.recorded[id]
}

// Active reports whether a transaction or a redelivery has the entry.
func (s *Spool) Active(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.active[id]
}

// Mark moves the entry of id to state st (SpoolOut, SpoolUnconfirmed),
// durably: rename and folder fsync.
func (s *Spool) Mark(id string, st SpoolState) error {
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
	if err := safeio.SyncDir(s.dir); err != nil {
		return fmt.Errorf("delivery: spool: %w", err)
	}
	return nil
}

// find returns the state of id's file; fs.ErrNotExist when there is none.
func (s *Spool) find(id string) (SpoolState, error) {
	for _, st := range spoolStates {
		path, err := s.path(id, st)
		if err != nil {
			return "", err
		}
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

// Remove deletes the entry of id, whatever its state; none is no error.
// The folder is not fsync'd: an entry that comes back after a crash is
// found again by the reconciliation, which checks before delivering.
func (s *Spool) Remove(id string) error {
	for _, st := range spoolStates {
		path, err := s.path(id, st)
		if err != nil {
			return err
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("delivery: spool: %w", err)
		}
	}
	s.mu.Lock()
	delete(s.recorded, id)
	s.mu.Unlock()
	return nil
}

// List returns the identifiers and states of the entries, sorted by
// identifier (which starts with the transaction's time). Temporary files
// of an interrupted Put are skipped.
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
	sort.Strings(ids)
	return states, ids, nil
}
