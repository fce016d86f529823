package blk

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

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

// vectorIO is implemented by backends that move all of a request's buffers
// with one system call (preadv, pwritev) instead of one per buffer. A guest
// read into scattered pages arrives as up to SegMax buffers of 4 KiB: inside
// the nested test host, 256 preads of 4 KiB moved 80 MB/s, one preadv of
// the same 256 pages 120 MB/s (docs/BENCHMARKS.md).
type vectorIO interface {
	// ReadVecAt fills bufs, in order, from off.
	ReadVecAt(bufs [][]byte, off int64) (int, error)
	// WriteVecAt writes bufs, in order, at off.
	WriteVecAt(bufs [][]byte, off int64) (int, error)
}

// Raw is a raw disk image file (or block device) used directly. Reads copy
// from a shared mapping of the image where it can be mapped, else use
// preadv (backend_map.go); writes use pwritev.
type Raw struct {
	f        *os.File
	fd       int // f's descriptor: the device closes f only after its worker stopped
	size     int64
	readOnly bool
	zeros    []byte // for zeroing where hole punching is unsupported

	idle *time.Timer // drops the mapped pages mapIdle after the last read

	// mapMu serialises reads from m with dropping its pages (the idle
	// timer) and with unmapping it (Close).
	mapMu              sync.Mutex
	m                  []byte // the whole image, mapped shared and read-only; nil: reads use preadv
	mappedLo, mappedHi int64  // span of m holding every page populated since the last drop
	mappedBytes        int64  // bytes populated since the last drop
	noPopulate         bool   // MADV_POPULATE_READ is unsupported (Linux < 5.14)
}

var (
	_ Backend  = (*Raw)(nil)
	_ vectorIO = (*Raw)(nil)
)

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
	r := &Raw{f: f, fd: int(f.Fd()), size: size, readOnly: readOnly}
	// An image that cannot be mapped is read with preadv: the same bytes,
	// more slowly for large requests (backend_map.go).
	r.mapImage()
	return r, nil
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

// iovMax is IOV_MAX, the most buffers one preadv or pwritev takes.
const iovMax = 1024

// iovecs is the scratch array of one vec call, pooled so that calls need
// no allocation in the steady state and Raw no lock.
type iovecs struct{ v []unix.Iovec }

var iovecPool = sync.Pool{New: func() any { return new(iovecs) }}

// ReadVecAt fills bufs, in order, from off: from the image's mapping, or
// with preadv(2) where it has none.
func (r *Raw) ReadVecAt(bufs [][]byte, off int64) (int, error) {
	if r.m != nil {
		return r.readMapped(bufs, off)
	}
	return r.vec(false, bufs, off)
}

// WriteVecAt writes bufs, in order, at off with pwritev(2).
func (r *Raw) WriteVecAt(bufs [][]byte, off int64) (int, error) {
	if r.readOnly {
		return 0, errors.New("write to a read-only disk image")
	}
	return r.vec(true, bufs, off)
}

// vec moves bufs at off, up to iovMax buffers per system call. A call that
// moves less than asked (a signal, or a file that shrank under us) stops
// inside a buffer: that one is finished with pread or pwrite, which loop
// until done or an error, and vec goes on with the rest.
func (r *Raw) vec(write bool, bufs [][]byte, off int64) (int, error) {
	total := 0
	for _, b := range bufs {
		total += len(b)
	}
	if err := r.check(off, int64(total)); err != nil {
		return 0, err
	}
	nr, op, short := uintptr(unix.SYS_PREADV), "preadv", io.ErrUnexpectedEOF
	if write {
		nr, op, short = unix.SYS_PWRITEV, "pwritev", io.ErrShortWrite
	}
	iov := iovecPool.Get().(*iovecs)
	defer func() {
		clear(iov.v) // hold no pointers into guest memory, which may be unmapped
		iovecPool.Put(iov)
	}()
	done := 0
	for done < total {
		for len(bufs[0]) == 0 { // done < total: a non-empty buffer follows
			bufs = bufs[1:]
		}
		iov.v = iov.v[:0]
		for _, b := range bufs[:min(len(bufs), iovMax)] {
			if len(b) > 0 {
				iov.v = append(iov.v, unix.Iovec{Base: &b[0], Len: uint64(len(b))})
			}
		}
		n, errno := rwv(nr, r.fd, iov.v, off+int64(done))
		for errno == unix.EINTR {
			n, errno = rwv(nr, r.fd, iov.v, off+int64(done))
		}
		switch {
		case errno != 0:
			return done, fmt.Errorf("%s %s at %d: %w", op, r.f.Name(), off+int64(done), errno)
		case n == 0: // the file ended early
			return done, short
		}
		done += n
		for len(bufs) > 0 && n >= len(bufs[0]) {
			n -= len(bufs[0])
			bufs = bufs[1:]
		}
		if n > 0 {
			rest, at := bufs[0][n:], off+int64(done)
			var k int
			var err error
			if write {
				k, err = r.f.WriteAt(rest, at)
			} else {
				k, err = r.f.ReadAt(rest, at)
			}
			done += k
			if err != nil {
				return done, err
			}
			bufs = bufs[1:]
		}
	}
	return done, nil
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

// Close unmaps and closes the image.
func (r *Raw) Close() error { return errors.Join(r.unmapImage(), r.f.Close()) }
