// Package testtool lets tests that need an external program (openssl,
// xmllint, redis-server) skip with a clear message on a developer machine
// that lacks it, and fail in CI, where .ci/run sets PECGW_NO_SKIP=1.
package testtool

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// NoSkipEnv names the variable that turns a missing tool into a failure.
const NoSkipEnv = "PECGW_NO_SKIP"

// Need returns the path of the named program, or skips the test (fails it
// when PECGW_NO_SKIP is set) when the program is not installed.
func Need(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	Missing(t, name+" is not installed (on Debian: apt-get install "+debianPackage(name)+")")
	return ""
}

// Missing skips the test with reason, or fails it when PECGW_NO_SKIP is set.
func Missing(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv(NoSkipEnv) != "" {
		t.Fatalf("%s; %s is set, so this is a failure, not a skip", reason, NoSkipEnv)
	}
	t.Skipf("skipped: %s", reason)
}

func debianPackage(name string) string {
	switch name {
	case "xmllint":
		return "libxml2-utils"
	case "redis-server":
		return "redis-server"
	default:
		return name
	}
}

// SharedSamples returns the folder of real PEC messages kept beside the
// repository (../shared/samples from the module root; they are reference
// material, not part of the project). It skips, or fails under
// PECGW_NO_SKIP, when the folder is absent.
func SharedSamples(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test's folder")
		}
		dir = parent
	}
	s := filepath.Join(dir, "..", "shared", "samples")
	if _, err := os.Stat(s); err != nil {
		Missing(t, "the reference samples folder ../shared/samples is not beside the repository")
	}
	return s
}
