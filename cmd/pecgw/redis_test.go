package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/pecgw/pecgw/internal/testtool"
)

// TestTwoBinariesShareRedis runs two pecgw serve processes, each with its
// own data folder and log, sharing one real redis-server, as instances
// behind a load balancer do. The same submission reaches both at the same
// moment (a client that retried on the other instance): exactly one
// transport envelope between the two outbound folders, and both clients
// end with the same PEC identifier (the one that lost the race gets 451
// and retries). docs/architecture.md invariant 3.
func TestTwoBinariesShareRedis(t *testing.T) {
	const (
		domain = "pec.example.it"
		user   = "mario@pec.example.it"
		pwd    = "two instances 1"
		rcpt   = "anna@pec.altro.it"
		rounds = 5
	)
	r := testtool.StartRedis(t)
	bin := pecgwBinary(t)
	type instance struct {
		dir  string
		srv  *crashServer
		addr string
		tc   *tls.Config
	}
	var inst [2]*instance
	for i := range inst {
		dir, cfg, caFile, sub, smtps := setUpBinary(t, domain, fmt.Sprintf("Istanza %d S.p.A.", i), user, pwd)
		setConfig(t, cfg, "[dedup]", map[string]string{"store": `"redis"`, "redis_addrs": `["` + r.Addr + `"]`})
		in := &instance{dir: dir, addr: sub, tc: clientTLS(t, caFile),
			srv: &crashServer{bin: bin, cfg: cfg, addrs: []string{sub, smtps}, out: &lockedBuffer{}}}
		t.Cleanup(func() {
			in.srv.kill()
			if t.Failed() {
				t.Logf("instance %d output:\n%s", i, in.srv.out.String())
			}
		})
		if err := in.srv.start(); err != nil {
			t.Fatal(err)
		}
		inst[i] = in
	}
	for round := range rounds {
		msgID := fmt.Sprintf("<twice-%d@client>", round)
		raw := "Date: " + time.Now().Format(time.RFC1123Z) + "\r\nFrom: " + user + "\r\nTo: " + rcpt +
			"\r\nSubject: two instances " + msgID + "\r\nMessage-ID: " + msgID + "\r\n\r\nuna volta sola\r\n"
		ids := make([]string, 2)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i, in := range inst {
			wg.Go(func() {
				<-start
				deadline := time.Now().Add(30 * time.Second)
				for {
					id, err := crashSubmit(in.addr, false, in.tc, user, pwd, rcpt, raw)
					var se *smtp.SMTPError
					if err == nil {
						ids[i] = id
						return
					}
					if !errors.As(err, &se) || se.Code/100 != 4 || time.Now().After(deadline) {
						t.Errorf("round %d, instance %d: %v", round, i, err)
						return
					}
					time.Sleep(50 * time.Millisecond) // the client's retry
				}
			})
		}
		close(start)
		wg.Wait()
		if ids[0] == "" || ids[0] != ids[1] {
			t.Fatalf("round %d: PEC ids %q, want one and the same", round, ids)
		}
		envelopes := 0
		for _, in := range inst {
			envelopes += countEnvelopes(t, in.dir, msgID)
		}
		if envelopes != 1 {
			t.Fatalf("round %d: %d envelopes for %s between the two instances, want 1", round, envelopes, msgID)
		}
	}
	for i, in := range inst {
		if err := in.srv.term(); err != nil {
			t.Errorf("instance %d after SIGTERM: %v", i, err)
		}
		if code, out, errOut := runBin(t, "", "log", "verify", "--dir", filepath.Join(in.dir, "log"), "--ca", filepath.Join(in.dir, "pki", "ca.pem")); code != 0 {
			t.Errorf("instance %d: pecgw log verify: exit %d\n%s%s", i, code, out, errOut)
		}
	}
}

// countEnvelopes counts the transport envelopes in dir/outbound whose
// X-Riferimento-Message-ID is msgID.
func countEnvelopes(t *testing.T, dir, msgID string) int {
	t.Helper()
	n := 0
	for _, sub := range []string{"new", "cur"} {
		files, _ := filepath.Glob(filepath.Join(dir, "outbound", sub, "*"))
		for _, f := range files {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			head, _, _ := strings.Cut(string(raw), "\r\n\r\n")
			if strings.Contains(head, "\r\nX-Riferimento-Message-ID: "+msgID+"\r\n") {
				n++
			}
		}
	}
	return n
}
