// Package rng is virtio-rng, the entropy device (virtio 1.2 §5.4): one
// request queue whose device-writable buffers the device fills from
// crypto/rand.
//
// Threading: the transport calls the virtio.Device methods on vCPU
// goroutines; requests are served on the device's worker goroutine (see
// package virtio). BytesServed may be read from any goroutine.
package rng

import (
	"crypto/rand"
	"log/slog"
	"sync/atomic"

	"github.com/huskvm/husk/internal/virtio"
)

const (
	// MaxBytesPerRequest caps the entropy served per request. Descriptors
	// may overlap, so a chain's length says nothing about real memory: the
	// cap bounds the work one request costs (cf. Firecracker's
	// MAX_ENTROPY_BYTES).
	MaxBytesPerRequest = 64 << 10
	// QueueSize is the request queue's maximum size.
	QueueSize = 256
)

// Device is a virtio-rng device.
type Device struct {
	virtio.Common
	log *slog.Logger

	served   atomic.Uint64 // bytes of entropy written to the guest
	requests atomic.Uint64 // requests completed

	badChain virtio.LogLimit
}

var _ virtio.Device = (*Device)(nil)

// New creates a virtio-rng device and starts its worker. log may be nil.
func New(log *slog.Logger) (*Device, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Device{log: log.With("device", "rng")}
	// No device features (§5.4.3); indirect descriptors and EVENT_IDX are
	// supported by the queue.
	if err := d.Init(virtio.FeatureIndirectDesc|virtio.FeatureEventIdx, []uint16{QueueSize}); err != nil {
		return nil, err
	}
	d.Start(d.process)
	return d, nil
}

// Type returns virtio.DeviceEntropy.
func (d *Device) Type() virtio.DeviceType { return virtio.DeviceEntropy }

// ReadConfig reads zeros: virtio-rng has no configuration space (§5.4.4).
func (d *Device) ReadConfig(offset uint64, data []byte) { clear(data) }

// WriteConfig ignores the write.
func (d *Device) WriteConfig(offset uint64, data []byte) {}

// BytesServed returns the bytes of entropy written to the guest so far.
func (d *Device) BytesServed() uint64 { return d.served.Load() }

// Requests returns the number of requests served so far.
func (d *Device) Requests() uint64 { return d.requests.Load() }

// Close stops the worker.
func (d *Device) Close() error { return d.Common.Close() }

func (d *Device) process(a *virtio.Activation) { a.Drain(a.Queues[0], d) }

// HandleChain fills the chain's writable buffers with random bytes, up to
// MaxBytesPerRequest; readable buffers are ignored (§5.4.6).
func (d *Device) HandleChain(_ *virtio.Queue, c *virtio.Chain) uint32 {
	w := c.Writable()
	n := 0
	for p := w.Next(MaxBytesPerRequest); p != nil; p = w.Next(MaxBytesPerRequest - n) {
		rand.Read(p) // never fails (crypto/rand, Go 1.24+)
		n += len(p)
	}
	d.served.Add(uint64(n))
	d.requests.Add(1)
	return uint32(n)
}

// BadChain logs a malformed chain.
func (d *Device) BadChain(_ *virtio.Queue, err error) {
	if dropped, ok := d.badChain.Allow(); ok {
		d.log.Warn("virtio_bad_chain", "err", err, "dropped", dropped)
	}
}
