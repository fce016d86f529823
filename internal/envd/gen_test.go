package envd

import (
	"os"
	"os/exec"
	"testing"
)

// TestGeneratedCodeIsCurrent regenerates the Go code from the .proto files
// into a scratch directory and fails if it differs from what is committed
// (gen.sh check). It needs protoc, which gen.sh installs from Debian when it
// runs as root, and the Go module proxy for the two plugins.
func TestGeneratedCodeIsCurrent(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	if _, err := exec.LookPath("protoc"); err != nil && os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true: protoc is missing and gen.sh cannot install it without root")
		}
		t.Skip("protoc is missing (apt-get install protobuf-compiler libprotobuf-dev)")
	}
	out, err := exec.Command("bash", "gen.sh", "check").CombinedOutput()
	if err != nil {
		t.Fatalf("gen.sh check: %v\n%s", err, out)
	}
}
