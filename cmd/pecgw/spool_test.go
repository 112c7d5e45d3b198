package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/pecgw/pecgw/delivery"
)

// TestSpoolCommand: list shows the waiting receipts with what to do;
// confirm and reject record the operator's decision on an unconfirmed one
// (the daemon then acts on it) and refuse any other.
func TestSpoolCommand(t *testing.T) {
	cfg := newInitialized(t)
	sp, err := delivery.OpenSpool(filepath.Join(filepath.Dir(cfg), "spool"))
	if err != nil {
		t.Fatal(err)
	}
	const id = "20261123103000.abcdefgh@pec.example.it"
	rec := `{"time":"2026-11-23T10:30:00+01:00","type":"handed-off","pec_id":"` + id + `","sender":"mario@pec.example.it","subject":"fattura 12"}`
	if err := sp.Put(&delivery.SpoolEntry{ID: id, Record: []byte(rec), To: []string{"mario@pec.example.it"}, Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := runCmd(t, "spool", "confirm", id, "--config", cfg); code != 1 || !strings.Contains(errOut, "not unconfirmed") {
		t.Errorf("confirm of a pending receipt: exit %d %s", code, errOut)
	}
	if err := sp.Mark(id, delivery.SpoolUnconfirmed); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runCmd(t, "spool", "list", "--config", cfg)
	if code != 0 || !strings.Contains(out, id) || !strings.Contains(out, "unconfirmed (") ||
		!strings.Contains(out, "mario@pec.example.it") || !strings.Contains(out, `"fattura 12"`) {
		t.Fatalf("list: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut := runCmd(t, "spool", "confirm", id, "--config", cfg); code != 0 || !strings.Contains(out, "delivers it within a minute") {
		t.Fatalf("confirm: exit %d\n%s%s", code, out, errOut)
	}
	if e, err := sp.Get(id); err != nil || e.State != delivery.SpoolConfirmed {
		t.Errorf("after confirm: %+v, %v; want confirmed", e, err)
	}
	if code, _, errOut := runCmd(t, "spool", "reject", id, "--config", cfg); code != 1 || !strings.Contains(errOut, "not unconfirmed") {
		t.Errorf("reject of a confirmed receipt: exit %d %s", code, errOut)
	}
	if err := sp.Mark(id, delivery.SpoolUnconfirmed); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := runCmd(t, "spool", "reject", id, "--config", cfg); code != 0 || !strings.Contains(out, "drops it") {
		t.Fatalf("reject: exit %d\n%s%s", code, out, errOut)
	}
	if e, err := sp.Get(id); err != nil || e.State != delivery.SpoolRejected {
		t.Errorf("after reject: %+v, %v; want rejected", e, err)
	}
	if code, _, errOut := runCmd(t, "spool", "confirm", "20261123103000.nosuch@pec.example.it", "--config", cfg); code != 1 || !strings.Contains(errOut, "no entry") {
		t.Errorf("confirm of nothing: exit %d %s", code, errOut)
	}
	for _, args := range [][]string{{"spool"}, {"spool", "drop", id}, {"spool", "list", "x"}, {"spool", "confirm"}} {
		if code, _, _ := runCmd(t, append(args, "--config", cfg)...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
}
