package blk

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Backend stores a disk's bytes. Offsets are bytes; the device checks every
// request against Size before calling, and backends check again.
//
// Methods are called from the device's worker goroutine; Flush and Close may
// also be called from the VMM's goroutine.
type Backend interface {
	io.ReaderAt
	io.WriterAt
	// Size returns the disk size in bytes.
	Size() int64
	// Flush makes every completed write durable.
	Flush() error
	// Discard deallocates [off, off+n); the range reads as zeros after.
	Discard(off, n int64) error
	// WriteZeroes makes [off, off+n) read as zeros; unmap allows
	// deallocating it.
	WriteZeroes(off, n int64, unmap bool) error
	// Close releases the backend; an Overlay flushes first.
	Close() error
}

// Raw is a raw disk image file (or block device) used directly.
type Raw struct {
	f        *os.File
	size     int64
	readOnly bool
	zeros    []byte // for zeroing where hole punching is unsupported
}

var _ Backend = (*Raw)(nil)

// OpenRaw opens a raw image. A read-only image is opened O_RDONLY, so no
// guest request can write it.
func OpenRaw(path string, readOnly bool) (*Raw, error) {
	flags := os.O_RDWR
	if readOnly {
		flags = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flags, 0)
	if err != nil {
		return nil, fmt.Errorf("open disk image: %w", err)
	}
	size, err := f.Seek(0, io.SeekEnd) // works for block devices too
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("size of disk image %s: %w", path, err)
	}
	return &Raw{f: f, size: size, readOnly: readOnly}, nil
}

// Size returns the image size.
func (r *Raw) Size() int64 { return r.size }

func (r *Raw) check(off, n int64) error {
	if off < 0 || n < 0 || off > r.size || n > r.size-off {
		return fmt.Errorf("disk access %d+%d outside %d bytes", off, n, r.size)
	}
	return nil
}

// ReadAt reads from the image.
func (r *Raw) ReadAt(p []byte, off int64) (int, error) {
	if err := r.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	return r.f.ReadAt(p, off)
}

// WriteAt writes to the image.
func (r *Raw) WriteAt(p []byte, off int64) (int, error) {
	if r.readOnly {
		return 0, errors.New("write to a read-only disk image")
	}
	if err := r.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	return r.f.WriteAt(p, off)
}

// Flush runs fdatasync.
func (r *Raw) Flush() error {
	if r.readOnly {
		return nil
	}
	if err := unix.Fdatasync(int(r.f.Fd())); err != nil {
		return fmt.Errorf("fdatasync %s: %w", r.f.Name(), err)
	}
	return nil
}

// Discard punches a hole, or writes zeros where the file system cannot.
func (r *Raw) Discard(off, n int64) error { return r.WriteZeroes(off, n, true) }

// WriteZeroes zeroes the range: with unmap by punching a hole, else with
// FALLOC_FL_ZERO_RANGE, and by writing zeros if neither is supported.
func (r *Raw) WriteZeroes(off, n int64, unmap bool) error {
	if r.readOnly {
		return errors.New("zero a read-only disk image")
	}
	if err := r.check(off, n); err != nil || n == 0 {
		return err
	}
	mode := uint32(unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE)
	if unmap {
		mode = unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE
	}
	if err := unix.Fallocate(int(r.f.Fd()), mode, off, n); err == nil {
		return nil
	}
	return writeZeros(r.f, &r.zeros, off, n)
}

// writeZeros writes n zero bytes at off, 64 KiB at a time.
func writeZeros(w io.WriterAt, zeros *[]byte, off, n int64) error {
	if *zeros == nil {
		*zeros = make([]byte, 64<<10)
	}
	for n > 0 {
		k := min(n, int64(len(*zeros)))
		if _, err := w.WriteAt((*zeros)[:k], off); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}

// Close closes the image.
func (r *Raw) Close() error { return r.f.Close() }
