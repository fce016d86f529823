package kvm

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// probeLoop is real-mode code that runs two million instructions, then halts:
//
//	mov ecx, 1000000
//	1: dec ecx
//	jnz 1b
//	hlt
var probeLoop = []byte{0x66, 0xb9, 0x40, 0x42, 0x0f, 0x00, 0x66, 0x49, 0x75, 0xfc, 0xf4}

// LinuxSpeedLimit is the most the probe loop may take on KVM that boots
// Linux at a usable speed. Hardware KVM runs it in about a millisecond; the
// nested, software-emulated KVM of the development machines takes about a
// second, as emulated ring-0 code runs ~2M instructions/s.
const LinuxSpeedLimit = 100 * time.Millisecond

// ProbeSpeed times the probe loop in a fresh VM on /dev/ Whether a Linux
// guest can boot here is decided by trying, not by guessing from CPU flags:
// guest ring-0 code is what matters, and only running some tells.
func ProbeSpeed() (time.Duration, error) {
	sys, err := Open()
	if err != nil {
		return 0, err
	}
	defer sys.Close()
	vm, err := sys.CreateVM()
	if err != nil {
		return 0, err
	}
	defer vm.Close()
	mem, err := unix.Mmap(-1, 0, 0x10000, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return 0, err
	}
	defer unix.Munmap(mem)
	copy(mem[0x1000:], probeLoop)
	if err := vm.SetUserMemoryRegion(&UserspaceMemoryRegion{MemorySize: uint64(len(mem)), UserspaceAddr: hostAddr(mem)}); err != nil {
		return 0, err
	}
	c, err := vm.CreateVCPU(0)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	s, err := c.Sregs()
	if err != nil {
		return 0, err
	}
	s.CS.Base, s.CS.Selector = 0, 0
	if err := c.SetSregs(&s); err != nil {
		return 0, err
	}
	if err := c.SetRegs(&Regs{RIP: 0x1000, RFLAGS: 2}); err != nil {
		return 0, err
	}
	start := time.Now()
	for {
		err := c.Run()
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, err
		}
		if r := c.ExitReason(); r != ExitHLT {
			return 0, fmt.Errorf("probe loop ended with exit %v", r)
		}
		return time.Since(start), nil
	}
}
