package lazyfs

import (
	"context"
	"errors"
	"path/filepath"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// node is a go-fuse loopback node that tells the undo log before anything
// changes. Every node of the tree is one: WrapChild wraps the children the
// loopback code creates.
type node struct {
	*fs.LoopbackNode
	lazy *FS
}

var (
	_ fs.InodeEmbedder      = (*node)(nil)
	_ fs.NodeWrapChilder    = (*node)(nil)
	_ fs.NodeLookuper       = (*node)(nil)
	_ fs.NodeGetattrer      = (*node)(nil)
	_ fs.NodeStatxer        = (*node)(nil)
	_ fs.NodeCreater        = (*node)(nil)
	_ fs.NodeOpener         = (*node)(nil)
	_ fs.NodeSetattrer      = (*node)(nil)
	_ fs.NodeMkdirer        = (*node)(nil)
	_ fs.NodeMknoder        = (*node)(nil)
	_ fs.NodeSymlinker      = (*node)(nil)
	_ fs.NodeLinker         = (*node)(nil)
	_ fs.NodeUnlinker       = (*node)(nil)
	_ fs.NodeRmdirer        = (*node)(nil)
	_ fs.NodeRenamer        = (*node)(nil)
	_ fs.NodeOpendirHandler = (*node)(nil)
	_ fs.NodeCopyFileRanger = (*node)(nil)
	_ fs.NodeTmpfiler       = (*node)(nil)

	// What the loopback offers and node must shadow: a copy_file_range
	// and an O_TMPFILE the undo log would not see, and (in handle) a
	// passthrough descriptor.
	_ fs.NodeCopyFileRanger  = (*fs.LoopbackNode)(nil)
	_ fs.NodeTmpfiler        = (*fs.LoopbackNode)(nil)
	_ fs.FilePassthroughFder = (*fs.LoopbackFile)(nil)
)

func (n *node) WrapChild(ctx context.Context, ops fs.InodeEmbedder) fs.InodeEmbedder {
	lb, ok := ops.(*fs.LoopbackNode)
	if !ok {
		return ops
	}
	return &node{LoopbackNode: lb, lazy: n.lazy}
}

// path is the node's path in the backing folder.
func (n *node) path() string {
	return filepath.Join(n.RootData.Path, n.Path(n.Root()))
}

// ino is the node's backing inode number. go-fuse numbers nodes by the
// backing inode when the backing folder is one file system, except the
// root.
func (n *node) ino() uint64 {
	if n.IsRoot() {
		return n.lazy.rootIno
	}
	return n.StableAttr().Ino
}

func (n *node) undo() *undoLog { return &n.lazy.undo }

// hide takes the trash link out of the link count of attributes going to
// the kernel. Every operation that answers with attributes of an existing
// inode goes through here (go-fuse asks the node, not the file, for them).
func (n *node) hide(a *fuse.Attr) { a.Nlink = n.undo().nlink(a.Ino, a.Nlink) }

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ch, errno := n.LoopbackNode.Lookup(ctx, name, out)
	if errno == 0 {
		n.hide(&out.Attr)
	}
	return ch, errno
}

func (n *node) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	errno := n.LoopbackNode.Getattr(ctx, f, out)
	if errno == 0 {
		n.hide(&out.Attr)
	}
	return errno
}

func (n *node) Statx(ctx context.Context, f fs.FileHandle, flags uint32, mask uint32, out *fuse.StatxOut) syscall.Errno {
	errno := n.LoopbackNode.Statx(ctx, f, flags, mask, out)
	if errno == 0 {
		out.Nlink = n.undo().nlink(out.Ino, out.Nlink)
	}
	return errno
}

// backingFlags are the open flags for the backing file. O_DIRECT goes: the
// kernel already sends every write, and the backing file would refuse the
// unaligned buffers the server has. O_SYNC and O_DSYNC go too: the kernel
// follows each write to such a file with an FSYNC, which is what makes it
// durable here, and syncing the backing file would only be slow.
func backingFlags(flags uint32) uint32 {
	return flags &^ (syscall.O_DIRECT | syscall.O_SYNC | syscall.O_DSYNC)
}

func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	flags = backingFlags(flags)
	p := filepath.Join(n.path(), name)
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err == nil {
		// The kernel asks to create only names it found absent; another
		// creator won the race, and this is an open.
		if flags&syscall.O_EXCL != 0 {
			return nil, nil, 0, syscall.EEXIST
		}
		if flags&syscall.O_TRUNC != 0 && st.Mode&syscall.S_IFMT == syscall.S_IFREG {
			r := n.undo().lockFile(st.Ino)
			defer r.mu.Unlock()
			if errno := keepPath(r, p, 0, -1); errno != 0 {
				return nil, nil, 0, errno
			}
		}
		ch, fh, fl, errno := n.LoopbackNode.Create(ctx, name, flags, mode, out)
		if errno != 0 {
			return nil, nil, 0, errno
		}
		n.hide(&out.Attr)
		h, errno := newHandle(n.lazy, fh)
		return ch, h, fl, errno
	}
	if errno := n.undo().noteName(n.ino(), n.path(), name); errno != 0 {
		return nil, nil, 0, errno
	}
	ch, fh, fl, errno := n.LoopbackNode.Create(ctx, name, flags, mode, out)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	n.undo().born(out.Attr.Ino)
	h, errno := newHandle(n.lazy, fh)
	return ch, h, fl, errno
}

// keepPath is keep for a file known by path, for the changes that come
// without an open file: [from, to) is the changed range, to < 0 meaning up
// to the end.
func keepPath(r *fileUndo, path string, from, to int64) syscall.Errno {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		return fs.ToErrno(err)
	}
	defer syscall.Close(fd)
	if to < 0 {
		to = 1<<63 - 1
	}
	return errnoOf(r.keep(fd, from, to))
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	flags = backingFlags(flags)
	// The kernel truncates with a SETATTR, since go-fuse does not ask for
	// atomic O_TRUNC; this is for the day it does.
	if flags&syscall.O_TRUNC != 0 && n.StableAttr().Mode&syscall.S_IFMT == syscall.S_IFREG {
		r := n.undo().lockFile(n.ino())
		defer r.mu.Unlock()
		if errno := keepPath(r, n.path(), 0, -1); errno != 0 {
			return nil, 0, errno
		}
	}
	fh, fl, errno := n.LoopbackNode.Open(ctx, flags)
	if errno != 0 {
		return nil, 0, errno
	}
	h, errno := newHandle(n.lazy, fh)
	return h, fl, errno
}

// Setattr keeps what a truncation drops; the file's own Setattr (with an
// open file) or the loopback's (by path) then does the work, under the
// record's lock so that no write slips in between.
func (n *node) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	size, ok := in.GetSize()
	if !ok || n.StableAttr().Mode&syscall.S_IFMT != syscall.S_IFREG {
		return n.setattr(ctx, f, in, out)
	}
	r := n.undo().lockFile(n.ino())
	defer r.mu.Unlock()
	var errno syscall.Errno
	if h, ok := f.(*handle); ok {
		errno = errnoOf(r.keep(h.fd, int64(size), 1<<63-1))
	} else {
		errno = keepPath(r, n.path(), int64(size), -1)
	}
	if errno != 0 {
		return errno
	}
	return n.setattr(ctx, f, in, out)
}

func (n *node) setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	errno := n.LoopbackNode.Setattr(ctx, f, in, out)
	if errno == 0 {
		n.hide(&out.Attr)
	}
	return errno
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if errno := n.undo().noteName(n.ino(), n.path(), name); errno != 0 {
		return nil, errno
	}
	ch, errno := n.LoopbackNode.Mkdir(ctx, name, mode, out)
	if errno == 0 {
		n.undo().born(out.Attr.Ino)
	}
	return ch, errno
}

func (n *node) Mknod(ctx context.Context, name string, mode, rdev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if errno := n.undo().noteName(n.ino(), n.path(), name); errno != 0 {
		return nil, errno
	}
	ch, errno := n.LoopbackNode.Mknod(ctx, name, mode, rdev, out)
	if errno == 0 {
		n.undo().born(out.Attr.Ino)
	}
	return ch, errno
}

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if errno := n.undo().noteName(n.ino(), n.path(), name); errno != 0 {
		return nil, errno
	}
	ch, errno := n.LoopbackNode.Symlink(ctx, target, name, out)
	if errno == 0 {
		n.undo().born(out.Attr.Ino)
	}
	return ch, errno
}

func (n *node) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if errno := n.undo().noteName(n.ino(), n.path(), name); errno != 0 {
		return nil, errno
	}
	ch, errno := n.LoopbackNode.Link(ctx, target, name, out)
	if errno == 0 {
		n.hide(&out.Attr)
	}
	return ch, errno
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	if errno := n.undo().noteName(n.ino(), n.path(), name); errno != 0 {
		return errno
	}
	return n.LoopbackNode.Unlink(ctx, name)
}

// Rmdir is durable at once (see the package comment). What was kept for
// names inside the folder stays until its number is reused (born) or the
// next cut, which finds no folder of that number: dropping it here would
// race with a creation reusing the number.
func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	if errno := n.LoopbackNode.Rmdir(ctx, name); errno != 0 {
		return errno
	}
	n.undo().forgetName(n.ino(), name)
	return 0
}

// Rename keeps both names' durable values, unless a folder moves: that is
// durable at once (see the package comment).
func (n *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	np, ok := newParent.(*node)
	if !ok {
		return syscall.EXDEV
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(filepath.Join(n.path(), name), &st); err != nil {
		return fs.ToErrno(err)
	}
	folder := st.Mode&syscall.S_IFMT == syscall.S_IFDIR
	if flags&fs.RENAME_EXCHANGE != 0 {
		if err := syscall.Lstat(filepath.Join(np.path(), newName), &st); err != nil {
			return fs.ToErrno(err)
		}
		folder = folder || st.Mode&syscall.S_IFMT == syscall.S_IFDIR
	}
	if folder {
		if errno := n.LoopbackNode.Rename(ctx, name, newParent, newName, flags); errno != 0 {
			return errno
		}
		n.undo().forgetName(n.ino(), name)
		n.undo().forgetName(np.ino(), newName)
		return 0
	}
	if errno := n.undo().noteName(n.ino(), n.path(), name); errno != 0 {
		return errno
	}
	if errno := n.undo().noteName(np.ino(), np.path(), newName); errno != 0 {
		return errno
	}
	return n.LoopbackNode.Rename(ctx, name, newParent, newName, flags)
}

// OpendirHandle wraps the loopback's folder stream, whose Fsyncdir go-fuse
// calls for a folder fsync before any NodeFsyncer.
func (n *node) OpendirHandle(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	fh, fl, errno := n.LoopbackNode.OpendirHandle(ctx, flags)
	if errno != 0 {
		return nil, 0, errno
	}
	d, errno := newDirHandle(n.lazy, n.ino(), fh)
	if errno != 0 {
		return nil, 0, errno
	}
	return d, fl, 0
}

// CopyFileRange is refused: the kernel then copies with reads and writes,
// which the undo log sees.
func (n *node) CopyFileRange(ctx context.Context, fhIn fs.FileHandle, offIn uint64, out *fs.Inode, fhOut fs.FileHandle, offOut uint64, len uint64, flags uint64) (uint32, syscall.Errno) {
	return 0, syscall.EOPNOTSUPP
}

// Tmpfile is refused: an O_TMPFILE file has no name for the undo log to
// find it by, and the loopback's handle for it would be a passthrough one.
func (n *node) Tmpfile(ctx context.Context, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EOPNOTSUPP
}

// errnoOf turns an error of the undo log into an errno for the kernel: the
// system call's own, or EIO.
func errnoOf(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return syscall.EIO
}
