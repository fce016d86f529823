package kvmtest

import "unsafe"

// hostAddr returns the address of b's first byte.
func hostAddr(b []byte) uintptr {
	// SAFETY: b is an mmap'd region the Go runtime never moves; the address
	// goes to KVM only while b stays mapped.
	return uintptr(unsafe.Pointer(unsafe.SliceData(b)))
}
