package testtool

import (
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// Redis is a real redis-server run by a test on a loopback port, without
// persistence; t.Cleanup stops it.
type Redis struct {
	Addr string
	dir  string
	cmd  *exec.Cmd
}

// StartRedis starts a redis-server for the test, or skips it (fails under
// PECGW_NO_SKIP) when redis-server is not installed.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	Need(t, "redis-server")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	r, err := RunRedis(t.TempDir(), addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	return r
}

// RunRedis starts a redis-server on addr with its files in dir, for a
// TestMain that shares one server across a package's tests; the caller
// stops it.
func RunRedis(dir, addr string) (*Redis, error) {
	r := &Redis{Addr: addr, dir: dir}
	return r, r.Start()
}

// Start (re)starts the server on its address and waits until it answers.
func (r *Redis) Start() error {
	_, port, _ := net.SplitHostPort(r.Addr)
	r.cmd = exec.Command("redis-server", "--port", port, "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", r.dir, "--logfile", filepath.Join(r.dir, "redis.log"))
	if err := r.cmd.Start(); err != nil {
		return fmt.Errorf("redis-server: %w", err)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		c, err := net.Dial("tcp", r.Addr)
		if err != nil {
			continue
		}
		fmt.Fprint(c, "PING\r\n")
		buf := make([]byte, 7)
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, _ := c.Read(buf)
		c.Close()
		if string(buf[:n]) == "+PONG\r\n" {
			return nil
		}
	}
	r.Stop()
	return fmt.Errorf("redis-server on %s did not answer", r.Addr)
}

// Stop kills the server (a crash, as far as clients can tell).
func (r *Redis) Stop() {
	if r.cmd != nil && r.cmd.Process != nil {
		r.cmd.Process.Kill()
		r.cmd.Wait()
		r.cmd = nil
	}
}
