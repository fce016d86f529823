package agent

import (
	"os/exec"
	"strings"
	"testing"
)

// TestAgentImportsNoHostCode keeps the guest agent's import graph to itself,
// the shared wire API and an allowlist of modules (DESIGN.md "Layers": the
// agent never imports host code such as internal/vmm, kvm or virtio).
func TestAgentImportsNoHostCode(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/huskvm/husk/cmd/husk-agent").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	ownAllowed := []string{
		"github.com/huskvm/husk/cmd/husk-agent",
		"github.com/huskvm/husk/internal/agent",
		"github.com/huskvm/husk/internal/envd",
	}
	modulesAllowed := []string{"connectrpc.com/connect", "google.golang.org/protobuf/", "golang.org/x/sys/"}
	for _, pkg := range strings.Fields(string(out)) {
		first, _, _ := strings.Cut(pkg, "/")
		if !strings.Contains(first, ".") {
			continue // the standard library
		}
		ok := false
		if strings.HasPrefix(pkg, "github.com/huskvm/husk/") {
			for _, a := range ownAllowed {
				ok = ok || pkg == a || strings.HasPrefix(pkg, a+"/")
			}
		} else {
			for _, a := range modulesAllowed {
				ok = ok || strings.HasPrefix(pkg, a)
			}
		}
		if strings.Contains(pkg, "/agenttest") {
			ok = false // test support must not reach the binary
		}
		if !ok {
			t.Errorf("husk-agent imports %s", pkg)
		}
	}
}
