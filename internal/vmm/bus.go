package vmm

import (
	"fmt"
	"sort"
)

// Device is a model on the port-I/O or MMIO bus. offset is relative to the
// device's base; data is the access (1, 2, 4 or 8 bytes). Methods run on vCPU
// goroutines: they must not block.
type Device interface {
	Read(offset uint64, data []byte)
	Write(offset uint64, data []byte)
}

// bus maps address ranges to devices. It is built before the vCPUs start and
// read-only afterwards, so lookups take no lock.
type bus struct {
	ranges []busRange // sorted by base, non-overlapping
}

type busRange struct {
	base, size uint64
	dev        Device
}

// insert adds dev at [base, base+size).
func (b *bus) insert(base, size uint64, dev Device) error {
	if size == 0 || base+size < base {
		return fmt.Errorf("bus range %#x+%#x is empty or wraps", base, size)
	}
	i := sort.Search(len(b.ranges), func(i int) bool { return b.ranges[i].base >= base })
	if i > 0 && b.ranges[i-1].base+b.ranges[i-1].size > base || i < len(b.ranges) && base+size > b.ranges[i].base {
		return fmt.Errorf("bus range %#x+%#x overlaps another device", base, size)
	}
	b.ranges = append(b.ranges, busRange{})
	copy(b.ranges[i+1:], b.ranges[i:])
	b.ranges[i] = busRange{base: base, size: size, dev: dev}
	return nil
}

// find returns the device covering addr and addr's offset into it.
func (b *bus) find(addr uint64) (Device, uint64, bool) {
	i := sort.Search(len(b.ranges), func(i int) bool { return b.ranges[i].base+b.ranges[i].size > addr })
	if i == len(b.ranges) || addr < b.ranges[i].base {
		return nil, 0, false
	}
	return b.ranges[i].dev, addr - b.ranges[i].base, true
}

// read dispatches a read; an access with no device reads as all ones, as an
// unclaimed ISA or MMIO access does on real hardware.
func (b *bus) read(addr uint64, data []byte) bool {
	if d, off, ok := b.find(addr); ok {
		d.Read(off, data)
		return true
	}
	for i := range data {
		data[i] = 0xff
	}
	return false
}

// write dispatches a write; one with no device is dropped.
func (b *bus) write(addr uint64, data []byte) bool {
	if d, off, ok := b.find(addr); ok {
		d.Write(off, data)
		return true
	}
	return false
}
