package testtool

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Dovecot is a real Dovecot run by a test in the foreground, serving only
// its authentication socket, with its configuration, sockets, state, log
// and users file in a temporary folder of its own. It runs as the user
// running the test (root or not: no system user, path or privilege is
// needed); t.Cleanup stops it, and a failed test shows its log.
type Dovecot struct {
	t      testing.TB
	bin    string
	dir    string
	conf   string
	users  string
	socket string
	log    string
	stderr string

	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// StartDovecot starts a Dovecot whose passdb holds users (address →
// plaintext password, not empty; it may hold any byte but NUL, though
// Dovecot refuses at login a password with \001, TAB, CR or LF), or
// skips the test (fails it under PECGW_NO_SKIP) when Dovecot is not
// installed.
func StartDovecot(t testing.TB, users map[string]string) *Dovecot {
	t.Helper()
	return StartDovecotFields(t, users, nil)
}

// StartDovecotFields is StartDovecot with passdb extra fields for some
// users (address → the passwd-file's last field, space-separated, e.g.
// "nologin reason=Disabled" or "allow_nets=192.0.2.0/24").
func StartDovecotFields(t testing.TB, users, fields map[string]string) *Dovecot {
	t.Helper()
	// Not Need: its hint would name a package "dovecot"; both
	// programs are in dovecot-core.
	bin, err := exec.LookPath("dovecot")
	if err != nil {
		Missing(t, "dovecot is not installed (on Debian: apt-get install dovecot-core)")
	}
	doveadm, err := exec.LookPath("doveadm")
	if err != nil {
		Missing(t, "doveadm is not installed (on Debian: apt-get install dovecot-core)")
	}
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		t.Fatalf("dovecot --version: %v", err)
	}
	v24, err := dovecotIs24(string(out))
	if err != nil {
		t.Fatal(err)
	}
	// Dovecot's master starts its auth process as default_internal_user
	// and would start login processes as default_login_user: both are
	// the user running the test, so that Dovecot runs without root, and
	// as root without the system users dovecot and dovenull.
	me, err := user.Current()
	if err != nil {
		Missing(t, "the current user has no name Dovecot could run as: "+err.Error())
	}
	group, err := user.LookupGroupId(me.Gid)
	if err != nil {
		Missing(t, "the current group has no name Dovecot could run as: "+err.Error())
	}
	if !dovecotSafe.MatchString(me.Username) || !dovecotSafe.MatchString(group.Name) {
		t.Fatalf("user %q or group %q cannot be written in dovecot.conf", me.Username, group.Name)
	}

	d := &Dovecot{t: t, bin: bin, dir: dovecotDir(t)}
	d.conf = filepath.Join(d.dir, "dovecot.conf")
	d.users = filepath.Join(d.dir, "users")
	d.socket = filepath.Join(d.dir, "run", "auth-client")
	d.log = filepath.Join(d.dir, "dovecot.log")
	d.stderr = filepath.Join(d.dir, "stderr.log")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("dovecot's log (%s):\n%s", d.dir, d.Log())
		}
	})
	if err := os.WriteFile(d.conf, []byte(dovecotConf(d.dir, me.Username, group.Name, v24)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := d.writeUsers(doveadm, users, fields); err != nil {
		t.Fatal(err)
	}
	if err := d.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Stop)
	return d
}

// dovecotSafe is what a path or a name may hold in dovecot.conf: there
// '#' starts a comment, '%' and '$' are expanded, spaces and quotes split.
var dovecotSafe = regexp.MustCompile(`^[A-Za-z0-9/._-]+$`)

// dovecotDir is the folder of a Dovecot: t.TempDir(), unless its path
// cannot be written in dovecot.conf (t.TempDir keeps '#', '$', '%', '&'
// and spaces from a subtest's name) or would make the socket's path too
// long for a unix socket (108 bytes on Linux, with run/auth-client and
// the longer run/auth-master-like names after the folder); then a
// folder of its own in the system's temporary folder, removed as well.
func dovecotDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if dovecotSafe.MatchString(dir) && len(dir) <= 80 {
		return dir
	}
	dir, err := os.MkdirTemp("", "pecgw-dovecot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("removing dovecot's folder: %v", err)
		}
	})
	if !dovecotSafe.MatchString(dir) || len(dir) > 80 {
		t.Fatalf("temporary folder %q cannot be Dovecot's: set TMPDIR to a short plain path", dir)
	}
	return dir
}

// dovecotIs24 tells from `dovecot --version` ("2.3.19.1 (9b53102964)",
// "2.4.1-4 (7d8c0e5759)") whether the configuration takes 2.4's syntax.
func dovecotIs24(version string) (bool, error) {
	m := regexp.MustCompile(`^(\d+)\.(\d+)`).FindStringSubmatch(strings.TrimSpace(version))
	if m == nil {
		return false, fmt.Errorf("cannot read dovecot's version from %q", version)
	}
	major, _ := strconv.Atoi(m[1])
	minor, _ := strconv.Atoi(m[2])
	return major > 2 || major == 2 && minor >= 4, nil
}

// dovecotConf is a configuration that serves only the auth-client socket
// (no protocols, so no imap, pop3, lmtp or submission listeners, and no
// TLS), with a passwd-file passdb and everything under dir, run as
// user:group.
//
// Dovecot 2.3 syntax was run here (Debian 12's 2.3.19.1), as root and as
// an unprivileged user. The 2.4 one follows the 2.4 documentation
// (dovecot_config_version and dovecot_storage_version first; named passdb
// blocks whose file is passwd_file_path) and was not run.
//
// service anvil { chroot = }: anvil chroots to base_dir/empty by default,
// which only root may do.
//
// auth_failure_delay = 0: Dovecot holds every FAIL for this many seconds,
// 2 by default (auth-settings.c failure_delay), so that a wrong password
// answers no faster than a right one. With 0 a FAIL still waits for the
// 0.5 s timer that flushes the delayed failures (auth-request-handler.c
// AUTH_FAILURE_DELAY_CHECK_MSECS): tests see FAILs within about half a
// second. The penalty by client IP (auth-penalty.c, 2 to 15 s before a
// request from an IP that failed is looked at) stays as Dovecot ships it;
// the gateway's client sends no-penalty, which its tests check.
func dovecotConf(dir, user, group string, v24 bool) string {
	var b strings.Builder
	if v24 {
		b.WriteString("dovecot_config_version = 2.4.0\ndovecot_storage_version = 2.4.0\n")
	}
	fmt.Fprintf(&b, `# A Dovecot run by a test of github.com/pecgw/pecgw (internal/testtool).
base_dir = %[1]s/run
state_dir = %[1]s/state
instance_name = pecgw-test
protocols =
ssl = no
log_path = %[1]s/dovecot.log
default_internal_user = %[2]s
default_internal_group = %[3]s
default_login_user = %[2]s
auth_verbose = yes
auth_failure_delay = 0
auth_mechanisms = plain
`, dir, user, group)
	if v24 {
		fmt.Fprintf(&b, "passdb users {\n  driver = passwd-file\n  passwd_file_path = %s/users\n}\n", dir)
	} else {
		fmt.Fprintf(&b, "passdb {\n  driver = passwd-file\n  args = %s/users\n}\n", dir)
	}
	b.WriteString("service anvil {\n  chroot =\n}\n")
	b.WriteString("service auth {\n  unix_listener auth-client {\n    mode = 0600\n  }\n}\n")
	return b.String()
}

// writeUsers writes the passwd-file, "user:{SCHEME}hash::::::fields" a
// line (the extra fields may hold ':', as in allow_nets=2001:db8::/32:
// passwd-file joins what follows the seventh ':').
func (d *Dovecot) writeUsers(doveadm string, users, fields map[string]string) error {
	for u := range fields {
		if _, ok := users[u]; !ok {
			return fmt.Errorf("extra fields for %s, who has no password", u)
		}
	}
	names := make([]string, 0, len(users))
	for u := range users {
		names = append(names, u)
	}
	sort.Strings(names)
	var b bytes.Buffer
	for _, u := range names {
		pw := users[u]
		if u == "" || strings.ContainsAny(u, ":\n\r\x00") || strings.HasPrefix(u, "#") {
			return fmt.Errorf("user %q cannot be written in a passwd-file", u)
		}
		if pw == "" || strings.IndexByte(pw, 0) >= 0 {
			return fmt.Errorf("the password of %s is empty or holds a NUL, which doveadm pw cannot take", u)
		}
		if strings.ContainsAny(fields[u], "\n\r\x00") {
			return fmt.Errorf("the extra fields of %s cannot be written in a passwd-file", u)
		}
		hash, err := dovecotHash(doveadm, d.conf, pw)
		if err != nil {
			return fmt.Errorf("the password of %s: %w", u, err)
		}
		fmt.Fprintf(&b, "%s:%s::::::%s\n", u, hash, fields[u])
	}
	return os.WriteFile(d.users, b.Bytes(), 0o600)
}

// dovecotHash hashes pw with `doveadm pw` and checks the hash with
// `doveadm pw -t`. SHA512-CRYPT, as a provider would, but for a password
// of 512 bytes or more: crypt(3) (libxcrypt, CRYPT_MAX_PASSPHRASE_SIZE)
// refuses it, and doveadm pw prints "{SHA512-CRYPT}*0", a hash nothing
// matches; SSHA512 takes any length.
func dovecotHash(doveadm, conf, pw string) (string, error) {
	scheme := "SHA512-CRYPT"
	if len(pw) >= 512 {
		scheme = "SSHA512"
	}
	var stderr bytes.Buffer
	cmd := exec.Command(doveadm, "-c", conf, "pw", "-s", scheme, "-p", pw)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	hash := strings.TrimSpace(string(out))
	if err != nil || !strings.HasPrefix(hash, "{"+scheme+"}") || strings.ContainsAny(hash, ":\n") {
		return "", fmt.Errorf("doveadm pw: %v: %s", err, dovecotHidePassword(hash+" "+stderr.String(), pw))
	}
	stderr.Reset()
	cmd = exec.Command(doveadm, "-c", conf, "pw", "-t", hash, "-p", pw)
	cmd.Stderr = &stderr
	if out, err := cmd.Output(); err != nil || !strings.Contains(string(out), "(verified)") {
		return "", fmt.Errorf("doveadm pw -t does not verify the hash %s: %v: %s", hash, err, dovecotHidePassword(string(out)+stderr.String(), pw))
	}
	return hash, nil
}

// dovecotHidePassword keeps a password out of an error message.
func dovecotHidePassword(s, pw string) string {
	if pw == "" {
		return s
	}
	return strings.ReplaceAll(s, pw, "<password>")
}

// Socket is the path of the auth-client socket.
func (d *Dovecot) Socket() string { return d.socket }

// Log is what Dovecot logged, and wrote on its standard error.
func (d *Dovecot) Log() string {
	l, _ := os.ReadFile(d.log)
	e, _ := os.ReadFile(d.stderr)
	if len(e) > 0 {
		return string(l) + "-- standard error:\n" + string(e)
	}
	return string(l)
}

// BreakPassdb makes the passwd-file unreadable (a symbolic link to
// itself: stat fails with ELOOP, even for root), so that each lookup is
// an internal failure, which Dovecot answers with FAIL code=temp_fail.
// Dovecot looks at the file again at most once a second
// (db-passwd-file.c passwd_file_sync): lookups within the second of the
// last one still answer from what it had read.
func (d *Dovecot) BreakPassdb() {
	d.t.Helper()
	if err := os.Rename(d.users, d.users+".saved"); err != nil {
		d.t.Fatal(err)
	}
	if err := os.Symlink(filepath.Base(d.users), d.users); err != nil {
		d.t.Fatal(err)
	}
}

// RepairPassdb undoes BreakPassdb (with the same delay).
func (d *Dovecot) RepairPassdb() {
	d.t.Helper()
	if err := os.Remove(d.users); err != nil {
		d.t.Fatal(err)
	}
	if err := os.Rename(d.users+".saved", d.users); err != nil {
		d.t.Fatal(err)
	}
	// The file's mtime is what Dovecot compares: make it new.
	now := time.Now()
	if err := os.Chtimes(d.users, now, now); err != nil {
		d.t.Fatal(err)
	}
}

// Start starts Dovecot again after Stop, with the same configuration and
// socket.
func (d *Dovecot) Start() {
	d.t.Helper()
	if err := d.start(); err != nil {
		d.t.Fatal(err)
	}
}

// start runs `dovecot -F -c dovecot.conf` in a process group of its own
// and waits (up to 10 s) until the socket completes a handshake, which
// proves that the auth process runs.
func (d *Dovecot) start() error {
	if d.cmd != nil {
		return fmt.Errorf("dovecot is already running")
	}
	// A master killed by Stop leaves its master.pid: Dovecot refuses to
	// start while that process id is alive, which it may be again,
	// given to another process.
	if err := os.Remove(filepath.Join(d.dir, "run", "master.pid")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	stderr, err := os.OpenFile(d.stderr, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer stderr.Close()
	cmd := exec.Command(d.bin, "-F", "-c", d.conf)
	cmd.Dir = d.dir
	cmd.Stdout, cmd.Stderr = stderr, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("dovecot: %w", err)
	}
	d.cmd, d.done = cmd, make(chan struct{})
	done := d.done
	go func() {
		cmd.Wait()
		close(done)
	}()
	var last error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		select {
		case <-done:
			d.cmd = nil
			return fmt.Errorf("dovecot exited at start (%v):\n%s", cmd.ProcessState, d.Log())
		default:
		}
		if last = dovecotHandshake(d.socket); last == nil {
			return nil
		}
	}
	d.Stop()
	return fmt.Errorf("dovecot's socket %s gave no handshake within 10 s (%v):\n%s", d.socket, last, d.Log())
}

// dovecotHandshake connects to the auth-client socket and reads the
// server's handshake up to DONE (Dovecot auth protocol: the server sends
// it on connecting).
func dovecotHandshake(socket string) error {
	c, err := net.DialTimeout("unix", socket, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	fmt.Fprintf(c, "VERSION\t1\t2\nCPID\t%d\n", os.Getpid())
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return err
		}
		if line == "DONE\n" {
			return nil
		}
	}
}

// Stop kills Dovecot's master and its children (a crash, as far as
// clients can tell: the socket file stays and refuses connections) and
// waits for the master to exit, and for its children to be gone.
func (d *Dovecot) Stop() {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	// The process group start made: the master's id is the group's, and
	// its children (log, config, anvil, auth) are in it.
	pgid := d.cmd.Process.Pid
	syscall.Kill(-pgid, syscall.SIGKILL)
	<-d.done
	d.cmd = nil
	// Its children are killed too, and are the init process's to reap:
	// wait until none is left alive in the group, so that a restart or
	// the folder's removal does not race them.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if !dovecotGroupAlive(pgid) {
			return
		}
		syscall.Kill(-pgid, syscall.SIGKILL)
	}
	d.t.Errorf("dovecot's processes (group %d) are still there 5 s after SIGKILL", pgid)
}

// dovecotGroupAlive tells whether a process of group pgid is still alive:
// kill -0 finds zombies too (children whose reaping is the init
// process's), so /proc tells them apart where there is one.
func dovecotGroupAlive(pgid int) bool {
	if err := syscall.Kill(-pgid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return true
	}
	group := strconv.Itoa(pgid)
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...; comm may hold anything but
		// ends at the last ')'.
		s := string(stat)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) >= 3 && f[0] != "Z" && f[0] != "X" && f[2] == group {
			return true
		}
	}
	return false
}
