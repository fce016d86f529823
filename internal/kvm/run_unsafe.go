//go:build linux && amd64

package kvm

import (
	"sync/atomic"
	"unsafe"
)

// runDataOf returns the struct kvm_run view of a vCPU's mapping.
//
// Preconditions: len(m) >= minRunSize; m is the mmap of a vCPU fd at offset 0.
func runDataOf(m []byte) *runData {
	// SAFETY: m is a page-aligned mapping of at least minRunSize >
	// sizeof(runData) bytes, outside the Go heap, and lives until
	// VCPU.Close unmaps it. runData is pointer-free. The pointer is only
	// used through the VCPU that owns the mapping.
	return (*runData)(unsafe.Pointer(&m[0]))
}

// exitAs returns the kvm_run exit union of r viewed as a T (runIO, runMMIO, ...).
func exitAs[T any](r *runData) *T {
	var zero T
	if unsafe.Sizeof(zero) > unsafe.Sizeof(r.exit) {
		panic("kvm: exit view larger than the kvm_run exit union")
	}
	// SAFETY: the union is 256 bytes at offset 32 (8-byte aligned, inside the
	// vCPU mapping), and T fits in it (checked above). The union views are
	// pointer-free structs of integers, and every bit pattern is a valid
	// value.
	return (*T)(unsafe.Pointer(&r.exit))
}

// inWord returns the first 4 bytes of kvm_run (request_interrupt_window,
// immediate_exit, padding1[0:2]) as one word, so that immediate_exit can be
// stored atomically with a compare-and-swap. Go has no atomic 8-bit store.
func inWord(r *runData) *uint32 {
	// SAFETY: offset 0 of the page-aligned mapping is 4-byte aligned, and
	// the 4 bytes are all in runData. The kernel only reads these bytes.
	return (*uint32)(unsafe.Pointer(&r.requestInterruptWindow))
}

// storeImmediateExit sets kvm_run.immediate_exit to v, atomically with
// respect to other callers and to the vCPU thread, without touching the
// neighbouring request_interrupt_window byte.
func storeImmediateExit(r *runData, v uint8) {
	w := inWord(r)
	for {
		old := atomic.LoadUint32(w)
		// immediate_exit is byte 1 of the little-endian word.
		nw := old&^0xff00 | uint32(v)<<8
		if old == nw || atomic.CompareAndSwapUint32(w, old, nw) {
			return
		}
	}
}
