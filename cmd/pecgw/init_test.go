package main

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/pecgw/pecgw/config"
	"github.com/pecgw/pecgw/gateway"
)

// runWithStdin runs one command with stdin as its standard input.
func runWithStdin(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(args, strings.NewReader(stdin), &out, &errOut)
	return code, out.String(), errOut.String()
}

// newInitialized runs pecgw init in a new folder and returns the
// configuration file's path.
func newInitialized(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	code, out, errOut := runCmd(t, "init", "--dir", dir, "--domain", "pec.example.it", "--provider-name", "Example PEC S.p.A.",
		"--submission-addr", "127.0.0.1:12587", "--smtps-addr", "127.0.0.1:12465")
	if code != 0 {
		t.Fatalf("init: exit %d\n%s%s", code, out, errOut)
	}
	return filepath.Join(dir, "pecgw.toml")
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	if b == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestInitThenCheckConfig: what init writes passes check-config, names
// every key, and its CA verifies the signing and TLS certificates.
func TestInitThenCheckConfig(t *testing.T) {
	cfg := newInitialized(t)
	dir := filepath.Dir(cfg)

	// init puts the witness beside the log, which is fine for a start
	// and said: in production it goes to another volume.
	code, out, errOut := runCmd(t, "check-config", "--config", cfg)
	if code != 0 || !strings.HasSuffix(out, "\nconfiguration OK\n") || !strings.HasPrefix(out, "warning: log.witness_dir: ") || strings.Count(out, "\n") != 2 {
		t.Fatalf("check-config: exit %d\n%s%s", code, out, errOut)
	}
	c, err := config.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen.Submission != "127.0.0.1:12587" || c.Listen.SMTPS != "127.0.0.1:12465" || c.Provider.Name != "Example PEC S.p.A." {
		t.Errorf("flags not in the configuration: %+v", c.Listen)
	}
	text, _ := os.ReadFile(cfg)
	for _, key := range []string{"retention_months = 30", "max_recipients = 500", `on_error = "tempfail"`, `password_file = ""`, `level = "info"`} {
		if !strings.Contains(string(text), "\n"+key+"\n") {
			t.Errorf("configuration lacks %q", key)
		}
	}

	for name, mode := range map[string]os.FileMode{"users": 0o600, "pki/signing-key.pem": 0o600, "pki/tls-key.pem": 0o600} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v %v, want mode %v", name, fi, err, mode)
		}
	}
	for _, d := range []string{"log", "outbound", "mailboxes"} {
		if fi, err := os.Stat(filepath.Join(dir, d)); err != nil || !fi.IsDir() {
			t.Errorf("folder %s: %v", d, err)
		}
	}

	roots := x509.NewCertPool()
	roots.AddCert(readCert(t, filepath.Join(dir, "pki/ca.pem")))
	if _, err := readCert(t, c.Signing.Cert).Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("ca.pem does not verify the signing certificate: %v", err)
	}
	if _, err := readCert(t, c.TLS.Cert).Verify(x509.VerifyOptions{Roots: roots, DNSName: "pec.example.it"}); err != nil {
		t.Errorf("ca.pem does not verify the TLS certificate for the hostname: %v", err)
	}
}

func TestInitTwiceRefuses(t *testing.T) {
	cfg := newInitialized(t)
	before, _ := os.ReadFile(cfg)
	code, out, errOut := runCmd(t, "init", "--dir", filepath.Dir(cfg), "--domain", "pec.altro.it", "--provider-name", "Other")
	if code != 1 || !strings.Contains(errOut, "already exists") {
		t.Errorf("second init: exit %d\n%s%s", code, out, errOut)
	}
	after, _ := os.ReadFile(cfg)
	if !bytes.Equal(before, after) {
		t.Error("second init changed the configuration")
	}
}

func TestInitUsage(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"init", "--dir", dir, "--provider-name", "P"},
		{"init", "--dir", dir, "--domain", "pec.example.it"},
		{"init", "--dir", dir, "--domain", "pec.example.it", "--provider-name", "P", "extra"},
		{"init", "--bogus"},
	} {
		if code, _, errOut := runCmd(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2\n%s", args, code, errOut)
		}
	}
	// A bad value is a failed check, named by its key; nothing is written.
	code, _, errOut := runCmd(t, "init", "--dir", dir, "--domain", "pec_example", "--provider-name", "P", "--smtps-addr", "nope")
	if code != 1 || !strings.Contains(errOut, "provider.domains: ") || !strings.Contains(errOut, "listen.smtps: ") {
		t.Errorf("bad values: exit %d\n%s", code, errOut)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("a refused init wrote %v", entries)
	}
}

// TestCheckConfigBroken: every problem is printed, one per line, each
// naming its key, and the exit status is 1.
func TestCheckConfigBroken(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "pecgw.toml")
	text := `[provider]
name = "P"
domains = ["pec.example.it", "bad domain"]
[listen]
smtps = "127.0.0.1:99999"
[limits]
max_recipients = 0
data_timeout = 600
[log]
retention_months = 29
[dedup]
store = "memcached"
[delivery.envelopes]
password = "secret"
`
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, _ := runCmd(t, "check-config", "--config", cfg)
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	var keys []string
	for _, l := range lines[:len(lines)-1] {
		key, _, _ := strings.Cut(l, ": ")
		keys = append(keys, key)
	}
	want := []string{"delivery.envelopes.password", "provider.domains", "listen.smtps", "limits.max_recipients",
		"limits.data_timeout", "log.retention_months", "dedup.store"}
	if !slices.Equal(keys, want) {
		t.Errorf("keys %v, want %v\n%s", keys, want, out)
	}
	if last := lines[len(lines)-1]; last != "7 problem(s) in "+cfg {
		t.Errorf("last line %q", last)
	}

	// A valid file whose files are missing: each missing file named.
	if err := os.WriteFile(cfg, []byte("[provider]\nname = \"P\"\ndomains = [\"pec.example.it\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, _ = runCmd(t, "check-config", "--config", cfg)
	for _, key := range []string{"tls.cert", "tls.key", "signing.key", "signing.cert", "log.dir"} {
		if ok, _ := regexp.MatchString(`(?m)^`+regexp.QuoteMeta(key)+`: file|folder .* does not exist$`, out); !ok || code != 1 {
			t.Errorf("missing %s not reported (exit %d):\n%s", key, code, out)
		}
	}

	code, out, _ = runCmd(t, "check-config", "--config", filepath.Join(t.TempDir(), "absent.toml"))
	if code != 1 || !strings.Contains(out, "no such file") {
		t.Errorf("absent file: exit %d\n%s", code, out)
	}
	if code, _, _ := runCmd(t, "check-config", "extra"); code != 2 {
		t.Errorf("check-config extra: exit %d, want 2", code)
	}
}

// TestCheckConfigUsersFile: a malformed users file is reported with its line.
func TestCheckConfigUsersFile(t *testing.T) {
	cfg := newInitialized(t)
	users := filepath.Join(filepath.Dir(cfg), "users")
	if err := os.WriteFile(users, []byte("# ok\nnot a user line\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, _ := runCmd(t, "check-config", "--config", cfg)
	if code != 1 || !strings.Contains(out, "users.file: "+users+":2: ") {
		t.Errorf("exit %d\n%s", code, out)
	}
	if _, err := gateway.LoadUsers(users); err == nil {
		t.Error("LoadUsers accepted it")
	}
}

// TestDevSetup: serve --dev prints only what applies to it (no "next:"
// of a production set-up), the demo user's password once, and how to set
// a new one; on the next start it says how to set a new one again, and
// that command works.
func TestDevSetup(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "pecgw-data", "pecgw.toml")
	var out bytes.Buffer
	if err := devSetup(cfg, &out); err != nil {
		t.Fatal(err)
	}
	first := out.String()
	m := regexp.MustCompile(`demo user: demo@pec\.localhost  password: (\S+)  \(shown once`).FindStringSubmatch(first)
	if m == nil {
		t.Fatalf("no demo user and password in:\n%s", first)
	}
	for _, not := range []string{"next:", "check-config", "user add", "AgID"} {
		if strings.Contains(first, not) {
			t.Errorf("serve --dev prints %q, which is init's production set-up:\n%s", not, first)
		}
	}
	passwd := " user passwd demo@pec.localhost --config " + cfg + " --generate"
	if !strings.Contains(first, passwd) {
		t.Errorf("the first start does not say how to set a new password (%q):\n%s", passwd, first)
	}
	c, err := config.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	u, err := gateway.LoadUsers(c.Users.File)
	if err != nil || !u.Authenticate("demo@pec.localhost", m[1]) {
		t.Fatalf("the printed password does not log in: %v", err)
	}

	out.Reset()
	if err := devSetup(cfg, &out); err != nil {
		t.Fatal(err)
	}
	second := out.String()
	if strings.Contains(second, m[1]) || !strings.Contains(second, "was shown when it was created") || !strings.Contains(second, passwd) {
		t.Errorf("second start:\n%s", second)
	}
	code, stdout, stderr := runCmd(t, "user", "passwd", "demo@pec.localhost", "--config", cfg, "--generate")
	if code != 0 {
		t.Fatalf("the command it suggests: exit %d\n%s%s", code, stdout, stderr)
	}
	if u, err := gateway.LoadUsers(c.Users.File); err != nil || u.Authenticate("demo@pec.localhost", m[1]) {
		t.Errorf("the old password still logs in after user passwd (%v)", err)
	}
}

// TestCommandHelp: pecgw CMD --help (or -h) prints the usage of CMD and
// exits 0, instead of the flag package's "help requested"; pecgw log's
// subcommands print the log's help.
func TestCommandHelp(t *testing.T) {
	for _, args := range [][]string{
		{"init", "--help"}, {"user", "add", "-h"}, {"serve", "--help"}, {"verify", "x.eml", "--help"},
		{"spool", "list", "-help"}, {"check-config", "--help"}, {"log", "tail", "--help"},
	} {
		code, out, errOut := runCmd(t, args...)
		want := "  pecgw " + args[0]
		if code != 0 || !strings.HasPrefix(out, "usage:\n") || !strings.Contains(out, want) || errOut != "" || strings.Contains(out+errOut, "help requested") {
			t.Errorf("pecgw %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
		}
		if args[0] != "log" && strings.Contains(out, "pecgw version") {
			t.Errorf("pecgw %s: the whole usage, not the command's\n%s", strings.Join(args, " "), out)
		}
	}
}
