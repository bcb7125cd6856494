package runner

import (
	"os"
	"testing"
)

// requireEnv: in CI (JETCI_REQUIRE_SANDBOX=1, set by .ci/run) a machine that
// cannot run a backend fails its tests; elsewhere they are skipped.
func requireEnv(t testing.TB, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if os.Getenv("JETCI_REQUIRE_SANDBOX") != "" {
		t.Fatalf("%s: %v (JETCI_REQUIRE_SANDBOX is set)", what, err)
	}
	t.Skipf("%s: %v", what, err)
}

func requireSandbox(t testing.TB) {
	t.Helper()
	uid := -1
	if os.Geteuid() == 0 {
		uid = DefaultSandboxUID
	}
	requireEnv(t, "sandbox", probeSandbox(uid))
	requireEnv(t, "cgroups", cgroupsReady())
}
