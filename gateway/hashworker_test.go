package gateway

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pecgw/pecgw/internal/testtool"
)

// TestMain runs this test binary as the password worker when it is
// started as one (HashWorkerCommand(os.Args[0], n)): the worker tests
// run the real child process, over real pipes.
func TestMain(m *testing.M) {
	if len(os.Args) == 3 && os.Args[1] == hashWorkerArg {
		slots, _ := strconv.Atoi(os.Args[2])
		if err := ServeHashWorker(os.Stdin, os.Stdout, slots); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// startWorker starts this test binary as a hash worker and ends it with
// the test; warnings go to the returned channel.
func startWorker(t *testing.T) (*HashWorker, chan string) {
	t.Helper()
	warns := make(chan string, 16)
	w, err := NewHashWorker(HashWorkerCommand(os.Args[0], 2), func(msg string, err error) {
		select {
		case warns <- fmt.Sprintf("%s: %v", msg, err):
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w, warns
}

// TestHashWorker: a users file checked in the worker answers as it does
// inline (right, wrong, unknown, many at once), the worker runs at nice
// 19 while the daemon's own threads keep their priority, and it ends
// when closed.
func TestHashWorker(t *testing.T) {
	h, err := HashPassword("right")
	if err != nil {
		t.Fatal(err)
	}
	u, err := LoadUsers(writeUsers(t, "mario@pec.example.it:"+h+"\nref@pec.example.it:"+referenceArgon2id+"\nb@pec.example.it:"+bcryptHash(t, "bpw", "$2b$")+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	w, _ := startWorker(t)
	u.UseWorker(w)
	cases := []struct {
		user, pw string
		want     bool
	}{
		{"mario@pec.example.it", "right", true},
		{"MARIO@pec.example.it", "right", true},
		{"mario@pec.example.it", "wrong", false},
		{"ref@pec.example.it", "password", true},
		{"b@pec.example.it", "bpw", true},
		{"b@pec.example.it", "bpx", false},
		{"nobody@pec.example.it", "right", false},
		{"mario@pec.example.it", strings.Repeat("x", maxWorkerPassword+1), false},
	}
	var wg sync.WaitGroup
	for _, c := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok, err := u.Verify(context.Background(), c.user, c.pw, ClientInfo{})
			if err != nil || ok != c.want {
				t.Errorf("Verify(%s, %.10q) = %v, %v; want %v", c.user, c.pw, ok, err, c.want)
			}
		}()
	}
	wg.Wait()
	pid := w.Pid()
	// The worker has answered, so it has niced itself: all its threads,
	// none of ours.
	for tid, n := range testtool.ThreadNices(t, pid) {
		if n != workerNice {
			t.Errorf("worker thread %d at nice %d, want %d", tid, n, workerNice)
		}
	}
	for tid, n := range testtool.ThreadNices(t, os.Getpid()) {
		if n == workerNice {
			t.Errorf("our thread %d is at nice %d too", tid, n)
		}
	}
	w.Close()
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatal("the worker did not end when closed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := w.Check(context.Background(), h, "right"); err == nil {
		t.Error("Check after Close: no error")
	}
}

// slowHash is a valid argon2id PHC string that takes ~1 s to check
// (t=10): a verification that is still running when the test acts.
const slowHash = "$argon2id$v=19$m=65536,t=10,p=2$cGVjZ3ctc2xvdy1zYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"

// TestHashWorkerKilled: when the worker is killed (the OOM killer), the
// checks it was doing fail at once with an error (the Guard's 454 4.7.0,
// not a wrong password), the daemon is warned, and the next check after
// a second starts a new worker that answers.
func TestHashWorkerKilled(t *testing.T) {
	w, warns := startWorker(t)
	h, _ := HashPassword("right")
	errc := make(chan error, 1)
	go func() {
		_, err := w.Check(context.Background(), slowHash, "x")
		errc <- err
	}()
	time.Sleep(100 * time.Millisecond)
	old := w.Pid()
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, errWorkerGone) {
			t.Errorf("check in flight when the worker died: %v, want errWorkerGone", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a check in flight when the worker died still waits")
	}
	select {
	case msg := <-warns:
		if !strings.Contains(msg, "password worker ended") {
			t.Errorf("warning %q", msg)
		}
	case <-time.After(5 * time.Second):
		t.Error("no warning that the worker ended")
	}
	if _, err := w.Check(context.Background(), h, "right"); !errors.Is(err, errWorkerGone) {
		t.Errorf("check right after the death: %v, want errWorkerGone (restarts at most once a second)", err)
	}
	time.Sleep(time.Second)
	ok, err := w.Check(context.Background(), h, "right")
	if err != nil || !ok {
		t.Fatalf("check a second later: %v, %v; want a new worker's true", ok, err)
	}
	if w.Pid() == old || w.Pid() == 0 {
		t.Errorf("worker pid %d after the restart (was %d)", w.Pid(), old)
	}
}

// TestHashWorkerContext: a check whose context ends returns at once;
// the worker's late answer is dropped and the next check is answered.
func TestHashWorkerContext(t *testing.T) {
	w, _ := startWorker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := w.Check(ctx, slowHash, "x"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Check with a 50 ms deadline: %v", err)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("Check with a 50 ms deadline returned after %v", d)
	}
	h, _ := HashPassword("right")
	if ok, err := w.Check(context.Background(), h, "right"); err != nil || !ok {
		t.Errorf("next check: %v, %v", ok, err)
	}
}

// TestServeHashWorkerBadRequest: a request that is cut short or whose
// lengths are over the bounds ends the worker with an error naming it;
// the end of the input ends it cleanly.
func TestServeHashWorkerBadRequest(t *testing.T) {
	req := func(id uint32, hash string, pwLen uint32, pw string) []byte {
		b := binary.BigEndian.AppendUint32(nil, id)
		b = binary.BigEndian.AppendUint16(b, uint16(len(hash)))
		b = append(b, hash...)
		b = binary.BigEndian.AppendUint32(b, pwLen)
		return append(b, pw...)
	}
	var out bytes.Buffer
	if err := ServeHashWorker(bytes.NewReader(nil), &out, 1); err != nil {
		t.Errorf("empty input: %v", err)
	}
	for _, c := range []struct {
		name string
		in   []byte
		want string
	}{
		{"short header", []byte{0, 0, 0, 1, 0}, "request"},
		{"cut hash", req(7, "$argon2id$", 1, "x")[:9], "request 7"},
		{"long password", req(8, "h", maxWorkerPassword+1, ""), "password of 65537 octets"},
		{"cut password", req(9, "h", 5, "ab"), "request 9"},
	} {
		err := ServeHashWorker(bytes.NewReader(c.in), &out, 1)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", c.name, err, c.want)
		}
	}
	out.Reset()
	if err := ServeHashWorker(bytes.NewReader(req(3, "not a hash", 1, "x")), &out, 1); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), []byte{0, 0, 0, 3, 0}) {
		t.Errorf("reply to a malformed hash %x, want id 3 and no match", out.Bytes())
	}
}
