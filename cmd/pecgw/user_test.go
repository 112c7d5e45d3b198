package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/pecgw/pecgw/gateway"
)

// TestUserLifecycle: init, add (stdin and --generate), list, passwd, del.
func TestUserLifecycle(t *testing.T) {
	cfg := newInitialized(t)
	users := filepath.Join(filepath.Dir(cfg), "users")
	login := func(addr, pw string) bool {
		t.Helper()
		u, err := gateway.LoadUsers(users)
		if err != nil {
			t.Fatal(err)
		}
		return u.Authenticate(addr, pw)
	}

	code, out, errOut := runWithStdin(t, "s3cret pw\n", "user", "add", "mario.rossi@pec.example.it", "--config", cfg, "--password-stdin")
	if code != 0 || out != "added mario.rossi@pec.example.it\n" {
		t.Fatalf("add: exit %d\n%s%s", code, out, errOut)
	}
	if !login("Mario.Rossi@pec.example.it", "s3cret pw") {
		t.Error("the password read from stdin does not log in")
	}

	// Flags before the positional argument work too.
	code, out, errOut = runCmd(t, "user", "add", "--config", cfg, "--generate", "anna@pec.example.it")
	m := regexp.MustCompile(`(?m)^password: ([a-zA-Z0-9]{20})$`).FindStringSubmatch(out)
	if code != 0 || m == nil {
		t.Fatalf("add --generate: exit %d\n%s%s", code, out, errOut)
	}
	if !login("anna@pec.example.it", m[1]) {
		t.Error("the generated password does not log in")
	}

	code, out, _ = runCmd(t, "user", "list", "--config", cfg)
	if code != 0 || out != "mario.rossi@pec.example.it\nanna@pec.example.it\n" {
		t.Errorf("list: exit %d\n%s", code, out)
	}

	code, out, errOut = runWithStdin(t, "new one\r\n", "user", "passwd", "MARIO.ROSSI@pec.example.it", "--config", cfg, "--password-stdin")
	if code != 0 {
		t.Fatalf("passwd: exit %d\n%s%s", code, out, errOut)
	}
	if !login("mario.rossi@pec.example.it", "new one") || login("mario.rossi@pec.example.it", "s3cret pw") {
		t.Error("passwd did not change the password")
	}

	code, _, errOut = runCmd(t, "user", "del", "anna@pec.example.it", "--config", cfg)
	if code != 0 {
		t.Fatalf("del: exit %d\n%s", code, errOut)
	}
	code, out, _ = runCmd(t, "user", "list", "--config", cfg)
	if code != 0 || out != "mario.rossi@pec.example.it\n" {
		t.Errorf("list after del: exit %d\n%q", code, out)
	}
	if fi, err := os.Stat(users); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("users file mode: %v %v", fi, err)
	}
	if code, _, _ = runCmd(t, "check-config", "--config", cfg); code != 0 {
		t.Error("check-config fails after user edits")
	}
}

// TestUserFailures: refused operations exit 1 with a clear message.
func TestUserFailures(t *testing.T) {
	cfg := newInitialized(t)
	if code, _, errOut := runWithStdin(t, "pw\n", "user", "add", "a@pec.example.it", "--config", cfg, "--password-stdin"); code != 0 {
		t.Fatal(errOut)
	}
	for _, tc := range []struct {
		stdin string
		args  []string
		want  string
	}{
		{"pw\n", []string{"add", "A@PEC.example.it", "--password-stdin"}, "user already exists"},
		{"pw\n", []string{"passwd", "b@pec.example.it", "--password-stdin"}, "no such user"},
		{"", []string{"del", "b@pec.example.it"}, "no such user"},
		{"", []string{"add", "b@pec.example.it", "--password-stdin"}, "no password on standard input"},
		{"\n", []string{"add", "b@pec.example.it", "--password-stdin"}, "no password on standard input"},
		{strings.Repeat("x", 2000), []string{"add", "b@pec.example.it", "--password-stdin"}, "longer than 1024 octets"},
		{"pw\n", []string{"add", "b@other.it", "--password-stdin"}, "not in a provider domain"},
		{"pw\n", []string{"add", "b:c@pec.example.it", "--password-stdin"}, "not allowed in a local part"},
		{"pw\n", []string{"add", "b@c@pec.example.it", "--password-stdin"}, "exactly one @"},
	} {
		args := append([]string{"user"}, tc.args...)
		args = append(args, "--config", cfg)
		code, out, errOut := runWithStdin(t, tc.stdin, args...)
		if code != 1 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, want 1 and %q\n%s%s", tc.args, code, tc.want, out, errOut)
		}
	}
	code, _, errOut := runCmd(t, "user", "list", "--config", filepath.Join(t.TempDir(), "absent.toml"))
	if code != 1 || !strings.Contains(errOut, "no such file") {
		t.Errorf("list with an absent configuration: exit %d\n%s", code, errOut)
	}
}

func TestUserUsage(t *testing.T) {
	for _, args := range [][]string{
		{"user"},
		{"user", "rename", "a@pec.example.it"},
		{"user", "add", "--generate"},
		{"user", "add", "a@pec.example.it"},
		{"user", "add", "a@pec.example.it", "--generate", "--password-stdin"},
		{"user", "add", "a@pec.example.it", "b@pec.example.it", "--generate"},
		{"user", "passwd", "a@pec.example.it"},
		{"user", "del", "a@pec.example.it", "--generate"},
		{"user", "del"},
		{"user", "list", "a@pec.example.it"},
		{"user", "list", "--password-stdin"},
		{"user", "list", "--bogus"},
		{"nonsense"},
		{},
	} {
		if code, _, errOut := runCmd(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2\n%s", args, code, errOut)
		}
	}
}

func TestGeneratePassword(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		pw, err := generatePassword()
		if err != nil {
			t.Fatal(err)
		}
		if len(pw) != 20 || strings.Trim(pw, passwordAlphabet) != "" || seen[pw] {
			t.Fatalf("bad password %q", pw)
		}
		seen[pw] = true
	}
}
