//go:build linux && amd64

package kvm

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctlPtr issues ioctl(fd, req, p) and returns the ioctl's result, retrying
// on EINTR. req must encode sizeof(*p) (it is one of the _KVM_* requests
// derived from T); a mismatch is a bug in this package and panics.
//
// It returns the bare unix.Errno on failure so that the callers, which wrap
// it with the ioctl name, decide about allocation.
func ioctlPtr[T any](fd int, req uintptr, p *T) (uintptr, error) {
	if iocSize(req) != unsafe.Sizeof(*p) {
		panic("kvm: ioctl argument size does not match the request number")
	}
	for {
		// SAFETY: p points to a live T of exactly the size encoded in req, so
		// the kernel reads or writes only within *p. The conversion sits in
		// the call expression, so *p stays alive and unmoved during the call.
		r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(p)))
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return r, e
		}
		return r, nil
	}
}

// ioctlFlex issues ioctl(fd, req, &buf[0]) for a request whose argument is a
// header struct followed by a flexible array (kvm_cpuid2, kvm_msrs), retrying
// on EINTR. req encodes only the header's size. The kernel sizes the array
// from the count in the header, which the caller set to fit in buf.
func ioctlFlex(fd int, req uintptr, buf []uint64) (uintptr, error) {
	if len(buf) == 0 || iocSize(req) > uintptr(len(buf))*8 {
		panic("kvm: ioctl buffer smaller than its header")
	}
	for {
		// SAFETY: buf is a live Go slice of at least the header size; the
		// header's count field (set by the caller from len(buf)) bounds
		// what the kernel accesses. The conversion sits in the call
		// expression, so buf's array stays alive and unmoved during the call.
		r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(&buf[0])))
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return r, e
		}
		return r, nil
	}
}

// cpuid2Buf allocates a zeroed kvm_cpuid2 with room for n entries. It returns
// the backing buffer (8-byte aligned, for ioctlFlex) and typed views of its
// header and entries.
func cpuid2Buf(n int) ([]uint64, *cpuid2Header, []CPUIDEntry) {
	const hdr = unsafe.Sizeof(cpuid2Header{})
	const ent = unsafe.Sizeof(CPUIDEntry{})
	buf := make([]uint64, (hdr+uintptr(n)*ent+7)/8)
	// SAFETY: buf is pointer-free Go memory of at least hdr bytes, 8-byte
	// aligned, and cpuid2Header (two uint32s) needs 4-byte alignment.
	h := (*cpuid2Header)(unsafe.Pointer(&buf[0]))
	// SAFETY: hdr is 8, so &buf[1] is the first byte after the header, and
	// buf holds n entries after it (sized above). CPUIDEntry is
	// pointer-free with 4-byte alignment. The view does not outlive buf's
	// array, which it keeps alive.
	e := unsafe.Slice((*CPUIDEntry)(unsafe.Pointer(&buf[hdr/8])), n)
	return buf, h, e
}

// msrsBuf allocates a zeroed kvm_msrs with room for n entries, like cpuid2Buf.
func msrsBuf(n int) ([]uint64, *msrsHeader, []MSREntry) {
	const hdr = unsafe.Sizeof(msrsHeader{})
	const ent = unsafe.Sizeof(MSREntry{})
	buf := make([]uint64, (hdr+uintptr(n)*ent+7)/8)
	// SAFETY: as in cpuid2Buf: pointer-free, 8-byte aligned, at least hdr bytes.
	h := (*msrsHeader)(unsafe.Pointer(&buf[0]))
	// SAFETY: hdr is 8; buf holds n 16-byte MSREntry values after the header.
	// MSREntry is pointer-free and needs 8-byte alignment, which &buf[1] has.
	e := unsafe.Slice((*MSREntry)(unsafe.Pointer(&buf[hdr/8])), n)
	return buf, h, e
}
