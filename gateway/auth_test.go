package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// countingUsers is a Verifier that counts its calls, may take its time,
// and stamps each password (a Stamper, as Users is).
type countingUsers struct {
	mu    sync.Mutex
	pw    map[string]string
	calls atomic.Int64
	delay time.Duration
	err   error
}

func newCountingUsers(pw map[string]string) *countingUsers { return &countingUsers{pw: pw} }

func (u *countingUsers) Verify(ctx context.Context, user, password string, _ ClientInfo) (bool, error) {
	u.calls.Add(1)
	if u.delay > 0 {
		time.Sleep(u.delay)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.err != nil {
		return false, u.err
	}
	pw, ok := u.pw[strings.ToLower(user)]
	return ok && pw == password, nil
}

func (u *countingUsers) Stamp(user string) (string, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	pw, ok := u.pw[user]
	return "stamp:" + pw, ok
}

func (u *countingUsers) set(user, pw string) {
	u.mu.Lock()
	u.pw[user] = pw
	u.mu.Unlock()
}

// office is the users of the AUTH tests: two colleagues behind one NAT
// address.
func office() map[string]string {
	return map[string]string{"mario@pec.example.it": "s3cret", "luca@pec.example.it": "luca-pw"}
}

// guardServer starts the test server with a Guard over users under p.
func guardServer(t *testing.T, users Verifier, p AuthPolicy) *testServer {
	t.Helper()
	return startTestServer(t, 10*time.Second, func(b *Backend) { b.Auth = NewGuard(users, p, nil) })
}

// authFrom opens an implicit-TLS session from the loopback address local
// and tries PLAIN with user and password.
func (ts *testServer) authFrom(t *testing.T, local, user, password string) error {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", ts.smtps, ts.client)
	if err != nil {
		t.Fatal(err)
	}
	c := smtp.NewClient(conn)
	defer c.Close()
	return c.Auth(sasl.NewPlainClient("", user, password))
}

func wantCode(t *testing.T, what string, err error, code int, enh smtp.EnhancedCode) {
	t.Helper()
	if got, gotEnh, msg := smtpCode(err); got != code || gotEnh != enh {
		t.Errorf("%s: %d %v %q (%v), want %d %v", what, got, gotEnh, msg, err, code, enh)
	}
}

var (
	enhFailed = smtp.EnhancedCode{5, 7, 8}
	enhTemp   = smtp.EnhancedCode{4, 7, 0}
)

// TestLockoutPerAccount: the lockout is of one account from one address,
// with a reply that says so and until when; a colleague behind the same
// address, and the same account from elsewhere, still log in; the
// reply is the same for an account that does not exist.
func TestLockoutPerAccount(t *testing.T) {
	const window = 2 * time.Second
	ts := guardServer(t, newCountingUsers(office()), AuthPolicy{LockoutFailures: 3, AddressLockoutFailures: 100, Window: window,
		FailuresBeforeDelay: 100, MinAuthTime: time.Millisecond})
	for i := range 3 {
		wantCode(t, "wrong password", ts.authFrom(t, "127.0.0.1", "mario@pec.example.it", fmt.Sprint("typo", i)), 535, enhFailed)
	}
	locked := time.Now()
	err := ts.authFrom(t, "127.0.0.1", "mario@pec.example.it", "s3cret")
	wantCode(t, "right password, locked", err, 454, enhTemp)
	_, _, msg := smtpCode(err)
	for _, want := range []string{"mario@pec.example.it", "127.0.0.1", "refused until", " UTC", "whatever the password"} {
		if !strings.Contains(msg, want) {
			t.Errorf("lockout reply %q lacks %q", msg, want)
		}
	}
	if err := ts.authFrom(t, "127.0.0.1", "luca@pec.example.it", "luca-pw"); err != nil {
		t.Errorf("a colleague behind the same address during the lockout: %v", err)
	}
	if err := ts.authFrom(t, "127.0.0.2", "mario@pec.example.it", "s3cret"); err != nil {
		t.Errorf("the same account from another address: %v", err)
	}
	for i := range 3 {
		ts.authFrom(t, "127.0.0.1", "nobody@pec.example.it", fmt.Sprint("guess", i))
	}
	_, _, ghost := smtpCode(ts.authFrom(t, "127.0.0.1", "nobody@pec.example.it", "x"))
	if strings.Replace(ghost, "nobody@", "mario@", 1)[:60] != msg[:60] {
		t.Errorf("lockout of an unknown account %q differs from a real one's %q", ghost, msg)
	}
	time.Sleep(window - time.Since(locked) + 200*time.Millisecond)
	if err := ts.authFrom(t, "127.0.0.1", "mario@pec.example.it", "s3cret"); err != nil {
		t.Errorf("right password after the lockout: %v", err)
	}
}

// TestOwnLoginDoesNotResetOthers: 9 guesses at bob, a valid login of
// one's own, 9 more: bob is locked at the 10th failure (the bypass the
// per-address count had).
func TestOwnLoginDoesNotResetOthers(t *testing.T) {
	users := newCountingUsers(map[string]string{"mario@pec.example.it": "s3cret", "bob@pec.example.it": "bob-pw"})
	ts := guardServer(t, users, AuthPolicy{LockoutFailures: 10, AddressLockoutFailures: 1000, Window: time.Minute,
		FailuresBeforeDelay: 1000, MinAuthTime: time.Millisecond})
	results := map[int]int{}
	for round := range 2 {
		for i := range 9 {
			code, _, _ := smtpCode(ts.authFrom(t, "127.0.0.1", "bob@pec.example.it", fmt.Sprint("guess", round, i)))
			results[code]++
		}
		if err := ts.authFrom(t, "127.0.0.1", "mario@pec.example.it", "s3cret"); err != nil {
			t.Fatalf("own login: %v", err)
		}
	}
	if results[535] != 10 || results[454] != 8 {
		t.Errorf("18 guesses at bob with own logins between: %v, want 10×535 then 8×454", results)
	}
	wantCode(t, "bob's right password", ts.authFrom(t, "127.0.0.1", "bob@pec.example.it", "bob-pw"), 454, enhTemp)
}

// TestSuccessResetsItsOwnAccount: failures then success, again and
// again, never lock the account.
func TestSuccessResetsItsOwnAccount(t *testing.T) {
	ts := guardServer(t, newCountingUsers(office()), AuthPolicy{LockoutFailures: 3, Window: time.Minute, MinAuthTime: time.Millisecond, Delay: time.Millisecond})
	for round := range 3 {
		for i := range 2 {
			wantCode(t, "wrong password", ts.authFrom(t, "127.0.0.1", "mario@pec.example.it", fmt.Sprint("w", round, i)), 535, enhFailed)
		}
		if err := ts.authFrom(t, "127.0.0.1", "mario@pec.example.it", "s3cret"); err != nil {
			t.Fatalf("round %d: right password after 2 failures: %v", round, err)
		}
	}
}

// TestRepeatedWrongPasswordCountsOnce: Thunderbird tries PLAIN, then
// LOGIN, with the same saved password; that is one typo, not two, and
// the second answer costs no verification.
func TestRepeatedWrongPasswordCountsOnce(t *testing.T) {
	users := newCountingUsers(office())
	ts := guardServer(t, users, AuthPolicy{LockoutFailures: 3, Window: time.Minute, MinAuthTime: time.Millisecond, Delay: time.Millisecond})
	c := ts.dial(t, true)
	for i := range 6 {
		var a sasl.Client = sasl.NewPlainClient("", "mario@pec.example.it", "old-password")
		if i%2 == 1 {
			a = sasl.NewLoginClient("mario@pec.example.it", "old-password")
		}
		if i == 3 {
			c = ts.dial(t, true) // go-smtp closes after a few failed commands
		}
		wantCode(t, "the saved wrong password", c.Auth(a), 535, enhFailed)
	}
	if n := users.calls.Load(); n != 1 {
		t.Errorf("%d verifications of one wrong password, want 1", n)
	}
	if err := ts.authFrom(t, "127.0.0.1", "mario@pec.example.it", "s3cret"); err != nil {
		t.Errorf("right password after the same typo 6 times: %v", err)
	}
}

// TestConcurrentGuessesBounded: 20 connections at once from one address
// get no more verifications than the lockout allows.
func TestConcurrentGuessesBounded(t *testing.T) {
	users := newCountingUsers(office())
	users.delay = 50 * time.Millisecond
	ts := guardServer(t, users, AuthPolicy{LockoutFailures: 10, Window: time.Minute, MinAuthTime: time.Millisecond, Delay: time.Millisecond, Slots: 4})
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ts.authFrom(t, "127.0.0.1", "mario@pec.example.it", fmt.Sprint("guess", i))
		}()
	}
	wg.Wait()
	if n := users.calls.Load(); n > 10 {
		t.Errorf("20 concurrent guesses got %d verifications, want at most the lockout's 10", n)
	}
}

// TestAddressLockout: many accounts guessed from one address lock the
// address out, for every account.
func TestAddressLockout(t *testing.T) {
	ts := guardServer(t, newCountingUsers(office()), AuthPolicy{LockoutFailures: 3, AddressLockoutFailures: 5, Window: time.Minute,
		FailuresBeforeDelay: 100, MinAuthTime: time.Millisecond})
	for i := range 5 {
		wantCode(t, "guess", ts.authFrom(t, "127.0.0.9", fmt.Sprintf("user%d@pec.example.it", i), "x"), 535, enhFailed)
	}
	err := ts.authFrom(t, "127.0.0.9", "luca@pec.example.it", "luca-pw")
	wantCode(t, "right password from the locked address", err, 454, enhTemp)
	if _, _, msg := smtpCode(err); !strings.Contains(msg, "from 127.0.0.9") || !strings.Contains(msg, "whatever the account") {
		t.Errorf("address lockout reply %q", msg)
	}
	if err := ts.authFrom(t, "127.0.0.10", "luca@pec.example.it", "luca-pw"); err != nil {
		t.Errorf("another address: %v", err)
	}
}

// TestTimeFloorOnFailuresOnly: a failure, for an unknown account or a
// wrong password, takes MinAuthTime; a success answers at once.
func TestTimeFloorOnFailuresOnly(t *testing.T) {
	const floor = 250 * time.Millisecond
	ts := guardServer(t, newCountingUsers(office()), AuthPolicy{MinAuthTime: floor, Window: time.Minute})
	timed := func(user, pw string) (time.Duration, error) {
		c := ts.dial(t, true)
		start := time.Now()
		err := c.Auth(sasl.NewPlainClient("", user, pw))
		return time.Since(start), err
	}
	for _, tc := range [][2]string{{"nobody@pec.example.it", "s3cret"}, {"mario@pec.example.it", "wrong"}} {
		if d, err := timed(tc[0], tc[1]); err == nil || d < floor {
			t.Errorf("%s: answered after %v (%v), want a failure after at least %v", tc[0], d, err, floor)
		}
	}
	for i := range 2 { // verified, then cached
		if d, err := timed("mario@pec.example.it", "s3cret"); err != nil || d >= floor {
			t.Errorf("success %d: answered after %v (%v), want at once", i, d, err)
		}
	}
}

// TestCache: a verified password is remembered for its user and stamp:
// no second verification until the stamp changes, the TTL ends, the
// cache is dropped or overflows; a wrong password is always verified.
func TestCache(t *testing.T) {
	users := newCountingUsers(office())
	now := time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)
	g := NewGuard(users, AuthPolicy{MinAuthTime: time.Nanosecond, CacheTTL: time.Hour, CacheSize: 2}, nil)
	g.now = func() time.Time { return now }
	ci := ClientInfo{Addr: netip.MustParseAddrPort("192.0.2.1:40000")}
	check := func(what, user, pw string, want AuthResult, wantCalls int64) {
		t.Helper()
		users.calls.Store(0)
		if a := g.Check(context.Background(), ci, user, pw, false); a.Result != want || users.calls.Load() != wantCalls {
			t.Errorf("%s: %v with %d verifications, want %v with %d", what, a.Result, users.calls.Load(), want, wantCalls)
		}
	}
	check("first login", "mario@pec.example.it", "s3cret", AuthOK, 1)
	check("repeat login", "MARIO@pec.example.it", "s3cret", AuthOK, 0)
	check("wrong password", "mario@pec.example.it", "other", AuthFailed, 1)
	check("repeat login after a wrong one", "mario@pec.example.it", "s3cret", AuthOK, 0)
	users.set("mario@pec.example.it", "new-pw") // pecgw user passwd
	check("old password after the change", "mario@pec.example.it", "s3cret", AuthFailed, 1)
	check("new password", "mario@pec.example.it", "new-pw", AuthOK, 1)
	check("new password again", "mario@pec.example.it", "new-pw", AuthOK, 0)
	now = now.Add(time.Hour)
	check("after the TTL", "mario@pec.example.it", "new-pw", AuthOK, 1)
	g.DropCache()
	check("after DropCache", "mario@pec.example.it", "new-pw", AuthOK, 1)
	check("second user", "luca@pec.example.it", "luca-pw", AuthOK, 1)
	users.set("anna@pec.example.it", "anna-pw")
	check("third user, over the size", "anna@pec.example.it", "anna-pw", AuthOK, 1)
	check("first user after the overflow", "mario@pec.example.it", "new-pw", AuthOK, 1)
	users.mu.Lock()
	delete(users.pw, "mario@pec.example.it") // pecgw user del
	users.mu.Unlock()
	check("a deleted user's cached password", "mario@pec.example.it", "new-pw", AuthFailed, 1)
}

// TestSlotsCleanFirst: with every slot taken, a waiting request whose
// account, address and network have no failures gets the next slot
// before the suspect ones that came earlier; a wait beyond SlotWait is
// AuthBusy.
func TestSlotsCleanFirst(t *testing.T) {
	s := newSlots(1)
	if err := s.acquire(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	order := make(chan string, 3)
	var wg sync.WaitGroup
	for _, w := range []struct {
		name    string
		suspect bool
	}{{"suspect-1", true}, {"suspect-2", true}, {"clean", false}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.acquire(context.Background(), w.suspect); err != nil {
				t.Error(err)
				return
			}
			order <- w.name
			s.release()
		}()
		time.Sleep(20 * time.Millisecond) // queue in this order
	}
	s.release()
	wg.Wait()
	close(order)
	var got []string
	for n := range order {
		got = append(got, n)
	}
	if strings.Join(got, ",") != "clean,suspect-1,suspect-2" {
		t.Errorf("slots given in the order %v", got)
	}

	users := newCountingUsers(office())
	users.delay = 300 * time.Millisecond
	g := NewGuard(users, AuthPolicy{MinAuthTime: time.Nanosecond, Slots: 1, SlotWait: 50 * time.Millisecond}, nil)
	go g.Check(context.Background(), ClientInfo{}, "luca@pec.example.it", "luca-pw", false)
	time.Sleep(20 * time.Millisecond)
	if a := g.Check(context.Background(), ClientInfo{}, "mario@pec.example.it", "s3cret", false); a.Result != AuthBusy {
		t.Errorf("with the only slot taken for longer than SlotWait: %v, want busy", a.Result)
	}
}

// TestStoreUnavailable: a store that cannot answer gives 454 4.7.0 and
// counts no failure.
func TestStoreUnavailable(t *testing.T) {
	users := newCountingUsers(office())
	users.err = fmt.Errorf("dovecot: connection refused")
	ts := guardServer(t, users, AuthPolicy{LockoutFailures: 2, Window: time.Minute, MinAuthTime: time.Millisecond})
	for range 3 {
		err := ts.authFrom(t, "127.0.0.1", "mario@pec.example.it", "s3cret")
		wantCode(t, "store down", err, 454, enhTemp)
		if _, _, msg := smtpCode(err); !strings.Contains(msg, "cannot be checked right now") {
			t.Errorf("store down: %q", msg)
		}
	}
	users.mu.Lock()
	users.err = nil
	users.mu.Unlock()
	if err := ts.authFrom(t, "127.0.0.1", "mario@pec.example.it", "s3cret"); err != nil {
		t.Errorf("store back: %v", err)
	}
}

// TestFailureRecordsBounded: a flood of addresses cannot grow the
// tables beyond maxAuthRecords.
func TestFailureRecordsBounded(t *testing.T) {
	g := NewGuard(newCountingUsers(office()), AuthPolicy{MinAuthTime: time.Nanosecond, FailuresBeforeDelay: 1000, Window: time.Minute}, nil)
	for i := range maxAuthRecords + 100 {
		ci := ClientInfo{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 1)}
		g.Check(context.Background(), ci, fmt.Sprintf("u%d@pec.example.it", i), "x", false)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for name, n := range map[string]int{"acct": len(g.acct), "addr": len(g.addr), "network": len(g.network), "account": len(g.account)} {
		if n > maxAuthRecords {
			t.Errorf("%s: %d records, want at most %d", name, n, maxAuthRecords)
		}
	}
}

// TestSuspendedAccount: a suspended account logs in, and every MAIL
// FROM gets 550 5.7.1 with the date and the reason; nothing is
// certified; resumed, it sends again.
func TestSuspendedAccount(t *testing.T) {
	path := t.TempDir() + "/users.suspended"
	accounts, err := LoadAccounts(path)
	if err != nil {
		t.Fatal(err)
	}
	ts := startTestServer(t, 10*time.Second, func(b *Backend) { b.Accounts = accounts })
	if err := SuspendAccount(path, "Mario@pec.example.it", "trasferita ad altro gestore", time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	c := ts.dial(t, true)
	if err := c.Auth(sasl.NewPlainClient("", "mario@pec.example.it", "s3cret")); err != nil {
		t.Fatalf("a suspended account logs in: %v", err)
	}
	err = c.Mail("mario@pec.example.it", nil)
	wantCode(t, "MAIL FROM of a suspended account", err, 550, smtp.EnhancedCode{5, 7, 1})
	if _, _, msg := smtpCode(err); !strings.Contains(msg, "suspended since 2026-12-01") || !strings.Contains(msg, "trasferita ad altro gestore") {
		t.Errorf("suspended reply %q", msg)
	}
	if n := ts.delivered(); n != 0 {
		t.Errorf("%d messages handed off for a suspended account", n)
	}
	if err := ResumeAccount(path, "mario@pec.example.it"); err != nil {
		t.Fatal(err)
	}
	if err := sendMail(c, "mario@pec.example.it", []string{"anna@pec.altro.it", "luca@example.com"}, goodMessage); err != nil {
		t.Errorf("after resume: %v", err)
	}
	if err := ResumeAccount(path, "mario@pec.example.it"); !errors.Is(err, ErrNotSuspended) {
		t.Errorf("resume twice: %v", err)
	}
	if err := SuspendAccount(path, "mario@pec.example.it", "line\nbreak", time.Now()); err == nil {
		t.Error("a reason with a line break accepted")
	}
}

// BenchmarkRepeatLogin: the server time of a login the cache answers,
// against a real users file (argon2id): the lookup of the stamp (a stat
// of the file), the keyed hash and the comparison. Compare with
// BenchmarkFirstLogin, a full verification.
func BenchmarkRepeatLogin(b *testing.B) {
	u := benchUsers(b)
	g := NewGuard(u, AuthPolicy{MinAuthTime: time.Nanosecond}, nil)
	ci := ClientInfo{Addr: netip.MustParseAddrPort("192.0.2.1:40000")}
	if a := g.Check(context.Background(), ci, "mario@pec.example.it", "s3cret", false); a.Result != AuthOK {
		b.Fatal(a.Result)
	}
	b.ResetTimer()
	for b.Loop() {
		if a := g.Check(context.Background(), ci, "mario@pec.example.it", "s3cret", false); !a.Cached {
			b.Fatal("not from the cache")
		}
	}
}

func BenchmarkFirstLogin(b *testing.B) {
	u := benchUsers(b)
	ci := ClientInfo{Addr: netip.MustParseAddrPort("192.0.2.1:40000")}
	for b.Loop() {
		g := NewGuard(u, AuthPolicy{MinAuthTime: time.Nanosecond}, nil)
		if a := g.Check(context.Background(), ci, "mario@pec.example.it", "s3cret", false); a.Result != AuthOK || a.Cached {
			b.Fatal(a)
		}
	}
}

func benchUsers(b *testing.B) *Users {
	path := b.TempDir() + "/users"
	if err := AddUser(path, "mario@pec.example.it", "s3cret"); err != nil {
		b.Fatal(err)
	}
	u, err := LoadUsers(path)
	if err != nil {
		b.Fatal(err)
	}
	return u
}

// TestConcurrentSameLogin: 16 connections of one application opening at
// once with the right password (a pool) all log in, with one
// verification; the in-flight count of the lockout does not take them
// for guesses.
func TestConcurrentSameLogin(t *testing.T) {
	users := newCountingUsers(office())
	users.delay = 100 * time.Millisecond
	ts := guardServer(t, users, AuthPolicy{LockoutFailures: 10, Window: time.Minute, MinAuthTime: time.Millisecond, Slots: 2})
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- ts.authFrom(t, "127.0.0.1", "mario@pec.example.it", "s3cret")
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("one of 16 concurrent right logins: %v", err)
		}
	}
	if n := users.calls.Load(); n > 2 {
		t.Errorf("%d verifications for 16 identical logins, want 1 (2 if one arrived after the first finished)", n)
	}
}
