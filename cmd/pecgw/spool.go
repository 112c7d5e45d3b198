package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/pecgw/pecgw/config"
	"github.com/pecgw/pecgw/delivery"
	"github.com/pecgw/pecgw/gateway"
	"github.com/pecgw/pecgw/logstore"
)

const spoolUsage = "pecgw spool list --config FILE\n" +
	"       pecgw spool confirm|reject PEC-ID --config FILE"

// cmdSpool shows the acceptance receipts waiting in delivery.spool, and
// records the operator's decision on an unconfirmed one (a transport
// envelope whose next hop did not answer the end of DATA), once the next
// hop has said whether it received the envelope: confirm (the running
// pecgw serve delivers the receipt, and the client's retry gets the PEC
// identifier) or reject (pecgw serve drops the receipt and frees the
// submission, which the client's retry then certifies anew). Only the
// daemon writes the log: it records either within a minute.
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
	case sub == "list" && len(pos) == 0, (sub == "confirm" || sub == "reject") && len(pos) == 1:
	case sub == "list", sub == "confirm", sub == "reject":
		return fmt.Errorf("%w: wrong arguments\n%s", errUsage, spoolUsage)
	default:
		return fmt.Errorf("%w: unknown subcommand %q\n%s", errUsage, sub, spoolUsage)
	}
	c, err := config.Load(*path)
	if err != nil {
		return fmt.Errorf("%w (run pecgw check-config)", err)
	}
	sp, err := delivery.ReadSpool(c.Delivery.Spool)
	if err != nil {
		return err
	}
	if sub != "list" {
		// The decision goes through the transaction table
		// (gateway.Decide); the daemon applies it and writes the log.
		to, err := gateway.Decide(sp, pos[0], sub == "confirm")
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: %s\n", pos[0], gateway.SpoolMarkMeaning(to))
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
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%q\n", id, gateway.SpoolMarkMeaning(states[id]), rec.Time, rec.Sender, rec.Subject)
	}
	return tw.Flush()
}
