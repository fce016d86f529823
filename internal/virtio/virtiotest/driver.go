package virtiotest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/huskvm/husk/internal/guestmem"
	"github.com/huskvm/husk/internal/virtio"
)

// virtio-mmio version 2 register offsets (virtio 1.2 §4.2.2), written out
// here independently of package mmio so the tests check it against the spec.
const (
	RegMagic             = 0x000
	RegVersion           = 0x004
	RegDeviceID          = 0x008
	RegVendorID          = 0x00c
	RegDeviceFeatures    = 0x010
	RegDeviceFeaturesSel = 0x014
	RegDriverFeatures    = 0x020
	RegDriverFeaturesSel = 0x024
	RegQueueSel          = 0x030
	RegQueueNumMax       = 0x034
	RegQueueNum          = 0x038
	RegQueueReady        = 0x044
	RegQueueNotify       = 0x050
	RegInterruptStatus   = 0x060
	RegInterruptACK      = 0x064
	RegStatus            = 0x070
	RegQueueDescLow      = 0x080
	RegQueueDescHigh     = 0x084
	RegQueueDriverLow    = 0x090
	RegQueueDriverHigh   = 0x094
	RegQueueDeviceLow    = 0x0a0
	RegQueueDeviceHigh   = 0x0a4
	RegConfigGeneration  = 0x0fc
	RegConfig            = 0x100
)

// Bus is a device's MMIO window: the shape of the VMM bus's Device.
type Bus interface {
	Read(offset uint64, data []byte)
	Write(offset uint64, data []byte)
}

// Memory layout a Driver uses.
const (
	// DriverRingBase is where queue i's rings start, DriverRingStride apart.
	DriverRingBase   = 0x10000
	DriverRingStride = 0x10000
	// DriverHeapBase is where Alloc hands out buffers from.
	DriverHeapBase = 0x100000
)

// Driver is a fake guest driver for one virtio-mmio device.
type Driver struct {
	TB     testing.TB
	Bus    Bus
	Mem    *guestmem.Memory
	Queues []*GuestQueue
	Acked  uint64

	heap uint64
}

// NewDriver returns a driver for the device behind bus, whose guest RAM is
// mem (at least 2 MiB).
func NewDriver(tb testing.TB, bus Bus, mem *guestmem.Memory) *Driver {
	return &Driver{TB: tb, Bus: bus, Mem: mem, heap: DriverHeapBase}
}

// Read32 reads a 32-bit register.
func (d *Driver) Read32(off uint64) uint32 {
	var b [4]byte
	d.Bus.Read(off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

// Write32 writes a 32-bit register.
func (d *Driver) Write32(off uint64, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	d.Bus.Write(off, b[:])
}

// Status reads the device status.
func (d *Driver) Status() uint32 { return d.Read32(RegStatus) }

// Setup runs the initialisation sequence of §3.1.1 as Linux's virtio_mmio
// does: reset, ACKNOWLEDGE, DRIVER, feature negotiation (want & offered),
// FEATURES_OK and its read-back, every queue the device has at
// min(queueSize, QueueNumMax), and DRIVER_OK.
func (d *Driver) Setup(want uint64, queueSize uint16) error {
	return d.SetupAt(want, queueSize, DriverRingBase)
}

// SetupAt is Setup with queue i's rings at ringBase + i·DriverRingStride.
func (d *Driver) SetupAt(want uint64, queueSize uint16, ringBase uint64) error {
	if m := d.Read32(RegMagic); m != 0x74726976 {
		return fmt.Errorf("magic %#x", m)
	}
	if v := d.Read32(RegVersion); v != 2 {
		return fmt.Errorf("version %d", v)
	}
	d.Write32(RegStatus, 0)
	d.Write32(RegStatus, uint32(virtio.StatusAcknowledge))
	d.Write32(RegStatus, uint32(virtio.StatusAcknowledge|virtio.StatusDriver))
	d.Write32(RegDeviceFeaturesSel, 1)
	offered := uint64(d.Read32(RegDeviceFeatures)) << 32
	d.Write32(RegDeviceFeaturesSel, 0)
	offered |= uint64(d.Read32(RegDeviceFeatures))
	d.Acked = offered & want
	d.Write32(RegDriverFeaturesSel, 1)
	d.Write32(RegDriverFeatures, uint32(d.Acked>>32))
	d.Write32(RegDriverFeaturesSel, 0)
	d.Write32(RegDriverFeatures, uint32(d.Acked))
	st := virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK
	d.Write32(RegStatus, st)
	if d.Status()&virtio.StatusFeaturesOK == 0 {
		return errors.New("device refused FEATURES_OK")
	}
	d.Queues = nil
	for i := uint32(0); ; i++ {
		d.Write32(RegQueueSel, i)
		if d.Read32(RegQueueReady) != 0 {
			return fmt.Errorf("queue %d already ready", i)
		}
		max := d.Read32(RegQueueNumMax)
		if max == 0 {
			break
		}
		size := min(uint32(queueSize), max)
		g := NewGuestQueue(d.Mem, ringBase+uint64(i)*DriverRingStride, uint16(size))
		d.Write32(RegQueueNum, size)
		d.write64(RegQueueDescLow, g.Desc)
		d.write64(RegQueueDriverLow, g.Avail)
		d.write64(RegQueueDeviceLow, g.Used)
		d.Write32(RegQueueReady, 1)
		d.Queues = append(d.Queues, g)
	}
	d.Write32(RegStatus, st|virtio.StatusDriverOK)
	if s := d.Status(); s&virtio.StatusNeedsReset != 0 {
		return fmt.Errorf("device needs reset after DRIVER_OK (status %#x)", s)
	}
	return nil
}

func (d *Driver) write64(low uint64, v uint64) {
	d.Write32(low, uint32(v))
	d.Write32(low+4, uint32(v>>32))
}

// Alloc returns n bytes of zeroed guest memory, 16-aligned.
func (d *Driver) Alloc(n int) uint64 {
	if d.heap == 0 {
		d.heap = DriverHeapBase
	}
	a := d.heap
	d.heap = (d.heap + uint64(n) + 15) &^ 15
	if d.heap > d.Mem.Size() {
		d.TB.Fatalf("virtiotest: guest heap exhausted allocating %d bytes", n)
	}
	must(d.Mem.WriteAt(make([]byte, n), int64(a)))
	return a
}

// Buffer copies p into fresh guest memory and returns its address.
func (d *Driver) Buffer(p []byte) uint64 {
	a := d.Alloc(len(p))
	must(d.Mem.WriteAt(p, int64(a)))
	return a
}

// Bytes reads n bytes of guest memory at gpa.
func (d *Driver) Bytes(gpa uint64, n int) []byte {
	b := make([]byte, n)
	must(d.Mem.ReadAt(b, int64(gpa)))
	return b
}

// Kick notifies queue q through the QueueNotify register.
func (d *Driver) Kick(q int) { d.Write32(RegQueueNotify, uint32(q)) }

// WaitUsed waits up to 10 s for the device to return a chain on queue q.
func (d *Driver) WaitUsed(q int) (id uint16, written uint32) {
	d.TB.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if id, n, ok := d.Queues[q].PopUsed(); ok {
			return id, n
		}
		if time.Now().After(deadline) {
			d.TB.Fatalf("virtiotest: no used buffer on queue %d (status %#x)", q, d.Status())
		}
		time.Sleep(50 * time.Microsecond)
	}
}

// Submit publishes bufs as a chain on queue q, kicks, and waits for the
// device to return it; it returns the used length.
func (d *Driver) Submit(q int, bufs ...Buf) uint32 {
	d.TB.Helper()
	head := d.Queues[q].AddChain(bufs...)
	d.Kick(q)
	id, n := d.WaitUsed(q)
	if id != head {
		d.TB.Fatalf("virtiotest: used id %d, want head %d", id, head)
	}
	return n
}

// ReadConfig reads n bytes of device configuration space, one byte access
// at a time.
func (d *Driver) ReadConfig(off uint64, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		d.Bus.Read(RegConfig+off+uint64(i), b[i:i+1])
	}
	return b
}

// AckInterrupt reads InterruptStatus and acknowledges it, as Linux's
// vm_interrupt does, and returns what it read.
func (d *Driver) AckInterrupt() uint32 {
	s := d.Read32(RegInterruptStatus)
	d.Write32(RegInterruptACK, s)
	return s
}

// SetHeap moves the allocator, so several drivers can share one memory.
func (d *Driver) SetHeap(gpa uint64) { d.heap = gpa }
