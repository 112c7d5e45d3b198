package config

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/pecgw/pecgw/logstore"
)

// field binds one dotted TOML key to its place in Config, its default and
// its check: the one table that Default, Load, Marshal and the
// documentation test all read.
type field struct {
	key   string
	doc   string // the comment Marshal writes above the key
	path  bool   // a file or folder name, relative to the configuration's folder
	val   value
	check func() error // nil: any value of the right type
}

// section is a TOML table, in the order Marshal writes them.
type section struct{ name, doc string }

var sections = []section{
	{"provider", "The PEC provider (gestore) this access point belongs to."},
	{"listen", "Where the submission service listens. At least one listener is required."},
	{"tls", "Server certificate of the listeners."},
	{"signing", "The provider's signing key and certificate (RFC 6109 §5.5)."},
	{"directory", "PEC domains besides the provider's own (RFC 6109 §5.3)."},
	{"limits", "Resource limits of the submission service."},
	{"submission", "What the submission service answers its clients, and what it fixes in their messages (RFC 6409 §8)."},
	{"users", "The users allowed to submit (pecgw user add|passwd|del|list)."},
	{"log", "The legal transaction log (RFC 6109 §2.3)."},
	{"delivery", "Where finished messages go: a local maildir, or the next hops over SMTP/LMTP."},
	{"delivery.envelopes", "mode = \"smtp\": next hop for transport envelopes (buste di trasporto)."},
	{"delivery.receipts", "mode = \"smtp\": receipts for the sender go to the provider's mailbox store."},
	{"dedup", "Duplicate-submission store: a retried submission gets its original PEC identifier."},
	{"logging", "The operational log (not the legal one): stderr or journald."},
}

// fields lists every key with its default. Defaults live here and only
// here.
func (c *Config) fields() []field {
	return []field{
		{"provider.name", "Required. Provider name, gestore-emittente / providerName (RFC 6109 §5.5).", false,
			str(&c.Provider.Name, ""), func() error { return providerName(c.Provider.Name) }},
		{"provider.domains", "Required. The provider's mail domains; the first names posta-certificata@<domain> and the PEC identifiers.", false,
			list(&c.Provider.Domains, nil), func() error { return domainList(c.Provider.Domains, true) }},

		{"listen.submission", "host:port for submission with STARTTLS (RFC 6409, RFC 3207); \"\" disables.", false,
			str(&c.Listen.Submission, "127.0.0.1:2587"), func() error { return hostPort(c.Listen.Submission, true) }},
		{"listen.smtps", "host:port for submission with implicit TLS (RFC 8314 §3.3); \"\" disables.", false,
			str(&c.Listen.SMTPS, "127.0.0.1:2465"), func() error { return hostPort(c.Listen.SMTPS, true) }},
		{"listen.hostname", "Name in the greeting and EHLO reply; \"\" means the first provider domain.", false,
			str(&c.Listen.Hostname, ""), func() error { return hostname(c.Listen.Hostname) }},

		{"tls.cert", "Certificate chain, PEM.", true, str(&c.TLS.Cert, "pki/tls.pem"), required(&c.TLS.Cert)},
		{"tls.key", "Private key, PEM.", true, str(&c.TLS.Key, "pki/tls-key.pem"), required(&c.TLS.Key)},
		{"tls.min_version", "Lowest TLS version: \"1.2\" or \"1.3\" (RFC 8996 deprecates older ones).", false,
			str(&c.TLS.MinVersion, "1.2"), oneOf(&c.TLS.MinVersion, "1.2", "1.3")},

		{"signing.key", "Private key of the signing certificate, PEM.", true,
			str(&c.Signing.Key, "pki/signing-key.pem"), required(&c.Signing.Key)},
		{"signing.cert", "Signing certificate, then its chain, PEM.", true,
			str(&c.Signing.Cert, "pki/signing.pem"), required(&c.Signing.Cert)},

		{"directory.domains", "PEC domains of other providers, listed by hand.", false,
			list(&c.Directory.Domains, nil), func() error { return domainList(c.Directory.Domains, false) }},
		{"directory.ldif", "Local copy of the providers' index (LDIF, managedDomains); \"\" for none; re-read on SIGHUP.", true,
			str(&c.Directory.LDIF, ""), nil},

		{"limits.max_message_bytes", "Largest message, octets (SIZE, RFC 1870).", false,
			int64v(&c.Limits.MaxMessageBytes, 100_000_000), between(&c.Limits.MaxMessageBytes, 1024, math.MaxInt32)},
		{"limits.message_memory", "Octets of messages held in memory at once while being checked, built and signed (6 per octet of each); a larger message waits its turn.", false,
			int64v(&c.Limits.MessageMemory, 512<<20), between(&c.Limits.MessageMemory, 16<<20, 1<<40)},
		{"limits.max_size_times_recipients", "Message size × recipients, octets (RFC 6109 §3.1.1).", false,
			int64v(&c.Limits.MaxSizeTimesRecipients, 100_000_000), between(&c.Limits.MaxSizeTimesRecipients, 1024, 1<<40)},
		{"limits.max_recipients", "Recipients per message: announced in EHLO (LIMITS RCPTMAX, RFC 9422); a RCPT TO beyond it gets 452 4.5.3.", false,
			intv(&c.Limits.MaxRecipients, 500), between(&c.Limits.MaxRecipients, 1, 10000)},
		// gateway/listener.go: connections count from accept, not from EHLO.
		{"limits.max_connections", "Simultaneous connections, counted from accept (the file descriptor limit is raised to fit).", false,
			intv(&c.Limits.MaxConnections, 200), between(&c.Limits.MaxConnections, 1, 1_000_000)},
		{"limits.max_connections_per_ip", "Simultaneous connections from one IP address.", false,
			intv(&c.Limits.MaxConnectionsPerIP, 20), between(&c.Limits.MaxConnectionsPerIP, 1, 1_000_000)},
		{"limits.max_connections_per_network", "Simultaneous connections from one /24 (IPv4) or /64 (IPv6) network.", false,
			intv(&c.Limits.MaxConnectionsPerNetwork, 100), between(&c.Limits.MaxConnectionsPerNetwork, 1, 1_000_000)},
		{"limits.preauth_timeout", "Before AUTH: time allowed for the TLS handshake and for each command and reply (the RFC 5321 timeouts apply after AUTH).", false,
			dur(&c.Limits.PreAuthTimeout, 20*time.Second), durBetween(&c.Limits.PreAuthTimeout, 100*time.Millisecond, time.Hour)},
		{"limits.login_timeout", "Time from connect to a successful AUTH; a client that has not logged in by then is disconnected.", false,
			dur(&c.Limits.LoginTimeout, time.Minute), durBetween(&c.Limits.LoginTimeout, 100*time.Millisecond, 24*time.Hour)},
		// RFC 5321 §4.5.3.2.7: a server should wait at least 5 minutes for
		// the next command; the bounds allow tighter settings for tests.
		{"limits.command_timeout", "After AUTH: time to wait for the next command (RFC 5321 §4.5.3.2.7: at least 5m).", false,
			dur(&c.Limits.CommandTimeout, 5*time.Minute), durBetween(&c.Limits.CommandTimeout, time.Second, time.Hour)},
		{"limits.data_timeout", "Time to wait for the whole DATA (RFC 5321 §4.5.3.2.6).", false,
			dur(&c.Limits.DataTimeout, 10*time.Minute), durBetween(&c.Limits.DataTimeout, time.Second, 2*time.Hour)},
		// gateway/auth.go: lockout per (address, account), slow-down per
		// address and network.
		{"limits.auth_failures_before_delay", "Failed AUTH attempts from one IP address (10× that from its network) before failures are answered slower.", false,
			intv(&c.Limits.AuthFailuresBeforeDelay, 3), between(&c.Limits.AuthFailuresBeforeDelay, 0, 1000)},
		{"limits.auth_lockout_failures", "Failed AUTH attempts for one account from one IP address before that account is locked out from there.", false,
			intv(&c.Limits.AuthLockoutFailures, 10), between(&c.Limits.AuthLockoutFailures, 1, 1000)},
		{"limits.auth_address_lockout_failures", "Failed AUTH attempts from one IP address, whatever the accounts, before the address is locked out.", false,
			intv(&c.Limits.AuthAddressLockoutFailures, 100), between(&c.Limits.AuthAddressLockoutFailures, 1, 100_000)},
		{"limits.auth_lockout", "The window failures are counted in, and how long a lockout lasts.", false,
			dur(&c.Limits.AuthLockout, 15*time.Minute), durBetween(&c.Limits.AuthLockout, time.Second, 24*time.Hour)},
		{"limits.min_auth_time", "Least time a failed AUTH takes to be answered, so that timing tells nothing about users (below 100ms it may: test setups only).", false,
			dur(&c.Limits.MinAuthTime, 300*time.Millisecond), durBetween(&c.Limits.MinAuthTime, time.Millisecond, 10*time.Second)},

		// gateway/reply.go, docs/replies.md.
		{"submission.reply_language", "Language of the SMTP replies' texts: \"it+en\" (Italian, then English, on one line), \"it\" or \"en\".", false,
			str(&c.Submission.ReplyLanguage, "it+en"), oneOf(&c.Submission.ReplyLanguage, "it+en", "it", "en")},
		// gateway/submit.go: RFC 5321 §2.3.8, SMTP smuggling.
		{"submission.bare_lf", "Lines ending in a bare LF: \"refuse\" (RFC 5321 §2.3.8; with a notice saying what to fix) or \"normalize\" (made CRLF, for the clients of bare_lf_clients only).", false,
			str(&c.Submission.BareLF, "refuse"), oneOf(&c.Submission.BareLF, "refuse", "normalize")},
		{"submission.bare_lf_clients", "bare_lf = \"normalize\": the users (addresses) and client networks (CIDR, or single IP addresses) whose bare LF line ends are made CRLF; everyone else's are refused.", false,
			list(&c.Submission.BareLFClients, nil), func() error { return bareLFClients(c.Submission.BareLFClients) }},

		{"users.backend", "Where passwords are checked: \"file\" (users.file) or \"dovecot\" (the provider's Dovecot, over its auth socket).", false,
			str(&c.Users.Backend, "file"), oneOf(&c.Users.Backend, "file", "dovecot")},
		{"users.file", "backend = \"file\": one \"address:hash\" per line, mode 0600; followed while the daemon runs.", true,
			str(&c.Users.File, "users"), nil},
		{"users.dovecot_socket", "backend = \"dovecot\": Dovecot's auth-client socket (a unix socket path, or host:port of an inet_listener).", false,
			str(&c.Users.DovecotSocket, ""), nil},
		{"users.dovecot_service", "backend = \"dovecot\": the service name Dovecot is told (its passdb rules may depend on it).", false,
			str(&c.Users.DovecotService, "smtp"), func() error { return noControl(c.Users.DovecotService) }},
		{"users.dovecot_timeout", "backend = \"dovecot\": longest wait for Dovecot's answer.", false,
			dur(&c.Users.DovecotTimeout, 10*time.Second), durBetween(&c.Users.DovecotTimeout, 100*time.Millisecond, time.Minute)},
		{"users.suspended", "Suspended accounts (pecgw user suspend|resume): they log in but may not send; created when first needed.", true,
			str(&c.Users.Suspended, "users.suspended"), required(&c.Users.Suspended)},
		{"users.cache_ttl", "How long a verified password is remembered (a keyed hash, never the password), so repeat logins skip the hashing; 0s disables.", false,
			dur(&c.Users.CacheTTL, time.Hour), durBetween(&c.Users.CacheTTL, 0, 7*24*time.Hour)},
		{"users.cache_size", "Most remembered verifications; beyond it all are forgotten.", false,
			intv(&c.Users.CacheSize, 100_000), between(&c.Users.CacheSize, 1, 10_000_000)},
		{"users.hash_slots", "Password verifications at once (each argon2id one takes its m of memory); 0 means one per CPU, at least 2.", false,
			intv(&c.Users.HashSlots, 0), between(&c.Users.HashSlots, 0, 1024)},
		{"users.hash_wait", "Longest wait for a verification slot; beyond it AUTH gets 454 4.7.0 (try again).", false,
			dur(&c.Users.HashWait, 3*time.Second), durBetween(&c.Users.HashWait, 10*time.Millisecond, time.Minute)},

		{"log.dir", "Folder of the transaction log; it must exist.", true, str(&c.Log.Dir, "log"), required(&c.Log.Dir)},
		{"log.checkpoint_every", "Most records waiting for the signed checkpoint that covers them: appends wait beyond it.", false,
			intv(&c.Log.CheckpointEvery, 1000), between(&c.Log.CheckpointEvery, 1, 1_000_000)},
		// docs/logformat.md, "Checkpoints": every batch is signed, at most
		// this long after the one before; nothing stays unsigned longer.
		{"log.checkpoint_interval", "Least time between two signed checkpoints: a record is signed at most this long (and one signature) after it is written.", false,
			dur(&c.Log.CheckpointInterval, logstore.DefaultCheckpointInterval), durBetween(&c.Log.CheckpointInterval, time.Millisecond, logstore.MaxCheckpointInterval)},
		{"log.name", "Name of this instance's log in its witnesses (the witness file, the Redis key); \"\" means the host name.", false,
			str(&c.Log.Name, ""), func() error { return witnessName(c.Log.Name) }},
		{"log.witness_dir", "Folder that keeps the log's latest signed checkpoint (its witness): put it on another volume than log.dir; \"\" disables it (not recommended).", true,
			str(&c.Log.WitnessDir, "witness"), nil},
		{"log.witness_redis", "\"on\": with dedup.store = \"redis\", Redis keeps a witness of the log too (key pecgw:log-head:<log.name>); \"off\".", false,
			str(&c.Log.WitnessRedis, "on"), oneOf(&c.Log.WitnessRedis, "on", "off")},
		{"log.max_segment_mb", "MiB of records in a segment before it is sealed.", false,
			intv(&c.Log.MaxSegmentMB, 256), between(&c.Log.MaxSegmentMB, 1, 65536)},
		// RFC 6109 §2.3 and DPR 68/2005: the log is kept 30 months.
		{"log.retention_months", "Months the log is kept; at least 30 (RFC 6109 §2.3, DPR 68/2005).", false,
			intv(&c.Log.RetentionMonths, 30), between(&c.Log.RetentionMonths, logstore.MinRetentionMonths, 1200)},

		{"delivery.mode", "\"maildir\" (embedded, nothing else needed) or \"smtp\" (next hops).", false,
			str(&c.Delivery.Mode, "maildir"), oneOf(&c.Delivery.Mode, "maildir", "smtp")},
		{"delivery.maildir", "mode = \"maildir\": root of <maildir>/outbound and <maildir>/mailboxes.", true,
			str(&c.Delivery.Maildir, "."), nil},
		{"delivery.spool", "Signed acceptance receipts kept from before the envelope hand-off until their own (created if missing; keep it on the log's volume).", true,
			str(&c.Delivery.Spool, "spool"), required(&c.Delivery.Spool)},
		{"delivery.incoming", "Messages over 256 KiB while DATA is read (created if missing; files unlinked as they are made; a disk, not a tmpfs: limits.message_memory).", true,
			str(&c.Delivery.Incoming, "incoming"), required(&c.Delivery.Incoming)},

		{"delivery.envelopes.address", "host:port of the next hop (the provider's MTA).", false,
			str(&c.Delivery.Envelopes.Address, ""), func() error { return hostPort(c.Delivery.Envelopes.Address, true) }},
		{"delivery.envelopes.tls", "\"starttls\" (RFC 3207), \"implicit\" (RFC 8314) or \"none\" (loopback address only, RFC 6109 §5.3).", false,
			str(&c.Delivery.Envelopes.TLS, "starttls"), oneOf(&c.Delivery.Envelopes.TLS, "starttls", "implicit", "none")},
		{"delivery.envelopes.server_name", "Name expected in the next hop's certificate; \"\" means the host of address.", false,
			str(&c.Delivery.Envelopes.ServerName, ""), func() error { return hostname(c.Delivery.Envelopes.ServerName) }},
		{"delivery.envelopes.username", "AUTH user at the next hop; \"\" for no AUTH.", false,
			str(&c.Delivery.Envelopes.Username, ""), func() error { return noControl(c.Delivery.Envelopes.Username) }},
		{"delivery.envelopes.password_file", "File holding the AUTH password (never written here).", true,
			str(&c.Delivery.Envelopes.PasswordFile, ""), nil},

		{"delivery.receipts.protocol", "\"lmtp\" (RFC 2033) or \"smtp\".", false,
			str(&c.Delivery.Receipts.Protocol, "lmtp"), oneOf(&c.Delivery.Receipts.Protocol, "lmtp", "smtp")},
		{"delivery.receipts.address", "unix:/path, or host:port (a loopback address for LMTP, which goes in clear).", false,
			str(&c.Delivery.Receipts.Address, ""), func() error { return receiptsAddress(c.Delivery.Receipts.Address) }},

		{"dedup.store", "\"embedded\" (one instance) or \"redis\" (several instances share it).", false,
			str(&c.Dedup.Store, "embedded"), oneOf(&c.Dedup.Store, "embedded", "redis")},
		{"dedup.dir", "store = \"embedded\": its folder (created if missing).", true, str(&c.Dedup.Dir, "dedup"), nil},
		{"dedup.redis_addrs", "store = \"redis\": host:port of the servers (several for Sentinel or Cluster).", false,
			list(&c.Dedup.RedisAddrs, nil), func() error { return hostPortList(c.Dedup.RedisAddrs) }},
		{"dedup.redis_master_name", "store = \"redis\" with Sentinel: the master's name (redis_addrs are then the sentinels); \"\" otherwise.", false,
			str(&c.Dedup.RedisMasterName, ""), nil},
		{"dedup.redis_password_file", "File holding the Redis password; \"\" for none.", true,
			str(&c.Dedup.RedisPasswordFile, ""), nil},
		{"dedup.window", "How long a submission is remembered.", false,
			dur(&c.Dedup.Window, 168*time.Hour), durBetween(&c.Dedup.Window, time.Minute, 8760*time.Hour)},
		{"dedup.lease", "How long a claim lasts unless renewed while its transaction runs; a crashed instance's retries wait this long.", false,
			dur(&c.Dedup.Lease, 30*time.Second), durBetween(&c.Dedup.Lease, time.Second, 10*time.Minute)},
		{"dedup.timeout", "Time allowed for one store operation.", false,
			dur(&c.Dedup.Timeout, 500*time.Millisecond), durBetween(&c.Dedup.Timeout, time.Millisecond, time.Minute)},
		{"dedup.on_error", "When the store fails: \"tempfail\" (4xx, the client retries) or \"accept\" (risk a duplicate).", false,
			str(&c.Dedup.OnError, "tempfail"), oneOf(&c.Dedup.OnError, "tempfail", "accept")},

		{"logging.format", "\"console\" or \"json\".", false, str(&c.Logging.Format, "console"), oneOf(&c.Logging.Format, "console", "json")},
		{"logging.level", "\"debug\", \"info\", \"warn\" or \"error\".", false,
			str(&c.Logging.Level, "info"), oneOf(&c.Logging.Level, "debug", "info", "warn", "error")},
	}
}

// value is a typed place in Config.
type value interface {
	setDefault()
	decode(raw any) error // from the value the TOML decoder produced
	toml() string         // the TOML literal of the current value
}

type stringValue struct {
	p   *string
	def string
}

func str(p *string, def string) value { return &stringValue{p, def} }
func (v *stringValue) setDefault()    { *v.p = v.def }
func (v *stringValue) toml() string   { return quote(*v.p) }
func (v *stringValue) decode(raw any) error {
	s, ok := raw.(string)
	if !ok {
		return fmt.Errorf("must be a string, got %s", tomlType(raw))
	}
	*v.p = s
	return nil
}

type intValue[T int | int64] struct {
	p   *T
	def T
}

func intv(p *int, def int) value       { return &intValue[int]{p, def} }
func int64v(p *int64, def int64) value { return &intValue[int64]{p, def} }
func (v *intValue[T]) setDefault()     { *v.p = v.def }
func (v *intValue[T]) toml() string    { return strconv.FormatInt(int64(*v.p), 10) }
func (v *intValue[T]) decode(raw any) error {
	n, ok := raw.(int64)
	if !ok {
		return fmt.Errorf("must be an integer, got %s", tomlType(raw))
	}
	if int64(T(n)) != n {
		return fmt.Errorf("%d is out of range", n)
	}
	*v.p = T(n)
	return nil
}

type durationValue struct {
	p   *time.Duration
	def time.Duration
}

func dur(p *time.Duration, def time.Duration) value { return &durationValue{p, def} }
func (v *durationValue) setDefault()                { *v.p = v.def }
func (v *durationValue) toml() string               { return quote(fmtDuration(*v.p)) }
func (v *durationValue) decode(raw any) error {
	s, ok := raw.(string)
	if !ok {
		return fmt.Errorf("must be a duration string such as \"5m\" or \"1h30m\", got %s", tomlType(raw))
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("must be a duration such as \"5m\" or \"1h30m\", got %q", s)
	}
	*v.p = d
	return nil
}

type listValue struct {
	p   *[]string
	def []string
}

func list(p *[]string, def []string) value { return &listValue{p, def} }
func (v *listValue) setDefault()           { *v.p = append([]string(nil), v.def...) }
func (v *listValue) toml() string {
	q := make([]string, len(*v.p))
	for i, s := range *v.p {
		q[i] = quote(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}
func (v *listValue) decode(raw any) error {
	a, ok := raw.([]any)
	if !ok {
		return fmt.Errorf("must be an array of strings, got %s", tomlType(raw))
	}
	var out []string // nil when empty, as the default
	for i, e := range a {
		s, ok := e.(string)
		if !ok {
			return fmt.Errorf("must be an array of strings, item %d is %s", i+1, tomlType(e))
		}
		out = append(out, s)
	}
	*v.p = out
	return nil
}

// tomlType names the TOML type of a decoded value, for messages.
func tomlType(v any) string {
	switch v := v.(type) {
	case string:
		return fmt.Sprintf("string %q", v)
	case int64:
		return fmt.Sprintf("integer %d", v)
	case float64:
		return fmt.Sprintf("float %v", v)
	case bool:
		return fmt.Sprintf("boolean %v", v)
	case []any, []map[string]any:
		return "an array"
	case map[string]any:
		return "a table"
	default:
		return "a date or time"
	}
}

// fmtDuration writes d without the zero units time.Duration.String
// keeps: "5m" rather than "5m0s".
func fmtDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

// quote writes s as a TOML basic string.
func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\t':
			b.WriteString(`\t`)
		case '\r':
			b.WriteString(`\r`)
		default:
			if r < 0x20 || r == 0x7f {
				fmt.Fprintf(&b, `\u%04X`, r)
			} else {
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
	return b.String()
}

var errRequired = errors.New("required")
