//go:build linux && amd64

package kvm

import "unsafe"

// hostAddr returns the host virtual address of b's first byte, for
// UserspaceMemoryRegion.UserspaceAddr.
//
// Preconditions: b is a non-empty mmap'd region (outside the Go heap, never
// moved) that stays mapped while KVM uses the address.
func hostAddr(b []byte) uint64 {
	// SAFETY: only the integer value is used; b is mmap'd memory that does not
	// move, and the caller keeps it mapped while the memory slot exists.
	return uint64(uintptr(unsafe.Pointer(&b[0])))
}
