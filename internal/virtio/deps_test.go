package virtio_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps keeps the virtio layer below the VMM (STYLE.md §2): the packages
// import the standard library, x/sys and these husk packages only, and never
// kvm or vmm.
func TestDeps(t *testing.T) {
	allowed := map[string][]string{
		"./":           {"internal/guestmem"},
		"./mmio":       {"internal/guestmem", "internal/eventfd", "internal/virtio"},
		"./rng":        {"internal/guestmem", "internal/virtio"},
		"./blk":        {"internal/guestmem", "internal/virtio"},
		"./vsock":      {"internal/guestmem", "internal/virtio"},
		"./net":        {"internal/guestmem", "internal/virtio"},
		"./virtiotest": {"internal/guestmem", "internal/virtio"},
	}
	for pkg, ok := range allowed {
		out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list: %v: %s", err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			if strings.HasPrefix(dep, "golang.org/x/sys/") {
				continue
			}
			rel, found := strings.CutPrefix(dep, "github.com/huskvm/husk/")
			if !found {
				t.Errorf("%s imports %s", pkg, dep)
				continue
			}
			good := rel == "internal/virtio"+strings.TrimPrefix(strings.TrimSuffix(pkg, "/"), ".")
			for _, a := range ok {
				good = good || rel == a
			}
			if !good {
				t.Errorf("%s imports %s", pkg, rel)
			}
		}
	}
}
