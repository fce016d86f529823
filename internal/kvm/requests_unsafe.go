//go:build linux && amd64

package kvm

import "unsafe"

// Ioctl request numbers, in kernel spelling. Each sized request is derived from
// the Go mirror of its argument type, so a wrong mirror changes the number
// and fails TestRequestNumbers, which compares every entry with the value
// the kernel headers produce. ioctlPtr also checks at run time that the
// argument passed matches the encoded size.
//
// SAFETY (whole block): unsafe.Sizeof is a compile-time constant and touches
// no memory.
var (
	// System ioctls (/dev/kvm).
	_KVM_GET_API_VERSION     = io(0x00)
	_KVM_CREATE_VM           = io(0x01)
	_KVM_CHECK_EXTENSION     = io(0x03)
	_KVM_GET_VCPU_MMAP_SIZE  = io(0x04)
	_KVM_GET_SUPPORTED_CPUID = iowr(0x05, unsafe.Sizeof(cpuid2Header{}))

	// VM ioctls.
	_KVM_CREATE_VCPU            = io(0x41)
	_KVM_SET_USER_MEMORY_REGION = iow(0x46, unsafe.Sizeof(UserspaceMemoryRegion{}))
	_KVM_SET_TSS_ADDR           = io(0x47)
	_KVM_SET_IDENTITY_MAP_ADDR  = iow(0x48, unsafe.Sizeof(uint64(0)))
	_KVM_CREATE_IRQCHIP         = io(0x60)
	_KVM_IRQ_LINE               = iow(0x61, unsafe.Sizeof(irqLevel{}))
	_KVM_IRQFD                  = iow(0x76, unsafe.Sizeof(irqfd{}))
	_KVM_CREATE_PIT2            = iow(0x77, unsafe.Sizeof(pitConfig{}))
	_KVM_IOEVENTFD              = iow(0x79, unsafe.Sizeof(ioeventfd{}))

	// vCPU ioctls.
	_KVM_RUN          = io(0x80)
	_KVM_GET_REGS     = ior(0x81, unsafe.Sizeof(Regs{}))
	_KVM_SET_REGS     = iow(0x82, unsafe.Sizeof(Regs{}))
	_KVM_GET_SREGS    = ior(0x83, unsafe.Sizeof(Sregs{}))
	_KVM_SET_SREGS    = iow(0x84, unsafe.Sizeof(Sregs{}))
	_KVM_GET_MSRS     = iowr(0x88, unsafe.Sizeof(msrsHeader{}))
	_KVM_SET_MSRS     = iow(0x89, unsafe.Sizeof(msrsHeader{}))
	_KVM_GET_FPU      = ior(0x8c, unsafe.Sizeof(FPU{}))
	_KVM_SET_FPU      = iow(0x8d, unsafe.Sizeof(FPU{}))
	_KVM_GET_LAPIC    = ior(0x8e, unsafe.Sizeof(LAPICState{}))
	_KVM_SET_LAPIC    = iow(0x8f, unsafe.Sizeof(LAPICState{}))
	_KVM_SET_CPUID2   = iow(0x90, unsafe.Sizeof(cpuid2Header{}))
	_KVM_GET_MP_STATE = ior(0x98, unsafe.Sizeof(mpState{}))
	_KVM_SET_MP_STATE = iow(0x99, unsafe.Sizeof(mpState{}))
	_KVM_SET_TSC_KHZ  = io(0xa2)
	_KVM_GET_TSC_KHZ  = io(0xa3)
)
