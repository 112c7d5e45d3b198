package config

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// validate returns every problem of c, each a *KeyError: first those of
// single keys, in the order of fields, then those between keys. A key in
// typeErrs had a value of the wrong type: that is its problem, and its
// check is not run.
func (c *Config) validate(typeErrs map[string]error) []error {
	var errs []error
	add := func(key string, err error) { errs = append(errs, &KeyError{key, err}) }
	for _, f := range c.fields() {
		if err := typeErrs[f.key]; err != nil {
			add(f.key, err)
		} else if f.check != nil {
			if err := f.check(); err != nil {
				add(f.key, err)
			}
		}
	}

	if c.Listen.Submission == "" && c.Listen.SMTPS == "" {
		add("listen.submission", errors.New("no listener: set listen.submission or listen.smtps (or both)"))
	} else if c.Listen.Submission == c.Listen.SMTPS {
		add("listen.smtps", errors.New("same address as listen.submission"))
	}

	l := c.Limits
	if l.MaxConnectionsPerIP > l.MaxConnections {
		add("limits.max_connections_per_ip", fmt.Errorf("must not exceed limits.max_connections (%d), got %d", l.MaxConnections, l.MaxConnectionsPerIP))
	}
	if l.MaxMessageBytes > l.MaxSizeTimesRecipients {
		// A message larger than size × recipients could never be accepted
		// (RFC 6109 §3.1.1), not even with one recipient.
		add("limits.max_message_bytes", fmt.Errorf("must not exceed limits.max_size_times_recipients (%d), got %d", l.MaxSizeTimesRecipients, l.MaxMessageBytes))
	}
	if l.LoginTimeout < l.PreAuthTimeout {
		add("limits.login_timeout", fmt.Errorf("must not be less than limits.preauth_timeout (%s), got %s", l.PreAuthTimeout, l.LoginTimeout))
	}
	if l.AuthAddressLockoutFailures < l.AuthLockoutFailures {
		add("limits.auth_address_lockout_failures", fmt.Errorf("must not be less than limits.auth_lockout_failures (%d), got %d", l.AuthLockoutFailures, l.AuthAddressLockoutFailures))
	}
	if c.Submission.BareLF == "normalize" && len(c.Submission.BareLFClients) == 0 {
		// Explicit, so that nobody normalises everyone's by leaving the
		// list out: "0.0.0.0/0" and "::/0" say it.
		add("submission.bare_lf_clients", errors.New(`required when submission.bare_lf = "normalize": list the users and networks it applies to ("0.0.0.0/0" and "::/0" for every client)`))
	}
	switch u := c.Users; u.Backend {
	case "file":
		if u.File == "" {
			add("users.file", errors.New(`required when users.backend = "file"`))
		}
	case "dovecot":
		if u.DovecotSocket == "" {
			add("users.dovecot_socket", errors.New(`required when users.backend = "dovecot"`))
		}
	}
	if l.AuthLockoutFailures < l.AuthFailuresBeforeDelay {
		add("limits.auth_lockout_failures", fmt.Errorf("must not be less than limits.auth_failures_before_delay (%d), got %d", l.AuthFailuresBeforeDelay, l.AuthLockoutFailures))
	}

	d := c.Delivery
	switch d.Mode {
	case "maildir":
		if d.Maildir == "" {
			add("delivery.maildir", errors.New(`required when delivery.mode = "maildir"`))
		}
	case "smtp":
		if d.Envelopes.Address == "" {
			add("delivery.envelopes.address", errors.New(`required when delivery.mode = "smtp"`))
		}
		if d.Receipts.Address == "" {
			add("delivery.receipts.address", errors.New(`required when delivery.mode = "smtp"`))
		}
	}
	e := d.Envelopes
	// RFC 6109 §5.3: PEC travels only over protected channels; clear
	// text (SMTP without TLS, LMTP) is for a relay on this host. The same
	// rule as delivery.SMTPOptions and delivery.LMTPOptions, reported here
	// by key.
	if h, _, err := net.SplitHostPort(e.Address); err == nil && e.TLS == "none" && !isLoopbackHost(h) {
		add("delivery.envelopes.tls", fmt.Errorf(`"none" is allowed only for a loopback address, and delivery.envelopes.address is %q (RFC 6109 §5.3)`, e.Address))
	}
	if h, _, err := net.SplitHostPort(d.Receipts.Address); err == nil && !strings.HasPrefix(d.Receipts.Address, "unix:") &&
		d.Receipts.Protocol == "lmtp" && !isLoopbackHost(h) {
		add("delivery.receipts.address", fmt.Errorf(`LMTP goes in clear: only a loopback address or a unix: socket, got %q (RFC 6109 §5.3)`, d.Receipts.Address))
	}
	if e.Username != "" && e.PasswordFile == "" {
		add("delivery.envelopes.password_file", errors.New("required when delivery.envelopes.username is set"))
	}
	if e.Username == "" && e.PasswordFile != "" {
		add("delivery.envelopes.username", errors.New("required when delivery.envelopes.password_file is set"))
	}
	if e.Username != "" && e.TLS == "none" {
		// RFC 4954 §4 / RFC 4616 §6: PLAIN credentials only over TLS.
		add("delivery.envelopes.tls", errors.New(`"none" would send the AUTH password in clear: use "starttls" or "implicit"`))
	}

	switch c.Dedup.Store {
	case "embedded":
		if c.Dedup.Dir == "" {
			add("dedup.dir", errors.New(`required when dedup.store = "embedded"`))
		}
	case "redis":
		if len(c.Dedup.RedisAddrs) == 0 {
			add("dedup.redis_addrs", errors.New(`required when dedup.store = "redis"`))
		}
	}
	return errs
}

func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func required(p *string) func() error {
	return func() error {
		if strings.TrimSpace(*p) == "" {
			return errRequired
		}
		return nil
	}
}

func oneOf(p *string, allowed ...string) func() error {
	return func() error {
		for _, a := range allowed {
			if *p == a {
				return nil
			}
		}
		q := make([]string, len(allowed))
		for i, a := range allowed {
			q[i] = strconv.Quote(a)
		}
		return fmt.Errorf("must be one of %s, got %q", strings.Join(q, ", "), *p)
	}
}

func between[T cmp.Ordered](p *T, lo, hi T) func() error {
	return func() error {
		if *p < lo || *p > hi {
			return fmt.Errorf("must be between %v and %v, got %v", lo, hi, *p)
		}
		return nil
	}
}

func durBetween(p *time.Duration, lo, hi time.Duration) func() error {
	return func() error {
		if *p < lo || *p > hi {
			return fmt.Errorf("must be between %s and %s, got %s", fmtDuration(lo), fmtDuration(hi), fmtDuration(*p))
		}
		return nil
	}
}

// providerName checks the provider name: it goes into header fields and
// daticert.xml (RFC 6109 §5.5), so one line of printable text.
func providerName(s string) error {
	if strings.TrimSpace(s) == "" {
		return errRequired
	}
	if len(s) > 256 {
		return fmt.Errorf("longer than 256 octets")
	}
	return noControl(s)
}

func noControl(s string) error {
	if !utf8.ValidString(s) {
		return errors.New("not valid UTF-8")
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return fmt.Errorf("control character %U not allowed", r)
		}
	}
	return nil
}

func domainList(l []string, need bool) error {
	if need && len(l) == 0 {
		return errors.New("required: at least one domain")
	}
	var errs []error
	seen := map[string]bool{}
	for i, d := range l {
		if err := domainName(d, true); err != nil {
			errs = append(errs, fmt.Errorf("item %d %q: %w", i+1, d, err))
		} else if seen[d] {
			errs = append(errs, fmt.Errorf("item %d %q: listed twice", i+1, d))
		}
		seen[d] = true
	}
	return joinInline(errs)
}

// joinInline joins several problems of one key on one line, so each
// line of a report names its key.
func joinInline(errs []error) error {
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return errs[0]
	}
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	return errors.New(strings.Join(msgs, "; "))
}

func hostname(s string) error {
	if s == "" {
		return nil
	}
	return domainName(s, false)
}

// domainName checks the syntax of a domain name (RFC 5321 §4.1.2 Domain,
// RFC 1035 §2.3.1 labels; internationalised names through their A-label
// form, RFC 5890). A mail domain needs at least two labels.
func domainName(d string, needDot bool) error {
	if d == "" {
		return errors.New("empty domain")
	}
	if strings.HasSuffix(d, ".") {
		return errors.New("trailing dot")
	}
	a, err := idna.Lookup.ToASCII(d)
	if err != nil {
		return fmt.Errorf("not a valid domain name: %w", err)
	}
	if len(a) > 253 {
		return errors.New("longer than 253 octets")
	}
	labels := strings.Split(a, ".")
	if needDot && len(labels) < 2 {
		return errors.New("not a fully qualified domain name")
	}
	for _, l := range labels {
		if l == "" || len(l) > 63 {
			return errors.New("empty label or label longer than 63 octets")
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("label %q starts or ends with a hyphen", l)
		}
		for i := 0; i < len(l); i++ {
			if b := l[i]; !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '-') {
				return fmt.Errorf("label %q: only letters, digits and hyphens", l)
			}
		}
	}
	return nil
}

// hostPort checks host:port with a numeric port. An empty host listens
// on every address; an IPv6 host is bracketed ("[::1]:2587").
func hostPort(s string, optional bool) error {
	if s == "" {
		if optional {
			return nil
		}
		return errRequired
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("must be host:port, got %q", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port must be a number between 1 and 65535, got %q", port)
	}
	if host == "" || net.ParseIP(host) != nil {
		return nil
	}
	if err := domainName(host, false); err != nil {
		return fmt.Errorf("host %q: %w", host, err)
	}
	return nil
}

func hostPortList(l []string) error {
	var errs []error
	for i, a := range l {
		if err := hostPort(a, false); err != nil {
			errs = append(errs, fmt.Errorf("item %d: %w", i+1, err))
		}
	}
	return joinInline(errs)
}

func receiptsAddress(s string) error {
	if p, ok := strings.CutPrefix(s, "unix:"); ok {
		if p == "" {
			return errors.New(`"unix:" needs a socket path`)
		}
		return nil
	}
	return hostPort(s, true)
}

// bareLFClients checks submission.bare_lf_clients: each entry an address
// (user@domain) or an IP network in CIDR notation, or an IP address. The
// same rules as gateway.ParseBareLFClients, reported here by key.
func bareLFClients(l []string) error {
	var errs []error
	for i, e := range l {
		switch {
		case strings.Contains(e, "@"):
			local, domain, _ := strings.Cut(e, "@")
			if local == "" || strings.ContainsAny(local, " \t\"<>()[],;:\\") || domainName(domain, false) != nil {
				errs = append(errs, fmt.Errorf("item %d %q: not a mailbox address", i+1, e))
			}
		case strings.Contains(e, "/"):
			if _, err := netip.ParsePrefix(e); err != nil {
				errs = append(errs, fmt.Errorf("item %d %q: not an IP network in CIDR notation", i+1, e))
			}
		default:
			if _, err := netip.ParseAddr(e); err != nil {
				errs = append(errs, fmt.Errorf("item %d %q: neither an address (user@domain) nor an IP network (CIDR)", i+1, e))
			}
		}
	}
	return joinInline(errs)
}

// witnessName checks log.name: it names a file and a Redis key.
func witnessName(s string) error {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') || s == "." || s == ".." {
			return fmt.Errorf("must be letters, digits, '-', '_' and '.', got %q", s)
		}
	}
	return nil
}
