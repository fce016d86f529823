// Package agenttest runs the real husk-agent binary for tests, on the host:
// chrooted into a throwaway overlay of a minimal Debian root (so that the
// user "user" exists and every process the agent starts runs as that user
// inside the chroot, never as root on the host), in its own mount and PID
// namespaces (so that nothing it starts outlives the test), with listeners
// the test created and passed down as descriptors.
//
// A test binary that uses it must call RunHelperIfChild first thing in
// TestMain: the namespaces are set up by a re-executed copy of the test
// binary.
package agenttest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/huskvm/husk/internal/cache"
)

// Recipe of the test root. Change rootRecipe to rebuild every cached copy.
const (
	rootSuite   = "bookworm"
	rootVariant = "minbase"
	rootRecipe  = "agent-testroot v1: user uid 1000 home /home/user"
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

// RequireRoot skips (fails under CI) unless the test runs as root, which
// chroot, mounts and namespaces need.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "agent tests need root (chroot, mount and PID namespaces)")
	}
}

// Root returns a cached Debian root (mmdebstrap --variant=minbase bookworm,
// plus the user "user") under $HUSK_CACHE/agent-testroot/<hash>, building it
// on first use (about 20 s). Tests never write to it: Start overlays it.
func Root(t testing.TB) string {
	t.Helper()
	RequireRoot(t)
	sum := sha256.Sum256([]byte(rootSuite + "\x00" + rootVariant + "\x00" + rootRecipe))
	key := hex.EncodeToString(sum[:8])
	dir, err := cache.Dir("agent-testroot")
	if err != nil {
		t.Fatal(err)
	}
	final := filepath.Join(dir, key)
	if cache.Exists(final) {
		return final
	}
	release, err := cache.Lock(final + ".lock")
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if cache.Exists(final) {
		return final
	}
	if err := cache.RemoveStale(final); err != nil {
		t.Fatal(err)
	}
	ensureMmdebstrap(t)
	t.Logf("building the agent test root in %s (mmdebstrap --variant=%s %s)", final, rootVariant, rootSuite)
	err = cache.Publish(final, func(tmp string) error {
		out, err := exec.Command("mmdebstrap", "--quiet", "--variant="+rootVariant, rootSuite, tmp).CombinedOutput()
		if err != nil {
			return fmt.Errorf("mmdebstrap: %v\n%s", err, out)
		}
		return addUser(tmp)
	})
	if err != nil {
		t.Fatal(err)
	}
	return final
}

// ensureMmdebstrap installs mmdebstrap from Debian when it is missing.
func ensureMmdebstrap(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("mmdebstrap"); err == nil {
		return
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		Unavailable(t, "mmdebstrap is not installed and there is no apt-get to install it")
	}
	t.Log("installing mmdebstrap")
	for _, args := range [][]string{{"update", "-q"}, {"install", "-y", "-q", "--no-install-recommends", "mmdebstrap"}} {
		cmd := exec.Command("apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("apt-get %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// addUser adds "user" (uid and gid 1000, home /home/user, bash) to root,
// as the E2B templates have it.
func addUser(root string) error {
	appendLine := func(name, line string) error {
		f, err := os.OpenFile(filepath.Join(root, "etc", name), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return err
		}
		if _, err := f.WriteString(line + "\n"); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
	for name, line := range map[string]string{
		"passwd": "user:x:1000:1000:husk user:/home/user:/bin/bash",
		"group":  "user:x:1000:",
		"shadow": "user:*:20000:0:99999:7:::",
	} {
		if err := appendLine(name, line); err != nil {
			return fmt.Errorf("add user: %w", err)
		}
	}
	home := filepath.Join(root, "home", "user")
	if err := os.MkdirAll(home, 0o755); err != nil {
		return err
	}
	for _, f := range []string{".bashrc", ".profile"} {
		if b, err := os.ReadFile(filepath.Join(root, "etc", "skel", f)); err == nil {
			if err := os.WriteFile(filepath.Join(home, f), b, 0o644); err != nil {
				return err
			}
			if err := os.Chown(filepath.Join(home, f), 1000, 1000); err != nil {
				return err
			}
		}
	}
	return os.Chown(home, 1000, 1000)
}
