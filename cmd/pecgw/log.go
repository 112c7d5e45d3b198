package main

import (
	"bufio"
	"context"
	"encoding/csv"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"

	"go.uber.org/zap"

	"github.com/pecgw/pecgw/config"
	"github.com/pecgw/pecgw/dedup"
	"github.com/pecgw/pecgw/logstore"
	"github.com/pecgw/pecgw/pec"
	"github.com/pecgw/pecgw/signer"
)

const logUsage = `usage:
  pecgw log tail [-n N] [-f] [--json]
  pecgw log query [--id PECID] [--msgid MSGID] [--mailbox ADDR] [--since TIME] [--until TIME]
                  [--format text|json|csv]
  pecgw log verify [--ca CA.pem] [--witness FILE.head]
  pecgw log accept-loss --reason TEXT
  pecgw log purge [--key KEY.pem --cert CERT.pem] [--retention-months N] [--provider NAME]
  pecgw log reindex
TIME is RFC 3339 (2026-11-23T10:00:00+01:00) or a day, yyyy-mm-dd, in Italian time;
--since includes its instant or day, --until a day includes that whole day.
Every subcommand finds the log through the daemon's configuration, --config FILE
(default ` + defaultConfig + `), or takes the log folder with --dir DIR; purge takes the
signing key, the provider and the retention from the configuration unless given.
verify compares the log with the witnesses of the configuration (log.witness_dir, Redis) or
with a witness file given; accept-loss records, signed, that records a witness saw are lost
for good, so that pecgw serve starts again on that log.`

// defaultConfig is the daemon's configuration file.
const defaultConfig = "./pecgw-data/pecgw.toml"

// cmdLog reads and maintains the transaction log (RFC 6109 §2.3): what
// operators tail, and what a mailbox holder is given on request.
func cmdLog(args []string, stdout, _ io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: want a subcommand\n%s", errUsage, logUsage)
	}
	sub, rest := args[0], args[1:]
	switch sub {
	case "tail":
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return logTail(ctx, rest, stdout)
	case "query":
		return logQuery(rest, stdout)
	case "verify":
		return logVerify(rest, stdout)
	case "accept-loss":
		return logAcceptLoss(rest, stdout)
	case "purge":
		return logPurge(rest, stdout)
	case "reindex":
		return logReindex(rest, stdout)
	case "help", "-h", "--help", "-help":
		fmt.Fprintln(stdout, logUsage)
		return nil
	}
	return fmt.Errorf("%w: unknown subcommand %q\n%s", errUsage, sub, logUsage)
}

// logFlags are the flags every log subcommand takes.
type logFlags struct {
	fs     *flag.FlagSet
	dir    *string
	config *string
	cfg    *config.Config // loaded when the folder came from the configuration
}

func newLogFlags(name string) *logFlags {
	fs := quietFlagSet("log " + name)
	return &logFlags{
		fs:     fs,
		dir:    fs.String("dir", "", "the log folder"),
		config: fs.String("config", defaultConfig, "the daemon's configuration file"),
	}
}

// parse parses args and returns the log folder.
func (lf *logFlags) parse(args []string) (string, error) {
	pos, err := parseInterspersed(lf.fs, args)
	if err != nil {
		return "", err
	}
	if len(pos) > 0 {
		return "", fmt.Errorf("%w: unexpected argument %q", errUsage, pos[0])
	}
	if *lf.dir != "" {
		return *lf.dir, nil
	}
	// The same configuration file the daemon uses names the log folder.
	cfg, err := config.Load(*lf.config)
	if err != nil {
		return "", fmt.Errorf("%w (or give the log folder with --dir)", err)
	}
	lf.cfg = cfg
	return cfg.Log.Dir, nil
}

func logTail(ctx context.Context, args []string, stdout io.Writer) error {
	lf := newLogFlags("tail")
	n := lf.fs.Int("n", 10, "number of records")
	follow := lf.fs.Bool("f", false, "wait for new records")
	asJSON := lf.fs.Bool("json", false, "the record lines as stored")
	dir, err := lf.parse(args)
	if err != nil {
		return err
	}
	if *n < 0 {
		return fmt.Errorf("%w: -n %d: not a number of records", errUsage, *n)
	}
	w := bufio.NewWriter(stdout)
	err = logstore.Tail(ctx, dir, *n, *follow, func(h logstore.Hit) error {
		if *asJSON {
			w.Write(h.Line)
		} else {
			w.WriteString(textLine(h.Record))
		}
		if *follow {
			return w.Flush()
		}
		return nil
	})
	if ferr := w.Flush(); err == nil {
		err = ferr
	}
	return err
}

func logQuery(args []string, stdout io.Writer) error {
	lf := newLogFlags("query")
	var f logstore.Filter
	lf.fs.StringVar(&f.PECID, "id", "", "PEC identifier (of the transaction, or of a receipt or notice it generated)")
	lf.fs.StringVar(&f.MsgID, "msgid", "", "the client's Message-ID")
	lf.fs.StringVar(&f.Mailbox, "mailbox", "", "sender or recipient address")
	since := lf.fs.String("since", "", "from this time or day (included)")
	until := lf.fs.String("until", "", "up to this time (excluded) or day (included)")
	format := lf.fs.String("format", "text", "text, json or csv")
	dir, err := lf.parse(args)
	if err != nil {
		return err
	}
	if *since != "" {
		if f.From, _, err = parseTime(*since); err != nil {
			return fmt.Errorf("%w: --since: %v", errUsage, err)
		}
	}
	if *until != "" {
		t, day, err := parseTime(*until)
		if err != nil {
			return fmt.Errorf("%w: --until: %v", errUsage, err)
		}
		if day {
			t = t.AddDate(0, 0, 1)
		}
		f.To = t
	}
	if f.PECID == "" && f.MsgID == "" && f.Mailbox == "" && f.From.IsZero() && f.To.IsZero() {
		return fmt.Errorf("%w: give at least one of --id, --msgid, --mailbox, --since, --until", errUsage)
	}
	if !f.From.IsZero() && !f.To.IsZero() && !f.From.Before(f.To) {
		return fmt.Errorf("%w: --since %s is not before --until %s", errUsage, *since, *until)
	}
	w := bufio.NewWriter(stdout)
	var emit func(logstore.Hit) error
	var cw *csv.Writer
	switch *format {
	case "text":
		emit = func(h logstore.Hit) error { _, err := w.WriteString(textLine(h.Record)); return err }
	case "json":
		emit = func(h logstore.Hit) error { _, err := w.Write(h.Line); return err }
	case "csv":
		cw = csv.NewWriter(w)
		if err := cw.Write(csvHeader); err != nil {
			return err
		}
		emit = func(h logstore.Hit) error { return cw.Write(csvRow(h.Record)) }
	default:
		return fmt.Errorf("%w: --format %q: want text, json or csv", errUsage, *format)
	}
	err = logstore.Query(dir, f, emit)
	if cw != nil {
		cw.Flush()
		if err == nil {
			err = cw.Error()
		}
	}
	if ferr := w.Flush(); err == nil {
		err = ferr
	}
	return err
}

// parseTime parses TIME: RFC 3339, or yyyy-mm-dd as the start of that day
// in Italian time (day true).
func parseTime(s string) (t time.Time, day bool, err error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, false, nil
	}
	if t, err := time.ParseInLocation("2006-01-02", s, pec.Rome()); err == nil {
		return t, true, nil
	}
	return time.Time{}, false, fmt.Errorf("%q is neither RFC 3339 (2026-11-23T10:00:00+01:00) nor a day (2026-11-23)", s)
}

func logVerify(args []string, stdout io.Writer) error {
	lf := newLogFlags("verify")
	caFile := lf.fs.String("ca", "", "PEM file of trusted root certificates for the checkpoint signatures")
	witnessFile := lf.fs.String("witness", "", "a witness file (<log name>.head) to compare the log with, besides the configured ones")
	dir, err := lf.parse(args)
	if err != nil {
		return err
	}
	roots, err := loadRoots(*caFile)
	if err != nil {
		return err
	}
	witnesses, closeW, err := lf.witnesses(*witnessFile)
	if err != nil {
		return err
	}
	defer closeW()
	rep, err := logstore.Verify(dir, roots)
	// A running daemon signs its last batch within log.checkpoint_interval
	// and one signature: a tail seen unsigned while it holds the log is
	// read again before it is called damage.
	for try := 0; err == nil && rep.Unsigned != nil && try < 3 && logstore.InUse(dir); try++ {
		time.Sleep(time.Second)
		rep, err = logstore.Verify(dir, roots)
	}
	if err != nil {
		return err
	}
	w := &report{w: stdout}
	w.line("log folder", dir)
	w.line("segments", strconv.Itoa(rep.Segments))
	w.line("records", strconv.FormatUint(rep.Records, 10))
	if rep.Records > 0 {
		w.line("first", fmt.Sprintf("seq %d at %s", rep.FirstSeq, rep.FirstTime))
		w.line("last", fmt.Sprintf("seq %d at %s", rep.LastSeq, rep.LastTime))
	}
	w.line("checkpoints", fmt.Sprintf("%d signatures verified (%d seals, %d purges)", rep.Checkpoints, rep.Seals, rep.Purges))
	if rep.PurgedUpto > 0 {
		w.line("purged", fmt.Sprintf("records 1-%d, removed at the end of their retention (signed purge record)", rep.PurgedUpto))
	}
	if rep.TornTails > 0 {
		w.line("torn tails", fmt.Sprintf("%d (incomplete records cut off after a crash, each stated in the log)", rep.TornTails))
	}
	switch {
	case roots == nil:
		w.line("chain", "not checked (give --ca CA.pem to check it)")
	case rep.ChainVerified:
		w.line("chain", "valid (trusted by "+*caFile+")")
	default:
		w.line("chain", "not verified")
	}
	ok := rep.Problem == nil
	if p := rep.Problem; p != nil {
		w.line("damage", fmt.Sprintf("segment %s offset %d seq %d: %s", p.Segment, p.Offset, p.Seq, p.Problem))
	}
	if len(witnesses) == 0 {
		w.line("witness", "none configured: records cut from the end of the log up to a checkpoint cannot be seen (log.witness_dir)")
	}
	for _, c := range logstore.VerifyWitnesses(dir, rep, witnesses) {
		switch {
		case c.Behind != nil:
			ok = false
			w.line("witness", fmt.Sprintf("%s: MISSING: %v", c.Witness, c.Behind))
		case errors.Is(c.Err, logstore.ErrNoWitness):
			w.line("witness", c.Witness+": holds no head yet")
		case c.Err != nil:
			ok = false
			w.line("witness", fmt.Sprintf("%s: not checked: %v", c.Witness, c.Err))
		default:
			w.line("witness", fmt.Sprintf("%s: seq %d (%s): the log holds it", c.Witness, c.Head.Seq, c.Head.Hash))
		}
	}
	if !ok {
		w.line("result", "NOT VERIFIED")
		return errSilent
	}
	w.line("result", "log verified")
	return nil
}

// witnesses returns the witnesses of the configuration (when the log
// came from it) and the witness file given, and what closes them.
func (lf *logFlags) witnesses(file string) ([]logstore.Witness, func(), error) {
	var ws []logstore.Witness
	closeW := func() {}
	if c := lf.cfg; c != nil {
		ws = append(ws, c.FolderWitnesses()...)
		if c.Dedup.Store == "redis" && c.Log.WitnessRedis == "on" {
			store, err := dedupStore(c, zap.NewNop())
			if err != nil {
				return nil, nil, err
			}
			ws = append(ws, store.(*dedup.Redis).Witness(c.LogName()))
			closeW = func() { store.Close() }
		}
	}
	if file != "" {
		name, ok := strings.CutSuffix(filepath.Base(file), ".head")
		if !ok {
			return nil, nil, fmt.Errorf("%w: --witness %s: a witness file is named <log name>.head", errUsage, file)
		}
		if _, err := os.Stat(file); err != nil {
			return nil, nil, fmt.Errorf("--witness: %w", err)
		}
		ws = append(ws, &logstore.FolderWitness{Dir: filepath.Dir(file), Name: name})
	}
	return ws, closeW, nil
}

// logAcceptLoss records in the log, signed, that the records its
// witnesses saw beyond its end are lost for good, and sets the
// witnesses to that record, so that pecgw serve starts again.
func logAcceptLoss(args []string, stdout io.Writer) error {
	lf := newLogFlags("accept-loss")
	reason := lf.fs.String("reason", "", "why the records cannot be restored: who found what, when (written in the log)")
	if _, err := lf.parse(args); err != nil {
		return err
	}
	c := lf.cfg
	if c == nil {
		return fmt.Errorf("%w: accept-loss reads the configuration (--config), not --dir: it signs with the provider's key and resets the configured witnesses", errUsage)
	}
	if strings.TrimSpace(*reason) == "" {
		return fmt.Errorf("%w: --reason is required: it is written in the log", errUsage)
	}
	sig, err := signer.LoadFiles(c.Signing.Key, c.Signing.Cert)
	if err != nil {
		return err
	}
	ws, closeW, err := lf.witnesses("")
	if err != nil {
		return err
	}
	defer closeW()
	lo := c.LogOptions(sig)
	lo.Witnesses = ws
	behind, err := logstore.AcceptLoss(lo, *reason)
	for _, be := range behind {
		fmt.Fprintf(stdout, "lost: %v\n", be)
	}
	if err != nil {
		return err
	}
	if len(behind) == 0 {
		fmt.Fprintln(stdout, "the log is behind no witness: nothing recorded")
		return nil
	}
	fmt.Fprintln(stdout, "the loss is recorded in the log (a signed checkpoint) and the witnesses set to it: pecgw serve starts again")
	return nil
}

func logPurge(args []string, stdout io.Writer) error {
	lf := newLogFlags("purge")
	key := lf.fs.String("key", "", "the provider's signing key (PEM), to sign the purge record")
	cert := lf.fs.String("cert", "", "its certificate (PEM)")
	months := lf.fs.Int("retention-months", logstore.MinRetentionMonths, "months the records are kept (at least 30)")
	provider := lf.fs.String("provider", "", "provider name written in the purge record")
	dir, err := lf.parse(args)
	if err != nil {
		return err
	}
	if c := lf.cfg; c != nil {
		set := map[string]bool{}
		lf.fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if !set["key"] && !set["cert"] {
			*key, *cert = c.Signing.Key, c.Signing.Cert
		}
		if !set["provider"] {
			*provider = c.Provider.Name
		}
		if !set["retention-months"] {
			*months = c.Log.RetentionMonths
		}
	}
	if *key == "" || *cert == "" {
		return fmt.Errorf("%w: --key and --cert are required (the purge record is signed)", errUsage)
	}
	if *months < logstore.MinRetentionMonths {
		return fmt.Errorf("%w: --retention-months %d: the law keeps the log %d months (RFC 6109 §2.3)", errUsage, *months, logstore.MinRetentionMonths)
	}
	s, err := signer.LoadFiles(*key, *cert)
	if err != nil {
		return err
	}
	removed, err := logstore.Purge(logstore.Options{Dir: dir, Signer: s, Provider: *provider, RetentionMonths: *months})
	for _, name := range removed {
		fmt.Fprintln(stdout, "removed", name)
	}
	if err == nil && len(removed) == 0 {
		fmt.Fprintf(stdout, "nothing to remove: no sealed segment is older than %d months\n", *months)
	}
	return err
}

func logReindex(args []string, stdout io.Writer) error {
	lf := newLogFlags("reindex")
	dir, err := lf.parse(args)
	if err != nil {
		return err
	}
	written, err := logstore.Reindex(dir)
	for _, name := range written {
		fmt.Fprintln(stdout, "indexed", name)
	}
	if err == nil && len(written) == 0 {
		fmt.Fprintln(stdout, "every sealed segment has its index")
	}
	return err
}

// textLine renders a record for people, on one line: time, seq, type,
// identifier, sender → recipients (tipo), then the other fields by name.
// Text from the message (subject, detail) is quoted, and any field with a
// control character is too, so a record is always one line on screen.
func textLine(r *logstore.Record) string {
	var b strings.Builder
	b.WriteString(r.Time)
	fmt.Fprintf(&b, " #%d %s", r.Seq, r.Type)
	if r.PECID != "" {
		b.WriteString(" " + printable(r.PECID))
	}
	if r.Sender != "" || len(r.Recipients) > 0 {
		b.WriteString(" " + printable(r.Sender) + " →")
		for i, rc := range r.Recipients {
			if i > 0 {
				b.WriteString(",")
			}
			b.WriteString(" " + printable(rc.Addr))
			if rc.Tipo != "" {
				b.WriteString(" (" + printable(rc.Tipo) + ")")
			}
		}
	}
	field := func(k, v string) {
		if v != "" {
			b.WriteString(" " + k + "=" + v)
		}
	}
	if r.Subject != "" {
		field("subject", strconv.Quote(r.Subject))
	}
	field("msgid", printable(r.MsgID))
	field("user", printable(r.User))
	field("ip", printable(r.ClientIP))
	if len(r.Violations) > 0 {
		vs := make([]string, len(r.Violations))
		for i, v := range r.Violations {
			vs[i] = printable(v)
		}
		field("violations", strings.Join(vs, ","))
	}
	if g := r.Generated; g != nil {
		if g.Envelope != r.PECID {
			field("envelope", printable(g.Envelope))
		}
		field("receipt", printable(g.Receipt))
		field("notice", printable(g.Notice))
	}
	// The transaction's state as recovery reads it (records of format 1
	// included: logstore.Record.Tx).
	if tx := r.Tx(); tx.State != "" {
		field("state", printable(string(tx.State)))
		field("cause", printable(string(tx.Cause)))
	}
	if r.Detail != "" {
		field("detail", strconv.Quote(r.Detail))
	}
	if r.Upto != 0 {
		field("upto", strconv.FormatUint(r.Upto, 10))
		field("head", printable(r.Head))
	}
	if len(r.Files) > 0 {
		field("files", strconv.Itoa(len(r.Files)))
	}
	b.WriteString("\n")
	return b.String()
}

// printable returns s, quoted if it has a space or a character that is
// not printable.
func printable(s string) string {
	if strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) || r == ' ' }) >= 0 {
		return strconv.Quote(s)
	}
	return s
}

var csvHeader = []string{"seq", "time", "type", "pec_id", "msgid", "sender", "recipients", "recipient_types", "subject",
	"envelope_id", "receipt_id", "notice_id", "provider", "user", "client_ip", "tls", "size", "sha256", "violations", "detail",
	"state", "cause"}

// csvRow is a record in the columns of csvHeader; lists are joined with
// ";". Fields are written as they are in the log, not altered.
func csvRow(r *logstore.Record) []string {
	var addrs, tipi []string
	for _, rc := range r.Recipients {
		addrs = append(addrs, rc.Addr)
		tipi = append(tipi, rc.Tipo)
	}
	var g logstore.Generated
	if r.Generated != nil {
		g = *r.Generated
	}
	size := ""
	if r.Size != 0 {
		size = strconv.FormatInt(r.Size, 10)
	}
	tx := r.Tx()
	return []string{strconv.FormatUint(r.Seq, 10), r.Time, string(r.Type), r.PECID, r.MsgID, r.Sender,
		strings.Join(addrs, ";"), strings.Join(tipi, ";"), r.Subject, g.Envelope, g.Receipt, g.Notice,
		r.Provider, r.User, r.ClientIP, r.TLS, size, r.SHA256, strings.Join(r.Violations, ";"), r.Detail,
		string(tx.State), string(tx.Cause)}
}
