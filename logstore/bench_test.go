package logstore

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pecgw/pecgw/internal/testpki"
)

// benchDir returns a folder on a real disk: the system temporary folder,
// unless it is a tmpfs (where fsync costs nothing), then a folder beside
// the package. It says which.
func benchDir(b *testing.B) string {
	b.Helper()
	base := os.TempDir()
	if fs := fsType(base); fs == "tmpfs" || fs == "ramfs" {
		wd, err := os.Getwd()
		if err != nil {
			b.Fatal(err)
		}
		base = wd
	}
	dir, err := os.MkdirTemp(base, "logstore-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		filepath.WalkDir(dir, func(p string, _ os.DirEntry, _ error) error { os.Chmod(p, 0o755); return nil })
		os.RemoveAll(dir)
	})
	b.Logf("log folder %s (%s)", dir, fsType(dir))
	return dir
}

// fsType returns the type of the file system holding path, from
// /proc/self/mounts (Linux), or "" if unknown.
func fsType(path string) string {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return ""
	}
	defer f.Close()
	best, typ := "", ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 {
			continue
		}
		mp := fields[1]
		if (path == mp || strings.HasPrefix(path, strings.TrimSuffix(mp, "/")+"/")) && len(mp) >= len(best) {
			best, typ = mp, fields[2]
		}
	}
	return typ
}

// BenchmarkAppend measures group commit: records/s and the p99 latency of
// Append with 1, 16 and 64 concurrent writers, each Append durable (one
// write and one fsync per batch), with the RSA test key signing a
// checkpoint every 1000 records as in production.
func BenchmarkAppend(b *testing.B) {
	for _, writers := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			o := Options{Dir: benchDir(b), Signer: testpki.Signer(b, "rsa"), Provider: testpki.ProviderName}
			l, err := Open(o)
			if err != nil {
				b.Fatal(err)
			}
			lat := make([][]time.Duration, writers)
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			for w := range writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r := sampleAcceptance(w, time.Now())
					for next.Add(1) <= int64(b.N) {
						t0 := time.Now()
						if _, _, err := l.Append(context.Background(), r); err != nil {
							b.Error(err)
							return
						}
						lat[w] = append(lat[w], time.Since(t0))
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			all := slices.Concat(lat...)
			slices.Sort(all)
			if len(all) > 0 {
				p99 := all[min(len(all)-1, len(all)*99/100)]
				b.ReportMetric(float64(p99.Nanoseconds())/1e3, "p99-µs")
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
			if err := l.Close(); err != nil {
				b.Fatal(err)
			}
		})
	}
}
