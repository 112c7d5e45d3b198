package gateway

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
)

// workerNice is the nice value of the password worker: the lowest
// priority (setpriority(2)).
const workerNice = 19

// lowerPriority puts every thread of this process at nice 19. On Linux a
// nice value belongs to a thread (setpriority(2), "BUGS"), and a new
// thread takes its creator's: every thread in /proc/self/task is niced,
// again until a listing shows none that was not niced already, so a
// thread the Go runtime starts meanwhile is caught too. The daemon does
// not nice itself around starting the child: an unprivileged process
// cannot raise a nice value back, and the thread that forked would stay
// at 19 in the daemon.
func lowerPriority() error {
	done := map[int]bool{}
	for pass := 0; pass < 100; pass++ {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return fmt.Errorf("nice %d: %w", workerNice, err)
		}
		fresh := false
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil || done[tid] {
				continue
			}
			fresh = true
			err = syscall.Setpriority(syscall.PRIO_PROCESS, tid, workerNice)
			if err != nil && !errors.Is(err, syscall.ESRCH) { // ESRCH: the thread ended
				return fmt.Errorf("nice %d of thread %d: %w", workerNice, tid, err)
			}
			done[tid] = true
		}
		if !fresh {
			return nil
		}
	}
	return fmt.Errorf("nice %d: threads kept appearing", workerNice)
}
