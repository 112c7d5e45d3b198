package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/pecgw/pecgw/delivery"
	"github.com/pecgw/pecgw/gateway"
	"github.com/pecgw/pecgw/internal/testtool"
	"github.com/pecgw/pecgw/logstore"
)

// crashProc is one incarnation of pecgw serve.
type crashProc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when Wait has returned
	err  error         // Wait's result, readable after done
}

// crashServer runs pecgw serve, kills it and starts it again, always
// with the same configuration and listeners.
type crashServer struct {
	bin, cfg string
	addrs    []string
	out      *lockedBuffer // the output of every incarnation, in order
	env      []string      // added to the environment of every incarnation
	// startWait bounds how long an incarnation may take to listen (15 s
	// when 0).
	startWait time.Duration

	mu     sync.Mutex
	proc   *crashProc
	starts int
}

// start runs a new incarnation and waits until every listener accepts
// connections (at most startWait).
func (s *crashServer) start() error {
	s.mu.Lock()
	s.starts++
	n := s.starts
	s.mu.Unlock()
	fmt.Fprintf(s.out, "=== pecgw serve, start %d\n", n)
	cmd := exec.Command(s.bin, "serve", "--config", s.cfg)
	cmd.Stdout, cmd.Stderr = s.out, s.out
	if len(s.env) > 0 {
		cmd.Env = append(os.Environ(), s.env...)
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	p := &crashProc{cmd: cmd, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()
	wait := s.startWait
	if wait == 0 {
		wait = 15 * time.Second
	}
	deadline := time.Now().Add(wait)
	for _, addr := range s.addrs {
		for {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-p.done:
				return fmt.Errorf("start %d: pecgw serve exited before listening: %v", n, p.err)
			default:
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("start %d: %s does not accept connections after %v: %v", n, addr, wait, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return nil
}

// kill sends SIGKILL to the running incarnation and waits for its end.
func (s *crashServer) kill() {
	s.mu.Lock()
	p := s.proc
	s.mu.Unlock()
	if p == nil {
		return
	}
	p.cmd.Process.Kill()
	<-p.done
}

// term stops the running incarnation with SIGTERM and returns how it
// exited (SIGKILL after 35 s).
func (s *crashServer) term() error {
	s.mu.Lock()
	p := s.proc
	s.mu.Unlock()
	if p == nil {
		return errors.New("no pecgw serve running")
	}
	select {
	case <-p.done:
		return fmt.Errorf("pecgw serve had already exited: %v", p.err)
	default:
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-p.done:
		return p.err
	case <-time.After(35 * time.Second):
		// SIGQUIT: the Go runtime prints every goroutine's stack to the
		// output the test shows, so a hang says where it is.
		p.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
		return errors.New("still running 35 s after SIGTERM (goroutines dumped by SIGQUIT above)")
	}
}

// crashMsg is one unique submission of a client and what became of it.
type crashMsg struct {
	msgID    string // <crash-c-n@client>
	raw      string // the exact bytes sent on every attempt
	pecID    string // from the 250 reply
	attempts int
	refused  string // a 5xx reply
}

// crashSubmit sends raw on a fresh connection (STARTTLS on submission,
// or implicit TLS) with AUTH PLAIN and returns the PEC id of the 250.
func crashSubmit(addr string, implicit bool, tc *tls.Config, user, pwd, rcpt, raw string) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	// Bounds the whole session: a server that hangs is a failed attempt.
	conn.SetDeadline(time.Now().Add(15 * time.Second))
	var c *smtp.Client
	if implicit {
		c = smtp.NewClient(tls.Client(conn, tc))
	} else if c, err = smtp.NewClientStartTLS(conn, tc); err != nil {
		conn.Close()
		return "", err
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", user, pwd)); err != nil {
		return "", err
	}
	reply, err := sendOne(c, user, []string{rcpt}, raw)
	if err != nil {
		return "", err
	}
	c.Quit()
	id := gateway.ReplyPECID(reply)
	if id == "" || strings.ContainsAny(id, "<>") {
		return "", &smtp.SMTPError{Code: 554, Message: "250 without a PEC id: " + reply}
	}
	return id, nil
}

// TestCrashUnderLoad kills the real binary with SIGKILL at random moments
// while four clients submit unique messages, and restarts it; the clients
// retry every submission that did not get a 250, with the same bytes.
// Afterwards every submission is acknowledged, has exactly one envelope in
// outbound/ carrying the PEC id the client got, and its records in the
// log; the log verifies (docs/architecture.md invariants 1-3). It runs with
// each dedup store: the embedded one, and a real redis-server that
// outlives the killed incarnations (so leases and holds of a killed
// process are still there when it restarts).
func TestCrashUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test: runs the binary for tens of seconds")
	}
	t.Run("embedded", func(t *testing.T) { crashUnderLoad(t, "embedded") })
	t.Run("redis", func(t *testing.T) { crashUnderLoad(t, "redis") })
}

func crashUnderLoad(t *testing.T, store string) {
	const (
		domain     = "pec.example.it"
		user       = "crash@pec.example.it"
		pwd        = "crash password 1"
		rcpt       = "anna@pec.altro.it"
		clients    = 4
		kills      = 30
		maxPerCli  = 250 // bound of the messages one client creates
		loadLimit  = 90 * time.Second
		queryProcs = 8
	)
	bin := pecgwBinary(t)
	dir, cfg, caFile, sub, smtps := setUpBinary(t, domain, "Crash PEC S.p.A.", user, pwd)
	// user add writes an argon2id hash (64 MiB, t=3): with four clients
	// on a small CI machine an AUTH takes 400-700 ms, longer than most
	// gaps between two kills, so hardly a submission would finish under
	// the killer. The users file also takes bcrypt: the same password at
	// the lowest bcrypt cost leaves AUTH at the gateway's MinAuthTime
	// (300 ms) without changing what is tested.
	usersFile := filepath.Join(dir, "users")
	usersData, err := os.ReadFile(usersFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(usersData, []byte(user+":$argon2id$")) {
		t.Fatalf("users file after user add:\n%s", usersData)
	}
	cheap, err := bcrypt.GenerateFromPassword([]byte(pwd), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(usersFile, []byte(user+":"+string(cheap)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if store == "redis" {
		// A lease of 2 s instead of 30 s: a claim of a killed incarnation
		// taken before its hold expires by itself, and the clients' retries
		// wait for that; holds are resolved by the restart's
		// reconciliation, whatever the lease.
		r := testtool.StartRedis(t)
		setConfig(t, cfg, "[dedup]", map[string]string{
			"store":       `"redis"`,
			"redis_addrs": `["` + r.Addr + `"]`,
			"lease":       `"2s"`,
		})
	}
	// Every AUTH answer takes at least limits.min_auth_time (300 ms, a
	// defence against timing probes): down to 5 ms here, so that many
	// more submissions are in flight when the killer strikes.
	setConfig(t, cfg, "[limits]", map[string]string{"min_auth_time": `"5ms"`})
	if code, out, errOut := runBin(t, "", "check-config", "--config", cfg); code != 0 {
		t.Fatalf("pecgw check-config after the bcrypt hash: exit %d\n%s%s", code, out, errOut)
	}
	tc := clientTLS(t, caFile)

	srv := &crashServer{bin: bin, cfg: cfg, addrs: []string{sub, smtps}, out: &lockedBuffer{}}
	t.Cleanup(func() {
		srv.kill()
		if t.Failed() {
			out := srv.out.String()
			if len(out) > 30000 {
				out = "…" + out[len(out)-30000:]
			}
			t.Logf("pecgw serve output (all incarnations):\n%s", out)
		}
	})
	if err := srv.start(); err != nil {
		t.Fatal(err)
	}

	// Load and kills. stop ends both early: the global deadline or a
	// restart that failed.
	stop := make(chan struct{})
	var stopOnce sync.Once
	abort := func() { stopOnce.Do(func() { close(stop) }) }
	timer := time.AfterFunc(loadLimit, abort)
	defer timer.Stop()
	var (
		killsDone    atomic.Bool
		killCount    atomic.Int64
		retries      atomic.Int64
		temp4xx      atomic.Int64
		restartErr   error
		refusedMu    sync.Mutex
		refusedLines []string
	)
	msgs := make([][]*crashMsg, clients)
	start := time.Now()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer killsDone.Store(true)
		for range kills {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(100+rand.IntN(301)) * time.Millisecond):
			}
			srv.kill()
			killCount.Add(1)
			if err := srv.start(); err != nil {
				restartErr = err
				abort()
				return
			}
		}
	}()
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			addr, implicit := sub, c%2 == 1
			if implicit {
				addr = smtps
			}
			for i := 0; ; {
				select {
				case <-stop:
					return
				default:
				}
				if i == len(msgs[c]) {
					// New messages while the killer works; then only the
					// pending one is finished.
					if killsDone.Load() || i == maxPerCli {
						return
					}
					id := fmt.Sprintf("<crash-%d-%d@client>", c, i)
					msgs[c] = append(msgs[c], &crashMsg{msgID: id, raw: "Date: " + time.Now().Format(time.RFC1123Z) + "\r\n" +
						"From: " + user + "\r\nTo: " + rcpt + "\r\nSubject: crash test " + id + "\r\n" +
						"Message-ID: " + id + "\r\n\r\nmessaggio " + id + "\r\n"})
				}
				m := msgs[c][i]
				m.attempts++
				id, err := crashSubmit(addr, implicit, tc, user, pwd, rcpt, m.raw)
				var se *smtp.SMTPError
				switch {
				case err == nil:
					m.pecID = id
					i++
					continue
				case errors.As(err, &se) && se.Code >= 500:
					m.refused = fmt.Sprintf("%d %v %s", se.Code, se.EnhancedCode, se.Message)
					refusedMu.Lock()
					refusedLines = append(refusedLines, m.msgID+": "+m.refused)
					refusedMu.Unlock()
					i++
					continue
				case errors.As(err, &se) && se.Code >= 400:
					temp4xx.Add(1)
				}
				retries.Add(1)
				time.Sleep(time.Duration(20+rand.IntN(31)) * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	loadTime := time.Since(start)
	if err := srv.term(); err != nil {
		t.Errorf("pecgw serve after SIGTERM: %v (want exit status 0)", err)
	}

	// Counts of the clients.
	var all []*crashMsg
	byMsgID := map[string]*crashMsg{}
	unacked := 0
	for _, l := range msgs {
		for _, m := range l {
			all = append(all, m)
			byMsgID[m.msgID] = m
			if m.pecID == "" && m.refused == "" {
				unacked++
			}
		}
	}
	if restartErr != nil {
		t.Errorf("restart after kill %d: %v", killCount.Load(), restartErr)
	}
	for _, l := range refusedLines {
		t.Errorf("submission refused with 5xx: %s", l)
	}
	select {
	case <-stop:
		if restartErr == nil {
			t.Errorf("load not finished after %v: %d kills of %d, %d messages, %d not acknowledged", loadLimit, killCount.Load(), kills, len(all), unacked)
		}
	default:
	}
	if unacked > 0 {
		t.Errorf("%d of %d messages never acknowledged", unacked, len(all))
	}
	if k := killCount.Load(); k < 20 {
		t.Errorf("only %d kills", k)
	}

	// Envelopes in outbound/: one per acknowledged submission, carrying
	// the PEC id the client got.
	envByMsgID := map[string][]string{} // client Message-ID -> PEC ids of its envelopes
	envFiles := 0
	for _, sub := range []string{"new", "cur"} {
		files, err := filepath.Glob(filepath.Join(dir, "outbound", sub, "*"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			envFiles++
			m, err := mail.ReadMessage(bytes.NewReader(raw))
			if err != nil {
				t.Errorf("outbound/%s/%s: %v", sub, filepath.Base(f), err)
				continue
			}
			ref := m.Header.Get("X-Riferimento-Message-ID")
			pecID := strings.TrimSuffix(strings.TrimPrefix(m.Header.Get("Message-ID"), "<"), ">")
			if byMsgID[ref] == nil {
				t.Errorf("outbound/%s/%s: X-Riferimento-Message-ID %q is none of the clients' messages", sub, filepath.Base(f), ref)
				continue
			}
			envByMsgID[ref] = append(envByMsgID[ref], pecID)
		}
	}
	tmpFiles, _ := filepath.Glob(filepath.Join(dir, "outbound", "tmp", "*"))
	dupEnvelopes := 0
	for _, m := range all {
		if m.pecID == "" {
			continue
		}
		ids := envByMsgID[m.msgID]
		switch {
		case len(ids) > 1:
			dupEnvelopes++
			var logged []string
			for _, id := range ids {
				out, _ := exec.Command(bin, "log", "query", "--id", id, "--config", cfg).CombinedOutput()
				logged = append(logged, fmt.Sprintf("log of %s:\n%s", id, out))
			}
			t.Errorf("two envelopes for one Message-ID: %s has %d envelopes, PEC ids %v; the client got %s after %d attempts\n%s",
				m.msgID, len(ids), ids, m.pecID, m.attempts, strings.Join(logged, ""))
		case len(ids) == 0:
			t.Errorf("%s acknowledged with PEC id %s after %d attempts, but no envelope in outbound/", m.msgID, m.pecID, m.attempts)
		case ids[0] != m.pecID:
			t.Errorf("%s: the client got PEC id %s (after %d attempts), its envelope's Message-ID is %s", m.msgID, m.pecID, m.attempts, ids[0])
		}
	}

	// Each acknowledged submission has exactly one acceptance receipt in
	// the sender's mailbox (invariant 1: no 250 before the receipt is
	// out; a crash between the envelope and the receipt is made good by
	// the spooled receipt), and nothing is left in the spool.
	receipts := map[string]int{}
	receiptFiles := 0
	for _, sub := range []string{"new", "cur"} {
		files, _ := filepath.Glob(filepath.Join(dir, "mailboxes", user, sub, "*"))
		for _, f := range files {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			m, err := mail.ReadMessage(bytes.NewReader(raw))
			if err != nil {
				t.Errorf("mailboxes/%s/%s: %v", sub, filepath.Base(f), err)
				continue
			}
			if m.Header.Get("X-Ricevuta") == "accettazione" {
				receipts[m.Header.Get("X-Riferimento-Message-ID")]++
				receiptFiles++
			}
		}
	}
	for _, m := range all {
		if m.pecID != "" && receipts[m.msgID] != 1 {
			out, _ := exec.Command(bin, "log", "query", "--id", m.pecID, "--config", cfg).CombinedOutput()
			t.Errorf("%s acknowledged with PEC id %s after %d attempts: %d acceptance receipts in the sender's mailbox, want 1\n%s",
				m.msgID, m.pecID, m.attempts, receipts[m.msgID], out)
		}
	}
	if left := spoolLeft(t, filepath.Join(dir, "spool")); len(left) > 0 {
		t.Errorf("receipts left in the spool: %v", left)
	}

	// Each acknowledged PEC id has its records in the log.
	type queryResult struct {
		m     *crashMsg
		types []string
		err   string
	}
	jobs := make(chan *crashMsg)
	results := make(chan queryResult)
	var qwg sync.WaitGroup
	for range queryProcs {
		qwg.Add(1)
		go func() {
			defer qwg.Done()
			for m := range jobs {
				r := queryResult{m: m}
				out, err := exec.Command(bin, "log", "query", "--id", m.pecID, "--format", "json", "--config", cfg).CombinedOutput()
				if err != nil {
					r.err = fmt.Sprintf("pecgw log query --id %s: %v\n%s", m.pecID, err, out)
				} else {
					for _, line := range strings.SplitAfter(string(out), "\n") {
						if line == "" {
							continue
						}
						rec, err := logstore.Decode([]byte(line))
						if err != nil {
							r.err = fmt.Sprintf("log query --id %s: line %q: %v", m.pecID, line, err)
							break
						}
						if rec.PECID == m.pecID {
							r.types = append(r.types, string(rec.Type))
						}
					}
				}
				results <- r
			}
		}()
	}
	go func() {
		for _, m := range all {
			if m.pecID != "" {
				jobs <- m
			}
		}
		close(jobs)
		qwg.Wait()
		close(results)
	}()
	for r := range results {
		if r.err != "" {
			t.Error(r.err)
			continue
		}
		have := " " + strings.Join(r.types, " ") + " "
		for _, want := range []logstore.Event{logstore.EventBustaTrasporto, logstore.EventAccettazione} {
			if !strings.Contains(have, " "+string(want)+" ") {
				t.Errorf("%s (PEC id %s): log records %v, no %s", r.m.msgID, r.m.pecID, r.types, want)
			}
		}
	}

	// The whole log, for the counts by type.
	out, err := exec.Command(bin, "log", "query", "--since", "2000-01-01", "--format", "json", "--config", cfg).Output()
	if err != nil {
		t.Errorf("pecgw log query --since 2000-01-01: %v", err)
	}
	byType := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, logstore.MaxLine)
	for sc.Scan() {
		rec, err := logstore.Decode(append(sc.Bytes(), '\n'))
		if err != nil {
			t.Errorf("log query line %q: %v", sc.Text(), err)
			continue
		}
		byType[string(rec.Type)]++
	}
	var types []string
	for k, v := range byType {
		types = append(types, fmt.Sprintf("%s=%d", k, v))
	}
	sort.Strings(types)

	if code, out, errOut := runBin(t, "", "log", "verify", "--config", cfg, "--ca", caFile); code != 0 {
		t.Errorf("pecgw log verify: exit %d\n%s%s", code, out, errOut)
	}

	summary := fmt.Sprintf("crash test (%s store): %d messages (%d acknowledged), %d kills, %d retries, %d 4xx seen, %d envelopes in outbound (%d left in tmp), %d receipts, "+
		"%d duplicates answered, %d Message-IDs with two envelopes; load %.1fs; log records: %s",
		store, len(all), len(all)-unacked, killCount.Load(), retries.Load(), temp4xx.Load(), envFiles, len(tmpFiles), receiptFiles,
		byType[string(logstore.EventDuplicate)], dupEnvelopes, loadTime.Seconds(), strings.Join(types, " "))
	t.Log(summary)
	fmt.Println(summary)
}

// setConfig sets keys of one table of the configuration file written by
// pecgw init, which writes every key: each must be found there once.
func setConfig(t *testing.T, cfg, table string, values map[string]string) {
	t.Helper()
	data, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	in, set := false, map[string]bool{}
	for i, l := range lines {
		if strings.HasPrefix(l, "[") {
			in = strings.TrimSpace(l) == table
			continue
		}
		key, _, ok := strings.Cut(l, " = ")
		if v, want := values[key]; in && ok && want {
			lines[i] = key + " = " + v
			set[key] = true
		}
	}
	for key := range values {
		if !set[key] {
			t.Fatalf("%s: no key %s in %s", cfg, key, table)
		}
	}
	if err := os.WriteFile(cfg, []byte(strings.Join(lines, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
}

// spoolLeft lists what the spool folder dir still holds: its entries
// (the journal's and the files', as pecgw spool list reads them) and any
// other file but the journal and the lock.
func spoolLeft(t *testing.T, dir string) []string {
	t.Helper()
	sp, err := delivery.ReadSpool(dir)
	if err != nil {
		return []string{err.Error()}
	}
	states, ids, err := sp.List()
	if err != nil {
		return []string{err.Error()}
	}
	var left []string
	for _, id := range ids {
		left = append(left, id+"."+string(states[id]))
	}
	names, _ := filepath.Glob(filepath.Join(dir, "[^.]*"))
	for _, n := range names {
		switch filepath.Base(n) {
		case "pending.journal", "lock":
		default:
			if !slices.Contains(left, filepath.Base(n)) {
				left = append(left, filepath.Base(n))
			}
		}
	}
	return left
}
