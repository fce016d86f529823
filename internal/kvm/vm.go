//go:build linux && amd64

package kvm

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// VM is a KVM virtual machine (the fd returned by KVM_CREATE_VM). Its methods
// may be called from any goroutine.
type VM struct {
	fd int
	// vcpuMmapSize is System.vcpuMmapSize, copied so that a VM does not need
	// its System to stay open.
	vcpuMmapSize int
}

// Close closes the VM fd. The kernel frees the VM once its vCPU fds and
// mappings are closed too. Closing twice returns nil.
func (vm *VM) Close() error { return closeFd(&vm.fd) }

// Fd returns the VM file descriptor, e.g. for a seccomp rule or a snapshot.
// It stays owned by vm.
func (vm *VM) Fd() int { return vm.fd }

// SetTSSAddr places the three-page task state segment that Intel VMX needs to
// emulate real mode (KVM_SET_TSS_ADDR). addr must be a guest-physical address
// not used by RAM or devices, e.g. 0xfffbd000. The address is passed as the
// ioctl argument itself, not through a pointer.
//
// Preconditions: no vCPU has been created yet.
func (vm *VM) SetTSSAddr(addr uint32) error {
	if _, err := ioctlInt(vm.fd, _KVM_SET_TSS_ADDR, uintptr(addr)); err != nil {
		return fmt.Errorf("KVM_SET_TSS_ADDR %#x: %w", addr, err)
	}
	return nil
}

// SetIdentityMapAddr places the one-page identity-map page table that Intel
// VMX uses for real mode without unrestricted guest
// (KVM_SET_IDENTITY_MAP_ADDR), e.g. at 0xfffbc000, just below the TSS.
// The kernel reads a __u64 through a pointer.
//
// Preconditions: no vCPU has been created yet.
func (vm *VM) SetIdentityMapAddr(addr uint64) error {
	if _, err := ioctlPtr(vm.fd, _KVM_SET_IDENTITY_MAP_ADDR, &addr); err != nil {
		return fmt.Errorf("KVM_SET_IDENTITY_MAP_ADDR %#x: %w", addr, err)
	}
	return nil
}

// CreateIRQChip creates the in-kernel interrupt controllers: two 8259 PICs,
// an IOAPIC and a local APIC per vCPU (KVM_CREATE_IRQCHIP). GSIs 0-15 go to
// the PICs and the IOAPIC, GSIs 16-23 to the IOAPIC. With an in-kernel
// irqchip, HLT is handled in the kernel and no longer exits.
//
// Preconditions: no vCPU has been created yet.
func (vm *VM) CreateIRQChip() error {
	if _, err := ioctlInt(vm.fd, _KVM_CREATE_IRQCHIP, 0); err != nil {
		return fmt.Errorf("KVM_CREATE_IRQCHIP: %w", err)
	}
	return nil
}

// CreatePIT2 creates the in-kernel 8254 PIT (KVM_CREATE_PIT2). flags may
// include PITSpeakerDummy.
//
// Preconditions: CreateIRQChip has succeeded.
func (vm *VM) CreatePIT2(flags uint32) error {
	cfg := pitConfig{flags: flags}
	if _, err := ioctlPtr(vm.fd, _KVM_CREATE_PIT2, &cfg); err != nil {
		return fmt.Errorf("KVM_CREATE_PIT2 flags %#x: %w", flags, err)
	}
	return nil
}

// SetUserMemoryRegion adds, moves, resizes or (with MemorySize 0) deletes
// a guest memory slot backed by host memory at r.UserspaceAddr
// (KVM_SET_USER_MEMORY_REGION). This is a VM operation, not a vCPU one.
//
// Preconditions: the host range stays mapped for as long as the slot exists.
func (vm *VM) SetUserMemoryRegion(r *UserspaceMemoryRegion) error {
	if _, err := ioctlPtr(vm.fd, _KVM_SET_USER_MEMORY_REGION, r); err != nil {
		return fmt.Errorf("KVM_SET_USER_MEMORY_REGION slot %d gpa %#x size %#x: %w",
			r.Slot, r.GuestPhysAddr, r.MemorySize, err)
	}
	return nil
}

// IRQLine sets the level of the in-kernel irqchip input irq (a GSI)
// (KVM_IRQ_LINE). For an edge-triggered line, raise it and lower it again.
//
// Preconditions: CreateIRQChip has succeeded.
func (vm *VM) IRQLine(irq uint32, level bool) error {
	l := irqLevel{irq: irq}
	if level {
		l.level = 1
	}
	if _, err := ioctlPtr(vm.fd, _KVM_IRQ_LINE, &l); err != nil {
		return fmt.Errorf("KVM_IRQ_LINE irq %d level %t: %w", irq, level, err)
	}
	return nil
}

// IRQFD makes every write to eventfd inject an edge on gsi (KVM_IRQFD),
// without a trip through userspace.
//
// Preconditions: CreateIRQChip has succeeded.
func (vm *VM) IRQFD(eventfd int, gsi uint32) error {
	return vm.irqfd(eventfd, gsi, 0)
}

// IRQFDDeassign undoes IRQFD(eventfd, gsi).
func (vm *VM) IRQFDDeassign(eventfd int, gsi uint32) error {
	return vm.irqfd(eventfd, gsi, _KVM_IRQFD_FLAG_DEASSIGN)
}

func (vm *VM) irqfd(eventfd int, gsi uint32, flags uint32) error {
	if eventfd < 0 {
		return fmt.Errorf("KVM_IRQFD fd %d gsi %d: %w", eventfd, gsi, unix.EBADF)
	}
	a := irqfd{fd: uint32(eventfd), gsi: gsi, flags: flags}
	if _, err := ioctlPtr(vm.fd, _KVM_IRQFD, &a); err != nil {
		return fmt.Errorf("KVM_IRQFD fd %d gsi %d flags %#x: %w", eventfd, gsi, flags, err)
	}
	return nil
}

// IOEventFD makes guest writes of length bytes to addr signal eventfd in the
// kernel instead of exiting to userspace (KVM_IOEVENTFD, no datamatch). addr
// is a port number if pio is true, else a guest-physical MMIO address that
// no memory slot covers. length is 1, 2, 4 or 8, or 0 to match any length
// (CapIOEventFDAnyLength).
func (vm *VM) IOEventFD(eventfd int, addr uint64, length uint32, pio bool) error {
	return vm.ioeventfd(eventfd, addr, length, pio, 0)
}

// IOEventFDDeassign undoes IOEventFD with the same arguments.
func (vm *VM) IOEventFDDeassign(eventfd int, addr uint64, length uint32, pio bool) error {
	return vm.ioeventfd(eventfd, addr, length, pio, _KVM_IOEVENTFD_FLAG_DEASSIGN)
}

func (vm *VM) ioeventfd(eventfd int, addr uint64, length uint32, pio bool, flags uint32) error {
	if pio {
		flags |= _KVM_IOEVENTFD_FLAG_PIO
	}
	a := ioeventfd{addr: addr, len: length, fd: int32(eventfd), flags: flags}
	if _, err := ioctlPtr(vm.fd, _KVM_IOEVENTFD, &a); err != nil {
		return fmt.Errorf("KVM_IOEVENTFD fd %d addr %#x len %d flags %#x: %w", eventfd, addr, length, flags, err)
	}
	return nil
}

// CreateVCPU creates vCPU id (KVM_CREATE_VCPU; id is also its initial APIC
// ID) and maps its shared kvm_run structure.
//
// Call it on the goroutine that will run the vCPU, after
// runtime.LockOSThread (see the package documentation).
func (vm *VM) CreateVCPU(id int) (*VCPU, error) {
	if id < 0 {
		return nil, fmt.Errorf("KVM_CREATE_VCPU %d: %w", id, unix.EINVAL)
	}
	fd, err := ioctlInt(vm.fd, _KVM_CREATE_VCPU, uintptr(id))
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VCPU %d: %w", id, err)
	}
	m, err := unix.Mmap(int(fd), 0, vm.vcpuMmapSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(int(fd))
		return nil, fmt.Errorf("mmap kvm_run of vcpu %d (%d bytes): %w", id, vm.vcpuMmapSize, err)
	}
	return &VCPU{fd: int(fd), id: id, run: m, runData: runDataOf(m)}, nil
}
