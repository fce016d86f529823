package testhost

import (
	"os"
	"os/exec"
	"testing"
)

// RequireQEMU skips t when qemu-system-x86_64 is not installed, so tests
// that boot a test host pass on machines without it, but fails t instead
// when CI=true, so CI never passes by skipping.
func RequireQEMU(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath(QEMU); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true and the test host cannot run: %v", err)
		}
		t.Skipf("no test host: %v (install qemu-system-x86)", err)
	}
}
