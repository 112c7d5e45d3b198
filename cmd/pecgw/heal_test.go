package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/pecgw/pecgw/internal/testtool"
	"github.com/pecgw/pecgw/logstore"
)

// TestLogHealsAfterDiskFull: the log folder on a small tmpfs fills up;
// submissions get 4xx while it is full, never 250; once space is freed
// they are accepted again without a restart; one log.broken and one
// log.healed event say so; every 250 has its envelope and its records,
// and pecgw log verify passes (docs/logformat.md, "A log that heals").
func TestLogHealsAfterDiskFull(t *testing.T) {
	if testing.Short() {
		t.Skip("disk-full test: mounts a tmpfs and runs the binary")
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt).CombinedOutput(); err != nil {
		testtool.Missing(t, fmt.Sprintf("cannot mount a tmpfs (needs root): %v %s", err, out))
		return
	}
	t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() })
	const user, pwd = "mario@pec.example.it", "correct horse"
	dir, cfg, caFile, sub, _ := setUpBinary(t, "pec.example.it", "Example PEC S.p.A.", user, pwd)
	logDir := filepath.Join(mnt, "log")
	if err := os.Mkdir(logDir, 0o700); err != nil {
		t.Fatal(err)
	}
	setConfig(t, cfg, "[limits]", map[string]string{"min_auth_time": `"5ms"`})
	setConfig(t, cfg, "[log]", map[string]string{"dir": fmt.Sprintf("%q", logDir)})
	srv := &crashServer{bin: pecgwBinary(t), cfg: cfg, addrs: []string{sub}, out: &lockedBuffer{}}
	t.Cleanup(srv.kill)
	if err := srv.start(); err != nil {
		t.Fatal(err)
	}
	cl, err := smtp.DialStartTLS(sub, clientTLS(t, caFile))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.Auth(sasl.NewPlainClient("", user, pwd)); err != nil {
		t.Fatal(err)
	}
	var acked []string
	send := func(id string) error {
		msg := "Date: Wed, 02 Dec 2026 10:00:00 +0100\r\nFrom: " + user + "\r\nTo: anna@pec.altro.it\r\nSubject: prova " + id +
			"\r\nMessage-ID: <" + id + "@client>\r\n\r\nciao\r\n"
		_, err := sendOne(cl, user, []string{"anna@pec.altro.it"}, msg)
		if err == nil {
			acked = append(acked, id)
		}
		return err
	}
	for i := range 5 {
		if err := send(fmt.Sprint("before", i)); err != nil {
			t.Fatal(err)
		}
	}
	// Fill the file system of the log.
	filler := filepath.Join(mnt, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("x"), 4096)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	f.Close()
	refused := 0
	for i := range 5 {
		err := send(fmt.Sprint("full", i))
		var se *smtp.SMTPError
		if err == nil {
			t.Fatalf("250 while the log's file system is full (message full%d)", i)
		}
		if !errors.As(err, &se) || se.Code/100 != 4 {
			t.Fatalf("message full%d: %v, want a 4xx", i, err)
		}
		refused++
	}
	t.Logf("%d submissions answered 4xx while the disk was full: %v", refused, lastLine(srv.out.String()))
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	// The client retries its last message, as clients do after a 4xx.
	began := time.Now()
	for {
		err := send("full4")
		if err == nil {
			break
		}
		if time.Since(began) > 20*time.Second {
			t.Fatalf("not accepted 20 s after space was freed: %v\n%s", err, srv.out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("accepted again %s after space was freed", time.Since(began).Round(time.Millisecond))
	for i := range 5 {
		if err := send(fmt.Sprint("after", i)); err != nil {
			t.Fatal(err)
		}
	}
	cl.Quit()
	if err := srv.term(); err != nil {
		t.Fatal(err)
	}
	out := srv.out.String()
	if n, m := strings.Count(out, `"event": "log.broken"`), strings.Count(out, `"event": "log.healed"`); n != 1 || m != 1 {
		t.Errorf("%d log.broken and %d log.healed events, want one each\n%s", n, m, out)
	}
	// Every 250 has its envelope and its records.
	envelopes, _ := filepath.Glob(filepath.Join(dir, "outbound", "new", "*"))
	if len(envelopes) != len(acked) {
		t.Errorf("%d envelopes for %d submissions answered 250", len(envelopes), len(acked))
	}
	types := map[string][]logstore.Event{}
	segs, _ := logstore.ListSegments(logDir)
	torn := 0
	for _, s := range segs {
		for _, l := range segmentLines(t, filepath.Join(logDir, s.Name)) {
			types[l.rec.MsgID] = append(types[l.rec.MsgID], l.rec.Type)
			if l.rec.Type == logstore.EventTornTail {
				torn++
				t.Logf("torn-tail: %s", l.rec.Detail)
			}
		}
	}
	for _, id := range acked {
		got := fmt.Sprint(types["<"+id+"@client>"])
		if got != "[busta-trasporto accettazione handed-off]" {
			t.Errorf("%s answered 250, its records: %s", id, got)
		}
	}
	t.Logf("%d torn-tail records (a failed write that left octets to cut)", torn)
	if code, vout, errOut := runBin(t, "", "log", "verify", "--config", cfg, "--ca", caFile); code != 0 {
		t.Errorf("log verify: exit %d\n%s%s", code, vout, errOut)
	}
}
