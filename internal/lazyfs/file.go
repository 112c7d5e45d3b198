package lazyfs

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// handle is an open file. It wraps the loopback's file for reads and
// attributes, and does the changes itself, after telling the undo log.
//
// It deliberately offers no PassthroughFd: go-fuse registers a kernel
// passthrough backing file for any handle that has one (Linux 6.9 and
// later, as root), and the kernel then reads and writes the backing file
// directly, past the server and so past the undo log. Nor does it offer
// locks: the kernel keeps them itself when the server does not.
type handle struct {
	lf   *fs.LoopbackFile
	fd   int // lf's descriptor, valid while lf is open
	ino  uint64
	lazy *FS
}

var (
	_ fs.FileReader    = (*handle)(nil)
	_ fs.FileWriter    = (*handle)(nil)
	_ fs.FileWritever  = (*handle)(nil)
	_ fs.FileFsyncer   = (*handle)(nil)
	_ fs.FileFlusher   = (*handle)(nil)
	_ fs.FileReleaser  = (*handle)(nil)
	_ fs.FileGetattrer = (*handle)(nil)
	_ fs.FileStatxer   = (*handle)(nil)
	_ fs.FileSetattrer = (*handle)(nil)
	_ fs.FileLseeker   = (*handle)(nil)
	_ fs.FileAllocater = (*handle)(nil)

	_ fs.FileReaddirenter = (*dirHandle)(nil)
	_ fs.FileSeekdirer    = (*dirHandle)(nil)
	_ fs.FileReleasedirer = (*dirHandle)(nil)
	_ fs.FileFsyncdirer   = (*dirHandle)(nil)
)

// newHandle wraps the loopback's open file fh.
func newHandle(f *FS, fh fs.FileHandle) (fs.FileHandle, syscall.Errno) {
	lf, ok := fh.(*fs.LoopbackFile)
	if !ok {
		if r, ok := fh.(fs.FileReleaser); ok {
			r.Release(context.Background())
		}
		return nil, syscall.EIO
	}
	// PassthroughFd is the one way to the descriptor of a LoopbackFile;
	// handing it to the kernel is what this type exists to avoid.
	fd, ok := lf.PassthroughFd()
	var st syscall.Stat_t
	if !ok || syscall.Fstat(fd, &st) != nil {
		lf.Release(context.Background())
		return nil, syscall.EIO
	}
	return &handle{lf: lf, fd: fd, ino: st.Ino, lazy: f}, 0
}

func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return h.lf.Read(ctx, dest, off)
}

// Write writes at the kernel's offset, also for files opened O_APPEND: the
// loopback opened the backing file without O_APPEND (Linux pwrite(2) would
// append regardless of the offset), and without a writeback cache the
// kernel puts appends at the size it knows, which is the backing file's
// since every change goes through this mount.
func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	r := h.lazy.undo.lockFile(h.ino)
	defer r.mu.Unlock()
	if err := r.keep(h.fd, off, off+int64(len(data))); err != nil {
		return 0, errnoOf(err)
	}
	n, err := syscall.Pwrite(h.fd, data, off)
	if err != nil {
		return 0, fs.ToErrno(err)
	}
	return uint32(n), 0
}

func (h *handle) Writev(ctx context.Context, data [][]byte, off int64) (uint32, syscall.Errno) {
	if len(data) == 1 {
		return h.Write(ctx, data[0], off)
	}
	var all []byte
	for _, d := range data {
		all = append(all, d...)
	}
	return h.Write(ctx, all, off)
}

// Fsync (and fdatasync) makes the file's data durable. Nothing is synced on
// the backing file system: durability is simulated.
func (h *handle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	h.lazy.undo.synced(h.ino)
	return 0
}

func (h *handle) Flush(ctx context.Context) syscall.Errno { return h.lf.Flush(ctx) }

func (h *handle) Release(ctx context.Context) syscall.Errno { return h.lf.Release(ctx) }

// Getattr and Statx are reached only through the node's, which hide the
// trash link.
func (h *handle) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	return h.lf.Getattr(ctx, out)
}

func (h *handle) Statx(ctx context.Context, flags uint32, mask uint32, out *fuse.StatxOut) syscall.Errno {
	return h.lf.Statx(ctx, flags, mask, out)
}

// Setattr is reached only through node.Setattr, which has told the undo log
// about a truncation.
func (h *handle) Setattr(ctx context.Context, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return h.lf.Setattr(ctx, in, out)
}

func (h *handle) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	return h.lf.Lseek(ctx, off, whence)
}

// fallocate(2) modes.
const (
	fallocKeepSize      = 0x01
	fallocCollapseRange = 0x08
	fallocInsertRange   = 0x20
)

// Allocate keeps what fallocate changes: plain allocation changes at most
// the size, punching or zeroing changes the range, collapsing or inserting
// moves everything after the offset.
func (h *handle) Allocate(ctx context.Context, off uint64, size uint64, mode uint32) syscall.Errno {
	r := h.lazy.undo.lockFile(h.ino)
	defer r.mu.Unlock()
	from, to := int64(off), int64(off+size)
	switch {
	case mode&^fallocKeepSize == 0:
		from = to
	case mode&(fallocCollapseRange|fallocInsertRange) != 0:
		to = 1<<63 - 1
	}
	if err := r.keep(h.fd, from, to); err != nil {
		return errnoOf(err)
	}
	return h.lf.Allocate(ctx, off, size, mode)
}

// dirHandle is an open folder: the loopback's folder stream, with fsync
// going to the undo log.
type dirHandle struct {
	lazy *FS
	ino  uint64
	rd   fs.FileReaddirenter
	sd   fs.FileSeekdirer
	rl   fs.FileReleasedirer
}

func newDirHandle(f *FS, ino uint64, fh fs.FileHandle) (*dirHandle, syscall.Errno) {
	rd, ok1 := fh.(fs.FileReaddirenter)
	sd, ok2 := fh.(fs.FileSeekdirer)
	rl, ok3 := fh.(fs.FileReleasedirer)
	if !ok1 || !ok2 || !ok3 {
		if ok3 {
			rl.Releasedir(context.Background(), 0)
		}
		return nil, syscall.EIO
	}
	return &dirHandle{lazy: f, ino: ino, rd: rd, sd: sd, rl: rl}, 0
}

func (d *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	return d.rd.Readdirent(ctx)
}

func (d *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	return d.sd.Seekdir(ctx, off)
}

func (d *dirHandle) Releasedir(ctx context.Context, flags uint32) { d.rl.Releasedir(ctx, flags) }

// Fsyncdir makes the folder's entries durable (not its files' data).
func (d *dirHandle) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno {
	d.lazy.undo.dirSynced(d.ino)
	return 0
}
