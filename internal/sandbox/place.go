package sandbox

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// Placement says where Linux guests run on this machine.
type Placement struct {
	// Direct is true when /dev/kvm runs Linux guests at a usable speed.
	Direct bool
	// Reason explains the choice in one line.
	Reason string
}

// Place decides by trying: husk-vmm --probe times a short guest loop on
// /dev/kvm. Hardware KVM runs it in about a millisecond; the nested,
// software-emulated KVM of the development machines in about a second,
// where guests go into the test host (QEMU TCG) instead. No usable /dev/kvm
// also means the test host. vmm is the husk-vmm binary: this package never
// links KVM code itself.
func Place(ctx context.Context, vmm string) Placement {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, vmm, "--probe")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	line := strings.TrimSpace(stdout.String())
	const via = "running the guest inside the test host (QEMU TCG)"
	switch {
	case err != nil:
		why := strings.TrimSpace(stderr.String())
		if why == "" {
			why = err.Error()
		}
		return Placement{Reason: fmt.Sprintf("/dev/kvm is not usable here (%s): %s", why, via)}
	case strings.HasPrefix(line, "kvm=hardware"):
		return Placement{Direct: true, Reason: fmt.Sprintf("hardware KVM (%s): running the guest directly", line)}
	}
	return Placement{Reason: fmt.Sprintf("/dev/kvm here runs guest kernel code emulated (%s; hardware takes ~1ms): %s", line, via)}
}
