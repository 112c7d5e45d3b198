package delivery

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func journalEntry(i int) *SpoolEntry {
	return &SpoolEntry{
		ID:     fmt.Sprintf("20261204100000.%06d@pec.example.it", i),
		Record: []byte(fmt.Sprintf(`{"pec_id":"%d"}`, i)),
		To:     []string{"mario@pec.example.it"},
		Data:   []byte(fmt.Sprintf("Subject: ACCETTAZIONE %d\r\n\r\nput 1 2 3\ndel 4\n.\r\n", i)),
	}
}

// spoolIDs lists the spool's identifiers and states as one string.
func spoolIDs(t *testing.T, s *Spool) string {
	t.Helper()
	states, ids, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, id := range ids {
		fmt.Fprintf(&b, "%s=%s ", strings.TrimSuffix(id, "@pec.example.it"), states[id])
	}
	return strings.TrimSpace(b.String())
}

// TestJournalReopen: what Put returned for is there after a restart,
// what was removed is not, and the start rewrites the journal with the
// live entries only.
func TestJournalReopen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	s, err := OpenSpool(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := s.Put(journalEntry(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Put(journalEntry(2)); err == nil {
		t.Error("a second Put of one identifier accepted")
	}
	for _, i := range []int{1, 3} {
		if err := s.Remove(journalEntry(i).ID); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Mark(journalEntry(4).ID, SpoolOut); err != nil {
		t.Fatal(err)
	}
	const want = "20261204100000.000000=receipt 20261204100000.000002=receipt 20261204100000.000004=out"
	if got := spoolIDs(t, s); got != want {
		t.Errorf("List = %s, want %s", got, want)
	}
	// The operator's pecgw spool sees the same, beside the daemon.
	r, err := ReadSpool(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := spoolIDs(t, r); got != want {
		t.Errorf("ReadSpool's List = %s, want %s", got, want)
	}
	if _, err := OpenSpool(dir); err == nil || !strings.Contains(err.Error(), "in use by another pecgw serve") {
		t.Errorf("a second OpenSpool: %v", err)
	}
	before, _ := os.Stat(filepath.Join(dir, journalName))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = OpenSpool(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := spoolIDs(t, s); got != want {
		t.Errorf("after a restart List = %s, want %s", got, want)
	}
	e, err := s.Get(journalEntry(2).ID)
	if err != nil || !bytes.Equal(e.Data, journalEntry(2).Data) || string(e.Record) != string(journalEntry(2).Record) || e.State != SpoolPending {
		t.Errorf("Get after a restart = %+v, %v", e, err)
	}
	after, _ := os.Stat(filepath.Join(dir, journalName))
	if after.Size() >= before.Size() {
		t.Errorf("the start did not rewrite the journal: %d octets, before %d", after.Size(), before.Size())
	}
	if fi, err := os.Stat(filepath.Join(dir, journalName)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("journal: %v %v", fi, err)
	}
}

// TestJournalTornTail: a crash in the middle of a write leaves part of a
// frame; the start keeps every whole frame before it and the tail in a
// file of its own.
func TestJournalTornTail(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "spool")
	s, err := OpenSpool(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := s.Put(journalEntry(i)); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	raw, err := os.ReadFile(filepath.Join(dir, journalName))
	if err != nil {
		t.Fatal(err)
	}
	last := len(raw) - len(putFrame(journalEntry(2)))
	for cut := last; cut < len(raw); cut += 7 {
		d := filepath.Join(base, fmt.Sprintf("cut%d", cut))
		os.Mkdir(d, 0o700)
		os.WriteFile(filepath.Join(d, journalName), raw[:cut], 0o600)
		s, err := OpenSpool(d)
		if err != nil {
			t.Fatalf("cut at %d: %v", cut, err)
		}
		if got, want := spoolIDs(t, s), "20261204100000.000000=receipt 20261204100000.000001=receipt"; got != want {
			t.Errorf("cut at %d: List = %s, want %s", cut, got, want)
		}
		if (cut > last) != (s.Torn != "") {
			t.Errorf("cut at %d: Torn = %q", cut, s.Torn)
		}
		if s.Torn != "" {
			if b, err := os.ReadFile(s.Torn); err != nil || !bytes.Equal(b, raw[last:cut]) {
				t.Errorf("cut at %d: the torn tail kept is %q, %v", cut, b, err)
			}
		}
		s.Close()
	}
	// A damaged octet in the middle: what follows is kept for the
	// operator, never read as entries.
	bad := bytes.Clone(raw)
	bad[bytes.Index(bad, []byte("ACCETTAZIONE 1"))] ^= 1
	d := filepath.Join(base, "damaged")
	os.Mkdir(d, 0o700)
	os.WriteFile(filepath.Join(d, journalName), bad, 0o600)
	s, err = OpenSpool(d)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := spoolIDs(t, s); got != "20261204100000.000000=receipt" || s.Torn == "" {
		t.Errorf("damaged: List = %s, Torn %q", got, s.Torn)
	}
	// The torn file is not an entry.
	if _, ids, _ := s.List(); len(ids) != 1 {
		t.Errorf("List = %v", ids)
	}
	// Not a journal at all: nothing read from it, all of it kept.
	d2 := filepath.Join(base, "stranger")
	os.Mkdir(d2, 0o700)
	os.WriteFile(filepath.Join(d2, journalName), []byte("hello\n"), 0o600)
	s2, err := OpenSpool(d2)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if got := spoolIDs(t, s2); got != "" || s2.Torn == "" {
		t.Errorf("stranger: List = %s, Torn %q", got, s2.Torn)
	}
}

// TestJournalConcurrent: Puts and Removes from many goroutines, across
// rewrites of the journal, leave exactly the entries not removed, in
// memory and after a restart.
func TestJournalConcurrent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	s, err := OpenSpool(dir)
	if err != nil {
		t.Fatal(err)
	}
	s.j.rewriteAt = 8 << 10 // a rewrite every hundred frames or so
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w * 1000; i < w*1000+60; i++ {
				e := journalEntry(i)
				if err := s.Put(e); err != nil {
					t.Error(err)
					return
				}
				if i%3 != 0 {
					if err := s.Remove(e.ID); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	check := func(s *Spool, when string) {
		t.Helper()
		states, ids, err := s.List()
		if err != nil {
			t.Fatal(err)
		}
		if len(ids) != 16*20 {
			t.Errorf("%s: %d entries, want %d", when, len(ids), 16*20)
		}
		for w := range 16 {
			for i := w * 1000; i < w*1000+60; i++ {
				id := journalEntry(i).ID
				if _, ok := states[id]; ok != (i%3 == 0) {
					t.Errorf("%s: %s listed %v", when, id, ok)
				}
			}
		}
	}
	check(s, "running")
	// 960 puts and 640 dels came to ~220 KiB; the 320 live ones ~65 KiB.
	if fi, _ := os.Stat(filepath.Join(dir, journalName)); fi.Size() > 100<<10 {
		t.Errorf("the journal was not rewritten: %d octets", fi.Size())
	}
	s.Close()
	s, err = OpenSpool(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	check(s, "after a restart")
}

// TestJournalHeals: after a failed write the journal is rewritten before
// the next Put, which then succeeds; the failed Put is not an entry.
func TestJournalHeals(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	s, err := OpenSpool(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(journalEntry(0)); err != nil {
		t.Fatal(err)
	}
	s.j.f.Close() // the next write fails
	if err := s.Put(journalEntry(1)); err == nil {
		t.Fatal("a Put on a closed journal succeeded")
	}
	if err := s.Put(journalEntry(2)); err != nil {
		t.Fatalf("the Put after the failure: %v", err)
	}
	const want = "20261204100000.000000=receipt 20261204100000.000002=receipt"
	if got := spoolIDs(t, s); got != want {
		t.Errorf("List = %s, want %s", got, want)
	}
	s.Close()
	s, err = OpenSpool(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := spoolIDs(t, s); got != want || s.Torn != "" {
		t.Errorf("after a restart List = %s (torn %q), want %s", got, s.Torn, want)
	}
}

// TestReadSpoolWritesNothing: the operator's pecgw spool reads the
// journal and marks files, and cannot write a pending entry.
func TestReadSpoolWritesNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	s, err := OpenSpool(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Put(journalEntry(0)); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(journalEntry(1)); err != nil {
		t.Fatal(err)
	}
	if err := s.Mark(journalEntry(1).ID, SpoolUnconfirmed); err != nil {
		t.Fatal(err)
	}
	r, err := ReadSpool(dir)
	if err != nil {
		t.Fatal(err)
	}
	id0, id1 := journalEntry(0).ID, journalEntry(1).ID
	if err := r.Put(journalEntry(5)); err == nil {
		t.Error("ReadSpool: Put accepted")
	}
	if err := r.Mark(id0, SpoolOut); err == nil || !strings.Contains(err.Error(), "pecgw serve takes care of it") {
		t.Errorf("ReadSpool: Mark of a pending entry: %v", err)
	}
	if err := r.Remove(id0); err == nil {
		t.Error("ReadSpool: Remove of a pending entry accepted")
	}
	if err := r.Mark(id1, SpoolConfirmed); err != nil {
		t.Errorf("ReadSpool: the operator's decision: %v", err)
	}
	if got, want := spoolIDs(t, s), "20261204100000.000000=receipt 20261204100000.000001=confirmed"; got != want {
		t.Errorf("List = %s, want %s", got, want)
	}
	if _, err := ReadSpool(filepath.Join(dir, "nowhere")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadSpool of no folder: %v", err)
	}
}

// TestSpoolReadsReceiptFiles: a spool written by pecgw before the journal
// keeps each pending receipt in <id>.receipt: read, marked and removed as
// before, and listed with the journal's.
func TestSpoolReadsReceiptFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	os.MkdirAll(dir, 0o700)
	old := journalEntry(7)
	os.WriteFile(filepath.Join(dir, old.ID+".receipt"),
		append([]byte(`{"id":"`+old.ID+`","record":{"pec_id":"7"},"from":"","to":["mario@pec.example.it"],"utf8":false,"8bit":false}`+"\n"), old.Data...), 0o600)
	s, err := OpenSpool(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Put(journalEntry(8)); err != nil {
		t.Fatal(err)
	}
	if got, want := spoolIDs(t, s), "20261204100000.000007=receipt 20261204100000.000008=receipt"; got != want {
		t.Errorf("List = %s, want %s", got, want)
	}
	if e, err := s.Get(old.ID); err != nil || !bytes.Equal(e.Data, old.Data) {
		t.Errorf("Get = %+v, %v", e, err)
	}
	if err := s.Mark(old.ID, SpoolOut); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, old.ID+".out")); err != nil {
		t.Error(err)
	}
	if err := s.Remove(old.ID); err != nil {
		t.Fatal(err)
	}
	if got, want := spoolIDs(t, s), "20261204100000.000008=receipt"; got != want {
		t.Errorf("List = %s, want %s", got, want)
	}
}

// FuzzSpoolJournal: any bytes as a journal give entries that check, never
// a panic, and a prefix length within the input.
func FuzzSpoolJournal(f *testing.F) {
	var b bytes.Buffer
	b.WriteString(journalMagic)
	b.Write(putFrame(journalEntry(1)))
	b.Write(delFrame(journalEntry(1).ID))
	b.Write(putFrame(journalEntry(2)))
	f.Add(b.Bytes())
	f.Add([]byte(journalMagic + "put 9999999999 1 00000000\n"))
	f.Add([]byte(journalMagic + "del 0 00000000\n\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		live, n := parseJournal(raw)
		if n < 0 || n > int64(len(raw)) {
			t.Fatalf("prefix %d of %d", n, len(raw))
		}
		for id, e := range live {
			if e.ID != id || len(e.To) == 0 || e.State != SpoolPending {
				t.Fatalf("entry %q = %+v", id, e)
			}
		}
	})
}
