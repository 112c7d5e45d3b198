package delivery

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestCleanTmp(t *testing.T) {
	data := t.TempDir()
	now := time.Now()
	write := func(rel string, age time.Duration) string {
		p := filepath.Join(data, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, now.Add(-age), now.Add(-age)); err != nil {
			t.Fatal(err)
		}
		return p
	}
	oldOut := write("outbound/tmp/old", 40*time.Hour)
	newOut := write("outbound/tmp/new", time.Hour)
	oldBox := write("mailboxes/a@pec.example.it/tmp/old", 37*time.Hour)
	delivered := write("outbound/new/old", 100*time.Hour)

	n, err := NewLocal(data).CleanTmp(StaleTmp, now)
	if err != nil || n != 2 {
		t.Fatalf("CleanTmp = %d, %v; want 2", n, err)
	}
	for p, want := range map[string]bool{oldOut: false, oldBox: false, newOut: true, delivered: true} {
		if _, err := os.Stat(p); (err == nil) != want {
			t.Errorf("%s exists = %v, want %v", p, err == nil, want)
		}
	}
	if n, err := NewLocal(t.TempDir()).CleanTmp(StaleTmp, now); err != nil || n != 0 {
		t.Errorf("empty data folder: %d, %v", n, err)
	}
}
