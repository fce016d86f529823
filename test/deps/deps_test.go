// Package deps checks the import graph: imports point down the layers of
// DESIGN.md. Each rule names packages (a trailing /... takes the subtree) and
// the packages they must not depend on, directly or not.
package deps

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/huskvm/husk/"

var rules = []struct {
	pkgs, banned []string
	why          string
}{
	{
		pkgs:   []string{"internal/kvm", "internal/guestmem", "internal/eventfd", "internal/cpio"},
		banned: []string{"internal/..."},
		why:    "leaves import only the standard library and x/sys",
	},
	{
		pkgs:   []string{"internal/boot"},
		banned: []string{"internal/kvm", "internal/vmm", "internal/arch/..."},
		why:    "the loader is pure: guest memory in, boot structures out",
	},
	{
		pkgs:   []string{"internal/virtio/...", "internal/devices/..."},
		banned: []string{"internal/kvm", "internal/vmm"},
		why:    "device models know guest memory and eventfds, not KVM or the VM assembly",
	},
	{
		pkgs:   []string{"internal/agent/...", "cmd/husk-agent", "internal/envd/..."},
		banned: []string{"internal/vmm", "internal/kvm", "internal/virtio/...", "internal/arch/...", "internal/boot", "internal/testhost/..."},
		why:    "the guest agent never links host code",
	},
	{
		pkgs:   []string{"cmd/husk", "internal/sandbox/...", "internal/api/..."},
		banned: []string{"internal/vmm", "internal/kvm", "internal/virtio/..."},
		why:    "the daemon drives husk-vmm as a separate, jailed process",
	},
	{
		pkgs:   []string{"cmd/husk-vmm"},
		banned: []string{"internal/testhost/...", "internal/kbuild", "internal/devenv", "internal/testutil/..."},
		why:    "the VMM binary carries no development tooling",
	},
}

// goList runs go list with args and returns its output lines.
func goList(t *testing.T, args ...string) []string {
	t.Helper()
	out, err := exec.Command("go", append([]string{"list"}, args...)...).Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			t.Fatalf("go list %v: %v\n%s", args, err, ee.Stderr)
		}
		t.Fatalf("go list %v: %v", args, err)
	}
	return strings.Fields(string(out))
}

func matches(pkg, pattern string) bool {
	if p, ok := strings.CutSuffix(pattern, "/..."); ok {
		return pkg == module+p || strings.HasPrefix(pkg, module+p+"/")
	}
	return pkg == module+pattern
}

func TestImportsPointDown(t *testing.T) {
	all := goList(t, module+"...")
	checked := 0
	for _, r := range rules {
		for _, pkg := range all {
			mine := false
			for _, p := range r.pkgs {
				mine = mine || matches(pkg, p)
			}
			if !mine {
				continue
			}
			checked++
			for _, dep := range goList(t, "-deps", pkg) {
				if dep == pkg {
					continue
				}
				for _, b := range r.banned {
					if matches(dep, b) {
						t.Errorf("%s imports %s: %s", strings.TrimPrefix(pkg, module), strings.TrimPrefix(dep, module), r.why)
					}
				}
			}
		}
	}
	if checked == 0 {
		t.Fatal("no package matched any rule")
	}
}

func TestMatches(t *testing.T) {
	for _, tc := range []struct {
		pkg, pattern string
		want         bool
	}{
		{module + "internal/virtio", "internal/virtio/...", true},
		{module + "internal/virtio/blk", "internal/virtio/...", true},
		{module + "internal/virtiox", "internal/virtio/...", false},
		{module + "internal/kvm", "internal/kvm", true},
		{module + "internal/kvm/x", "internal/kvm", false},
		{"example.com/internal/kvm", "internal/kvm", false},
	} {
		if got := matches(tc.pkg, tc.pattern); got != tc.want {
			t.Errorf("matches(%q, %q) = %v", tc.pkg, tc.pattern, got)
		}
	}
}
