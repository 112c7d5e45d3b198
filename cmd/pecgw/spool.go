package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/pecgw/pecgw/config"
	"github.com/pecgw/pecgw/delivery"
	"github.com/pecgw/pecgw/logstore"
)

const spoolUsage = "pecgw spool list --config FILE\n" +
	"       pecgw spool confirm PEC-ID --config FILE"

// spoolStateWords says what each state means to the operator.
var spoolStateWords = map[delivery.SpoolState]string{
	delivery.SpoolPending:     "pending (transaction running, or for the reconciliation at start)",
	delivery.SpoolOut:         "owed (envelope out; pecgw serve retries every minute)",
	delivery.SpoolUnconfirmed: "unconfirmed (envelope of unknown fate: check with the next hop, then confirm)",
}

// cmdSpool shows the acceptance receipts waiting in delivery.spool, and
// releases an unconfirmed one once the operator has checked with the next
// hop that its transport envelope arrived: confirm marks it out, and the
// running pecgw serve delivers it within a minute and logs the hand-off
// (only the daemon writes the log).
func cmdSpool(args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: no subcommand\n%s", errUsage, spoolUsage)
	}
	sub := args[0]
	fs := quietFlagSet("spool " + sub)
	path := fs.String("config", defaultConfig, "")
	pos, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return err
	}
	switch {
	case sub == "list" && len(pos) == 0, sub == "confirm" && len(pos) == 1:
	case sub == "list", sub == "confirm":
		return fmt.Errorf("%w: wrong arguments\n%s", errUsage, spoolUsage)
	default:
		return fmt.Errorf("%w: unknown subcommand %q\n%s", errUsage, sub, spoolUsage)
	}
	c, err := config.Load(*path)
	if err != nil {
		return fmt.Errorf("%w (run pecgw check-config)", err)
	}
	sp, err := delivery.OpenSpool(c.Delivery.Spool)
	if err != nil {
		return err
	}
	if sub == "confirm" {
		e, err := sp.Get(pos[0])
		if err != nil {
			return err
		}
		if e.State != delivery.SpoolUnconfirmed {
			return fmt.Errorf("the receipt of %s is %s, not unconfirmed: pecgw serve takes care of it", pos[0], e.State)
		}
		if err := sp.Mark(pos[0], delivery.SpoolOut); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "the receipt of %s will be delivered by pecgw serve within a minute\n", pos[0])
		return nil
	}
	states, ids, err := sp.List()
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEC ID\tSTATE\tTIME\tSENDER\tSUBJECT")
	for _, id := range ids {
		var rec logstore.Record
		if e, err := sp.Get(id); err == nil {
			_ = json.Unmarshal(e.Record, &rec)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%q\n", id, spoolStateWords[states[id]], rec.Time, rec.Sender, rec.Subject)
	}
	return tw.Flush()
}
