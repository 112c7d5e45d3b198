package durable

import (
	"path/filepath"
	"sync"
)

// A Group shares fsyncs among concurrent callers (group commit, as the
// transaction log does for its records): each caller has made its change
// (a link into a maildir's new/, a rename in the spool) before it asks,
// and returns once an fsync that started after its request has ended. An
// fsync already running when a caller asks may have missed its change, so
// that caller waits for the next one, which then serves everyone who
// asked meanwhile: under load, one fsync of a folder per batch of
// transactions instead of one per transaction (docs/architecture.md,
// "Durable writes of the acceptance path").
//
// The zero Group is ready to use; SyncDir keeps one per folder, the
// embedded dedup store one for its journal.
type Group struct {
	mu       sync.Mutex
	cond     sync.Cond
	running  bool
	started  uint64 // fsyncs started so far; the n-th has generation n
	finished uint64 // generation of the last fsync ended
	// failedGen is the last generation whose fsync failed, failedErr its
	// error: a caller whose generation is that one or an earlier still
	// unanswered one gets it (after a failed fsync the kernel may have
	// dropped what it had, so a later success proves nothing for it).
	failedGen uint64
	failedErr error

	users int // callers in do; guarded by groupsMu
}

// Do returns when an fsync (sync) that started after the call has ended,
// with its error, or with the error of a later one that failed.
func (g *Group) Do(sync func() error) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cond.L == nil {
		g.cond.L = &g.mu
	}
	want := g.started + 1 // the first fsync to start from now on
	for g.finished < want {
		if g.running {
			g.cond.Wait()
			continue
		}
		g.running = true
		g.started++
		gen := g.started
		g.mu.Unlock()
		err := sync()
		g.mu.Lock()
		g.running, g.finished = false, gen
		if err != nil {
			g.failedGen, g.failedErr = gen, err
		}
		g.cond.Broadcast()
	}
	if g.failedGen >= want {
		return g.failedErr
	}
	return nil
}

// groups holds the group of each folder while someone syncs it: a
// provider has a maildir per mailbox, so idle groups are dropped.
var (
	groupsMu sync.Mutex
	groups   = map[string]*Group{}
)

// syncShared runs sync, the fsync of folder dir, shared with the
// concurrent calls for the same folder (its clean absolute path).
func syncShared(dir string, sync func() error) error {
	key := dir
	if abs, err := filepath.Abs(dir); err == nil {
		key = abs
	}
	groupsMu.Lock()
	g := groups[key]
	if g == nil {
		g = &Group{}
		groups[key] = g
	}
	g.users++
	groupsMu.Unlock()
	err := g.Do(sync)
	groupsMu.Lock()
	if g.users--; g.users == 0 {
		delete(groups, key)
	}
	groupsMu.Unlock()
	return err
}
