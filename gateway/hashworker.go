package gateway

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"time"
)

// A HashWorker verifies passwords in a child process that runs at the
// lowest CPU priority (nice 19), as Dovecot runs its password checks in
// auth-worker processes. An argon2id verification is ~180 ms of CPU on
// every core it has (p=2), and a flood of wrong passwords keeps the
// hashing slots full: in the daemon's own process those computations
// share the Go scheduler with everything else and a login the cache
// answers in microseconds, or an acceptance, waited up to 220 ms behind
// them on 2 cores (cmd/pecgw TestAuthFlood). In a process the kernel
// runs only when nothing else wants the CPU, the attacker's guesses take
// the idle time and nothing more (docs/configuration.md, "Logins under
// attack").
//
// The protocol, over the child's stdin and stdout, is private to this
// file: a request is id (4 octets), hash length (2), hash, password
// length (4), password; a reply is id (4) and 1 (match) or 0. Passwords
// travel over a pipe between two processes of the same user, never to
// disk. The child exits when its stdin closes, so it ends with the
// daemon however the daemon ends.
type HashWorker struct {
	command []string
	warn    func(msg string, err error)

	mu      sync.Mutex
	in      io.WriteCloser
	cmd     *exec.Cmd
	pending map[uint32]chan bool
	next    uint32
	dead    bool      // the child is gone (or never started)
	started time.Time // of the last start: restarts at most once a second
	closed  bool
}

// hashWorkerArg is the subcommand that runs ServeHashWorker (pecgw
// hash-worker).
const hashWorkerArg = "hash-worker"

// Largest fields of a request: PHC strings are < 200 octets, and a SASL
// PLAIN password fits in an SMTP line.
const (
	maxWorkerHash     = 1 << 10
	maxWorkerPassword = 64 << 10
)

// errWorkerGone is a verification the child did not answer because it
// ended (killed by the OOM killer, a signal): the login may try again.
var errWorkerGone = errors.New("password worker ended")

// NewHashWorker starts command (the daemon's own executable with the
// argument hash-worker and the number of slots) as the hash worker.
// warn is told when the child ends unexpectedly or cannot start again.
func NewHashWorker(command []string, warn func(msg string, err error)) (*HashWorker, error) {
	if warn == nil {
		warn = func(string, error) {}
	}
	w := &HashWorker{command: command, warn: warn, pending: map[uint32]chan bool{}, dead: true}
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.start(); err != nil {
		return nil, err
	}
	return w, nil
}

// HashWorkerCommand is the command line of a hash worker for executable
// with slots verifications at once.
func HashWorkerCommand(executable string, slots int) []string {
	return []string{executable, hashWorkerArg, fmt.Sprint(slots)}
}

// start runs the child; w.mu is held.
func (w *HashWorker) start() error {
	w.started = time.Now()
	cmd := exec.Command(w.command[0], w.command[1:]...)
	cmd.Stderr = os.Stderr // what it says when it cannot go on
	in, err := cmd.StdinPipe()
	if err != nil {
		return fmt.Errorf("password worker: %w", err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		in.Close()
		return fmt.Errorf("password worker: %w", err)
	}
	if err := cmd.Start(); err != nil {
		in.Close()
		out.Close()
		return fmt.Errorf("password worker %s: %w", w.command[0], err)
	}
	w.cmd, w.in, w.dead = cmd, in, false
	go w.read(cmd, out)
	return nil
}

// read takes the child's replies until it ends, then fails what it had
// not answered.
func (w *HashWorker) read(cmd *exec.Cmd, out io.Reader) {
	r := bufio.NewReader(out)
	var reply [5]byte
	var err error
	for {
		if _, err = io.ReadFull(r, reply[:]); err != nil {
			break
		}
		id := binary.BigEndian.Uint32(reply[:4])
		w.mu.Lock()
		ch, ok := w.pending[id]
		delete(w.pending, id)
		w.mu.Unlock()
		if ok {
			ch <- reply[4] == 1
		}
	}
	werr := cmd.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cmd != cmd {
		return
	}
	w.dead = true
	for id, ch := range w.pending {
		close(ch)
		delete(w.pending, id)
	}
	if !w.closed {
		if werr == nil {
			werr = err
		}
		w.warn("the password worker ended; logins that were being checked get 454 4.7.0 and it starts again at the next login", werr)
	}
}

// Check verifies password against a PHC hash in the child. It blocks
// for the verification; ctx ends the wait (the child's answer is then
// dropped). An error means no answer: the child ended or could not start.
func (w *HashWorker) Check(ctx context.Context, hash, password string) (bool, error) {
	if len(hash) > maxWorkerHash || len(password) > maxWorkerPassword {
		return false, nil // no hash of ours is that long; no password that long is one
	}
	req := make([]byte, 0, 10+len(hash)+len(password))
	ch := make(chan bool, 1)
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return false, errWorkerGone
	}
	if w.dead {
		if time.Since(w.started) < time.Second {
			w.mu.Unlock()
			return false, errWorkerGone
		}
		if err := w.start(); err != nil {
			w.mu.Unlock()
			w.warn("the password worker cannot start again", err)
			return false, err
		}
	}
	w.next++
	id := w.next
	w.pending[id] = ch
	req = binary.BigEndian.AppendUint32(req, id)
	req = binary.BigEndian.AppendUint16(req, uint16(len(hash)))
	req = append(req, hash...)
	req = binary.BigEndian.AppendUint32(req, uint32(len(password)))
	req = append(req, password...)
	_, err := w.in.Write(req) // a pipe write of < 64 KiB is whole
	if err != nil {
		delete(w.pending, id)
	}
	w.mu.Unlock()
	if err != nil {
		return false, fmt.Errorf("%w: %v", errWorkerGone, err)
	}
	select {
	case ok, open := <-ch:
		if !open {
			return false, errWorkerGone
		}
		return ok, nil
	case <-ctx.Done():
		w.mu.Lock()
		delete(w.pending, id)
		w.mu.Unlock()
		return false, ctx.Err()
	}
}

// Pid is the child's process id (0 when none runs).
func (w *HashWorker) Pid() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.dead || w.cmd == nil || w.cmd.Process == nil {
		return 0
	}
	return w.cmd.Process.Pid
}

// Close ends the child (it exits at the end of its stdin).
func (w *HashWorker) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	if w.in != nil {
		return w.in.Close()
	}
	return nil
}

// ServeHashWorker is the child's side (pecgw hash-worker): it verifies
// what r asks, slots at a time, and writes the answers to out in the
// order they finish. It returns nil at the end of r (the daemon closed
// the pipe or ended), after the verifications under way are answered.
//
// It first puts its own process at nice 19 (docs/configuration.md,
// "Logins under attack"): the guesses of a flood then take only the CPU
// the daemon leaves. When it cannot, it says so on stderr and goes on.
func ServeHashWorker(r io.Reader, out io.Writer, slots int) error {
	if err := lowerPriority(); err != nil {
		fmt.Fprintf(os.Stderr, "pecgw hash-worker: %v; verifying at the daemon's priority\n", err)
	}
	br := bufio.NewReader(r)
	var mu sync.Mutex
	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, max(1, slots))
	var hdr [6]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("hash worker: request: %w", err)
		}
		id := binary.BigEndian.Uint32(hdr[:4])
		hl := int(binary.BigEndian.Uint16(hdr[4:]))
		if hl > maxWorkerHash {
			return fmt.Errorf("hash worker: request %d: hash of %d octets", id, hl)
		}
		hash := make([]byte, hl)
		var pl [4]byte
		if _, err := io.ReadFull(br, hash); err != nil {
			return fmt.Errorf("hash worker: request %d: %w", id, err)
		}
		if _, err := io.ReadFull(br, pl[:]); err != nil {
			return fmt.Errorf("hash worker: request %d: %w", id, err)
		}
		n := binary.BigEndian.Uint32(pl[:])
		if n > maxWorkerPassword {
			return fmt.Errorf("hash worker: request %d: password of %d octets", id, n)
		}
		pw := make([]byte, n)
		if _, err := io.ReadFull(br, pw); err != nil {
			return fmt.Errorf("hash worker: request %d: %w", id, err)
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var reply [5]byte
			binary.BigEndian.PutUint32(reply[:4], id)
			if verify(string(hash), string(pw)) {
				reply[4] = 1
			}
			mu.Lock()
			defer mu.Unlock()
			out.Write(reply[:]) // a failed write: the daemon is gone, and r ends next
		}()
	}
}
