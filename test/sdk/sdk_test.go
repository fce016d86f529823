// Package sdk runs the unmodified e2b npm SDK against husk-agent: npm
// installs e2b@2.51.0 (package-lock.json) into a cache directory, and
// node --test runs sdk.test.mjs in the SDK's local mode (E2B_DEBUG=true,
// envd at localhost:49983), inside a network namespace of its own where
// the agent serves that port.
package sdk

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/huskvm/husk/internal/agent/agenttest"
	"github.com/huskvm/husk/internal/cache"
)

func TestMain(m *testing.M) { agenttest.Main(m) }

func TestE2BSDK(t *testing.T) {
	agenttest.RequireRoot(t)
	node, err := exec.LookPath("node")
	if err != nil {
		agenttest.Unavailable(t, "node is not installed")
	}
	if _, err := exec.LookPath("npm"); err != nil {
		agenttest.Unavailable(t, "npm is not installed")
	}
	modules := installSDK(t)

	dir := t.TempDir()
	if err := os.Symlink(filepath.Join(modules, "node_modules"), filepath.Join(dir, "node_modules")); err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("sdk.test.mjs")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sdk.test.mjs"), src, 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out, err := agenttest.RunInNetwork(t, agenttest.Options{}, dir,
		[]string{"E2B_DEBUG=true", "E2B_API_KEY=husk-local", "NO_COLOR=1"},
		node, "--test", "--test-reporter=spec", "sdk.test.mjs")
	t.Logf("node --test (%v):\n%s", time.Since(start).Round(time.Millisecond), out)
	if err != nil {
		t.Fatalf("the e2b SDK tests failed: %v", err)
	}
	// The spec reporter ends with "ℹ pass N" and "ℹ fail 0".
	if m := regexp.MustCompile(`(?m)^\S* ?pass (\d+)$`).FindStringSubmatch(out); m == nil || m[1] == "0" || !regexp.MustCompile(`(?m)^\S* ?fail 0$`).MatchString(out) {
		t.Fatalf("node's test summary is missing, empty or shows failures")
	}
}

// installSDK runs npm ci for package-lock.json into
// $HUSK_CACHE/sdk-node/<hash of the lock>, once, and returns that directory.
func installSDK(t *testing.T) string {
	t.Helper()
	lock, err := os.ReadFile("package-lock.json")
	if err != nil {
		t.Fatal(err)
	}
	pkg, err := os.ReadFile("package.json")
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(append(append([]byte{}, pkg...), lock...))
	root, err := cache.Dir("sdk-node")
	if err != nil {
		t.Fatal(err)
	}
	final := filepath.Join(root, hex.EncodeToString(sum[:8]))
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
	err = cache.Publish(final, func(tmp string) error {
		for name, b := range map[string][]byte{"package.json": pkg, "package-lock.json": lock} {
			if err := os.WriteFile(filepath.Join(tmp, name), b, 0o644); err != nil {
				return err
			}
		}
		cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts")
		cmd.Dir = tmp
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Logf("npm ci:\n%s", out)
		}
		return err
	})
	if err != nil {
		t.Fatalf("npm ci: %v", err)
	}
	return final
}
