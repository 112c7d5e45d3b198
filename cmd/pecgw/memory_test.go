package main

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// TestMessageMemory: 8 messages of 99 MB submitted at once over the binary
// on its defaults are all accepted, each envelope holds its message whole,
// and the daemon's peak RSS stays under 1 GiB (limits.message_memory,
// docs/configuration.md, "Message memory"; it was 4.2 GiB before). The
// bodies went through delivery.incoming and nothing is left there.
func TestMessageMemory(t *testing.T) {
	if raceEnabled {
		// The race detector multiplies memory: .ci/run runs it without.
		t.Skip("a memory bound: run without -race (go test ./cmd/pecgw -run MessageMemory$)")
	}
	if testing.Short() {
		t.Skip("800 MB of messages (-short)")
	}
	bin := pecgwBinary(t)
	dir, cfg, caFile, sub, smtps := setUpBinary(t, "pec.example.it", "Example PEC S.p.A.", "mario@pec.example.it", "correct horse")
	s := &crashServer{bin: bin, cfg: cfg, addrs: []string{sub, smtps}, out: &lockedBuffer{}}
	if err := s.start(); err != nil {
		t.Fatalf("%v\n%s", err, s.out.String())
	}
	t.Cleanup(func() {
		if err := s.term(); err != nil {
			t.Errorf("pecgw serve after SIGTERM: %v\n%s", err, s.out.String())
		}
	})
	tc := clientTLS(t, caFile)
	const n, size = 8, 99_000_000
	line := strings.Repeat("0123456789", 7) + "\r\n" // 72 octets
	body := bytes.Repeat([]byte(line), size/len(line))
	var wg sync.WaitGroup
	errs := make([]error, n)
	start := time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = sendLarge(sub, tc, fmt.Sprintf("large-%d", i), body)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("message %d: %v", i, err)
		}
	}
	hwm, _ := vmPeak(s.proc.cmd.Process.Pid)
	if hwm > 1<<30 {
		t.Errorf("peak RSS %d MiB with %d messages of %d MB at once, want under 1024 MiB", hwm>>20, n, size/1_000_000)
	}
	envs, _ := os.ReadDir(filepath.Join(dir, "outbound", "new"))
	if len(envs) != n {
		t.Errorf("%d envelopes in outbound/new/, want %d", len(envs), n)
	}
	for _, e := range envs {
		if info, err := e.Info(); err != nil || info.Size() < int64(len(body)) {
			t.Errorf("envelope %s: %v, smaller than the message it carries", e.Name(), err)
		}
	}
	if left, _ := os.ReadDir(filepath.Join(dir, "incoming")); len(left) != 0 {
		t.Errorf("%d files left in incoming/", len(left))
	}
	if !strings.Contains(s.out.String(), "message memory") {
		t.Errorf("the start does not state the message memory:\n%s", s.out.String())
	}
	t.Logf("message memory: %d messages of %d MB at once in %v; peak RSS %d MiB", n, size/1_000_000, time.Since(start).Round(time.Millisecond), hwm>>20)
}

// sendLarge submits one message with body as mario over STARTTLS.
func sendLarge(addr string, tc *tls.Config, id string, body []byte) error {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	conn.SetDeadline(time.Now().Add(10 * time.Minute))
	c, err := smtp.NewClientStartTLS(conn, tc)
	if err != nil {
		conn.Close()
		return err
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", "mario@pec.example.it", "correct horse")); err != nil {
		return fmt.Errorf("auth: %w", err)
	}
	hdr := "Date: Thu, 03 Dec 2026 10:00:00 +0100\r\nFrom: mario@pec.example.it\r\nTo: anna@pec.altro.it\r\n" +
		"Subject: grande\r\nMessage-ID: <" + id + "@client>\r\n\r\n"
	if err := c.SendMail("mario@pec.example.it", []string{"anna@pec.altro.it"}, io.MultiReader(strings.NewReader(hdr), bytes.NewReader(body))); err != nil {
		return fmt.Errorf("submit: %w", err)
	}
	return c.Quit()
}
