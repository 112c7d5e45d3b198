package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/mail"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// testPKI is a self-signed ECDSA P-256 server certificate for 127.0.0.1
// and localhost, made once per test binary.
type testPKI struct {
	cert     tls.Certificate
	pool     *x509.CertPool
	certFile string // PEM files, for the command line
	keyFile  string
}

var (
	pkiOnce sync.Once
	pki     testPKI
	pkiErr  error
	pkiDir  string
)

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "bare" {
		// Bench starts its baselines as this executable's "bare"
		// (TestBench): this test binary.
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := runMain(ctx, os.Args[1:], os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	dir, err := os.MkdirTemp("", "pecgw-load-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	pkiDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func getPKI(t *testing.T) testPKI {
	t.Helper()
	pkiOnce.Do(func() { pki, pkiErr = makePKI(pkiDir) })
	if pkiErr != nil {
		t.Fatal(pkiErr)
	}
	return pki
}

func makePKI(dir string) (testPKI, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return testPKI{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "pecgw-load test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return testPKI{}, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return testPKI{}, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return testPKI{}, err
	}
	p := testPKI{
		cert:     tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf},
		pool:     x509.NewCertPool(),
		certFile: filepath.Join(dir, "cert.pem"),
		keyFile:  filepath.Join(dir, "key.pem"),
	}
	p.pool.AddCert(leaf)
	if err := os.WriteFile(p.certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return testPKI{}, err
	}
	if err := os.WriteFile(p.keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return testPKI{}, err
	}
	return p, nil
}

// received collects what a bare server got.
type received struct {
	mu   sync.Mutex
	msgs [][]byte
	from []string
	to   [][]string
}

func (r *received) add(from string, to []string, data []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, data)
	r.from = append(r.from, from)
	r.to = append(r.to, to)
}

// startBare runs a bare server on 127.0.0.1:0 for the test.
func startBare(t *testing.T, mode, password string, minAuth time.Duration, rec *received) *BareServer {
	t.Helper()
	cfg := BareConfig{
		Addr: "127.0.0.1:0", TLS: mode, Password: password, MinAuthTime: minAuth,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{getPKI(t).cert}},
	}
	if rec != nil {
		cfg.OnMessage = rec.add
	}
	b, err := StartBare(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func clientConfig(t *testing.T) *tls.Config {
	return &tls.Config{RootCAs: getPKI(t).pool}
}

// checkLatency checks that l has n samples (0: any number above 0), all
// positive and in order.
func checkLatency(t *testing.T, what string, l Latency, n int) {
	t.Helper()
	if n > 0 && l.N != n || l.N == 0 {
		t.Errorf("%s: %d samples, want %d", what, l.N, n)
	}
	if !(0 < l.P50 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.Max) {
		t.Errorf("%s: percentiles not positive and ordered: p50 %v p90 %v p99 %v max %v", what, l.P50, l.P90, l.P99, l.Max)
	}
}

// TestRunExactCounts sends a fixed number of messages in each mode over
// each TLS mode (and SASL LOGIN once) to a bare server: every attempt is
// sent, none fails, the server got each message once with its own
// Message-ID, and the latencies are in order.
func TestRunExactCounts(t *testing.T) {
	const (
		n       = 37 // not a multiple of clients
		clients = 5
		size    = 1500
		user    = "mario.rossi@pec.example.it"
		rcpt    = "anna@pec.altro.it"
	)
	for _, c := range []struct{ tls, mode, auth string }{
		{TLSImplicit, ModeConnPerMessage, AuthPlain},
		{TLSImplicit, ModeReuse, AuthPlain},
		{TLSStartTLS, ModeConnPerMessage, AuthPlain},
		{TLSStartTLS, ModeReuse, AuthPlain},
		{TLSImplicit, ModeConnPerMessage, AuthLogin},
	} {
		t.Run(c.tls+"/"+c.mode+"/"+c.auth, func(t *testing.T) {
			t.Parallel()
			rec := &received{}
			b := startBare(t, c.tls, "secret pw", 0, rec)
			r, err := Run(context.Background(), Config{
				Addr: b.Addr(), TLS: c.tls, TLSConfig: clientConfig(t), Auth: c.auth,
				User: user, Password: "secret pw", Rcpt: rcpt,
				Clients: clients, Messages: n, Mode: c.mode, Size: size, Timeout: 20 * time.Second,
			})
			if err != nil {
				t.Fatal(err)
			}
			if r.Sent != n || r.Attempts != n || r.Failed != 0 || len(r.Errors) != 0 || r.Interrupted {
				t.Fatalf("sent %d of %d attempts, %d errors %v (examples %v), interrupted %v; want %d sent, 0 errors",
					r.Sent, r.Attempts, r.Failed, r.Errors, r.ErrorExamples, r.Interrupted, n)
			}
			if r.Rate <= 0 || r.Elapsed <= 0 {
				t.Errorf("rate %v over %v", r.Rate, r.Elapsed)
			}
			st := b.Stats()
			if st.Messages != n || st.AuthFailed != 0 {
				t.Errorf("server: %+v, want %d messages", st, n)
			}
			checkLatency(t, "message", r.Message, n)
			if c.mode == ModeConnPerMessage {
				checkLatency(t, "setup", r.Setup, n)
				checkLatency(t, "auth", r.Auth, n)
				if st.AuthOK != n {
					t.Errorf("server: %d AUTH, want %d", st.AuthOK, n)
				}
			} else {
				checkLatency(t, "setup", r.Setup, 0)
				checkLatency(t, "auth", r.Auth, 0)
				if r.Auth.N > clients || int64(r.Auth.N) != st.AuthOK {
					t.Errorf("reuse: %d AUTH measured, %d at the server, want one per client at most (%d)", r.Auth.N, st.AuthOK, clients)
				}
			}

			// What the server received: unique Message-IDs, From the
			// user, To the recipient, about the size asked for.
			rec.mu.Lock()
			defer rec.mu.Unlock()
			ids := map[string]bool{}
			for i, data := range rec.msgs {
				m, err := mail.ReadMessage(bytes.NewReader(data))
				if err != nil {
					t.Fatalf("message %d: %v", i, err)
				}
				id := m.Header.Get("Message-ID")
				if id == "" || ids[id] {
					t.Errorf("message %d: Message-ID %q empty or seen before", i, id)
				}
				ids[id] = true
				if got := m.Header.Get("From"); got != user || rec.from[i] != user {
					t.Errorf("message %d: From %q, MAIL FROM %q, want %s", i, got, rec.from[i], user)
				}
				if got := m.Header.Get("To"); got != rcpt || !slices.Equal(rec.to[i], []string{rcpt}) {
					t.Errorf("message %d: To %q, RCPT %v, want %s", i, got, rec.to[i], rcpt)
				}
				if _, err := m.Header.Date(); err != nil {
					t.Errorf("message %d: Date: %v", i, err)
				}
				if d := len(data) - size; d < -8 || d > 8 {
					t.Errorf("message %d: %d octets, want about %d", i, len(data), size)
				}
			}
			if len(ids) != n {
				t.Errorf("%d distinct Message-IDs, want %d", len(ids), n)
			}
		})
	}
}

// TestRunWrongPassword: a server that refuses AUTH; every attempt is
// counted under 535 5.7.8, none is sent, and the command exits 1 (0 when
// --max-errors allows them).
func TestRunWrongPassword(t *testing.T) {
	const n = 12
	for _, mode := range []string{ModeConnPerMessage, ModeReuse} {
		t.Run(mode, func(t *testing.T) {
			b := startBare(t, TLSStartTLS, "the right one", 0, nil)
			r, err := Run(context.Background(), Config{
				Addr: b.Addr(), TLS: TLSStartTLS, TLSConfig: clientConfig(t), User: "u@example.it", Password: "wrong",
				Clients: 3, Messages: n, Mode: mode, Size: 500,
			})
			if err != nil {
				t.Fatal(err)
			}
			if r.Sent != 0 || r.Failed != n || r.Attempts != n || r.Errors["535 5.7.8"] != n || len(r.Errors) != 1 {
				t.Fatalf("sent %d, errors %d %v; want 0 sent and %d errors 535 5.7.8", r.Sent, r.Failed, r.Errors, n)
			}
			if ex := r.ErrorExamples["535 5.7.8"]; !strings.HasPrefix(ex, "auth: ") {
				t.Errorf("example of 535: %q, want the auth phase", ex)
			}
			if st := b.Stats(); st.AuthFailed != n || st.Messages != 0 {
				t.Errorf("server: %+v", st)
			}
			if r.Auth.N != 0 || r.Message.N != 0 {
				t.Errorf("latencies of failed attempts recorded: AUTH %d, message %d", r.Auth.N, r.Message.N)
			}
		})
	}

	p := getPKI(t)
	b := startBare(t, TLSImplicit, "the right one", 0, nil)
	args := []string{"run", "--addr", b.Addr(), "--ca", p.certFile, "--user", "u@example.it", "--password", "wrong",
		"--clients", "2", "--messages", "5"}
	code, out, errOut := runCLI(context.Background(), args...)
	if code != exitFailed || !strings.Contains(out, "535 5.7.8") || !strings.Contains(out, "FAIL: 5 errors") {
		t.Errorf("run with a wrong password: exit %d (want 1)\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	code, out, _ = runCLI(context.Background(), append(args, "--json", "--max-errors", "5")...)
	var res struct {
		Sent   int            `json:"sent"`
		Errors map[string]int `json:"errors_by_code"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("--json: %v\n%s", err, out)
	}
	if code != exitOK || res.Sent != 0 || res.Errors["535 5.7.8"] != 5 {
		t.Errorf("--json --max-errors 5: exit %d, %+v (want 0, 5 errors 535 5.7.8)", code, res)
	}
}

// TestRunConnectRefused: nothing listens; every attempt is a connect
// error.
func TestRunConnectRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	r, err := Run(context.Background(), Config{Addr: addr, TLS: TLSImplicit, User: "u@example.it", Clients: 2, Messages: 4})
	if err != nil {
		t.Fatal(err)
	}
	if r.Sent != 0 || r.Errors["connect"] != 4 {
		t.Errorf("sent %d, errors %v; want 4 connect", r.Sent, r.Errors)
	}
}

// TestRunCLI runs the command line with --json and with text against a
// bare server started by the command line too.
func TestRunCLI(t *testing.T) {
	p := getPKI(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var bareOut lockedBuffer
	bareDone := make(chan int, 1)
	go func() {
		bareDone <- runMain(ctx, []string{"bare", "--addr", "127.0.0.1:0", "--tls", "starttls", "--cert", p.certFile,
			"--key", p.keyFile, "--password", "pw"}, &bareOut, &bareOut)
	}()
	addr := waitListening(t, &bareOut)

	code, out, errOut := runCLI(context.Background(), "run", "--addr", addr, "--tls", "starttls", "--ca", p.certFile,
		"--user", "u@example.it", "--password", "pw", "--clients", "3", "--messages", "9", "--mode", "reuse", "--json")
	if code != exitOK {
		t.Fatalf("run --json: exit %d\n%s%s", code, out, errOut)
	}
	var res struct {
		Sent     int            `json:"sent"`
		Attempts int            `json:"attempts"`
		Errors   map[string]int `json:"errors_by_code"`
		Rate     float64        `json:"messages_per_s"`
		Auth     struct {
			N   int     `json:"n"`
			P50 float64 `json:"p50_ms"`
			P90 float64 `json:"p90_ms"`
			P99 float64 `json:"p99_ms"`
			Max float64 `json:"max_ms"`
		} `json:"auth"`
	}
	dec := json.NewDecoder(strings.NewReader(out))
	if err := dec.Decode(&res); err != nil || dec.More() {
		t.Fatalf("--json is not one JSON object (%v):\n%s", err, out)
	}
	a := res.Auth
	if res.Sent != 9 || res.Attempts != 9 || len(res.Errors) != 0 || res.Rate <= 0 || a.N < 1 || a.N > 3 ||
		!(a.P50 > 0 && a.P50 <= a.P90 && a.P90 <= a.P99 && a.P99 <= a.Max) {
		t.Errorf("run --json: %s", out)
	}

	code, out, errOut = runCLI(context.Background(), "run", "--addr", addr, "--tls", "starttls", "--insecure",
		"--user", "u@example.it", "--password", "pw", "--clients", "2", "--messages", "4")
	for _, want := range []string{"messages sent: 4 of 4 attempts", "errors: none", "AUTH", "session set-up", "message"} {
		if !strings.Contains(out, want) {
			t.Errorf("run (text): no %q in\n%s%s", want, out, errOut)
		}
	}
	if code != exitOK {
		t.Errorf("run (text): exit %d", code)
	}

	cancel()
	if code := <-bareDone; code != exitOK {
		t.Errorf("bare: exit %d\n%s", code, bareOut.String())
	}
	if !strings.Contains(bareOut.String(), " 13 messages") {
		t.Errorf("bare output, want 13 messages:\n%s", bareOut.String())
	}
}

var listeningRE = regexp.MustCompile(`listening on (\S+)`)

func waitListening(t *testing.T, out *lockedBuffer) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if m := listeningRE.FindStringSubmatch(out.String()); m != nil {
			return m[1]
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("bare never said where it listens:\n%s", out.String())
	return ""
}

// TestCompareTwoBare compares two bare servers: the rounds alternate,
// pecgw first, each against its own server, and the ratio is near 1.
func TestCompareTwoBare(t *testing.T) {
	a := startBare(t, TLSImplicit, "", 0, nil) // in the role of pecgw
	b := startBare(t, TLSImplicit, "", 0, nil)
	const pairs = 3
	var seen []string
	res, err := Compare(context.Background(), CompareConfig{
		Load: Config{TLS: TLSImplicit, TLSConfig: clientConfig(t), User: "u@example.it", Password: "x",
			Clients: 4, Mode: ModeConnPerMessage, Size: 1024},
		Pecgw: a.Addr(), Bare: b.Addr(), Rounds: pairs, Round: 400 * time.Millisecond,
	}, func(rd Round) { seen = append(seen, rd.Target+" "+rd.Result.Addr) })
	if err != nil {
		t.Fatal(err)
	}
	var want, wantSeen []string
	for range pairs {
		want = append(want, targetPecgw, targetBare)
		wantSeen = append(wantSeen, targetPecgw+" "+a.Addr(), targetBare+" "+b.Addr())
	}
	if !slices.Equal(res.Order, want) || !slices.Equal(seen, wantSeen) {
		t.Errorf("order %v, progress %v; want %v", res.Order, seen, wantSeen)
	}
	for i, rd := range res.Rounds {
		if rd.N != i+1 || rd.Pair != i/2+1 || rd.Result.Failed != 0 || rd.Result.Sent == 0 {
			t.Errorf("round %d: %+v, result %+v", i+1, rd, rd.Result)
		}
	}
	if len(res.Ratios) != pairs || !(0.2 < res.Ratio.Median && res.Ratio.Median < 5) ||
		!(res.Ratio.Min <= res.Ratio.Median && res.Ratio.Median <= res.Ratio.Max) {
		t.Errorf("ratios %v, median %v min %v max %v; want %d ratios, median between 0.2 and 5", res.Ratios, res.Ratio.Median, res.Ratio.Min, res.Ratio.Max, pairs)
	}
	if res.Interrupted || len(res.Failures) > 0 {
		t.Errorf("interrupted %v, failures %v", res.Interrupted, res.Failures)
	}
	// Each server got exactly the messages of its own rounds.
	if got := a.Stats().Messages; got != int64(res.PecgwTotal.Sent) {
		t.Errorf("pecgw-role server got %d messages, its rounds sent %d", got, res.PecgwTotal.Sent)
	}
	if got := b.Stats().Messages; got != int64(res.BareTotal.Sent) {
		t.Errorf("bare server got %d messages, its rounds sent %d", got, res.BareTotal.Sent)
	}
	checkLatency(t, "pecgw AUTH", res.PecgwTotal.Auth, res.PecgwTotal.Sent)
	checkLatency(t, "bare AUTH", res.BareTotal.Auth, res.BareTotal.Sent)
	var buf bytes.Buffer
	printCompare(&buf, res)
	if !strings.Contains(buf.String(), "pecgw/bare messages/s: median ") {
		t.Errorf("summary:\n%s", buf.String())
	}
}

// TestCompareCLIFails: the "pecgw" side refuses AUTH; the rounds still
// alternate, the errors are shown by code, and compare exits 1.
func TestCompareCLIFails(t *testing.T) {
	p := getPKI(t)
	a := startBare(t, TLSStartTLS, "other", 0, nil)
	b := startBare(t, TLSStartTLS, "", 0, nil)
	code, out, errOut := runCLI(context.Background(), "compare", "--pecgw", a.Addr(), "--bare", b.Addr(), "--tls", "starttls",
		"--ca", p.certFile, "--user", "u@example.it", "--password", "pw", "--clients", "2", "--messages", "4", "--rounds", "2")
	if code != exitFailed {
		t.Errorf("exit %d, want 1", code)
	}
	var targets []string
	for _, m := range regexp.MustCompile(`(?m)^round +\d+ +(\w+)`).FindAllStringSubmatch(out, -1) {
		targets = append(targets, m[1])
	}
	if !slices.Equal(targets, []string{"pecgw", "bare", "pecgw", "bare"}) {
		t.Errorf("rounds %v, want pecgw bare pecgw bare", targets)
	}
	for _, want := range []string{"535 5.7.8 ×4", "FAIL: round 1 (pecgw", "FAIL: round 3 (pecgw", "median 0.000"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in\n%s%s", want, out, errOut)
		}
	}
	if strings.Contains(out, "round 2 (bare") {
		t.Errorf("the bare rounds had no errors:\n%s", out)
	}
}

// TestInterrupt ends a long run early: it returns at once with what was
// measured, and the attempts cut short are not errors.
func TestInterrupt(t *testing.T) {
	b := startBare(t, TLSImplicit, "", 50*time.Millisecond, nil)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(400*time.Millisecond, cancel)
	start := time.Now()
	r, err := Run(ctx, Config{Addr: b.Addr(), TLS: TLSImplicit, TLSConfig: clientConfig(t), User: "u@example.it",
		Clients: 6, Duration: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Run returned %v after start, the interrupt came at 400ms", d)
	}
	if !r.Interrupted || r.Sent == 0 || r.Failed != 0 || r.Attempts != r.Sent {
		t.Errorf("interrupted %v, sent %d, attempts %d, errors %v; want interrupted, some sent, no error", r.Interrupted, r.Sent, r.Attempts, r.Errors)
	}

	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(400*time.Millisecond, cancel)
	code, out, errOut := runCLI(ctx, "run", "--addr", b.Addr(), "--insecure", "--user", "u@example.it", "--clients", "3", "--duration", "1m")
	if code != exitInterrupted || !strings.Contains(out, "interrupted") || !strings.Contains(out, "errors: none") {
		t.Errorf("run interrupted: exit %d (want 130)\n%s%s", code, out, errOut)
	}

	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(600*time.Millisecond, cancel)
	code, out, errOut = runCLI(ctx, "compare", "--pecgw", b.Addr(), "--bare", b.Addr(), "--insecure", "--user", "u@example.it",
		"--clients", "2", "--round", "250ms", "--rounds", "50")
	if code != exitInterrupted || !strings.Contains(out, "interrupted") || !strings.Contains(out, "pecgw/bare messages/s: ") {
		// On a loaded machine the cut may come before the first pair ends
		// ("no complete pair of rounds"): the summary is printed either way.
		t.Errorf("compare interrupted: exit %d (want 130)\n%s%s", code, out, errOut)
	}
}

func TestUsageErrors(t *testing.T) {
	p := getPKI(t)
	base := []string{"--addr", "127.0.0.1:1", "--user", "u@example.it", "--password", "pw"}
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "usage:"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"run"}, "--addr is required"},
		{[]string{"run", "--addr", "nowhere", "--user", "u@x.it"}, "--addr must be HOST:PORT"},
		{[]string{"run", "--addr", "127.0.0.1:1"}, "--user is required"},
		{append([]string{"run", "--tls", "ssl"}, base...), "--tls must be implicit or starttls"},
		{append([]string{"run", "--mode", "burst"}, base...), "--mode must be conn-per-message or reuse"},
		{append([]string{"run", "--auth", "cram-md5"}, base...), "--auth must be plain or login"},
		{append([]string{"run", "--clients", "0"}, base...), "--clients must be between 1 and 10000"},
		{append([]string{"run", "--messages", "5", "--duration", "1s"}, base...), "--duration and --messages exclude each other"},
		{append([]string{"run", "--messages", "0"}, base...), "--messages must be at least 1"},
		{append([]string{"run", "--duration", "-1s"}, base...), "--duration must be positive"},
		{append([]string{"run", "--size", "-3"}, base...), "--size must be between"},
		{append([]string{"run", "--ca", p.certFile, "--insecure"}, base...), "--ca and --insecure exclude each other"},
		{append([]string{"run", "--max-errors", "-1"}, base...), "--max-errors must be 0 or more"},
		{append([]string{"run", "--clients", "many"}, base...), "-clients"},
		{append([]string{"run", "--bogus"}, base...), "-bogus"},
		{append([]string{"run", "extra"}, base...), `unexpected argument "extra"`},
		{[]string{"compare", "--bare", "127.0.0.1:2", "--user", "u@x.it"}, "--pecgw is required"},
		{[]string{"compare", "--pecgw", "127.0.0.1:1", "--user", "u@x.it"}, "--bare is required"},
		{[]string{"compare", "--pecgw", "127.0.0.1:1", "--bare", "127.0.0.1:2", "--addr", "127.0.0.1:3", "--user", "u@x.it"}, "not --addr"},
		{[]string{"compare", "--pecgw", "127.0.0.1:1", "--bare", "127.0.0.1:2", "--duration", "5s", "--user", "u@x.it"}, "--round"},
		{[]string{"compare", "--pecgw", "127.0.0.1:1", "--bare", "127.0.0.1:2", "--rounds", "0", "--user", "u@x.it"}, "--rounds must be between"},
		{[]string{"compare", "--pecgw", "127.0.0.1:1", "--bare", "127.0.0.1:2", "--round", "0s", "--user", "u@x.it"}, "--round must be positive"},
		{[]string{"compare", "--pecgw", "127.0.0.1:1", "--bare", "127.0.0.1:2", "--user", "u@x.it", "--clients", "0"}, "--clients"},
		{[]string{"bare", "--addr", "127.0.0.1:0"}, "--cert and --key are required"},
		{[]string{"bare", "--cert", p.certFile, "--key", p.keyFile}, "--addr is required"},
		{[]string{"bare", "--addr", "127.0.0.1:0", "--tls", "none", "--cert", p.certFile, "--key", p.keyFile}, "--tls must be implicit or starttls"},
	} {
		code, out, errOut := runCLI(context.Background(), c.args...)
		if code != exitUsage || !strings.Contains(errOut, c.want) {
			t.Errorf("pecgw-load %s: exit %d, stderr %q (stdout %q); want exit 2 and %q",
				strings.Join(c.args, " "), code, errOut, out, c.want)
		}
	}
	if code, out, _ := runCLI(context.Background(), "help"); code != exitOK || !strings.Contains(out, "pecgw-load compare") {
		t.Errorf("help: exit %d\n%s", code, out)
	}
	if code, out, _ := runCLI(context.Background(), "run", "-h"); code != exitOK || !strings.Contains(out, "--clients") {
		t.Errorf("run -h: exit %d\n%s", code, out)
	}
	// A failure that is no usage error: exit 1.
	if code, _, errOut := runCLI(context.Background(), append([]string{"run", "--ca", "/nonexistent/ca.pem"}, base...)...); code != exitFailed || !strings.Contains(errOut, "--ca") {
		t.Errorf("run --ca missing file: exit %d, %q; want 1", code, errOut)
	}
}

func TestPercentile(t *testing.T) {
	var s []time.Duration
	for i := 100; i >= 1; i-- {
		s = append(s, time.Duration(i)*time.Millisecond)
	}
	l := summarize(s)
	if l.N != 100 || l.P50 != 50*time.Millisecond || l.P90 != 90*time.Millisecond || l.P99 != 99*time.Millisecond || l.Max != 100*time.Millisecond {
		t.Errorf("1..100ms: %+v", l)
	}
	if l := summarize([]time.Duration{7}); l.P50 != 7 || l.P99 != 7 || l.Max != 7 {
		t.Errorf("one sample: %+v", l)
	}
	if l := summarize(nil); l != (Latency{}) {
		t.Errorf("no sample: %+v", l)
	}
	if m := median([]float64{3, 1, 2, 10}); m != 2.5 {
		t.Errorf("median of 3 1 2 10: %v", m)
	}
}

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{&phaseError{"auth", &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}}}, "535 5.7.8"},
		{&phaseError{"end of data", &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}}}, "451 4.3.0"},
		{&smtp.SMTPError{Code: 421}, "421"},
		{&smtp.SMTPError{Code: 554, EnhancedCode: smtp.NoEnhancedCode}, "554"},
		{&phaseError{"connect", &net.OpError{Op: "dial", Err: errors.New("refused")}}, "connect"},
		{&phaseError{"tls", errors.New("handshake")}, "tls"},
		{&phaseError{"ehlo", errNoAuth}, "no AUTH"},
		{&phaseError{"data", net.ErrClosed}, "connection closed"},
		{errors.New("strange"), "other"},
	} {
		if got := classify(c.err, false); got != c.want {
			t.Errorf("classify(%v) = %q, want %q", c.err, got, c.want)
		}
	}
	if got := classify(net.ErrClosed, true); got != "timeout" {
		t.Errorf("classify after the watchdog: %q, want timeout", got)
	}
}

func runCLI(ctx context.Context, args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := runMain(ctx, args, &out, &errOut)
	return code, out.String(), errOut.String()
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestBareDurable: with Durable, each message the bare server answers 250
// is a complete file in the maildir's new/, and tmp/ is left empty.
func TestBareDurable(t *testing.T) {
	dir := t.TempDir()
	b, err := StartBare(BareConfig{
		Addr: "127.0.0.1:0", TLS: TLSStartTLS, Durable: dir,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{getPKI(t).cert}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	const n = 23
	r, err := Run(context.Background(), Config{
		Addr: b.Addr(), TLS: TLSStartTLS, TLSConfig: clientConfig(t), Auth: AuthPlain,
		User: "u@example.it", Password: "p", Clients: 4, Messages: n, Mode: ModeReuse, Size: 4096, Timeout: 30 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if r.Sent != n || r.Failed != 0 {
		t.Fatalf("sent %d, failed %d %v; want %d sent", r.Sent, r.Failed, r.ErrorExamples, n)
	}
	files, err := os.ReadDir(filepath.Join(dir, "new"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != n {
		t.Errorf("%d files in new/, want %d", len(files), n)
	}
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(dir, "new", f.Name()))
		if err != nil {
			t.Fatal(err)
		}
		m, err := mail.ReadMessage(bytes.NewReader(data))
		if err != nil || m.Header.Get("Message-ID") == "" || len(data) < 4000 {
			t.Errorf("new/%s: %d octets, %v: not the whole message", f.Name(), len(data), err)
		}
	}
	if tmp, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(tmp) != 0 {
		t.Errorf("%d files left in tmp/", len(tmp))
	}
}

// TestBench runs pecgw-load bench end to end on a small load: the three
// servers start from a fresh folder, every round of each is measured, and
// the table has every figure (messages, latency, CPU, RSS, ratios).
func TestBench(t *testing.T) {
	if testing.Short() {
		t.Skip("builds pecgw and runs three servers (-short)")
	}
	bin := filepath.Join(t.TempDir(), "pecgw")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/pecgw/pecgw/cmd/pecgw").CombinedOutput(); err != nil {
		t.Fatalf("go build pecgw: %v\n%s", err, out)
	}
	dir := t.TempDir()
	var log lockedBuffer
	const n, rounds = 30, 2
	// The same binary as its own base: the ratio pecgw/base is measured
	// like any other.
	res, err := Bench(context.Background(), BenchConfig{
		Load: Config{
			TLS: TLSStartTLS, Auth: AuthPlain, Clients: 3, Messages: n, Mode: ModeReuse, Size: 10 << 10, Timeout: 60 * time.Second,
		},
		PecgwBin: bin, BaseBin: bin, KeyType: "p256", Dir: dir, Keep: true, Rounds: rounds, Self: os.Args[0], Log: &log,
	})
	if err != nil {
		t.Fatalf("Bench: %v\n%s", err, log.String())
	}
	if len(res.Rows) != 4 {
		t.Fatalf("%d rows, want 4 (sink, durable, base, pecgw)", len(res.Rows))
	}
	if len(res.VsBase) != rounds || res.VsBaseMedian <= 0 {
		t.Errorf("pecgw/base %v, median %v: want one per round, positive", res.VsBase, res.VsBaseMedian)
	}
	if files, _ := os.ReadDir(filepath.Join(dir, "base", "outbound", "new")); len(files) != n*rounds {
		t.Errorf("base pecgw: %d envelopes in outbound/new/, want %d", len(files), n*rounds)
	}
	for _, row := range res.Rows {
		if row.Sent != n*rounds || row.Failed != 0 || len(row.Rounds) != rounds {
			t.Errorf("%s: sent %d, errors %d %v, %d rounds; want %d sent, %d rounds", row.Server, row.Sent, row.Failed, row.ErrorCodes, len(row.Rounds), n*rounds, rounds)
		}
		if row.Rate <= 0 || row.PeakRSS <= 0 || row.CPUPerMsg <= 0 {
			t.Errorf("%s: rate %v, peak RSS %d, CPU/msg %v: want all positive", row.Server, row.Rate, row.PeakRSS, row.CPUPerMsg)
		}
		checkLatency(t, row.Server, row.Message, n*rounds)
	}
	if len(res.VsSink) != rounds || len(res.VsDurable) != rounds || res.VsSinkMedian <= 0 || res.VsDurableMedian <= 0 {
		t.Errorf("ratios %v %v, medians %v %v: want one per round, positive", res.VsSink, res.VsDurable, res.VsSinkMedian, res.VsDurableMedian)
	}
	// What each server did is on disk: the durable baseline's messages,
	// pecgw's envelopes.
	if files, _ := os.ReadDir(filepath.Join(dir, "durable", "new")); len(files) != n*rounds {
		t.Errorf("durable baseline: %d messages in new/, want %d", len(files), n*rounds)
	}
	if files, _ := os.ReadDir(filepath.Join(dir, "pecgw", "outbound", "new")); len(files) != n*rounds {
		t.Errorf("pecgw: %d envelopes in outbound/new/, want %d", len(files), n*rounds)
	}
	var out bytes.Buffer
	printBench(&out, res)
	for _, want := range []string{"sink", "durable", "base (p256)", "pecgw (p256)", "pecgw / sink:", "pecgw / durable:", "pecgw / base:", "CPU/msg", "peak RSS"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table without %q:\n%s", want, out.String())
		}
	}
	t.Logf("\n%s", out.String())
}
