package gateway

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pecgw/pecgw/dedup"
	"github.com/pecgw/pecgw/delivery"
	"github.com/pecgw/pecgw/internal/testpki"
	"github.com/pecgw/pecgw/logstore"
)

// allStates are the states of the table, those never logged included.
var allStates = []logstore.TxState{stNew, logstore.TxWrittenAhead, stEnvelopeOut, logstore.TxReceiptOwed,
	logstore.TxOutcomeUnknown, logstore.TxCommitOwed, logstore.TxReceiptOut, logstore.TxReceiptLost, logstore.TxNotHandedOff}

var allCauses = []logstore.TxCause{logstore.CauseWritten, logstore.CauseLogFailed, logstore.CauseNotPrepared,
	logstore.CauseEnvelopeFailed, logstore.CauseEnvelopeUnknown, logstore.CauseEnvelopeDelivered, logstore.CauseReceiptFailed,
	logstore.CauseReceiptDelivered, logstore.CauseCommitFailed, logstore.CauseRedelivered, logstore.CauseOperatorConfirmed,
	logstore.CauseOperatorRejected, logstore.CauseCommittedLate, logstore.CauseFoundOut, logstore.CauseFoundCommitted,
	logstore.CauseFoundNotOut, logstore.CauseFoundUnknown, logstore.CauseReceiptLost, logstore.CauseRestart, logstore.CauseStrayReceipt}

// TestTableIsWellFormed: one row per state and event; every event and
// logged state of the log's vocabulary is in the table; a row writes a
// record only of a state records may carry; terminal states lead nowhere
// else.
func TestTableIsWellFormed(t *testing.T) {
	seen := map[string]bool{}
	events := map[logstore.TxCause]bool{}
	for _, r := range txTable {
		k := string(r.from) + "|" + string(r.on)
		if seen[k] {
			t.Errorf("two rows for %s in %s", r.on, stateName(r.from))
		}
		seen[k] = true
		events[r.on] = true
		if r.log && r.to.Types() == nil {
			t.Errorf("%s in %s logs state %s, which no record can carry", r.on, stateName(r.from), stateName(r.to))
		}
		if r.from.Terminal() && r.to != r.from {
			t.Errorf("%s leaves the terminal state %s", r.on, r.from)
		}
		if r.settle && (r.log || r.to != r.from) {
			t.Errorf("re-assertion %s in %s moves the state or logs", r.on, stateName(r.from))
		}
		if !r.on.Known() {
			t.Errorf("event %q is not in the log's vocabulary", r.on)
		}
	}
	if len(events) != len(allCauses) {
		t.Errorf("the table has %d events, the vocabulary %d", len(events), len(allCauses))
	}
}

// TestIllegalTransitionsRefused: every pair of state and event without
// a row is refused by the table, and applying it changes nothing: no
// record, no state.
func TestIllegalTransitionsRefused(t *testing.T) {
	n := newNode(t)
	before := len(n.records(t, "illegal@pec.example.it"))
	refused := 0
	for _, st := range allStates {
		for _, on := range allCauses {
			_, rowErr := step(st, on)
			legal := slices.ContainsFunc(txTable, func(r transition) bool { return r.from == st && r.on == on })
			if legal != (rowErr == nil) {
				t.Errorf("step(%s, %s) = %v, legal %v", stateName(st), on, rowErr, legal)
			}
			if legal {
				continue
			}
			refused++
			tx := &txn{id: "illegal@pec.example.it", state: st}
			if _, err := n.a.apply(context.Background(), tx, on); !errors.Is(err, errIllegal) || tx.state != st {
				t.Errorf("apply(%s, %s): %v, state now %s", stateName(st), on, err, stateName(tx.state))
			}
		}
	}
	if got := len(n.records(t, "illegal@pec.example.it")); got != before {
		t.Errorf("%d records written by illegal transitions", got-before)
	}
	t.Logf("%d rows, %d pairs refused", len(txTable), refused)
}

// rowSetup is a transaction of a node in a row's from state, with what
// that state has outside the log: its spooled receipt and mark, its
// dedup lease or hold.
type rowSetup struct {
	t       *txn
	k       dedup.Key
	receipt string // the receipt's Message-ID
}

func setUpRow(t *testing.T, n *node, i int, r transition) *rowSetup {
	t.Helper()
	ctx := context.Background()
	msgID := fmt.Sprintf("<row%d@mua>", i)
	raw := strings.Replace(goodMessage, "<c1@mua>", msgID, 1)
	rcpts := []string{"anna@pec.altro.it", "luca@example.com"}
	k := dedup.Key{Sender: "mario@pec.example.it", MessageID: msgID, Recipients: rcpts, BodyHash: sha256.Sum256([]byte(raw))}
	id := fmt.Sprintf("20261123103000.row%02d@%s", i, testpki.Domain)
	receipt := fmt.Sprintf("20261123103000.row%02d.accettazione@%s", i, testpki.Domain)
	key := &logstore.DedupKey{ID: k.ID(), FP: k.Fingerprint()}
	rec := logstore.Record{V: logstore.FormatVersion, Time: "2026-11-23T10:30:00+01:00", Type: logstore.EventBustaTrasporto,
		PECID: id, MsgID: msgID, Sender: "mario@pec.example.it", Provider: testpki.ProviderName, User: "mario@pec.example.it",
		Dedup: key, Generated: &logstore.Generated{Envelope: id, Receipt: receipt}}
	tx := &txn{id: id, state: r.from, rec: rec, key: key}

	// The spooled receipt: none where the event says there is none.
	mark := spoolMarkOf(r.from)
	switch {
	case r.on == logstore.CauseReceiptLost || r.on == logstore.CauseWritten || r.on == logstore.CauseLogFailed:
		mark = ""
	case r.on == logstore.CauseOperatorConfirmed:
		mark = delivery.SpoolConfirmed
	case r.on == logstore.CauseOperatorRejected:
		mark = delivery.SpoolRejected
	case r.on == logstore.CauseFoundOut:
		mark = delivery.SpoolOut
	case mark == "":
		mark = delivery.SpoolPending // stale: of a transaction over, or without records
	}
	if mark != "" {
		data := "Return-Path: <>\r\nMessage-ID: <" + receipt + ">\r\nX-Ricevuta: accettazione\r\n\r\nricevuta\r\n"
		e, err := spoolEntry(&rec, &delivery.Message{ReversePath: "posta-certificata@" + testpki.Domain, ForwardPaths: []string{"mario@pec.example.it"}, Data: []byte(data)})
		if err != nil {
			t.Fatal(err)
		}
		err = n.spool.Put(e)
		if err == nil && mark != delivery.SpoolPending {
			err = n.spool.Mark(id, mark)
		}
		if err != nil {
			t.Fatal(err)
		}
		tx.mark = mark
	}

	// The dedup state: the session's claim in the session's rows, a
	// hold from Prepare once the hand-off may have begun, a hold to
	// drop for abandon, nothing after a restart (the embedded store
	// forgot it).
	inSession := r.from == stNew || r.from == stEnvelopeOut ||
		r.from == logstore.TxWrittenAhead && !strings.HasPrefix(string(r.on), "found-") && r.on != logstore.CauseReceiptLost
	switch {
	case inSession:
		c, err := n.store.Claim(ctx, k, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		tx.claim = &dedupTx{key: k, token: c.Token, lease: time.Minute}
		if r.from == stEnvelopeOut || r.from == logstore.TxWrittenAhead && r.on != logstore.CauseNotPrepared {
			if slices.Contains(r.before, actEnsureHold) {
				tx.holdLess = true // on_error = accept went on without the hold
			} else if err := n.store.Prepare(ctx, k, c.Token, id, time.Hour); err != nil {
				t.Fatal(err)
			}
		}
	case slices.Contains(r.before, actAbandon) || slices.Contains(r.after, actAbandon):
		if err := n.store.Hold(ctx, key.ID, key.FP, id, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	return &rowSetup{t: tx, k: k, receipt: receipt}
}

// TestEveryTransition applies each row of the table to a transaction of a
// real node (log, spool, maildirs, embedded dedup store) and checks what
// it did: the new state, the record (of the row's state, event and type,
// or none), and the effect of each of its actions.
func TestEveryTransition(t *testing.T) {
	for i, r := range txTable {
		t.Run(fmt.Sprintf("%s/%s", stateName(r.from), r.on), func(t *testing.T) {
			n := newNode(t)
			ctx := context.Background()
			s := setUpRow(t, n, i, r)
			before := n.records(t, s.t.id)
			warn, err := n.a.apply(ctx, s.t, r.on)
			if err != nil || warn != nil {
				t.Fatalf("apply: %v (warnings %v)", err, warn)
			}
			if s.t.state != r.to {
				t.Errorf("state %s, want %s", stateName(s.t.state), stateName(r.to))
			}
			recs := n.records(t, s.t.id)[len(before):]
			wantRecs := 0
			if r.log {
				wantRecs = len(r.to.Types())
			}
			if len(recs) != wantRecs {
				t.Fatalf("%d records, want %d", len(recs), wantRecs)
			}
			for j, rec := range recs {
				if rec.State != r.to || rec.Cause != r.on || rec.Type != r.to.Types()[j] || rec.Time != s.t.rec.Time || rec.Dedup == nil || *rec.Dedup != *s.t.key {
					t.Errorf("record %+v", rec)
				}
			}
			checkActions(t, n, s, r)
		})
	}
}

// checkActions checks the effect of every action of row r on s.
func checkActions(t *testing.T, n *node, s *rowSetup, r transition) {
	t.Helper()
	ctx := context.Background()
	acts := append(append([]action{}, r.before...), r.after...)
	e, err := n.spool.Get(s.t.id)
	switch {
	case slices.Contains(acts, actUnspool):
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("unspool: entry still there (%v)", err)
		}
	case slices.Contains(acts, actMarkOut):
		if err != nil || e.State != delivery.SpoolOut {
			t.Errorf("mark out: entry %s, %v", markOf(e), err)
		}
	case slices.Contains(acts, actMarkUnconfirmed):
		if err != nil || e.State != delivery.SpoolUnconfirmed {
			t.Errorf("mark unconfirmed: entry %s, %v", markOf(e), err)
		}
	}
	if got := countInMailbox(t, n, s.receipt); got != b2i(slices.Contains(acts, actDeliverReceipt)) {
		t.Errorf("%d receipts in the sender's mailbox", got)
	}
	// The dedup state the row leaves: that of its last dedup action.
	var last action
	for _, a := range acts {
		switch a {
		case actRemember, actAbandon, actHoldBack, actRelease, actEnsureHold, actCommitLater:
			last = a
		}
	}
	if last == 0 {
		return
	}
	var c dedup.Claim
	deadline := time.Now().Add(5 * time.Second)
	for {
		if c, err = n.store.Claim(ctx, s.k, time.Minute); err != nil {
			t.Fatal(err)
		}
		if last != actCommitLater || c.State == dedup.Duplicate || time.Now().After(deadline) {
			break
		}
		if c.Token != "" {
			n.store.Release(ctx, s.k, c.Token)
		}
		time.Sleep(100 * time.Millisecond) // the background commit
	}
	switch last {
	case actRemember, actCommitLater:
		if c.State != dedup.Duplicate || c.PECID != s.t.id {
			t.Errorf("%s: claim %+v, want a duplicate of %s", last, c, s.t.id)
		}
	case actAbandon, actRelease:
		if c.State != dedup.New {
			t.Errorf("%s: claim %+v, want new", last, c)
		}
	case actHoldBack, actEnsureHold:
		if c.State != dedup.InFlight || c.PECID != s.t.id {
			t.Errorf("%s: claim %+v, want held by %s", last, c, s.t.id)
		}
	}
}

func markOf(e *delivery.SpoolEntry) delivery.SpoolState {
	if e == nil {
		return "(none)"
	}
	return e.State
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestRejectionOfACommittedSubmission: the rejection's refuse if
// committed stops it: nothing logged, the entry and the decision kept.
func TestRejectionOfACommittedSubmission(t *testing.T) {
	n := newNode(t)
	r, _ := step(logstore.TxOutcomeUnknown, logstore.CauseOperatorRejected)
	s := setUpRow(t, n, 0, r)
	if err := n.store.Remember(context.Background(), s.t.key.ID, s.t.key.FP, s.t.id, time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := n.a.apply(context.Background(), s.t, r.on); err == nil || !strings.Contains(err.Error(), "cannot reject") {
		t.Fatalf("apply: %v", err)
	}
	if s.t.state != logstore.TxOutcomeUnknown || len(n.records(t, s.t.id)) != 0 {
		t.Errorf("state %s, records %s", s.t.state, types(n.records(t, s.t.id)))
	}
	if e, err := n.spool.Get(s.t.id); err != nil || e.State != delivery.SpoolRejected {
		t.Errorf("entry %s, %v", markOf(e), err)
	}
}

// TestReplayRefusesAnImpossibleLog: a log whose records go through states
// no row leads between (a transaction not handed off, then its receipt
// out) is no log pecgw wrote: Reconcile says so and does nothing.
func TestReplayRefusesAnImpossibleLog(t *testing.T) {
	n := newNode(t)
	failing := *n.a
	failing.Outbound = &recordingTarget{fail: errors.New("down")}
	if _, err := failing.Process(context.Background(), retry()); err == nil {
		t.Fatal("accepted")
	}
	b := n.lastBusta(t)
	forged := *b
	forged.Seq, forged.Prev, forged.Type, forged.State, forged.Cause = 0, "", logstore.EventHandedOff, logstore.TxReceiptOut, logstore.CauseReceiptDelivered
	if _, _, err := n.log.Append(context.Background(), &forged); err != nil {
		t.Fatal(err)
	}
	if _, err := n.a.Reconcile(context.Background(), ReconcileInput{LogDir: n.logDir, Now: fixedNow}); err == nil || !strings.Contains(err.Error(), "from not-handed-off to receipt-out") {
		t.Errorf("Reconcile: %v", err)
	}
}

// TestDocsShowTheTable: docs/architecture.md shows the table as it is.
func TestDocsShowTheTable(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "docs", "architecture.md"))
	if err != nil {
		t.Fatal(err)
	}
	if want := tableMarkdown(); !strings.Contains(string(doc), want) {
		t.Errorf("docs/architecture.md does not show the table of txtable.go; it should contain:\n%s", want)
	}
}
