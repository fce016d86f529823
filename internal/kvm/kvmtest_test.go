//go:build linux && amd64

package kvm

// Shared harness for tests that run real guest code on /dev/kvm (cf. gVisor
// kvm_test.go's kvmTest). Guests are a few hand-assembled 16-bit real-mode
// instructions at codeAddr, in testMemSize bytes of RAM at guest-physical 0.
// Every address at or above testMemSize is unbacked and so MMIO.

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const (
	testMemSize  = 64 << 10 // guest RAM at GPA 0
	codeAddr     = 0x1000
	stackTop     = 0x8000
	mmioSegment  = 0x1000 // real-mode DS value whose base (0x10000) is just past RAM
	tssAddr      = 0xfffbd000
	identityAddr = 0xfffbc000
)

// requireKVM opens /dev/kvm for a test and closes it at cleanup. If KVM cannot
// be opened it skips the test, except when CI=true, where it fails: CI must
// never pass by skipping.
func requireKVM(tb testing.TB) *System {
	tb.Helper()
	s, err := Open()
	if err != nil {
		if os.Getenv("CI") == "true" {
			tb.Fatalf("KVM is required when CI=true: %v", err)
		}
		tb.Skipf("KVM unavailable: %v", err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// testVM is a VM with testMemSize bytes of RAM at guest-physical 0.
type testVM struct {
	tb  testing.TB
	sys *System
	vm  *VM
	mem []byte // guest RAM, mmap'd; mem[gpa] is guest-physical gpa
}

// newTestVM creates a VM with TSS and identity-map addresses set (needed for
// real mode on Intel hosts without unrestricted guest) and, if irqchip, an
// in-kernel irqchip and PIT.
func newTestVM(tb testing.TB, irqchip bool) *testVM {
	tb.Helper()
	sys := requireKVM(tb)
	mem, err := unix.Mmap(-1, 0, testMemSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		tb.Fatalf("mmap guest memory: %v", err)
	}
	tb.Cleanup(func() { unix.Munmap(mem) }) // runs after vm.Close (cleanups are LIFO)
	vm, err := sys.CreateVM()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { vm.Close() })
	if err := vm.SetTSSAddr(tssAddr); err != nil {
		tb.Fatal(err)
	}
	if err := vm.SetIdentityMapAddr(identityAddr); err != nil {
		tb.Fatal(err)
	}
	if irqchip {
		if err := vm.CreateIRQChip(); err != nil {
			tb.Fatal(err)
		}
		if err := vm.CreatePIT2(PITSpeakerDummy); err != nil {
			tb.Fatal(err)
		}
	}
	if err := vm.SetUserMemoryRegion(&UserspaceMemoryRegion{
		Slot:          0,
		GuestPhysAddr: 0,
		MemorySize:    testMemSize,
		UserspaceAddr: hostAddr(mem),
	}); err != nil {
		tb.Fatal(err)
	}
	return &testVM{tb: tb, sys: sys, vm: vm, mem: mem}
}

// load copies code (or data) into guest memory at gpa.
func (v *testVM) load(gpa int, code []byte) { copy(v.mem[gpa:], code) }

// setupVCPU creates vCPU id in 16-bit real mode with all segment bases 0,
// IP=rip, SP=stackTop and RFLAGS=2 (only the reserved bit). It is safe to
// call from any goroutine (it does not call Fatal). Call it with the OS
// thread locked, on the goroutine that will run the vCPU.
func (v *testVM) setupVCPU(id int, rip uint64) (*VCPU, error) {
	c, err := v.vm.CreateVCPU(id)
	if err != nil {
		return nil, err
	}
	v.tb.Cleanup(func() { c.Close() })
	s, err := c.Sregs()
	if err != nil {
		return nil, err
	}
	for _, seg := range []*Segment{&s.CS, &s.DS, &s.ES, &s.FS, &s.GS, &s.SS} {
		seg.Base, seg.Selector = 0, 0
	}
	if err := c.SetSregs(&s); err != nil {
		return nil, err
	}
	if err := c.SetRegs(&Regs{RIP: rip, RSP: stackTop, RFLAGS: 2}); err != nil {
		return nil, err
	}
	return c, nil
}

// newVCPU is setupVCPU for the test goroutine: it fails the test on error.
func (v *testVM) newVCPU(id int, rip uint64) *VCPU {
	v.tb.Helper()
	c, err := v.setupVCPU(id, rip)
	if err != nil {
		v.tb.Fatal(err)
	}
	return c
}

// watchdog is how long run waits for an exit before kicking the vCPU and
// failing, so that a guest stuck in the kernel cannot hang the test binary.
const watchdog = 10 * time.Second

// run calls Run until it returns something other than EINTR (which a stray
// runtime SIGURG can cause) and returns the exit reason. If no exit comes
// within watchdog, it kicks the vCPU and returns an error.
//
// Preconditions: the calling goroutine has locked its OS thread (the
// watchdog's kick targets that thread).
func run(c *VCPU) (ExitReason, error) {
	var fired atomic.Bool
	tid := unix.Gettid()
	t := time.AfterFunc(watchdog, func() {
		fired.Store(true)
		kick(c, tid)
	})
	defer t.Stop()
	for {
		err := c.Run()
		if errors.Is(err, unix.EINTR) {
			if fired.Load() {
				c.SetImmediateExit(false)
				return 0, fmt.Errorf("vcpu %d: no exit within %v", c.ID(), watchdog)
			}
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("vcpu %d: KVM_RUN: %w", c.ID(), err)
		}
		return c.ExitReason(), nil
	}
}

// kick interrupts vCPU c running on thread tid: immediate_exit catches a
// KVM_RUN that has not entered the guest yet, and SIGURG one that has.
func kick(c *VCPU, tid int) error {
	c.SetImmediateExit(true)
	return unix.Tgkill(unix.Getpid(), tid, unix.SIGURG)
}

// describeExit formats the current exit for failure messages.
func describeExit(c *VCPU) string {
	r := c.ExitReason()
	regs, _ := c.Regs()
	switch r {
	case ExitIO:
		port, write, data := c.IO()
		return fmt.Sprintf("%v port %#x write %t data % x (rip %#x)", r, port, write, data, regs.RIP)
	case ExitMMIO:
		addr, write, data := c.MMIO()
		return fmt.Sprintf("%v addr %#x write %t data % x (rip %#x)", r, addr, write, data, regs.RIP)
	case ExitInternalError:
		return fmt.Sprintf("%v suberror %d data %#x (rip %#x)", r, c.InternalError(), c.InternalErrorData(), regs.RIP)
	case ExitFailEntry:
		return fmt.Sprintf("%v hardware reason %#x", r, c.FailEntry())
	}
	return fmt.Sprintf("%v (rip %#x)", r, regs.RIP)
}

// runPIO runs c and checks that it exits with port I/O on port in direction
// write with len(data) == size. It returns the exit's data slice: for an IN,
// the caller fills it before the next Run.
func runPIO(c *VCPU, port uint16, write bool, size int) ([]byte, error) {
	r, err := run(c)
	if err != nil {
		return nil, err
	}
	if r != ExitIO {
		return nil, fmt.Errorf("vcpu %d: exit %s, want %v", c.ID(), describeExit(c), ExitIO)
	}
	p, w, data := c.IO()
	if p != port || w != write || len(data) != size {
		return nil, fmt.Errorf("vcpu %d: exit %s, want port %#x write %t size %d", c.ID(), describeExit(c), port, write, size)
	}
	return data, nil
}

// runOut runs c and checks that it exits with an OUT of want to port.
func runOut(c *VCPU, port uint16, want ...byte) error {
	data, err := runPIO(c, port, true, len(want))
	if err != nil {
		return err
	}
	if !bytes.Equal(data, want) {
		return fmt.Errorf("vcpu %d: OUT to %#x wrote % x, want % x", c.ID(), port, data, want)
	}
	return nil
}

// runExit runs c and checks that it exits with reason want.
func runExit(c *VCPU, want ExitReason) error {
	r, err := run(c)
	if err != nil {
		return err
	}
	if r != want {
		return fmt.Errorf("vcpu %d: exit %s, want %v", c.ID(), describeExit(c), want)
	}
	return nil
}

// eventfd creates a non-blocking eventfd that the test closes at cleanup.
func eventfd(tb testing.TB) int {
	tb.Helper()
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		tb.Fatalf("eventfd: %v", err)
	}
	tb.Cleanup(func() { unix.Close(fd) })
	return fd
}

// eventfdCount reads (and resets) an eventfd's counter. It returns 0 if the
// counter is 0 (EAGAIN).
func eventfdCount(tb testing.TB, fd int) uint64 {
	tb.Helper()
	var b [8]byte
	n, err := unix.Read(fd, b[:])
	if errors.Is(err, unix.EAGAIN) {
		return 0
	}
	if err != nil || n != 8 {
		tb.Fatalf("read eventfd: n=%d err=%v", n, err)
	}
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}
