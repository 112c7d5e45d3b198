// Package safeio writes files durably and atomically: when a write returns
// nil, the whole file is on disk under its final name and survives a crash;
// when it returns an error, no partial file is left under that name.
//
// The steps are those of chasquid's safeio and mox's queue.Add: write a
// temporary file in the destination's folder (same file system, so the
// final move is atomic), fsync the file, move it into place, fsync the
// folder so the new directory entry itself is durable.
package safeio

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/pecgw/pecgw/internal/durable"
)

// Step names one step of a durable write. Errors say which step failed, and
// Writer.FailBefore injects failures by step.
type Step string

// The steps of a durable write, in order.
const (
	StepCreate  Step = "create temporary file"
	StepWrite   Step = "write"
	StepSync    Step = "fsync file"
	StepClose   Step = "close"
	StepRename  Step = "rename"
	StepLink    Step = "link"
	StepSyncDir Step = "fsync folder"
)

// StepError reports the step of a durable write that failed, and the file
// it was working on.
type StepError struct {
	Step Step
	Path string
	Err  error
}

func (e *StepError) Error() string {
	return fmt.Sprintf("safeio: %s %s: %v", e.Step, e.Path, e.Err)
}

func (e *StepError) Unwrap() error { return e.Err }

// Writer performs durable writes. The zero Writer is ready to use and is
// what the package-level functions use.
type Writer struct {
	// Point names the write among pecgw's durable writes (package
	// durable): its file fsync is Point.File(), its folder fsync
	// Point.Dir(). "" for writes that are not on the acceptance path.
	Point durable.Point
	// FailBefore is a test seam: when not nil it is called before each
	// step, and a non-nil result is treated as that step's failure (the
	// step is not performed, and the write cleans up as it would after a
	// real failure). Production code leaves it nil. It lives in a value
	// rather than a package variable so that tests of other packages can
	// inject failures without shared mutable state.
	FailBefore func(step Step, path string) error
}

func (w Writer) fail(step Step, path string) error {
	if w.FailBefore == nil {
		return nil
	}
	if err := w.FailBefore(step, path); err != nil {
		return &StepError{Step: step, Path: path, Err: err}
	}
	return nil
}

// do runs one step: the injected failure if any, else op.
func (w Writer) do(step Step, path string, op func() error) error {
	if err := w.fail(step, path); err != nil {
		return err
	}
	if err := op(); err != nil {
		return &StepError{Step: step, Path: path, Err: err}
	}
	return nil
}

// WriteFile writes data to path durably and atomically with a zero Writer.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	return Writer{}.WriteFile(path, data, perm)
}

// WriteNew creates path durably with a zero Writer; see Writer.WriteNew.
func WriteNew(tmpPath, path string, data []byte, perm os.FileMode) error {
	return Writer{}.WriteNew(tmpPath, path, data, perm)
}

// WriteFile writes data to path, replacing any file there: a temporary file
// in the same folder is written, fsync'd, renamed over path, and the folder
// fsync'd. The file gets mode perm exactly (the umask does not apply, as
// in chasquid). On error the temporary file is removed, and path holds either
// its old content or the complete new content (the latter only when the
// final folder fsync failed, in which case the rename may not survive a
// crash), never a partial file.
func (w Writer) WriteFile(path string, data []byte, perm os.FileMode) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	var f *os.File
	err := w.do(StepCreate, path, func() (err error) {
		// A dot prefix keeps the temporary file out of naive globs.
		f, err = os.CreateTemp(dir, "."+base+".tmp*")
		return err
	})
	if err != nil {
		return err
	}
	tmp := f.Name()
	if err := w.fill(f, tmp, [][]byte{data}, perm); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := w.do(StepRename, path, func() error { return os.Rename(tmp, path) }); err != nil {
		os.Remove(tmp)
		return err
	}
	return w.do(StepSyncDir, dir, func() error { return w.syncDir(dir) })
}

func (w Writer) syncDir(dir string) error {
	if w.Point == "" {
		return SyncDir(dir)
	}
	return SyncDirAt(w.Point.Dir(), dir)
}

// WriteNew creates the new file path, which must not exist, as the maildir
// specification delivers a message: it creates tmpPath exclusively, writes
// and fsyncs it, hard-links it to path, fsyncs path's folder, and removes
// tmpPath. tmpPath must be on the same file system as path.
//
// Unlike rename, link never replaces an existing file: if path exists the
// result wraps fs.ErrExist and nothing is overwritten; if tmpPath exists it
// is left alone and the result wraps fs.ErrExist too, so a caller can
// retry with another name.
//
// On error, path does not exist (when the final folder fsync fails, the
// link is undone, so a caller that retries does not leave a duplicate) and
// tmpPath is removed if this call created it. After the folder fsync the
// file is durable, so a failure to remove tmpPath is not reported: the
// maildir specification has readers clean up files left in tmp/.
func (w Writer) WriteNew(tmpPath, path string, data []byte, perm os.FileMode) error {
	return w.WriteNewParts(tmpPath, path, [][]byte{data}, perm)
}

// WriteNewParts is WriteNew of the concatenation of parts, written one
// after the other: a caller with a header and a large body writes them
// without a copy of both into one buffer.
func (w Writer) WriteNewParts(tmpPath, path string, parts [][]byte, perm os.FileMode) error {
	var f *os.File
	err := w.do(StepCreate, tmpPath, func() (err error) {
		f, err = os.OpenFile(tmpPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
		return err
	})
	if err != nil {
		return err
	}
	if err := w.fill(f, tmpPath, parts, perm); err != nil {
		os.Remove(tmpPath)
		return err
	}
	if err := w.do(StepLink, path, func() error { return os.Link(tmpPath, path) }); err != nil {
		os.Remove(tmpPath)
		return err
	}
	dir := filepath.Dir(path)
	if err := w.do(StepSyncDir, dir, func() error { return w.syncDir(dir) }); err != nil {
		os.Remove(path)
		os.Remove(tmpPath)
		return err
	}
	os.Remove(tmpPath)
	return nil
}

// fill writes parts to f, sets perm, fsyncs and closes f. f is closed
// whatever happens.
func (w Writer) fill(f *os.File, name string, parts [][]byte, perm os.FileMode) error {
	err := w.do(StepWrite, name, func() error {
		for _, data := range parts {
			if _, err := f.Write(data); err != nil {
				return err
			}
		}
		// CreateTemp uses 0600; WriteNew's mode was masked by the umask.
		return f.Chmod(perm)
	})
	if err == nil {
		sync := f.Sync
		if w.Point != "" {
			sync = func() error { return durable.Sync(w.Point.File(), f) }
		}
		err = w.do(StepSync, name, sync)
	}
	if err != nil {
		f.Close()
		return err
	}
	return w.do(StepClose, name, f.Close)
}

// SyncDir fsyncs the folder dir, making the creation, rename or removal of
// the entries in it durable.
func SyncDir(dir string) error {
	return SyncDirAt("", dir)
}

// SyncDirAt is SyncDir for the durable write p (package durable).
func SyncDirAt(p durable.Point, dir string) error {
	if err := durable.SyncDir(p, dir); err != nil {
		return fmt.Errorf("safeio: %w", err)
	}
	return nil
}

// MkdirAllSync creates dir and any missing parents with mode perm, like
// os.MkdirAll, and fsyncs the parent of every folder it creates so that
// the new folders survive a crash. Existing folders are left as they are.
func MkdirAllSync(dir string, perm os.FileMode) error {
	dir = filepath.Clean(dir)
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err == nil {
			if !fi.IsDir() {
				return fmt.Errorf("safeio: mkdir %s: %s is not a folder", dir, d)
			}
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("safeio: mkdir %s: %w", dir, err)
		}
		missing = append(missing, d)
		if parent := filepath.Dir(d); parent == d {
			break
		}
	}
	for i := len(missing) - 1; i >= 0; i-- {
		d := missing[i]
		// Another process may create it at the same time: that is fine,
		// but its parent still gets fsync'd.
		if err := os.Mkdir(d, perm); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("safeio: mkdir %s: %w", d, err)
		}
		if err := SyncDirAt(durable.Mkdir, filepath.Dir(d)); err != nil {
			return err
		}
	}
	return nil
}
