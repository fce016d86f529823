package vsock

import (
	"encoding/binary"
	"log/slog"

	"github.com/huskvm/husk/internal/virtio"
)

// Queues of a vsock device (virtio 1.2 §5.10.2).
const (
	rxQueue    = 0 // device -> driver packets
	txQueue    = 1 // driver -> device packets
	eventQueue = 2 // transport events; husk sends none
	// QueueSize is each queue's maximum size.
	QueueSize = 256
)

// Device is a virtio-vsock device (device id 19) whose host side is a Muxer.
//
// Threading: the transport calls the virtio.Device methods on vCPU
// goroutines; packets move on the device's worker goroutine, which the
// guest's doorbell and the Muxer's wake both ring.
type Device struct {
	virtio.Common
	mux *Muxer
	cfg [8]byte // guest_cid, little-endian
	log *slog.Logger

	// scratch holds one packet on its way in or out; only the worker uses it.
	scratch  [HeaderSize + MaxPayload]byte
	badChain virtio.LogLimit
}

var _ virtio.Device = (*Device)(nil)

// New creates a vsock device for guest CID cfg.GuestCID whose host side
// listens on cfg.Path (see Muxer), and starts its worker. cfg.Wake is set by
// New.
func New(cfg Config) (*Device, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	d := &Device{log: cfg.Log.With("device", "vsock")}
	binary.LittleEndian.PutUint64(d.cfg[:], cfg.GuestCID)
	if err := d.Init(virtio.FeatureIndirectDesc|virtio.FeatureEventIdx, []uint16{QueueSize, QueueSize, QueueSize}); err != nil {
		return nil, err
	}
	cfg.Wake = d.Doorbell().Ring
	cfg.Log = d.log
	m, err := NewMuxer(cfg)
	if err != nil {
		d.Common.Close()
		return nil, err
	}
	d.mux = m
	d.Start(d.process)
	return d, nil
}

// Type returns virtio.DeviceVsock.
func (d *Device) Type() virtio.DeviceType { return virtio.DeviceVsock }

// ReadConfig reads the configuration space: the guest's CID (§5.10.4).
func (d *Device) ReadConfig(offset uint64, data []byte) { virtio.ConfigRead(d.cfg[:], offset, data) }

// WriteConfig ignores the write: the configuration is read-only.
func (d *Device) WriteConfig(offset uint64, data []byte) {}

// Muxer returns the host side, for its statistics.
func (d *Device) Muxer() *Muxer { return d.mux }

// Reset drops every connection, as a guest driver reset means its sockets
// are gone, then resets the queues.
func (d *Device) Reset() {
	d.mux.dropAll()
	d.Common.Reset()
}

// Close stops the worker and the host side.
func (d *Device) Close() error {
	err := d.Common.Close()
	if cerr := d.mux.Close(); err == nil {
		err = cerr
	}
	return err
}

// process moves packets both ways until neither direction has work.
func (d *Device) process(a *virtio.Activation) {
	a.Drain(a.Queues[txQueue], d)
	d.fillRX(a)
}

// fillRX hands the Muxer's pending packets to the guest while it has RX
// buffers. It always leaves with notifications enabled, so that when it ran
// out of buffers the guest's next refill kicks the worker again.
func (d *Device) fillRX(a *virtio.Activation) {
	q := a.Queues[rxQueue]
	for !a.Stopped() {
		q.DisableNotification()
		for !a.Stopped() && d.mux.pending() {
			c, err := q.Pop()
			if err != nil {
				d.BadChain(q, err)
				if virtio.IsFatal(err) {
					a.Fail()
					return
				}
				continue
			}
			if c == nil {
				break
			}
			w := c.Writable()
			n := d.mux.NextToGuest(d.scratch[:min(w.Len(), len(d.scratch))])
			w.Write(d.scratch[:n])
			if err := q.AddUsed(c.Head, uint32(n)); err != nil {
				d.BadChain(q, err)
				a.Fail()
				return
			}
		}
		if q.NeedsInterrupt() {
			a.Interrupt.UsedBuffer()
		}
		more, err := q.EnableNotification()
		if err != nil {
			d.BadChain(q, err)
			a.Fail()
			return
		}
		if !more || !d.mux.pending() {
			return
		}
	}
}

// HandleChain takes one packet from the TX queue: a header, then its
// payload, in the chain's readable part.
func (d *Device) HandleChain(q *virtio.Queue, c *virtio.Chain) uint32 {
	r := c.Readable()
	hdr := d.scratch[:HeaderSize]
	if n, _ := r.Read(hdr); n < HeaderSize {
		d.BadChain(q, ErrShortHeader)
		return 0
	}
	h, err := ParseHeader(hdr)
	if err != nil {
		d.BadChain(q, err)
		return 0
	}
	payload := d.scratch[HeaderSize : HeaderSize+int(h.Len)]
	if n, _ := r.Read(payload); n < int(h.Len) {
		d.BadChain(q, ErrBadLength)
		return 0
	}
	d.mux.FromGuest(h, payload)
	return 0
}

// BadChain logs a malformed chain or packet, rate-limited.
func (d *Device) BadChain(_ *virtio.Queue, err error) {
	if dropped, ok := d.badChain.Allow(); ok {
		d.log.Warn("virtio_bad_chain", "err", err, "dropped", dropped)
	}
}
