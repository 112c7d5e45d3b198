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
