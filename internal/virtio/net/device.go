package net

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	stdnet "net"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/huskvm/husk/internal/virtio"
)

// Queues of a virtio-net device without multiqueue (virtio 1.2 §5.1.2).
const (
	rxQueue = 0
	txQueue = 1
	// QueueSize is each queue's maximum size.
	QueueSize = 256
)

// Device feature bits husk offers (virtio 1.2 §5.1.3). The offloads are
// the TAP's own (IFF_VNET_HDR, TUNSETOFFLOAD): TCP segmentation and
// checksums both ways. UDP segmentation and ECN are not offered, nor
// VIRTIO_NET_F_MRG_RXBUF: a driver that accepts GUEST_TSO* posts receive
// buffers of 64 KiB (Linux's "big packets"), one chain per frame.
const (
	// FeatureCsum (VIRTIO_NET_F_CSUM): the device completes checksums
	// (NEEDS_CSUM) of transmitted frames.
	FeatureCsum uint64 = 1 << 0
	// FeatureGuestCsum (VIRTIO_NET_F_GUEST_CSUM): the driver completes
	// checksums of received frames, and trusts DATA_VALID.
	FeatureGuestCsum uint64 = 1 << 1
	// FeatureMAC (VIRTIO_NET_F_MAC): the configuration space holds the MAC.
	FeatureMAC uint64 = 1 << 5
	// FeatureGuestTSO4, FeatureGuestTSO6 (VIRTIO_NET_F_GUEST_TSO4/6): the
	// driver takes TCP frames of up to 64 KiB and segments them itself.
	FeatureGuestTSO4 uint64 = 1 << 7
	FeatureGuestTSO6 uint64 = 1 << 8
	// FeatureHostTSO4, FeatureHostTSO6 (VIRTIO_NET_F_HOST_TSO4/6): the
	// driver may send TCP frames of up to 64 KiB for the device to segment.
	FeatureHostTSO4 uint64 = 1 << 11
	FeatureHostTSO6 uint64 = 1 << 12
	// FeatureStatus (VIRTIO_NET_F_STATUS): the configuration space holds
	// the link status.
	FeatureStatus uint64 = 1 << 16
)

// offered are the device features; the transport adds VERSION_1.
const offered = virtio.FeatureIndirectDesc | virtio.FeatureEventIdx | FeatureMAC | FeatureStatus |
	FeatureCsum | FeatureGuestCsum | FeatureHostTSO4 | FeatureHostTSO6 | FeatureGuestTSO4 | FeatureGuestTSO6

// TAP offload flags (linux/if_tun.h TUN_F_*): what the device lets the
// host kernel hand it, set from what the driver accepted.
const (
	tunFCsum = 0x01
	tunFTSO4 = 0x02
	tunFTSO6 = 0x04
)

// statusLinkUp is VIRTIO_NET_S_LINK_UP. The link is always up: a TAP
// without a host address just drops what the guest sends.
const statusLinkUp = 1

// rxBatch bounds the frames one pass delivers, so that a host flooding the
// TAP cannot starve the transmit queue: after it the worker rings its own
// doorbell, serves TX, and comes back.
const rxBatch = 256

// Config configures a device.
type Config struct {
	// MAC is the guest's address (CheckMAC).
	MAC stdnet.HardwareAddr
	// Log receives the device's records; nil discards them.
	Log *slog.Logger
}

// Stats are a device's counters. Frame bytes exclude virtio headers.
type Stats struct {
	RxFrames, RxBytes uint64 // delivered to the guest
	// RxDropped counts frames from the backend that were not delivered:
	// shorter than an Ethernet header, longer than MaxFrameLen or than the
	// guest's receive buffer, or offloaded in a way the driver did not
	// accept.
	RxDropped         uint64
	TxFrames, TxBytes uint64 // written to the backend
	TxErrors          uint64 // transmit chains rejected: bad header or length
	TxDropped         uint64 // valid frames the backend refused
}

// Add adds o's counters to s.
func (s *Stats) Add(o Stats) {
	s.RxFrames += o.RxFrames
	s.RxBytes += o.RxBytes
	s.RxDropped += o.RxDropped
	s.TxFrames += o.TxFrames
	s.TxBytes += o.TxBytes
	s.TxErrors += o.TxErrors
	s.TxDropped += o.TxDropped
}

// Device is a virtio-net device (device id 1) whose host side is a Backend.
type Device struct {
	virtio.Common
	be  *Backend
	cfg [8]byte // mac[6], le16 status (§5.1.4); fixed at creation
	log *slog.Logger

	// The worker's own state.
	rxBuf  []byte             // header and frame from the backend, waiting for a receive buffer
	rxLen  int                // their length; 0 when none is waiting
	rxDead bool               // reading the backend failed for good; receive stops
	txHdr  [HeaderSize]byte   // the checked header of the frame being transmitted
	txIov  [][]byte           // txHdr, then the frame's pieces, aliasing guest memory
	tuned  *virtio.Activation // the activation the backend's offloads were set for

	armed   chan struct{} // capacity 1: the worker found the backend empty
	stop    chan struct{} // closed by Close: the watcher exits
	watched chan struct{} // closed when the watcher has exited

	rxFrames, rxBytes, rxDropped           atomic.Uint64
	txFrames, txBytes, txErrors, txDropped atomic.Uint64
	badChainLog, rxDropLog, txFailLog      virtio.LogLimit
}

var _ virtio.Device = (*Device)(nil)

// New creates a virtio-net device on be, which it owns from then on (it is
// closed on error too), and starts its worker and watcher.
func New(be *Backend, cfg Config) (*Device, error) {
	if err := CheckMAC(cfg.MAC); err != nil {
		be.Close()
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	d := &Device{
		be:      be,
		log:     cfg.Log.With("device", "net", "tap", be.Name()),
		rxBuf:   make([]byte, HeaderSize+MaxFrameLen+1), // one spare byte tells an oversized frame from a full one
		txIov:   make([][]byte, 0, 1+QueueSize),
		armed:   make(chan struct{}, 1),
		stop:    make(chan struct{}),
		watched: make(chan struct{}),
	}
	copy(d.cfg[:6], cfg.MAC)
	binary.LittleEndian.PutUint16(d.cfg[6:], statusLinkUp)
	if err := d.Init(offered, []uint16{QueueSize, QueueSize}); err != nil {
		be.Close()
		return nil, err
	}
	go d.watch()
	d.Start(d.process)
	d.log.Info("net_attached", "mac", cfg.MAC.String())
	return d, nil
}

// Type returns virtio.DeviceNet.
func (d *Device) Type() virtio.DeviceType { return virtio.DeviceNet }

// ReadConfig reads the configuration space: the MAC and the link status.
func (d *Device) ReadConfig(offset uint64, data []byte) { virtio.ConfigRead(d.cfg[:], offset, data) }

// WriteConfig ignores the write: without VIRTIO_NET_F_CTRL_MAC_ADDR the
// driver must not change the MAC (§5.1.4.2).
func (d *Device) WriteConfig(offset uint64, data []byte) {}

// MAC returns the guest's address.
func (d *Device) MAC() stdnet.HardwareAddr { return append(stdnet.HardwareAddr(nil), d.cfg[:6]...) }

// Stats returns the device's counters; any goroutine may call it.
func (d *Device) Stats() Stats {
	return Stats{
		RxFrames: d.rxFrames.Load(), RxBytes: d.rxBytes.Load(), RxDropped: d.rxDropped.Load(),
		TxFrames: d.txFrames.Load(), TxBytes: d.txBytes.Load(),
		TxErrors: d.txErrors.Load(), TxDropped: d.txDropped.Load(),
	}
}

// Close stops the worker, then closes the backend, which wakes the watcher,
// and waits for the watcher to exit.
func (d *Device) Close() error {
	err := d.Common.Close()
	close(d.stop)
	if cerr := d.be.Close(); err == nil {
		err = cerr
	}
	<-d.watched
	return err
}

// process serves the transmit queue, then moves waiting frames to the
// guest. A new activation first gets the backend's offloads.
func (d *Device) process(a *virtio.Activation) {
	if d.tuned != a {
		d.tuned = a
		d.setOffload()
	}
	a.Drain(a.Queues[txQueue], d)
	d.receive(a)
}

// setOffload lets the host kernel send the backend the offloaded frames
// (partial checksums, TCP segments of up to 64 KiB) that the driver
// accepted; it segments and checksums the rest itself.
func (d *Device) setOffload() {
	acked := d.AckedFeatures()
	var f uint
	if acked&FeatureGuestCsum != 0 {
		f |= tunFCsum
		if acked&FeatureGuestTSO4 != 0 {
			f |= tunFTSO4
		}
		if acked&FeatureGuestTSO6 != 0 {
			f |= tunFTSO6
		}
	}
	if err := d.be.setOffload(f); err != nil {
		// Frames the driver cannot take are then dropped on receive.
		d.log.Error("net_set_offload_failed", "flags", f, "err", err)
	}
}

// HandleChain transmits one frame from the transmit queue. The driver gets
// every chain back with length 0: the device writes nothing into it.
func (d *Device) HandleChain(q *virtio.Queue, c *virtio.Chain) uint32 {
	if err := d.transmit(c); err != nil {
		d.txErrors.Add(1)
		d.BadChain(q, err)
	}
	return 0
}

// transmit checks the chain's header and writes its frame to the backend
// straight from guest memory. It returns an error for a malformed chain
// only; a frame the backend refuses is dropped and counted.
func (d *Device) transmit(c *virtio.Chain) error {
	r := c.Readable()
	n, _ := r.Read(d.txHdr[:])
	frameLen := r.Len()
	h, err := ParseHeader(d.txHdr[:n], frameLen, d.AckedFeatures())
	if err != nil {
		return err
	}
	h.Put(d.txHdr[:])
	iov := append(d.txIov[:0], d.txHdr[:])
	for p := r.Next(frameLen); p != nil; p = r.Next(frameLen) {
		iov = append(iov, p)
	}
	d.txIov = iov
	w, err := d.be.write(iov)
	if err == nil && w != HeaderSize+frameLen {
		err = fmt.Errorf("short write: %d of %d bytes", w, HeaderSize+frameLen)
	}
	if err != nil {
		// The host side is down, gone or full: the network drops the
		// frame, as a cable would.
		d.txDropped.Add(1)
		if dropped, ok := d.txFailLog.Allow(); ok {
			d.log.Warn("net_tx_dropped", "err", err, "dropped", dropped)
		}
		return nil
	}
	d.txFrames.Add(1)
	d.txBytes.Add(uint64(frameLen))
	return nil
}

// BadChain logs a malformed chain or frame, rate-limited.
func (d *Device) BadChain(_ *virtio.Queue, err error) {
	if dropped, ok := d.badChainLog.Allow(); ok {
		d.log.Warn("virtio_bad_chain", "err", err, "dropped", dropped)
	}
}

// receive delivers frames from the backend until it is empty, the guest
// has no receive buffer left, or a batch is done. Notifications on the
// receive queue stay off except while a frame waits for a buffer: then the
// driver's refill must kick the worker (§2.7.10).
func (d *Device) receive(a *virtio.Activation) {
	q := a.Queues[rxQueue]
	defer func() {
		if q.NeedsInterrupt() {
			a.Interrupt.UsedBuffer()
		}
	}()
	q.DisableNotification()
	for range rxBatch {
		if a.Stopped() || d.rxDead {
			return
		}
		if d.rxLen == 0 {
			if !d.fill() {
				return
			}
			if d.rxLen == 0 {
				continue // dropped one
			}
		}
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
			more, err := q.EnableNotification()
			if err != nil {
				d.BadChain(q, err)
				a.Fail()
				return
			}
			if !more {
				return // the frame waits in rxBuf for the driver's kick
			}
			q.DisableNotification()
			continue
		}
		if err := q.AddUsed(c.Head, d.deliver(c)); err != nil {
			d.BadChain(q, err)
			a.Fail()
			return
		}
	}
	d.Doorbell().Ring() // the batch is done, not necessarily the backend
}

// fill reads the backend's next frame into rxBuf. It returns false when
// there is none: the backend is empty (then the watcher is armed) or dead.
// An unusable frame is dropped, leaving rxLen 0.
func (d *Device) fill() bool {
	n, err := d.be.read(d.rxBuf)
	switch {
	case err == unix.EAGAIN:
		d.arm()
		return false
	case err == unix.EINTR:
		return true
	case err != nil || n == 0:
		// A TAP fails for good (EBADFD once its interface is deleted); a
		// zero-length read is a socket backend's end of stream. Either
		// way nothing more will come, and retrying would spin.
		d.rxDead = true
		d.log.Error("net_backend_read_failed", "err", err, "n", n)
		return false
	case n < HeaderSize+EthHeaderLen || n > HeaderSize+MaxFrameLen:
		d.rxDropped.Add(1)
		if dropped, ok := d.rxDropLog.Allow(); ok {
			d.log.Warn("net_rx_bad_frame_length", "len", n, "dropped", dropped)
		}
		return true
	}
	d.rxLen = n
	return true
}

// deliver copies the waiting header and frame into c and returns the bytes
// written. A frame the driver cannot take (an offload it did not accept, or
// longer than the chain: waiting for a bigger buffer could wait forever)
// is dropped, and the chain goes back empty.
func (d *Device) deliver(c *virtio.Chain) uint32 {
	buf := d.rxBuf[:d.rxLen]
	d.rxLen = 0
	err := prepareRX(buf, d.AckedFeatures())
	if err == nil && c.WritableLen() < len(buf) {
		err = fmt.Errorf("a %d-byte frame for a %d-byte buffer", len(buf), c.WritableLen())
	}
	if err != nil {
		d.rxDropped.Add(1)
		if dropped, ok := d.rxDropLog.Allow(); ok {
			d.log.Warn("net_rx_dropped", "err", err, "dropped", dropped)
		}
		return 0
	}
	w := c.Writable()
	w.Write(buf)
	d.rxFrames.Add(1)
	d.rxBytes.Add(uint64(len(buf) - HeaderSize))
	return uint32(len(buf))
}

// arm asks the watcher to ring the doorbell once the backend is readable.
func (d *Device) arm() {
	select {
	case d.armed <- struct{}{}:
	default: // already armed
	}
}

// watch runs on its own goroutine until Close: each time the worker arms
// it, it waits for the backend to become readable and rings the doorbell.
// It only waits when asked, so a frame the guest has no buffer for does not
// make it spin.
func (d *Device) watch() {
	defer close(d.watched)
	for {
		select {
		case <-d.armed:
		case <-d.stop:
			return
		}
		if err := d.be.waitReadable(); err != nil {
			if !errors.Is(err, os.ErrClosed) {
				d.log.Error("net_backend_wait_failed", "err", err) // receive stalls
			}
			return
		}
		d.Doorbell().Ring()
	}
}
