// Package guestmem owns a guest's physical memory: host mappings of guest RAM
// regions and bounds-checked access to them by guest physical address (GPA).
//
// Every address a device or loader uses comes from the guest or from an image
// file and is treated as hostile: no GPA ever indexes a slice unchecked. An
// access must lie entirely inside one region; anything else returns a
// *RangeError.
package guestmem

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Range is a span of guest physical addresses.
type Range struct {
	GPA  uint64
	Size uint64
}

// End returns the first address after the range.
func (r Range) End() uint64 { return r.GPA + r.Size }

// Region is one contiguous host mapping backing a Range of guest memory.
type Region struct {
	Range
	host []byte // the mapping; len(host) == Size
}

// HostAddr returns the host virtual address of the region's first byte, for
// KVM_SET_USER_MEMORY_REGION.
func (r *Region) HostAddr() uintptr { return sliceAddr(r.host) }

// Memory is a guest's RAM: an ordered set of non-overlapping regions.
// Accesses are safe for concurrent use as far as the Go runtime is
// concerned; ordering between the guest and host threads is the caller's.
type Memory struct {
	regions []*Region
}

// RangeError reports an access outside guest RAM.
type RangeError struct {
	GPA uint64
	Len uint64
}

func (e *RangeError) Error() string {
	return fmt.Sprintf("guest memory access out of range: gpa %#x len %#x", e.GPA, e.Len)
}

// PageSize is the host page size guest regions are aligned to.
const PageSize = 4096

// MaxTotal bounds the RAM one Memory may map (1 TiB).
const MaxTotal = 1 << 40

// New maps anonymous memory for each range. Ranges must be page-aligned,
// non-empty and sorted without overlap. The mappings are MAP_NORESERVE:
// untouched guest pages cost nothing.
func New(ranges []Range) (*Memory, error) {
	m := &Memory{}
	var total, prevEnd uint64
	for i, r := range ranges {
		if r.Size == 0 || r.GPA%PageSize != 0 || r.Size%PageSize != 0 {
			return nil, fmt.Errorf("guest memory range %d (%#x+%#x): not page-aligned or empty", i, r.GPA, r.Size)
		}
		if r.End() < r.GPA || (i > 0 && r.GPA < prevEnd) {
			return nil, fmt.Errorf("guest memory range %d (%#x+%#x): overlaps or wraps", i, r.GPA, r.Size)
		}
		total += r.Size
		if total > MaxTotal {
			return nil, fmt.Errorf("guest memory of %d bytes exceeds the limit of %d", total, uint64(MaxTotal))
		}
		prevEnd = r.End()
	}
	for _, r := range ranges {
		b, err := unix.Mmap(-1, 0, int(r.Size), unix.PROT_READ|unix.PROT_WRITE,
			unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("mmap guest memory %#x+%#x: %w", r.GPA, r.Size, err)
		}
		m.regions = append(m.regions, &Region{Range: r, host: b})
	}
	return m, nil
}

// Close unmaps all regions. The Memory must not be used afterwards.
func (m *Memory) Close() error {
	var errs []error
	for _, r := range m.regions {
		if err := unix.Munmap(r.host); err != nil {
			errs = append(errs, err)
		}
	}
	m.regions = nil
	return errors.Join(errs...)
}

// Regions returns the regions in address order.
func (m *Memory) Regions() []*Region { return m.regions }

// Size returns the total bytes of guest RAM.
func (m *Memory) Size() uint64 {
	var n uint64
	for _, r := range m.regions {
		n += r.Size
	}
	return n
}

// Slice returns the host bytes backing [gpa, gpa+n). The range must lie
// inside a single region. The slice aliases guest memory: the guest may
// change it at any time.
func (m *Memory) Slice(gpa, n uint64) ([]byte, error) {
	for _, r := range m.regions {
		if gpa >= r.GPA && gpa-r.GPA <= r.Size && n <= r.Size-(gpa-r.GPA) {
			off := gpa - r.GPA
			return r.host[off : off+n : off+n], nil
		}
	}
	return nil, &RangeError{GPA: gpa, Len: n}
}

// ReadAt copies len(p) bytes at guest address off into p.
func (m *Memory) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, &RangeError{GPA: uint64(off), Len: uint64(len(p))}
	}
	s, err := m.Slice(uint64(off), uint64(len(p)))
	if err != nil {
		return 0, err
	}
	return copy(p, s), nil
}

// WriteAt copies p into guest memory at address off.
func (m *Memory) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, &RangeError{GPA: uint64(off), Len: uint64(len(p))}
	}
	s, err := m.Slice(uint64(off), uint64(len(p)))
	if err != nil {
		return 0, err
	}
	return copy(s, p), nil
}

// Uint16 reads a little-endian uint16 at gpa.
func (m *Memory) Uint16(gpa uint64) (uint16, error) {
	s, err := m.Slice(gpa, 2)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint16(s), nil
}

// Uint32 reads a little-endian uint32 at gpa.
func (m *Memory) Uint32(gpa uint64) (uint32, error) {
	s, err := m.Slice(gpa, 4)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(s), nil
}

// Uint64 reads a little-endian uint64 at gpa.
func (m *Memory) Uint64(gpa uint64) (uint64, error) {
	s, err := m.Slice(gpa, 8)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(s), nil
}

// PutUint16 writes a little-endian uint16 at gpa.
func (m *Memory) PutUint16(gpa uint64, v uint16) error {
	s, err := m.Slice(gpa, 2)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint16(s, v)
	return nil
}

// PutUint32 writes a little-endian uint32 at gpa.
func (m *Memory) PutUint32(gpa uint64, v uint32) error {
	s, err := m.Slice(gpa, 4)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint32(s, v)
	return nil
}

// PutUint64 writes a little-endian uint64 at gpa.
func (m *Memory) PutUint64(gpa uint64, v uint64) error {
	s, err := m.Slice(gpa, 8)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint64(s, v)
	return nil
}

// LoadFile places n bytes of f, starting at file offset off, at guest address
// gpa, without passing them through the Go heap. The page-aligned interior is
// mapped from the file copy-on-write (MAP_PRIVATE|MAP_FIXED) when f's offset
// and gpa agree modulo the page size, so an unchanged page of the image costs
// the guest a page-cache page shared with every other VM; the partial pages at
// either end, and everything when the offsets disagree, are read into place.
// Bytes of the containing pages outside [gpa, gpa+n) are left as they were.
func (m *Memory) LoadFile(f *os.File, off int64, gpa, n uint64) error {
	if off < 0 {
		return fmt.Errorf("load file at negative offset %d", off)
	}
	dst, err := m.Slice(gpa, n)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if uint64(st.Size()) < uint64(off) || uint64(st.Size())-uint64(off) < n {
		return fmt.Errorf("load %s: %d bytes at offset %d run past its end (%d bytes)", f.Name(), n, off, st.Size())
	}
	head, tail := n, n // by default read everything as the "head"
	if uint64(off)%PageSize == gpa%PageSize {
		head = min(n, (PageSize-gpa%PageSize)%PageSize)
		tail = head + (n-head)/PageSize*PageSize
		if tail > head {
			if err := mapFixed(dst[head:tail], f, off+int64(head)); err != nil {
				return fmt.Errorf("map %s at gpa %#x: %w", f.Name(), gpa+head, err)
			}
		}
	}
	if err := readFull(f, dst[:head], off); err != nil {
		return err
	}
	return readFull(f, dst[tail:], off+int64(tail))
}

func readFull(f *os.File, p []byte, off int64) error {
	if len(p) == 0 {
		return nil
	}
	if _, err := f.ReadAt(p, off); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("read %s at offset %d: %w", f.Name(), off, err)
	}
	return nil
}
