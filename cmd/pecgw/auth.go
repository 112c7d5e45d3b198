package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"go.uber.org/zap"

	"github.com/pecgw/pecgw/config"
	"github.com/pecgw/pecgw/gateway"
)

// verifier is where the server checks passwords: the users file, or the
// provider's Dovecot (docs/configuration.md, "[users]").
func (s *server) verifier() (gateway.Verifier, error) {
	u := s.cfg.Users
	if u.Backend == "dovecot" {
		// A path is a unix socket (auth-client, or a unix_listener
		// made for us); host:port an inet_listener.
		network, address := "unix", u.DovecotSocket
		if !strings.Contains(address, "/") {
			network = "tcp"
		}
		s.dovecot = gateway.NewDovecot(gateway.DovecotOptions{Network: network, Address: address, Service: u.DovecotService, Timeout: u.DovecotTimeout})
		return gateway.DovecotUsers{D: s.dovecot}, nil
	}
	users, err := gateway.LoadUsers(u.File)
	if err != nil {
		return nil, err
	}
	s.users = users
	return users, nil
}

// startHashWorker moves the password hashing of the users file into a
// child process, pecgw hash-worker, at the lowest CPU priority
// (gateway/hashworker.go; docs/configuration.md, "Logins under attack"):
// an AUTH flood then takes only CPU time nothing else of the daemon
// wants. If the child cannot start, the hashing stays in the daemon and
// the start says so.
func (s *server) startHashWorker() {
	if s.users == nil {
		return // Dovecot hashes
	}
	exe, err := os.Executable()
	if err == nil {
		var w *gateway.HashWorker
		w, err = gateway.NewHashWorker(gateway.HashWorkerCommand(exe, s.guard.Policy().Slots), func(msg string, err error) {
			s.log.Warn(msg, zap.String("event", "auth.worker"), zap.Error(err))
		})
		if err == nil {
			s.users.UseWorker(w)
			s.hashWorker = w
			s.log.Info("password worker started", zap.String("event", "server.start"), zap.Int("pid", w.Pid()), zap.Int("nice", 19))
			return
		}
	}
	s.log.Warn("password worker not started: passwords are checked in the daemon, where an AUTH flood competes with the rest for the CPU",
		zap.String("event", "config.warning"), zap.Error(err))
}

// cmdHashWorker is the password worker: it answers the daemon over its
// stdin and stdout until the daemon closes them (gateway.ServeHashWorker).
// It is the daemon's own child, never started by hand.
func cmdHashWorker(args []string, stdin io.Reader, stdout io.Writer) error {
	if len(args) != 1 {
		return fmt.Errorf("%w: hash-worker SLOTS (the daemon starts it)", errUsage)
	}
	slots, err := strconv.Atoi(args[0])
	if err != nil || slots < 1 {
		return fmt.Errorf("%w: hash-worker: slots %q is not a positive number", errUsage, args[0])
	}
	// A Ctrl-C or a stop reaches the whole process group: the worker
	// ends when the daemon closes its stdin, after answering what it
	// was asked, not before.
	signal.Ignore(os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	return gateway.ServeHashWorker(stdin, stdout, slots)
}

// authPolicy is the Guard's policy from the configuration.
func authPolicy(cfg *config.Config) gateway.AuthPolicy {
	l, u := cfg.Limits, cfg.Users
	p := gateway.AuthPolicy{
		FailuresBeforeDelay:    l.AuthFailuresBeforeDelay,
		LockoutFailures:        l.AuthLockoutFailures,
		AddressLockoutFailures: l.AuthAddressLockoutFailures,
		Window:                 l.AuthLockout,
		MinAuthTime:            l.MinAuthTime,
		CacheTTL:               u.CacheTTL,
		CacheSize:              u.CacheSize,
		Slots:                  u.HashSlots,
		SlotWait:               u.HashWait,
	}
	if p.CacheTTL == 0 {
		p.CacheTTL = -1 // users.cache_ttl = "0s": no cache
	}
	return p
}

// statePasswordMemory says at start how much memory password hashing may
// take at most: slots × the largest argon2id m of the users file
// (docs/configuration.md, "Logins under attack").
func (s *server) statePasswordMemory() {
	p := s.guard.Policy()
	if s.users == nil {
		s.log.Info("password checks", zap.String("event", "server.start"), zap.String("backend", "dovecot"),
			zap.Int("slots", p.Slots), zap.String("cache_ttl", max(p.CacheTTL, 0).String()))
		return
	}
	m := s.users.MaxHashMemory()
	s.log.Info("password checks", zap.String("event", "server.start"), zap.String("backend", "file"),
		zap.Int("slots", p.Slots), zap.String("hash_memory_each", mib(m)), zap.String("hash_memory_at_most", mib(int64(p.Slots)*m)),
		zap.String("cache_ttl", max(p.CacheTTL, 0).String()))
}

func mib(n int64) string { return fmt.Sprintf("%d MiB", n>>20) }

// fileMargin is the file descriptors the daemon needs besides its
// connections: log segments, maildir and spool files, Redis, Dovecot.
const fileMargin = 256

// raiseFileLimit raises RLIMIT_NOFILE to what max_connections needs
// (each connection is a descriptor), the hard limit too where the
// process may (root, CAP_SYS_RESOURCE); it says at start when it cannot.
func raiseFileLimit(maxConns int, log *zap.Logger) {
	need := uint64(maxConns + fileMargin)
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		log.Warn("file descriptor limit unknown", zap.String("event", "config.warning"), zap.Error(err))
		return
	}
	if r.Cur >= need {
		return
	}
	want := r
	want.Cur = need
	if want.Max < need {
		want.Max = need
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err == nil {
		return
	}
	if r.Max > r.Cur { // at least up to the hard limit
		want = syscall.Rlimit{Cur: r.Max, Max: r.Max}
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want) == nil {
			r = want
		}
	}
	log.Warn(fmt.Sprintf("file descriptor limit %d is below what limits.max_connections = %d needs (%d): raise it (systemd LimitNOFILE, ulimit -n) or lower max_connections; beyond it connections fail at accept",
		r.Cur, maxConns, need), zap.String("event", "config.warning"))
}
