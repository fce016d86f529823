package main

import (
	"fmt"
	"os"

	"github.com/huskvm/husk/internal/kvm"
)

// probe answers `husk-vmm --probe`: whether this machine's /dev/kvm runs
// guest kernels at a usable speed. It prints one line, "kvm=hardware" or
// "kvm=emulated", with the probe loop's time, and exits 0; it exits 1 with
// the reason when /dev/kvm cannot run a guest at all. Tools that must not
// link KVM code (cmd/husk) ask this way.
func probe() int {
	d, err := kvm.ProbeSpeed()
	if err != nil {
		fmt.Fprintf(os.Stderr, "husk-vmm: /dev/kvm: %v\n", err)
		return 1
	}
	kind := "hardware"
	if d > kvm.LinuxSpeedLimit {
		kind = "emulated"
	}
	fmt.Printf("kvm=%s probe=%v\n", kind, d)
	return 0
}
