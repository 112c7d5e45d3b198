// Command pecgw is the access point (punto di accesso) of a PEC provider,
// and the tools that go with it: serve runs the daemon; init, user and
// check-config set it up; verify and log read what it produced.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"slices"
	"strings"
)

const usage = `pecgw: a PEC (Posta Elettronica Certificata) access point

usage:
  pecgw serve [--config FILE] [--dev]   run the access point (--dev: create a development setup first)
  pecgw init --domain DOMAIN --provider-name NAME [--dir DIR]
                                        create a configuration, a development PKI and the folders
  pecgw check-config [--config FILE]    check the configuration and report every problem
  pecgw user add|passwd|del|list [ADDRESS] --config FILE [--password-stdin | --generate]
                                        manage the users allowed to submit
  pecgw verify FILE.eml [--ca CA.pem] [--log DIR] [--strict]
                                        check a signed PEC message and show what it certifies
  pecgw log tail|query|verify|purge|reindex --dir DIR ...
                                        read, check and maintain the transaction log (pecgw log help)
  pecgw spool list|confirm|reject [PEC-ID] --config FILE
                                        acceptance receipts waiting for delivery; confirm or reject
                                        one whose envelope's fate the next hop has told
  pecgw version                         print the version
  pecgw help                            this text
`

// errUsage marks a command-line mistake: exit status 2.
var errUsage = errors.New("usage")

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run executes one command and returns the exit status: 0 success, 1 a
// failed check or operation, 2 a usage error.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	// pecgw CMD --help: the lines of usage about CMD (pecgw log has its
	// own, longer help).
	if slices.ContainsFunc(args[1:], isHelpFlag) {
		if args[0] == "log" {
			args = []string{"log", "help"}
		} else if u := commandUsage(args[0]); u != "" {
			fmt.Fprint(stdout, u)
			return 0
		}
	}
	var err error
	switch args[0] {
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "pecgw", version())
		return 0
	case "help", "--help", "-h", "-help":
		fmt.Fprint(stdout, usage)
		return 0
	case "serve":
		err = cmdServe(args[1:], stdout, stderr)
	case "init":
		err = cmdInit(args[1:], stdout)
	case "check-config":
		err = cmdCheckConfig(args[1:], stdout)
	case "user":
		err = cmdUser(args[1:], stdin, stdout)
	case "verify":
		err = cmdVerify(args[1:], stdout, stderr)
	case "log":
		err = cmdLog(args[1:], stdout, stderr)
	case "spool":
		err = cmdSpool(args[1:], stdout)
	case "hash-worker":
		err = cmdHashWorker(args[1:], stdin, stdout)
	default:
		fmt.Fprintf(stderr, "pecgw: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "pecgw %s: %v\n", args[0], err)
		return 2
	case errors.Is(err, errSilent):
		return 1
	default:
		fmt.Fprintf(stderr, "pecgw %s: %v\n", args[0], err)
		return 1
	}
}

func isHelpFlag(a string) bool { return a == "-h" || a == "--help" || a == "-help" }

// commandUsage is the lines of usage about command cmd, "" when it has
// none: what pecgw CMD --help prints.
func commandUsage(cmd string) string {
	var b strings.Builder
	in := false
	for _, line := range strings.Split(usage, "\n") {
		switch {
		case strings.HasPrefix(line, "  pecgw "+cmd+" ") || line == "  pecgw "+cmd:
			in = true
		case strings.HasPrefix(line, "  pecgw "):
			in = false
		}
		if in && strings.TrimSpace(line) != "" {
			b.WriteString(line + "\n")
		}
	}
	if b.Len() == 0 {
		return ""
	}
	return "usage:\n" + b.String()
}

// errSilent is a failure already reported on stdout.
var errSilent = errors.New("failed")

// version is the module version stamped by the Go toolchain, or "devel".
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok || bi.Main.Version == "" || bi.Main.Version == "(devel)" {
		return "devel"
	}
	return bi.Main.Version
}

// parseInterspersed parses flags that may come before or after the
// positional arguments (pecgw verify FILE --ca CA.pem).
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func quietFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

func indent(lines []string, prefix string) string {
	return strings.Join(lines, "\n"+prefix)
}
