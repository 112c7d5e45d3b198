package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pecgw/pecgw/logstore"
)

const minimal = `
[provider]
name = "Example PEC S.p.A."
domains = ["pec.example.it"]
`

// writeConfig writes text as pecgw.toml in a new folder and returns its path.
func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pecgw.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// problems splits a Load error into its lines and the keys they name.
func problems(t *testing.T, err error) (lines, keys []string) {
	t.Helper()
	if err == nil {
		t.Fatal("no error")
	}
	var j interface{ Unwrap() []error }
	errs := []error{err}
	if errors.As(err, &j) {
		errs = j.Unwrap()
	}
	for _, e := range errs {
		var ke *KeyError
		if !errors.As(e, &ke) {
			t.Errorf("problem %q is not a *KeyError", e)
			continue
		}
		if !strings.HasPrefix(e.Error(), ke.Key+": ") {
			t.Errorf("problem %q does not start with its key %q", e, ke.Key)
		}
		lines = append(lines, e.Error())
		keys = append(keys, ke.Key)
	}
	return lines, keys
}

func TestDefaultsLoad(t *testing.T) {
	path := writeConfig(t, minimal)
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(path)
	want := Default()
	want.File = path
	want.Provider = Provider{Name: "Example PEC S.p.A.", Domains: []string{"pec.example.it"}}
	want.Listen.Hostname = "pec.example.it"
	want.TLS.Cert = filepath.Join(dir, "pki/tls.pem")
	want.TLS.Key = filepath.Join(dir, "pki/tls-key.pem")
	want.Signing.Key = filepath.Join(dir, "pki/signing-key.pem")
	want.Signing.Cert = filepath.Join(dir, "pki/signing.pem")
	want.Users.File = filepath.Join(dir, "users")
	want.Users.Suspended = filepath.Join(dir, "users.suspended")
	want.Log.Dir = filepath.Join(dir, "log")
	want.Log.WitnessDir = filepath.Join(dir, "witness")
	want.Delivery.Maildir = dir
	want.Dedup.Dir = filepath.Join(dir, "dedup")
	want.Delivery.Spool = filepath.Join(dir, "spool")
	want.Delivery.Incoming = filepath.Join(dir, "incoming")
	if !reflect.DeepEqual(c, want) {
		t.Errorf("Load(minimal) =\n%+v\nwant\n%+v", c, want)
	}
	// The defaults the brief and the documentation promise.
	d := Default()
	if d.Listen.Submission != "127.0.0.1:2587" || d.Listen.SMTPS != "127.0.0.1:2465" || d.Limits.MaxRecipients != 500 ||
		d.Limits.MaxMessageBytes != 100_000_000 || d.Limits.CommandTimeout != 5*time.Minute || d.Log.RetentionMonths != 30 ||
		d.Dedup.Window != 168*time.Hour || d.Dedup.Lease != 30*time.Second || d.Limits.MinAuthTime != 300*time.Millisecond || d.Dedup.Timeout != 500*time.Millisecond || d.Delivery.Mode != "maildir" {
		t.Errorf("unexpected defaults: %+v", d)
	}
}

// TestRoundTrip: a file with a non-default value for every key loads
// back to the same Config.
func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	abs := func(p string) string { return filepath.Join(dir, p) }
	c := &Config{
		File:      filepath.Join(dir, "pecgw.toml"),
		Provider:  Provider{Name: `Gestore "Prova" \ S.r.l.`, Domains: []string{"pec.example.it", "legalmail.example.com"}},
		Listen:    Listen{Submission: "[::1]:587", SMTPS: "0.0.0.0:465", Hostname: "mx.example.it"},
		TLS:       TLS{Cert: abs("a.pem"), Key: abs("a-key.pem"), MinVersion: "1.3"},
		Signing:   Signing{Key: abs("s-key.pem"), Cert: abs("s.pem")},
		Directory: Directory{Domains: []string{"pec.altro.it", "città.it"}, LDIF: abs("index.ldif")},
		Limits: Limits{MaxMessageBytes: 50_000_000, MaxSizeTimesRecipients: 60_000_000, MessageMemory: 64 << 20, MaxRecipients: 100, MaxConnections: 50,
			MaxConnectionsPerIP: 5, MaxConnectionsPerNetwork: 7, PreAuthTimeout: 5 * time.Second, LoginTimeout: 40 * time.Second,
			CommandTimeout: 6 * time.Minute, DataTimeout: 90 * time.Second, AuthFailuresBeforeDelay: 2,
			AuthLockoutFailures: 5, AuthAddressLockoutFailures: 60, AuthLockout: time.Hour, MinAuthTime: 50 * time.Millisecond},
		Submission: Submission{ReplyLanguage: "it", BareLF: "normalize", BareLFClients: []string{"app@pec.example.it", "10.1.2.0/24", "2001:db8::/32", "192.0.2.7"}},
		Users: Users{Backend: "dovecot", File: abs("u/users"), DovecotSocket: "/run/dovecot/auth-client", DovecotService: "pecgw",
			DovecotTimeout: 3 * time.Second, Suspended: abs("u/susp"), CacheTTL: 10 * time.Minute, CacheSize: 500, HashSlots: 4, HashWait: time.Second},
		Log: Log{Dir: abs("l"), CheckpointEvery: 10, CheckpointInterval: 30 * time.Millisecond, MaxSegmentMB: 64, RetentionMonths: 36,
			Name: "mx-2", WitnessDir: abs("w"), WitnessRedis: "off"},
		Delivery: Delivery{Mode: "smtp", Maildir: abs("m"), Spool: abs("sp"), Incoming: abs("in"),
			Envelopes: Envelopes{Address: "mta.example.it:25", TLS: "implicit", ServerName: "mta.example.it", Username: "pecgw", PasswordFile: abs("pw")},
			Receipts:  Receipts{Protocol: "smtp", Address: "unix:" + abs("lmtp.sock")}},
		Dedup:   Dedup{Store: "redis", Dir: abs("d"), RedisAddrs: []string{"10.0.0.1:6379", "redis.example.it:6380"}, RedisMasterName: "pecgw-master", RedisPasswordFile: abs("rpw"), Window: 24 * time.Hour, Lease: 10 * time.Second, Timeout: 2 * time.Second, OnError: "accept"},
		Logging: Logging{Format: "json", Level: "debug"},
	}
	// Every field differs from its default, so nothing round-trips by luck.
	df, cf := Default().fields(), c.fields()
	for i := range cf {
		if cf[i].val.toml() == df[i].val.toml() {
			t.Errorf("%s has its default value in the test", cf[i].key)
		}
	}
	if err := os.WriteFile(c.File, Marshal(c), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := Load(c.File)
	if err != nil {
		t.Fatalf("%v\n%s", err, Marshal(c))
	}
	if !reflect.DeepEqual(got, c) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, c)
	}
}

// TestMarshalDefault: the file init writes loads, and names every key.
func TestMarshalDefault(t *testing.T) {
	c := Default()
	c.Provider = Provider{Name: "P", Domains: []string{"pec.example.it"}}
	text := string(Marshal(c))
	for _, f := range c.fields() {
		s := sectionOf(f.key)
		if !strings.Contains(text, "["+s+"]\n") || !strings.Contains(text, "\n"+strings.TrimPrefix(f.key, s+".")+" = "+f.val.toml()+"\n") {
			t.Errorf("%s = %s not written", f.key, f.val.toml())
		}
	}
	if _, err := Load(writeConfig(t, text)); err != nil {
		t.Fatal(err)
	}
}

// TestEveryProblemAtOnce: ten mistakes, ten problems, ten keys.
func TestEveryProblemAtOnce(t *testing.T) {
	path := writeConfig(t, `
[provider]
name = ""
domains = ["pec..example.it"]
[listen]
submission = "localhost"
[tls]
min_version = "1.1"
[limits]
max_recipients = 0
command_timeout = "soon"
[log]
retention_months = 12
checkpoint_every = "many"
[delivery]
mode = "pigeon"
[dedup]
on_error = "ignore"
`)
	_, err := Load(path)
	lines, keys := problems(t, err)
	want := []string{"provider.name", "provider.domains", "listen.submission", "tls.min_version", "limits.max_recipients",
		"limits.command_timeout", "log.retention_months", "log.checkpoint_every", "delivery.mode", "dedup.on_error"}
	slices.Sort(keys)
	slices.Sort(want)
	if !slices.Equal(keys, want) {
		t.Errorf("keys %v, want %v\n%s", keys, want, strings.Join(lines, "\n"))
	}
	for _, s := range []string{
		"limits.max_recipients: must be between 1 and 10000, got 0",
		"log.retention_months: must be between 30 and 1200, got 12",
		`tls.min_version: must be one of "1.2", "1.3", got "1.1"`,
		`limits.command_timeout: must be a duration such as "5m" or "1h30m", got "soon"`,
		`log.checkpoint_every: must be an integer, got string "many"`,
		"provider.name: required",
	} {
		if !slices.Contains(lines, s) {
			t.Errorf("no problem %q in\n%s", s, strings.Join(lines, "\n"))
		}
	}
}

func TestUnknownKeys(t *testing.T) {
	path := writeConfig(t, minimal+`
[limits]
max_recipient = 5
[delivery.envelopes]
password = "hunter2"
[delivery.smtp]
address = "x:25"
[tls]
cert = { path = "x" }
[nonsense]
a = 1
b = 2
`)
	_, err := Load(path)
	lines, keys := problems(t, err)
	// Unknown keys in file order, then the keys of the wrong type.
	want := []string{"limits.max_recipient", "delivery.envelopes.password", "delivery.smtp", "nonsense", "tls.cert"}
	if !slices.Equal(keys, want) {
		t.Errorf("keys %v, want %v\n%s", keys, want, strings.Join(lines, "\n"))
	}
	if !strings.Contains(lines[1], "use a *_file key") {
		t.Errorf("inline password not pointed to a file: %q", lines[1])
	}
	if !strings.Contains(lines[4], "must be a string, got a table") {
		t.Errorf("table for a string: %q", lines[4])
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Error("the error repeats the inline password")
	}
}

func TestSyntaxError(t *testing.T) {
	path := writeConfig(t, minimal+"\n[limits]\nmax_recipients = = 5\n")
	_, err := Load(path)
	if err == nil {
		t.Fatal("no error")
	}
	if ok, _ := regexp.MatchString(`^`+regexp.QuoteMeta(path)+`:7:\d+: `, err.Error()); !ok {
		t.Errorf("error %q does not give file:line:col", err)
	}
}

// TestNesting: deeply nested inline tables, which the TOML decoder takes
// seconds over, are refused before decoding, with their position.
func TestNesting(t *testing.T) {
	deep := "a = " + strings.Repeat("{b=", 5000) + "1" + strings.Repeat("}", 5000)
	start := time.Now()
	_, err := Parse("/x/pecgw.toml", []byte(minimal+deep))
	if err == nil || !strings.Contains(err.Error(), "/x/pecgw.toml:5:") || time.Since(start) > time.Second {
		t.Errorf("deep nesting: %v after %v", err, time.Since(start))
	}
	// Brackets in strings and comments do not count.
	ok := minimal + "# " + strings.Repeat("[", 100) + "\n" + "[listen]\nhostname = \"\"\n" +
		"[logging]\nlevel = 'info' # " + strings.Repeat("{", 100) + "\n"
	if _, err := Parse("/x/pecgw.toml", []byte(ok)); err != nil {
		t.Error(err)
	}
	s := minimal + "[delivery]\nmode = \"" + strings.Repeat("[", 100) + "\"\n"
	if _, err := Parse("/x/pecgw.toml", []byte(s)); err == nil || !strings.Contains(err.Error(), "delivery.mode: must be one of") {
		t.Errorf("brackets in a string: %v", err)
	}
	big := minimal + strings.Repeat("#", maxFileSize)
	if _, err := Parse("/x/pecgw.toml", []byte(big)); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("big file: %v", err)
	}
}

func TestTypeOfSection(t *testing.T) {
	_, err := Load(writeConfig(t, "limits = 5\n"+minimal))
	_, keys := problems(t, err)
	if !slices.Equal(keys, []string{"limits"}) {
		t.Errorf("keys %v", keys)
	}
}

func TestRelativePaths(t *testing.T) {
	path := writeConfig(t, minimal+`
[tls]
cert = "../elsewhere/tls.pem"
key = "/etc/pecgw/tls-key.pem"
[directory]
ldif = "index.ldif"
[delivery]
mode = "smtp"
maildir = ""
[delivery.envelopes]
address = "127.0.0.1:25"
[delivery.receipts]
address = "unix:run/lmtp"
`)
	dir := filepath.Dir(path)
	// A relative path to the file: resolution must not depend on the
	// current folder.
	t.Chdir(filepath.Dir(dir))
	c, err := Load(filepath.Join(filepath.Base(dir), "pecgw.toml"))
	if err != nil {
		t.Fatal(err)
	}
	for got, want := range map[string]string{
		c.TLS.Cert:                  filepath.Join(filepath.Dir(dir), "elsewhere/tls.pem"),
		c.TLS.Key:                   "/etc/pecgw/tls-key.pem",
		c.Directory.LDIF:            filepath.Join(dir, "index.ldif"),
		c.Delivery.Receipts.Address: "unix:" + filepath.Join(dir, "run/lmtp"),
		c.Delivery.Maildir:          "",
		c.File:                      path,
	} {
		if got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
}

func TestDurations(t *testing.T) {
	c, err := Load(writeConfig(t, minimal+"[limits]\ncommand_timeout = \"1h\"\ndata_timeout = \"1m30s\"\n[dedup]\ntimeout = \"250ms\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Limits.CommandTimeout != time.Hour || c.Limits.DataTimeout != 90*time.Second || c.Dedup.Timeout != 250*time.Millisecond {
		t.Errorf("durations %v %v %v", c.Limits.CommandTimeout, c.Limits.DataTimeout, c.Dedup.Timeout)
	}
	for text, want := range map[string]string{
		`command_timeout = 300`:   "limits.command_timeout: must be a duration string such as \"5m\" or \"1h30m\", got integer 300",
		`command_timeout = "-5m"`: "limits.command_timeout: must be between 1s and 1h, got -5m",
		`command_timeout = "5"`:   "limits.command_timeout: must be a duration such as \"5m\" or \"1h30m\", got \"5\"",
		`auth_lockout = "48h"`:    "limits.auth_lockout: must be between 1s and 24h, got 48h",
	} {
		_, err := Load(writeConfig(t, minimal+"[limits]\n"+text+"\n"))
		if lines, _ := problems(t, err); !slices.Equal(lines, []string{want}) {
			t.Errorf("%s: %q, want %q", text, lines, want)
		}
	}
}

// TestRetention: RFC 6109 §2.3 keeps the log 30 months; 29 is refused.
func TestRetention(t *testing.T) {
	_, err := Load(writeConfig(t, minimal+"[log]\nretention_months = 29\n"))
	if lines, _ := problems(t, err); !slices.Equal(lines, []string{"log.retention_months: must be between 30 and 1200, got 29"}) {
		t.Errorf("%q", lines)
	}
	if _, err := Load(writeConfig(t, minimal+"[log]\nretention_months = 30\n")); err != nil {
		t.Error(err)
	}
}

func TestValues(t *testing.T) {
	for _, tc := range []struct {
		text string
		key  string // "" = valid
	}{
		{"[listen]\nsubmission = \"\"\nsmtps = \"\"", "listen.submission"},
		{"[listen]\nsubmission = \"\"", ""},
		{"[listen]\nsubmission = \":587\"", ""},
		{"[listen]\nsubmission = \"127.0.0.1:2465\"", "listen.smtps"},
		{"[listen]\nsubmission = \"127.0.0.1:smtp\"", "listen.submission"},
		{"[listen]\nsubmission = \"127.0.0.1:70000\"", "listen.submission"},
		{"[listen]\nsubmission = \"::1:587\"", "listen.submission"},
		{"[listen]\nhostname = \"bad_name\"", "listen.hostname"},
		{"[provider]\nname = \"P\"\ndomains = []", "provider.domains"},
		{"[provider]\nname = \"P\"\ndomains = [\"localhost\"]", "provider.domains"},
		{"[provider]\nname = \"P\"\ndomains = [\"PEC.Example.it\", \"pec.example.it\"]", "provider.domains"},
		{"[provider]\nname = \"P\"\ndomains = [\"-x.it\"]", "provider.domains"},
		{"[provider]\nname = \"P\"\ndomains = [1]", "provider.domains"},
		{"[provider]\nname = \"a\\nb\"\ndomains = [\"pec.example.it\"]", "provider.name"},
		{"[directory]\ndomains = [\"pec.altro.it\", \"città.it\"]", ""},
		{"[limits]\nmax_connections_per_ip = 300", "limits.max_connections_per_ip"},
		{"[limits]\nmax_message_bytes = 200000000", "limits.max_message_bytes"},
		{"[limits]\nmax_message_bytes = 1.5", "limits.max_message_bytes"},
		{"[limits]\nauth_lockout_failures = 2", "limits.auth_lockout_failures"},
		{"[limits]\nmax_recipients = 99999999999999999", "limits.max_recipients"},
		{"[delivery]\nmode = \"smtp\"", "delivery.envelopes.address delivery.receipts.address"},
		{"[delivery]\nmaildir = \"\"", "delivery.maildir"},
		{"[delivery.envelopes]\nusername = \"u\"", "delivery.envelopes.password_file"},
		{"[delivery.envelopes]\nusername = \"u\"\npassword_file = \"p\"\ntls = \"none\"", "delivery.envelopes.tls"},
		{"[delivery.receipts]\naddress = \"unix:\"", "delivery.receipts.address"},
		{"[delivery.receipts]\naddress = \"mail.example.it:24\"", "delivery.receipts.address"},
		{"[delivery.receipts]\naddress = \"[::1]:24\"", ""},
		{"[delivery.receipts]\nprotocol = \"smtp\"\naddress = \"mail.example.it:25\"", ""},
		{"[delivery.envelopes]\naddress = \"mta.example.it:25\"\ntls = \"none\"", "delivery.envelopes.tls"},
		{"[delivery.envelopes]\naddress = \"localhost:25\"\ntls = \"none\"", ""},
		{"[dedup]\nstore = \"redis\"", "dedup.redis_addrs"},
		{"[dedup]\nstore = \"redis\"\nredis_addrs = [\"r:6379\", \"nohost\"]", "dedup.redis_addrs"},
		{"[logging]\nlevel = \"trace\"", "logging.level"},
	} {
		text := tc.text
		if !strings.Contains(text, "[provider]") {
			text = minimal + text
		}
		_, err := Load(writeConfig(t, text+"\n"))
		if tc.key == "" {
			if err != nil {
				t.Errorf("%q: %v", tc.text, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%q accepted", tc.text)
			continue
		}
		lines, keys := problems(t, err)
		if strings.Join(keys, " ") != tc.key {
			t.Errorf("%q: keys %v, want %s\n%s", tc.text, keys, tc.key, strings.Join(lines, "\n"))
		}
	}
}

func TestCheckFiles(t *testing.T) {
	path := writeConfig(t, minimal+`
[users]
file = "nowhere/users"
[directory]
ldif = "index.ldif"
[dedup]
dir = "a/b"
`)
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	_, keys := problems(t, c.CheckFiles())
	want := []string{"tls.cert", "tls.key", "signing.key", "signing.cert", "users.file", "log.dir", "log.witness_dir", "directory.ldif", "dedup.dir"}
	if !slices.Equal(keys, want) {
		t.Errorf("keys %v, want %v", keys, want)
	}

	dir := filepath.Dir(path)
	for _, d := range []string{"pki", "nowhere", "log", "witness", "a", "index.ldif"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"pki/tls.pem", "pki/tls-key.pem", "pki/signing.pem", "pki/signing-key.pem"} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	lines, keys := problems(t, c.CheckFiles())
	if !slices.Equal(keys, []string{"directory.ldif"}) || !strings.Contains(lines[0], "is not a regular file") {
		t.Errorf("%q", lines)
	}
	if err := os.Remove(filepath.Join(dir, "index.ldif")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "index.ldif"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c.CheckFiles(); err != nil {
		t.Error(err)
	}
}

type nopSigner struct{}

func (nopSigner) SignDetached([]byte, time.Time) ([]byte, error) { return nil, nil }

func TestLogOptions(t *testing.T) {
	c, err := Load(writeConfig(t, minimal+"[log]\ncheckpoint_every = 7\ncheckpoint_interval = \"200ms\"\nmax_segment_mb = 3\nretention_months = 40\nname = \"mx-1\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	got := c.LogOptions(nopSigner{})
	dir := filepath.Dir(c.File)
	want := logstore.Options{Dir: filepath.Join(dir, "log"), Signer: nopSigner{}, Provider: "Example PEC S.p.A.",
		CheckpointEvery: 7, CheckpointInterval: 200 * time.Millisecond, MaxSegmentSize: 3 << 20, RetentionMonths: 40,
		Witnesses: []logstore.Witness{&logstore.FolderWitness{Dir: filepath.Join(dir, "witness"), Name: "mx-1"}}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("LogOptions = %+v, want %+v", got, want)
	}
	// A minute between checkpoints was the default of record format 2's
	// first release: records must no longer stay unsigned that long.
	if _, err := Load(writeConfig(t, minimal+"[log]\ncheckpoint_interval = \"1m\"\n")); err == nil || !strings.Contains(err.Error(), "log.checkpoint_interval: must be between 1ms and 1s") {
		t.Errorf("checkpoint_interval = 1m: %v", err)
	}
	if _, err := Load(writeConfig(t, minimal+"[log]\nname = \"../x\"\n")); err == nil || !strings.Contains(err.Error(), "log.name") {
		t.Errorf("name = ../x: %v", err)
	}
}

// TestDocumented: docs/configuration.md names every key with its default.
func TestDocumented(t *testing.T) {
	doc, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range Default().fields() {
		row := "| `" + f.key + "` | `" + f.val.toml() + "` |"
		if !strings.Contains(string(doc), row) {
			t.Errorf("docs/configuration.md lacks the row %s", row)
		}
	}
}

func TestReadError(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "absent.toml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(absent) = %v", err)
	}
}

func FuzzLoad(f *testing.F) {
	c := Default()
	c.Provider = Provider{Name: "P", Domains: []string{"pec.example.it"}}
	f.Add(Marshal(c))
	f.Add([]byte(minimal))
	f.Add([]byte("[a.b]\nc = [1, {x = 2}]\n[[d]]\n"))
	f.Add([]byte("limits = 5\n[provider]\nname = 1979-05-27T07:32:00Z\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("/fuzz/pecgw.toml", data)
		if (c == nil) == (err == nil) {
			t.Fatalf("config %v and error %v", c, err)
		}
		if err != nil {
			return
		}
		// What loads marshals and loads again to the same thing.
		c2, err := Parse("/fuzz/pecgw.toml", Marshal(c))
		if err != nil {
			t.Fatalf("re-load: %v\n%s", err, Marshal(c))
		}
		if !reflect.DeepEqual(c, c2) {
			t.Fatalf("re-load differs:\n%+v\n%+v", c, c2)
		}
	})
}

// TestWarnings: a witness beside the log, or none, is allowed but said.
func TestWarnings(t *testing.T) {
	c, err := Load(writeConfig(t, minimal))
	if err != nil {
		t.Fatal(err)
	}
	os.Mkdir(c.Log.Dir, 0o700)
	os.Mkdir(c.Log.WitnessDir, 0o700)
	if w := c.Warnings(); len(w) != 1 || !strings.Contains(w[0], "is on the same file system as log.dir") {
		t.Errorf("witness beside the log: %q", w)
	}
	c.Log.WitnessDir = ""
	if w := c.Warnings(); len(w) != 1 || !strings.Contains(w[0], "no witness folder") {
		t.Errorf("no witness: %q", w)
	}
	other, err := os.MkdirTemp("/dev/shm", "witness-")
	if err != nil {
		t.Skipf("no other file system to put a witness on: %v", err)
	}
	defer os.RemoveAll(other)
	c.Log.WitnessDir = other
	var a, b syscall.Stat_t
	if syscall.Stat(c.Log.Dir, &a) == nil && syscall.Stat(other, &b) == nil && a.Dev == b.Dev {
		t.Skip("/dev/shm is on the file system of the temporary folder here")
	}
	if w := c.Warnings(); len(w) != 0 {
		t.Errorf("witness on another file system: %q", w)
	}
}

// TestSubmission: submission.bare_lf and its list of clients, and the
// reply language.
func TestSubmission(t *testing.T) {
	for _, c := range []struct{ conf, want string }{
		{"[submission]\nbare_lf = \"normalize\"\n", "submission.bare_lf_clients: required when submission.bare_lf = \"normalize\""},
		{"[submission]\nbare_lf = \"lenient\"\n", `submission.bare_lf: must be one of "refuse", "normalize", got "lenient"`},
		{"[submission]\nbare_lf = \"normalize\"\nbare_lf_clients = [\"10.0.0.0/33\", \"app@\", \"host.example\"]\n",
			`submission.bare_lf_clients: item 1 "10.0.0.0/33": not an IP network in CIDR notation; item 2 "app@": not a mailbox address; item 3 "host.example": neither an address (user@domain) nor an IP network (CIDR)`},
		{"[submission]\nreply_language = \"fr\"\n", `submission.reply_language: must be one of "it+en", "it", "en", got "fr"`},
	} {
		_, err := Load(writeConfig(t, minimal+c.conf))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.conf, err, c.want)
		}
	}
	c, err := Load(writeConfig(t, minimal+"[submission]\nbare_lf = \"normalize\"\nbare_lf_clients = [\"0.0.0.0/0\", \"::/0\"]\n"))
	if err != nil || c.Submission.BareLF != "normalize" || len(c.Submission.BareLFClients) != 2 {
		t.Errorf("normalize for every client: %+v, %v", c.Submission, err)
	}
	c, err = Load(writeConfig(t, minimal+"[submission]\nbare_lf_clients = [\"app@pec.example.it\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, w := range c.Warnings() {
		found = found || strings.HasPrefix(w, "submission.bare_lf_clients: listed, but submission.bare_lf = \"refuse\"")
	}
	if !found {
		t.Errorf("clients listed with refuse: no warning in %q", c.Warnings())
	}
}
