package delivery

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestSpool(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	s, err := OpenSpool(dir)
	if err != nil {
		t.Fatal(err)
	}
	id := "20261123103000.abcdefgh@pec.example.it"
	e := &SpoolEntry{ID: id, Record: []byte(`{"pec_id":"x"}`), From: "", To: []string{"mario@pec.example.it"}, EightBit: true,
		Data: []byte("Subject: ACCETTAZIONE\r\n\r\n{json-looking body}\n\r\n")}
	if err := s.Put(e); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != SpoolPending || string(got.Data) != string(e.Data) || got.To[0] != e.To[0] || !got.EightBit || string(got.Record) != string(e.Record) {
		t.Errorf("Get = %+v", got)
	}
	if err := s.Mark(id, SpoolOut); err != nil {
		t.Fatal(err)
	}
	states, ids, err := s.List()
	if err != nil || len(ids) != 1 || states[id] != SpoolOut {
		t.Errorf("List = %v %v %v", states, ids, err)
	}
	if fi, err := os.Stat(filepath.Join(dir, id+".out")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("file: %v %v", fi, err)
	}
	if err := s.Remove(id); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(id); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Get after Remove = %v", err)
	}
	if err := s.Remove(id); err != nil {
		t.Errorf("Remove of nothing = %v", err)
	}
	if err := s.Mark(id, SpoolOut); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Mark of nothing = %v", err)
	}
	// Any identifier names one file inside the folder, never a hidden
	// one, and comes back from List: a provider domain in Unicode, or
	// what would be a path.
	odd := []string{"20261123103000.abc@pec.città.it", "../x", ".hidden", "a/b", "a b", "x\x00", "100%"}
	for _, id := range odd {
		if err := s.Put(&SpoolEntry{ID: id, To: []string{"a@b"}, Data: []byte("x")}); err != nil {
			t.Errorf("Put(%q): %v", id, err)
		}
		if e, err := s.Get(id); err != nil || e.ID != id {
			t.Errorf("Get(%q) = %+v, %v", id, e, err)
		}
	}
	des, _ := os.ReadDir(dir)
	for _, de := range des {
		if de.Name()[0] == '.' || de.IsDir() {
			t.Errorf("file %q in the spool", de.Name())
		}
	}
	if _, ids, _ := s.List(); len(ids) != len(odd) {
		t.Errorf("List = %q, want %q", ids, odd)
	}
	for _, id := range odd {
		if err := s.Remove(id); err != nil {
			t.Errorf("Remove(%q): %v", id, err)
		}
	}
	if err := s.Put(&SpoolEntry{ID: "", To: []string{"a@b"}}); err == nil {
		t.Error("Put of an empty identifier accepted")
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "x.receipt")); err == nil {
		t.Error("a file outside the spool")
	}
	// A damaged file is an error naming it, never a panic; temporary
	// files and strangers are not listed.
	os.WriteFile(filepath.Join(dir, "bad@x.receipt"), []byte("no header"), 0o600)
	os.WriteFile(filepath.Join(dir, ".bad@x.receipt.tmp123"), []byte("{}\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "README"), []byte("x"), 0o600)
	if _, err := s.Get("bad@x"); err == nil {
		t.Error("Get of a damaged file: no error")
	}
	if _, ids, _ := s.List(); len(ids) != 1 || ids[0] != "bad@x" {
		t.Errorf("List = %v", ids)
	}
}
