package sandbox

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDumpState: a stand-in for husk-vmm that answers SIGUSR1 on stderr as
// husk-vmm does; DumpState passes the signal on and shows the answer, and
// Close still stops the VM afterwards.
func TestDumpState(t *testing.T) {
	dir := t.TempDir()
	vmm := filepath.Join(dir, "fake-vmm")
	script := "#!/bin/sh\ntrap 'echo \"level=WARN msg=device_state queues=[avail=7]\" >&2' USR1\necho started >&2\nwhile :; do sleep 0.05; done\n"
	if err := os.WriteFile(vmm, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	vm, err := Start(VMSpec{VMM: vmm, Kernel: "k", Rootfs: "r", CPUs: 1, MemMiB: 1, Dir: filepath.Join(dir, "vm")})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close(time.Second)
	for !strings.Contains(vm.stderr.String(), "started") {
		time.Sleep(10 * time.Millisecond) // the trap is set before "started"
	}
	var out strings.Builder
	vm.DumpState(&out)
	if !strings.Contains(out.String(), "device_state queues=[avail=7]") {
		t.Fatalf("DumpState wrote %q", out.String())
	}
	if err := vm.Close(time.Second); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	vm.DumpState(&out)
	if !strings.Contains(out.String(), "has exited") {
		t.Fatalf("DumpState after Close wrote %q", out.String())
	}
}
