package dedup

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/pecgw/pecgw/internal/testtool"
)

// redisServer is a real redis-server run by the tests, on a loopback port,
// without persistence.
type redisServer struct {
	addr string
	dir  string
	cmd  *exec.Cmd
}

// sharedRedis is the server of the package's tests, started by TestMain;
// nil when redis-server is missing (startErr says why when it failed).
var (
	sharedRedis *redisServer
	startErr    error
)

func TestMain(m *testing.M) {
	if _, err := exec.LookPath("redis-server"); err == nil {
		dir, err := os.MkdirTemp("", "dedup-redis")
		if err == nil {
			sharedRedis, startErr = startRedis(dir, freePort())
		} else {
			startErr = err
		}
	}
	code := m.Run()
	if sharedRedis != nil {
		sharedRedis.stop()
		os.RemoveAll(sharedRedis.dir)
	}
	os.Exit(code)
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startRedis runs redis-server on 127.0.0.1:port and waits until it
// answers.
func startRedis(dir string, port int) (*redisServer, error) {
	cmd := exec.Command("redis-server",
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir,
		"--logfile", filepath.Join(dir, "redis.log"))
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &redisServer{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), dir: dir, cmd: cmd}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		c, err := net.Dial("tcp", s.addr)
		if err != nil {
			continue
		}
		fmt.Fprint(c, "PING\r\n")
		buf := make([]byte, 7)
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, _ := c.Read(buf)
		c.Close()
		if string(buf[:n]) == "+PONG\r\n" {
			return s, nil
		}
	}
	s.stop()
	return nil, fmt.Errorf("redis-server on %s did not answer", s.addr)
}

func (s *redisServer) stop() {
	s.cmd.Process.Kill()
	s.cmd.Wait()
}

// needRedis returns the address of the shared server, or skips (fails
// under PECGW_NO_SKIP) when redis-server is not installed.
func needRedis(t testing.TB) string {
	t.Helper()
	testtool.Need(t, "redis-server")
	if sharedRedis == nil {
		t.Fatalf("redis-server did not start: %v", startErr)
	}
	return sharedRedis.addr
}

func newTestRedis(t testing.TB, addr string, timeout time.Duration) *Redis {
	t.Helper()
	r, err := NewRedis(RedisOptions{Addrs: []string{addr}, Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}
