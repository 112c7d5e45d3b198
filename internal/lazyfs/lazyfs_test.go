package lazyfs

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pecgw/pecgw/internal/testtool"
)

// env is one real mount for a test.
type env struct {
	t       *testing.T
	fs      *FS
	backing string
	mnt     string
}

func mount(t *testing.T) *env {
	t.Helper()
	if err := Available(); err != nil {
		testtool.Missing(t, "FUSE is not available ("+err.Error()+"); on Debian: apt-get install fuse3")
	}
	dir := t.TempDir()
	e := &env{t: t, backing: filepath.Join(dir, "backing"), mnt: filepath.Join(dir, "mnt")}
	for _, d := range []string{e.backing, e.mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	f, err := Mount(e.backing, e.mnt)
	if err != nil {
		t.Fatal(err)
	}
	e.fs = f
	t.Cleanup(func() {
		if err := f.Unmount(); err != nil {
			t.Error(err)
		}
	})
	return e
}

// m is a path on the mount.
func (e *env) m(rel string) string { return filepath.Join(e.mnt, rel) }

// write creates or replaces rel with data, fsync'ing it when sync is set.
func (e *env) write(rel, data string, sync bool) {
	e.t.Helper()
	f, err := os.OpenFile(e.m(rel), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := f.WriteString(data); err != nil {
		e.t.Fatal(err)
	}
	if sync {
		if err := f.Sync(); err != nil {
			e.t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		e.t.Fatal(err)
	}
}

// syncFile fsyncs rel through a fresh descriptor.
func (e *env) syncFile(rel string) {
	e.t.Helper()
	f, err := os.OpenFile(e.m(rel), os.O_RDONLY, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		e.t.Fatal(err)
	}
}

// syncDir fsyncs the folder rel ("." for the root).
func (e *env) syncDir(rel string) {
	e.t.Helper()
	e.syncFile(rel)
}

func (e *env) mkdir(rel string) {
	e.t.Helper()
	if err := os.Mkdir(e.m(rel), 0o755); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) cut() Lost {
	e.t.Helper()
	lost, err := e.fs.PowerCut()
	if err != nil {
		e.t.Fatal(err)
	}
	return lost
}

// has checks rel holds want, in the backing folder and on the mount.
func (e *env) has(rel, want string) {
	e.t.Helper()
	for _, root := range []string{e.backing, e.mnt} {
		got, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			e.t.Errorf("%s: %v", root, err)
		} else if string(got) != want {
			e.t.Errorf("%s/%s = %q, want %q", root, rel, got, want)
		}
	}
}

// gone checks rel exists neither in the backing folder nor on the mount.
func (e *env) gone(rel string) {
	e.t.Helper()
	for _, root := range []string{e.backing, e.mnt} {
		if _, err := os.Lstat(filepath.Join(root, rel)); !errors.Is(err, os.ErrNotExist) {
			e.t.Errorf("%s/%s: %v, want it gone", root, rel, err)
		}
	}
}

func (e *env) lost(got, want Lost) {
	e.t.Helper()
	if got != want {
		e.t.Errorf("lost %+v, want %+v", got, want)
	}
}

// A write without fsync is thrown away, though its name is durable. This is
// also the proof that writes reach the server: a passthrough write would
// bypass the undo log and survive.
func TestWriteWithoutFsync(t *testing.T) {
	e := mount(t)
	e.write("f", "hello", false)
	e.syncDir(".")
	e.lost(e.cut(), Lost{Files: 1, Bytes: 5})
	e.has("f", "")
}

// fsync of a file does not make its name durable.
func TestFsyncWithoutFolderFsync(t *testing.T) {
	e := mount(t)
	e.write("f", "hello", true)
	e.lost(e.cut(), Lost{Entries: 1})
	e.gone("f")
}

func TestFsyncAndFolderFsync(t *testing.T) {
	e := mount(t)
	e.write("f", "hello", true)
	e.syncDir(".")
	e.lost(e.cut(), Lost{})
	e.has("f", "hello")
}

// A write to a file opened O_SYNC or O_DSYNC is durable when it returns (the
// kernel follows it with an FSYNC); one opened O_DIRECT is not.
func TestOpenFlags(t *testing.T) {
	e := mount(t)
	for name, flag := range map[string]int{"sync": syscall.O_SYNC, "dsync": syscall.O_DSYNC, "direct": syscall.O_DIRECT} {
		f, err := os.OpenFile(e.m(name), os.O_WRONLY|os.O_CREATE|flag, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(name); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		f.Close()
	}
	e.syncDir(".")
	e.lost(e.cut(), Lost{Files: 1, Bytes: int64(len("direct"))})
	e.has("sync", "sync")
	e.has("dsync", "dsync")
	e.has("direct", "")
}

// Appends after a durable prefix are cut back to the prefix, and two
// descriptors opened O_APPEND interleave whole writes at the end.
func TestAppend(t *testing.T) {
	e := mount(t)
	e.write("log", "prefix.", true)
	e.syncDir(".")
	a, err := os.OpenFile(e.m("log"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.OpenFile(e.m("log"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []struct {
		f *os.File
		s string
	}{{a, "one."}, {b, "two."}, {a, "three."}} {
		if _, err := w.f.WriteString(w.s); err != nil {
			t.Fatal(err)
		}
	}
	a.Close()
	b.Close()
	e.has("log", "prefix.one.two.three.")
	e.lost(e.cut(), Lost{Files: 1, Bytes: int64(len("one.two.three."))})
	e.has("log", "prefix.")
}

// An overwrite inside the durable region gets the original bytes back.
func TestOverwriteDurable(t *testing.T) {
	e := mount(t)
	e.write("f", "0123456789", true)
	e.syncDir(".")
	f, err := os.OpenFile(e.m("f"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []struct {
		off int64
		s   string
	}{{3, "abc"}, {2, "XXXXX"}, {8, "tail-beyond"}} {
		if _, err := f.WriteAt([]byte(w.s), w.off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	e.has("f", "01XXXXX7tail-beyond")
	// Saved: [3,6), then [2,3) and [6,7), then [8,10); grown by 9.
	e.lost(e.cut(), Lost{Files: 1, Bytes: 3 + 2 + 2 + 9})
	e.has("f", "0123456789")
}

// Truncations, by descriptor, by path and by O_TRUNC, are undone.
func TestTruncate(t *testing.T) {
	e := mount(t)
	for _, n := range []string{"fd", "path", "otrunc"} {
		e.write(n, "0123456789", true)
	}
	e.syncDir(".")

	f, err := os.OpenFile(e.m("fd"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(3); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("xy"), 5); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Truncate(e.m("path"), 20); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(e.m("path"), 1); err != nil {
		t.Fatal(err)
	}
	e.write("otrunc", "new", false)

	e.has("fd", "012\x00\x00xy")
	e.has("path", "0")
	e.has("otrunc", "new")
	lost := e.cut()
	if lost.Files != 3 || lost.Entries != 0 {
		t.Errorf("lost %+v, want 3 files, no entries", lost)
	}
	for _, n := range []string{"fd", "path", "otrunc"} {
		e.has(n, "0123456789")
	}
}

// fallocate, punching a hole in the durable bytes and growing the file, is
// undone.
func TestFallocate(t *testing.T) {
	e := mount(t)
	e.write("f", "0123456789", true)
	e.syncDir(".")
	f, err := os.OpenFile(e.m("f"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	const punchHole = 0x02
	if err := syscall.Fallocate(int(f.Fd()), punchHole|fallocKeepSize, 2, 4); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Fallocate(int(f.Fd()), 0, 0, 16); err != nil {
		t.Fatal(err)
	}
	f.Close()
	e.has("f", "01\x00\x00\x00\x006789\x00\x00\x00\x00\x00\x00")
	e.lost(e.cut(), Lost{Files: 1, Bytes: 4 + 6})
	e.has("f", "0123456789")
}

// The trash link that keeps a removed durable name's inode does not show in
// st_nlink.
func TestNlink(t *testing.T) {
	e := mount(t)
	e.write("f", "x", true)
	e.write("g", "y", true)
	e.syncDir(".")
	nlink := func(rel string) uint64 {
		t.Helper()
		var st syscall.Stat_t
		if err := syscall.Stat(e.m(rel), &st); err != nil {
			t.Fatal(err)
		}
		return st.Nlink
	}
	if err := os.Link(e.m("f"), e.m("f2")); err != nil {
		t.Fatal(err)
	}
	if n := nlink("f"); n != 2 {
		t.Errorf("nlink after link = %d, want 2", n)
	}
	if err := os.Remove(e.m("f")); err != nil {
		t.Fatal(err)
	}
	if n := nlink("f2"); n != 1 {
		t.Errorf("nlink after unlink = %d, want 1", n)
	}
	if err := os.Rename(e.m("g"), e.m("h")); err != nil {
		t.Fatal(err)
	}
	if n := nlink("h"); n != 1 {
		t.Errorf("nlink after rename = %d, want 1", n)
	}
	e.lost(e.cut(), Lost{Entries: 4})
	e.has("f", "x")
	e.has("g", "y")
	e.gone("f2")
	e.gone("h")
	if n := nlink("f"); n != 1 {
		t.Errorf("nlink after the cut = %d, want 1", n)
	}
}

// A rename over a durable file, without a folder fsync: the old file is back
// under its name with its durable content, the new name is gone.
func TestRenameOver(t *testing.T) {
	e := mount(t)
	e.write("a", "old", true)
	e.syncDir(".")
	f, err := os.OpenFile(e.m("a"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(", changed")
	f.Close()
	e.write("tmp", "new", true)
	if err := os.Rename(e.m("tmp"), e.m("a")); err != nil {
		t.Fatal(err)
	}
	e.has("a", "new")
	e.lost(e.cut(), Lost{Files: 1, Bytes: int64(len(", changed")), Entries: 1})
	e.has("a", "old")
	e.gone("tmp")
}

// write-temp, fsync, rename, fsync folder: the new content survives, the
// temporary name does not.
func TestAtomicReplace(t *testing.T) {
	e := mount(t)
	e.write("a", "old", true)
	e.syncDir(".")
	e.write("a.tmp", "new", true)
	if err := os.Rename(e.m("a.tmp"), e.m("a")); err != nil {
		t.Fatal(err)
	}
	e.syncDir(".")
	e.lost(e.cut(), Lost{})
	e.has("a", "new")
	e.gone("a.tmp")
	if ents, err := os.ReadDir(e.fs.trash); err != nil || len(ents) != 0 {
		t.Errorf("trash after the cut: %v, %v", ents, err)
	}
}

// An unlink without folder fsync is undone, and the file keeps its durable
// data even though it was changed before going.
func TestUnlink(t *testing.T) {
	e := mount(t)
	e.write("f", "durable", true)
	e.syncDir(".")
	f, err := os.OpenFile(e.m("f"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(" and not")
	f.Close()
	if err := os.Remove(e.m("f")); err != nil {
		t.Fatal(err)
	}
	e.gone("f")
	e.lost(e.cut(), Lost{Files: 1, Bytes: 8, Entries: 1})
	e.has("f", "durable")
}

// An unlink made durable stays.
func TestUnlinkDurable(t *testing.T) {
	e := mount(t)
	e.write("f", "durable", true)
	e.syncDir(".")
	if err := os.Remove(e.m("f")); err != nil {
		t.Fatal(err)
	}
	e.syncDir(".")
	e.lost(e.cut(), Lost{})
	e.gone("f")
}

// maildir delivers into tmp/x, fsyncs, links new/x, fsyncs new/, unlinks
// tmp/x: the message survives in new/ only, with or without a fsync of tmp/.
func TestMaildir(t *testing.T) {
	e := mount(t)
	for _, d := range []string{"md", "md/tmp", "md/new", "md/cur"} {
		e.mkdir(d)
	}
	e.syncDir("md")
	e.syncDir(".")
	e.write("md/tmp/x", "message", true)
	if err := os.Link(e.m("md/tmp/x"), e.m("md/new/x")); err != nil {
		t.Fatal(err)
	}
	e.syncDir("md/new")
	if err := os.Remove(e.m("md/tmp/x")); err != nil {
		t.Fatal(err)
	}
	e.lost(e.cut(), Lost{})
	e.has("md/new/x", "message")
	e.gone("md/tmp/x")
}

// The same without the fsync of new/: the message is gone from both.
func TestMaildirWithoutFsyncOfNew(t *testing.T) {
	e := mount(t)
	for _, d := range []string{"md", "md/tmp", "md/new", "md/cur"} {
		e.mkdir(d)
	}
	e.syncDir("md")
	e.syncDir(".")
	e.write("md/tmp/x", "message", true)
	if err := os.Link(e.m("md/tmp/x"), e.m("md/new/x")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(e.m("md/tmp/x")); err != nil {
		t.Fatal(err)
	}
	e.lost(e.cut(), Lost{Entries: 1})
	e.gone("md/new/x")
	e.gone("md/tmp/x")
}

// A folder made without an fsync of its parent goes with its content, even
// content made durable inside it.
func TestMkdirWithoutParentFsync(t *testing.T) {
	e := mount(t)
	e.mkdir("d")
	e.write("d/f", "data", true)
	e.syncDir("d")
	e.lost(e.cut(), Lost{Entries: 1})
	e.gone("d")
}

// Nested new folders: durable as far as the fsyncs reach, from the top.
func TestNestedFolders(t *testing.T) {
	e := mount(t)
	e.mkdir("a")
	e.syncDir(".")
	e.mkdir("a/b")
	e.mkdir("a/b/c")
	e.write("a/b/c/f", "deep", true)
	e.syncDir("a/b/c")
	e.syncDir("a/b") // not a: b goes, with c and f
	e.mkdir("x")
	e.mkdir("x/y")
	e.write("x/y/f", "kept", true)
	e.syncDir("x/y")
	e.syncDir("x")
	e.syncDir(".")
	e.lost(e.cut(), Lost{Entries: 1})
	if _, err := os.Stat(e.m("a")); err != nil {
		t.Error(err)
	}
	e.gone("a/b")
	e.has("x/y/f", "kept")
}

func TestSymlink(t *testing.T) {
	e := mount(t)
	if err := os.Symlink("target-1", e.m("kept")); err != nil {
		t.Fatal(err)
	}
	e.syncDir(".")
	if err := os.Symlink("target-2", e.m("lost")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(e.m("kept")); err != nil {
		t.Fatal(err)
	}
	e.lost(e.cut(), Lost{Entries: 2})
	if got, err := os.Readlink(e.m("kept")); got != "target-1" || err != nil {
		t.Errorf("readlink kept = %q, %v", got, err)
	}
	e.gone("lost")
}

// flock(2) excludes across open file descriptions, on files and folders:
// the kernel keeps the locks of a FUSE server that does not.
func TestFlock(t *testing.T) {
	e := mount(t)
	e.write("lock", "", true)
	for _, rel := range []string{"lock", "."} {
		a, err := os.Open(e.m(rel))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.Open(e.m(rel))
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Flock(int(a.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			t.Fatalf("%s: first lock: %v", rel, err)
		}
		if err := syscall.Flock(int(b.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != syscall.EWOULDBLOCK {
			t.Errorf("%s: second lock: %v, want EWOULDBLOCK", rel, err)
		}
		a.Close()
		if err := syscall.Flock(int(b.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			t.Errorf("%s: lock after the first went: %v", rel, err)
		}
		b.Close()
	}

	// And across processes: this test binary, run again, finds the lock
	// taken.
	a, err := os.Open(e.m("lock"))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := syscall.Flock(int(a.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), flockEnv+"="+e.m("lock"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("other process: %v\n%s", err, out)
	}
}

// flockEnv, when set, makes the test binary TestFlock's other process: it
// exits 0 when it finds the file it names locked.
const flockEnv = "LAZYFS_FLOCK"

func TestMain(m *testing.M) {
	if p := os.Getenv(flockEnv); p != "" {
		f, err := os.Open(p)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != syscall.EWOULDBLOCK {
			fmt.Fprintf(os.Stderr, "lock held by another process: %v, want EWOULDBLOCK\n", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// A cut while a file is open fails, throws nothing away, and leaves the
// mount working.
func TestPowerCutBusy(t *testing.T) {
	e := mount(t)
	e.fs.busyWait = 50 * time.Millisecond
	e.write("f", "not durable", false)
	f, err := os.Open(e.m("f"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.fs.PowerCut(); err == nil {
		t.Fatal("power cut with a file open: no error")
	}
	e.has("f", "not durable")
	f.Close()
	e.lost(e.cut(), Lost{Entries: 1})
	e.gone("f")
}

func TestPowerCutTwice(t *testing.T) {
	e := mount(t)
	e.write("f", "durable", true)
	e.syncDir(".")
	e.write("g", "not", false)
	e.lost(e.cut(), Lost{Entries: 1})
	e.lost(e.cut(), Lost{})
	e.has("f", "durable")
	e.gone("g")
	e.write("g", "again", true)
	e.syncDir(".")
	e.lost(e.cut(), Lost{})
	e.has("g", "again")
}

func TestUnmount(t *testing.T) {
	e := mount(t)
	e.write("f", "not durable", false)
	if err := e.fs.Unmount(); err != nil {
		t.Fatal(err)
	}
	if err := e.fs.Unmount(); err != nil {
		t.Fatal(err)
	}
	if _, err := e.fs.PowerCut(); err == nil {
		t.Error("power cut after Unmount: no error")
	}
	if _, err := os.Stat(e.fs.trash); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("trash after Unmount: %v", err)
	}
	got, err := os.ReadFile(filepath.Join(e.backing, "f"))
	if string(got) != "not durable" || err != nil {
		t.Errorf("backing after Unmount: %q, %v", got, err)
	}
}

// model is what one goroutine of TestConcurrent did in its own folder, and
// what a cut must leave of it.
type model struct {
	cur, dur map[string]*minode // names now, names as of the folder's last fsync
}

// minode is a file of the model.
type minode struct{ cur, dur []byte }

// Goroutines work on files of their own folder at random (create, append,
// overwrite, truncate, fsync, rename, link, unlink, folder fsync), each
// against a model of what must survive; after the cut, every folder must be
// exactly its model's durable state. Twice, the second round starting from
// what the first cut left.
func TestConcurrent(t *testing.T) {
	e := mount(t)
	const workers, ops = 16, 50
	models := make([]*model, workers)
	for w := range models {
		e.mkdir(fmt.Sprint("w", w))
		models[w] = &model{cur: map[string]*minode{}, dur: map[string]*minode{}}
	}
	e.syncDir(".")
	for round := range 2 {
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := range workers {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(round), uint64(w)))
				if err := models[w].run(e.m(fmt.Sprint("w", w)), rng, ops); err != nil {
					errs <- fmt.Errorf("worker %d: %w", w, err)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		t.Logf("round %d: lost %+v", round, e.cut())
		for w, m := range models {
			m.afterCut()
			for _, root := range []string{e.backing, e.mnt} {
				if err := m.check(filepath.Join(root, fmt.Sprint("w", w))); err != nil {
					t.Errorf("round %d, worker %d, %s: %v", round, w, root, err)
				}
			}
		}
	}
}

func (m *model) run(dir string, rng *rand.Rand, ops int) error {
	p := func(name string) string { return filepath.Join(dir, name) }
	data := func() []byte {
		b := make([]byte, 1+rng.IntN(3000))
		for i := range b {
			b[i] = byte('a' + rng.IntN(26))
		}
		return b
	}
	pick := func() (string, *minode) {
		names := make([]string, 0, len(m.cur))
		for n := range m.cur {
			names = append(names, n)
		}
		if len(names) == 0 {
			return "", nil
		}
		slices.Sort(names)
		n := names[rng.IntN(len(names))]
		return n, m.cur[n]
	}
	withFile := func(name string, flag int, fn func(*os.File) error) error {
		f, err := os.OpenFile(p(name), flag, 0o644)
		if err != nil {
			return err
		}
		if err := fn(f); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
	for i := range ops {
		name, ino := pick()
		op := rng.IntN(10)
		if ino == nil {
			op = 0
		}
		var err error
		switch op {
		case 0, 1: // create (or replace by O_TRUNC)
			name := fmt.Sprint("f", rng.IntN(ops))
			d := data()
			sync := rng.IntN(2) == 0
			err = withFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, func(f *os.File) error {
				if _, err := f.Write(d); err != nil {
					return err
				}
				if sync {
					return f.Sync()
				}
				return nil
			})
			if m.cur[name] == nil {
				m.cur[name] = &minode{}
			}
			m.cur[name].cur = d
			if sync {
				m.cur[name].dur = slices.Clone(d)
			}
		case 2: // append
			d := data()
			err = withFile(name, os.O_WRONLY|os.O_APPEND, func(f *os.File) error {
				_, err := f.Write(d)
				return err
			})
			ino.cur = append(ino.cur, d...)
		case 3: // overwrite
			d := data()
			off := rng.IntN(len(ino.cur) + 1)
			err = withFile(name, os.O_WRONLY, func(f *os.File) error {
				_, err := f.WriteAt(d, int64(off))
				return err
			})
			if end := off + len(d); end > len(ino.cur) {
				ino.cur = append(ino.cur, make([]byte, end-len(ino.cur))...)
			}
			copy(ino.cur[off:], d)
		case 4: // truncate
			n := rng.IntN(len(ino.cur) + 100)
			err = os.Truncate(p(name), int64(n))
			if n <= len(ino.cur) {
				ino.cur = ino.cur[:n]
			} else {
				ino.cur = append(ino.cur, make([]byte, n-len(ino.cur))...)
			}
		case 5: // fsync the file
			err = withFile(name, os.O_RDONLY, (*os.File).Sync)
			ino.dur = slices.Clone(ino.cur)
		case 6: // rename, maybe over another
			to := fmt.Sprint("f", rng.IntN(ops))
			err = os.Rename(p(name), p(to))
			// Renaming onto another link of the same file does nothing
			// (rename(2)).
			if m.cur[to] != ino {
				m.cur[to] = ino
				delete(m.cur, name)
			}
		case 7: // link
			to := fmt.Sprint("f", rng.IntN(ops))
			if m.cur[to] != nil {
				continue
			}
			err = os.Link(p(name), p(to))
			m.cur[to] = ino
		case 8: // unlink
			err = os.Remove(p(name))
			delete(m.cur, name)
		case 9: // fsync the folder
			err = withFile(".", os.O_RDONLY, (*os.File).Sync)
			m.dur = maps(m.cur)
		}
		if err != nil {
			return fmt.Errorf("op %d (%d on %s): %w", i, op, name, err)
		}
	}
	return nil
}

func maps(m map[string]*minode) map[string]*minode {
	c := make(map[string]*minode, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// afterCut makes the model what the cut must have left.
func (m *model) afterCut() {
	m.cur = maps(m.dur)
	for _, ino := range m.cur {
		ino.cur = slices.Clone(ino.dur)
	}
}

func (m *model) check(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var got, want []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	for n := range m.cur {
		want = append(want, n)
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		return fmt.Errorf("names %s, want %s", strings.Join(got, " "), strings.Join(want, " "))
	}
	for n, ino := range m.cur {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			return err
		}
		if !bytes.Equal(b, ino.cur) {
			return fmt.Errorf("%s: %d bytes, want %d", n, len(b), len(ino.cur))
		}
	}
	return nil
}

// BenchmarkMaildir delivers b.N messages the maildir way (tmp, fsync, link
// into new, fsync new every tenth message, unlink tmp), then cuts.
func BenchmarkMaildir(b *testing.B) {
	if err := Available(); err != nil {
		b.Skip(err)
	}
	dir := b.TempDir()
	backing, mnt := filepath.Join(dir, "backing"), filepath.Join(dir, "mnt")
	for _, d := range []string{backing, mnt, filepath.Join(backing, "tmp"), filepath.Join(backing, "new")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	f, err := Mount(backing, mnt)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Unmount()
	body := bytes.Repeat([]byte("a message line of some length\n"), 30)
	b.ResetTimer()
	for i := range b.N {
		tmp, msg := filepath.Join(mnt, "tmp", fmt.Sprint(i)), filepath.Join(mnt, "new", fmt.Sprint(i))
		if err := os.WriteFile(tmp, body, 0o644); err != nil {
			b.Fatal(err)
		}
		if err := syncPath(tmp); err != nil {
			b.Fatal(err)
		}
		if err := os.Link(tmp, msg); err != nil {
			b.Fatal(err)
		}
		if i%10 == 0 {
			if err := syncPath(filepath.Join(mnt, "new")); err != nil {
				b.Fatal(err)
			}
		}
		if err := os.Remove(tmp); err != nil {
			b.Fatal(err)
		}
	}
	start := time.Now()
	lost, err := f.PowerCut()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(time.Since(start).Microseconds()), "µs/cut")
	b.ReportMetric(float64(lost.Entries), "entries-lost")
}

func syncPath(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
