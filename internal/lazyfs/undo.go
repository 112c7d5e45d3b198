package lazyfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
)

// undoLog remembers what is not durable yet, keyed by backing inode number.
type undoLog struct {
	trash string

	// mu guards the maps (not the fileUndo records, which have their own
	// lock). It is held across the lstat and link of noteName, which touch
	// the backing file system only, never the mount.
	mu    sync.Mutex
	files map[uint64]*fileUndo
	// dirs holds, per folder inode, the durable value of each name changed
	// since the folder's last fsync.
	dirs map[uint64]map[string]entry
	// trashRefs counts, per inode linked into the trash, the kept names
	// whose durable value it is; the trash link goes with the last one.
	trashRefs map[uint64]int
}

// entry is the durable value of a name: absent, or the inode it named.
type entry struct {
	present bool
	dir     bool
	ino     uint64
}

// fileUndo is the undo record of one file inode.
type fileUndo struct {
	mu sync.Mutex
	// dirty says the file changed since its last fsync; the other fields
	// mean something only then.
	dirty bool
	// durable is the file's size at its last fsync.
	durable int64
	// saved are the durable bytes changed since, sorted by offset, disjoint,
	// inside [0, durable). Every byte in [0, durable) that no extent covers
	// still has its durable value in the backing file: that is what lets
	// keep read the original bytes straight from the file.
	saved []extent
}

type extent struct {
	off  int64
	data []byte
}

func (e extent) end() int64 { return e.off + int64(len(e.data)) }

func (u *undoLog) init(trash string) {
	u.trash = trash
	u.reset()
}

// reset forgets everything (the caller makes sure no operation runs).
func (u *undoLog) reset() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.files = make(map[uint64]*fileUndo)
	u.dirs = make(map[uint64]map[string]entry)
	u.trashRefs = make(map[uint64]int)
}

// lockFile returns the record of inode ino, locked; the caller unlocks it.
func (u *undoLog) lockFile(ino uint64) *fileUndo {
	u.mu.Lock()
	r := u.files[ino]
	if r == nil {
		r = &fileUndo{}
		u.files[ino] = r
	}
	u.mu.Unlock()
	r.mu.Lock()
	return r
}

// synced is an fsync or fdatasync of inode ino: its data is durable.
func (u *undoLog) synced(ino uint64) {
	r := u.lockFile(ino)
	r.dirty = false
	r.durable = 0
	r.saved = nil
	r.mu.Unlock()
}

// born says inode ino was just created: whatever was recorded under its
// number belongs to a dead inode whose number the backing file system reused.
func (u *undoLog) born(ino uint64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	delete(u.files, ino)
	u.dropDirLocked(ino)
}

// keep prepares r (locked by the caller) for a change of the bytes in
// [from, to) of the file open as fd: it starts the record if this is the
// first change since the last fsync, and saves the durable bytes of the
// range that no earlier change saved. An empty range only starts the record,
// as a change of size needs.
func (r *fileUndo) keep(fd int, from, to int64) error {
	if !r.dirty {
		var st syscall.Stat_t
		if err := syscall.Fstat(fd, &st); err != nil {
			return fmt.Errorf("fstat: %w", err)
		}
		r.dirty, r.durable, r.saved = true, st.Size, nil
	}
	from = max(from, 0)
	to = min(to, r.durable)
	if from >= to {
		return nil
	}
	i, _ := slices.BinarySearchFunc(r.saved, from, func(e extent, off int64) int {
		if e.end() <= off {
			return -1
		}
		return 1
	})
	var added []extent
	for pos := from; pos < to; {
		if i < len(r.saved) && r.saved[i].off <= pos {
			pos = r.saved[i].end()
			i++
			continue
		}
		gap := to
		if i < len(r.saved) && r.saved[i].off < gap {
			gap = r.saved[i].off
		}
		data := make([]byte, gap-pos)
		if err := preadFull(fd, data, pos); err != nil {
			return err
		}
		added = append(added, extent{off: pos, data: data})
		pos = gap
	}
	if len(added) > 0 {
		r.saved = merge(r.saved, added)
	}
	return nil
}

// merge merges two sorted lists of disjoint extents.
func merge(a, b []extent) []extent {
	out := make([]extent, 0, len(a)+len(b))
	for len(a) > 0 && len(b) > 0 {
		if a[0].off < b[0].off {
			out, a = append(out, a[0]), a[1:]
		} else {
			out, b = append(out, b[0]), b[1:]
		}
	}
	return append(append(out, a...), b...)
}

// preadFull reads len(buf) bytes at off; what lies past the end of the file
// reads as zeros, as it would after the truncation that put it there. A
// descriptor opened write-only is reopened for reading through /proc, which
// works for unlinked files too.
func preadFull(fd int, buf []byte, off int64) error {
	rfd := fd
	for done := 0; done < len(buf); {
		n, err := syscall.Pread(rfd, buf[done:], off+int64(done))
		if err == syscall.EBADF && rfd == fd {
			rfd, err = syscall.Open("/proc/self/fd/"+strconv.Itoa(fd), syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("reopen for reading: %w", err)
			}
			defer syscall.Close(rfd)
			continue
		}
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("read durable bytes: %w", err)
		}
		if n == 0 {
			clear(buf[done:])
			return nil
		}
		done += n
	}
	return nil
}

// noteName is called before name in folder dir (at dirPath in the backing
// folder) changes: if it is the first change since the folder's last fsync,
// it keeps the name's durable value, and links the inode the name holds into
// the trash, so that PowerCut can link it back even once the name is gone.
func (u *undoLog) noteName(dir uint64, dirPath, name string) syscall.Errno {
	u.mu.Lock()
	defer u.mu.Unlock()
	names := u.dirs[dir]
	if names == nil {
		names = make(map[string]entry)
		u.dirs[dir] = names
	}
	if _, ok := names[name]; ok {
		return 0
	}
	p := filepath.Join(dirPath, name)
	var st syscall.Stat_t
	err := syscall.Lstat(p, &st)
	switch {
	case err == syscall.ENOENT:
		names[name] = entry{}
	case err != nil:
		return fs.ToErrno(err)
	case st.Mode&syscall.S_IFMT == syscall.S_IFDIR:
		// Folders change names only by rmdir and rename, which are
		// durable at once: nothing to link back.
		names[name] = entry{present: true, dir: true, ino: st.Ino}
	default:
		if u.trashRefs[st.Ino] == 0 {
			err := os.Link(p, u.trashPath(st.Ino))
			if err != nil && !errors.Is(err, os.ErrExist) {
				return fs.ToErrno(err)
			}
		}
		u.trashRefs[st.Ino]++
		names[name] = entry{present: true, ino: st.Ino}
	}
	return 0
}

// forgetName makes the current value of name in folder dir durable, as
// rmdir and folder renames are taken to be.
func (u *undoLog) forgetName(dir uint64, name string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	names := u.dirs[dir]
	e, ok := names[name]
	if !ok {
		return
	}
	delete(names, name)
	u.releaseLocked(e)
}

// dirSynced is an fsync of folder dir: its entries are durable.
func (u *undoLog) dirSynced(dir uint64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.dropDirLocked(dir)
}

func (u *undoLog) dropDirLocked(dir uint64) {
	for _, e := range u.dirs[dir] {
		u.releaseLocked(e)
	}
	delete(u.dirs, dir)
}

// releaseLocked drops a kept name's hold on the trash link of its inode.
func (u *undoLog) releaseLocked(e entry) {
	if !e.present || e.dir {
		return
	}
	u.trashRefs[e.ino]--
	if u.trashRefs[e.ino] > 0 {
		return
	}
	delete(u.trashRefs, e.ino)
	// An error leaves a stale link, which the next PowerCut empties.
	syscall.Unlink(u.trashPath(e.ino))
}

// nlink is n, the backing link count of inode ino, less its trash link: the
// trash must not show through the mount, and programs do look at st_nlink
// (after link(2), to check a lock file or a delivery).
func (u *undoLog) nlink(ino uint64, n uint32) uint32 {
	u.mu.Lock()
	defer u.mu.Unlock()
	if n > 0 && u.trashRefs[ino] > 0 {
		return n - 1
	}
	return n
}

func (u *undoLog) trashPath(ino uint64) string {
	return filepath.Join(u.trash, strconv.FormatUint(ino, 10))
}
