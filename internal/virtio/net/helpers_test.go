package net

import (
	"encoding/binary"
	"log/slog"
	stdnet "net"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/huskvm/husk/internal/eventfd"
	"github.com/huskvm/husk/internal/guestmem"
	"github.com/huskvm/husk/internal/virtio/mmio"
	vt "github.com/huskvm/husk/internal/virtio/virtiotest"
)

var testMAC = stdnet.HardwareAddr{0x02, 0x42, 0xac, 0x11, 0x00, 0x02}

// rig is a net device behind a virtio-mmio transport with a fake driver,
// on a backend given by the test.
type rig struct {
	mem *guestmem.Memory
	dev *Device
	drv *vt.Driver
}

const allFeatures = ^uint64(0)

func newRig(tb testing.TB, be *Backend, queueSize uint16) *rig {
	tb.Helper()
	mem := vt.NewMemory(tb, 16<<20)
	dev, err := New(be, Config{MAC: testMAC, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { dev.Close() })
	irq, err := eventfd.New()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { irq.Close() })
	tr, err := mmio.New(dev, mem, irq, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatal(err)
	}
	drv := vt.NewDriver(tb, tr, mem)
	if err := drv.Setup(allFeatures, queueSize); err != nil {
		tb.Fatal(err)
	}
	return &rig{mem: mem, dev: dev, drv: drv}
}

// seqpacketPair returns a backend on one end of a SOCK_SEQPACKET pair (one
// frame per message, like a TAP) and the other end as the test's "host",
// with a 10 s receive timeout so that a missing frame fails the test
// instead of hanging it.
func seqpacketPair(tb testing.TB) (*Backend, int) {
	tb.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	tv := unix.Timeval{Sec: 10}
	if err := unix.SetsockoptTimeval(fds[1], unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { unix.Close(fds[1]) })
	be, err := newBackend(fds[0], "pair", false)
	if err != nil {
		tb.Fatal(err)
	}
	return be, fds[1]
}

// ethFrame returns an n-byte Ethernet frame to testMAC with a local
// experimental EtherType (IEEE 802 0x88b5) and a payload derived from seed.
func ethFrame(n int, seed byte) []byte {
	f := make([]byte, n)
	copy(f, testMAC)
	copy(f[6:], []byte{0x02, 0, 0, 0, 0, 1})
	binary.BigEndian.PutUint16(f[12:], 0x88b5)
	for i := EthHeaderLen; i < n; i++ {
		f[i] = seed + byte(i*7)
	}
	return f
}

// txHeader is a valid transmit header without offloads: all zero.
var txHeader = make([]byte, HeaderSize)

// withHeader returns h followed by frame, as the chain or the backend
// carries them.
func withHeader(h, frame []byte) []byte { return append(append([]byte(nil), h...), frame...) }

// rxOffloads are the receive offloads a Linux driver accepts.
const rxOffloads = FeatureGuestCsum | FeatureGuestTSO4 | FeatureGuestTSO6

// hostRead reads one header and frame from the host end of a backend.
func hostRead(tb testing.TB, fd int) (hdr, frame []byte) {
	tb.Helper()
	b := make([]byte, HeaderSize+MaxFrameLen+1)
	n, err := unix.Read(fd, b)
	if err != nil || n < HeaderSize {
		tb.Fatalf("host read: %d bytes, %v", n, err)
	}
	return b[:HeaderSize], b[HeaderSize:n]
}

// hostWrite sends one header and frame from the host end of a backend.
func hostWrite(tb testing.TB, fd int, hdr, frame []byte) {
	tb.Helper()
	if _, err := unix.Write(fd, withHeader(hdr, frame)); err != nil {
		tb.Fatalf("host write: %v", err)
	}
}
