package lazyfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// rollBack puts the backing folder back to its durable state and forgets
// the undo log; the mount is down. Names go first, parents before children,
// then file data, so that a file linked back from the trash gets its durable
// data too and a file whose name is thrown away is not bothered with.
func (f *FS) rollBack() (Lost, error) {
	u := &f.undo
	u.mu.Lock()
	files, dirs := u.files, u.dirs
	u.mu.Unlock()
	u.reset()

	want := make(map[uint64]bool, len(files)+len(dirs))
	dirty := make(map[uint64]*fileUndo)
	for ino, r := range files {
		r.mu.Lock()
		if r.dirty {
			dirty[ino] = r
			want[ino] = true
		}
		r.mu.Unlock()
	}
	for ino := range dirs {
		want[ino] = true
	}
	var lost Lost
	if len(want) == 0 {
		return lost, nil
	}
	// One walk of the tree finds the paths of the inodes that matter: names
	// of files change all the time (tmp, then new), and keeping paths up to
	// date would cost every operation rather than each cut.
	paths, err := walk(f.backing, f.rootIno, want)
	if err != nil {
		return lost, err
	}

	type folder struct {
		path  string
		ino   uint64
		names map[string]entry
	}
	var folders []folder
	for ino, names := range dirs {
		for _, p := range paths[ino] {
			folders = append(folders, folder{p, ino, names})
		}
	}
	slices.SortFunc(folders, func(a, b folder) int {
		return strings.Count(a.path, "/") - strings.Count(b.path, "/")
	})
	var errs []error
	relinked := make(map[uint64][]string)
	moved := 0
	for _, d := range folders {
		// A folder created since its parent's fsync went with the
		// parent's entry, and what was recorded inside it with it.
		if !isInode(d.path, d.ino, syscall.S_IFDIR) {
			continue
		}
		for _, name := range sortedNames(d.names) {
			e := d.names[name]
			changed, err := f.putBack(d.path, name, e, &moved)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if changed {
				lost.Entries++
				if e.present {
					relinked[e.ino] = append(relinked[e.ino], filepath.Join(d.path, name))
				}
			}
		}
	}

	for ino, r := range dirty {
		for _, p := range append(relinked[ino], paths[ino]...) {
			if !isInode(p, ino, syscall.S_IFREG) {
				continue
			}
			n, err := rollBackFile(p, r)
			if err != nil {
				errs = append(errs, err)
			} else if n >= 0 {
				lost.Files++
				lost.Bytes += n
			}
			break
		}
	}
	return lost, errors.Join(errs...)
}

// putBack gives name in the folder at dir its durable value e, and says
// whether it had another.
func (f *FS) putBack(dir, name string, e entry, moved *int) (bool, error) {
	p := filepath.Join(dir, name)
	var st syscall.Stat_t
	err := syscall.Lstat(p, &st)
	exists := err == nil
	if err != nil && err != syscall.ENOENT {
		return false, fmt.Errorf("lazyfs: put back %s: %w", p, err)
	}
	switch {
	case !e.present && !exists, e.present && exists && st.Ino == e.ino:
		return false, nil
	case e.present && e.dir:
		// Folders are not linked back (see the package comment).
		return false, nil
	}
	if exists {
		if st.Mode&syscall.S_IFMT == syscall.S_IFDIR {
			// A folder created since goes whole, into the trash that
			// is emptied next.
			*moved++
			err = os.Rename(p, filepath.Join(f.trash, "folder-"+strconv.Itoa(*moved)))
		} else {
			err = syscall.Unlink(p)
		}
		if err != nil {
			return false, fmt.Errorf("lazyfs: put back %s: %w", p, err)
		}
	}
	if e.present {
		if err := os.Link(f.undo.trashPath(e.ino), p); err != nil {
			return true, fmt.Errorf("lazyfs: put back %s: %w", p, err)
		}
	}
	return true, nil
}

// rollBackFile writes the saved bytes of the file at p back and truncates it
// to its durable size. It returns the octets thrown away, or -1 when the
// file already was as durable.
func rollBackFile(p string, r *fileUndo) (int64, error) {
	fd, err := syscall.Open(p, syscall.O_WRONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("lazyfs: roll back %s: %w", p, err)
	}
	defer syscall.Close(fd)
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("lazyfs: roll back %s: %w", p, err)
	}
	if st.Size == r.durable && len(r.saved) == 0 {
		return -1, nil
	}
	n := max(st.Size-r.durable, 0)
	for _, e := range r.saved {
		for done := 0; done < len(e.data); {
			w, err := syscall.Pwrite(fd, e.data[done:], e.off+int64(done))
			if err != nil {
				return 0, fmt.Errorf("lazyfs: roll back %s: %w", p, err)
			}
			done += w
		}
		n += int64(len(e.data))
	}
	if err := syscall.Ftruncate(fd, r.durable); err != nil {
		return 0, fmt.Errorf("lazyfs: roll back %s: %w", p, err)
	}
	return n, nil
}

// isInode says whether p names inode ino, of type typ (S_IFDIR, S_IFREG).
func isInode(p string, ino uint64, typ uint32) bool {
	var st syscall.Stat_t
	return syscall.Lstat(p, &st) == nil && st.Ino == ino && st.Mode&syscall.S_IFMT == typ
}

func sortedNames(m map[string]entry) []string {
	names := make([]string, 0, len(m))
	for name := range m {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// walk lists the paths under root of the inodes in want, reading folders
// with getdents(2) and no stat per entry: a cut costs one pass over the
// tree's names.
func walk(root string, rootIno uint64, want map[uint64]bool) (map[uint64][]string, error) {
	found := make(map[uint64][]string)
	if want[rootIno] {
		found[rootIno] = append(found[rootIno], root)
	}
	buf := make([]byte, 64<<10)
	for stack := []string{root}; len(stack) > 0; {
		dir := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		fd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("lazyfs: walk %s: %w", dir, err)
		}
		for {
			n, err := syscall.Getdents(fd, buf)
			if err == syscall.EINTR {
				continue
			}
			if err != nil {
				syscall.Close(fd)
				return nil, fmt.Errorf("lazyfs: walk %s: %w", dir, err)
			}
			if n <= 0 {
				break
			}
			for b := buf[:n]; len(b) > 0; {
				// struct linux_dirent64: ino, off, reclen, type, name.
				ino := binary.NativeEndian.Uint64(b[0:])
				reclen := binary.NativeEndian.Uint16(b[16:])
				typ := b[18]
				name := b[19:reclen]
				if i := slices.Index(name, 0); i >= 0 {
					name = name[:i]
				}
				b = b[reclen:]
				if string(name) == "." || string(name) == ".." {
					continue
				}
				p := filepath.Join(dir, string(name))
				if want[ino] {
					found[ino] = append(found[ino], p)
				}
				if typ == syscall.DT_UNKNOWN {
					var st syscall.Stat_t
					if syscall.Lstat(p, &st) == nil && st.Mode&syscall.S_IFMT == syscall.S_IFDIR {
						typ = syscall.DT_DIR
					}
				}
				if typ == syscall.DT_DIR {
					stack = append(stack, p)
				}
			}
		}
		syscall.Close(fd)
	}
	return found, nil
}
