package blk

import (
	"fmt"
	"log/slog"
)

// State is the serialisable device-specific state of a virtio-blk device;
// the generic virtio state is saved with its transport (mmio.State). The
// backend is not state: the caller reopens it (the same raw image, or the
// same overlay over the same base) and passes it to Restore.
type State struct {
	Config   Config
	Capacity uint64 // sectors, checked against the reopened backend
}

// Save returns the device's state.
func (d *Device) Save() State { return State{Config: d.cfg, Capacity: d.capacity} }

// Restore creates a device from s over backend; the transport's Restore then
// re-activates it.
func Restore(s State, backend Backend, log *slog.Logger) (*Device, error) {
	if backend != nil && uint64(backend.Size())/SectorSize != s.Capacity {
		return nil, fmt.Errorf("restore virtio-blk: backend has %d sectors, state %d", uint64(backend.Size())/SectorSize, s.Capacity)
	}
	return New(backend, s.Config, log)
}
