package main

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/mail"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/pecgw/pecgw/internal/durable"
	"github.com/pecgw/pecgw/internal/lazyfs"
	"github.com/pecgw/pecgw/internal/testtool"
	"github.com/pecgw/pecgw/logstore"
)

// TestPowerLoss cuts the power under the real binary: its whole state
// (log, receipt spool, maildirs, embedded dedup store) lives on lazyfs, a
// FUSE file system that keeps apart what was not made durable (file data
// since the file's last fsync, folder entries since the folder's last
// fsync) and throws exactly that away at a cut, as the LazyFS layer of
// Jepsen's power-loss tests does. SIGKILL alone (TestCrashUnderLoad) could
// not find a missing fsync: the page cache survives it.
//
// Sixteen clients submit unique messages and retry each (same bytes, so
// the same Message-ID) until they get a 2xx or 5xx; after every cut each
// client also sends its last acknowledged message again, as a client that
// lost the reply would, and must be told the same PEC identifier. After
// every restart, and at the end: every submission answered 250 has exactly
// one envelope in outbound/ (with the identifier the client got), exactly
// one acceptance receipt in the sender's mailbox (the restart delivers a
// receipt still spooled before it listens), and its records in the log up
// to the hand-off; no Message-ID has two envelopes; every envelope has its
// write-ahead records (invariant 2). pecgw log verify passes on the log
// every cut leaves (what the restart recovers from) and at the end, when
// the spool is also empty (docs/architecture.md, invariants 1-3).
//
// Then the test proves it has teeth: with each fsync of the acceptance
// path skipped in turn (a binary built with -tags pecgw_faults,
// PECGW_SKIP_SYNC, internal/durable), the same run must find a violation.
func TestPowerLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("power-loss test: runs the binary through tens of power cuts")
	}
	if err := lazyfs.Available(); err != nil {
		testtool.Missing(t, "FUSE is not available ("+err.Error()+"); on Debian: apt-get install fuse3")
	}
	t.Run("cuts", func(t *testing.T) {
		r := powerRun(t, pecgwBinary(t), powerOpts{cuts: 24})
		for _, v := range r.violations {
			t.Error(v)
		}
		if r.cuts < 20 {
			t.Errorf("only %d power cuts", r.cuts)
		}
		summary := r.summary()
		t.Log(summary)
		fmt.Println(summary)
	})
	t.Run("teeth", func(t *testing.T) {
		bin := buildPecgw(t, "pecgw_faults")
		for _, p := range durable.Path {
			t.Run(string(p), func(t *testing.T) {
				r := powerRun(t, bin, powerOpts{cuts: 30, skip: p, stopAtFirst: true})
				if len(r.violations) == 0 {
					t.Errorf("with the fsync %s skipped, %d power cuts found nothing: the test cannot tell it is needed (%s)", p, r.cuts, r.summary())
					return
				}
				line := fmt.Sprintf("power-loss test without %s: caught after %d cuts: %s", p, r.cuts, firstLine(r.violations[0]))
				t.Log(line)
				fmt.Println(line)
			})
		}
	})
}

type powerOpts struct {
	cuts        int
	skip        durable.Point // the fsync the binary skips; "" for none
	stopAtFirst bool          // stop at the first violation
}

type powerResult struct {
	messages, acked, cuts, retries, resent  int
	cutMidway, foundOut, foundNotOut        int // transactions a cut left half done, as the restarts reconciled them
	envelopes, receipts, twoEnvelopes, lost int
	thrown                                  lazyfs.Lost
	load, slowestStart                      time.Duration
	violations                              []string
}

func (r *powerResult) summary() string {
	return fmt.Sprintf("power-loss test: %d submissions, %d answered 250, %d power cuts (thrown away: %d files, %d octets, %d folder entries; "+
		"%d transactions cut after their write-ahead records: %d with the envelope out, %d not), "+
		"%d retries, %d re-sent after a cut, %d envelopes, %d receipts, duplicates=%d, lost=%d; load %.1fs, slowest restart %.1fs",
		r.messages, r.acked, r.cuts, r.thrown.Files, r.thrown.Bytes, r.thrown.Entries, r.cutMidway, r.foundOut, r.foundNotOut,
		r.retries, r.resent, r.envelopes, r.receipts, r.twoEnvelopes, r.lost, r.load.Seconds(), r.slowestStart.Seconds())
}

func firstLine(s string) string { l, _, _ := strings.Cut(s, "\n"); return l }

func lastLine(s string) string {
	s = strings.TrimRight(s, "\n")
	return s[strings.LastIndexByte(s, '\n')+1:]
}

// reconciled adds up the counts of the daemon's log.reconciled lines.
func reconciled(out string) (incomplete, found, notFound int) {
	field := func(line, name string) int {
		_, rest, ok := strings.Cut(line, `"`+name+`": `)
		if !ok {
			return 0
		}
		n := 0
		fmt.Sscanf(rest, "%d", &n)
		return n
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "log.reconciled") {
			incomplete += field(line, "incomplete")
			found += field(line, "found")
			notFound += field(line, "not_found")
		}
	}
	return incomplete, found, notFound
}

// powerMsg is one unique submission of a client.
type powerMsg struct {
	msgID, raw string
	pecID      string // from the 250
}

func powerRun(t *testing.T, bin string, o powerOpts) *powerResult {
	const (
		domain  = "pec.example.it"
		user    = "power@pec.example.it"
		pwd     = "power password 1"
		rcpt    = "anna@pec.altro.it"
		clients = 16
		drain   = 30 * time.Second
	)
	// The backing folder on tmpfs where there is one: FUSE round trips are
	// the cost, not the undo log (internal/lazyfs).
	base := ""
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		base = "/dev/shm"
	}
	backing, err := os.MkdirTemp(base, "pecgw-power-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(backing) })
	dir, _, caFile, sub, smtps := setUpBinaryIn(t, backing, domain, "Power PEC S.p.A.", user, pwd)
	// The cheapest bcrypt hash and 5 ms AUTH, as in TestCrashUnderLoad, so
	// that many submissions are in flight when the power goes; segments of
	// 1 MiB, so that seals and new segments come under the cuts too.
	cheap, err := bcrypt.GenerateFromPassword([]byte(pwd), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "users"), []byte(user+":"+string(cheap)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	setConfig(t, filepath.Join(dir, "pecgw.toml"), "[limits]", map[string]string{"min_auth_time": `"5ms"`})
	setConfig(t, filepath.Join(dir, "pecgw.toml"), "[log]", map[string]string{"max_segment_mb": "1"})

	mnt := t.TempDir()
	fsys, err := lazyfs.Mount(backing, mnt)
	if err != nil {
		t.Fatal(err)
	}
	// A start reconciles first, reading the log and the outbound maildir
	// through FUSE: slow on a loaded machine under -race.
	srv := &crashServer{bin: bin, cfg: filepath.Join(mnt, "data", "pecgw.toml"), addrs: []string{sub, smtps}, out: &lockedBuffer{}, startWait: time.Minute}
	if o.skip != "" {
		srv.env = []string{"PECGW_SKIP_SYNC=" + string(o.skip)}
	}
	t.Cleanup(func() {
		srv.kill()
		if err := fsys.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
		if t.Failed() {
			out := srv.out.String()
			if len(out) > 20000 {
				out = "…" + out[len(out)-20000:]
			}
			t.Logf("pecgw serve output (all incarnations):\n%s", out)
		}
	})
	res := &powerResult{}
	if err := srv.start(); err != nil {
		t.Fatal(err)
	}
	tc := clientTLS(t, caFile)

	var (
		mu        sync.Mutex
		acked     = map[string]string{} // client Message-ID -> the PEC id of its 250
		all       []*powerMsg
		stop      = make(chan struct{})
		stopOnce  sync.Once
		cutsDone  atomic.Bool
		gen       atomic.Int64 // incremented by every restart
		retries   atomic.Int64
		resent    atomic.Int64
		serverErr error
	)
	halt := func() { stopOnce.Do(func() { close(stop) }) }
	violate := func(format string, args ...any) {
		mu.Lock()
		res.violations = append(res.violations, fmt.Sprintf(format, args...))
		mu.Unlock()
		if o.stopAtFirst {
			halt()
		}
	}
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	// send submits m until a 2xx or 5xx (or stop), and returns the PEC id.
	send := func(addr string, implicit bool, m *powerMsg) (string, bool) {
		for !stopped() {
			id, err := crashSubmit(addr, implicit, tc, user, pwd, rcpt, m.raw)
			var se *smtp.SMTPError
			switch {
			case err == nil:
				return id, true
			case errors.As(err, &se) && se.Code >= 500:
				violate("%s refused: %d %v %s", m.msgID, se.Code, se.EnhancedCode, se.Message)
				return "", false
			}
			retries.Add(1)
			time.Sleep(time.Duration(10+rand.IntN(21)) * time.Millisecond)
		}
		return "", false
	}

	start := time.Now()
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			addr, implicit := sub, c%2 == 1
			if implicit {
				addr = smtps
			}
			// resend sends m, acknowledged before a cut, again: a client
			// that lost the reply must get the same identifier.
			resend := func(m *powerMsg) bool {
				id, ok := send(addr, implicit, m)
				if ok {
					resent.Add(1)
					if id != m.pecID {
						violate("%s was answered %s, and after a power cut %s: certified twice", m.msgID, m.pecID, id)
					}
				}
				return ok
			}
			var last *powerMsg
			seen := gen.Load()
			for i := 0; !stopped(); i++ {
				if g := gen.Load(); g != seen && last != nil {
					seen = g
					if !resend(last) {
						return
					}
				}
				if cutsDone.Load() {
					return
				}
				id := fmt.Sprintf("<power-%d-%d@client>", c, i)
				m := &powerMsg{msgID: id, raw: "Date: " + time.Now().Format(time.RFC1123Z) + "\r\nFrom: " + user + "\r\nTo: " + rcpt +
					"\r\nSubject: power cut " + id + "\r\nMessage-ID: " + id + "\r\n\r\nmessaggio " + id + "\r\n"}
				mu.Lock()
				all = append(all, m)
				mu.Unlock()
				g0, before := gen.Load(), last
				pecID, ok := send(addr, implicit, m)
				if !ok {
					return
				}
				mu.Lock()
				m.pecID, acked[m.msgID] = pecID, pecID
				mu.Unlock()
				last = m
				if g := gen.Load(); g != g0 && before != nil {
					// m was in flight across a cut: the one acknowledged
					// before it is the one to send again.
					seen = g
					if !resend(before) {
						return
					}
				}
			}
		}()
	}

	// The power cuts: after 150-600 ms of load, SIGKILL, throw away what
	// was not durable, start again on what is left, check.
	for res.cuts < o.cuts && !stopped() {
		select {
		case <-stop:
		case <-time.After(time.Duration(150+rand.IntN(451)) * time.Millisecond):
		}
		if stopped() {
			break
		}
		srv.kill()
		lost, err := fsys.PowerCut()
		if err != nil {
			serverErr = fmt.Errorf("power cut %d: %w", res.cuts+1, err)
			halt()
			break
		}
		res.cuts++
		res.thrown.Files += lost.Files
		res.thrown.Bytes += lost.Bytes
		res.thrown.Entries += lost.Entries
		// The log as the cut left it, which the restart recovers from,
		// against its witness (log.witness_dir): a witness is written after
		// its checkpoint is durable, so no cut leaves the log behind it.
		// What a cut may leave is the last batch before its checkpoint:
		// verify says so (exit 1), and nothing else.
		if code, out, errOut := runBin(t, "", "log", "verify", "--config", filepath.Join(dir, "pecgw.toml"), "--ca", caFile); code != 0 && !onlyUnsignedTail(out) {
			violate("pecgw log verify after power cut %d: exit %d\n%s%s", res.cuts, code, out, errOut)
		}
		began := time.Now()
		if err := srv.start(); err != nil {
			violate("restart after power cut %d: %v: %s", res.cuts, err, lastLine(srv.out.String()))
			halt()
			break
		}
		res.slowestStart = max(res.slowestStart, time.Since(began))
		gen.Add(1)
		mu.Lock()
		snapshot := make(map[string]string, len(acked))
		for k, v := range acked {
			snapshot[k] = v
		}
		mu.Unlock()
		for _, v := range checkPowerState(dir, user, snapshot) {
			violate("after power cut %d: %s", res.cuts, v)
		}
	}
	cutsDone.Store(true)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(drain):
		violate("clients still not answered %v after the last cut", drain)
		halt()
		<-done
	}
	halt()
	res.load = time.Since(start)
	if serverErr != nil {
		t.Fatal(serverErr)
	}
	res.messages, res.acked, res.retries, res.resent = len(all), len(acked), int(retries.Load()), int(resent.Load())
	res.cutMidway, res.foundOut, res.foundNotOut = reconciled(srv.out.String())
	if o.stopAtFirst && len(res.violations) > 0 {
		return res
	}
	if err := srv.term(); err != nil {
		violate("pecgw serve after SIGTERM: %v (want exit status 0)", err)
	}
	for _, m := range all {
		if m.pecID == "" {
			violate("%s never answered", m.msgID)
		}
	}
	st := readPowerState(dir, user)
	res.envelopes, res.receipts = st.envelopeFiles, st.receiptFiles
	for _, ids := range st.envelopes {
		if len(ids) > 1 {
			res.twoEnvelopes++
		}
	}
	for _, v := range st.check(acked) {
		violate("at the end: %s", v)
		if strings.Contains(v, "acknowledged") {
			res.lost++
		}
	}
	if left := spoolLeft(t, filepath.Join(dir, "spool")); len(left) > 0 {
		violate("receipts left in the spool: %v", left)
	}
	if code, out, errOut := runBin(t, "", "log", "verify", "--config", filepath.Join(dir, "pecgw.toml"), "--ca", caFile); code != 0 || !strings.Contains(out, "the log holds it") {
		violate("pecgw log verify: exit %d\n%s%s", code, out, errOut)
	}
	return res
}

// onlyUnsignedTail reports whether the report of pecgw log verify finds
// nothing wrong but records after the last checkpoint.
func onlyUnsignedTail(out string) bool {
	return strings.Contains(out, "are not covered by a signed checkpoint") && strings.Count(out, "damage") == 1 &&
		!strings.Contains(out, "MISSING") && !strings.Contains(out, "not checked:")
}

// powerState is what the data folder holds, read from the backing folder.
type powerState struct {
	envelopes                   map[string][]string // client Message-ID -> PEC ids of its envelopes in outbound/
	receipts                    map[string]int      // client Message-ID -> acceptance receipts in the sender's mailbox
	states                      map[string][]logstore.TxState
	envelopeFile                map[string]string // PEC id -> its envelope's file, for messages
	envelopeFiles, receiptFiles int
	problems                    []string
}

func readPowerState(dir, user string) *powerState {
	st := &powerState{envelopes: map[string][]string{}, receipts: map[string]int{}, states: map[string][]logstore.TxState{}, envelopeFile: map[string]string{}}
	read := func(folder string, fn func(file string, h mail.Header)) {
		for _, sub := range []string{"new", "cur"} {
			files, _ := filepath.Glob(filepath.Join(dir, folder, sub, "*"))
			for _, f := range files {
				raw, err := os.ReadFile(f)
				if err != nil {
					st.problems = append(st.problems, fmt.Sprintf("%s: %v", f, err))
					continue
				}
				m, err := mail.ReadMessage(bytes.NewReader(raw))
				if err != nil {
					st.problems = append(st.problems, fmt.Sprintf("%s/%s/%s: unreadable (%d octets: %v)", folder, sub, filepath.Base(f), len(raw), err))
					continue
				}
				fn(folder+"/"+sub+"/"+filepath.Base(f), m.Header)
			}
		}
	}
	read("outbound", func(file string, h mail.Header) {
		ref, id := h.Get("X-Riferimento-Message-ID"), strings.Trim(h.Get("Message-ID"), "<>")
		if ref == "" || id == "" {
			st.problems = append(st.problems, file+": an envelope without X-Riferimento-Message-ID or Message-ID")
			return
		}
		st.envelopes[ref] = append(st.envelopes[ref], id)
		st.envelopeFile[id] = file
		st.envelopeFiles++
	})
	read(filepath.Join("mailboxes", user), func(file string, h mail.Header) {
		if h.Get("X-Ricevuta") == "accettazione" {
			st.receipts[h.Get("X-Riferimento-Message-ID")]++
			st.receiptFiles++
		}
	})
	err := logstore.Query(filepath.Join(dir, "log"), logstore.Filter{}, func(h logstore.Hit) error {
		if tx := h.Record.Tx(); tx.State != "" {
			st.states[h.Record.PECID] = append(st.states[h.Record.PECID], tx.State)
		}
		return nil
	})
	if err != nil {
		st.problems = append(st.problems, "reading the log: "+err.Error())
	}
	return st
}

// check returns what st breaks, given the submissions acknowledged.
func (st *powerState) check(acked map[string]string) []string {
	out := append([]string(nil), st.problems...)
	var msgs []string
	for m := range st.envelopes {
		msgs = append(msgs, m)
	}
	sort.Strings(msgs)
	for _, m := range msgs {
		if ids := st.envelopes[m]; len(ids) > 1 {
			out = append(out, fmt.Sprintf("%s has %d envelopes: %v", m, len(ids), ids))
		}
		for _, id := range st.envelopes[m] {
			if !containsState(st.states[id], logstore.TxWrittenAhead) {
				out = append(out, fmt.Sprintf("envelope %s (%s) is out without its write-ahead records in the log (invariant 2)", id, st.envelopeFile[id]))
			}
		}
	}
	for m, n := range st.receipts {
		if n > 1 {
			out = append(out, fmt.Sprintf("%s has %d acceptance receipts", m, n))
		}
	}
	for m, id := range acked {
		switch {
		case len(st.envelopes[m]) == 0:
			out = append(out, fmt.Sprintf("%s acknowledged with %s, and no envelope in outbound/", m, id))
		case st.envelopes[m][0] != id:
			out = append(out, fmt.Sprintf("%s acknowledged with %s, and its envelope is %s", m, id, st.envelopes[m][0]))
		}
		if st.receipts[m] == 0 {
			out = append(out, fmt.Sprintf("%s acknowledged with %s, and no acceptance receipt in the sender's mailbox", m, id))
		}
		if s := st.states[id]; !containsState(s, logstore.TxReceiptOut) {
			out = append(out, fmt.Sprintf("%s acknowledged with %s, and its log records reach %v, not receipt-out", m, id, s))
		}
	}
	sort.Strings(out[len(st.problems):])
	return out
}

func containsState(l []logstore.TxState, s logstore.TxState) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// checkPowerState reads and checks the data folder after a restart.
func checkPowerState(dir, user string, acked map[string]string) []string {
	return readPowerState(dir, user).check(acked)
}
