//go:build pecgw_faults

package durable

import (
	"os"
	"sync"
)

// SkipEnv names the variable that says which fsync to skip, in a binary
// built for the power-loss test (-tags pecgw_faults).
const SkipEnv = "PECGW_SKIP_SYNC"

var skipped = sync.OnceValue(func() Point { return Point(os.Getenv(SkipEnv)) })

// skip: the point named by PECGW_SKIP_SYNC, read once.
func skip(p Point) bool { return p != "" && p == skipped() }
