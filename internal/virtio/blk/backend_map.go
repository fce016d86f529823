package blk

import (
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// Reading a raw image through a shared read-only mapping.
//
// Raw reads copy from a MAP_SHARED, PROT_READ mapping of the whole image
// with Go's copy instead of preadv. Both copy the same page-cache pages into
// guest memory; what differs is who copies. The kernel's copy_to_user is
// `rep movsb`, which the nested test host (QEMU TCG) emulates a byte per
// iteration, while Go's copy uses vector moves: in the test host a 1 MiB
// request (BenchmarkBlkRead1M) took 4.4-9.1 ms with preadv and 2.6-4.8 ms
// this way, and the guest of bench/devices.sh read 1.2-1.8 times as fast as
// under QEMU instead of 0.75-1.1 times. On hardware this path is faster too
// for large requests (1 MiB: 70-93 µs against 144-199 µs) and even for
// 4 KiB (1.2-1.4 µs); see docs/BENCHMARKS.md, "Devices".
//
// Coherence: a MAP_SHARED mapping of a file maps its page-cache pages, the
// ones pwrite, fallocate and truncate act on, so reads see every completed
// write, hole punch and zeroing of the same image.
//
// Memory: mapped image pages count in husk-vmm's RSS (RssFile, or RssShmem
// on tmpfs), though they are page cache and cost no memory of their own.
// So that RSS does not grow with the bytes read, each window of a read is
// populated with MADV_POPULATE_READ (one system call instead of a page fault
// per 64 KiB of fault-around), copied, and its span noted; once mapBudget
// bytes were populated, or mapIdle after the last read, the noted span's
// page table entries are dropped with MADV_DONTNEED, which on a shared
// mapping only unmaps (the pages stay in the page cache). Dropping costs a
// TLB flush on every CPU running husk-vmm's threads, which under TCG took
// about as long as copying 1 MiB: dropping every 8 MiB instead of after
// every 1 MiB request made sequential reads 1.5-1.8 times as fast in the
// test host. So image pages hold at most mapBudget + mapWindow bytes of
// RSS per disk while the guest reads, and none once it stops. The idle
// drop runs on the timer's goroutine; mapMu keeps it off a copy in
// progress and off Close.
//
// Faults: a page the mapping cannot supply (the file was truncated by
// someone else, or the disk under the page cache failed) raises SIGBUS on
// access. The copy runs with debug.SetPanicOnFault, so the fault becomes a
// panic of the copying goroutine, recovered into an error: the request
// fails with VIRTIO_BLK_S_IOERR and the VMM goes on. MADV_POPULATE_READ
// reports the same pages as EFAULT before the copy.
//
// Where the image cannot be mapped (mmap fails: a file system or device
// without mmap, an empty image, an image larger than maxMapBytes) reads use
// preadv, as writes always do.

const (
	// hostPage is the host's page size on amd64, the unit of mmap offsets
	// and madvise ranges.
	hostPage = 4 << 10
	// mapWindow bounds the bytes of a read populated and copied at once.
	mapWindow = ioChunk
	// mapBudget bounds the bytes populated before the mapping is dropped.
	mapBudget = 8 << 20
	// mapIdle is how long after the last read the mapping is dropped.
	mapIdle = 50 * time.Millisecond
	// maxMapBytes is the largest image mapped: 1 TiB of the 128 TiB of
	// amd64 user address space. Larger images use preadv, and a 32-bit
	// build, whose address space cannot hold a disk image, never maps.
	maxMapBytes = 1 << 40
)

// mapImage maps the whole image for reading, or reports why it cannot (the
// caller then reads with preadv).
func (r *Raw) mapImage() error {
	if strconv.IntSize < 64 || r.size <= 0 || r.size > maxMapBytes {
		return fmt.Errorf("image of %d bytes not mapped", r.size)
	}
	b, err := mapShared(r.fd, 0, int(r.size))
	if err != nil {
		return fmt.Errorf("mmap %s: %w", r.f.Name(), err)
	}
	r.m = b
	r.idle = time.AfterFunc(time.Hour, r.dropIdle)
	r.idle.Stop()
	return nil
}

// unmapImage releases the mapping; reads then use preadv. Close calls it
// after the last read.
func (r *Raw) unmapImage() error {
	if r.idle != nil {
		r.idle.Stop()
	}
	r.mapMu.Lock()
	defer r.mapMu.Unlock()
	if r.m == nil {
		return nil
	}
	err := unmap(r.m)
	r.m, r.mappedBytes = nil, 0
	if err != nil {
		return fmt.Errorf("munmap %s: %w", r.f.Name(), err)
	}
	return nil
}

// bufCursor is a position in a request's buffers.
type bufCursor struct {
	bufs [][]byte
	off  int // into bufs[0]
}

// readMapped fills bufs, in order, from off, a window at a time.
func (r *Raw) readMapped(bufs [][]byte, off int64) (int, error) {
	total := 0
	for _, b := range bufs {
		total += len(b)
	}
	if err := r.check(off, int64(total)); err != nil {
		return 0, err
	}
	r.mapMu.Lock()
	defer r.mapMu.Unlock()
	if r.m == nil {
		return 0, errors.New("read from a closed disk image")
	}
	dst := bufCursor{bufs: bufs}
	done := 0
	var err error
	for done < total && err == nil {
		var k int
		k, err = r.readWindow(&dst, off+int64(done), min(total-done, mapWindow))
		done += k
	}
	if r.mappedBytes > 0 {
		r.idle.Reset(mapIdle)
	}
	return done, err
}

// readWindow copies the n bytes at off (at most mapWindow) into dst.
//
// Preconditions: r.mapMu is held; r.m is not nil.
func (r *Raw) readWindow(dst *bufCursor, off int64, n int) (int, error) {
	lo := off &^ (hostPage - 1)
	hi := (off + int64(n) + hostPage - 1) &^ (hostPage - 1)
	r.note(lo, hi) // before populating: a failed populate may leave pages mapped
	span := r.m[lo:min(hi, r.size)]
	if !r.noPopulate {
		switch err := unix.Madvise(span, unix.MADV_POPULATE_READ); err {
		case nil:
		case unix.EINVAL: // before Linux 5.14: the copy faults the pages in
			r.noPopulate = true
		default: // EFAULT: a page past the end of the file, or an I/O error
			return 0, fmt.Errorf("populate %s at %d+%d: %w", r.f.Name(), lo, len(span), err)
		}
	}
	k, err := copyGuarded(dst, span[off-lo:][:n])
	if r.mappedBytes >= mapBudget {
		r.drop()
	}
	if err != nil {
		return k, fmt.Errorf("read %s at %d: %w", r.f.Name(), off, err)
	}
	return k, nil
}

// note adds the pages [lo, hi) of r.m to the span to drop.
//
// Preconditions: r.mapMu is held.
func (r *Raw) note(lo, hi int64) {
	if r.mappedBytes == 0 {
		r.mappedLo, r.mappedHi = lo, hi
	}
	r.mappedLo, r.mappedHi = min(r.mappedLo, lo), max(r.mappedHi, hi)
	r.mappedBytes += hi - lo
}

// drop unmaps the noted span's pages from the page tables; they stay in the
// page cache. MADV_DONTNEED fails only on a range outside a mapping, which
// the span is not.
//
// Preconditions: r.mapMu is held; r.m is not nil.
func (r *Raw) drop() {
	unix.Madvise(r.m[r.mappedLo:min(r.mappedHi, r.size)], unix.MADV_DONTNEED)
	r.mappedBytes = 0
}

// dropIdle drops the mapped pages once reads have stopped (the idle timer).
func (r *Raw) dropIdle() {
	r.mapMu.Lock()
	defer r.mapMu.Unlock()
	if r.m != nil && r.mappedBytes > 0 {
		r.drop()
	}
}

// faultError is a memory fault recovered from a copy out of the mapping.
type faultError struct{ addr uintptr }

func (e faultError) Error() string {
	return fmt.Sprintf("memory fault at %#x (the image shrank, or an I/O error)", e.addr)
}

// copyGuarded copies src into dst and advances dst. A memory fault while
// copying (SIGBUS from a page of the mapping that cannot be read) ends the
// copy with a faultError instead of crashing the process; the bytes of the
// buffer being filled when it struck are not counted. Any other panic is
// a bug and goes on.
func copyGuarded(dst *bufCursor, src []byte) (n int, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			fault, ok := p.(interface {
				runtime.Error
				Addr() uintptr
			})
			if !ok {
				panic(p)
			}
			err = faultError{fault.Addr()}
		}
	}()
	for len(src) > 0 {
		k := copy(dst.bufs[0][dst.off:], src)
		src = src[k:]
		n += k
		dst.off += k
		if dst.off == len(dst.bufs[0]) {
			dst.bufs, dst.off = dst.bufs[1:], 0
		}
	}
	return n, nil
}
