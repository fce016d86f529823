package net

import (
	"log/slog"
	stdnet "net"
)

// State is the serialisable device-specific state of a virtio-net device;
// the generic virtio state is saved with its transport (mmio.State). Field
// order is the wire format.
//
// The backend is host plumbing, not state: Restore takes a fresh one, as
// it takes guest memory. A frame read from the backend and still waiting
// for a receive buffer is not saved: the network loses it, as networks do.
type State struct {
	MAC   [6]byte
	Stats Stats
}

// Save returns the device's state.
func (d *Device) Save() State {
	return State{MAC: [6]byte(d.cfg[:6]), Stats: d.Stats()}
}

// Restore creates a device on be carrying s; the transport's Restore then
// re-activates it. It owns be as New does.
func Restore(s State, be *Backend, log *slog.Logger) (*Device, error) {
	d, err := New(be, Config{MAC: stdnet.HardwareAddr(s.MAC[:]), Log: log})
	if err != nil {
		return nil, err
	}
	d.rxFrames.Store(s.Stats.RxFrames)
	d.rxBytes.Store(s.Stats.RxBytes)
	d.rxDropped.Store(s.Stats.RxDropped)
	d.txFrames.Store(s.Stats.TxFrames)
	d.txBytes.Store(s.Stats.TxBytes)
	d.txErrors.Store(s.Stats.TxErrors)
	d.txDropped.Store(s.Stats.TxDropped)
	return d, nil
}
