package mmio

import (
	"fmt"

	"github.com/huskvm/husk/internal/virtio"
)

// QueueRegs is the driver's saved configuration of one queue.
type QueueRegs struct {
	Num    uint32
	Ready  bool
	Desc   uint64
	Driver uint64
	Device uint64
}

// State is the serialisable state of a virtio-mmio device slot: the
// register file plus the device's generic virtio state. Field order is the
// wire format.
//
// The generic state travels with the transport rather than the device
// because restoring an active device needs the transport's interrupt. The
// device's own state (backing file, counters) is saved by the device.
type State struct {
	Status            uint32 // driver-set bits; DEVICE_NEEDS_RESET is NeedsReset
	DeviceFeaturesSel uint32
	DriverFeaturesSel uint32
	DriverFeatures    uint64
	AckedFeatures     uint64
	QueueSel          uint32
	Queues            []QueueRegs
	SHMSel            uint32
	InterruptStatus   uint32
	ConfigGeneration  uint32
	NeedsReset        bool
	Device            virtio.CommonState
}

// Save returns the transport's state.
//
// Preconditions: the vCPUs are paused and the device's worker is paused
// (Common.Pause), so neither the registers nor the queues move.
func (t *Transport) Save() State {
	dev := t.dev.SaveCommon()
	t.mu.Lock()
	defer t.mu.Unlock()
	s := State{
		Status: t.status, DeviceFeaturesSel: t.devFeatSel, DriverFeaturesSel: t.drvFeatSel,
		DriverFeatures: t.drvFeatures, AckedFeatures: t.acked, QueueSel: t.queueSel, SHMSel: t.shmSel,
		InterruptStatus: t.intStatus.Load(), ConfigGeneration: t.configGen.Load(),
		NeedsReset: t.needsReset.Load(), Device: dev,
	}
	for _, r := range t.queues {
		s.Queues = append(s.Queues, QueueRegs{Num: r.num, Ready: r.ready, Desc: r.desc, Driver: r.driver, Device: r.device})
	}
	return s
}

// Restore replaces the transport's state with s and restores the device's
// generic state, re-activating it if it was active. Pending interrupt bits
// are restored but not re-signalled: the interrupt controller's own saved
// state carries any interrupt in flight.
//
// Preconditions: the vCPUs are not running.
func (t *Transport) Restore(s State) error {
	if len(s.Queues) != len(t.maxSizes) {
		return fmt.Errorf("restore virtio-mmio: %d queues, device has %d", len(s.Queues), len(t.maxSizes))
	}
	for i, r := range s.Queues {
		if r.Num > uint32(t.maxSizes[i]) {
			return fmt.Errorf("restore virtio-mmio: queue %d size %d above maximum %d", i, r.Num, t.maxSizes[i])
		}
	}
	if s.Status&^statusBits != 0 {
		return fmt.Errorf("restore virtio-mmio: bad status %#x", s.Status)
	}
	t.mu.Lock()
	gen := t.gen.Add(1)
	t.status, t.devFeatSel, t.drvFeatSel = s.Status, s.DeviceFeaturesSel, s.DriverFeaturesSel
	t.drvFeatures, t.acked, t.queueSel, t.shmSel = s.DriverFeatures, s.AckedFeatures, s.QueueSel, s.SHMSel
	for i, r := range s.Queues {
		t.queues[i] = queueRegs{num: r.Num, ready: r.Ready, desc: r.Desc, driver: r.Driver, device: r.Device}
	}
	t.intStatus.Store(s.InterruptStatus)
	t.configGen.Store(s.ConfigGeneration)
	t.needsReset.Store(s.NeedsReset)
	t.mu.Unlock()
	// Outside t.mu: RestoreCommon waits for the worker, which may be waiting
	// for t.mu to raise an interrupt.
	return t.dev.RestoreCommon(s.Device, t.mem, &interrupt{t: t, gen: gen})
}
