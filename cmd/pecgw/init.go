package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"

	"github.com/pecgw/pecgw/config"
	"github.com/pecgw/pecgw/internal/safeio"
	"github.com/pecgw/pecgw/signer"
)

// cmdInit creates a working folder for one machine: the configuration
// with every key written out, a development PKI, an empty users file,
// the maildir and log folders. It never overwrites anything. It prints
// what it made and the next steps of a production set-up.
func cmdInit(args []string, stdout io.Writer) error {
	cfgPath, domain, err := initDir(args)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, `created %s
  pki/            development PKI: ca.pem verifies what pecgw signs and its TLS certificate
                  (production needs a signing certificate issued under AgID rules)
  users           empty users file (mode 0600)
  log/            transaction log
  witness/        the log's witness: move it to another volume in production (log.witness_dir)
  outbound/, mailboxes/  maildir delivery
next:
  pecgw check-config --config %s
  pecgw user add ADDRESS@%s --config %s --generate
`, cfgPath, cfgPath, domain, cfgPath)
	return nil
}

// initDir is pecgw init without its report: it returns the absolute path
// of the configuration it wrote and the provider's domain.
func initDir(args []string) (cfgPath, domain string, err error) {
	flags := quietFlagSet("init")
	dir := flags.String("dir", "pecgw-data", "")
	domainFlag := flags.String("domain", "", "")
	name := flags.String("provider-name", "", "")
	submission := flags.String("submission-addr", "127.0.0.1:2587", "")
	smtps := flags.String("smtps-addr", "127.0.0.1:2465", "")
	// RSA-2048 is what most providers' certificates have today; P-256
	// signs an order of magnitude faster (RFC 6109 §5.5 names neither).
	keyType := flags.String("key-type", "rsa", "")
	pos, err := parseInterspersed(flags, args)
	if err != nil {
		return "", "", err
	}
	const use = "pecgw init --domain DOMAIN --provider-name NAME [--dir DIR] [--submission-addr ADDR] [--smtps-addr ADDR] [--key-type rsa|p256]"
	switch {
	case *keyType != "rsa" && *keyType != "p256":
		return "", "", fmt.Errorf("%w: --key-type %q: want rsa or p256\n%s", errUsage, *keyType, use)
	case len(pos) > 0:
		return "", "", fmt.Errorf("%w: unexpected argument %q\n%s", errUsage, pos[0], use)
	case *domainFlag == "" || *name == "":
		return "", "", fmt.Errorf("%w: --domain and --provider-name are required\n%s", errUsage, use)
	}

	c := config.Default()
	c.Provider.Name = *name
	c.Provider.Domains = []string{*domainFlag}
	c.Listen.Submission = *submission
	c.Listen.SMTPS = *smtps
	text := config.Marshal(c)
	cfgPath, err = filepath.Abs(filepath.Join(*dir, "pecgw.toml"))
	if err != nil {
		return "", "", err
	}
	// Check what is about to be written before creating anything.
	if _, err := config.Parse(cfgPath, text); err != nil {
		return "", "", err
	}
	if _, err := os.Lstat(cfgPath); err == nil {
		return "", "", fmt.Errorf("%s already exists: init does not overwrite a configuration", cfgPath)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", "", err
	}

	root := filepath.Dir(cfgPath)
	if err := os.MkdirAll(root, 0o700); err != nil {
		return "", "", err
	}
	pki, err := signer.GenerateDevPKI(signer.DevPKIOptions{Domain: c.Provider.Domains[0], ProviderName: *name, Hosts: tlsHosts(c), KeyType: *keyType})
	if err != nil {
		return "", "", err
	}
	if err := pki.WriteDir(filepath.Join(root, "pki")); err != nil {
		return "", "", fmt.Errorf("development PKI: %w", err)
	}
	for _, d := range []string{"log", "witness", "outbound", "mailboxes"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return "", "", err
		}
	}
	users := filepath.Join(root, c.Users.File)
	if err := safeio.WriteNew(users+".init-tmp", users, nil, 0o600); err != nil {
		return "", "", fmt.Errorf("users file: %w", err)
	}
	// The configuration last: its presence says init finished.
	if err := safeio.WriteNew(cfgPath+".init-tmp", cfgPath, text, 0o640); err != nil {
		return "", "", fmt.Errorf("configuration: %w", err)
	}
	return cfgPath, c.Provider.Domains[0], nil
}

// tlsHosts are the names the development TLS certificate covers: the
// greeting name, the loopback names, and the listeners' IP addresses.
func tlsHosts(c *config.Config) []string {
	hosts := []string{c.Provider.Domains[0], "localhost", "127.0.0.1", "::1"}
	for _, a := range []string{c.Listen.Submission, c.Listen.SMTPS} {
		if h, _, err := net.SplitHostPort(a); err == nil && h != "" && !slices.Contains(hosts, h) {
			hosts = append(hosts, h)
		}
	}
	return hosts
}
