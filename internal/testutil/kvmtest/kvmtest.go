// Package kvmtest holds test helpers for code that needs /dev/kvm.
//
// A test that cannot run because the machine lacks what it needs skips
// locally, but fails when the environment variable CI is "true": CI must
// never pass by skipping.
package kvmtest

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// InCI reports whether the tests run under CI (CI=true).
func InCI() bool { return os.Getenv("CI") == "true" }

// Unavailable skips t, or fails it under CI, with the reason.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if InCI() {
		t.Fatalf("CI=true and this test cannot run: "+format, args...)
	}
	t.Skipf(format, args...)
}

// RequireKVM skips (fails under CI) unless /dev/kvm opens read-write.
func RequireKVM(t testing.TB) {
	t.Helper()
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		Unavailable(t, "/dev/kvm: %v", err)
		return
	}
	unix.Close(fd)
}
