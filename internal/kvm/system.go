//go:build linux && amd64

package kvm

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// DevicePath is the KVM device node that Open opens.
const DevicePath = "/dev/kvm"

// ErrAPIVersion reports that /dev/kvm speaks a KVM API version other than 12.
var ErrAPIVersion = errors.New("unsupported KVM API version")

// maxCPUIDEntries caps the kvm_cpuid2 buffers this package builds. The kernel's
// own limit (KVM_MAX_CPUID_ENTRIES) is 256.
const maxCPUIDEntries = 1024

// System is an open /dev/kvm: the handle for system-wide queries and for
// creating VMs. Its methods may be called from any goroutine.
type System struct {
	fd int
	// vcpuMmapSize is KVM_GET_VCPU_MMAP_SIZE, read once by Open. It is the
	// same for every VM and vCPU of this kernel.
	vcpuMmapSize int
}

// Open opens /dev/kvm (O_RDWR|O_CLOEXEC), checks that KVM_GET_API_VERSION is
// 12 and reads the vCPU mmap size.
func Open() (*System, error) {
	fd, err := unix.Open(DevicePath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", DevicePath, err)
	}
	s := &System{fd: fd}
	if err := s.init(); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return s, nil
}

func (s *System) init() error {
	v, err := ioctlInt(s.fd, _KVM_GET_API_VERSION, 0)
	if err != nil {
		return fmt.Errorf("KVM_GET_API_VERSION: %w", err)
	}
	if v != _KVM_API_VERSION {
		return fmt.Errorf("KVM_GET_API_VERSION: got %d, want %d: %w", v, _KVM_API_VERSION, ErrAPIVersion)
	}
	n, err := ioctlInt(s.fd, _KVM_GET_VCPU_MMAP_SIZE, 0)
	if err != nil {
		return fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	if n < minRunSize {
		return fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE: %d bytes, want at least %d", n, minRunSize)
	}
	s.vcpuMmapSize = int(n)
	return nil
}

// Close closes /dev/kvm. VMs created from s stay usable. Closing twice
// returns nil.
func (s *System) Close() error { return closeFd(&s.fd) }

// CheckExtension returns KVM_CHECK_EXTENSION for c: 0 if c is unsupported,
// otherwise 1 or a capability-specific value (CapNrVCPUs, CapMaxVCPUs, ...).
func (s *System) CheckExtension(c Cap) (int, error) {
	r, err := ioctlInt(s.fd, _KVM_CHECK_EXTENSION, uintptr(c))
	if err != nil {
		return 0, fmt.Errorf("KVM_CHECK_EXTENSION %v: %w", c, err)
	}
	return int(r), nil
}

// VCPUMmapSize returns the size of the shared kvm_run mapping of each vCPU
// (KVM_GET_VCPU_MMAP_SIZE), as read by Open.
func (s *System) VCPUMmapSize() (int, error) {
	if s.fd < 0 {
		return 0, fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE: %w", unix.EBADF)
	}
	return s.vcpuMmapSize, nil
}

// SupportedCPUID returns the CPUID leaves that KVM can expose to a guest on
// this host (KVM_GET_SUPPORTED_CPUID). It grows its buffer while the kernel
// answers E2BIG, up to 1024 entries.
func (s *System) SupportedCPUID() ([]CPUIDEntry, error) {
	for n := 64; ; n *= 2 {
		buf, hdr, ents := cpuid2Buf(n)
		hdr.nent = uint32(n)
		_, err := ioctlFlex(s.fd, _KVM_GET_SUPPORTED_CPUID, buf)
		if err == unix.E2BIG && n < maxCPUIDEntries {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID nent %d: %w", n, err)
		}
		got := int(hdr.nent)
		if got > n {
			return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: kernel reported %d entries in a buffer of %d", got, n)
		}
		return append([]CPUIDEntry(nil), ents[:got]...), nil
	}
}

// CreateVM creates a VM of the default type (KVM_CREATE_VM, type 0).
func (s *System) CreateVM() (*VM, error) {
	fd, err := ioctlInt(s.fd, _KVM_CREATE_VM, 0)
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	return &VM{fd: int(fd), vcpuMmapSize: s.vcpuMmapSize}, nil
}
