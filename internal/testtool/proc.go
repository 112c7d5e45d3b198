package testtool

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
)

// ThreadNices returns the nice value of every thread of process pid
// (proc(5): field 19 of /proc/pid/task/tid/stat, counted after the
// parenthesised command name): Linux keeps one per thread. Without /proc
// the test skips.
func ThreadNices(t testing.TB, pid int) map[int]int {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		Missing(t, fmt.Sprintf("/proc/%d/task cannot be read (%v): nice values are read from Linux's /proc", pid, err))
	}
	nices := map[int]int{}
	for _, task := range tasks {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
		if err != nil {
			continue // the thread ended
		}
		fields := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
		if len(fields) < 17 {
			t.Fatalf("/proc/%d/task/%s/stat: %q", pid, task.Name(), data)
		}
		nice, err := strconv.Atoi(fields[16]) // fields 3… from fields[0]: nice is 19
		if err != nil {
			t.Fatalf("/proc/%d/task/%s/stat: %q", pid, task.Name(), data)
		}
		tid, _ := strconv.Atoi(task.Name())
		nices[tid] = nice
	}
	return nices
}
