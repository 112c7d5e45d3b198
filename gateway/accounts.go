package gateway

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/pecgw/pecgw/internal/safeio"
)

// Account states (docs/configuration.md, "Suspended accounts"): a PEC
// mailbox goes through a lifecycle — migrated to another provider,
// deactivated by its owner or by the provider — during which its owner
// may still log in (to read what was certified) but may not send; its
// log records stay queryable for the 30 months of RFC 6109 §2.3 whatever
// becomes of the account. The suspended accounts are a file of their own
// (users.suspended), one line each:
//
//	address<TAB>since (RFC 3339)<TAB>reason
//
// kept apart from the users file so it serves the Dovecot backend too,
// and written by pecgw user suspend|resume under an flock, as the users
// file is. The daemon follows it as it follows the users file.

// Suspension is one suspended account.
type Suspension struct {
	Address string
	Since   time.Time
	Reason  string
}

// MaxSuspendReason bounds the reason (it is quoted in an SMTP reply,
// whose text RFC 5321 §4.5.3.1.5 bounds at 512 octets a line).
const MaxSuspendReason = 200

// ErrNotSuspended is returned by ResumeAccount for an account that is not
// suspended.
var ErrNotSuspended = errors.New("account is not suspended")

// Accounts is the suspended-accounts file, followed while the daemon
// runs. Safe for concurrent use.
type Accounts struct {
	path string

	mu        sync.RWMutex
	byAddr    map[string]Suspension // lower-case address
	file      fileStamp
	present   bool
	reloadErr error
}

// LoadAccounts reads the suspended-accounts file at path; a missing file
// is no suspended account.
func LoadAccounts(path string) (*Accounts, error) {
	a := &Accounts{path: path, byAddr: map[string]Suspension{}}
	if err := a.load(); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *Accounts) load() error {
	data, err := os.ReadFile(a.path)
	var st fileStamp
	present := err == nil
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("suspended accounts: %w", err)
	default:
		if fi, err := os.Stat(a.path); err == nil {
			st = stampOf(fi)
		}
	}
	list, err := parseSuspensions(a.path, data)
	if err != nil {
		return err
	}
	m := make(map[string]Suspension, len(list))
	for _, s := range list {
		m[strings.ToLower(s.Address)] = s
	}
	a.mu.Lock()
	a.byAddr, a.file, a.present, a.reloadErr = m, st, present, nil
	a.mu.Unlock()
	return nil
}

// refresh reads the file again if it appeared, vanished or changed.
func (a *Accounts) refresh() {
	fi, err := os.Stat(a.path)
	present := err == nil
	var st fileStamp
	if present {
		st = stampOf(fi)
	}
	a.mu.RLock()
	same := present == a.present && st == a.file
	a.mu.RUnlock()
	if same {
		return
	}
	if err := a.load(); err != nil {
		a.mu.Lock()
		a.reloadErr, a.file, a.present = err, st, present
		a.mu.Unlock()
	}
}

// Suspended says whether address is suspended, and since when and why.
func (a *Accounts) Suspended(address string) (Suspension, bool) {
	if a == nil {
		return Suspension{}, false
	}
	a.refresh()
	a.mu.RLock()
	defer a.mu.RUnlock()
	s, ok := a.byAddr[strings.ToLower(address)]
	return s, ok
}

// List returns the suspended accounts, by address.
func (a *Accounts) List() []Suspension {
	a.refresh()
	a.mu.RLock()
	defer a.mu.RUnlock()
	l := make([]Suspension, 0, len(a.byAddr))
	for _, s := range a.byAddr {
		l = append(l, s)
	}
	sort.Slice(l, func(i, j int) bool { return l[i].Address < l[j].Address })
	return l
}

// ReloadError is why the last change of the file could not be read (the
// suspensions read before still apply), or nil.
func (a *Accounts) ReloadError() error {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.reloadErr
}

func parseSuspensions(path string, data []byte) ([]Suspension, error) {
	var out []Suspension
	var errs []error
	for i, line := range strings.Split(string(data), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, "\t")
		if len(f) != 3 {
			errs = append(errs, fmt.Errorf("%s:%d: want address<TAB>since<TAB>reason, got %d fields", path, i+1, len(f)))
			continue
		}
		since, err := time.Parse(time.RFC3339, f[1])
		if err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: since %q is not an RFC 3339 time", path, i+1, f[1]))
			continue
		}
		if err := CheckAddress(f[0]); err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: %w", path, i+1, err))
			continue
		}
		out = append(out, Suspension{Address: f[0], Since: since, Reason: f[2]})
	}
	return out, errors.Join(errs...)
}

func checkReason(r string) error {
	switch {
	case len(r) > MaxSuspendReason:
		return fmt.Errorf("reason longer than %d octets", MaxSuspendReason)
	case !utf8.ValidString(r):
		return errors.New("reason is not valid UTF-8")
	}
	for _, c := range r {
		if c < 0x20 || c == 0x7f {
			return errors.New("reason contains a control character (tab, line break)")
		}
	}
	return nil
}

// SuspendAccount suspends address from now, with reason (may be empty);
// suspending a suspended account replaces its reason and keeps its date.
func SuspendAccount(path, address, reason string, now time.Time) error {
	if err := CheckAddress(address); err != nil {
		return err
	}
	if err := checkReason(reason); err != nil {
		return err
	}
	return editSuspensions(path, func(l []Suspension) ([]Suspension, error) {
		for i := range l {
			if strings.EqualFold(l[i].Address, address) {
				l[i].Reason = reason
				return l, nil
			}
		}
		return append(l, Suspension{Address: address, Since: now.UTC().Truncate(time.Second), Reason: reason}), nil
	})
}

// ResumeAccount lifts the suspension of address.
func ResumeAccount(path, address string) error {
	return editSuspensions(path, func(l []Suspension) ([]Suspension, error) {
		for i := range l {
			if strings.EqualFold(l[i].Address, address) {
				return append(l[:i], l[i+1:]...), nil
			}
		}
		return nil, fmt.Errorf("%s: %w", address, ErrNotSuspended)
	})
}

// editSuspensions rewrites the file through edit, under an flock (as
// editUsers does), atomically and durably (safeio).
func editSuspensions(path string, edit func([]Suspension) ([]Suspension, error)) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("suspended accounts: %w", err)
	}
	f, err := lockUsers(path, true)
	if err != nil {
		return fmt.Errorf("suspended accounts: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return fmt.Errorf("suspended accounts: %w", err)
	}
	l, err := parseSuspensions(path, data)
	if err != nil {
		return err
	}
	if l, err = edit(l); err != nil {
		return err
	}
	var b strings.Builder
	b.WriteString("# pecgw suspended accounts: address<TAB>since<TAB>reason (pecgw user suspend|resume)\n")
	for _, s := range l {
		fmt.Fprintf(&b, "%s\t%s\t%s\n", s.Address, s.Since.UTC().Format(time.RFC3339), s.Reason)
	}
	if err := safeio.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("suspended accounts: %w", err)
	}
	return nil
}
