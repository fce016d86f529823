package virtio

import "github.com/huskvm/husk/internal/guestmem"

// Device is a virtio device model as a transport sees it (cf.
// cloud-hypervisor's VirtioDevice). The lifecycle is:
//
//	constructor (starts the worker) → transport negotiates features
//	(Features, AckFeatures) → driver sets DRIVER_OK → Activate → the worker
//	serves queues → Reset (guest writes status 0) → Activate again … → Close
//
// Embedding Common provides everything but Type, ReadConfig, WriteConfig and
// Close. The transport calls every method except Close, SaveCommon and
// RestoreCommon on vCPU goroutines: they must not block.
type Device interface {
	// Type returns the virtio device ID.
	Type() DeviceType
	// Features returns the feature bits the device offers, including
	// FeatureVersion1.
	Features() uint64
	// AckFeatures records the driver's features, masked to those offered,
	// and returns the accepted set.
	AckFeatures(driver uint64) uint64
	// QueueMaxSizes returns each queue's maximum size; its length is the
	// number of queues.
	QueueMaxSizes() []uint16
	// ReadConfig fills data from the device configuration space at offset
	// (little-endian, §2.5). Bytes past its end read as zero.
	ReadConfig(offset uint64, data []byte)
	// WriteConfig writes the device configuration space; read-only fields
	// ignore writes.
	WriteConfig(offset uint64, data []byte)
	// Activate hands the device its queues once the driver sets DRIVER_OK.
	// queues has one entry per QueueMaxSizes entry. irq is how the device
	// signals the driver.
	Activate(mem *guestmem.Memory, queues []*Queue, irq Interrupt) error
	// Reset returns the device to its initial state (§2.4). In-flight work
	// is abandoned: the worker stops using the old queues.
	Reset()
	// Doorbell returns the event that wakes the device's worker.
	Doorbell() *Doorbell
	// SaveCommon returns the generic virtio state; it waits for the worker
	// to finish its current batch.
	SaveCommon() CommonState
	// RestoreCommon replaces the generic virtio state, re-activating the
	// device if s says it was active.
	RestoreCommon(s CommonState, mem *guestmem.Memory, irq Interrupt) error
	// Inspect returns the queues' state for debugging; it waits for the
	// worker to finish its current batch.
	Inspect() []QueueView
	// Close stops the worker and releases host resources.
	Close() error
}

// Interrupt is how a device notifies its driver; the transport implements
// it. The methods may be called from any goroutine and do not block.
type Interrupt interface {
	// UsedBuffer sends a used buffer notification (§2.3): virtio-mmio sets
	// InterruptStatus bit 0 and signals the irqfd.
	UsedBuffer()
	// ConfigChanged sends a configuration change notification (§2.3):
	// virtio-mmio bumps ConfigGeneration, sets InterruptStatus bit 1 and
	// signals the irqfd.
	ConfigChanged()
	// NeedsReset sets DEVICE_NEEDS_RESET in the device status and sends a
	// configuration change notification (§2.1.2).
	NeedsReset()
}

// ConfigRead copies the bytes of a configuration space image cfg at offset
// into data; bytes outside cfg read as zero. Devices use it for ReadConfig.
func ConfigRead(cfg []byte, offset uint64, data []byte) {
	clear(data)
	if offset >= uint64(len(cfg)) {
		return
	}
	copy(data, cfg[offset:])
}
