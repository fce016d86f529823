package net

import (
	"bytes"
	"encoding/binary"
	"os"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/huskvm/husk/internal/testutil/kvmtest"
	vt "github.com/huskvm/husk/internal/virtio/virtiotest"
)

// netns is an OS thread in a fresh network namespace that runs functions
// for a test, so that the test's TAPs and sockets touch nothing on the host
// and cannot collide with another test's. Descriptors opened there keep
// their namespace after the thread is gone.
type netns struct{ fns chan func() }

func newNetns(t *testing.T) *netns {
	t.Helper()
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		kvmtest.Unavailable(t, "no TUN/TAP: %v", err)
	}
	n := &netns{fns: make(chan func())}
	started := make(chan error)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread is in another namespace, so it
		// must die with this goroutine.
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			started <- err
			return
		}
		started <- nil
		for fn := range n.fns {
			fn()
		}
	}()
	if err := <-started; err != nil {
		kvmtest.Unavailable(t, "unshare(CLONE_NEWNET): %v (needs CAP_SYS_ADMIN)", err)
	}
	t.Cleanup(func() { close(n.fns) })
	return n
}

// do runs fn in the namespace.
func (n *netns) do(fn func() error) error {
	errc := make(chan error)
	n.fns <- func() { errc <- fn() }
	return <-errc
}

// tapHost is a TAP's host side in a test namespace: the interface is up
// and a packet socket bound to it sends and receives raw frames.
type tapHost struct {
	tap    *Backend
	packet int // AF_PACKET socket on the interface
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func openTAPHost(t *testing.T, ns *netns, name string) tapHost {
	t.Helper()
	var h tapHost
	err := ns.do(func() error {
		var err error
		if h.tap, err = OpenTAP(name); err != nil {
			return err
		}
		s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(s)
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return err
		}
		if err := unix.IoctlIfreq(s, unix.SIOCGIFFLAGS, ifr); err != nil {
			return err
		}
		ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
		if err := unix.IoctlIfreq(s, unix.SIOCSIFFLAGS, ifr); err != nil {
			return err
		}
		if err := unix.IoctlIfreq(s, unix.SIOCGIFINDEX, ifr); err != nil {
			return err
		}
		idx := int(ifr.Uint32())
		if h.packet, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL))); err != nil {
			return err
		}
		tv := unix.Timeval{Sec: 10}
		if err := unix.SetsockoptTimeval(h.packet, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		return unix.Bind(h.packet, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: idx})
	})
	if err != nil {
		if h.tap != nil {
			h.tap.Close()
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(h.packet) })
	return h
}

// recvTest returns the next frame on the packet socket with the test's
// EtherType: once up, the interface also carries the kernel's own IPv6
// chatter.
func (h tapHost) recvTest(t *testing.T) []byte {
	t.Helper()
	b := make([]byte, 2048)
	for {
		n, err := unix.Read(h.packet, b)
		if err != nil {
			t.Fatalf("packet socket: %v", err)
		}
		if n >= EthHeaderLen && binary.BigEndian.Uint16(b[12:]) == 0x88b5 {
			return b[:n]
		}
	}
}

// TestTAP runs frames both ways between the device and a real TAP.
func TestTAP(t *testing.T) {
	h := openTAPHost(t, newNetns(t), "husktest0")
	r := newRig(t, h.tap, 64)

	// Guest to host: the frame leaves the TAP on the host side.
	out := ethFrame(1514, 11)
	b := withHeader(txHeader, out)
	r.drv.Submit(1, vt.Buf{Addr: r.drv.Buffer(b), Len: uint32(len(b))})
	if got := h.recvTest(t); !bytes.Equal(got, out) {
		t.Fatalf("host got %d bytes, want the %d-byte frame", len(got), len(out))
	}

	// Host to guest: frames the host sends on the interface arrive in the
	// guest's buffers, other traffic (IPv6 autoconfiguration) interleaved.
	var heads []uint16
	var datas []uint64
	for range 32 {
		hd, _, d := r.rxBuf(1518)
		heads, datas = append(heads, hd), append(datas, d)
	}
	r.drv.Kick(0)
	want := [][]byte{ethFrame(60, 21), ethFrame(1514, 22), ethFrame(700, 23)}
	for _, f := range want {
		if _, err := unix.Write(h.packet, f); err != nil {
			t.Fatal(err)
		}
	}
	var got [][]byte
	for i := 0; len(got) < len(want); i++ {
		if i == len(heads) {
			t.Fatalf("32 receive buffers used, %d test frames among them", len(got))
		}
		id, n := r.drv.WaitUsed(0)
		if id != heads[i] || n < HeaderSize {
			t.Fatalf("used %d/%d, want head %d", id, n, heads[i])
		}
		f := r.drv.Bytes(datas[i], int(n)-HeaderSize)
		if binary.BigEndian.Uint16(f[12:]) == 0x88b5 {
			got = append(got, f)
		}
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("frame %d: got %d bytes, want %d", i, len(got[i]), len(want[i]))
		}
	}
}

func TestOpenTAPErrors(t *testing.T) {
	if _, err := OpenTAP("bad/name"); err == nil || !strings.Contains(err.Error(), "'/'") {
		t.Fatalf("OpenTAP(bad/name) = %v", err)
	}
	ns := newNetns(t)
	h := openTAPHost(t, ns, "husktest1")
	defer h.tap.Close()
	// A single-queue TAP takes one attachment: a second VM on it fails
	// with the reason, rather than the two sharing frames.
	err := ns.do(func() error {
		be, err := OpenTAP("husktest1")
		if err == nil {
			be.Close()
		}
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "another process is attached") {
		t.Fatalf("second OpenTAP = %v", err)
	}
}
