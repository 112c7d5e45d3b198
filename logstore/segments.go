package logstore

import (
	"fmt"
	"os"
	"sort"
	"strings"
)

// SegmentFile is a segment of the log as found in its folder.
type SegmentFile struct {
	Name   string // file name, <first seq>-<yyyymmdd>.log
	First  uint64 // seq of its first record
	Day    string // yyyymmdd (Italian time) it was opened on
	Size   int64
	Sealed bool // read-only: sealed, never written again
}

// ListSegments returns the segments in dir in chain order (by first seq).
// Files that are not segments (indexes, temporary files) are skipped; a
// name that looks like a segment but does not parse is an error, as is
// a folder that is not there.
func ListSegments(dir string) ([]SegmentFile, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("log folder: %w", err)
	}
	var segs []SegmentFile
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, segmentExt) || e.IsDir() {
			continue
		}
		first, day, ok := ParseSegmentName(name)
		if !ok {
			return nil, fmt.Errorf("log folder %s: %q is not a segment name (<20-digit seq>-<yyyymmdd>.log)", dir, name)
		}
		info, err := e.Info()
		if err != nil {
			return nil, fmt.Errorf("log folder %s: %w", dir, err)
		}
		segs = append(segs, SegmentFile{Name: name, First: first, Day: day, Size: info.Size(), Sealed: info.Mode().Perm()&0o222 == 0})
	}
	sort.Slice(segs, func(i, j int) bool { return segs[i].First < segs[j].First })
	for i := 1; i < len(segs); i++ {
		if segs[i].First == segs[i-1].First {
			return nil, fmt.Errorf("log folder %s: segments %s and %s start at the same seq", dir, segs[i-1].Name, segs[i].Name)
		}
	}
	return segs, nil
}
