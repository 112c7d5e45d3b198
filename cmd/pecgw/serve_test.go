package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"go.uber.org/zap"

	"github.com/pecgw/pecgw/config"
	"github.com/pecgw/pecgw/internal/testtool"
)

// freeAddr returns a loopback address with a port nobody listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	// The kernel may give a port just closed again: never hand out one
	// address twice in this test binary (two listeners of one daemon, or
	// two daemons, on one port fail to start).
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		if _, taken := handedOut.LoadOrStore(addr, true); !taken {
			return addr
		}
	}
	t.Fatal("no free loopback port")
	return ""
}

// clientTLS is a client's TLS configuration trusting only the CA in
// caFile (the development PKI of pecgw init), for loopback listeners.
func clientTLS(t *testing.T, caFile string) *tls.Config {
	t.Helper()
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatalf("no certificate in %s", caFile)
	}
	return &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"}
}

// handedOut holds the addresses freeAddr returned.
var handedOut sync.Map

// TestServeAcceptsOverBothListeners runs what an operator runs: init,
// user add, serve; submits as a mail client does over both listeners
// (STARTTLS + PLAIN, implicit TLS + LOGIN); checks the maildirs with
// openssl, and the log with pecgw log verify.
func TestServeAcceptsOverBothListeners(t *testing.T) {
	openssl := testtool.Need(t, "openssl")
	dir := filepath.Join(t.TempDir(), "data")
	sub, smtps := freeAddr(t), freeAddr(t)
	if code, out, errOut := runCmd(t, "init", "--dir", dir, "--domain", "pec.example.it", "--provider-name", "Example PEC S.p.A.",
		"--submission-addr", sub, "--smtps-addr", smtps); code != 0 {
		t.Fatalf("init: %d\n%s%s", code, out, errOut)
	}
	cfg := filepath.Join(dir, "pecgw.toml")
	if code, out, errOut := runWithStdin(t, "correct horse\n", "user", "add", "mario@pec.example.it", "--config", cfg, "--password-stdin"); code != 0 {
		t.Fatalf("user add: %d\n%s%s", code, out, errOut)
	}

	logs := &lockedBuffer{} // read while the sessions still log
	srv, err := newServer(cfg, logs)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.run(ctx, nil, io.Discard) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve stopped with %v", err)
		}
	}()

	tc := clientTLS(t, filepath.Join(dir, "pki", "ca.pem"))
	msg := func(id string) string {
		return "Date: Mon, 23 Nov 2026 10:00:00 +0100\r\nFrom: mario@pec.example.it\r\nTo: anna@pec.altro.it\r\n" +
			"Subject: prova\r\nMessage-ID: <" + id + "@client>\r\n\r\nciao\r\n"
	}
	for _, c := range []struct {
		name string
		dial func() (*smtp.Client, error)
		auth sasl.Client
	}{
		{"starttls-plain", func() (*smtp.Client, error) { return smtp.DialStartTLS(sub, tc) }, sasl.NewPlainClient("", "mario@pec.example.it", "correct horse")},
		{"smtps-login", func() (*smtp.Client, error) { return smtp.DialTLS(smtps, tc) }, sasl.NewLoginClient("mario@pec.example.it", "correct horse")},
	} {
		cl, err := c.dial()
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if err := cl.Auth(c.auth); err != nil {
			t.Fatalf("%s: auth: %v", c.name, err)
		}
		if err := cl.SendMail("mario@pec.example.it", []string{"anna@pec.altro.it"}, strings.NewReader(msg(c.name))); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		cl.Quit()
	}

	out, _ := filepath.Glob(filepath.Join(dir, "outbound", "new", "*"))
	box, _ := filepath.Glob(filepath.Join(dir, "mailboxes", "mario@pec.example.it", "new", "*"))
	if len(out) != 2 || len(box) != 2 {
		t.Fatalf("%d envelopes, %d receipts\n%s", len(out), len(box), logs.String())
	}
	for _, f := range append(out, box...) {
		o, err := exec.Command(openssl, "cms", "-verify", "-CAfile", filepath.Join(dir, "pki", "ca.pem"), "-in", f, "-out", os.DevNull).CombinedOutput()
		if err != nil {
			t.Errorf("%s: openssl cms -verify: %v\n%s", filepath.Base(f), err, o)
		}
	}
	if code, o, e := runCmd(t, "log", "verify", "--dir", filepath.Join(dir, "log"), "--ca", filepath.Join(dir, "pki", "ca.pem")); code != 0 {
		t.Errorf("log verify: %d\n%s%s", code, o, e)
	}
	// The operational log names events, never a password.
	if strings.Contains(logs.String(), "correct horse") {
		t.Error("the password appears in the operational log")
	}
}

// TestLoggerConcurrent: the operational logger is written by every
// session's goroutine; the race detector catches a writer used without
// a lock (a bytes.Buffer here, as a pipe would be).
func TestLoggerConcurrent(t *testing.T) {
	var buf strings.Builder
	logger, err := newLogger(config.Default(), &buf)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 50 {
				logger.Info("entry", zap.Int("goroutine", i), zap.Int("n", j))
			}
		})
	}
	wg.Wait()
	if n := strings.Count(buf.String(), "\n"); n != 400 {
		t.Errorf("%d lines, want 400", n)
	}
}

// startedServer runs pecgw init in a new folder with free loopback
// addresses and returns the server newServer made of it, not yet run.
func startedServer(t *testing.T) (srv *server, sub string, logs *lockedBuffer) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	sub = freeAddr(t)
	if code, out, errOut := runCmd(t, "init", "--dir", dir, "--domain", "pec.example.it", "--provider-name", "Example PEC S.p.A.",
		"--submission-addr", sub, "--smtps-addr", freeAddr(t)); code != 0 {
		t.Fatalf("init: %d\n%s%s", code, out, errOut)
	}
	logs = &lockedBuffer{}
	srv, err := newServer(filepath.Join(dir, "pecgw.toml"), logs)
	if err != nil {
		t.Fatal(err)
	}
	return srv, sub, logs
}

// runBounded runs srv until ctx ends; the channel gets what run returned,
// error, when it stops.
func runBounded(t *testing.T, srv *server, ctx context.Context) (stopped chan error) {
	t.Helper()
	stopped = make(chan error, 1)
	go func() { stopped <- srv.run(ctx, nil, io.Discard) }()
	return stopped
}

// TestStopRightAfterStart: a SIGTERM that comes before the listeners'
// Serve began stops the daemon. go-smtp's Shutdown closes only the
// listeners Serve registered, and a Serve beginning after it accepted for
// ever (the crash test's last SIGTERM hung so, once in many runs).
func TestStopRightAfterStart(t *testing.T) {
	for i := range 20 {
		srv, sub, _ := startedServer(t)
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // the signal is there before run begins
		done := runBounded(t, srv, ctx)
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("start %d: run: %v", i, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("start %d: still running 10 s after the stop", i)
		}
		if c, err := net.DialTimeout("tcp", sub, time.Second); err == nil {
			c.Close()
			t.Fatalf("start %d: %s still accepts after the stop", i, sub)
		}
	}
}

// TestStopClosesIdleConnections: a client that connects and says nothing
// does not hold the daemon past its grace; its connection is closed.
func TestStopClosesIdleConnections(t *testing.T) {
	srv, sub, logs := startedServer(t)
	srv.grace = 300 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := runBounded(t, srv, ctx)
	var c net.Conn
	var err error
	for range 100 { // the listener serves once run began
		if c, err = net.Dial("tcp", sub); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	greeting := make([]byte, 512)
	if n, err := c.Read(greeting); err != nil || !strings.HasPrefix(string(greeting[:n]), "220 ") {
		t.Fatalf("greeting %q, %v", greeting[:n], err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("still running 10 s after the stop with one idle client\n%s", logs.String())
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(c); err != nil {
		t.Errorf("the idle connection was not closed: %v", err)
	}
	if !strings.Contains(logs.String(), "connections still open at the end of the grace closed") {
		t.Errorf("no word of the closed connection in the log:\n%s", logs.String())
	}
}
