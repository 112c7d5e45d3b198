package gateway

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// referenceArgon2id is the Argon2id vector of the reference
// implementation's test suite (phc-winner-argon2 src/test.c: password
// "password", salt "somesalt", t=2, m=2^16, p=1): a hash we did not make.
const referenceArgon2id = "$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc"

// writeUsers writes a users file and returns its path.
func writeUsers(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func bcryptHash(t *testing.T, pw, prefix string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	// $2a$, $2b$ and $2y$ are the same algorithm for passwords of
	// fewer than 256 octets; they differ only in old implementations' bugs.
	return prefix + string(h[4:])
}

func TestAuthenticate(t *testing.T) {
	argon, err := HashPassword("argon-pw")
	if err != nil {
		t.Fatal(err)
	}
	path := writeUsers(t, fmt.Sprintf(`# users of pec.example.it
mario.rossi@pec.example.it:%s

ref@pec.example.it:%s
b2a@pec.example.it:%s
b2b@pec.example.it:%s
b2y@pec.example.it:%s
`, argon, referenceArgon2id, bcryptHash(t, "pw-a", "$2a$"), bcryptHash(t, "pw-b", "$2b$"), bcryptHash(t, "pw-y", "$2y$")))
	u, err := LoadUsers(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		addr, pw string
		want     bool
	}{
		{"mario.rossi@pec.example.it", "argon-pw", true},
		{"Mario.Rossi@PEC.Example.IT", "argon-pw", true}, // address case-insensitive
		{"mario.rossi@pec.example.it", "Argon-pw", false},
		{"mario.rossi@pec.example.it", "", false},
		{"ref@pec.example.it", "password", true},
		{"ref@pec.example.it", "passwore", false},
		{"b2a@pec.example.it", "pw-a", true},
		{"b2b@pec.example.it", "pw-b", true},
		{"b2y@pec.example.it", "pw-y", true},
		{"b2y@pec.example.it", "pw-a", false},
		{"nobody@pec.example.it", "argon-pw", false},
		{"", "", false},
	} {
		if got := u.Authenticate(tc.addr, tc.pw); got != tc.want {
			t.Errorf("Authenticate(%q, %q) = %v, want %v", tc.addr, tc.pw, got, tc.want)
		}
	}
	want := []string{"mario.rossi@pec.example.it", "ref@pec.example.it", "b2a@pec.example.it", "b2b@pec.example.it", "b2y@pec.example.it"}
	if got := u.Addresses(); !slices.Equal(got, want) {
		t.Errorf("Addresses() = %v", got)
	}
}

// TestUnknownUserCost: an unknown address does the work of a known one
// (a default argon2id verification), so timing does not reveal it.
func TestUnknownUserCost(t *testing.T) {
	p, err := parseArgon2id(dummyHash)
	if err != nil {
		t.Fatal(err)
	}
	if p.memory != argonMemory || p.time != argonTime || p.threads != argonThreads || len(p.key) != argonKeyLen {
		t.Fatalf("dummy hash parameters %+v differ from HashPassword's", p)
	}
	h, err := HashPassword("pw")
	if err != nil {
		t.Fatal(err)
	}
	u, err := LoadUsers(writeUsers(t, "a@pec.example.it:"+h+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	// Interleaved, the best of five each: a burst of load on a shared
	// machine then slows both alike.
	known, unknown := time.Duration(1<<62), time.Duration(1<<62)
	for range 5 {
		for _, addr := range []string{"a@pec.example.it", "z@pec.example.it"} {
			start := time.Now()
			u.Authenticate(addr, "wrong")
			if d := time.Since(start); addr[0] == 'a' {
				known = min(known, d)
			} else {
				unknown = min(unknown, d)
			}
		}
	}
	if unknown < known/2 {
		t.Errorf("unknown user took %v, known %v: the dummy verification is missing", unknown, known)
	}
}

func TestMalformedLines(t *testing.T) {
	good, err := HashPassword("pw")
	if err != nil {
		t.Fatal(err)
	}
	path := writeUsers(t, strings.Join([]string{
		"# comment",
		"ok@pec.example.it:" + good,
		"no-colon-here",
		"two@at@pec.example.it:" + good,
		"plain@pec.example.it:secret",
		"big@pec.example.it:$argon2id$v=19$m=4194304,t=3,p=2$cGVjZ3ctZHVtbXktc2FsdA$+IRg70ZWNjQhiwYdfrSI2lj169kq3gLS+pOQ8nXFgjA",
		"OK@pec.example.it:" + good,
		"bad@pec.example.it:$2b$99$xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
		"\"q\"@pec.example.it:" + good,
		"",
	}, "\n"))
	_, err = LoadUsers(path)
	if err == nil {
		t.Fatal("malformed file loaded")
	}
	msg := err.Error()
	for _, n := range []int{3, 4, 5, 6, 7, 8, 9} {
		if !strings.Contains(msg, fmt.Sprintf("%s:%d: ", path, n)) {
			t.Errorf("line %d not reported:\n%s", n, msg)
		}
	}
	if strings.Contains(msg, ":2: ") || strings.Contains(msg, ":1: ") {
		t.Errorf("good lines reported:\n%s", msg)
	}
	if !strings.Contains(msg, "already on line 2") {
		t.Errorf("case-insensitive duplicate not reported:\n%s", msg)
	}
	if strings.Contains(msg, "secret") && !strings.Contains(msg, "plain@") {
		t.Errorf("unexpected message:\n%s", msg)
	}
}

func TestCheckAddress(t *testing.T) {
	for _, a := range []string{"mario.rossi@pec.example.it", "a+b@pec.example.it", "o'neil@pec.example.it", "perché@pec.città.it", "x@xn--citt-3na.it"} {
		if err := CheckAddress(a); err != nil {
			t.Errorf("CheckAddress(%q) = %v", a, err)
		}
	}
	for _, a := range []string{"", "nobody", "a@b@pec.example.it", "a:b@pec.example.it", "a@pec:example.it", ".a@pec.example.it",
		"a..b@pec.example.it", "a.@pec.example.it", "\"a b\"@pec.example.it", "a@[192.0.2.1]", "a@localhost", "a@-x.it",
		"a b@pec.example.it", strings.Repeat("a", 65) + "@pec.example.it", "a@pec.example.it.", "\xff@pec.example.it"} {
		if err := CheckAddress(a); err == nil {
			t.Errorf("CheckAddress(%q) accepted", a)
		}
	}
}

func TestEditUsers(t *testing.T) {
	other := bcryptHash(t, "old", "$2y$")
	orig := "# pecgw users\n\n# imported from the old system\nold@pec.example.it:" + other + "\n# end\n"
	path := writeUsers(t, orig)

	if err := AddUser(path, "mario@pec.example.it", "pw1"); err != nil {
		t.Fatal(err)
	}
	if err := AddUser(path, "Mario@PEC.example.it", "pw2"); !errors.Is(err, ErrUserExists) {
		t.Errorf("duplicate add: %v", err)
	}
	if err := AddUser(path, "bad:addr@pec.example.it", "pw"); err == nil {
		t.Error("address with a colon added")
	}
	if err := AddUser(path, "x@pec.example.it", ""); err == nil {
		t.Error("empty password accepted")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(data), orig+"mario@pec.example.it:$argon2id$v=19$m=65536,t=3,p=2$") {
		t.Errorf("after add:\n%s", data)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, %v", fi.Mode(), err)
	}

	if err := SetPassword(path, "MARIO@pec.example.it", "pw3"); err != nil {
		t.Fatal(err)
	}
	if err := SetPassword(path, "nobody@pec.example.it", "pw3"); !errors.Is(err, ErrNoUser) {
		t.Errorf("passwd of unknown user: %v", err)
	}
	u, err := LoadUsers(path)
	if err != nil {
		t.Fatal(err)
	}
	if !u.Authenticate("mario@pec.example.it", "pw3") || u.Authenticate("mario@pec.example.it", "pw1") || !u.Authenticate("old@pec.example.it", "old") {
		t.Error("passwords after passwd are wrong")
	}
	if got := u.Addresses(); !slices.Equal(got, []string{"old@pec.example.it", "mario@pec.example.it"}) {
		t.Errorf("order after passwd: %v", got)
	}

	if err := DeleteUser(path, "old@pec.example.it"); err != nil {
		t.Fatal(err)
	}
	if err := DeleteUser(path, "old@pec.example.it"); !errors.Is(err, ErrNoUser) {
		t.Errorf("second delete: %v", err)
	}
	data, _ = os.ReadFile(path)
	lines := strings.Split(string(data), "\n")
	if len(lines) != 6 || lines[0] != "# pecgw users" || lines[1] != "" || lines[2] != "# imported from the old system" ||
		lines[3] != "# end" || !strings.HasPrefix(lines[4], "mario@pec.example.it:$argon2id$") || lines[5] != "" {
		t.Errorf("after delete:\n%s", data)
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("temporary files left: %v", entries)
	}
}

func TestEditRefusesBrokenFile(t *testing.T) {
	path := writeUsers(t, "broken line\n")
	if err := AddUser(path, "a@pec.example.it", "pw"); err == nil || !strings.Contains(err.Error(), path+":1:") {
		t.Errorf("AddUser on a broken file: %v", err)
	}
	if data, _ := os.ReadFile(path); string(data) != "broken line\n" {
		t.Errorf("broken file changed: %q", data)
	}
}

func TestAddCreatesFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	if err := SetPassword(path, "a@pec.example.it", "pw"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("SetPassword on a missing file: %v", err)
	}
	if err := AddUser(path, "a@pec.example.it", "pw"); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%v %v", fi, err)
	}
}

// TestConcurrentAdds: editors serialise on the file lock; no user is lost.
func TestConcurrentAdds(t *testing.T) {
	path := writeUsers(t, "")
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Go(func() {
			if err := AddUser(path, fmt.Sprintf("u%d@pec.example.it", i), "pw"); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	u, err := LoadUsers(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(u.Addresses()); n != 6 {
		t.Errorf("%d users after 6 concurrent adds", n)
	}
}

// TestConcurrentAuthenticate runs logins while the set is replaced (the
// SIGHUP reload), under the race detector.
func TestConcurrentAuthenticate(t *testing.T) {
	h1, _ := HashPassword("one")
	h2, _ := HashPassword("two")
	u1, err := LoadUsers(writeUsers(t, "a@pec.example.it:"+h1+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	u2, err := LoadUsers(writeUsers(t, "a@pec.example.it:"+h2+"\nb@pec.example.it:"+h2+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			pw := "one"
			if i%2 == 1 {
				pw = "two"
			}
			u1.Authenticate("a@pec.example.it", pw)
			u1.Authenticate("b@pec.example.it", pw)
			_ = u1.Addresses()
		})
	}
	wg.Go(func() { u1.Replace(u2) })
	wg.Wait()
	if !u1.Authenticate("b@pec.example.it", "two") || u1.Authenticate("a@pec.example.it", "one") {
		t.Error("Replace did not take effect")
	}
	var zero Users
	if zero.Authenticate("a@pec.example.it", "one") {
		t.Error("a zero Users authenticated someone")
	}
}

func TestHashPassword(t *testing.T) {
	h1, err1 := HashPassword("same")
	h2, err2 := HashPassword("same")
	if err1 != nil || err2 != nil || h1 == h2 {
		t.Errorf("two hashes of one password: %q %q (%v %v): the salt is not random", h1, h2, err1, err2)
	}
	if err := checkHash(h1); err != nil {
		t.Error(err)
	}
	for _, pw := range []string{"", "a\x00b", "a\nb"} {
		if _, err := HashPassword(pw); err == nil {
			t.Errorf("HashPassword(%q) accepted", pw)
		}
	}
}

// TestUsersFollowTheFile: a users file rewritten while the daemon runs
// (pecgw user passwd|del rename a new file over it) is read again at the
// next check, without SIGHUP; a broken rewrite leaves the users as they
// were and says why.
func TestUsersFollowTheFile(t *testing.T) {
	path := writeUsers(t, "mario@pec.example.it:"+bcryptHash(t, "old", "$2b$")+"\n")
	u, err := LoadUsers(path)
	if err != nil {
		t.Fatal(err)
	}
	stamp, _ := u.Stamp("mario@pec.example.it")
	replace := func(text string) {
		tmp := path + ".new"
		if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	replace("mario@pec.example.it:" + bcryptHash(t, "new", "$2b$") + "\nanna@pec.example.it:" + bcryptHash(t, "anna", "$2b$") + "\n")
	if ok, _ := u.Verify(context.Background(), "mario@pec.example.it", "new", ClientInfo{}); !ok {
		t.Error("new password refused after the file changed")
	}
	if ok, _ := u.Verify(context.Background(), "mario@pec.example.it", "old", ClientInfo{}); ok {
		t.Error("old password accepted after the file changed")
	}
	if s, _ := u.Stamp("mario@pec.example.it"); s == stamp {
		t.Error("the stamp did not change with the password")
	}
	replace("anna@pec.example.it:" + bcryptHash(t, "anna", "$2b$") + "\n") // user del mario
	if _, ok := u.Stamp("mario@pec.example.it"); ok {
		t.Error("a deleted user still has a stamp")
	}
	replace("this line is broken\n")
	if ok, _ := u.Verify(context.Background(), "anna@pec.example.it", "anna", ClientInfo{}); !ok {
		t.Error("a broken rewrite dropped the users read before")
	}
	if err := u.ReloadError(); err == nil || !strings.Contains(err.Error(), path+":1") {
		t.Errorf("ReloadError = %v, want the file and line", err)
	}
}
