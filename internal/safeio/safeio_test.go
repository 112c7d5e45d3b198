package safeio

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var errInjected = errors.New("injected failure")

// failAt returns a Writer whose step step fails.
func failAt(step Step) Writer {
	return Writer{FailBefore: func(s Step, _ string) error {
		if s == step {
			return errInjected
		}
		return nil
	}}
}

// recordSteps returns a Writer that appends each step it performs to steps.
func recordSteps(steps *[]Step) Writer {
	return Writer{FailBefore: func(s Step, _ string) error {
		*steps = append(*steps, s)
		return nil
	}}
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	var steps []Step
	if err := recordSteps(&steps).WriteFile(path, []byte("one"), 0o640); err != nil {
		t.Fatal(err)
	}
	want := []Step{StepCreate, StepWrite, StepSync, StepClose, StepRename, StepSyncDir}
	if !slices.Equal(steps, want) {
		t.Errorf("steps = %q, want %q", steps, want)
	}
	if err := WriteFile(path, []byte("two"), 0o640); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil || string(got) != "two" {
		t.Fatalf("content = %q, %v; want \"two\"", got, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o640 {
		t.Errorf("mode = %v, want 0640", fi.Mode().Perm())
	}
	if n := names(t, dir); !slices.Equal(n, []string{"f"}) {
		t.Errorf("folder holds %q, want only f", n)
	}
}

// TestWriteFileFailure injects a failure at each step over an existing file:
// the old content stays (or, only when the folder fsync fails, the complete
// new content is there), no temporary file is left, and the error names
// the step.
func TestWriteFileFailure(t *testing.T) {
	for _, step := range []Step{StepCreate, StepWrite, StepSync, StepClose, StepRename, StepSyncDir} {
		t.Run(string(step), func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "f")
			if err := os.WriteFile(path, []byte("old"), 0o600); err != nil {
				t.Fatal(err)
			}
			err := failAt(step).WriteFile(path, []byte("new content"), 0o600)
			if !errors.Is(err, errInjected) {
				t.Fatalf("err = %v, want the injected failure", err)
			}
			var se *StepError
			if !errors.As(err, &se) || se.Step != step {
				t.Errorf("err = %v, want a *StepError for step %q", err, step)
			}
			if !strings.Contains(err.Error(), string(step)) {
				t.Errorf("error %q does not name the step %q", err, step)
			}
			got, _ := os.ReadFile(path)
			wantOld := step != StepSyncDir
			if wantOld && string(got) != "old" || !wantOld && string(got) != "new content" {
				t.Errorf("after failed %s the file holds %q", step, got)
			}
			if n := names(t, dir); !slices.Equal(n, []string{"f"}) {
				t.Errorf("folder holds %q, want only f", n)
			}
		})
	}
}

func TestWriteNew(t *testing.T) {
	dir := t.TempDir()
	tmpDir, newDir := filepath.Join(dir, "tmp"), filepath.Join(dir, "new")
	for _, d := range []string{tmpDir, newDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	var steps []Step
	data := []byte("message\r\n")
	if err := recordSteps(&steps).WriteNew(filepath.Join(tmpDir, "m"), filepath.Join(newDir, "m"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	want := []Step{StepCreate, StepWrite, StepSync, StepClose, StepLink, StepSyncDir}
	if !slices.Equal(steps, want) {
		t.Errorf("steps = %q, want %q", steps, want)
	}
	if got, err := os.ReadFile(filepath.Join(newDir, "m")); err != nil || !bytes.Equal(got, data) {
		t.Errorf("new/m = %q, %v", got, err)
	}
	if n := names(t, tmpDir); len(n) != 0 {
		t.Errorf("tmp holds %q, want nothing", n)
	}

	// link never replaces: a second write under the same name fails with
	// fs.ErrExist and leaves the first file as it was.
	err := WriteNew(filepath.Join(tmpDir, "m"), filepath.Join(newDir, "m"), []byte("other"), 0o600)
	if !errors.Is(err, fs.ErrExist) {
		t.Errorf("second WriteNew: err = %v, want fs.ErrExist", err)
	}
	if got, _ := os.ReadFile(filepath.Join(newDir, "m")); !bytes.Equal(got, data) {
		t.Errorf("new/m was replaced: %q", got)
	}
	if n := names(t, tmpDir); len(n) != 0 {
		t.Errorf("tmp holds %q after a refused link, want nothing", n)
	}

	// An existing temporary file belongs to someone else: refused and kept.
	busy := filepath.Join(tmpDir, "busy")
	if err := os.WriteFile(busy, []byte("theirs"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteNew(busy, filepath.Join(newDir, "busy"), data, 0o600); !errors.Is(err, fs.ErrExist) {
		t.Errorf("WriteNew over a busy temporary name: err = %v, want fs.ErrExist", err)
	}
	if got, _ := os.ReadFile(busy); string(got) != "theirs" {
		t.Errorf("someone else's temporary file was changed: %q", got)
	}
}

// TestWriteNewFailure injects a failure at each step: nothing appears under
// the final name, the temporary file is gone, and the error names the step.
// TestWriteNewParts: the parts are written one after the other, in one
// file, with WriteNew's steps.
func TestWriteNewParts(t *testing.T) {
	dir := t.TempDir()
	var steps []Step
	parts := [][]byte{[]byte("Return-Path: <a@b>\r\n"), nil, []byte("message\r\n")}
	if err := recordSteps(&steps).WriteNewParts(filepath.Join(dir, "t"), filepath.Join(dir, "m"), parts, 0o600); err != nil {
		t.Fatal(err)
	}
	if want := []Step{StepCreate, StepWrite, StepSync, StepClose, StepLink, StepSyncDir}; !slices.Equal(steps, want) {
		t.Errorf("steps = %q, want %q", steps, want)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "m")); err != nil || string(got) != "Return-Path: <a@b>\r\nmessage\r\n" {
		t.Errorf("m = %q, %v", got, err)
	}
}

func TestWriteNewFailure(t *testing.T) {
	for _, step := range []Step{StepCreate, StepWrite, StepSync, StepClose, StepLink, StepSyncDir} {
		t.Run(string(step), func(t *testing.T) {
			dir := t.TempDir()
			tmpDir, newDir := filepath.Join(dir, "tmp"), filepath.Join(dir, "new")
			for _, d := range []string{tmpDir, newDir} {
				if err := os.Mkdir(d, 0o700); err != nil {
					t.Fatal(err)
				}
			}
			err := failAt(step).WriteNew(filepath.Join(tmpDir, "m"), filepath.Join(newDir, "m"), []byte("x"), 0o600)
			var se *StepError
			if !errors.Is(err, errInjected) || !errors.As(err, &se) || se.Step != step {
				t.Fatalf("err = %v, want the injected failure at %q", err, step)
			}
			if !strings.Contains(err.Error(), string(step)) {
				t.Errorf("error %q does not name the step", err)
			}
			if n := names(t, newDir); len(n) != 0 {
				t.Errorf("new holds %q after a failed %s", n, step)
			}
			if n := names(t, tmpDir); len(n) != 0 {
				t.Errorf("tmp holds %q after a failed %s", n, step)
			}
		})
	}
}

func TestMkdirAllSync(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "a", "b", "c")
	if err := MkdirAllSync(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"a", "a/b", "a/b/c"} {
		fi, err := os.Stat(filepath.Join(root, d))
		if err != nil || !fi.IsDir() {
			t.Fatalf("%s: %v", d, err)
		}
	}
	// Existing folders are fine.
	if err := MkdirAllSync(dir, 0o750); err != nil {
		t.Errorf("second MkdirAllSync: %v", err)
	}
	// A file in the way is an error.
	file := filepath.Join(root, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := MkdirAllSync(filepath.Join(file, "x"), 0o750); err == nil {
		t.Error("MkdirAllSync under a file: no error")
	}
}

func TestSyncDir(t *testing.T) {
	if err := SyncDir(t.TempDir()); err != nil {
		t.Error(err)
	}
	if err := SyncDir(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("SyncDir of a missing folder: err = %v, want fs.ErrNotExist", err)
	}
}
