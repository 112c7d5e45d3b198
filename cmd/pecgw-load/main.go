// Command pecgw-load measures the submission throughput and the AUTH
// latency of a running SMTP submission server, and compares pecgw with a
// bare go-smtp server in interleaved rounds (results are ratios of
// rounds run side by side, never timings held against a constant).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

const usage = `pecgw-load: submission throughput and AUTH latency of an SMTP submission server

usage:
  pecgw-load run --addr HOST:PORT --user U --password P [run flags]
        send load; print messages/s, errors by reply code, AUTH and message latency
  pecgw-load bare --addr HOST:PORT --cert FILE --key FILE [--tls implicit|starttls]
                  [--password P] [--min-auth-time D] [--hostname NAME] [--durable DIR]
        run a bare go-smtp server (AUTH PLAIN and LOGIN, DATA read and discarded):
        the baseline of what the SMTP library alone costs; with --durable, each
        message is written into the maildir DIR (tmp/ file, fsync, link into new/,
        fsync new/) before its 250: what a bare durable MTA costs
  pecgw-load compare --pecgw HOST:PORT --bare HOST:PORT [--rounds 6] [--round 5s] [run flags]
        rounds against the two, alternated (pecgw, bare, pecgw, bare, ...); print
        each round and the ratio pecgw/bare of messages/s (median of the pairs)

  pecgw-load bench --pecgw-bin FILE [--base-bin FILE] [--key-type p256|rsa] [--rounds 3]
                   [--round 5s] [--dir DIR [--keep]] [run flags]
        start a bare sink, a bare durable MTA (pecgw-load bare --durable) and pecgw
        (pecgw init in a fresh folder), each a process of its own, drive each with
        the same load in turn and print one table: msg/s, latency, server CPU per
        message, peak RSS, and pecgw's ratio to each baseline. --base-bin runs a
        second pecgw (the code before a change) in the same rounds, with the ratio
        pecgw/base. Its load defaults to --mode reuse --size 10240 --tls starttls
        (issue 12's table)

run flags:
  --addr HOST:PORT               the server (run only)
  --tls implicit|starttls        implicit TLS (SMTPS) or STARTTLS (default implicit)
  --ca FILE | --insecure         trust only the CAs in FILE, or check no certificate
                                 (default: the system's roots)
  --server-name NAME             name expected in the certificate (default: the host of the address)
  --user U                       AUTH user, MAIL FROM and From:
  --password P | --password-file FILE
  --auth plain|login             SASL mechanism (default plain)
  --rcpt R                       RCPT TO and To: (default: the user)
  --clients N                    concurrent senders (default 16)
  --duration D | --messages N    run for D (default 10s), or make exactly N attempts
  --mode conn-per-message|reuse  conn-per-message: dial, TLS, EHLO, AUTH, MAIL/RCPT/DATA, QUIT
                                 for every message; reuse: one session per client, RSET between
                                 messages (default conn-per-message)
  --size N                       octets per message, headers included (default 2048)
  --timeout D                    bound of a session's set-up and of each message (default 60s)
  --max-errors N                 exit 1 when more attempts fail (compare: in any round) (default 0)
  --json                         print one JSON object instead of text

compare flags:
  --pecgw HOST:PORT --bare HOST:PORT   the two servers, with the same --tls
  --rounds N                     pairs of rounds (default 6)
  --round D                      length of each round (default 5s); with --messages N each
                                 round is N attempts instead

exit status: 0 done, 1 errors above --max-errors or a failure, 2 usage error,
130 interrupted (SIGINT/SIGTERM: what was measured until then is printed)
`

// errUsage marks a command-line mistake: exit status 2.
var errUsage = errors.New("usage")

func usagef(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errUsage}, args...)...)
}

// Exit statuses.
const (
	exitOK          = 0
	exitFailed      = 1
	exitUsage       = 2
	exitInterrupted = 130
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// After the first signal, a second one kills at once.
		<-ctx.Done()
		stop()
	}()
	os.Exit(runMain(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// runMain runs one command until it ends or ctx does, and returns the
// exit status.
func runMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	var code int
	var err error
	switch args[0] {
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	case "run":
		code, err = cmdRun(ctx, args[1:], stdout)
	case "bare":
		code, err = cmdBare(ctx, args[1:], stdout, stderr)
	case "compare":
		code, err = cmdCompare(ctx, args[1:], stdout)
	case "bench":
		code, err = cmdBench(ctx, args[1:], stdout, stderr)
	default:
		fmt.Fprintf(stderr, "pecgw-load: unknown command %q\n\n%s", args[0], usage)
		return exitUsage
	}
	switch {
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stdout, usage)
		return exitOK
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "pecgw-load %s: %v\n(pecgw-load help lists the flags)\n", args[0], err)
		return exitUsage
	case err != nil:
		fmt.Fprintf(stderr, "pecgw-load %s: %v\n", args[0], err)
		return exitFailed
	}
	return code
}

func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// parse parses args, which must all be flags, and returns the names of
// the flags set.
func parse(fs *flag.FlagSet, args []string) (map[string]bool, error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, usagef("%v", err)
	}
	if fs.NArg() > 0 {
		return nil, usagef("unexpected argument %q (every setting is a flag)", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set, nil
}

// runFlags are the flags of run, which compare takes too.
type runFlags struct {
	addr, tls, ca, serverName, user, password, passwordFile, auth, rcpt, mode *string
	insecure, json                                                            *bool
	clients, messages, size, maxErrors                                        *int
	duration, timeout                                                         *time.Duration
}

func addRunFlags(fs *flag.FlagSet) *runFlags {
	return &runFlags{
		addr:         fs.String("addr", "", ""),
		tls:          fs.String("tls", TLSImplicit, ""),
		ca:           fs.String("ca", "", ""),
		serverName:   fs.String("server-name", "", ""),
		user:         fs.String("user", "", ""),
		password:     fs.String("password", "", ""),
		passwordFile: fs.String("password-file", "", ""),
		auth:         fs.String("auth", AuthPlain, ""),
		rcpt:         fs.String("rcpt", "", ""),
		mode:         fs.String("mode", ModeConnPerMessage, ""),
		insecure:     fs.Bool("insecure", false, ""),
		json:         fs.Bool("json", false, ""),
		clients:      fs.Int("clients", 16, ""),
		messages:     fs.Int("messages", 0, ""),
		size:         fs.Int("size", 2048, ""),
		maxErrors:    fs.Int("max-errors", 0, ""),
		duration:     fs.Duration("duration", 10*time.Second, ""),
		timeout:      fs.Duration("timeout", 60*time.Second, ""),
	}
}

// config is the load the flags describe. set names the flags given.
func (f *runFlags) config(set map[string]bool) (Config, error) {
	c := Config{
		Addr: *f.addr, TLS: *f.tls, Auth: *f.auth, User: *f.user, Password: *f.password, Rcpt: *f.rcpt,
		Clients: *f.clients, Mode: *f.mode, Size: *f.size, Timeout: *f.timeout,
	}
	switch {
	case set["messages"] && set["duration"]:
		return c, usagef("--duration and --messages exclude each other")
	case set["messages"] && *f.messages < 1:
		return c, usagef("--messages must be at least 1, got %d", *f.messages)
	case set["messages"]:
		c.Messages = *f.messages
	case *f.duration <= 0:
		return c, usagef("--duration must be positive, got %v", *f.duration)
	default:
		c.Duration = *f.duration
	}
	switch {
	case *f.ca != "" && *f.insecure:
		return c, usagef("--ca and --insecure exclude each other")
	case set["password"] && set["password-file"]:
		return c, usagef("--password and --password-file exclude each other")
	case *f.timeout <= 0:
		return c, usagef("--timeout must be positive, got %v", *f.timeout)
	case *f.maxErrors < 0:
		return c, usagef("--max-errors must be 0 or more, got %d", *f.maxErrors)
	}
	if *f.passwordFile != "" {
		pw, err := os.ReadFile(*f.passwordFile)
		if err != nil {
			return c, fmt.Errorf("--password-file: %w", err)
		}
		c.Password = strings.TrimRight(string(pw), "\r\n")
	}
	tc := &tls.Config{ServerName: *f.serverName, InsecureSkipVerify: *f.insecure}
	if *f.ca != "" {
		pem, err := os.ReadFile(*f.ca)
		if err != nil {
			return c, fmt.Errorf("--ca: %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return c, fmt.Errorf("--ca %s: no PEM certificate in it", *f.ca)
		}
		tc.RootCAs = roots
	}
	c.TLSConfig = tc
	return c, nil
}

func cmdRun(ctx context.Context, args []string, stdout io.Writer) (int, error) {
	fs := newFlagSet("run")
	f := addRunFlags(fs)
	set, err := parse(fs, args)
	if err != nil {
		return 0, err
	}
	cfg, err := f.config(set)
	if err != nil {
		return 0, err
	}
	if err := cfg.validate(); err != nil {
		return 0, err
	}
	r, err := Run(ctx, cfg)
	if err != nil {
		return 0, err
	}
	if err := report(stdout, *f.json, r, func() { printResult(stdout, r) }); err != nil {
		return 0, err
	}
	switch {
	case r.Interrupted:
		return exitInterrupted, nil
	case r.Failed > *f.maxErrors:
		if !*f.json {
			fmt.Fprintf(stdout, "FAIL: %d errors, more than --max-errors %d\n", r.Failed, *f.maxErrors)
		}
		return exitFailed, nil
	}
	return exitOK, nil
}

func cmdCompare(ctx context.Context, args []string, stdout io.Writer) (int, error) {
	fs := newFlagSet("compare")
	f := addRunFlags(fs)
	pecgw := fs.String("pecgw", "", "")
	bare := fs.String("bare", "", "")
	rounds := fs.Int("rounds", 6, "")
	round := fs.Duration("round", 5*time.Second, "")
	set, err := parse(fs, args)
	if err != nil {
		return 0, err
	}
	switch {
	case set["addr"]:
		return 0, usagef("compare takes --pecgw and --bare, not --addr")
	case set["duration"]:
		return 0, usagef("compare takes --round (the length of each round), not --duration")
	case set["messages"] && set["round"]:
		return 0, usagef("--round and --messages exclude each other")
	}
	cfg, err := f.config(set)
	if err != nil {
		return 0, err
	}
	cfg.Duration = 0 // each round's: --round, or --messages
	cc := CompareConfig{Load: cfg, Pecgw: *pecgw, Bare: *bare, Rounds: *rounds, Round: *round, MaxErrors: *f.maxErrors}
	if err := cc.validate(); err != nil {
		return 0, err
	}
	var progress func(Round)
	if !*f.json {
		length := fmt.Sprintf("rounds of %v", *round)
		if cfg.Messages > 0 {
			length = fmt.Sprintf("rounds of %d messages", cfg.Messages)
		}
		fmt.Fprintf(stdout, "pecgw-load compare: pecgw %s vs bare %s, %s, %s, %d clients, %d-octet messages, %d pairs of %s\n",
			cc.Pecgw, cc.Bare, tlsName(cfg.TLS), cfg.Mode, cfg.Clients, cfg.Size, cc.Rounds, length)
		progress = func(rd Round) { printRound(stdout, rd) }
	}
	res, err := Compare(ctx, cc, progress)
	if err != nil {
		return 0, err
	}
	if *f.json {
		if err := writeJSON(stdout, res); err != nil {
			return 0, err
		}
	} else {
		printCompare(stdout, res)
	}
	switch {
	case res.Interrupted:
		return exitInterrupted, nil
	case len(res.Failures) > 0:
		return exitFailed, nil
	}
	return exitOK, nil
}

func cmdBare(ctx context.Context, args []string, stdout, stderr io.Writer) (int, error) {
	fs := newFlagSet("bare")
	addr := fs.String("addr", "", "")
	tlsMode := fs.String("tls", TLSImplicit, "")
	certFile := fs.String("cert", "", "")
	keyFile := fs.String("key", "", "")
	password := fs.String("password", "", "")
	passwordFile := fs.String("password-file", "", "")
	minAuth := fs.Duration("min-auth-time", 0, "")
	hostname := fs.String("hostname", "", "")
	durable := fs.String("durable", "", "")
	set, err := parse(fs, args)
	if err != nil {
		return 0, err
	}
	cfg := BareConfig{Addr: *addr, TLS: *tlsMode, Password: *password, MinAuthTime: *minAuth, Domain: *hostname, ErrorLog: stderr, Durable: *durable}
	switch {
	case *certFile == "" || *keyFile == "":
		return 0, usagef("--cert and --key are required")
	case set["password"] && set["password-file"]:
		return 0, usagef("--password and --password-file exclude each other")
	}
	// Check the flags before reading files.
	cfg.TLSConfig = &tls.Config{Certificates: []tls.Certificate{{}}}
	if err := cfg.validate(); err != nil {
		return 0, err
	}
	if *passwordFile != "" {
		pw, err := os.ReadFile(*passwordFile)
		if err != nil {
			return 0, fmt.Errorf("--password-file: %w", err)
		}
		cfg.Password = strings.TrimRight(string(pw), "\r\n")
	}
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		return 0, fmt.Errorf("--cert/--key: %w", err)
	}
	cfg.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	b, err := StartBare(cfg)
	if err != nil {
		return 0, err
	}
	auth := "any password"
	if cfg.Password != "" {
		auth = "one password"
	}
	data := "DATA read and discarded"
	if cfg.Durable != "" {
		data = "each message written durably into the maildir " + cfg.Durable
	}
	fmt.Fprintf(stdout, "pecgw-load bare: listening on %s (%s, AUTH PLAIN and LOGIN, any user, %s; %s)\n", b.Addr(), tlsName(cfg.TLS), auth, data)
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b.Shutdown(sctx)
	st := b.Stats()
	fmt.Fprintf(stdout, "pecgw-load bare: stopped: %d sessions, %d messages, AUTH %d accepted, %d refused\n",
		st.Sessions, st.Messages, st.AuthOK, st.AuthFailed)
	return exitOK, nil
}

func cmdBench(ctx context.Context, args []string, stdout, stderr io.Writer) (int, error) {
	fs := newFlagSet("bench")
	f := addRunFlags(fs)
	bin := fs.String("pecgw-bin", "", "")
	base := fs.String("base-bin", "", "")
	keyType := fs.String("key-type", "p256", "")
	dir := fs.String("dir", "", "")
	keep := fs.Bool("keep", false, "")
	rounds := fs.Int("rounds", 3, "")
	round := fs.Duration("round", 5*time.Second, "")
	set, err := parse(fs, args)
	if err != nil {
		return 0, err
	}
	for _, name := range []string{"addr", "user", "password", "password-file", "ca", "insecure", "server-name", "rcpt", "duration"} {
		if set[name] {
			return 0, usagef("bench starts its own servers and user: --%s is not for it (--round sets the length of a round)", name)
		}
	}
	switch {
	case set["messages"] && set["round"]:
		return 0, usagef("--round and --messages exclude each other")
	}
	// The load of issue 12's table, unless the flags say otherwise.
	if !set["mode"] {
		*f.mode = ModeReuse
	}
	if !set["size"] {
		*f.size = 10 << 10
	}
	if !set["tls"] {
		*f.tls = TLSStartTLS
	}
	*f.user, *f.password = "bench@pec.bench.test", "x" // set by Bench; for the checks
	cfg, err := f.config(set)
	if err != nil {
		return 0, err
	}
	cfg.Duration = 0
	if !set["messages"] {
		cfg.Duration = *round // for validate; Bench sets each round's
	}
	cfg.Addr = "127.0.0.1:1"
	if err := cfg.validate(); err != nil {
		return 0, err
	}
	self, err := os.Executable()
	if err != nil {
		return 0, err
	}
	bc := BenchConfig{Load: cfg, PecgwBin: *bin, BaseBin: *base, KeyType: *keyType, Dir: *dir, Keep: *keep, Rounds: *rounds, Round: *round, Self: self, Log: stderr}
	r, err := Bench(ctx, bc)
	if err != nil {
		return 0, err
	}
	if err := report(stdout, *f.json, r, func() { printBench(stdout, r) }); err != nil {
		return 0, err
	}
	if r.Interrupted {
		return exitInterrupted, nil
	}
	for _, row := range r.Rows {
		if row.Failed > *f.maxErrors {
			if !*f.json {
				fmt.Fprintf(stdout, "FAIL: %s had %d errors, more than --max-errors %d\n", row.Server, row.Failed, *f.maxErrors)
			}
			return exitFailed, nil
		}
	}
	return exitOK, nil
}

// report prints v as JSON, or as text.
func report(w io.Writer, asJSON bool, v any, text func()) error {
	if asJSON {
		return writeJSON(w, v)
	}
	text()
	return nil
}

func writeJSON(w io.Writer, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(data, '\n'))
	return err
}
