package dedup

import (
	"net"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/pecgw/pecgw/internal/testtool"
)

// sharedRedis is the server of the package's tests, started by TestMain;
// nil when redis-server is missing (startErr says why when it failed).
var (
	sharedRedis *testtool.Redis
	startErr    error
)

func TestMain(m *testing.M) {
	var dir string
	if _, err := exec.LookPath("redis-server"); err == nil {
		if dir, err = os.MkdirTemp("", "dedup-redis"); err == nil {
			sharedRedis, startErr = testtool.RunRedis(dir, freeAddr())
		} else {
			startErr = err
		}
	}
	code := m.Run()
	if sharedRedis != nil {
		sharedRedis.Stop()
	}
	if dir != "" {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// needRedis returns the address of the shared server, or skips (fails
// under PECGW_NO_SKIP) when redis-server is not installed.
func needRedis(t testing.TB) string {
	t.Helper()
	testtool.Need(t, "redis-server")
	if startErr != nil || sharedRedis == nil {
		t.Fatalf("redis-server did not start: %v", startErr)
	}
	return sharedRedis.Addr
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
