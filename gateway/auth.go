package gateway

import (
	"container/list"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// The AUTH guard (docs/configuration.md, "Logins under attack"): what
// stands between a password guess and the users' store.
//
//   - Failures count per (address, account) — the lockout — and per
//     address and per network (/24, /64) — the slow-down, and a lockout of
//     the address at a higher threshold. A success resets only its own
//     (address, account): a valid login of one's own does not wipe the
//     count of guesses at someone else's, and one mistyped password in an
//     office behind one NAT address locks out only its own account.
//   - Checks in flight count as failures-to-be: 20 connections at once
//     get no more checks than the lockout allows.
//   - The same wrong password again from the same address and account
//     (Thunderbird tries PLAIN, then LOGIN) is answered from memory and
//     counts once.
//   - A verified (account, password) is remembered under a keyed hash for
//     a TTL, as Dovecot's auth_cache does: a repeat login (a connection per
//     message) costs a hash and a constant-time compare, never a hashing
//     slot, and answers without the time floor.
//   - Hashing slots are few (each argon2id verification takes its m of
//     memory) and handed out first to requests whose account, address and
//     network have no recent failures; a request that waits longer than
//     SlotWait gets 454 4.7.0.
//   - MinAuthTime pads failures only: unknown account and wrong password
//     take the same time; a success proves knowledge of the password and
//     is answered at once.

// Verifier checks passwords where the users are: Users (the users file)
// or Dovecot.
type Verifier interface {
	// Verify reports whether password is user's; (false, nil) for a
	// wrong password or an unknown user, an error only when the store
	// cannot answer (then the client is told to retry).
	Verify(ctx context.Context, user, password string, c ClientInfo) (bool, error)
}

// Stamper is a Verifier that can say what a user's password is now (its
// hash): a cached verification holds only while the stamp is the same,
// so a changed or deleted password ends it at once. Verifiers without it
// (Dovecot) rely on the TTL and on DropCache at SIGHUP.
type Stamper interface {
	Stamp(user string) (string, bool)
}

// ClientInfo is the connection an AUTH comes on.
type ClientInfo struct {
	Addr    netip.AddrPort // the client
	Local   netip.AddrPort // our side
	Secured bool           // over TLS
}

// AuthPolicy configures a Guard; zero fields take the defaults below.
type AuthPolicy struct {
	// After FailuresBeforeDelay failures from an address (10× that from
	// its network) within Window, each further failure is answered after
	// Delay, doubled each time up to 8 × Delay.
	FailuresBeforeDelay int
	Delay               time.Duration
	// LockoutFailures failures for one account from one address within
	// Window lock that account out from that address for Window;
	// AddressLockoutFailures failures from one address, whatever the
	// accounts, lock the address out.
	LockoutFailures        int
	AddressLockoutFailures int
	Window                 time.Duration
	// MinAuthTime is the least time a failed AUTH takes to be answered.
	MinAuthTime time.Duration
	// CacheTTL is how long a verified password is remembered (negative:
	// never); CacheSize bounds the entries (beyond it all are dropped).
	CacheTTL  time.Duration
	CacheSize int
	// Slots is the number of verifications at once; SlotWait the longest
	// wait for one.
	Slots    int
	SlotWait time.Duration
}

// Defaults of AuthPolicy.
const (
	DefaultAuthDelay              = time.Second
	DefaultMinAuthTime            = 300 * time.Millisecond
	DefaultAuthWindow             = 15 * time.Minute
	DefaultLockoutFailures        = 10
	DefaultAddressLockoutFailures = 100
	DefaultCacheTTL               = time.Hour
	DefaultCacheSize              = 100_000
	DefaultSlotWait               = 3 * time.Second
	// netDelayFactor: a network is slowed down after this many times the
	// failures that slow down one address.
	netDelayFactor = 10
	// wrongMemory is how long a wrong password is remembered for its
	// (address, account): long enough for a client's second mechanism.
	wrongMemory = time.Minute
	// wrongKept is the number of wrong passwords remembered per record.
	wrongKept = 4
)

// AuthResult is the outcome of Guard.Check.
type AuthResult int

const (
	AuthOK          AuthResult = iota
	AuthFailed                 // wrong password or unknown account: 535 5.7.8
	AuthLocked                 // too many failures: 454 4.7.0, until Until
	AuthBusy                   // no hashing slot within SlotWait: 454 4.7.0
	AuthUnavailable            // the users' store did not answer: 454 4.7.0
)

func (r AuthResult) String() string {
	return [...]string{"ok", "failed", "locked-out", "busy", "unavailable"}[r]
}

// AuthAnswer is what Guard.Check found.
type AuthAnswer struct {
	Result AuthResult
	// For AuthLocked: until when, and whether the account (from this
	// address) or the whole address is locked.
	Until         time.Time
	AddressLocked bool
	Cached        bool  // AuthOK from the cache
	Err           error // AuthUnavailable: the store's error
}

// Guard checks AUTH attempts under an AuthPolicy. It is safe for
// concurrent use.
type Guard struct {
	v   Verifier
	p   AuthPolicy
	log *zap.Logger
	now func() time.Time
	key [32]byte // of the keyed hashes; random, never leaves the process

	slots *slots

	mu        sync.Mutex
	cache     map[string]cacheEntry // by lower-case account
	acct      map[acctKey]*failRecord
	addr      map[netip.Addr]*failRecord
	network   map[netip.Prefix]*failRecord
	account   map[string]*failRecord // failures of an account from anywhere: priority only
	flights   map[[32]byte]*flight   // verifications in progress, by keyed hash of account and password
	lastSweep time.Time
}

type acctKey struct {
	addr netip.Addr
	user string
}

type cacheEntry struct {
	mac   [32]byte
	stamp string
	until time.Time
}

// failRecord counts failures within a window from its first failure.
type failRecord struct {
	failures    int
	pending     int // checks in flight
	first, last time.Time
	lockedUntil time.Time
	wrong       []wrongPassword
}

type wrongPassword struct {
	mac   [32]byte
	until time.Time
}

// maxAuthRecords bounds each table of failure records: beyond it the
// oldest record is forgotten, so a flood of addresses cannot grow them
// without bound.
const maxAuthRecords = 10000

// NewGuard returns a Guard checking passwords with v.
func NewGuard(v Verifier, p AuthPolicy, log *zap.Logger) *Guard {
	if p.Delay <= 0 {
		p.Delay = DefaultAuthDelay
	}
	if p.MinAuthTime <= 0 {
		p.MinAuthTime = DefaultMinAuthTime
	}
	if p.Window <= 0 {
		p.Window = DefaultAuthWindow
	}
	if p.CacheTTL == 0 {
		p.CacheTTL = DefaultCacheTTL
	}
	if p.CacheSize <= 0 {
		p.CacheSize = DefaultCacheSize
	}
	if p.Slots <= 0 {
		p.Slots = DefaultHashSlots()
	}
	if p.SlotWait <= 0 {
		p.SlotWait = DefaultSlotWait
	}
	if log == nil {
		log = zap.NewNop()
	}
	g := &Guard{v: v, p: p, log: log, now: time.Now, slots: newSlots(p.Slots),
		cache: map[string]cacheEntry{}, acct: map[acctKey]*failRecord{}, addr: map[netip.Addr]*failRecord{},
		network: map[netip.Prefix]*failRecord{}, account: map[string]*failRecord{}, flights: map[[32]byte]*flight{}}
	if _, err := rand.Read(g.key[:]); err != nil {
		panic("crypto/rand: " + err.Error()) // never on Linux ≥ 3.17 (getrandom)
	}
	return g
}

// Policy is the policy in force, defaults filled in.
func (g *Guard) Policy() AuthPolicy { return g.p }

// DropCache forgets every verified password (SIGHUP: the users may have
// changed where no stamp tells).
func (g *Guard) DropCache() {
	g.mu.Lock()
	g.cache = map[string]cacheEntry{}
	g.mu.Unlock()
}

func (g *Guard) mac(user, password string) [32]byte {
	h := hmac.New(sha256.New, g.key[:])
	h.Write([]byte(user))
	h.Write([]byte{0})
	h.Write([]byte(password))
	var m [32]byte
	h.Sum(m[:0])
	return m
}

// Check answers an AUTH of user with password from c. forbid counts a
// failure without looking at the password (PLAIN with someone else's
// authorization identity). Failures are answered no sooner than
// MinAuthTime (and the slow-down) after the call.
func (g *Guard) Check(ctx context.Context, c ClientInfo, user, password string, forbid bool) AuthAnswer {
	start := g.now()
	user = strings.ToLower(user)
	addr := c.Addr.Addr().Unmap()
	ans, delay := g.check(ctx, c, addr, user, password, forbid)
	if ans.Result == AuthFailed || ans.Result == AuthLocked {
		if wait := max(g.p.MinAuthTime-g.now().Sub(start), delay); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
		}
	}
	return ans
}

func (g *Guard) check(ctx context.Context, c ClientInfo, addr netip.Addr, user, password string, forbid bool) (AuthAnswer, time.Duration) {
	mac := g.mac(user, password)
	// With a Stamper, a cached verification holds only for the same
	// stamp of an existing user (a deleted user has none).
	stamp, stampOK := "", true
	if s, ok := g.v.(Stamper); ok {
		stamp, stampOK = s.Stamp(user)
	}

	g.mu.Lock()
	now := g.now()
	g.sweep(now)
	ak := acctKey{addr, user}
	ar, adr, nr := g.live(g.acct[ak], now), g.live(g.addr[addr], now), g.live(g.network[Network(addr)], now)
	if ans, locked := g.lockedLocked(now, ar, adr); locked {
		g.mu.Unlock()
		return ans, 0
	}
	delay := g.delayLocked(adr, nr)
	if !forbid && ar != nil {
		for _, w := range ar.wrong {
			if now.Before(w.until) && subtle.ConstantTimeCompare(w.mac[:], mac[:]) == 1 {
				g.mu.Unlock()
				g.log.Debug("authentication", evAuth, zap.String("ip", addr.String()), logUser(user), zap.String("result", "failed"), zap.Bool("repeated", true))
				return AuthAnswer{Result: AuthFailed}, delay
			}
		}
	}
	if !forbid {
		if e, ok := g.cache[user]; ok {
			if now.Before(e.until) && stampOK && e.stamp == stamp && subtle.ConstantTimeCompare(e.mac[:], mac[:]) == 1 {
				delete(g.acct, ak)
				g.mu.Unlock()
				g.log.Debug("authentication", evAuth, zap.String("ip", addr.String()), logUser(user), zap.String("result", "ok"), zap.Bool("cached", true))
				return AuthAnswer{Result: AuthOK, Cached: true}, 0
			}
		}
	}
	// The same password for the same account already being checked (a
	// client's pool opening its connections at once): its answer is this
	// one's too, counted once and hashed once.
	if f := g.flights[mac]; f != nil && !forbid {
		g.mu.Unlock()
		select {
		case <-f.done:
		case <-ctx.Done():
			return AuthAnswer{Result: AuthBusy}, 0
		}
		if f.answer.Result == AuthFailed {
			return f.answer, delay
		}
		return f.answer, 0
	}
	var f *flight
	if !forbid {
		f = &flight{done: make(chan struct{})}
		g.flights[mac] = f
		defer func() {
			g.mu.Lock()
			delete(g.flights, mac)
			g.mu.Unlock()
			close(f.done)
		}()
	}
	// A check goes ahead: it counts as pending against the lockouts until
	// its answer.
	ar = recordLocked(g.acct, ak, now, g.p.Window)
	adr = recordLocked(g.addr, addr, now, g.p.Window)
	ar.pending++
	adr.pending++
	ur := g.live(g.account[user], now)
	suspect := adr.failures > 0 || ar.failures > 0 || nr != nil && nr.failures > 0 || ur != nil && ur.failures > 0
	g.mu.Unlock()

	ok, err := false, error(nil)
	if !forbid {
		sctx, cancel := context.WithTimeout(ctx, g.p.SlotWait)
		err = g.slots.acquire(sctx, suspect)
		cancel()
		if err != nil {
			g.settle(ak, addr, user, false, false, mac, stamp, now)
			g.log.Warn("authentication waited too long for a hashing slot", evAuth, zap.String("ip", addr.String()), logUser(user),
				zap.String("result", AuthBusy.String()), zap.Duration("waited", g.now().Sub(now)))
			f.answer = AuthAnswer{Result: AuthBusy}
			return f.answer, 0
		}
		ok, err = g.v.Verify(ctx, user, password, c)
		g.slots.release()
		if err != nil {
			g.settle(ak, addr, user, false, false, mac, stamp, now)
			g.log.Warn("authentication: the users' store did not answer", evAuth, zap.String("ip", addr.String()), logUser(user),
				zap.String("result", AuthUnavailable.String()), zap.Error(err))
			f.answer = AuthAnswer{Result: AuthUnavailable, Err: err}
			return f.answer, 0
		}
	}
	if forbid {
		// The password was not looked at: it is not "a wrong one".
		mac = [32]byte{}
	}
	lockedNow := g.settle(ak, addr, user, ok, true, mac, stamp, now)
	result := AuthFailed
	if ok {
		result = AuthOK
	}
	g.log.Debug("authentication", evAuth, zap.String("ip", addr.String()), logUser(user), zap.String("result", result.String()))
	if lockedNow != nil {
		fields := []zap.Field{evAuth, zap.String("ip", addr.String()), zap.String("result", AuthLocked.String()),
			zap.Time("until", lockedNow.Until), zap.Bool("address", lockedNow.AddressLocked)}
		if !lockedNow.AddressLocked {
			fields = append(fields, logUser(user))
		}
		g.log.Warn("authentication locked out after repeated failures", fields...)
	}
	if f != nil {
		f.answer = AuthAnswer{Result: result}
	}
	return AuthAnswer{Result: result}, delay
}

// flight is a verification in progress, which identical requests wait
// for (Guard.flights); answer is set before done closes.
type flight struct {
	done   chan struct{}
	answer AuthAnswer
}

// lockedLocked says whether the account from this address (ar) or the
// address (adr) is locked, counting checks in flight as failures.
func (g *Guard) lockedLocked(now time.Time, ar, adr *failRecord) (AuthAnswer, bool) {
	if adr != nil && g.p.AddressLockoutFailures > 0 &&
		(now.Before(adr.lockedUntil) || adr.failures+adr.pending >= g.p.AddressLockoutFailures) {
		return AuthAnswer{Result: AuthLocked, AddressLocked: true, Until: lockEnd(adr, now, g.p.Window)}, true
	}
	if ar != nil && g.p.LockoutFailures > 0 &&
		(now.Before(ar.lockedUntil) || ar.failures+ar.pending >= g.p.LockoutFailures) {
		return AuthAnswer{Result: AuthLocked, Until: lockEnd(ar, now, g.p.Window)}, true
	}
	return AuthAnswer{}, false
}

// lockEnd is when r's lockout ends; while its last checks are in flight
// (no lockout yet), a window from now.
func lockEnd(r *failRecord, now time.Time, window time.Duration) time.Time {
	if now.Before(r.lockedUntil) {
		return r.lockedUntil
	}
	return now.Add(window)
}

// delayLocked is the slow-down of the next failure from this address and
// network.
func (g *Guard) delayLocked(adr, nr *failRecord) time.Duration {
	after := g.p.FailuresBeforeDelay
	if after <= 0 {
		return 0
	}
	var d time.Duration
	if adr != nil {
		d = stepDelay(g.p.Delay, adr.failures+1, after)
	}
	if nr != nil {
		d = max(d, stepDelay(g.p.Delay, nr.failures+1, after*netDelayFactor))
	}
	return d
}

// maxAuthDelaySteps caps the growing delay at Delay × 2^3.
const maxAuthDelaySteps = 3

// stepDelay is the delay of the n-th failure when delays start after
// the after-th.
func stepDelay(delay time.Duration, n, after int) time.Duration {
	if n <= after {
		return 0
	}
	return delay << min(n-after-1, maxAuthDelaySteps)
}

// settle records the answer of a check begun at begun (counted is false
// when no answer came: busy, unavailable) and returns the lockout it
// started, if any.
func (g *Guard) settle(ak acctKey, addr netip.Addr, user string, ok, counted bool, mac [32]byte, stamp string, begun time.Time) *AuthAnswer {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	ar := recordLocked(g.acct, ak, begun, g.p.Window)
	adr := recordLocked(g.addr, addr, begun, g.p.Window)
	ar.pending = max(0, ar.pending-1)
	adr.pending = max(0, adr.pending-1)
	switch {
	case !counted:
		return nil
	case ok:
		// Only this (address, account) starts again.
		delete(g.acct, ak)
		if len(g.cache) >= g.p.CacheSize {
			g.cache = map[string]cacheEntry{}
		}
		if g.p.CacheTTL > 0 {
			g.cache[ak.user] = cacheEntry{mac: mac, stamp: stamp, until: now.Add(g.p.CacheTTL)}
		}
		return nil
	}
	nr := recordLocked(g.network, Network(addr), now, g.p.Window)
	ur := recordLocked(g.account, user, now, g.p.Window)
	for _, r := range []*failRecord{ar, adr, nr, ur} {
		r.failures++
		r.last = now
	}
	w := wrongPassword{mac: mac, until: now.Add(wrongMemory)}
	switch {
	case mac == [32]byte{}:
	case len(ar.wrong) >= wrongKept:
		copy(ar.wrong, ar.wrong[1:])
		ar.wrong[len(ar.wrong)-1] = w
	default:
		ar.wrong = append(ar.wrong, w)
	}
	if g.p.AddressLockoutFailures > 0 && adr.failures >= g.p.AddressLockoutFailures && !now.Before(adr.lockedUntil) {
		adr.lockedUntil = now.Add(g.p.Window)
		return &AuthAnswer{Result: AuthLocked, AddressLocked: true, Until: adr.lockedUntil}
	}
	if g.p.LockoutFailures > 0 && ar.failures >= g.p.LockoutFailures && !now.Before(ar.lockedUntil) {
		ar.lockedUntil = now.Add(g.p.Window)
		return &AuthAnswer{Result: AuthLocked, Until: ar.lockedUntil}
	}
	return nil
}

// recordLocked returns the live record of k in m, a new one if there is
// none or it expired.
func recordLocked[K comparable](m map[K]*failRecord, k K, now time.Time, window time.Duration) *failRecord {
	r := m[k]
	if r != nil && !r.expired(now, window) {
		return r
	}
	if r != nil {
		delete(m, k)
	}
	if len(m) >= maxAuthRecords {
		evictOldest(m)
	}
	r = &failRecord{first: now, last: now}
	m[k] = r
	return r
}

func evictOldest[K comparable](m map[K]*failRecord) {
	var oldest K
	var t time.Time
	found := false
	for k, r := range m {
		if r.pending > 0 {
			continue // its check will settle it
		}
		if !found || r.last.Before(t) {
			oldest, t, found = k, r.last, true
		}
	}
	if found {
		delete(m, oldest)
	}
}

// live is r, or nil if it expired.
func (g *Guard) live(r *failRecord, now time.Time) *failRecord {
	if r == nil || r.expired(now, g.p.Window) {
		return nil
	}
	return r
}

func (r *failRecord) expired(now time.Time, window time.Duration) bool {
	return r.pending == 0 && !now.Before(r.first.Add(window)) && !now.Before(r.lockedUntil)
}

// sweep forgets expired records and cache entries, at most once a
// minute.
func (g *Guard) sweep(now time.Time) {
	if now.Sub(g.lastSweep) < time.Minute && now.After(g.lastSweep) {
		return
	}
	g.lastSweep = now
	sweepTable(g.acct, now, g.p.Window)
	sweepTable(g.addr, now, g.p.Window)
	sweepTable(g.network, now, g.p.Window)
	sweepTable(g.account, now, g.p.Window)
	for u, e := range g.cache {
		if !now.Before(e.until) {
			delete(g.cache, u)
		}
	}
}

func sweepTable[K comparable](m map[K]*failRecord, now time.Time, window time.Duration) {
	for k, r := range m {
		if r.expired(now, window) {
			delete(m, k)
		}
	}
}

// logUser names the account in the log only when it is an address: a
// user who types the password in the name field must not find it there.
func logUser(user string) zap.Field {
	if CheckAddress(user) != nil {
		return zap.String("user", "(not an address)")
	}
	return zap.String("user", user)
}

// slots is a counting semaphore whose waiters are served clean first:
// a request whose account, address and network have no recent failures
// goes before every suspect one, FIFO within each class.
type slots struct {
	mu             sync.Mutex
	free           int
	clean, suspect list.List // of *slotWaiter
}

type slotWaiter struct {
	ch      chan struct{}
	granted bool
}

func newSlots(n int) *slots { return &slots{free: n} }

var errNoSlot = errors.New("no hashing slot")

func (s *slots) acquire(ctx context.Context, suspect bool) error {
	s.mu.Lock()
	if s.free > 0 {
		s.free--
		s.mu.Unlock()
		return nil
	}
	w := &slotWaiter{ch: make(chan struct{})}
	q := &s.clean
	if suspect {
		q = &s.suspect
	}
	e := q.PushBack(w)
	s.mu.Unlock()
	select {
	case <-w.ch:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		defer s.mu.Unlock()
		if w.granted { // handed over as the wait ended: keep it
			return nil
		}
		q.Remove(e)
		return errNoSlot
	}
}

func (s *slots) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, q := range []*list.List{&s.clean, &s.suspect} {
		if e := q.Front(); e != nil {
			w := q.Remove(e).(*slotWaiter)
			w.granted = true
			close(w.ch)
			return
		}
	}
	s.free++
}
