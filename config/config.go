// Package config is the typed configuration of pecgw: one TOML file, its
// defaults written in one place beside each key, and a validation that
// reports every problem at once, each naming its key.
//
// The package reads no file but the configuration itself: CheckFiles only
// looks whether the files and folders it names exist, and the packages
// that use them read them.
package config

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/pecgw/pecgw/logstore"
)

// Config is the whole configuration. Load fills it from a file; Default
// returns it with every default.
type Config struct {
	// File is the absolute path of the file Load read ("" for Default).
	// Relative paths in the file are resolved against its folder.
	File string

	Provider   Provider
	Listen     Listen
	TLS        TLS
	Signing    Signing
	Directory  Directory
	Limits     Limits
	Submission Submission
	Users      Users
	Log        Log
	Delivery   Delivery
	Dedup      Dedup
	Logging    Logging
}

// Provider is the PEC provider (gestore) this access point belongs to.
type Provider struct {
	Name    string   // gestore-emittente / providerName (RFC 6109 §5.5)
	Domains []string // mail domains; the first names posta-certificata@ and the PEC identifiers
}

// Listen says where the submission service listens.
type Listen struct {
	Submission string // host:port, STARTTLS (RFC 6409, RFC 3207); "" disables
	SMTPS      string // host:port, implicit TLS (RFC 8314 §3.3); "" disables
	Hostname   string // greeting and EHLO name; Load sets it to the first provider domain when ""
}

// TLS is the server certificate of the listeners.
type TLS struct {
	Cert       string // certificate chain, PEM
	Key        string // private key, PEM
	MinVersion string // "1.2" or "1.3"
}

// Signing is the provider's signing key and certificate (RFC 6109 §5.5).
type Signing struct {
	Key  string // private key, PEM
	Cert string // signer certificate, then its chain, PEM
}

// Directory is the set of PEC domains other than the provider's own
// (RFC 6109 §5.3: managedDomains of the providers' index).
type Directory struct {
	Domains []string // PEC domains listed by hand
	LDIF    string   // local copy of the providers' index; "" for none
}

// Limits are the resource limits of the submission service.
type Limits struct {
	MaxMessageBytes            int64 // SIZE (RFC 1870) and the DATA limit
	MaxSizeTimesRecipients     int64 // message size × recipients (RFC 6109 §3.1.1)
	MessageMemory              int64 // octets of messages in memory at once (gateway.MessageMemory)
	MaxRecipients              int
	MaxConnections             int
	MaxConnectionsPerIP        int
	MaxConnectionsPerNetwork   int // a /24 or /64
	PreAuthTimeout             time.Duration
	LoginTimeout               time.Duration
	CommandTimeout             time.Duration
	DataTimeout                time.Duration
	AuthFailuresBeforeDelay    int // per address
	AuthLockoutFailures        int // per (address, account)
	AuthAddressLockoutFailures int // per address
	AuthLockout                time.Duration
	MinAuthTime                time.Duration
}

// Submission is what the submission service says to its clients and what
// it fixes in their messages (RFC 6409 §8).
type Submission struct {
	ReplyLanguage string   // "it", "en" or "it+en" (gateway.Language)
	BareLF        string   // "refuse" or "normalize" (gateway.BareLFPolicy)
	BareLFClients []string // bare_lf = "normalize": users and networks it applies to
}

// Users says where the users are and how their logins are checked
// (gateway.LoadUsers, gateway.Dovecot, gateway.Guard).
type Users struct {
	Backend        string // "file" or "dovecot"
	File           string
	DovecotSocket  string
	DovecotService string
	DovecotTimeout time.Duration
	Suspended      string // the suspended accounts (gateway.Accounts)
	CacheTTL       time.Duration
	CacheSize      int
	HashSlots      int
	HashWait       time.Duration
}

// Log configures the transaction log (logstore).
type Log struct {
	Dir                string
	CheckpointEvery    int
	CheckpointInterval time.Duration
	MaxSegmentMB       int
	RetentionMonths    int
	Name               string // the log's name in its witnesses; "" = the host name (LogName)
	WitnessDir         string // "" = no folder witness
	WitnessRedis       string // "on" or "off"
}

// LogName is the log's name in its witnesses: log.name, or the host name.
func (c *Config) LogName() string {
	if c.Log.Name != "" {
		return c.Log.Name
	}
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "pecgw"
	}
	return strings.ToLower(h)
}

// Delivery says where finished messages go.
type Delivery struct {
	Mode      string // "maildir" or "smtp"
	Maildir   string // root of <maildir>/outbound and <maildir>/mailboxes
	Spool     string // acceptance receipts kept until handed off (delivery.Spool)
	Incoming  string // messages over 256 KiB while read (gateway.MessageMemory)
	Envelopes Envelopes
	Receipts  Receipts
}

// Envelopes is the next hop of transport envelopes in "smtp" mode.
type Envelopes struct {
	Address      string // host:port
	TLS          string // "starttls", "implicit" or "none"
	ServerName   string // name checked in the next hop's certificate; "" = the host of Address
	Username     string // "" = no AUTH
	PasswordFile string // the password, read from this file
}

// Receipts is where receipts for the provider's own users go in "smtp" mode.
type Receipts struct {
	Protocol string // "lmtp" or "smtp"
	Address  string // host:port or unix:/path
}

// Dedup configures the duplicate-submission store.
type Dedup struct {
	Store             string // "embedded" or "redis"
	Dir               string // folder of the embedded store
	RedisAddrs        []string
	RedisMasterName   string // Sentinel: the monitored master's name
	RedisPasswordFile string
	Window            time.Duration
	Lease             time.Duration
	Timeout           time.Duration
	OnError           string // "tempfail" or "accept"
}

// Logging configures the operational log (zap), not the legal one.
type Logging struct {
	Format string // "console" or "json"
	Level  string // "debug", "info", "warn" or "error"
}

// Default returns the configuration with every default. Provider name and
// domains have none: Load requires them.
func Default() *Config {
	c := &Config{}
	for _, f := range c.fields() {
		f.val.setDefault()
	}
	return c
}

// KeyError is one problem of a configuration, tied to its dotted key.
type KeyError struct {
	Key string
	Err error
}

func (e *KeyError) Error() string { return e.Key + ": " + e.Err.Error() }
func (e *KeyError) Unwrap() error { return e.Err }

// Load reads the configuration file at path. The error is errors.Join of
// every problem found, each a *KeyError naming its key (or, for a TOML
// syntax error, an error naming file:line:col). Load does not look at the
// files the configuration names: CheckFiles does.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(abs, data)
}

// Parse is Load of data, the contents of the configuration file at the
// absolute path file (which need not exist yet: pecgw init checks what
// it is about to write).
func Parse(file string, data []byte) (*Config, error) {
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("%s: larger than %d octets: not a configuration file", file, maxFileSize)
	}
	if line, col, ok := tooDeep(data, maxNesting); ok {
		return nil, fmt.Errorf("%s:%d:%d: arrays or inline tables nested deeper than %d: %w", file, line, col, maxNesting, errSyntax)
	}
	raw := map[string]any{}
	md, err := toml.Decode(string(data), &raw)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("%s:%d:%d: %s: %w", file, pe.Position.Line, pe.Position.Col, pe.Message, errSyntax)
		}
		return nil, fmt.Errorf("%s: %w", file, err)
	}

	c := Default()
	c.File = file
	fields := c.fields()
	var errs []error
	errs = append(errs, unknownKeys(md, fields)...)
	typeErrs := map[string]error{} // keys of the wrong type, reported instead of their checks
	for _, f := range fields {
		v, ok, err := lookup(raw, f.key)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !ok {
			continue
		}
		if err := f.val.decode(v); err != nil {
			typeErrs[f.key] = err
		}
	}
	c.normalize()
	errs = append(errs, c.validate(typeErrs)...)
	if len(errs) > 0 {
		return nil, errors.Join(dedupe(errs)...)
	}
	if c.Listen.Hostname == "" {
		c.Listen.Hostname = c.Provider.Domains[0]
	}
	c.resolvePaths(filepath.Dir(file))
	return c, nil
}

// errSyntax marks a TOML syntax error.
var errSyntax = errors.New("toml syntax error")

// lookup finds the value of the dotted key in raw. A table on the way
// that is not a table is reported with its own key.
func lookup(raw map[string]any, key string) (any, bool, error) {
	parts := strings.Split(key, ".")
	m := raw
	for i, p := range parts[:len(parts)-1] {
		v, ok := m[p]
		if !ok {
			return nil, false, nil
		}
		t, ok := v.(map[string]any)
		if !ok {
			return nil, false, &KeyError{strings.Join(parts[:i+1], "."), fmt.Errorf("must be a table, got %s", tomlType(v))}
		}
		m = t
	}
	v, ok := m[parts[len(parts)-1]]
	return v, ok, nil
}

// dedupe drops repeated messages (a table that is not a table is found
// once per key below it).
func dedupe(errs []error) []error {
	seen := map[string]bool{}
	out := errs[:0]
	for _, e := range errs {
		if s := e.Error(); !seen[s] {
			seen[s] = true
			out = append(out, e)
		}
	}
	return out
}

// unknownKeys reports, in file order, every key that is neither a
// known field nor a known table. Under an unknown table only the table
// is reported.
func unknownKeys(md toml.MetaData, fields []field) []error {
	known := map[string]bool{}
	for _, f := range fields {
		known[f.key] = true
	}
	tables := map[string]bool{}
	for _, s := range sections {
		tables[s.name] = true
	}
	var errs []error
	var reported []string
	for _, k := range md.Keys() {
		if hasPartWithDot(k) {
			errs = append(errs, &KeyError{k.String(), errors.New("unknown key")})
			continue
		}
		name := strings.Join(k, ".")
		if known[name] || tables[name] || under(name, reported) || underField(name, known) {
			continue
		}
		reported = append(reported, name)
		msg := "unknown key"
		if len(k) == 1 {
			msg = "unknown section"
		}
		if last := k[len(k)-1]; strings.Contains(last, "password") || strings.Contains(last, "secret") {
			// Secrets are read from files, never written in the
			// configuration, which operators share and version.
			msg += " (secrets are read from files: use a *_file key)"
		}
		errs = append(errs, &KeyError{name, errors.New(msg)})
	}
	return errs
}

func hasPartWithDot(k toml.Key) bool {
	for _, p := range k {
		if strings.Contains(p, ".") {
			return true
		}
	}
	return false
}

func under(name string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(name, p+".") {
			return true
		}
	}
	return false
}

// underField is true for keys inside a field's value (an inline table
// where a scalar belongs): the field's type error covers them.
func underField(name string, known map[string]bool) bool {
	for i := strings.LastIndexByte(name, '.'); i > 0; i = strings.LastIndexByte(name[:i], '.') {
		if known[name[:i]] {
			return true
		}
	}
	return false
}

// normalize puts names in their canonical form before validation:
// domain names are compared case-insensitively (RFC 5321 §2.4), so they
// are kept lower-case.
func (c *Config) normalize() {
	for _, l := range []*[]string{&c.Provider.Domains, &c.Directory.Domains} {
		for i, d := range *l {
			(*l)[i] = strings.ToLower(d)
		}
	}
	c.Listen.Hostname = strings.ToLower(c.Listen.Hostname)
}

// resolvePaths makes every relative path absolute against dir, the
// folder of the configuration file.
func (c *Config) resolvePaths(dir string) {
	for _, f := range c.fields() {
		if !f.path {
			continue
		}
		p := f.val.(*stringValue).p
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	if a, ok := strings.CutPrefix(c.Delivery.Receipts.Address, "unix:"); ok && a != "" && !filepath.IsAbs(a) {
		c.Delivery.Receipts.Address = "unix:" + filepath.Join(dir, a)
	}
}

// TLSMinVersion is tls.min_version as a crypto/tls constant.
func (c *Config) TLSMinVersion() uint16 {
	if c.TLS.MinVersion == "1.3" {
		return tls.VersionTLS13
	}
	return tls.VersionTLS12
}

// LogOptions converts the [log] section (and the provider name) to the
// options of the transaction log.
func (c *Config) LogOptions(signer logstore.CheckpointSigner) logstore.Options {
	return logstore.Options{
		Dir:                c.Log.Dir,
		Signer:             signer,
		Provider:           c.Provider.Name,
		CheckpointEvery:    c.Log.CheckpointEvery,
		CheckpointInterval: c.Log.CheckpointInterval,
		MaxSegmentSize:     int64(c.Log.MaxSegmentMB) << 20,
		RetentionMonths:    c.Log.RetentionMonths,
		Witnesses:          c.FolderWitnesses(),
	}
}

// Warnings are what is allowed but unwise in the configuration, each
// starting with its key: a log without a witness, or with its witness
// folder on the log's own file system (docs/logformat.md, "Witnesses").
func (c *Config) Warnings() []string {
	var out []string
	if c.Submission.BareLF == "refuse" && len(c.Submission.BareLFClients) > 0 {
		out = append(out, `submission.bare_lf_clients: listed, but submission.bare_lf = "refuse": their bare LF line ends are refused like everyone's`)
	}
	if c.Log.WitnessDir == "" {
		return append(out, "log.witness_dir: no witness folder: records cut from the end of the log, or a folder restored from an older copy, cannot be seen (a Redis witness can, with dedup.store = \"redis\")")
	}
	var a, b syscall.Stat_t
	if syscall.Stat(c.Log.Dir, &a) == nil && syscall.Stat(c.Log.WitnessDir, &b) == nil && a.Dev == b.Dev {
		out = append(out, fmt.Sprintf("log.witness_dir: %s is on the same file system as log.dir: what cuts or restores the log's volume reaches its witness too; in production put it on another volume", c.Log.WitnessDir))
	}
	return out
}

// FolderWitnesses is the log's folder witness (log.witness_dir), if any.
// The Redis witness is the dedup store's (dedup.Redis.Witness).
func (c *Config) FolderWitnesses() []logstore.Witness {
	if c.Log.WitnessDir == "" {
		return nil
	}
	return []logstore.Witness{&logstore.FolderWitness{Dir: c.Log.WitnessDir, Name: c.LogName()}}
}

// CheckFiles reports every file or folder the configuration names that
// is missing or of the wrong kind, each naming its key. It looks, it does
// not read: the packages that use the files check their contents.
func (c *Config) CheckFiles() error {
	type want struct {
		key, path string
		dir       bool
	}
	wants := []want{
		{"tls.cert", c.TLS.Cert, false},
		{"tls.key", c.TLS.Key, false},
		{"signing.key", c.Signing.Key, false},
		{"signing.cert", c.Signing.Cert, false},
		{"users.file", filepath.Dir(c.Users.File), true},
		// logstore.Options.Dir: the log folder must exist, so a missing
		// volume does not silently start a new log.
		{"log.dir", c.Log.Dir, true},
	}
	if c.Log.WitnessDir != "" {
		// Like the log folder: a missing volume is not a new witness.
		wants = append(wants, want{"log.witness_dir", c.Log.WitnessDir, true})
	}
	if c.Directory.LDIF != "" {
		wants = append(wants, want{"directory.ldif", c.Directory.LDIF, false})
	}
	if c.Delivery.Mode == "maildir" {
		wants = append(wants, want{"delivery.maildir", c.Delivery.Maildir, true})
	}
	if c.Delivery.Envelopes.PasswordFile != "" {
		wants = append(wants, want{"delivery.envelopes.password_file", c.Delivery.Envelopes.PasswordFile, false})
	}
	// The spool folder is created, not its parents.
	wants = append(wants, want{"delivery.spool", filepath.Dir(c.Delivery.Spool), true})
	if c.Dedup.Store == "embedded" {
		// The embedded store creates its own folder, not the parents.
		wants = append(wants, want{"dedup.dir", filepath.Dir(c.Dedup.Dir), true})
	}
	if c.Dedup.Store == "redis" && c.Dedup.RedisPasswordFile != "" {
		wants = append(wants, want{"dedup.redis_password_file", c.Dedup.RedisPasswordFile, false})
	}
	var errs []error
	for _, w := range wants {
		fi, err := os.Stat(w.path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			what := "file"
			if w.dir {
				what = "folder"
			}
			e := fmt.Errorf("%s %s does not exist", what, w.path)
			if w.key == "log.witness_dir" {
				e = fmt.Errorf("%w: create it, on another volume than log.dir (docs/logformat.md, \"Witnesses\"), or set log.witness_dir = \"\" to run without a witness", e)
			}
			errs = append(errs, &KeyError{w.key, e})
		case err != nil:
			errs = append(errs, &KeyError{w.key, err})
		case w.dir && !fi.IsDir():
			errs = append(errs, &KeyError{w.key, fmt.Errorf("%s is not a folder", w.path)})
		case !w.dir && !fi.Mode().IsRegular():
			errs = append(errs, &KeyError{w.key, fmt.Errorf("%s is not a regular file", w.path)})
		}
	}
	if fi, err := os.Stat(c.Users.File); err == nil && !fi.Mode().IsRegular() {
		errs = append(errs, &KeyError{"users.file", fmt.Errorf("%s is not a regular file", c.Users.File)})
	}
	return errors.Join(errs...)
}
