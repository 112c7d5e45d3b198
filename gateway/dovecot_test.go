package gateway

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pecgw/pecgw/internal/testtool"
)

// The Dovecot client against a real Dovecot (internal/testtool), and
// against fake servers for what a real one cannot be made to do.

// dovecotUsers are the real Dovecot's users.
var dovecotUsers = map[string]string{
	"alice@example.it": "correct horse battery staple",
	"tab@example.it":   "pass\tword with a tab",
	"utf8@example.it":  "pässwörd-€-😀-ĳ",
	"ctl@example.it":   "a\x02b\x1b[0mc\x7f d",
	"crlf@example.it":  "pass\r\nword",
	"soh@example.it":   "pass\x01word",
	"off@example.it":   "disabled but right",
	"nets@example.it":  "only from the documentation network",
}

var dovecotFields = map[string]string{
	"off@example.it":  "nologin reason=Disabled",
	"nets@example.it": "allow_nets=192.0.2.0/24,2001:db8::/32",
}

// someClient is a DovecotInfo as the gateway sends it.
var someClient = DovecotInfo{ClientIP: "198.51.100.7", ClientPort: 40000, LocalIP: "192.0.2.1", LocalPort: 587, Secured: true}

// countDials makes d count its connections.
func countDials(d *Dovecot) *atomic.Int32 {
	var n atomic.Int32
	dial := d.dial
	d.dial = func(ctx context.Context) (net.Conn, error) {
		n.Add(1)
		return dial(ctx)
	}
	return &n
}

// closeDovecot closes d and checks that none of its goroutines is left.
func closeDovecot(t *testing.T, d *Dovecot) {
	t.Helper()
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	checkNoDovecotGoroutines(t)
}

// checkNoDovecotGoroutines fails when a goroutine of a Dovecot client
// (every one starts in spawnLocked) is alive. Dovecot tests are not
// parallel: a client alive here was not closed, or Close did not wait.
// Close returns when the goroutines have called wg.Done, from a defer:
// the last ones may still be unwinding for a moment.
func checkNoDovecotGoroutines(t *testing.T) {
	t.Helper()
	var left string
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if left = dovecotGoroutine(); left == "" {
			return
		}
	}
	t.Fatalf("a Dovecot client's goroutine is still running:\n%s", left)
}

func dovecotGoroutine() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "gateway.(*Dovecot).spawnLocked") {
			return g
		}
	}
	return ""
}

// pendingDovecot is the number of requests waiting for their answer.
func pendingDovecot(d *Dovecot) int {
	d.mu.Lock()
	c := d.conn
	d.mu.Unlock()
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending)
}

func verifyWant(t *testing.T, d *Dovecot, user, password string, info DovecotInfo, want bool) {
	t.Helper()
	ok, err := d.Verify(context.Background(), user, password, info)
	if err != nil || ok != want {
		t.Fatalf("Verify(%q) = %v, %v; want %v, nil", user, ok, err, want)
	}
}

func TestDovecotVerify(t *testing.T) {
	dc := testtool.StartDovecotFields(t, dovecotUsers, dovecotFields)
	d := NewDovecot(DovecotOptions{Address: dc.Socket(), Timeout: 5 * time.Second})
	dials := countDials(d)
	mapped := someClient
	mapped.ClientIP = "::ffff:192.0.2.99"
	v6 := someClient
	v6.ClientIP = "[2001:db8::5]"
	cases := []struct {
		name, user, password string
		info                 DovecotInfo
		want                 bool
	}{
		{"right", "alice@example.it", dovecotUsers["alice@example.it"], someClient, true},
		{"right, no client info", "alice@example.it", dovecotUsers["alice@example.it"], DovecotInfo{}, true},
		{"wrong", "alice@example.it", "correct horse battery stapl", someClient, false},
		{"wrong case", "alice@example.it", "Correct horse battery staple", someClient, false},
		{"empty password", "alice@example.it", "", someClient, false},
		{"unknown user", "nobody@example.it", "correct horse battery staple", someClient, false},
		{"empty user", "", "correct horse battery staple", someClient, false},
		// Dovecot refuses a password with \001, TAB, CR or LF, right
		// or not (auth-request.c password_has_illegal_chars: "Attempted
		// login with password having illegal chars"): a verdict, and
		// the connection survives it.
		{"tab", "tab@example.it", dovecotUsers["tab@example.it"], someClient, false},
		{"crlf", "crlf@example.it", dovecotUsers["crlf@example.it"], someClient, false},
		{"soh", "soh@example.it", dovecotUsers["soh@example.it"], someClient, false},
		{"tab wrong", "tab@example.it", "pass word with a tab", someClient, false},
		{"utf-8", "utf8@example.it", dovecotUsers["utf8@example.it"], someClient, true},
		{"utf-8 other normalization", "utf8@example.it", "pa\u0308sswo\u0308rd-€-😀-ĳ", someClient, false},
		{"control characters", "ctl@example.it", dovecotUsers["ctl@example.it"], someClient, true},
		{"nologin, right password", "off@example.it", dovecotUsers["off@example.it"], someClient, false},
		{"nologin, wrong password", "off@example.it", "wrong", someClient, false},
		{"allow_nets, inside", "nets@example.it", dovecotUsers["nets@example.it"], DovecotInfo{ClientIP: "192.0.2.200"}, true},
		{"allow_nets, inside mapped", "nets@example.it", dovecotUsers["nets@example.it"], mapped, true},
		{"allow_nets, inside v6", "nets@example.it", dovecotUsers["nets@example.it"], v6, true},
		{"allow_nets, outside", "nets@example.it", dovecotUsers["nets@example.it"], someClient, false},
		{"NUL in password", "alice@example.it", "correct horse\x00battery staple", someClient, false},
		{"NUL in user", "alice@example.it\x00", "correct horse battery staple", someClient, false},
	}
	// In parallel, over the one connection: Dovecot answers a FAIL
	// half a second late (testtool's dovecotConf), an OK at once.
	t.Run("cases", func(t *testing.T) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				verifyWant(t, d, c.user, c.password, c.info, c.want)
			})
		}
	})
	if n := dials.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
	closeDovecot(t, d)
	// allow_nets proves that rip reaches Dovecot and is parsed; the
	// log shows the rest.
	if log := dc.Log(); !strings.Contains(log, "passwd-file(nets@example.it,198.51.100.7)") {
		t.Errorf("Dovecot's log does not show the client's address:\n%s", log)
	}
}

func TestDovecotConcurrent(t *testing.T) {
	dc := testtool.StartDovecot(t, dovecotUsers)
	d := NewDovecot(DovecotOptions{Address: dc.Socket(), Timeout: 5 * time.Second})
	dials := countDials(d)
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := range 50 {
		wg.Go(func() {
			user := "alice@example.it"
			password, want := dovecotUsers[user], true
			switch i % 5 {
			case 1:
				password, want = password+strconv.Itoa(i), false
			case 2:
				user = "utf8@example.it"
				password = dovecotUsers[user]
			case 3:
				user, want = "nobody"+strconv.Itoa(i)+"@example.it", false
			}
			info := someClient
			info.ClientPort = 40000 + i
			ok, err := d.Verify(context.Background(), user, password, info)
			if err != nil || ok != want {
				errs <- fmt.Errorf("request %d (%s): %v, %v; want %v, nil", i, user, ok, err, want)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
	closeDovecot(t, d)
}

// TestDovecotNoPenalty: Dovecot holds a request from a client IP that
// failed recently for 2, 4, 8 s (auth-penalty.c), unless it says
// no-penalty; with the penalty the second request here would take 2 s.
func TestDovecotNoPenalty(t *testing.T) {
	dc := testtool.StartDovecot(t, dovecotUsers)
	d := NewDovecot(DovecotOptions{Address: dc.Socket(), Timeout: 5 * time.Second})
	for i, pw := range []string{"wrong 1", "wrong 2", "wrong 3", dovecotUsers["alice@example.it"]} {
		start := time.Now()
		ok, err := d.Verify(context.Background(), "alice@example.it", pw, someClient)
		if took := time.Since(start); err != nil || ok != (i == 3) || took > 1500*time.Millisecond {
			t.Fatalf("request %d: %v, %v after %v; want %v, nil within 1.5 s", i, ok, err, took, i == 3)
		}
	}
	closeDovecot(t, d)
}

// TestDovecotLongest: Dovecot takes a request line of 16384 bytes, its
// LF included, and drops the connection at a longer one (checked by
// hand: "BUG: Auth client 0 sent us more than 16384 bytes"); the client
// sends the longest and refuses the longer, without losing the
// connection.
func TestDovecotLongest(t *testing.T) {
	const user = "long@example.it"
	var password string
	info := someClient
	probe := NewDovecot(DovecotOptions{Address: "unused"})
	// The first request of a connection has id 1; base64 grows by 4
	// bytes, the local port's digits fill the gap. One byte more must
	// not fit: no base64 padding.
search:
	for n := 12000; n < 12400; n++ {
		for _, port := range []int{0, 1, 10, 100, 1000, 10000} {
			info.LocalPort = port
			if len(probe.authLine(1, user, strings.Repeat("p", n), info)) == dovecotMaxRequest && (2+len(user)+n)%3 == 0 {
				password = strings.Repeat("p", n-2) + "ü" // 2 bytes in UTF-8
				break search
			}
		}
	}
	if password == "" {
		t.Fatal("found no password that makes a request of exactly 16384 bytes")
	}
	if line := probe.authLine(1, user, password+"x", info); line != nil {
		t.Fatalf("a %d-byte request line is built", len(line))
	}
	dc := testtool.StartDovecot(t, map[string]string{user: password, "alice@example.it": dovecotUsers["alice@example.it"]})
	d := NewDovecot(DovecotOptions{Address: dc.Socket(), Timeout: 5 * time.Second})
	dials := countDials(d)
	verifyWant(t, d, user, password, info, true)
	verifyWant(t, d, user, password+"x", info, false)
	verifyWant(t, d, user, strings.Repeat("p", 20000), info, false)
	verifyWant(t, d, "alice@example.it", dovecotUsers["alice@example.it"], info, true)
	if n := dials.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
	closeDovecot(t, d)
}

// TestDovecotRestart: a Dovecot that is gone is an error, not a wrong
// password; once it is back the same client works again.
func TestDovecotRestart(t *testing.T) {
	dc := testtool.StartDovecot(t, dovecotUsers)
	const timeout = 2 * time.Second
	d := NewDovecot(DovecotOptions{Address: dc.Socket(), Timeout: timeout})
	dials := countDials(d)
	alice := dovecotUsers["alice@example.it"]
	verifyWant(t, d, "alice@example.it", alice, someClient, true)

	// Killed while a request waits for its answer (a FAIL waits half
	// a second): the request fails.
	done := make(chan error, 1)
	go func() {
		ok, err := d.Verify(context.Background(), "alice@example.it", "wrong", someClient)
		if ok {
			err = errors.New("true")
		}
		done <- err
	}()
	for pendingDovecot(d) == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // registered, then written at once
	dc.Stop()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Verify during the crash: false, nil; want an error")
		}
		t.Logf("during the crash: %v", err)
	case <-time.After(timeout + time.Second):
		t.Fatal("Verify during the crash did not return")
	}

	// Gone: every Verify is an error, at once (connection refused).
	for range 3 {
		start := time.Now()
		ok, err := d.Verify(context.Background(), "alice@example.it", alice, someClient)
		if err == nil || ok {
			t.Fatalf("Verify with Dovecot stopped: %v, %v; want an error", ok, err)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("Verify with Dovecot stopped: %v; want connection refused", err)
		}
		if took := time.Since(start); took > timeout {
			t.Errorf("Verify with Dovecot stopped took %v, more than the timeout", took)
		}
	}

	dc.Start()
	verifyWant(t, d, "alice@example.it", alice, someClient, true)
	verifyWant(t, d, "alice@example.it", "wrong", someClient, false)
	if n := dials.Load(); n != 5 {
		// 1, then one attempt per Verify while stopped, then 1.
		t.Errorf("%d connection attempts, want 5", n)
	}
	closeDovecot(t, d)
}

func TestDovecotClose(t *testing.T) {
	dc := testtool.StartDovecot(t, dovecotUsers)
	d := NewDovecot(DovecotOptions{Address: dc.Socket()})
	verifyWant(t, d, "alice@example.it", dovecotUsers["alice@example.it"], someClient, true)
	closeDovecot(t, d)
	ok, err := d.Verify(context.Background(), "alice@example.it", dovecotUsers["alice@example.it"], someClient)
	if ok || !errors.Is(err, errDovecotClosed) {
		t.Fatalf("Verify after Close: %v, %v; want the closed error", ok, err)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// Closed before it ever connected.
	closeDovecot(t, NewDovecot(DovecotOptions{Address: dc.Socket()}))
}

// TestDovecotContext: a caller that gives up gets its answer at once; the
// connection stays, and the late FAIL is dropped.
func TestDovecotContext(t *testing.T) {
	dc := testtool.StartDovecot(t, dovecotUsers)
	d := NewDovecot(DovecotOptions{Address: dc.Socket(), Timeout: 5 * time.Second})
	dials := countDials(d)
	alice := dovecotUsers["alice@example.it"]
	verifyWant(t, d, "alice@example.it", alice, someClient, true)

	// A fresh Dovecot's first FAIL waits the whole 0.5 s of its timer.
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	ok, err := d.Verify(ctx, "alice@example.it", "wrong", someClient)
	if took := time.Since(start); ok || !errors.Is(err, context.Canceled) || took > 300*time.Millisecond {
		t.Fatalf("cancelled Verify: %v, %v after %v; want context.Canceled within 300ms", ok, err, took)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start = time.Now()
	ok, err = d.Verify(ctx, "alice@example.it", "wrong again", someClient)
	if took := time.Since(start); ok || !errors.Is(err, context.DeadlineExceeded) || took > 300*time.Millisecond {
		t.Fatalf("Verify past its deadline: %v, %v after %v; want context.DeadlineExceeded within 300ms", ok, err, took)
	}
	// Already cancelled: not even sent.
	ok, err = d.Verify(ctx, "alice@example.it", alice, someClient)
	if ok || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Verify with an ended context: %v, %v", ok, err)
	}
	time.Sleep(700 * time.Millisecond) // the late FAILs come, and are dropped
	verifyWant(t, d, "alice@example.it", alice, someClient, true)
	verifyWant(t, d, "alice@example.it", "wrong", someClient, false)
	if n := dials.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
	closeDovecot(t, d)
}

// TestDovecotTempFail: a passdb Dovecot cannot read is FAIL
// code=temp_fail: an error, not a wrong password.
func TestDovecotTempFail(t *testing.T) {
	dc := testtool.StartDovecot(t, dovecotUsers)
	d := NewDovecot(DovecotOptions{Address: dc.Socket(), Timeout: 5 * time.Second})
	alice := dovecotUsers["alice@example.it"]
	verifyWant(t, d, "alice@example.it", alice, someClient, true)
	dc.BreakPassdb()
	// Dovecot looks at the file at most once a second.
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		var ok bool
		ok, err = d.Verify(context.Background(), "alice@example.it", alice, someClient)
		if err != nil {
			break
		}
		if !ok {
			t.Fatal("Verify with the passdb broken: false, nil")
		}
	}
	if err == nil || !strings.Contains(err.Error(), "temporary failure") {
		t.Fatalf("Verify with the passdb broken: %v; want a temporary failure", err)
	}
	t.Logf("passdb broken: %v", err)
	dc.RepairPassdb()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		ok, err := d.Verify(context.Background(), "alice@example.it", alice, someClient)
		if ok {
			break
		}
		if err == nil {
			t.Fatal("Verify with the passdb repaired: false, nil")
		}
		if time.Now().After(deadline) {
			t.Fatalf("Verify with the passdb repaired: %v", err)
		}
	}
	closeDovecot(t, d)
}

func TestDovecotSocketMissing(t *testing.T) {
	d := NewDovecot(DovecotOptions{Address: filepath.Join(t.TempDir(), "auth-client"), Timeout: time.Second})
	start := time.Now()
	ok, err := d.Verify(context.Background(), "alice@example.it", "pw", someClient)
	if ok || !errors.Is(err, syscall.ENOENT) || time.Since(start) > time.Second {
		t.Fatalf("Verify without a socket: %v, %v", ok, err)
	}
	if strings.Contains(err.Error(), "pw") {
		t.Errorf("the error shows the password: %v", err)
	}
	closeDovecot(t, d)

	d = NewDovecot(DovecotOptions{})
	if ok, err := d.Verify(context.Background(), "alice@example.it", "pw", someClient); ok || err == nil {
		t.Fatalf("Verify without an address: %v, %v", ok, err)
	}
	closeDovecot(t, d)
}

// A fake Dovecot: a unix socket that sends greet on each connection, then
// hands the connection to serve (n counts connections from 1).

const fakeGreeting = "VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nMECH\tLOGIN\tplaintext\nSPID\t4242\nCUID\t1\nCOOKIE\t0123456789abcdef0123456789abcdef\nDONE\n"

type fakeDovecot struct {
	t        *testing.T
	path     string
	ln       net.Listener
	greet    string
	serve    func(n int, c net.Conn, br *bufio.Reader)
	accepted atomic.Int32

	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func startFake(t *testing.T, greet string, serve func(n int, c net.Conn, br *bufio.Reader)) *fakeDovecot {
	t.Helper()
	f := &fakeDovecot{t: t, path: filepath.Join(t.TempDir(), "auth"), greet: greet, serve: serve}
	ln, err := net.Listen("unix", f.path)
	if err != nil {
		t.Fatal(err)
	}
	f.ln = ln
	f.wg.Add(1)
	go f.accept()
	t.Cleanup(f.stop)
	return f
}

func (f *fakeDovecot) accept() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		n := int(f.accepted.Add(1))
		f.mu.Lock()
		f.conns = append(f.conns, c)
		f.mu.Unlock()
		f.wg.Go(func() {
			defer c.Close()
			if _, err := c.Write([]byte(f.greet)); err != nil {
				return
			}
			if f.serve != nil {
				f.serve(n, c, bufio.NewReaderSize(c, 1<<16))
			} else {
				var b [512]byte
				for {
					if _, err := c.Read(b[:]); err != nil {
						return
					}
				}
			}
		})
	}
}

func (f *fakeDovecot) stop() {
	f.ln.Close()
	f.mu.Lock()
	for _, c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

func (f *fakeDovecot) client(timeout time.Duration) *Dovecot {
	return NewDovecot(DovecotOptions{Address: f.path, Timeout: timeout})
}

// fakeRequest is a line the client sent after its handshake.
type fakeRequest struct {
	line   string
	cmd    string
	id     string
	fields map[string]string
	user   string // from resp
	pass   string
}

// readRequest reads the client's next request, skipping its handshake.
func readRequest(br *bufio.Reader) (fakeRequest, error) {
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return fakeRequest{}, err
		}
		line = strings.TrimSuffix(line, "\n")
		f := strings.Split(line, "\t")
		if f[0] == "VERSION" || f[0] == "CPID" {
			continue
		}
		r := fakeRequest{line: line, cmd: f[0], fields: map[string]string{}}
		if len(f) > 1 {
			r.id = f[1]
		}
		for _, a := range f[min(3, len(f)):] {
			k, v, _ := strings.Cut(a, "=")
			r.fields[k] = v
		}
		if resp, ok := r.fields["resp"]; ok {
			msg, err := base64.StdEncoding.DecodeString(resp)
			if err != nil {
				return r, err
			}
			p := strings.Split(string(msg), "\x00")
			if len(p) != 3 || p[0] != "" {
				return r, fmt.Errorf("resp %q is not PLAIN with an empty authzid", msg)
			}
			r.user, r.pass = p[1], p[2]
		}
		return r, nil
	}
}

// TestDovecotRequestLine: what the client sends, byte for byte.
func TestDovecotRequestLine(t *testing.T) {
	lines := make(chan string, 10)
	f := startFake(t, fakeGreeting, func(n int, c net.Conn, br *bufio.Reader) {
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			lines <- line
			if strings.HasPrefix(line, "AUTH\t") {
				r, _ := readRequestLine(line)
				fmt.Fprintf(c, "OK\t%s\tuser=%s\n", r.id, dovecotEscape(r.user))
			}
		}
	})
	d := NewDovecot(DovecotOptions{Address: f.path, Service: "sub\tmission", Timeout: time.Second})
	info := DovecotInfo{ClientIP: "::ffff:198.51.100.7", ClientPort: 40000, LocalIP: "[2001:db8::1%eth0]", LocalPort: 587, Secured: true}
	verifyWant(t, d, "alice@example.it", "pa\tss\x01wörd", info, true)
	verifyWant(t, d, "bob", "pw", DovecotInfo{ClientIP: "not an address", ClientPort: 70000, LocalIP: "", LocalPort: -1}, true)
	closeDovecot(t, d)
	resp := func(u, p string) string { return base64.StdEncoding.EncodeToString([]byte("\x00" + u + "\x00" + p)) }
	want := []string{
		"VERSION\t1\t2\n",
		"CPID\t" + strconv.Itoa(os.Getpid()) + "\n",
		"AUTH\t1\tPLAIN\tservice=sub\x01tmission\tlip=2001:db8::1\trip=198.51.100.7\tlport=587\trport=40000\tsecured=tls\tno-penalty\tresp=" + resp("alice@example.it", "pa\tss\x01wörd") + "\n",
		"AUTH\t2\tPLAIN\tservice=sub\x01tmission\tno-penalty\tresp=" + resp("bob", "pw") + "\n",
	}
	for i, w := range want {
		select {
		case got := <-lines:
			if got != w {
				t.Errorf("line %d:\n got %q\nwant %q", i, got, w)
			}
		default:
			t.Fatalf("line %d missing; want %q", i, w)
		}
	}
}

func readRequestLine(line string) (fakeRequest, error) {
	return readRequest(bufio.NewReader(strings.NewReader(line)))
}

// TestDovecotReplies: what each reply means. The user name says which
// reply the fake server gives ("%s" is the request's id).
func TestDovecotReplies(t *testing.T) {
	replies := map[string]string{
		"ok":             "OK\t%s\tuser=ok",
		"ok-extra":       "OK\t%s\tuser=ok-extra\tsome_field=x\x01ty\tanother",
		"fail":           "FAIL\t%s\tuser=fail",
		"fail-bare":      "FAIL\t%s",
		"temp":           "FAIL\t%s\ttemp",
		"temp-fail":      "FAIL\t%s\tuser=temp-fail\tcode=temp_fail\treason=database\x01tdown",
		"disabled":       "FAIL\t%s\tuser=disabled\tcode=user_disabled",
		"expired":        "FAIL\t%s\tuser=expired\tcode=pass_expired",
		"authz":          "FAIL\t%s\tcode=authz_fail",
		"base64":         "FAIL\t%s\tcode=invalid_base64\treason=Invalid base64 data in initial response",
		"nologin":        "OK\t%s\tuser=nologin\tnologin\treason=Disabled",
		"proxy":          "OK\t%s\tuser=proxy\tproxy\thost=192.0.2.9\tpass=x",
		"proxy-maybe":    "OK\t%s\tuser=proxy-maybe\tproxy_maybe\thost=192.0.2.9",
		"cont":           "CONT\t%s\t",
		"cancelled":      "CANCELLED\t%s",
		"unknown-first":  "OK\t999999\nFAIL\t0\nOK\t%s",
		"escaped-nologi": "OK\t%s\tno\x01login",
	}
	cancels := make(chan string, 10)
	f := startFake(t, fakeGreeting, func(n int, c net.Conn, br *bufio.Reader) {
		for {
			r, err := readRequest(br)
			if err != nil {
				return
			}
			if r.cmd == "CANCEL" {
				cancels <- r.id
				continue
			}
			fmt.Fprintf(c, replies[r.user]+"\n", r.id)
		}
	})
	d := f.client(time.Second)
	cases := []struct {
		user    string
		want    bool
		wantErr string
	}{
		{"ok", true, ""},
		{"ok-extra", true, ""},
		{"fail", false, ""},
		{"fail-bare", false, ""},
		{"temp", false, "temporary failure"},
		{"temp-fail", false, "temporary failure (database?down)"},
		{"disabled", false, ""},
		{"expired", false, ""},
		{"authz", false, ""},
		{"base64", false, "base64 invalid (Invalid base64 data in initial response)"},
		{"nologin", false, ""},
		{"proxy", false, ""},
		{"proxy-maybe", false, ""},
		{"cont", false, "CONT"},
		{"cancelled", false, "CANCELLED"},
		{"unknown-first", true, ""},
		{"escaped-nologi", false, ""},
	}
	for _, c := range cases {
		ok, err := d.Verify(context.Background(), c.user, "pw", someClient)
		switch {
		case ok != c.want:
			t.Errorf("%s: %v, %v; want %v", c.user, ok, err, c.want)
		case c.wantErr == "" && err != nil:
			t.Errorf("%s: error %v; want none", c.user, err)
		case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
			t.Errorf("%s: error %v; want one with %q", c.user, err, c.wantErr)
		}
	}
	// A CONT is cancelled: the server would wait for the rest.
	select {
	case id := <-cancels:
		if id != "14" {
			t.Errorf("CANCEL %s; want CANCEL 14 (the CONT's)", id)
		}
	case <-time.After(time.Second):
		t.Error("no CANCEL after the CONT")
	}
	if n := f.accepted.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
	closeDovecot(t, d)
}

// TestDovecotLongLine: a server line past 64 KiB is a protocol error,
// found without reading the line whole.
func TestDovecotLongLine(t *testing.T) {
	const size = 100 << 10
	f := startFake(t, fakeGreeting, func(n int, c net.Conn, br *bufio.Reader) {
		r, err := readRequest(br)
		if err != nil {
			return
		}
		switch n {
		case 1:
			fmt.Fprintf(c, "FAIL\t%s\treason=%s\n", r.id, strings.Repeat("x", size))
		case 2:
			// An endless line: the client must stop reading it.
			fmt.Fprintf(c, "FAIL\t%s\treason=", r.id)
			chunk := []byte(strings.Repeat("y", 64<<10))
			for {
				if _, err := c.Write(chunk); err != nil {
					return
				}
			}
		default:
			fmt.Fprintf(c, "OK\t%s\n", r.id)
			readRequest(br)
		}
	})
	d := f.client(5 * time.Second)
	ok, err := d.Verify(context.Background(), "u", "pw", someClient)
	if ok || err == nil || !strings.Contains(err.Error(), "longer than 64 KiB") {
		t.Fatalf("Verify with a 100 KiB reply: %v, %v; want a protocol error", ok, err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	ok, err = d.Verify(context.Background(), "u", "pw", someClient)
	runtime.ReadMemStats(&after)
	if ok || err == nil || !strings.Contains(err.Error(), "longer than 64 KiB") {
		t.Fatalf("Verify with an endless reply: %v, %v; want a protocol error", ok, err)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
		t.Errorf("reading an endless line took %d KiB", grew>>10)
	}
	verifyWant(t, d, "u", "pw", someClient, true) // a new connection
	closeDovecot(t, d)

	// The same in the handshake.
	f = startFake(t, "VERSION\t1\t2\nMECH\tPLAIN\t"+strings.Repeat("z", size)+"\nDONE\n", nil)
	d = f.client(5 * time.Second)
	ok, err = d.Verify(context.Background(), "u", "pw", someClient)
	if ok || err == nil || !strings.Contains(err.Error(), "longer than 64 KiB") {
		t.Fatalf("Verify with a 100 KiB handshake line: %v, %v; want a protocol error", ok, err)
	}
	closeDovecot(t, d)
}

// TestDovecotHang: a server that stops answering is a timeout error,
// after Timeout.
func TestDovecotHang(t *testing.T) {
	const timeout = 300 * time.Millisecond
	for _, c := range []struct{ name, greet string }{
		{"after the handshake", fakeGreeting},
		{"in the handshake", "VERSION\t1\t2\nMECH\tPLAIN\n"},
		{"before the handshake", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := startFake(t, c.greet, nil) // reads, never answers
			d := f.client(timeout)
			for range 2 {
				start := time.Now()
				ok, err := d.Verify(context.Background(), "u", "pw", someClient)
				took := time.Since(start)
				if ok || !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("Verify: %v, %v; want a timeout", ok, err)
				}
				if took < timeout-50*time.Millisecond || took > timeout+500*time.Millisecond {
					t.Errorf("Verify took %v; want about %v", took, timeout)
				}
			}
			closeDovecot(t, d)
		})
	}
}

// TestDovecotBadHandshake: a handshake the client cannot use is an
// error, never a verdict.
func TestDovecotBadHandshake(t *testing.T) {
	for _, c := range []struct{ name, greet, wantErr string }{
		{"garbage", "HELLO\tworld\nDONE\n", "does not start with VERSION"},
		{"binary", "\x00\xff\xfe\n\n", "does not start with VERSION"},
		{"major 2", "VERSION\t2\t0\nMECH\tPLAIN\nDONE\n", "version 2"},
		{"major 0", "VERSION\t0\t9\nMECH\tPLAIN\nDONE\n", "version 0"},
		{"bad version", "VERSION\tone\ttwo\nMECH\tPLAIN\nDONE\n", "invalid VERSION"},
		{"short version", "VERSION\t1\nMECH\tPLAIN\nDONE\n", "does not start with VERSION"},
		{"no PLAIN", "VERSION\t1\t2\nMECH\tLOGIN\tplaintext\nMECH\tplain\nDONE\n", "no PLAIN mechanism (offered: LOGIN plain"},
		{"cut", "VERSION\t1\t2\nMECH\tPL", "closed the connection during the handshake"},
		{"closed", "VERSION\t1\t2\n", "closed the connection during the handshake"},
		{"endless", "VERSION\t1\t2\n" + strings.Repeat("MECH\tX\n", dovecotMaxHandshake), "more than 1000 lines"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := startFake(t, c.greet, func(int, net.Conn, *bufio.Reader) {})
			d := f.client(time.Second)
			ok, err := d.Verify(context.Background(), "u", "pw", someClient)
			if ok || err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("Verify: %v, %v; want an error with %q", ok, err, c.wantErr)
			}
			closeDovecot(t, d)
		})
	}
}

// TestDovecotLostRequest: a request whose connection breaks before its
// answer fails (it may have been seen); the next one reconnects.
func TestDovecotLostRequest(t *testing.T) {
	f := startFake(t, fakeGreeting, func(n int, c net.Conn, br *bufio.Reader) {
		for {
			r, err := readRequest(br)
			if err != nil || n == 1 {
				return // the first connection: read the request, hang up
			}
			fmt.Fprintf(c, "OK\t%s\n", r.id)
		}
	})
	d := f.client(time.Second)
	ok, err := d.Verify(context.Background(), "u", "pw", someClient)
	if ok || err == nil || !strings.Contains(err.Error(), "closed the connection") {
		t.Fatalf("Verify on a connection hung up: %v, %v; want an error", ok, err)
	}
	verifyWant(t, d, "u", "pw", someClient, true)
	verifyWant(t, d, "u", "pw", someClient, true)
	if n := f.accepted.Load(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
	closeDovecot(t, d)
}

// TestDovecotGarbageReply: a line that is no reply breaks the connection;
// the next Verify reconnects.
func TestDovecotGarbageReply(t *testing.T) {
	for _, garbage := range []string{"WHAT\t%s", "OK", "OK\t-1", "OK\tx%s", "FAIL\t4294967296", ""} {
		t.Run(strconv.Quote(garbage), func(t *testing.T) {
			f := startFake(t, fakeGreeting, func(n int, c net.Conn, br *bufio.Reader) {
				for {
					r, err := readRequest(br)
					if err != nil {
						return
					}
					if n == 1 {
						io.WriteString(c, strings.ReplaceAll(garbage, "%s", r.id)+"\n")
					} else {
						fmt.Fprintf(c, "OK\t%s\n", r.id)
					}
				}
			})
			d := f.client(time.Second)
			ok, err := d.Verify(context.Background(), "u", "pw", someClient)
			if ok || err == nil || !strings.Contains(err.Error(), "protocol error") {
				t.Fatalf("Verify: %v, %v; want a protocol error", ok, err)
			}
			verifyWant(t, d, "u", "pw", someClient, true)
			closeDovecot(t, d)
		})
	}
}

// TestDovecotOutOfOrder: replies go to their requests, whatever their
// order.
func TestDovecotOutOfOrder(t *testing.T) {
	f := startFake(t, fakeGreeting, func(n int, c net.Conn, br *bufio.Reader) {
		var reqs []fakeRequest
		for len(reqs) < 10 {
			r, err := readRequest(br)
			if err != nil {
				return
			}
			reqs = append(reqs, r)
		}
		for i := len(reqs) - 1; i >= 0; i-- {
			if reqs[i].pass == "right" {
				fmt.Fprintf(c, "OK\t%s\n", reqs[i].id)
			} else {
				fmt.Fprintf(c, "FAIL\t%s\n", reqs[i].id)
			}
		}
		readRequest(br)
	})
	d := f.client(2 * time.Second)
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Go(func() {
			pw, want := "right", true
			if i%2 == 1 {
				pw, want = "wrong", false
			}
			ok, err := d.Verify(context.Background(), "u"+strconv.Itoa(i), pw, someClient)
			if ok != want || err != nil {
				t.Errorf("request %d: %v, %v; want %v, nil", i, ok, err, want)
			}
		})
	}
	wg.Wait()
	closeDovecot(t, d)
}

// TestDovecotTooLong: a request over Dovecot's 16384 bytes is not sent
// (Dovecot would drop the connection, and every request on it).
func TestDovecotTooLong(t *testing.T) {
	var lines atomic.Int32
	f := startFake(t, fakeGreeting, func(n int, c net.Conn, br *bufio.Reader) {
		for {
			r, err := readRequest(br)
			if err != nil {
				return
			}
			lines.Add(1)
			if len(r.line)+1 > dovecotMaxRequest {
				fmt.Fprintf(c, "WHAT\n")
				return
			}
			fmt.Fprintf(c, "OK\t%s\n", r.id)
		}
	})
	d := f.client(time.Second)
	verifyWant(t, d, "u", strings.Repeat("x", 13000), someClient, false)
	verifyWant(t, d, strings.Repeat("u", 13000), "pw", someClient, false)
	verifyWant(t, d, "u", strings.Repeat("x", 12000), someClient, true)
	if n := lines.Load(); n != 1 {
		t.Errorf("%d requests sent, want 1", n)
	}
	closeDovecot(t, d)
}

// TestDovecotNUL: a NUL cannot be said in PLAIN: no request.
func TestDovecotNUL(t *testing.T) {
	d := NewDovecot(DovecotOptions{Address: "unused"})
	d.dial = func(context.Context) (net.Conn, error) {
		t.Error("dialled for a request with a NUL")
		return nil, errors.New("no")
	}
	verifyWant(t, d, "u", "p\x00w", someClient, false)
	verifyWant(t, d, "u\x00", "pw", someClient, false)
	closeDovecot(t, d)
}

// TestDovecotCloseWhilePending: Close ends the requests waiting, and
// waits for the client's goroutines.
func TestDovecotCloseWhilePending(t *testing.T) {
	got := make(chan struct{}, 10)
	f := startFake(t, fakeGreeting, func(n int, c net.Conn, br *bufio.Reader) {
		for {
			if _, err := readRequest(br); err != nil {
				return
			}
			got <- struct{}{}
		}
	})
	d := f.client(10 * time.Second)
	done := make(chan error, 3)
	for range 3 {
		go func() {
			_, err := d.Verify(context.Background(), "u", "pw", someClient)
			done <- err
		}()
	}
	for range 3 {
		<-got
	}
	start := time.Now()
	closeDovecot(t, d)
	for range 3 {
		select {
		case err := <-done:
			if !errors.Is(err, errDovecotClosed) {
				t.Errorf("pending Verify: %v; want the closed error", err)
			}
		case <-time.After(time.Second):
			t.Fatal("a pending Verify did not return after Close")
		}
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("Close took %v", took)
	}
}

// TestDovecotCloseWhileConnecting: Close interrupts a handshake under way.
func TestDovecotCloseWhileConnecting(t *testing.T) {
	f := startFake(t, "", nil) // no handshake ever
	d := f.client(10 * time.Second)
	done := make(chan error, 1)
	go func() {
		_, err := d.Verify(context.Background(), "u", "pw", someClient)
		done <- err
	}()
	for f.accepted.Load() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	closeDovecot(t, d)
	select {
	case err := <-done:
		if !errors.Is(err, errDovecotClosed) {
			t.Errorf("Verify: %v; want the closed error", err)
		}
	case <-time.After(time.Second):
		t.Fatal("Verify did not return after Close")
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("Close took %v", took)
	}
}

// TestDovecotContextWhileConnecting: a caller that gives up while the
// connection is being made returns at once; the attempt goes on for
// the others.
func TestDovecotContextWhileConnecting(t *testing.T) {
	release := make(chan struct{})
	f := startFake(t, "", func(n int, c net.Conn, br *bufio.Reader) {
		<-release
		c.Write([]byte(fakeGreeting))
		for {
			r, err := readRequest(br)
			if err != nil {
				return
			}
			fmt.Fprintf(c, "OK\t%s\n", r.id)
		}
	})
	d := f.client(5 * time.Second)
	other := make(chan error, 1)
	go func() {
		ok, err := d.Verify(context.Background(), "u", "pw", someClient)
		if err == nil && !ok {
			err = errors.New("false")
		}
		other <- err
	}()
	for f.accepted.Load() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	ok, err := d.Verify(ctx, "u", "pw", someClient)
	if took := time.Since(start); ok || !errors.Is(err, context.Canceled) || took > 300*time.Millisecond {
		t.Fatalf("Verify: %v, %v after %v; want context.Canceled at once", ok, err, took)
	}
	close(release)
	if err := <-other; err != nil {
		t.Fatalf("the other Verify: %v", err)
	}
	if n := f.accepted.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
	closeDovecot(t, d)
}

// TestDovecotCloseWaits: Close returns only once the client's goroutines
// are done, here a dial slow to give up.
func TestDovecotCloseWaits(t *testing.T) {
	d := NewDovecot(DovecotOptions{Address: "unused", Timeout: 10 * time.Second})
	entered := make(chan struct{})
	var returned atomic.Bool
	d.dial = func(ctx context.Context) (net.Conn, error) {
		close(entered)
		<-ctx.Done()
		time.Sleep(200 * time.Millisecond)
		returned.Store(true)
		return nil, ctx.Err()
	}
	done := make(chan error, 1)
	go func() {
		_, err := d.Verify(context.Background(), "u", "pw", someClient)
		done <- err
	}()
	<-entered
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if !returned.Load() {
		t.Fatal("Close returned before the dial it interrupted")
	}
	if err := <-done; !errors.Is(err, errDovecotClosed) {
		t.Fatalf("Verify: %v; want the closed error", err)
	}
	checkNoDovecotGoroutines(t)
}
