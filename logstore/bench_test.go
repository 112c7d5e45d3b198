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

// countingSigner counts the signatures made.
type countingSigner struct {
	CheckpointSigner
	n atomic.Int64
}

func (s *countingSigner) SignDetached(data []byte, at time.Time) ([]byte, error) {
	s.n.Add(1)
	return s.CheckpointSigner.SignDetached(data, at)
}

// BenchmarkAppend measures group commit: records/s and the p99 latency of
// Append with 1, 16 and 64 concurrent writers, each Append durable (one
// write and one fsync per batch), with the RSA-2048 and the P-256 test
// key signing the checkpoints in the background as in production (every
// batch, at most every CheckpointInterval: signatures per 1000 records
// reported).
func BenchmarkAppend(b *testing.B) {
	for _, bc := range []struct {
		key     string
		writers int
	}{{"rsa", 1}, {"rsa", 16}, {"rsa", 64}, {"p256", 16}, {"p256", 64}} {
		key, writers := bc.key, bc.writers
		b.Run(fmt.Sprintf("key=%s/writers=%d", key, writers), func(b *testing.B) {
			sig := &countingSigner{CheckpointSigner: testpki.Signer(b, key)}
			o := Options{Dir: benchDir(b), Signer: sig, Provider: testpki.ProviderName}
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
			b.ReportMetric(float64(sig.n.Load())*1000/float64(b.N), "sigs/krec")
			if err := l.Close(); err != nil {
				b.Fatal(err)
			}
		})
	}
}
