package gateway

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unicode/utf8"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
	"golang.org/x/net/idna"

	"github.com/pecgw/pecgw/internal/safeio"
)

// The users file has one line per user, "address:hash", the hash in PHC
// string form: argon2id (RFC 9106; the form new passwords get) or bcrypt
// ($2a$, $2b$, $2y$; accepted for users imported from elsewhere). Lines
// starting with # and blank lines are kept as they are.

// Argon2id parameters of new passwords: RFC 9106 §4 second recommended
// option (64 MiB), with t=3 and p=2.
const (
	argonTime    = 3
	argonMemory  = 64 * 1024 // KiB
	argonThreads = 2
	argonKeyLen  = 32
	argonSaltLen = 16
)

// Bounds on the argon2id parameters of a users file: a hash with m=4 GiB
// would make every AUTH of that user take 4 GiB.
const (
	maxArgonMemory = 1 << 20 // KiB: 1 GiB
	maxArgonTime   = 64
	minArgonSalt   = 8 // RFC 9106 §3.1: S at least 8 octets
	minArgonKey    = 16
	maxArgonKey    = 128
)

// dummyHash is verified for an unknown user, so that AUTH takes the same
// time whether the address exists or not and does not reveal which
// addresses do. It has the parameters of HashPassword (a test checks).
const dummyHash = "$argon2id$v=19$m=65536,t=3,p=2$cGVjZ3ctZHVtbXktc2FsdA$+IRg70ZWNjQhiwYdfrSI2lj169kq3gLS+pOQ8nXFgjA"

// Users is the set of users allowed to submit, loaded from a users file
// by LoadUsers. Its methods are safe for concurrent use. It follows its
// file: each Verify and Stamp looks whether the file changed (pecgw user
// passwd|del write it while the daemon runs) and reads it again if so;
// Replace swaps in a reloaded file (SIGHUP).
type Users struct {
	path string

	mu        sync.RWMutex
	byAddr    map[string]string // lower-case address → PHC hash
	addresses []string          // as written, in file order
	file      fileStamp         // of the file the set was read from
	// reloadErr is the error of the last reading of a changed file that
	// failed (the set read before stays); nil once one succeeds.
	reloadErr error

	// worker, when set (UseWorker), does Verify's hashing in a child
	// process at the lowest CPU priority (hashworker.go).
	worker *HashWorker
}

// fileStamp tells whether a file changed: a rename over it (safeio)
// changes the inode, a write in place the size or the times.
type fileStamp struct {
	ino, size, mtime, ctime int64
}

func stampOf(fi fs.FileInfo) fileStamp {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileStamp{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	}
	return fileStamp{ino: int64(st.Ino), size: st.Size, mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano()}
}

// DefaultHashSlots is the default number of password verifications at
// once: one per CPU, at least 2. Each argon2id verification takes its m
// of memory (64 MiB for the hashes HashPassword makes).
func DefaultHashSlots() int { return max(2, runtime.GOMAXPROCS(0)) }

// LoadUsers reads a users file. The error names the file and the line of
// every malformed line.
func LoadUsers(path string) (*Users, error) {
	u := &Users{path: path}
	if err := u.load(); err != nil {
		return nil, err
	}
	return u, nil
}

func (u *Users) load() error {
	f, err := os.Open(u.path)
	if err != nil {
		return fmt.Errorf("users file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("users file: %w", err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return fmt.Errorf("users file: %w", err)
	}
	lines, err := parseUsers(u.path, data)
	if err != nil {
		return err
	}
	byAddr, addresses := map[string]string{}, []string(nil)
	for _, l := range lines {
		if l.addr != "" {
			byAddr[strings.ToLower(l.addr)] = l.hash
			addresses = append(addresses, l.addr)
		}
	}
	u.mu.Lock()
	u.byAddr, u.addresses, u.file, u.reloadErr = byAddr, addresses, stampOf(fi), nil
	u.mu.Unlock()
	return nil
}

// refresh reads the file again if it changed since it was read. A file
// that cannot be read or parsed leaves the set as it was (ReloadError
// says why), as a failed SIGHUP reload does.
func (u *Users) refresh() {
	if u.path == "" {
		return
	}
	fi, err := os.Stat(u.path)
	if err != nil {
		u.mu.Lock()
		u.reloadErr = fmt.Errorf("users file: %w", err)
		u.mu.Unlock()
		return
	}
	u.mu.RLock()
	same := u.file == stampOf(fi)
	u.mu.RUnlock()
	if same {
		return
	}
	if err := u.load(); err != nil {
		u.mu.Lock()
		u.reloadErr = err
		u.file = stampOf(fi) // not again until it changes again
		u.mu.Unlock()
	}
}

// ReloadError is why the last change of the users file could not be
// read (the users read before still apply), or nil.
func (u *Users) ReloadError() error {
	u.mu.RLock()
	defer u.mu.RUnlock()
	return u.reloadErr
}

// Replace makes u hold the users of n (a reloaded file). Sessions that
// are authenticating finish against the old set.
func (u *Users) Replace(n *Users) {
	n.mu.RLock()
	byAddr, addresses, file := n.byAddr, n.addresses, n.file
	n.mu.RUnlock()
	u.mu.Lock()
	u.byAddr, u.addresses, u.file, u.reloadErr = byAddr, addresses, file, nil
	u.mu.Unlock()
}

// Addresses returns the users' addresses as written, in file order.
func (u *Users) Addresses() []string {
	u.mu.RLock()
	defer u.mu.RUnlock()
	return append([]string(nil), u.addresses...)
}

// MaxHashMemory is the largest memory, in bytes, one verification of a
// password of u takes (argon2id's m; bcrypt's few KiB count as 0), and
// at least that of the hash unknown users are checked against.
func (u *Users) MaxHashMemory() int64 {
	p, _ := parseArgon2id(dummyHash)
	m := int64(p.memory)
	u.mu.RLock()
	defer u.mu.RUnlock()
	for _, h := range u.byAddr {
		if p, err := parseArgon2id(h); err == nil {
			m = max(m, int64(p.memory))
		}
	}
	return m << 10
}

// Stamp is the hash of user's password now (Stamper): a cached
// verification holds only while it is the same.
func (u *Users) Stamp(user string) (string, bool) {
	u.refresh()
	u.mu.RLock()
	defer u.mu.RUnlock()
	h, ok := u.byAddr[strings.ToLower(user)]
	return h, ok
}

// UseWorker makes Verify hash in w's child process. Call it before the
// Users serve logins.
func (u *Users) UseWorker(w *HashWorker) { u.worker = w }

// Verify is Authenticate for the Guard (Verifier). Hashing inline, the
// users file always answers; in a worker (UseWorker), an error is a
// worker that did not answer (the Guard replies 454 4.7.0, try again).
func (u *Users) Verify(ctx context.Context, user, password string, _ ClientInfo) (bool, error) {
	u.refresh()
	if u.worker == nil {
		return u.Authenticate(user, password), nil
	}
	u.mu.RLock()
	hash, ok := u.byAddr[strings.ToLower(user)]
	u.mu.RUnlock()
	if !ok {
		hash = dummyHash // the same cost for an unknown address
	}
	good, err := u.worker.Check(ctx, hash, password)
	return good && ok, err
}

// Authenticate reports whether password is the password of address.
// Addresses compare case-insensitively: a PEC mailbox is one mailbox
// whatever the case its owner types (RFC 5321 §2.4 lets the server
// decide). An unknown address costs the same argon2id verification as a
// known one, so the time of the answer does not tell which exist. The
// number of verifications at once is the Guard's to bound (its hashing
// slots).
func (u *Users) Authenticate(address, password string) bool {
	u.mu.RLock()
	hash, ok := u.byAddr[strings.ToLower(address)]
	u.mu.RUnlock()
	if !ok {
		verify(dummyHash, password)
		return false
	}
	return verify(hash, password)
}

// verify checks password against a PHC hash; any malformed hash fails.
func verify(hash, password string) bool {
	if strings.HasPrefix(hash, "$argon2id$") {
		p, err := parseArgon2id(hash)
		if err != nil {
			return false
		}
		k := argon2.IDKey([]byte(password), p.salt, p.time, p.memory, p.threads, uint32(len(p.key)))
		return subtle.ConstantTimeCompare(k, p.key) == 1
	}
	return bcrypt.CompareHashAndPassword([]byte(hash), []byte(password)) == nil
}

// HashPassword returns the argon2id PHC string of a new password.
func HashPassword(pw string) (string, error) {
	if err := checkPassword(pw); err != nil {
		return "", err
	}
	salt := make([]byte, argonSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("hash password: %w", err)
	}
	k := argon2.IDKey([]byte(pw), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	e := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemory, argonTime, argonThreads,
		e.EncodeToString(salt), e.EncodeToString(k)), nil
}

// checkPassword refuses passwords AUTH could never carry: RFC 4616 §2
// (PLAIN) forbids NUL in the password, and it must not be empty.
func checkPassword(pw string) error {
	switch {
	case pw == "":
		return errors.New("empty password")
	case strings.ContainsAny(pw, "\x00\r\n"):
		return errors.New("password contains NUL or a line break")
	case !utf8.ValidString(pw):
		return errors.New("password is not valid UTF-8")
	}
	return nil
}

type argon2Params struct {
	memory, time uint32
	threads      uint8
	salt, key    []byte
}

// parseArgon2id parses $argon2id$v=19$m=M,t=T,p=P$salt$key (the PHC
// string format; salt and key in base64 without padding).
func parseArgon2id(h string) (argon2Params, error) {
	var p argon2Params
	f := strings.Split(h, "$")
	if len(f) != 6 || f[0] != "" || f[1] != "argon2id" {
		return p, errors.New("argon2id hash: not $argon2id$v=19$m=…,t=…,p=…$salt$hash")
	}
	if f[2] != "v="+strconv.Itoa(argon2.Version) {
		return p, fmt.Errorf("argon2id hash: version %q, want v=%d", f[2], argon2.Version)
	}
	kv := strings.Split(f[3], ",")
	if len(kv) != 3 {
		return p, errors.New("argon2id hash: parameters are not m=…,t=…,p=…")
	}
	var vals [3]uint64
	for i, name := range []string{"m=", "t=", "p="} {
		s, ok := strings.CutPrefix(kv[i], name)
		n, err := strconv.ParseUint(s, 10, 32)
		if !ok || err != nil {
			return p, errors.New("argon2id hash: parameters are not m=…,t=…,p=…")
		}
		vals[i] = n
	}
	m, t, par := vals[0], vals[1], vals[2]
	switch {
	case par < 1 || par > 255:
		return p, fmt.Errorf("argon2id hash: p=%d not between 1 and 255", par)
	case m < 8*par || m > maxArgonMemory:
		return p, fmt.Errorf("argon2id hash: m=%d not between 8×p and %d", m, maxArgonMemory)
	case t < 1 || t > maxArgonTime:
		return p, fmt.Errorf("argon2id hash: t=%d not between 1 and %d", t, maxArgonTime)
	}
	salt, err := base64.RawStdEncoding.Strict().DecodeString(f[4])
	if err != nil || len(salt) < minArgonSalt {
		return p, fmt.Errorf("argon2id hash: salt is not base64 of at least %d octets", minArgonSalt)
	}
	key, err := base64.RawStdEncoding.Strict().DecodeString(f[5])
	if err != nil || len(key) < minArgonKey || len(key) > maxArgonKey {
		return p, fmt.Errorf("argon2id hash: hash is not base64 of %d to %d octets", minArgonKey, maxArgonKey)
	}
	return argon2Params{memory: uint32(m), time: uint32(t), threads: uint8(par), salt: salt, key: key}, nil
}

// checkHash checks that a stored hash is one Authenticate can verify.
func checkHash(h string) error {
	switch {
	case strings.HasPrefix(h, "$argon2id$"):
		_, err := parseArgon2id(h)
		return err
	case strings.HasPrefix(h, "$2a$"), strings.HasPrefix(h, "$2b$"), strings.HasPrefix(h, "$2y$"):
		if _, err := bcrypt.Cost([]byte(h)); err != nil {
			return fmt.Errorf("bcrypt hash: %w", err)
		}
		return nil
	default:
		return errors.New("hash is neither argon2id ($argon2id$) nor bcrypt ($2a$, $2b$, $2y$)")
	}
}

// CheckAddress checks a user's address: an RFC 5321 §4.1.2 Mailbox with
// a Dot-string local part (quoted local parts are refused: they may hold
// "@" and ":") and a domain name (no address literal), within the
// lengths of RFC 5321 §4.5.3.1. UTF-8 is allowed as RFC 6531 §3.3 does.
func CheckAddress(a string) error {
	if !utf8.ValidString(a) {
		return fmt.Errorf("address %q is not valid UTF-8", a)
	}
	local, domain, ok := strings.Cut(a, "@")
	if !ok || strings.Contains(domain, "@") {
		return fmt.Errorf("address %q must have exactly one @", a)
	}
	if len(a) > 254 {
		return fmt.Errorf("address %q is longer than 254 octets (RFC 5321 §4.5.3.1.3)", a)
	}
	if local == "" || len(local) > 64 {
		return fmt.Errorf("address %q: local part must be 1 to 64 octets (RFC 5321 §4.5.3.1.1)", a)
	}
	for _, atom := range strings.Split(local, ".") {
		if atom == "" {
			return fmt.Errorf("address %q: local part has an empty atom (leading, trailing or double dot)", a)
		}
		for _, r := range atom {
			if !isAtext(r) {
				return fmt.Errorf("address %q: character %q not allowed in a local part (quoted local parts are not supported)", a, r)
			}
		}
	}
	if strings.HasPrefix(domain, "[") {
		return fmt.Errorf("address %q: address literals are not allowed, use a domain name", a)
	}
	if err := checkDomain(domain); err != nil {
		return fmt.Errorf("address %q: %w", a, err)
	}
	return nil
}

// isAtext is RFC 5322 §3.2.3 atext, plus UTF8-non-ascii (RFC 6531 §3.3).
func isAtext(r rune) bool {
	switch {
	case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		return true
	case r >= 0x80:
		return r != utf8.RuneError
	}
	return strings.ContainsRune("!#$%&'*+-/=?^_`{|}~", r)
}

// checkDomain checks a mail domain: at least two labels of letters,
// digits and hyphens, in A-label form once internationalised names are
// converted (RFC 5321 §4.1.2, RFC 5890).
func checkDomain(d string) error {
	ascii, err := idna.Lookup.ToASCII(d)
	if err != nil || ascii == "" {
		return fmt.Errorf("domain %q is not a valid domain name", d)
	}
	labels := strings.Split(ascii, ".")
	if len(ascii) > 253 || len(labels) < 2 {
		return fmt.Errorf("domain %q is not a fully qualified domain name", d)
	}
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("domain %q has an invalid label %q", d, l)
		}
		for i := 0; i < len(l); i++ {
			if c := l[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("domain %q has an invalid label %q", d, l)
			}
		}
	}
	return nil
}

// userLine is one line of a users file; addr is "" for comments and
// blank lines, which are kept as text.
type userLine struct {
	text       string
	addr, hash string
}

// parseUsers splits a users file into its lines, reporting every
// malformed line as path:line.
func parseUsers(path string, data []byte) ([]userLine, error) {
	var lines []userLine
	var errs []error
	seen := map[string]int{}
	text := strings.TrimSuffix(string(data), "\n")
	if text == "" {
		return nil, nil
	}
	for i, raw := range strings.Split(text, "\n") {
		n := i + 1
		raw = strings.TrimSuffix(raw, "\r")
		t := strings.TrimSpace(raw)
		if t == "" || strings.HasPrefix(t, "#") {
			lines = append(lines, userLine{text: raw})
			continue
		}
		addr, hash, ok := strings.Cut(t, ":")
		if !ok {
			errs = append(errs, fmt.Errorf("%s:%d: not address:hash", path, n))
			continue
		}
		if err := CheckAddress(addr); err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: %w", path, n, err))
			continue
		}
		if err := checkHash(hash); err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: %s: %w", path, n, addr, err))
			continue
		}
		key := strings.ToLower(addr)
		if first, dup := seen[key]; dup {
			errs = append(errs, fmt.Errorf("%s:%d: %s is already on line %d", path, n, addr, first))
			continue
		}
		seen[key] = n
		lines = append(lines, userLine{text: raw, addr: addr, hash: hash})
	}
	return lines, errors.Join(errs...)
}

// ErrUserExists and ErrNoUser are the errors of AddUser, SetPassword and
// DeleteUser for an address already there or not there.
var (
	ErrUserExists = errors.New("user already exists")
	ErrNoUser     = errors.New("no such user")
)

// AddUser adds address with password (hashed with argon2id) at the end of
// the users file, creating the file (mode 0600) if needed.
func AddUser(path, address, password string) error {
	if err := CheckAddress(address); err != nil {
		return err
	}
	hash, err := HashPassword(password)
	if err != nil {
		return err
	}
	return editUsers(path, true, func(lines []userLine) ([]userLine, error) {
		if i := find(lines, address); i >= 0 {
			return nil, fmt.Errorf("%s: %w (as %s)", address, ErrUserExists, lines[i].addr)
		}
		return append(lines, userLine{text: address + ":" + hash, addr: address, hash: hash}), nil
	})
}

// SetPassword replaces the password of address; its line keeps its place.
func SetPassword(path, address, password string) error {
	hash, err := HashPassword(password)
	if err != nil {
		return err
	}
	return editUsers(path, false, func(lines []userLine) ([]userLine, error) {
		i := find(lines, address)
		if i < 0 {
			return nil, fmt.Errorf("%s: %w", address, ErrNoUser)
		}
		lines[i].hash = hash
		lines[i].text = lines[i].addr + ":" + hash
		return lines, nil
	})
}

// DeleteUser removes the line of address.
func DeleteUser(path, address string) error {
	return editUsers(path, false, func(lines []userLine) ([]userLine, error) {
		i := find(lines, address)
		if i < 0 {
			return nil, fmt.Errorf("%s: %w", address, ErrNoUser)
		}
		return append(lines[:i], lines[i+1:]...), nil
	})
}

func find(lines []userLine, address string) int {
	for i, l := range lines {
		if l.addr != "" && strings.EqualFold(l.addr, address) {
			return i
		}
	}
	return -1
}

// editUsers rewrites the users file through edit, atomically (safeio:
// temporary file, fsync, rename, fsync of the folder) and with mode 0600.
// An flock on the file serialises editors, so two "pecgw user add" at
// once do not lose one of the users. A file with malformed lines is not
// edited: it is reported, as LoadUsers would.
func editUsers(path string, create bool, edit func([]userLine) ([]userLine, error)) error {
	f, err := lockUsers(path, create)
	if err != nil {
		return fmt.Errorf("users file: %w", err)
	}
	defer f.Close() // releases the lock
	data, err := io.ReadAll(f)
	if err != nil {
		return fmt.Errorf("users file: %w", err)
	}
	lines, err := parseUsers(path, data)
	if err != nil {
		return err
	}
	lines, err = edit(lines)
	if err != nil {
		return err
	}
	var b bytes.Buffer
	for _, l := range lines {
		b.WriteString(l.text)
		b.WriteByte('\n')
	}
	if err := safeio.WriteFile(path, b.Bytes(), 0o600); err != nil {
		return fmt.Errorf("users file: %w", err)
	}
	return nil
}

// lockUsers opens path and takes an exclusive flock on it. The rename of
// an editor replaces the file, so a lock obtained on the replaced file is
// dropped and taken again on the current one.
func lockUsers(path string, create bool) (*os.File, error) {
	flags := os.O_RDONLY
	if create {
		flags = os.O_RDWR | os.O_CREATE
	}
	for {
		f, err := os.OpenFile(path, flags, 0o600)
		if err != nil {
			return nil, err
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		held, err1 := f.Stat()
		cur, err2 := os.Stat(path)
		if err1 == nil && err2 == nil && os.SameFile(held, cur) {
			return f, nil
		}
		f.Close()
		if err2 != nil && !errors.Is(err2, fs.ErrNotExist) {
			return nil, err2
		}
		if err2 != nil && !create {
			return nil, err2
		}
	}
}
