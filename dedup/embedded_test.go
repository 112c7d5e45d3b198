package dedup

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestEmbeddedCommitSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	e := openTestEmbedded(t, dir)
	k := newKey("body")
	c := mustClaim(t, e, k, longLease, New)
	mustCommit(t, e, k, c.Token, "pec-1", longWindow)
	inFlight := newKey("in flight")
	mustClaim(t, e, inFlight, longLease, New)
	remembered := newKey("remembered")
	if err := e.Remember(context.Background(), remembered.ID(), remembered.Fingerprint(), "pec-r", longWindow); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}

	e2 := openTestEmbedded(t, dir)
	if d := mustClaim(t, e2, k, longLease, Duplicate); d.PECID != "pec-1" {
		t.Errorf("PECID after reopen = %q, want pec-1", d.PECID)
	}
	if d := mustClaim(t, e2, remembered, longLease, Duplicate); d.PECID != "pec-r" {
		t.Errorf("remembered PECID after reopen = %q, want pec-r", d.PECID)
	}
	// Leases do not survive a restart.
	mustClaim(t, e2, inFlight, longLease, New)
}

func TestEmbeddedTornLastLineIgnored(t *testing.T) {
	dir := t.TempDir()
	e := openTestEmbedded(t, dir)
	k := newKey("body")
	c := mustClaim(t, e, k, longLease, New)
	mustCommit(t, e, k, c.Token, "pec-1", longWindow)
	k2 := newKey("torn")
	c2 := mustClaim(t, e, k2, longLease, New)
	mustCommit(t, e, k2, c2.Token, "pec-2", longWindow)
	e.Close()

	path := filepath.Join(dir, journalName)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// A crash in the middle of the second write: its line is cut short.
	if err := os.WriteFile(path, data[:len(data)-20], 0o600); err != nil {
		t.Fatal(err)
	}
	e2 := openTestEmbedded(t, dir)
	if d := mustClaim(t, e2, k, longLease, Duplicate); d.PECID != "pec-1" {
		t.Errorf("PECID = %q, want pec-1", d.PECID)
	}
	c3 := mustClaim(t, e2, k2, longLease, New)
	// Appending after the torn line must give a readable journal.
	mustCommit(t, e2, k2, c3.Token, "pec-3", longWindow)
	e2.Close()
	e3 := openTestEmbedded(t, dir)
	if d := mustClaim(t, e3, k2, longLease, Duplicate); d.PECID != "pec-3" {
		t.Errorf("PECID = %q, want pec-3", d.PECID)
	}
}

func TestEmbeddedCorruptMiddleLineRefused(t *testing.T) {
	dir := t.TempDir()
	e := openTestEmbedded(t, dir)
	for _, body := range []string{"a", "b"} {
		k := newKey(body)
		c := mustClaim(t, e, k, longLease, New)
		mustCommit(t, e, k, c.Token, "pec-"+body, longWindow)
	}
	e.Close()
	path := filepath.Join(dir, journalName)
	data, _ := os.ReadFile(path)
	data[20] ^= 0xff // a flipped byte in the first line
	os.WriteFile(path, data, 0o600)
	if e, err := OpenEmbedded(dir); err == nil {
		e.Close()
		t.Fatal("OpenEmbedded accepted a corrupt journal")
	} else if !strings.Contains(err.Error(), "line 1") {
		t.Errorf("error = %v, want it to name line 1", err)
	}
}

func TestEmbeddedCompaction(t *testing.T) {
	dir := t.TempDir()
	e := openTestEmbedded(t, dir)
	live := newKey("live")
	c := mustClaim(t, e, live, longLease, New)
	mustCommit(t, e, live, c.Token, "pec-live", longWindow)
	for i := range 5 {
		k := newKey("short")
		c := mustClaim(t, e, k, longLease, New)
		mustCommit(t, e, k, c.Token, "pec-short-"+string(rune('a'+i)), 30*time.Millisecond)
	}
	e.Close()
	path := filepath.Join(dir, journalName)
	if n := countLines(t, path); n != 6 {
		t.Fatalf("journal has %d lines before compaction, want 6", n)
	}
	time.Sleep(60 * time.Millisecond)

	e2 := openTestEmbedded(t, dir)
	if n := countLines(t, path); n != 1 {
		t.Errorf("journal has %d lines after compaction, want 1", n)
	}
	if d := mustClaim(t, e2, live, longLease, Duplicate); d.PECID != "pec-live" {
		t.Errorf("PECID = %q, want pec-live", d.PECID)
	}
	e2.Close()
	e3 := openTestEmbedded(t, dir)
	mustClaim(t, e3, live, longLease, Duplicate)
}

func TestEmbeddedLockedByOneProcess(t *testing.T) {
	dir := t.TempDir()
	openTestEmbedded(t, dir)
	// flock locks are per open file description, so a second open in
	// the same process conflicts as another process would.
	if e, err := OpenEmbedded(dir); err == nil {
		e.Close()
		t.Fatal("second OpenEmbedded of the same folder succeeded")
	}
}

func TestEmbeddedClosed(t *testing.T) {
	e := openTestEmbedded(t, t.TempDir())
	e.Close()
	if _, err := e.Claim(context.Background(), newKey("x"), longLease); err == nil {
		t.Error("Claim after Close succeeded")
	}
}

func TestEmbeddedJournalFailureIsUnavailable(t *testing.T) {
	dir := t.TempDir()
	e := openTestEmbedded(t, dir)
	k := newKey("body")
	c := mustClaim(t, e, k, longLease, New)
	e.journal.Close() // every write now fails, and so does the cut-back
	if err := e.Commit(context.Background(), k, c.Token, "pec-1", longWindow); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Commit with a failing journal = %v, want ErrUnavailable", err)
	}
	if _, err := e.Claim(context.Background(), newKey("next"), longLease); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Claim after a journal failure = %v, want ErrUnavailable", err)
	}
	e.Close()
	// Reopening replays what is on disk: the failed commit is not there.
	e2 := openTestEmbedded(t, dir)
	mustClaim(t, e2, k, longLease, New)
}

func countLines(t *testing.T, path string) int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Count(data, []byte("\n"))
}
