package delivery

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// StaleTmp is the age after which a file left in a maildir's tmp/ is
// garbage: the maildir specification (D. J. Bernstein) has readers delete
// tmp files not accessed for 36 hours. pecgw's own are left by a process
// that died between writing and linking into new/: never delivered.
const StaleTmp = 36 * time.Hour

// CleanTmp removes the files older than olderThan from the tmp/ folders of
// the outbound maildir and of every mailbox, and returns how many it
// removed. Nothing in tmp/ was ever delivered (delivery links into new/
// and only then removes the tmp file), so this loses nothing.
func (l *Local) CleanTmp(olderThan time.Duration, now time.Time) (int, error) {
	dirs := []string{filepath.Join(l.dataDir, "outbound", "tmp")}
	boxes, err := os.ReadDir(filepath.Join(l.dataDir, "mailboxes"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("delivery: clean tmp: %w", err)
	}
	for _, b := range boxes {
		if b.IsDir() {
			dirs = append(dirs, filepath.Join(l.dataDir, "mailboxes", b.Name(), "tmp"))
		}
	}
	removed := 0
	var errs []error
	for _, dir := range dirs {
		entries, err := os.ReadDir(dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, e := range entries {
			info, err := e.Info()
			if err != nil || !info.Mode().IsRegular() || now.Sub(info.ModTime()) < olderThan {
				continue
			}
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				errs = append(errs, err)
				continue
			}
			removed++
		}
	}
	if len(errs) > 0 {
		return removed, fmt.Errorf("delivery: clean tmp: %w", errors.Join(errs...))
	}
	return removed, nil
}
