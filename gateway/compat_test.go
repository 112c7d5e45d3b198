package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pecgw/pecgw/internal/testpki"
	"github.com/pecgw/pecgw/logstore"
)

// v1Fixture copies gateway/testdata/v1log (a log, spool and maildirs the
// v1 release wrote, README.md there) into a node, as a provider's
// volume after an upgrade: sealed segments read-only, as the v1 release
// left them (git does not keep the mode).
func v1Fixture(t *testing.T) (*node, map[string]map[string]string) {
	t.Helper()
	root := t.TempDir()
	src := filepath.Join("testdata", "v1log")
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		dst := filepath.Join(root, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o700)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, data, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
	segs, err := logstore.ListSegments(filepath.Join(root, "log"))
	if err != nil || len(segs) != 2 {
		t.Fatalf("fixture segments %v, %v", segs, err)
	}
	for i, s := range segs {
		mode := os.FileMode(0o644)
		if i < len(segs)-1 {
			mode = 0o444
		}
		if err := os.Chmod(filepath.Join(root, "log", s.Name), mode); err != nil {
			t.Fatal(err)
		}
	}
	var scenarios map[string]map[string]string
	raw, err := os.ReadFile(filepath.Join(src, "scenarios.json"))
	if err == nil {
		err = json.Unmarshal(raw, &scenarios)
	}
	if err != nil || len(scenarios) != 19 {
		t.Fatalf("scenarios.json: %d, %v", len(scenarios), err)
	}
	n := &node{logDir: filepath.Join(root, "log"), dedupDir: t.TempDir(), dataDir: filepath.Join(root, "data")}
	n.start(t)
	return n, scenarios
}

// TestV1RecordsReadAsTheyWereMeant: every record of the v1 fixture is
// read (logstore.Record.Tx, its one compatibility function) into the
// state the v1 reconciliation took from its wording.
func TestV1RecordsReadAsTheyWereMeant(t *testing.T) {
	n, sc := v1Fixture(t)
	want := map[string]string{
		"complete":              "written-ahead written-ahead receipt-out",
		"envelope-failed":       "written-ahead written-ahead not-handed-off",
		"redelivered":           "written-ahead written-ahead receipt-owed receipt-out",
		"confirmed-applied":     "written-ahead written-ahead outcome-unknown receipt-out",
		"rejected-applied":      "written-ahead written-ahead outcome-unknown not-handed-off",
		"unknown-no-receipt":    "written-ahead written-ahead receipt-lost",
		"commit-failed":         "written-ahead written-ahead commit-owed",
		"crash-found":           "written-ahead written-ahead receipt-out",
		"crash-not-found":       "written-ahead written-ahead not-handed-off",
		"crash-receipt-started": "written-ahead written-ahead receipt-out",
		"crash-unknown":         "written-ahead written-ahead outcome-unknown",
		"owed":                  "written-ahead written-ahead receipt-owed",
		"unconfirmed":           "written-ahead written-ahead outcome-unknown",
		"confirmed-pending":     "written-ahead written-ahead outcome-unknown",
		"rejected-pending":      "written-ahead written-ahead outcome-unknown",
		"crash-found-left":      "written-ahead written-ahead",
		"crash-not-found-left":  "written-ahead written-ahead",
		"crash-receipt-written": "written-ahead written-ahead",
		"crash-spool-out":       "written-ahead written-ahead",
	}
	for name, w := range want {
		var got []string
		for _, r := range n.records(t, sc[name]["pec_id"]) {
			tx := r.Tx()
			if r.V != 0 || tx.Dedup == nil {
				t.Errorf("%s: seq %d: format %d, dedup %v", name, r.Seq, r.V, tx.Dedup)
			}
			if tx.State != "" {
				got = append(got, string(tx.State))
			}
		}
		if strings.Join(got, " ") != w {
			t.Errorf("%s: states %q, want %q", name, got, w)
		}
	}
}

// TestV1LogReconciles: the log of the v1 release, with eight transactions
// left incomplete, is reconciled by this release as the v1 release would
// have done it, and then verifies, format 1 and format 2 records in one
// chain.
func TestV1LogReconciles(t *testing.T) {
	n, sc := v1Fixture(t)
	rep := n.reconcile(t, nil)
	if rep != (Report{Incomplete: 4, Found: 3, NotFound: 1, Remembered: 3, Receipts: 5, ReceiptsDropped: 2}) {
		t.Errorf("report %+v", rep)
	}
	final := map[string]logstore.TxState{
		"owed": logstore.TxReceiptOut, "confirmed-pending": logstore.TxReceiptOut, "crash-found-left": logstore.TxReceiptOut,
		"crash-receipt-written": logstore.TxReceiptOut, "crash-spool-out": logstore.TxReceiptOut, "commit-failed": logstore.TxReceiptOut,
		"unconfirmed": logstore.TxOutcomeUnknown, "crash-unknown": logstore.TxOutcomeUnknown,
		"rejected-pending": logstore.TxNotHandedOff, "crash-not-found-left": logstore.TxNotHandedOff,
		"unknown-no-receipt": logstore.TxReceiptLost, "complete": logstore.TxReceiptOut, "crash-not-found": logstore.TxNotHandedOff,
	}
	for name, st := range final {
		recs := n.records(t, sc[name]["pec_id"])
		last := recs[len(recs)-1]
		if last.Type == logstore.EventDuplicate {
			last = recs[len(recs)-2]
		}
		if last.Tx().State != st {
			t.Errorf("%s: records %s, want it %s", name, types(recs), st)
		}
		if last.V == logstore.FormatVersion && (last.Dedup == nil || last.Time != recs[0].Time || last.DedupKey != "") {
			t.Errorf("%s: the record appended does not copy the transaction's: %+v", name, last)
		}
	}
	// Each receipt out is in the sender's mailbox exactly once.
	for name, st := range final {
		if st != logstore.TxReceiptOut {
			continue
		}
		if got := countInMailbox(t, n, receiptOf(t, n, sc[name]["pec_id"])); got != 1 {
			t.Errorf("%s: %d copies of its receipt in the sender's mailbox, want 1", name, got)
		}
	}
	// Only the two receipts waiting for the operator are left.
	if _, ids, err := n.spool.List(); err != nil || len(ids) != 2 {
		t.Errorf("spool after: %v, %v", ids, err)
	}

	// What a retry of each gets now (the dedup store started empty: the
	// v1 release's journal is not part of the fixture, README.md).
	ctx := context.Background()
	resend := func(name string) (*Outcome, error) {
		return n.a.Process(ctx, submission(sc[name]["raw"], "anna@pec.altro.it", "luca@example.com"))
	}
	for _, name := range []string{"owed", "confirmed-pending", "crash-found-left", "crash-receipt-written", "crash-spool-out", "commit-failed", "unknown-no-receipt"} {
		if o, err := resend(name); err != nil || !o.Duplicate || o.ID != sc[name]["pec_id"] {
			t.Errorf("retry of %s: %+v, %v; want a duplicate of %s", name, o, err, sc[name]["pec_id"])
		}
	}
	for _, name := range []string{"unconfirmed", "crash-unknown"} {
		var ife *InFlightError
		if _, err := resend(name); !errors.As(err, &ife) || ife.Hold != sc[name]["pec_id"] {
			t.Errorf("retry of %s: %v; want 451 held by %s", name, err, sc[name]["pec_id"])
		}
	}
	for _, name := range []string{"rejected-pending", "crash-not-found-left"} {
		if o, err := resend(name); err != nil || o.Duplicate || o.ID == sc[name]["pec_id"] {
			t.Errorf("retry of %s: %+v, %v; want a new certification", name, o, err)
		}
	}

	// The log is open: its last batch is signed within the checkpoint
	// interval and one signature (docs/logformat.md, "Checkpoints").
	vrep, err := logstore.Verify(n.logDir, testpki.Roots())
	for deadline := time.Now().Add(5 * time.Second); err == nil && vrep.Unsigned != nil && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		vrep, err = logstore.Verify(n.logDir, testpki.Roots())
	}
	if err != nil || vrep.Problem != nil || vrep.Seals != 1 {
		t.Fatalf("Verify: %+v, %v", vrep, err)
	}
	if rep := n.restart(t, nil); rep != (Report{}) {
		t.Errorf("second reconciliation: %+v", rep)
	}
}

// receiptOf is the acceptance receipt's Message-ID of transaction id.
func receiptOf(t *testing.T, n *node, id string) string {
	t.Helper()
	for _, r := range n.records(t, id) {
		if r.Generated != nil && r.Generated.Receipt != "" {
			return r.Generated.Receipt
		}
	}
	t.Fatalf("no receipt recorded for %s", id)
	return ""
}

// countInMailbox counts the files of the sender's mailbox with Message-ID id.
func countInMailbox(t *testing.T, n *node, id string) int {
	t.Helper()
	c := 0
	for _, sub := range []string{"new", "cur"} {
		files, _ := filepath.Glob(filepath.Join(n.dataDir, "mailboxes", "mario@pec.example.it", sub, "*"))
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(data, []byte("Message-ID: <"+id+">")) {
				c++
			}
		}
	}
	return c
}
