package blk

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// rwv makes one preadv(2) or pwritev(2) call (nr) with iov at off and
// returns the bytes moved. On amd64 the 64-bit offset is pos_l; pos_h is 0.
func rwv(nr uintptr, fd int, iov []unix.Iovec, off int64) (int, unix.Errno) {
	// SAFETY: iov is a live slice whose entries point into buffers the
	// caller holds for the duration of the call (guest memory, which is
	// mmap'd and never moved, or escaped Go memory); the kernel reads iov and
	// touches only the bytes it describes, only during the call.
	n, _, e := unix.Syscall6(nr, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(iov))), uintptr(len(iov)), uintptr(off), 0, 0)
	return int(n), e
}

// mapShared maps length bytes of fd at off (page-aligned) shared and
// read-only.
func mapShared(fd int, off int64, length int) ([]byte, error) {
	p, err := unix.MmapPtr(fd, off, nil, uintptr(length), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, err
	}
	// SAFETY: the kernel mapped length bytes at p; they stay mapped, and the
	// Go runtime never moves or frees them, until unmap is called with the
	// slice, after its last use.
	return unsafe.Slice((*byte)(p), length), nil
}

// unmap unmaps a mapping from mapShared.
func unmap(b []byte) error {
	// SAFETY: b is exactly a mapping made by mapShared; the caller drops
	// every reference to it.
	return unix.MunmapPtr(unsafe.Pointer(unsafe.SliceData(b)), uintptr(len(b)))
}
