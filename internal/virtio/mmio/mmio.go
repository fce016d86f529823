// Package mmio is the virtio-mmio version 2 transport (virtio 1.2 §4.2): the
// register file a guest driver programs to discover a virtio device,
// negotiate features, place its virtqueues and start it.
//
// # What the VMM wires up
//
// For a device at window base B (a 4 KiB window, Size) with interrupt line
// (GSI) N, the VMM:
//
//  1. creates the device and an eventfd irq, and calls New(dev, mem, irq, log);
//  2. inserts the Transport on its MMIO bus at [B, B+Size);
//  3. registers irq.FD() with KVM_IRQFD for GSI N, so that an interrupt is a
//     write to the eventfd and never a trip through user space;
//  4. registers NotifyFD() with KVM_IOEVENTFD at address B+QueueNotifyOffset,
//     length 4, no datamatch: every QueueNotify write signals the device's
//     doorbell inside the kernel. One eventfd per device, not per queue; the
//     worker checks every queue when woken;
//  5. appends Cmdline(B, N) ("virtio_mmio.device=4K@0xd0000000:5") to the
//     kernel command line;
//  6. at teardown, deassigns the irqfd and ioeventfd, then closes the device
//     (stopping its worker), then unmaps guest memory.
//
// Without step 4 the transport still works: a QueueNotify write that reaches
// Write rings the same doorbell.
//
// # Threading
//
// Read and Write run on vCPU goroutines and never block: a mutex guards the
// register file for the duration of one access, and device work happens on
// the device's worker goroutine. The device raises interrupts from its
// worker through the virtio.Interrupt the transport hands it: the
// InterruptStatus bit is set atomically and the irqfd is written. KVM's irqfd
// on an (edge-triggered) IOAPIC pin pulses the line; Linux's vm_interrupt
// reads InterruptStatus, writes it back to InterruptACK and then looks at the
// rings, so a bit set while the handler runs raises a fresh edge and is not
// lost.
//
// Guest accesses to unknown offsets, with bad widths, or that break the
// register protocol are ignored and logged at most once per second per kind
// (the guest is hostile; its mistakes must not flood the log).
package mmio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/huskvm/husk/internal/eventfd"
	"github.com/huskvm/husk/internal/guestmem"
	"github.com/huskvm/husk/internal/virtio"
)

// Register offsets (virtio 1.2 §4.2.2, table "MMIO Device Register Layout").
// All are 32 bits wide and accessed with aligned 32-bit accesses.
const (
	regMagic             = 0x000 // R: 0x74726976 ("virt")
	regVersion           = 0x004 // R: 2
	regDeviceID          = 0x008 // R: virtio device ID
	regVendorID          = 0x00c // R
	regDeviceFeatures    = 0x010 // R: 32 feature bits selected by DeviceFeaturesSel
	regDeviceFeaturesSel = 0x014 // W
	regDriverFeatures    = 0x020 // W: 32 feature bits selected by DriverFeaturesSel
	regDriverFeaturesSel = 0x024 // W
	regQueueSel          = 0x030 // W
	regQueueNumMax       = 0x034 // R: 0 if the queue does not exist
	regQueueNum          = 0x038 // W
	regQueueReady        = 0x044 // RW
	regQueueNotify       = 0x050 // W: queue index
	regInterruptStatus   = 0x060 // R: bit 0 used buffer, bit 1 config change
	regInterruptACK      = 0x064 // W
	regStatus            = 0x070 // RW: device status (§2.1); 0 resets
	regQueueDescLow      = 0x080 // W
	regQueueDescHigh     = 0x084 // W
	regQueueDriverLow    = 0x090 // W: available ring
	regQueueDriverHigh   = 0x094 // W
	regQueueDeviceLow    = 0x0a0 // W: used ring
	regQueueDeviceHigh   = 0x0a4 // W
	regSHMSel            = 0x0ac // W
	regSHMLenLow         = 0x0b0 // R: all ones, no shared memory regions
	regSHMLenHigh        = 0x0b4 // R
	regSHMBaseLow        = 0x0b8 // R
	regSHMBaseHigh       = 0x0bc // R
	regQueueReset        = 0x0c0 // RW: only with VIRTIO_F_RING_RESET, never offered
	regConfigGeneration  = 0x0fc // R
)

const (
	// Size is the size of one device's MMIO window.
	Size = 0x1000
	// QueueNotifyOffset is the QueueNotify register, where the VMM registers
	// NotifyFD with KVM_IOEVENTFD (4 bytes, no datamatch).
	QueueNotifyOffset = regQueueNotify
	// ConfigOffset is where the device configuration space starts.
	ConfigOffset = 0x100

	// MagicValue is "virt" read as a little-endian uint32.
	MagicValue = 0x74726976
	// Version is the virtio-mmio (non-legacy) version.
	Version = 2
	// VendorID is "HUSK" read as a little-endian uint32.
	VendorID = 0x4b535548

	// InterruptUsedBuffer is InterruptStatus bit 0 (VIRTIO_MMIO_INT_VRING).
	InterruptUsedBuffer = 1
	// InterruptConfigChange is InterruptStatus bit 1 (VIRTIO_MMIO_INT_CONFIG).
	InterruptConfigChange = 2
)

// statusBits are the status bits a driver may set.
const statusBits = virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK |
	virtio.StatusDriverOK | virtio.StatusFailed

// BusDevice is the shape of a device on the VMM's MMIO bus (internal/vmm
// Device), restated here so the transport does not import the VMM. offset is
// relative to the window base.
type BusDevice interface {
	Read(offset uint64, data []byte)
	Write(offset uint64, data []byte)
}

var _ BusDevice = (*Transport)(nil)

// Cmdline returns the kernel command-line parameter that announces a
// virtio-mmio device at base with interrupt irq to Linux (see
// Documentation/admin-guide/kernel-parameters.txt, virtio_mmio.device=).
func Cmdline(base uint64, irq uint32) string {
	return fmt.Sprintf("virtio_mmio.device=4K@%#x:%d", base, irq)
}

// queueRegs is the driver's configuration of one queue.
type queueRegs struct {
	num    uint32
	ready  bool
	desc   uint64
	driver uint64
	device uint64
}

// Transport is one virtio-mmio device window.
type Transport struct {
	dev      virtio.Device
	mem      *guestmem.Memory
	irq      *eventfd.EventFD
	log      *slog.Logger
	maxSizes []uint16 // per queue, from the device

	mu          sync.Mutex // guards the register file below; held for one access
	status      uint32     // driver-set status bits (DEVICE_NEEDS_RESET lives in needsReset)
	devFeatSel  uint32
	drvFeatSel  uint32
	drvFeatures uint64
	acked       uint64 // features accepted at FEATURES_OK
	queueSel    uint32
	queues      []queueRegs
	shmSel      uint32

	// gen counts resets; an interrupt handle from an older generation is
	// ignored, so a worker finishing an abandoned batch cannot raise one.
	gen        atomic.Uint64
	intStatus  atomic.Uint32 // InterruptStatus
	needsReset atomic.Bool   // DEVICE_NEEDS_RESET
	configGen  atomic.Uint32 // ConfigGeneration

	// Rate limits, one per guest-triggerable log site.
	badAccess, badWrite, badStatus, badQueue, irqFail virtio.LogLimit
}

// New wraps dev in a virtio-mmio transport over guest memory mem. irq is the
// eventfd the VMM registers with KVM_IRQFD for the device's interrupt line;
// the transport writes it and never closes it. log may be nil.
func New(dev virtio.Device, mem *guestmem.Memory, irq *eventfd.EventFD, log *slog.Logger) (*Transport, error) {
	if dev == nil || mem == nil || irq == nil {
		return nil, errors.New("virtio-mmio: nil device, memory or irq eventfd")
	}
	if dev.Doorbell() == nil {
		return nil, errors.New("virtio-mmio: device has no doorbell (Common.Init not called)")
	}
	sizes := dev.QueueMaxSizes()
	if len(sizes) == 0 || len(sizes) > virtio.MaxQueues {
		return nil, fmt.Errorf("virtio-mmio: device has %d queues", len(sizes))
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := &Transport{
		dev: dev, mem: mem, irq: irq,
		log:      log.With("virtio", dev.Type().String()),
		maxSizes: append([]uint16(nil), sizes...),
		queues:   make([]queueRegs, len(sizes)),
	}
	t.resetRegs()
	return t, nil
}

// NotifyFD returns the eventfd to register with KVM_IOEVENTFD at
// base+QueueNotifyOffset (length 4, no datamatch). It belongs to the device.
func (t *Transport) NotifyFD() int { return t.dev.Doorbell().FD() }

// Device returns the wrapped device.
func (t *Transport) Device() virtio.Device { return t.dev }

// Read handles a guest read of the window.
func (t *Transport) Read(offset uint64, data []byte) {
	if offset >= ConfigOffset {
		if len(data) == 0 || len(data) > 8 || offset >= Size || uint64(len(data)) > Size-offset {
			t.bad(&t.badAccess, "read", offset, len(data))
			clear(data)
			return
		}
		t.dev.ReadConfig(offset-ConfigOffset, data)
		return
	}
	if len(data) != 4 || offset%4 != 0 {
		t.bad(&t.badAccess, "read", offset, len(data))
		clear(data)
		return
	}
	binary.LittleEndian.PutUint32(data, t.readReg(offset))
}

// Write handles a guest write to the window.
func (t *Transport) Write(offset uint64, data []byte) {
	if offset >= ConfigOffset {
		if len(data) == 0 || len(data) > 8 || offset >= Size || uint64(len(data)) > Size-offset {
			t.bad(&t.badAccess, "write", offset, len(data))
			return
		}
		t.dev.WriteConfig(offset-ConfigOffset, data)
		return
	}
	if len(data) != 4 || offset%4 != 0 {
		t.bad(&t.badAccess, "write", offset, len(data))
		return
	}
	t.writeReg(offset, binary.LittleEndian.Uint32(data))
}

func (t *Transport) bad(l *virtio.LogLimit, op string, offset uint64, n int) {
	if dropped, ok := l.Allow(); ok {
		t.log.Warn("virtio_mmio_bad_access", "op", op, "offset", offset, "len", n, "dropped", dropped)
	}
}

func (t *Transport) readReg(offset uint64) uint32 {
	switch offset {
	case regMagic:
		return MagicValue
	case regVersion:
		return Version
	case regDeviceID:
		return uint32(t.dev.Type())
	case regVendorID:
		return VendorID
	case regInterruptStatus:
		return t.intStatus.Load()
	case regConfigGeneration:
		return t.configGen.Load()
	case regSHMLenLow, regSHMLenHigh, regSHMBaseLow, regSHMBaseHigh:
		return 0xffffffff // no shared memory region (§4.2.2: length -1)
	case regDeviceFeatures, regQueueNumMax, regQueueReady, regStatus:
		t.mu.Lock()
		defer t.mu.Unlock()
		return t.readLocked(offset)
	case regDeviceFeaturesSel, regDriverFeatures, regDriverFeaturesSel, regQueueSel, regQueueNum,
		regQueueNotify, regInterruptACK, regQueueDescLow, regQueueDescHigh, regQueueDriverLow,
		regQueueDriverHigh, regQueueDeviceLow, regQueueDeviceHigh, regSHMSel, regQueueReset:
		return 0 // write-only, or absent without RING_RESET
	}
	t.bad(&t.badAccess, "read", offset, 4)
	return 0
}

// readLocked reads a register that depends on the register file.
//
// Preconditions: t.mu is held.
func (t *Transport) readLocked(offset uint64) uint32 {
	switch offset {
	case regDeviceFeatures:
		switch t.devFeatSel {
		case 0:
			return uint32(t.dev.Features())
		case 1:
			return uint32(t.dev.Features() >> 32)
		}
	case regQueueNumMax:
		if q := t.queueSel; q < uint32(len(t.maxSizes)) {
			return uint32(t.maxSizes[q])
		}
	case regQueueReady:
		if r := t.selected(); r != nil && r.ready {
			return 1
		}
	case regStatus:
		s := t.status
		if t.needsReset.Load() {
			s |= virtio.StatusNeedsReset
		}
		return s
	}
	return 0
}

// selected returns the registers of the selected queue, or nil.
//
// Preconditions: t.mu is held.
func (t *Transport) selected() *queueRegs {
	if t.queueSel < uint32(len(t.queues)) {
		return &t.queues[t.queueSel]
	}
	return nil
}

func (t *Transport) writeReg(offset uint64, v uint32) {
	switch offset {
	case regQueueNotify:
		// The doorbell only; the worker does the work (and checks every
		// queue). Before DRIVER_OK the worker has nothing to look at.
		if v >= uint32(len(t.maxSizes)) {
			t.violation(&t.badQueue, "notify_no_such_queue", offset, uint64(v))
			return
		}
		t.dev.Doorbell().Ring()
		return
	case regInterruptACK:
		t.intStatus.And(^v)
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	switch offset {
	case regDeviceFeaturesSel:
		t.devFeatSel = v
	case regDriverFeaturesSel:
		t.drvFeatSel = v
	case regDriverFeatures:
		if t.status&virtio.StatusFeaturesOK != 0 {
			t.violation(&t.badWrite, "driver_features_after_features_ok", offset, uint64(v))
			return
		}
		switch t.drvFeatSel {
		case 0:
			t.drvFeatures = t.drvFeatures&^0xffffffff | uint64(v)
		case 1:
			t.drvFeatures = t.drvFeatures&0xffffffff | uint64(v)<<32
		default:
			if v != 0 {
				t.violation(&t.badWrite, "driver_features_high_select", offset, uint64(v))
			}
		}
	case regQueueSel:
		t.queueSel = v
	case regQueueNum, regQueueDescLow, regQueueDescHigh, regQueueDriverLow, regQueueDriverHigh,
		regQueueDeviceLow, regQueueDeviceHigh:
		r := t.selected()
		if r == nil || r.ready || t.status&virtio.StatusDriverOK != 0 {
			// §4.2.2.2: the driver must not touch a live queue.
			t.violation(&t.badQueue, "queue_register_while_live", offset, uint64(v))
			return
		}
		switch offset {
		case regQueueNum:
			r.num = v
		case regQueueDescLow:
			r.desc = setLow(r.desc, v)
		case regQueueDescHigh:
			r.desc = setHigh(r.desc, v)
		case regQueueDriverLow:
			r.driver = setLow(r.driver, v)
		case regQueueDriverHigh:
			r.driver = setHigh(r.driver, v)
		case regQueueDeviceLow:
			r.device = setLow(r.device, v)
		case regQueueDeviceHigh:
			r.device = setHigh(r.device, v)
		}
	case regQueueReady:
		r := t.selected()
		switch {
		case r == nil:
			t.violation(&t.badQueue, "queue_ready_no_queue", offset, uint64(v))
		case v == 0:
			r.ready = false // Linux's vm_del_vq; an active device keeps its queues until reset
		case t.status&virtio.StatusDriverOK != 0:
			t.violation(&t.badQueue, "queue_ready_after_driver_ok", offset, uint64(v))
		default:
			r.ready = true
		}
	case regStatus:
		t.setStatus(v)
	case regSHMSel:
		t.shmSel = v
	default:
		t.violation(&t.badWrite, "read_only_or_unknown_register", offset, uint64(v))
	}
}

// violation logs a guest protocol violation, rate-limited per kind.
func (t *Transport) violation(l *virtio.LogLimit, what string, offset uint64, v uint64) {
	if dropped, ok := l.Allow(); ok {
		t.log.Warn("virtio_mmio_bad_write", "what", what, "offset", offset, "value", v, "dropped", dropped)
	}
}

func setLow(x uint64, v uint32) uint64  { return x&^0xffffffff | uint64(v) }
func setHigh(x uint64, v uint32) uint64 { return x&0xffffffff | uint64(v)<<32 }

// setStatus applies a driver write to the status register (§2.1, §3.1.1):
// 0 resets; otherwise the driver only adds bits, in the order ACKNOWLEDGE,
// DRIVER, FEATURES_OK, DRIVER_OK (FAILED at any time). FEATURES_OK is
// refused, by leaving it clear, when VIRTIO_F_VERSION_1 was not accepted;
// DRIVER_OK activates the device.
//
// Preconditions: t.mu is held.
func (t *Transport) setStatus(v uint32) {
	if v == 0 {
		t.reset()
		return
	}
	v &^= virtio.StatusNeedsReset // device-owned
	old := t.status
	added := v &^ old
	switch {
	case v&old != old:
		t.violation(&t.badStatus, "status_clears_bits", regStatus, uint64(v))
		return
	case v&^statusBits != 0:
		t.violation(&t.badStatus, "status_unknown_bits", regStatus, uint64(v))
		return
	case added&virtio.StatusDriver != 0 && v&virtio.StatusAcknowledge == 0,
		added&virtio.StatusFeaturesOK != 0 && v&virtio.StatusDriver == 0,
		added&virtio.StatusDriverOK != 0 && v&virtio.StatusFeaturesOK == 0:
		t.violation(&t.badStatus, "status_out_of_order", regStatus, uint64(v))
		return
	}
	if added&virtio.StatusFeaturesOK != 0 {
		t.acked = t.dev.AckFeatures(t.drvFeatures)
		if t.acked != t.drvFeatures {
			t.violation(&t.badStatus, "driver_features_not_offered", regStatus, t.drvFeatures&^t.acked)
		}
		if t.acked&virtio.FeatureVersion1 == 0 {
			t.violation(&t.badStatus, "features_ok_without_version_1", regStatus, uint64(v))
			v &^= virtio.StatusFeaturesOK | virtio.StatusDriverOK
			added &^= virtio.StatusDriverOK
		}
	}
	t.status = v
	if added&virtio.StatusDriverOK != 0 {
		if err := t.activate(); err != nil {
			if dropped, ok := t.badStatus.Allow(); ok {
				t.log.Warn("virtio_mmio_activate_failed", "err", err, "dropped", dropped)
			}
			t.needsResetLocked()
		}
	}
}

// activate builds the queues the driver configured and hands them to the
// device.
//
// Preconditions: t.mu is held.
func (t *Transport) activate() error {
	queues := make([]*virtio.Queue, len(t.queues))
	for i, r := range t.queues {
		if !r.ready {
			continue
		}
		if r.num == 0 || r.num > uint32(t.maxSizes[i]) {
			return fmt.Errorf("queue %d: size %d, maximum %d", i, r.num, t.maxSizes[i])
		}
		q, err := virtio.NewQueue(t.mem, virtio.QueueConfig{
			Index: uint16(i), Size: uint16(r.num),
			DescTable: r.desc, AvailRing: r.driver, UsedRing: r.device,
			EventIdx: t.acked&virtio.FeatureEventIdx != 0,
			Indirect: t.acked&virtio.FeatureIndirectDesc != 0,
		})
		if err != nil {
			return err
		}
		queues[i] = q
	}
	return t.dev.Activate(t.mem, queues, &interrupt{t: t, gen: t.gen.Load()})
}

// reset implements a status write of 0 (§2.4): the device forgets the
// driver, and every register returns to its initial value.
//
// Preconditions: t.mu is held.
func (t *Transport) reset() {
	t.gen.Add(1)
	t.dev.Reset()
	t.resetRegs()
}

// resetRegs puts the register file in its initial state.
func (t *Transport) resetRegs() {
	t.status, t.devFeatSel, t.drvFeatSel, t.drvFeatures, t.acked = 0, 0, 0, 0, 0
	t.queueSel, t.shmSel = 0, 0
	for i := range t.queues {
		t.queues[i] = queueRegs{num: uint32(t.maxSizes[i])}
	}
	t.intStatus.Store(0)
	t.needsReset.Store(false)
}

// needsResetLocked sets DEVICE_NEEDS_RESET and raises a configuration
// change interrupt (§2.1.2).
func (t *Transport) needsResetLocked() {
	t.needsReset.Store(true)
	t.raise(InterruptConfigChange)
}

// raise sets an InterruptStatus bit and pulses the interrupt line.
func (t *Transport) raise(bit uint32) {
	if bit == InterruptConfigChange {
		t.configGen.Add(1)
	}
	t.intStatus.Or(bit)
	if err := t.irq.Notify(); err != nil {
		if dropped, ok := t.irqFail.Allow(); ok {
			t.log.Error("virtio_mmio_irq_failed", "err", err, "dropped", dropped)
		}
	}
}

// InterruptStatus returns the InterruptStatus bits the driver has not yet
// acknowledged, for debugging.
func (t *Transport) InterruptStatus() uint32 { return t.intStatus.Load() }

// interrupt is the virtio.Interrupt of one activation.
type interrupt struct {
	t   *Transport
	gen uint64
}

func (i *interrupt) live() bool { return i.t.gen.Load() == i.gen }

// UsedBuffer sets InterruptStatus bit 0 and signals the irqfd.
func (i *interrupt) UsedBuffer() {
	if i.live() {
		i.t.raise(InterruptUsedBuffer)
	}
}

// ConfigChanged bumps ConfigGeneration, sets InterruptStatus bit 1 and
// signals the irqfd.
func (i *interrupt) ConfigChanged() {
	i.t.mu.Lock()
	defer i.t.mu.Unlock()
	if i.live() {
		i.t.raise(InterruptConfigChange)
	}
}

// NeedsReset sets DEVICE_NEEDS_RESET and raises a configuration change.
func (i *interrupt) NeedsReset() {
	i.t.mu.Lock()
	defer i.t.mu.Unlock()
	if i.live() {
		i.t.needsResetLocked()
	}
}
