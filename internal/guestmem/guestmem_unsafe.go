package guestmem

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sliceAddr returns the address of b's first byte.
func sliceAddr(b []byte) uintptr {
	// SAFETY: b is a live mmap'd region that is never moved by the Go runtime;
	// the address is only handed to the kernel.
	return uintptr(unsafe.Pointer(unsafe.SliceData(b)))
}

// mapFixed replaces the pages backing dst (page-aligned and a whole number of
// pages, inside one of our mappings) with a private mapping of f at off.
func mapFixed(dst []byte, f *os.File, off int64) error {
	// SAFETY: dst lies inside a mapping this package owns, so MAP_FIXED
	// replaces only our own pages; the new mapping has the same protection and
	// is unmapped with its region in Close.
	_, _, e := unix.Syscall6(unix.SYS_MMAP, uintptr(unsafe.Pointer(unsafe.SliceData(dst))), uintptr(len(dst)),
		unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_FIXED, f.Fd(), uintptr(off))
	if e != 0 {
		return e
	}
	return nil
}
