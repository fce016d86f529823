// Package virtiotest is a fake guest driver for device tests (cf.
// Firecracker's virtio test mock): it lays out split virtqueues in guest
// memory, builds descriptor chains, publishes them and reads the used ring
// back, and drives a virtio-mmio transport through its registers the way
// Linux's virtio_mmio driver does. It mirrors the spec independently of the
// device code under test.
package virtiotest

import (
	"encoding/binary"
	"testing"

	"github.com/huskvm/husk/internal/guestmem"
	"github.com/huskvm/husk/internal/virtio"
)

// Descriptor flags (virtio 1.2 §2.7.5).
const (
	DescNext     = 1
	DescWrite    = 2
	DescIndirect = 4
)

// NewMemory maps size bytes of guest RAM at GPA 0 for the test.
func NewMemory(tb testing.TB, size uint64) *guestmem.Memory {
	tb.Helper()
	m, err := guestmem.New([]guestmem.Range{{GPA: 0, Size: size}})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { m.Close() })
	return m
}

// Buf is one buffer of a chain the driver builds.
type Buf struct {
	Addr  uint64
	Len   uint32
	Write bool // device-writable
}

// GuestQueue is the driver's side of one split virtqueue in guest memory.
// Guest writes that fail (a test laid things out wrongly) panic: they are
// bugs in the test, not behaviour under test.
type GuestQueue struct {
	Mem               *guestmem.Memory
	Size              uint16
	Desc, Avail, Used uint64

	free     uint16 // next descriptor to hand out, cyclically
	availIdx uint16
	lastUsed uint16
}

// NewGuestQueue lays out a queue of size entries at base: descriptor table,
// available ring, then the used ring 4-aligned. It zeroes the rings and
// needs 16·size + 6 + 2·size + 8·size + 12 bytes.
func NewGuestQueue(mem *guestmem.Memory, base uint64, size uint16) *GuestQueue {
	n := uint64(size)
	g := &GuestQueue{Mem: mem, Size: size, Desc: base, Avail: base + 16*n}
	g.Used = (g.Avail + 6 + 2*n + 3) &^ 3
	must(mem.WriteAt(make([]byte, g.Used+6+8*n-base), int64(base)))
	return g
}

// Footprint returns the bytes NewGuestQueue uses for a queue of size n.
func Footprint(n uint16) uint64 { return 16*uint64(n) + 6 + 2*uint64(n) + 3 + 6 + 8*uint64(n) }

func must(_ int, err error) {
	if err != nil {
		panic(err)
	}
}

func mustErr(err error) {
	if err != nil {
		panic(err)
	}
}

// Config returns the queue configuration a transport would build, with the
// EVENT_IDX and INDIRECT_DESC bits taken from features.
func (g *GuestQueue) Config(index uint16, features uint64) virtio.QueueConfig {
	return virtio.QueueConfig{
		Index: index, Size: g.Size, DescTable: g.Desc, AvailRing: g.Avail, UsedRing: g.Used,
		EventIdx: features&virtio.FeatureEventIdx != 0, Indirect: features&virtio.FeatureIndirectDesc != 0,
	}
}

// SetDesc writes descriptor i.
func (g *GuestQueue) SetDesc(i uint16, addr uint64, length uint32, flags, next uint16) {
	WriteDesc(g.Mem, g.Desc+16*uint64(i), addr, length, flags, next)
}

// WriteDesc writes a descriptor at gpa (a table entry, direct or indirect).
func WriteDesc(mem *guestmem.Memory, gpa, addr uint64, length uint32, flags, next uint16) {
	var d [16]byte
	binary.LittleEndian.PutUint64(d[0:], addr)
	binary.LittleEndian.PutUint32(d[8:], length)
	binary.LittleEndian.PutUint16(d[12:], flags)
	binary.LittleEndian.PutUint16(d[14:], next)
	must(mem.WriteAt(d[:], int64(gpa)))
}

// AddChain writes bufs as a chain of fresh descriptors, publishes it and
// returns its head.
func (g *GuestQueue) AddChain(bufs ...Buf) uint16 {
	head := g.free
	for i, b := range bufs {
		idx := g.free
		g.free = (g.free + 1) % g.Size
		var flags uint16
		if b.Write {
			flags |= DescWrite
		}
		if i < len(bufs)-1 {
			flags |= DescNext
		}
		g.SetDesc(idx, b.Addr, b.Len, flags, g.free)
	}
	g.Publish(head)
	return head
}

// AddIndirect writes bufs as an indirect table at table, points one fresh
// descriptor at it, publishes it and returns its head.
func (g *GuestQueue) AddIndirect(table uint64, bufs ...Buf) uint16 {
	for i, b := range bufs {
		var flags uint16
		if b.Write {
			flags |= DescWrite
		}
		if i < len(bufs)-1 {
			flags |= DescNext
		}
		WriteDesc(g.Mem, table+16*uint64(i), b.Addr, b.Len, flags, uint16(i+1))
	}
	head := g.free
	g.free = (g.free + 1) % g.Size
	g.SetDesc(head, table, uint32(16*len(bufs)), DescIndirect, 0)
	g.Publish(head)
	return head
}

// Publish puts head in the next available ring slot and bumps the index.
func (g *GuestQueue) Publish(head uint16) {
	slot := uint64(g.availIdx % g.Size)
	mustErr(g.Mem.PutUint16(g.Avail+4+2*slot, head))
	g.availIdx++
	mustErr(g.Mem.PutUint16(g.Avail+2, g.availIdx))
}

// SetAvailIdx overwrites the available index (for misuse tests).
func (g *GuestQueue) SetAvailIdx(v uint16) {
	g.availIdx = v
	mustErr(g.Mem.PutUint16(g.Avail+2, v))
}

// SetAvailFlags writes the available ring flags (1 = NO_INTERRUPT).
func (g *GuestQueue) SetAvailFlags(v uint16) { mustErr(g.Mem.PutUint16(g.Avail, v)) }

// SetUsedEvent writes used_event (EVENT_IDX).
func (g *GuestQueue) SetUsedEvent(v uint16) {
	mustErr(g.Mem.PutUint16(g.Avail+4+2*uint64(g.Size), v))
}

// AvailEvent reads avail_event (EVENT_IDX).
func (g *GuestQueue) AvailEvent() uint16 {
	v, err := g.Mem.Uint16(g.Used + 4 + 8*uint64(g.Size))
	mustErr(err)
	return v
}

// UsedFlags reads the used ring flags (1 = NO_NOTIFY).
func (g *GuestQueue) UsedFlags() uint16 {
	v, err := g.Mem.Uint16(g.Used)
	mustErr(err)
	return v
}

// UsedIdx reads the used index.
func (g *GuestQueue) UsedIdx() uint16 {
	v, err := g.Mem.Uint16(g.Used + 2)
	mustErr(err)
	return v
}

// PopUsed returns the next used element, if the device has added one.
func (g *GuestQueue) PopUsed() (id uint16, written uint32, ok bool) {
	if g.UsedIdx() == g.lastUsed {
		return 0, 0, false
	}
	e := g.Used + 4 + 8*uint64(g.lastUsed%g.Size)
	id32, err := g.Mem.Uint32(e)
	mustErr(err)
	written, err = g.Mem.Uint32(e + 4)
	mustErr(err)
	g.lastUsed++
	return uint16(id32), written, true
}
