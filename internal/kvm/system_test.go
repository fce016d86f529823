//go:build linux && amd64

package kvm

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

func TestSystem(t *testing.T) {
	s := requireKVM(t)
	n, err := s.VCPUMmapSize()
	if err != nil {
		t.Fatal(err)
	}
	if n < minRunSize || n%4096 != 0 {
		t.Errorf("VCPUMmapSize() = %d, want a page multiple >= %d", n, minRunSize)
	}
	for _, c := range []Cap{CapUserMemory, CapIRQChip, CapIRQFD, CapIOEventFD, CapImmediateExit, CapPIT2, CapSetTSSAddr, CapSetIdentityMapAddr} {
		if v, err := s.CheckExtension(c); err != nil || v == 0 {
			t.Errorf("CheckExtension(%v) = %d, %v; husk needs it", c, v, err)
		}
	}
	if v, err := s.CheckExtension(CapMaxVCPUs); err != nil || v < 1 {
		t.Errorf("CheckExtension(%v) = %d, %v", CapMaxVCPUs, v, err)
	}
	if v, err := s.CheckExtension(Cap(1 << 20)); err != nil || v != 0 {
		t.Errorf("CheckExtension(unknown) = %d, %v, want 0, nil", v, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := s.CreateVM(); !errors.Is(err, unix.EBADF) {
		t.Errorf("CreateVM after Close: %v, want EBADF", err)
	}
}

// TestVMOutlivesSystem checks that a VM and its vCPUs work after /dev/kvm is
// closed, as a jailed VMM may do.
func TestVMOutlivesSystem(t *testing.T) {
	s := requireKVM(t)
	vm, err := s.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	s.Close()
	c, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	if c.ID() != 0 {
		t.Errorf("ID() = %d", c.ID())
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := vm.CreateVCPU(-1); !errors.Is(err, unix.EINVAL) {
		t.Errorf("CreateVCPU(-1): %v, want EINVAL", err)
	}
}
