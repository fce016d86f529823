package rng

import "log/slog"

// State is the serialisable device-specific state of a virtio-rng device;
// the generic virtio state is saved with its transport (mmio.State).
type State struct {
	BytesServed uint64
	Requests    uint64
}

// Save returns the device's state.
func (d *Device) Save() State {
	return State{BytesServed: d.served.Load(), Requests: d.requests.Load()}
}

// Restore creates a device carrying s; the transport's Restore then
// re-activates it.
func Restore(s State, log *slog.Logger) (*Device, error) {
	d, err := New(log)
	if err != nil {
		return nil, err
	}
	d.served.Store(s.BytesServed)
	d.requests.Store(s.Requests)
	return d, nil
}
