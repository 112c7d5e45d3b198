package main

import (
	"bufio"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/pecgw/pecgw/config"
	"github.com/pecgw/pecgw/gateway"
)

const userUsage = "pecgw user add|passwd ADDRESS --config FILE (--password-stdin | --generate)\n" +
	"       pecgw user del ADDRESS --config FILE\n" +
	"       pecgw user suspend ADDRESS --config FILE [--reason TEXT]\n" +
	"       pecgw user resume ADDRESS --config FILE\n" +
	"       pecgw user list --config FILE"

// cmdUser edits and lists the users file named by the configuration.
func cmdUser(args []string, stdin io.Reader, stdout io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: no subcommand\n%s", errUsage, userUsage)
	}
	sub := args[0]
	fs := quietFlagSet("user " + sub)
	path := fs.String("config", defaultConfig, "")
	fromStdin := fs.Bool("password-stdin", false, "")
	generate := fs.Bool("generate", false, "")
	reason := fs.String("reason", "", "")
	pos, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return err
	}
	needAddr, needPassword := true, false
	switch sub {
	case "add", "passwd":
		needPassword = true
	case "del", "suspend", "resume":
	case "list":
		needAddr = false
	default:
		return fmt.Errorf("%w: unknown subcommand %q\n%s", errUsage, sub, userUsage)
	}
	switch {
	case needAddr && len(pos) != 1:
		return fmt.Errorf("%w: user %s takes one ADDRESS\n%s", errUsage, sub, userUsage)
	case !needAddr && len(pos) != 0:
		return fmt.Errorf("%w: user %s takes no argument\n%s", errUsage, sub, userUsage)
	case needPassword && *fromStdin == *generate:
		return fmt.Errorf("%w: user %s needs one of --password-stdin and --generate\n%s", errUsage, sub, userUsage)
	case !needPassword && (*fromStdin || *generate):
		return fmt.Errorf("%w: user %s takes no password\n%s", errUsage, sub, userUsage)
	case sub != "suspend" && *reason != "":
		return fmt.Errorf("%w: only user suspend takes --reason\n%s", errUsage, userUsage)
	}

	c, err := config.Load(*path)
	if err != nil {
		return fmt.Errorf("%w (run pecgw check-config)", err)
	}
	file := c.Users.File

	switch sub {
	case "list":
		return listUsers(c, stdout)
	case "suspend":
		// The account stays: its owner logs in and its log stays
		// queryable (RFC 6109 §2.3); only sending is refused.
		if err := gateway.SuspendAccount(c.Users.Suspended, pos[0], *reason, time.Now()); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "suspended %s\n", pos[0])
		return nil
	case "resume":
		if err := gateway.ResumeAccount(c.Users.Suspended, pos[0]); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "resumed %s\n", pos[0])
		return nil
	}
	if c.Users.Backend != "file" {
		return fmt.Errorf("users.backend = %q: the users and their passwords are managed there, not with pecgw user %s", c.Users.Backend, sub)
	}
	addr := pos[0]
	if sub == "del" {
		// Only the users file changes: the transaction log keeps every
		// record of the account for its 30 months (RFC 6109 §2.3).
		if err := gateway.DeleteUser(file, addr); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "deleted %s\n", addr)
		return nil
	}

	var password string
	if *generate {
		if password, err = generatePassword(); err != nil {
			return err
		}
	} else if password, err = readPassword(stdin); err != nil {
		return err
	}
	if sub == "add" {
		// RFC 6109 §3.1.1: a PEC user is a mailbox of the provider, so
		// its domain is one of the provider's domains.
		if err := gateway.CheckAddress(addr); err != nil {
			return err
		}
		if !ownDomain(c, addr) {
			return fmt.Errorf("%s is not in a provider domain (provider.domains: %s)", addr, strings.Join(c.Provider.Domains, ", "))
		}
		err = gateway.AddUser(file, addr, password)
	} else {
		err = gateway.SetPassword(file, addr, password)
	}
	if err != nil {
		return err
	}
	verb := map[string]string{"add": "added", "passwd": "changed the password of"}[sub]
	fmt.Fprintf(stdout, "%s %s\n", verb, addr)
	if *generate {
		fmt.Fprintf(stdout, "password: %s\n", password)
	}
	return nil
}

// listUsers prints the users of the users file, and the suspended
// accounts with their date and reason.
func listUsers(c *config.Config, stdout io.Writer) error {
	acc, err := gateway.LoadAccounts(c.Users.Suspended)
	if err != nil {
		return err
	}
	suspended := map[string]gateway.Suspension{}
	for _, s := range acc.List() {
		suspended[strings.ToLower(s.Address)] = s
	}
	note := func(addr string) string {
		s, ok := suspended[strings.ToLower(addr)]
		if !ok {
			return ""
		}
		delete(suspended, strings.ToLower(addr))
		return fmt.Sprintf("\tsuspended since %s: %s", s.Since.Format("2006-01-02"), s.Reason)
	}
	if c.Users.Backend == "file" {
		u, err := gateway.LoadUsers(c.Users.File)
		if err != nil {
			return err
		}
		for _, a := range u.Addresses() {
			fmt.Fprintf(stdout, "%s%s\n", a, note(a))
		}
	}
	// Suspended accounts not in the users file (Dovecot's users, or
	// deleted since).
	for _, s := range acc.List() {
		if _, left := suspended[strings.ToLower(s.Address)]; left {
			fmt.Fprintf(stdout, "%s%s\n", s.Address, note(s.Address))
		}
	}
	return nil
}

func ownDomain(c *config.Config, addr string) bool {
	_, domain, _ := strings.Cut(addr, "@")
	for _, d := range c.Provider.Domains {
		if strings.EqualFold(d, domain) {
			return true
		}
	}
	return false
}

// maxPasswordLen bounds the line read with --password-stdin.
const maxPasswordLen = 1024

// readPassword reads one line from r, without its line end.
func readPassword(r io.Reader) (string, error) {
	br := bufio.NewReaderSize(io.LimitReader(r, maxPasswordLen+2), maxPasswordLen+2)
	line, err := br.ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read password: %w", err)
	}
	line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
	if len(line) > maxPasswordLen {
		return "", fmt.Errorf("read password: longer than %d octets", maxPasswordLen)
	}
	if line == "" {
		return "", errors.New("read password: no password on standard input")
	}
	return line, nil
}

// passwordAlphabet leaves out characters that are easy to misread
// (0 O o, 1 l I) when a password is read aloud or copied by hand.
const passwordAlphabet = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"

// generatePassword returns 20 characters drawn uniformly from
// passwordAlphabet (about 116 bits).
func generatePassword() (string, error) {
	const n = 20
	out := make([]byte, 0, n)
	buf := make([]byte, 64)
	// Rejection sampling: bytes at or above the largest multiple of the
	// alphabet size would bias the result.
	limit := byte(256 - 256%len(passwordAlphabet))
	for len(out) < n {
		if _, err := rand.Read(buf); err != nil {
			return "", fmt.Errorf("generate password: %w", err)
		}
		for _, b := range buf {
			if b < limit && len(out) < n {
				out = append(out, passwordAlphabet[int(b)%len(passwordAlphabet)])
			}
		}
	}
	return string(out), nil
}
