// Package hosted runs the e2e tests (test/e2e) where a Linux guest can run:
// directly on hardware KVM, or inside the test host where /dev/kvm cannot
// boot Linux at a usable speed. Each e2e test is reported as a subtest of
// TestE2E either way.
package hosted

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/huskvm/husk/internal/devenv"
	"github.com/huskvm/husk/internal/sandbox"
	"github.com/huskvm/husk/internal/testhost"
)

// e2eTimeout bounds the whole e2e run, test-host boot included.
const e2eTimeout = 45 * time.Minute

func TestE2E(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), e2eTimeout)
	defer cancel()
	stage := t.TempDir()
	e2e := filepath.Join(t.TempDir(), "e2e.test")
	if err := testhost.GoBuild(ctx, e2e, "./test/e2e", true); err != nil {
		t.Fatal(err)
	}
	rootfs, err := devenv.Rootfs(ctx, "minimal", testWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	// husk and the base template with this agent, for the husk run tests.
	husk := filepath.Join(t.TempDir(), "husk")
	if err := testhost.GoBuild(ctx, husk, "./cmd/husk", false); err != nil {
		t.Fatal(err)
	}
	agent := filepath.Join(t.TempDir(), "husk-agent")
	if err := testhost.GoBuild(ctx, agent, "./cmd/husk-agent", false); err != nil {
		t.Fatal(err)
	}
	base, err := devenv.AgentRootfs(ctx, "base", agent, testWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	a, err := devenv.Stage(ctx, stage, testWriter{t}, map[string]string{"e2e.test": e2e, "minimal.ext4": rootfs, "husk": husk})
	if err != nil {
		t.Fatal(err)
	}
	place := sandbox.Place(ctx, a.VMM)
	t.Log(place.Reason)
	env := func(dir, base string) []string {
		return []string{
			"HUSK_HUSK=" + filepath.Join(dir, "husk"),
			"HUSK_BASE=" + base,
			"HUSK_VMM=" + filepath.Join(dir, filepath.Base(a.VMM)),
			"HUSK_VMLINUX=" + filepath.Join(dir, filepath.Base(a.Vmlinux)),
			"HUSK_BZIMAGE=" + filepath.Join(dir, filepath.Base(a.BzImage)),
			"HUSK_INITRD=" + filepath.Join(dir, filepath.Base(a.Initrd)),
			"HUSK_ROOTFS=" + filepath.Join(dir, "minimal.ext4"),
		}
	}
	// HUSK_E2E_RUN selects inner tests, as -run would; HUSK_E2E_COUNT
	// repeats them, as -count would, to chase a rare failure.
	run := []string{"-test.count=1"}
	if r := os.Getenv("HUSK_E2E_RUN"); r != "" {
		run = append(run, "-test.run="+r)
	}
	if n := os.Getenv("HUSK_E2E_COUNT"); n != "" {
		run = append(run, "-test.count="+n)
	}
	if place.Direct {
		testhost.RunGoTestDirect(t, filepath.Join(stage, "e2e.test"), append(os.Environ(), env(stage, base)...), e2eTimeout, run...)
		return
	}
	const inside = "/artifacts/e2e"
	testhost.RunGoTest(t, testhost.Spec{
		// The base image goes in raw (not packed): it is big, and the
		// tests use it as a block device, /dev/disk/husk/base.
		Disks:    []testhost.Disk{{Name: "e2e", Path: stage}, {Name: "base", Path: base}},
		Args:     append([]string{filepath.Join(inside, "e2e.test")}, run...),
		Env:      append(env(inside, "/dev/disk/husk/base"), "CI="+os.Getenv("CI"), "HUSK_E2E_VSOCK_MIB="+os.Getenv("HUSK_E2E_VSOCK_MIB")),
		Timeout:  e2eTimeout,
		Progress: testWriter{t},
	})
}

// testWriter logs progress lines to the test.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
