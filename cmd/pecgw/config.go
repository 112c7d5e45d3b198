package main

import (
	"fmt"
	"io"
	"os"

	"github.com/pecgw/pecgw/config"
	"github.com/pecgw/pecgw/gateway"
)

// cmdCheckConfig checks the configuration (config.Load), the files it
// names (CheckFiles) and the users file, and prints every problem, one
// per line, each starting with its key.
func cmdCheckConfig(args []string, stdout io.Writer) error {
	fs := quietFlagSet("check-config")
	path := fs.String("config", defaultConfig, "")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("%w: unexpected argument %q (pecgw check-config [--config FILE])", errUsage, pos[0])
	}
	var problems []error
	c, err := config.Load(*path)
	if err == nil {
		err = c.CheckFiles()
		if err == nil {
			if _, statErr := os.Stat(c.Users.File); statErr == nil && c.Users.Backend == "file" {
				if _, uerr := gateway.LoadUsers(c.Users.File); uerr != nil {
					for _, e := range flatten(uerr) {
						problems = append(problems, fmt.Errorf("users.file: %w", e))
					}
				}
			}
			if _, aerr := gateway.LoadAccounts(c.Users.Suspended); aerr != nil {
				for _, e := range flatten(aerr) {
					problems = append(problems, fmt.Errorf("users.suspended: %w", e))
				}
			}
		}
	}
	problems = append(flatten(err), problems...)
	if c != nil {
		for _, w := range c.Warnings() {
			fmt.Fprintln(stdout, "warning: "+w)
		}
	}
	if len(problems) == 0 {
		fmt.Fprintln(stdout, "configuration OK")
		return nil
	}
	for _, p := range problems {
		fmt.Fprintln(stdout, p)
	}
	fmt.Fprintf(stdout, "%d problem(s) in %s\n", len(problems), *path)
	return errSilent
}

// flatten lists the errors joined in err (errors.Join), one per problem.
func flatten(err error) []error {
	if err == nil {
		return nil
	}
	// Only a join itself is split: a wrapped join stays one problem.
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}
