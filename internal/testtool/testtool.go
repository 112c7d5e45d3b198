// Package testtool lets tests that need an external program (openssl,
// xmllint, redis-server) skip with a clear message on a developer machine
// that lacks it, and fail in CI, where .ci/run sets PECGW_NO_SKIP=1.
package testtool

import (
	"fmt"
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

// SamplesEnv names the folder of the reference samples: four real PEC
// messages of a production provider (Aruba PEC, 2014), published as test
// data by OCA/l10n-italy (branch 7.0, l10n_it_pec_messages/tests/data/)
// under AGPL-3.0, and for that reason not copied into this repository.
// .ci/run sets it; docs/pec-spec-digest.md says what they show.
const SamplesEnv = "PECGW_SAMPLES"

// SharedSamples returns the folder of the reference samples named by
// PECGW_SAMPLES. It skips, or fails under PECGW_NO_SKIP, when the
// variable is unset or the folder is absent.
func SharedSamples(t testing.TB) string {
	t.Helper()
	s := os.Getenv(SamplesEnv)
	if s == "" {
		Missing(t, SamplesEnv+" is not set: point it at a folder holding the OCA/l10n-italy PEC samples (oca_message1.eml, oca_message2.eml, oca_aruba_accettazione.eml, oca_aruba_consegna.eml)")
		return ""
	}
	if _, err := os.Stat(filepath.Join(s, "oca_message1.eml")); err != nil {
		Missing(t, fmt.Sprintf("%s=%s holds no oca_message1.eml: %v", SamplesEnv, s, err))
	}
	return s
}
