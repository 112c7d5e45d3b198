// Package durable names the durable writes of pecgw, each an fsync of a
// file or of a folder, so that the power-loss test can prove that every
// one of them is needed: built with the tag pecgw_faults, the environment
// variable PECGW_SKIP_SYNC=<point> skips the fsync of that point
// (Sync, SyncDir return nil without syncing). Without the tag nothing can
// be skipped and Skip is the constant false.
//
// The points of the acceptance path (Path) are listed, with the
// invariant each serves, in docs/architecture.md ("Durable writes").
package durable

import (
	"fmt"
	"os"
)

// Point names one durable write.
type Point string

// The durable writes of the acceptance path (and of what a crash makes
// of it: the reconciliation uses the same ones), in the order a
// transaction meets them.
const (
	// SpoolPut: delivery.Spool.Put, the acceptance receipt appended to
	// the spool's journal: the journal's fsync, shared by concurrent Puts,
	// and that of a rewritten journal before its rename (SpoolPut.File());
	// the spool folder after the journal is created or renamed into place
	// (SpoolPut.Dir()).
	SpoolPut Point = "spool.put"
	// LogAppend: logstore's group commit, the fsync of the active segment
	// before any Append returns.
	LogAppend Point = "log.append"
	// LogSegmentDir: logstore, the log folder after a segment is created.
	LogSegmentDir Point = "log.segment-dir"
	// Maildir: delivery.Maildir, a message written into tmp/ and linked
	// into new/ with safeio.WriteNew: the file (Maildir.File()) and new/
	// (Maildir.Dir()).
	Maildir Point = "maildir"
	// Mkdir: safeio.MkdirAllSync, the parent of each folder it creates
	// (the maildirs' tmp/, new/, cur/ at their first delivery, the spool
	// and the dedup folders at their first start).
	Mkdir Point = "mkdir"
	// DedupJournal: the embedded dedup store, each commit's line.
	DedupJournal Point = "dedup.journal"
	// DedupJournalDir: the embedded dedup store's folder after its
	// journal is created.
	DedupJournalDir Point = "dedup.journal-dir"
	// SpoolMark: delivery.Spool.Mark, the spool folder after a rename
	// (a receipt marked out or unconfirmed, the operator's decision), and
	// the file a mark writes of a journal entry (SpoolMark.File(),
	// SpoolMark.Dir()).
	SpoolMark Point = "spool.mark"
)

// File and Dir name the two fsyncs of a durable file write: the file's
// data, and its folder's entry.
func (p Point) File() Point { return p + ".file" }
func (p Point) Dir() Point  { return p + ".dir" }

// Path lists the fsyncs of the acceptance path, each one a power-loss
// test must catch when skipped.
var Path = []Point{
	SpoolPut.File(), SpoolPut.Dir(), LogAppend, LogSegmentDir, Maildir.File(), Maildir.Dir(), Mkdir,
	DedupJournal, DedupJournalDir,
}

// Skip reports whether the fsync of p is to be skipped: only in a binary
// built with -tags pecgw_faults, for the power-loss test.
func Skip(p Point) bool { return skip(p) }

// Sync fsyncs f, the durable write p.
func Sync(p Point, f *os.File) error {
	if skip(p) {
		return nil
	}
	return f.Sync()
}

// SyncDir fsyncs the folder dir, making the creation, rename or removal
// of its entries durable: the durable write p. Concurrent calls for the
// same folder share their fsyncs (group.go): it returns once an fsync
// of dir that started after the call has ended.
func SyncDir(p Point, dir string) error {
	if skip(p) {
		return nil
	}
	return syncShared(dir, func() error { return syncDir(dir) })
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fsync folder: %w", err)
	}
	if err := d.Sync(); err != nil {
		d.Close()
		return fmt.Errorf("fsync folder %s: %w", dir, err)
	}
	if err := d.Close(); err != nil {
		return fmt.Errorf("close folder %s: %w", dir, err)
	}
	return nil
}
