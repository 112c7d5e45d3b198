// Package lazyfs is a FUSE file system for power-loss tests: after
// PowerCut, the backing folder holds exactly what a strict POSIX file system
// would have kept after losing power at that instant, no more and no less.
//
// The idea is LazyFS's (the FUSE layer Jepsen uses to cut the power under
// etcd and PostgreSQL): every operation goes through to a real backing
// folder, and the file system remembers what has not been made durable yet,
// so that a simulated cut can throw away exactly that. The model is POSIX
// taken at its word (fsync(2): it "does not necessarily ensure that the
// entry in the directory containing the file has also reached disk"):
//
//   - a file's data (its bytes and its size) is durable as of its last
//     fsync or fdatasync, on any descriptor of that file;
//   - a folder's entries (create, mkdir, mknod, link, symlink, rename,
//     unlink) are durable as of the folder's last fsync;
//   - the one does not imply the other: fsync of a file does not make its
//     name durable, fsync of a folder does not make its files' data durable.
//
// It is write-through with an undo log, keyed by backing inode number, and
// costs O(changes), never O(folder size), per operation. Before a write,
// truncate or fallocate changes bytes a file had at its last fsync, those
// bytes are read from the backing file and kept in memory (once per byte);
// the size at the last fsync is kept too. Before a name in a folder changes
// for the first time since the folder's last fsync, its durable value is
// kept, and the inode it names is hard-linked into a trash folder beside the
// backing folder (same file system, not visible through the mount, nor in
// st_nlink) so that it can be linked back. An fsync drops what it made
// durable. PowerCut unmounts, finds the kept inodes with one walk of the
// tree, puts every kept name back (parents first; a folder created since is
// moved away whole), writes the kept bytes back and truncates each file to
// its durable size, empties the trash and mounts again. Nothing is ever
// fsync'ed on the backing file system: durability is simulated, which keeps
// the tests fast.
//
// Not modelled, applied at once and treated as durable: rmdir and renaming a
// folder (the programs under test do neither on live data; a folder rename
// also makes the two names it touches durable), metadata (mode, owner,
// times), and the order of writes inside one file between two fsyncs (a cut
// keeps none of them, where a disk might keep a prefix or a random subset,
// as LazyFS's torn-write faults do). sync(2) and syncfs(2) make nothing
// durable. Extended attributes, O_TMPFILE and copy_file_range are refused,
// the last two so that callers fall back to operations the model sees. The
// backing folder must be one file system, with nothing mounted inside it,
// and must only be changed through the mount.
package lazyfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Lost is what a PowerCut threw away.
type Lost struct {
	// Files is the number of files whose data was rolled back to their
	// last fsync.
	Files int
	// Bytes counts the octets of file data thrown away: what files had
	// grown beyond their durable size, plus the durable bytes that had been
	// overwritten, punched or truncated away and were put back.
	Bytes int64
	// Entries is the number of directory entries put back or removed.
	Entries int
}

// FS is a mounted lazy file system. Its methods are safe for concurrent use,
// also with the FUSE traffic on the mount.
type FS struct {
	backing    string // absolute
	mountpoint string // absolute
	trash      string // sibling of backing, holds inodes that durable names still need
	rootIno    uint64

	// cut serializes PowerCut and Unmount.
	cut    sync.Mutex
	server *fuse.Server // nil while not mounted; guarded by cut
	closed bool         // Unmount has run; guarded by cut
	// busyWait is how long an unmount retries while the mount is busy.
	busyWait time.Duration

	undo undoLog
}

// Mount serves backing at mountpoint (both must exist, as folders). It
// creates a trash folder beside backing (".<base>.lazyfs-trash"), which
// Unmount removes.
func Mount(backing, mountpoint string) (*FS, error) {
	var err error
	if backing, err = filepath.Abs(backing); err != nil {
		return nil, fmt.Errorf("lazyfs: backing folder: %w", err)
	}
	if mountpoint, err = filepath.Abs(mountpoint); err != nil {
		return nil, fmt.Errorf("lazyfs: mount point: %w", err)
	}
	if within(mountpoint, backing) || within(backing, mountpoint) {
		return nil, fmt.Errorf("lazyfs: backing folder %s and mount point %s must not contain each other", backing, mountpoint)
	}
	var bst, mst syscall.Stat_t
	if err := syscall.Stat(backing, &bst); err != nil {
		return nil, fmt.Errorf("lazyfs: backing folder: %w", err)
	}
	if err := syscall.Stat(mountpoint, &mst); err != nil {
		return nil, fmt.Errorf("lazyfs: mount point: %w", err)
	}
	if bst.Mode&syscall.S_IFMT != syscall.S_IFDIR || mst.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		return nil, fmt.Errorf("lazyfs: backing folder %s and mount point %s must be folders", backing, mountpoint)
	}
	f := &FS{
		backing:    backing,
		mountpoint: mountpoint,
		trash:      filepath.Join(filepath.Dir(backing), "."+filepath.Base(backing)+".lazyfs-trash"),
		rootIno:    bst.Ino,
		busyWait:   2 * time.Second,
	}
	f.undo.init(f.trash)
	if err := f.emptyTrash(); err != nil {
		return nil, err
	}
	var tst syscall.Stat_t
	if err := syscall.Stat(f.trash, &tst); err != nil {
		return nil, fmt.Errorf("lazyfs: trash folder: %w", err)
	}
	if tst.Dev != bst.Dev {
		os.RemoveAll(f.trash)
		return nil, fmt.Errorf("lazyfs: trash folder %s is not on the file system of %s, so inodes cannot be linked into it", f.trash, backing)
	}
	if err := f.mount(); err != nil {
		os.RemoveAll(f.trash)
		return nil, err
	}
	return f, nil
}

// within says whether path is dir or inside it.
func within(path, dir string) bool {
	return path == dir || strings.HasPrefix(path, dir+string(filepath.Separator))
}

// options are those of every mount: no writeback cache (go-fuse does not ask
// for one), so every write reaches the server when the caller makes it; no
// lock forwarding, so the kernel keeps flock(2) and fcntl locks itself,
// across processes, as on any local file system.
func options() *fs.Options {
	second := time.Second
	return &fs.Options{
		EntryTimeout:    &second,
		AttrTimeout:     &second,
		NullPermissions: true, // a file of mode 000 stays 000
		MountOptions: fuse.MountOptions{
			DirectMount: true, // mount(2) as root; fusermount3 otherwise
			AllowOther:  os.Geteuid() == 0,
			FsName:      "lazyfs",
			Name:        "lazyfs",
			// Without this the kernel asks for security.capability
			// before every write (to drop privileges), doubling the
			// round trips of small appends; the programs under test
			// use no extended attributes.
			DisableXAttrs: true,
		},
	}
}

// mount starts serving; the caller holds cut (or owns f alone).
func (f *FS) mount() error {
	ops, err := fs.NewLoopbackRoot(f.backing)
	if err != nil {
		return fmt.Errorf("lazyfs: %w", err)
	}
	lb, ok := ops.(*fs.LoopbackNode)
	if !ok {
		return fmt.Errorf("lazyfs: go-fuse loopback root is a %T", ops)
	}
	root := &node{LoopbackNode: lb, lazy: f}
	lb.RootData.RootNode = root
	srv, err := fs.Mount(f.mountpoint, root, options())
	if err != nil {
		return fmt.Errorf("lazyfs: mount %s: %w", f.mountpoint, err)
	}
	f.server = srv
	return nil
}

// unmount stops serving; the caller holds cut. A process killed just before
// may still be closing its files, so EBUSY is retried for a while.
func (f *FS) unmount() error {
	if f.server == nil {
		return nil
	}
	deadline := time.Now().Add(f.busyWait)
	for {
		err := f.server.Unmount()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("lazyfs: unmount %s (is a file still open there?): %w", f.mountpoint, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	f.server.Wait()
	f.server = nil
	return nil
}

// Unmount ends the mount for good, leaving the backing folder as it is
// (everything as if durable) and removing the trash folder. It is
// idempotent.
func (f *FS) Unmount() error {
	f.cut.Lock()
	defer f.cut.Unlock()
	if f.closed {
		return nil
	}
	if err := f.unmount(); err != nil {
		return err
	}
	f.closed = true
	f.undo.reset()
	if err := os.RemoveAll(f.trash); err != nil {
		return fmt.Errorf("lazyfs: remove trash folder: %w", err)
	}
	return nil
}

// PowerCut simulates losing power: it unmounts, throws away everything not
// made durable (see the package comment), and mounts again at the same mount
// point. No process may have a file or folder open on the mount (the caller
// kills or stops them first); if one has, the unmount fails and nothing is
// thrown away. It returns what was thrown away.
func (f *FS) PowerCut() (Lost, error) {
	f.cut.Lock()
	defer f.cut.Unlock()
	if f.closed {
		return Lost{}, errors.New("lazyfs: power cut after Unmount")
	}
	if err := f.unmount(); err != nil {
		return Lost{}, err
	}
	lost, err := f.rollBack()
	if terr := f.emptyTrash(); terr != nil {
		err = errors.Join(err, terr)
	}
	if merr := f.mount(); merr != nil {
		err = errors.Join(err, merr)
	}
	return lost, err
}

// emptyTrash leaves the trash folder empty.
func (f *FS) emptyTrash() error {
	if err := os.RemoveAll(f.trash); err != nil {
		return fmt.Errorf("lazyfs: empty trash folder: %w", err)
	}
	if err := os.Mkdir(f.trash, 0o700); err != nil {
		return fmt.Errorf("lazyfs: trash folder: %w", err)
	}
	return nil
}

// Available says why FUSE mounts cannot be used here, nil when they can: it
// checks /dev/fuse and mounts an empty temporary folder.
func Available() error {
	dev, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("lazyfs: %w", err)
	}
	dev.Close()
	dir, err := os.MkdirTemp("", "lazyfs-probe-")
	if err != nil {
		return fmt.Errorf("lazyfs: %w", err)
	}
	defer os.Remove(dir)
	srv, err := fs.Mount(dir, &fs.Inode{}, options())
	if err != nil {
		return fmt.Errorf("lazyfs: mount %s: %w", dir, err)
	}
	if err := srv.Unmount(); err != nil {
		return fmt.Errorf("lazyfs: unmount %s: %w", dir, err)
	}
	return nil
}
