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
	"       pecgw spool confirm|reject PEC-ID --config FILE"

// spoolStateWords says what each state means to the operator.
var spoolStateWords = map[delivery.SpoolState]string{
	delivery.SpoolPending:     "pending (transaction running, or for the reconciliation at start)",
	delivery.SpoolOut:         "owed (envelope out; pecgw serve retries every minute)",
	delivery.SpoolUnconfirmed: "unconfirmed (envelope of unknown fate: ask the next hop, then confirm or reject)",
	delivery.SpoolConfirmed:   "confirmed (pecgw serve delivers it within a minute)",
	delivery.SpoolRejected:    "rejected (pecgw serve drops it within a minute and frees the submission)",
}

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
	sp, err := delivery.OpenSpool(c.Delivery.Spool)
	if err != nil {
		return err
	}
	if sub != "list" {
		e, err := sp.Get(pos[0])
		if err != nil {
			return err
		}
		if e.State != delivery.SpoolUnconfirmed {
			return fmt.Errorf("the receipt of %s is %s, not unconfirmed: pecgw serve takes care of it", pos[0], spoolStateWords[e.State])
		}
		to := delivery.SpoolConfirmed
		if sub == "reject" {
			to = delivery.SpoolRejected
		}
		if err := sp.Mark(pos[0], to); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: %s\n", pos[0], spoolStateWords[to])
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
