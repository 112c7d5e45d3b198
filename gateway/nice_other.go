//go:build !linux

package gateway

import "errors"

// workerNice is the nice value the worker asks for (nice_linux.go).
const workerNice = 19

// lowerPriority is Linux's (nice_linux.go): elsewhere the worker runs at
// the daemon's priority, which ServeHashWorker reports.
func lowerPriority() error {
	return errors.New("lowering the worker's priority is implemented on Linux only")
}
