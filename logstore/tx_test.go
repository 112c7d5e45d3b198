package logstore

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var (
	testID = strings.Repeat("ab", 32)
	testFP = strings.Repeat("cd", 32)
)

// stateRecord is an accepted submission's record reaching st.
func stateRecord(t Event, st TxState, c TxCause) *Record {
	r := sampleAcceptance(1, romeTime(2026, 11, 23, 10, 0, 0))
	r.Type, r.State, r.Cause, r.Dedup = t, st, c, &DedupKey{ID: testID, FP: testFP}
	return r
}

// TestAppendWritesFormat2: what Append writes carries "v":2 and the typed
// fields, decodes to the same record and reads back through Tx.
func TestAppendWritesFormat2(t *testing.T) {
	o, _ := testOptions(t, "")
	l := openLog(t, o)
	in := stateRecord(EventAborted, TxReceiptOwed, CauseReceiptFailed)
	if _, _, err := l.Append(context.Background(), in); err != nil {
		t.Fatal(err)
	}
	closeLog(t, l)
	lines := readLog(t, o.Dir)
	if len(lines) != 2 || lines[1].rec.Type != EventCheckpoint {
		t.Fatalf("%d lines, want the record and the checkpoint of Close", len(lines))
	}
	line := string(lines[0].line)
	for _, want := range []string{`"prev":"` + GenesisPrev + `","v":2,"time":`, `"state":"receipt-owed","cause":"receipt-failed","dedup":{"id":"` + testID + `","fp":"` + testFP + `"}`} {
		if !strings.Contains(line, want) {
			t.Errorf("line %s\nwants %s", line, want)
		}
	}
	if in.V != FormatVersion {
		t.Errorf("Append left V = %d", in.V)
	}
	got := lines[0].rec.Tx()
	if got.State != TxReceiptOwed || got.Cause != CauseReceiptFailed || got.Dedup == nil || *got.Dedup != (DedupKey{testID, testFP}) {
		t.Errorf("Tx() = %+v", got)
	}
}

// TestAppendRefusesWhatFormat2CannotHold.
func TestAppendRefusesWhatFormat2CannotHold(t *testing.T) {
	o, _ := testOptions(t, "")
	l := openLog(t, o)
	defer closeLog(t, l)
	v1key := sampleAcceptance(1, romeTime(2026, 11, 23, 10, 0, 0))
	v1key.DedupKey = testID + " " + testFP
	for name, r := range map[string]*Record{
		"format 1 dedup_key":   v1key,
		"state on a duplicate": stateRecord(EventDuplicate, TxReceiptOut, CauseReceiptDelivered),
		"receipt-out aborted":  stateRecord(EventAborted, TxReceiptOut, CauseReceiptDelivered),
		"unknown state":        stateRecord(EventAborted, "lost-in-space", CauseReceiptFailed),
		"unknown cause":        stateRecord(EventAborted, TxReceiptOwed, "gremlins"),
		"cause without state":  stateRecord(EventAborted, "", CauseReceiptFailed),
		"short dedup id": func() *Record {
			r := stateRecord(EventHandedOff, TxReceiptOut, CauseReceiptDelivered)
			r.Dedup.ID = "ab"
			return r
		}(),
	} {
		if _, _, err := l.Append(context.Background(), r); err == nil {
			t.Errorf("%s: appended", name)
		}
	}
}

// TestDecodeFormats: format 1 lines (no "v") decode as before; a line
// claiming a format it does not follow is refused.
func TestDecodeFormats(t *testing.T) {
	enc := func(r *Record) string {
		r.Seq, r.Prev = 1, GenesisPrev
		b, err := Encode(r)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	v1 := sampleAcceptance(1, romeTime(2026, 11, 23, 10, 0, 0))
	v1.DedupKey = testID + " " + testFP
	if r, err := Decode([]byte(enc(v1))); err != nil || r.V != 0 || r.Tx().Dedup == nil || r.Tx().State != TxWrittenAhead {
		t.Fatalf("format 1 line: %+v, %v", r, err)
	}
	v2 := stateRecord(EventHandedOff, TxReceiptOut, CauseReceiptDelivered)
	v2.V = FormatVersion
	if _, err := Decode([]byte(enc(v2))); err != nil {
		t.Fatalf("format 2 line: %v", err)
	}
	bad := map[string]string{
		"explicit v 1":          strings.Replace(enc(sampleAcceptance(1, romeTime(2026, 11, 23, 10, 0, 0))), `"prev":"`+GenesisPrev+`"`, `"prev":"`+GenesisPrev+`","v":1`, 1),
		"v 3":                   strings.Replace(enc(v2), `"v":2`, `"v":3`, 1),
		"format 1 with a state": strings.Replace(enc(v2), `"v":2,`, ``, 1),
		"format 2 with dedup_key": func() string {
			r := *v2
			r.Dedup, r.DedupKey = nil, testID+" "+testFP
			return enc(&r)
		}(),
		"state on the wrong type": strings.Replace(enc(v2), `"type":"handed-off"`, `"type":"busta-trasporto"`, 1),
	}
	for name, line := range bad {
		if _, err := Decode([]byte(line)); err == nil {
			t.Errorf("%s: decoded\n%s", name, line)
		}
	}
}

// TestVerifyRefusesAnOlderFormatAfterANewer: a record of format 1 (with
// a valid chain link, as anyone can compute) after records of format 2
// is damage, for Verify and for Open alike.
func TestVerifyRefusesAnOlderFormatAfterANewer(t *testing.T) {
	o, clock := testOptions(t, "")
	l := openLog(t, o)
	appendN(t, l, 1, 2, clock.Now())
	closeLog(t, l) // and the checkpoint of Close, seq 3
	old := sampleAcceptance(4, clock.Now())
	old.Seq, old.Prev = 4, Hash(readLog(t, o.Dir)[2].line)
	line, err := Encode(old)
	if err != nil {
		t.Fatal(err)
	}
	appendBytes(t, activeSegment(t, o.Dir), line)
	rep, err := Verify(o.Dir, nil)
	if err != nil || rep.Problem == nil || rep.Problem.Seq != 4 || !strings.Contains(rep.Problem.Problem, "format 1 after records of format 2") {
		t.Errorf("Verify: %+v, %v", rep.Problem, err)
	}
	if _, err := Open(o); err == nil || !strings.Contains(err.Error(), "format 1 after records of format 2") {
		t.Errorf("Open: %v", err)
	}
}

// TestCompatV1 reads every wording format 1 wrote (the constants of its
// gateway, whose records the fixture gateway/testdata/v1log holds) into
// the state its reconciliation took from it.
func TestCompatV1(t *testing.T) {
	for _, tc := range []struct {
		typ    Event
		detail string
		state  TxState
		cause  TxCause
	}{
		{EventBustaTrasporto, "", TxWrittenAhead, CauseWritten},
		{EventAccettazione, "the client's Message-ID was accepted before with other content: certified as a new message", TxWrittenAhead, CauseWritten},
		{EventHandedOff, "", TxReceiptOut, CauseReceiptDelivered},
		{EventHandedOff, "the client's Message-ID was accepted before with other content: certified as a new message", TxReceiptOut, CauseReceiptDelivered},
		{EventHandedOff, "dedup commit failed: dedup: store unavailable: injected", TxCommitOwed, CauseCommitFailed},
		{EventHandedOff, "the client's Message-ID was accepted before with other content: certified as a new message; dedup commit failed: x", TxCommitOwed, CauseCommitFailed},
		{EventHandedOff, "acceptance receipt delivered late by the periodic redelivery at 2026-11-23T10:30:00+01:00", TxReceiptOut, CauseRedelivered},
		{EventHandedOff, "acceptance receipt delivered late on the client's retry at 2026-11-23T10:30:00+01:00", TxReceiptOut, CauseRedelivered},
		{EventHandedOff, "acceptance receipt found in the sender's mailbox by the reconciliation at 2026-11-23T10:31:00+01:00", TxReceiptOut, CauseRedelivered},
		{EventHandedOff, "acceptance receipt delivered late after the operator confirmed that the next hop received the transport envelope, by the periodic redelivery at 2026-11-23T10:30:00+01:00", TxReceiptOut, CauseOperatorConfirmed},
		{EventHandedOff, "reconciled after a restart: envelope found in outbound; acceptance receipt delivered late; reconciliation ran at 2026-11-23T10:31:00+01:00", TxReceiptOut, CauseFoundOut},
		{EventHandedOff, "reconciled after a restart: envelope handed off (as the receipt spool recorded); acceptance receipt delivered late; reconciliation ran at x", TxReceiptOut, CauseFoundOut},
		{EventHandedOff, "reconciled after a restart: envelope and acceptance receipt handed off (committed in the dedup store); reconciliation ran at x", TxReceiptOut, CauseFoundCommitted},
		{EventHandedOff, "reconciled after a restart: envelope found in outbound, receipt delivery not confirmed; reconciliation ran at x", TxReceiptLost, CauseReceiptLost},
		{EventAborted, "transport envelope not handed off: next hop down", TxNotHandedOff, CauseEnvelopeFailed},
		{EventAborted, "acceptance receipt not spooled, transport envelope not handed off: disk full", TxNotHandedOff, CauseNotPrepared},
		{EventAborted, "dedup hold not taken, transport envelope not handed off: dedup: lease held by another owner", TxNotHandedOff, CauseNotPrepared},
		{EventAborted, "transport envelope handed off, acceptance receipt not delivered (kept for a later delivery): mailbox store down", TxReceiptOwed, CauseReceiptFailed},
		{EventAborted, "transport envelope handed off, acceptance receipt not delivered; dedup commit failed: x", TxReceiptOwed, CauseReceiptFailed},
		{EventAborted, "transport envelope hand-off outcome unknown (the next hop did not answer the end of DATA); acceptance receipt kept unconfirmed (pecgw spool confirm or reject): end of DATA", TxOutcomeUnknown, CauseEnvelopeUnknown},
		{EventAborted, "transport envelope hand-off outcome unknown (the next hop did not answer the end of DATA); acceptance receipt could not be kept: x", TxReceiptLost, CauseReceiptLost},
		{EventAborted, "reconciled after a restart: hand-off outcome unknown (next-hop SMTP); acceptance receipt kept unconfirmed; reconciliation ran at x", TxOutcomeUnknown, CauseFoundUnknown},
		{EventAborted, "reconciled after a restart: hand-off outcome unknown (next-hop SMTP); no receipt kept: the submission is remembered with this identifier; reconciliation ran at x", TxReceiptLost, CauseReceiptLost},
		{EventAborted, "reconciled after a restart: the envelope was not handed off; reconciliation ran at x", TxNotHandedOff, CauseFoundNotOut},
		{EventAborted, "reconciled after a restart: the envelope was not handed off (no dedup hold was taken); reconciliation ran at x", TxNotHandedOff, CauseFoundNotOut},
		{EventAborted, "the operator found that the next hop did not receive the transport envelope: acceptance receipt dropped, the submission may be sent again; recorded at x", TxNotHandedOff, CauseOperatorRejected},
		{EventAborted, "non-acceptance notice not delivered: mailbox down", "", ""},
		{EventDuplicate, "retry of an accepted submission: answered with its PEC identifier, nothing emitted", "", ""},
		{EventNonAccettazione, "", "", ""},
	} {
		r := &Record{Type: tc.typ, Detail: tc.detail, DedupKey: testID + " " + testFP}
		got := r.Tx()
		if got.State != tc.state || got.Cause != tc.cause || got.Dedup == nil || *got.Dedup != (DedupKey{testID, testFP}) {
			t.Errorf("%s %q: %+v, want %s/%s", tc.typ, tc.detail, got, tc.state, tc.cause)
		}
	}
	if k := (&Record{Type: EventBustaTrasporto, DedupKey: "one-part"}).Tx().Dedup; k != nil {
		t.Errorf("malformed dedup_key read as %+v", k)
	}
}

// TestFormat1SegmentStillVerifies: a whole segment of format 1 records
// followed by format 2 ones (an upgrade) verifies.
func TestFormat1SegmentStillVerifies(t *testing.T) {
	o, clock := testOptions(t, "")
	dir := o.Dir
	var b []byte
	prev := GenesisPrev
	for i := 1; i <= 3; i++ {
		r := sampleAcceptance(i, clock.Now())
		r.Seq, r.Prev, r.DedupKey = uint64(i), prev, testID+" "+testFP
		line, err := Encode(r)
		if err != nil {
			t.Fatal(err)
		}
		b = append(b, line...)
		prev = Hash(line)
	}
	if err := os.WriteFile(filepath.Join(dir, SegmentName(1, clock.Now())), b, 0o644); err != nil {
		t.Fatal(err)
	}
	l := openLog(t, o)
	appendN(t, l, 4, 2, clock.Now())
	closeLog(t, l)
	// The three records of format 1 had no checkpoint: the one of Close
	// covers them, and says that the start found them unsigned.
	rep, err := Verify(dir, nil)
	if err != nil || rep.Problem != nil || rep.Records != 6 {
		t.Fatalf("Verify: %+v, %v", rep, err)
	}
	if ck := readLog(t, dir)[5].rec; ck.Type != EventCheckpoint || !strings.Contains(ck.Detail, "at start: records 1..3 were not covered") {
		t.Errorf("the checkpoint of Close: %+v", ck)
	}
}
