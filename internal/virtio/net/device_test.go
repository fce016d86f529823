package net

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/huskvm/husk/internal/virtio"
	vt "github.com/huskvm/husk/internal/virtio/virtiotest"
)

func TestFeaturesAndConfig(t *testing.T) {
	be, _ := seqpacketPair(t)
	r := newRig(t, be, 16)
	if r.dev.Type() != virtio.DeviceNet {
		t.Fatal(r.dev.Type())
	}
	want := virtio.FeatureVersion1 | virtio.FeatureIndirectDesc | virtio.FeatureEventIdx | FeatureMAC | FeatureStatus |
		txOffloads | rxOffloads
	if r.drv.Acked != want {
		t.Fatalf("negotiated %#x, want %#x (no UFO, ECN, mergeable buffers, control queue or multiqueue)", r.drv.Acked, want)
	}
	if n := len(r.drv.Queues); n != 2 {
		t.Fatalf("%d queues, want receive and transmit", n)
	}
	cfg := r.drv.ReadConfig(0, 10)
	if !bytes.Equal(cfg[:6], testMAC) || binary.LittleEndian.Uint16(cfg[6:]) != statusLinkUp || cfg[8] != 0 || cfg[9] != 0 {
		t.Fatalf("config space % x, want MAC %s, link up, then zeros", cfg, testMAC)
	}
	r.drv.Bus.Write(vt.RegConfig, []byte{0xff})
	if !bytes.Equal(r.dev.MAC(), testMAC) {
		t.Fatalf("a driver write changed the MAC to %s", r.dev.MAC())
	}
}

func TestTransmit(t *testing.T) {
	be, host := seqpacketPair(t)
	r := newRig(t, be, 16)
	tx := 1
	f1, f2, big := ethFrame(1514, 1), ethFrame(60, 2), ethFrame(30000, 3)
	tso := hdr(hdrFNeedsCsum, gsoTCPv4, 66, 1448, 34, 16, 7)
	tsoOut := hdr(hdrFNeedsCsum, gsoTCPv4, 66, 1448, 34, 16) // num_buffers is not passed on
	for _, tc := range []struct {
		name    string
		hdr     []byte // what the host must see
		frame   []byte
		bufs    func() []vt.Buf
		nframes int
	}{
		{"header and frame in one buffer", txHeader, f1, func() []vt.Buf {
			b := withHeader(txHeader, f1)
			return []vt.Buf{{Addr: r.drv.Buffer(b), Len: uint32(len(b))}}
		}, 1},
		{"header split, frame in pieces", txHeader, f1, func() []vt.Buf {
			b := withHeader(txHeader, f1)
			return []vt.Buf{
				{Addr: r.drv.Buffer(b[:5]), Len: 5},
				{Addr: r.drv.Buffer(b[5:112]), Len: 107},
				{Addr: r.drv.Buffer(b[112:]), Len: uint32(len(b) - 112)},
			}
		}, 1},
		{"writable buffer ignored", txHeader, f2, func() []vt.Buf {
			return []vt.Buf{
				{Addr: r.drv.Buffer(txHeader), Len: HeaderSize},
				{Addr: r.drv.Buffer(f2), Len: uint32(len(f2))},
				{Addr: r.drv.Alloc(64), Len: 64, Write: true},
			}
		}, 1},
		{"meaningless header fields zeroed", txHeader, f2, func() []vt.Buf {
			b := withHeader(hdr(0, 0, 1, 2, 3, 4, 5), f2)
			return []vt.Buf{{Addr: r.drv.Buffer(b), Len: uint32(len(b))}}
		}, 1},
		{"segmentation offload", tsoOut, big, func() []vt.Buf {
			return []vt.Buf{
				{Addr: r.drv.Buffer(tso), Len: HeaderSize},
				{Addr: r.drv.Buffer(big), Len: uint32(len(big))},
			}
		}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if n := r.drv.Submit(tx, tc.bufs()...); n != 0 {
				t.Fatalf("used length %d, want 0", n)
			}
			h, f := hostRead(t, host)
			if !bytes.Equal(h, tc.hdr) || !bytes.Equal(f, tc.frame) {
				t.Fatalf("host got header % x and %d bytes, want % x and the %d-byte frame", h, len(f), tc.hdr, len(tc.frame))
			}
		})
	}
	t.Run("indirect", func(t *testing.T) {
		table := r.drv.Alloc(32)
		head := r.drv.Queues[tx].AddIndirect(table,
			vt.Buf{Addr: r.drv.Buffer(txHeader), Len: HeaderSize},
			vt.Buf{Addr: r.drv.Buffer(f2), Len: uint32(len(f2))})
		r.drv.Kick(tx)
		if id, n := r.drv.WaitUsed(tx); id != head || n != 0 {
			t.Fatalf("used %d/%d, want %d/0", id, n, head)
		}
		if _, f := hostRead(t, host); !bytes.Equal(f, f2) {
			t.Fatalf("host got %d bytes", len(f))
		}
	})
	if s := r.dev.Stats(); s.TxFrames != 6 || s.TxBytes != 2*1514+3*60+30000 || s.TxErrors != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// TestTransmitRejects: a malformed chain comes back unused and counted,
// nothing reaches the host, and the queue keeps working.
func TestTransmitRejects(t *testing.T) {
	be, host := seqpacketPair(t)
	r := newRig(t, be, 16)
	tx := 1
	withHdr := func(h []byte, frame []byte) []vt.Buf {
		b := withHeader(h, frame)
		return []vt.Buf{{Addr: r.drv.Buffer(b), Len: uint32(len(b))}}
	}
	for _, tc := range []struct {
		name string
		bufs func() []vt.Buf
	}{
		{"empty chain", func() []vt.Buf { return []vt.Buf{{Addr: r.drv.Alloc(16), Len: 0}} }},
		{"short header", func() []vt.Buf { return withHdr(txHeader[:7], nil) }},
		{"header only", func() []vt.Buf { return withHdr(txHeader, nil) }},
		{"runt frame", func() []vt.Buf { return withHdr(txHeader, ethFrame(60, 0)[:EthHeaderLen-1]) }},
		{"checksum past the frame", func() []vt.Buf { return withHdr(hdr(hdrFNeedsCsum, 0, 0, 0, 50, 9), ethFrame(60, 0)) }},
		{"segmentation without NEEDS_CSUM", func() []vt.Buf { return withHdr(hdr(0, gsoTCPv4, 66, 1448), ethFrame(9000, 0)) }},
		{"udp segmentation", func() []vt.Buf { return withHdr(hdr(hdrFNeedsCsum, gsoUDP, 42, 1472, 34, 6), ethFrame(9000, 0)) }},
		{"oversized frame", func() []vt.Buf {
			big := r.drv.Alloc(MaxFrameLen + 1)
			return []vt.Buf{{Addr: r.drv.Buffer(txHeader), Len: HeaderSize}, {Addr: big, Len: MaxFrameLen + 1}}
		}},
		{"overlapping buffers adding up past the cap", func() []vt.Buf {
			b := r.drv.Buffer(withHeader(txHeader, ethFrame(40000, 0)))
			return []vt.Buf{{Addr: b, Len: 40012}, {Addr: b, Len: 40012}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := r.dev.Stats().TxErrors
			if n := r.drv.Submit(tx, tc.bufs()...); n != 0 {
				t.Fatalf("used length %d", n)
			}
			if got := r.dev.Stats().TxErrors; got != before+1 {
				t.Fatalf("TxErrors %d, want %d", got, before+1)
			}
		})
	}
	good := ethFrame(100, 9)
	r.drv.Submit(tx, withHdr(txHeader, good)...)
	if _, f := hostRead(t, host); !bytes.Equal(f, good) {
		t.Fatalf("after the rejects the host got %d bytes; want only the good frame", len(f))
	}
	if s := r.dev.Stats(); s.TxFrames != 1 {
		t.Fatalf("stats %+v", s)
	}
	if st := r.drv.Status(); st&virtio.StatusNeedsReset != 0 {
		t.Fatalf("device needs reset (status %#x) after bad frames", st)
	}
}

// TestTransmitWithoutOffloads: a driver that accepted no offload cannot
// ask for one.
func TestTransmitWithoutOffloads(t *testing.T) {
	be, host := seqpacketPair(t)
	r := newRig(t, be, 16)
	if err := r.drv.Setup(allFeatures&^(txOffloads|rxOffloads), 16); err != nil {
		t.Fatal(err)
	}
	for _, h := range [][]byte{
		hdr(hdrFNeedsCsum, 0, 0, 0, 34, 16),
		hdr(hdrFNeedsCsum, gsoTCPv4, 66, 1448, 34, 16),
	} {
		b := withHeader(h, ethFrame(3000, 0))
		r.drv.Submit(1, vt.Buf{Addr: r.drv.Buffer(b), Len: uint32(len(b))})
	}
	b := withHeader(txHeader, ethFrame(60, 1))
	r.drv.Submit(1, vt.Buf{Addr: r.drv.Buffer(b), Len: uint32(len(b))})
	if h, f := hostRead(t, host); !bytes.Equal(h, txHeader) || !bytes.Equal(f, ethFrame(60, 1)) {
		t.Fatal("host got something else than the plain frame")
	}
	if s := r.dev.Stats(); s.TxErrors != 2 || s.TxFrames != 1 {
		t.Fatalf("stats %+v", s)
	}
}

// rxBuf posts one receive chain of a header buffer and a data buffer, as
// Linux posts them with separate headers, and returns their addresses.
func (r *rig) rxBuf(size uint32) (head uint16, hdrAddr, data uint64) {
	hdrAddr, data = r.drv.Alloc(HeaderSize), r.drv.Alloc(int(size))
	head = r.drv.Queues[0].AddChain(vt.Buf{Addr: hdrAddr, Len: HeaderSize, Write: true}, vt.Buf{Addr: data, Len: size, Write: true})
	return head, hdrAddr, data
}

func TestReceive(t *testing.T) {
	be, host := seqpacketPair(t)
	r := newRig(t, be, 16)
	// One buffer in a single descriptor, header and data together, and
	// two with separate headers, one of them 64 KiB for a TSO frame.
	one := r.drv.Alloc(HeaderSize + 1518)
	head1 := r.drv.Queues[0].AddChain(vt.Buf{Addr: one, Len: HeaderSize + 1518, Write: true})
	head2, hdr2, data2 := r.rxBuf(1518)
	head3, hdr3, data3 := r.rxBuf(65550)
	r.drv.Kick(0)
	f1, f2, f3 := ethFrame(1514, 3), ethFrame(42, 4), ethFrame(65000, 5)
	tso := hdr(hdrFNeedsCsum, gsoTCPv4, 66, 1448, 34, 16)
	hostWrite(t, host, hdr(0, 0, 0, 0, 0, 0, 0xbeef), f1) // num_buffers is the device's to set
	hostWrite(t, host, hdr(hdrFDataValid, 0), f2)
	hostWrite(t, host, tso, f3)
	if id, n := r.drv.WaitUsed(0); id != head1 || n != HeaderSize+1514 {
		t.Fatalf("used %d/%d, want %d/%d", id, n, head1, HeaderSize+1514)
	}
	if got := r.drv.Bytes(one, HeaderSize+1514); !bytes.Equal(got[:HeaderSize], hdr(0, 0, 0, 0, 0, 0, 1)) || !bytes.Equal(got[HeaderSize:], f1) {
		t.Fatal("first frame corrupted")
	}
	if id, n := r.drv.WaitUsed(0); id != head2 || n != HeaderSize+42 {
		t.Fatalf("used %d/%d, want %d/%d", id, n, head2, HeaderSize+42)
	}
	if !bytes.Equal(r.drv.Bytes(hdr2, HeaderSize), hdr(hdrFDataValid, 0, 0, 0, 0, 0, 1)) || !bytes.Equal(r.drv.Bytes(data2, 42), f2) {
		t.Fatal("second frame corrupted")
	}
	if id, n := r.drv.WaitUsed(0); id != head3 || n != HeaderSize+65000 {
		t.Fatalf("used %d/%d, want %d/%d", id, n, head3, HeaderSize+65000)
	}
	tso[10] = 1
	if !bytes.Equal(r.drv.Bytes(hdr3, HeaderSize), tso) || !bytes.Equal(r.drv.Bytes(data3, 65000), f3) {
		t.Fatal("TSO frame corrupted")
	}
	if s := r.dev.Stats(); s.RxFrames != 3 || s.RxBytes != 1514+42+65000 || s.RxDropped != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// TestReceiveDrops: frames that cannot be delivered are dropped and
// counted, each without taking the next frame down with it.
func TestReceiveDrops(t *testing.T) {
	be, host := seqpacketPair(t)
	r := newRig(t, be, 16)
	if err := r.drv.Setup(allFeatures&^(FeatureGuestTSO4|FeatureGuestTSO6), 16); err != nil {
		t.Fatal(err)
	}
	for _, m := range [][]byte{
		withHeader(txHeader, ethFrame(1514, 5)),                // for a buffer too small
		withHeader(txHeader, ethFrame(MaxFrameLen+1, 6)),       // longer than any frame
		withHeader(txHeader, ethFrame(60, 7)[:EthHeaderLen-1]), // shorter than any frame
		txHeader[:7], // not even a header
		withHeader(hdr(hdrFNeedsCsum, gsoTCPv4, 66, 1448, 34, 16), ethFrame(9000, 8)), // TSO the driver did not accept
		withHeader(txHeader, ethFrame(100, 9)),                                        // delivered
	} {
		if _, err := unix.Write(host, m); err != nil {
			t.Fatal(err)
		}
	}
	small, _, _ := r.rxBuf(1000)
	r.drv.Kick(0)
	if id, n := r.drv.WaitUsed(0); id != small || n != 0 {
		t.Fatalf("small buffer came back %d/%d, want %d/0", id, n, small)
	}
	big, _, _ := r.rxBuf(65550)
	r.drv.Kick(0)
	if id, n := r.drv.WaitUsed(0); id != big || n != 0 {
		t.Fatalf("big buffer came back %d/%d, want %d/0 (the TSO frame dropped)", id, n, big)
	}
	head, _, data := r.rxBuf(1518)
	r.drv.Kick(0)
	if id, n := r.drv.WaitUsed(0); id != head || n != HeaderSize+100 || !bytes.Equal(r.drv.Bytes(data, 100), ethFrame(100, 9)) {
		t.Fatalf("used %d/%d, want %d/%d with the last frame", id, n, head, HeaderSize+100)
	}
	if s := r.dev.Stats(); s.RxDropped != 5 || s.RxFrames != 1 {
		t.Fatalf("stats %+v", s)
	}
}

// TestReceiveRefillKicks: frames arrive while the guest has no receive
// buffer; the device must ask for a kick (EVENT_IDX's avail_event), and a
// driver that kicks only when asked, as Linux does, still gets every frame
// in order.
func TestReceiveRefillKicks(t *testing.T) {
	be, host := seqpacketPair(t)
	r := newRig(t, be, 8)
	rx := r.drv.Queues[0]
	const frames = 40
	for i := range frames {
		hostWrite(t, host, txHeader, ethFrame(60+i, byte(i)))
	}
	added := uint16(0)
	addRX := func() {
		old := added
		r.rxBuf(1518)
		added++
		if ev := rx.AvailEvent(); uint16(added-ev-1) < uint16(added-old) {
			r.drv.Kick(0)
		}
	}
	addRX()
	r.drv.Kick(0) // the driver's first kick after filling the ring
	for i := range frames {
		_, n := r.drv.WaitUsed(0)
		if n != uint32(HeaderSize+60+i) {
			t.Fatalf("frame %d: %d bytes, want %d", i, n, HeaderSize+60+i)
		}
		addRX()
	}
}

// TestReceiveWithoutEventIdx: the same refill protocol with plain
// notification flags (VIRTQ_USED_F_NO_NOTIFY).
func TestReceiveWithoutEventIdx(t *testing.T) {
	be, host := seqpacketPair(t)
	r := newRig(t, be, 8)
	if err := r.drv.Setup(allFeatures&^virtio.FeatureEventIdx, 8); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		hostWrite(t, host, txHeader, ethFrame(60+i, byte(i)))
	}
	for i := range 20 {
		r.rxBuf(1518)
		if r.drv.Queues[0].UsedFlags()&1 == 0 {
			r.drv.Kick(0)
		}
		if _, n := r.drv.WaitUsed(0); n != uint32(HeaderSize+60+i) {
			t.Fatalf("frame %d: %d bytes", i, n)
		}
	}
}

// TestBackendGone: when the host end goes away the device stops receiving
// without spinning and keeps serving the guest's transmit queue.
func TestBackendGone(t *testing.T) {
	be, host := seqpacketPair(t)
	r := newRig(t, be, 16)
	r.rxBuf(1518)
	r.drv.Kick(0)
	unix.Shutdown(host, unix.SHUT_RDWR)
	b := withHeader(txHeader, ethFrame(60, 0))
	for range 3 {
		if n := r.drv.Submit(1, vt.Buf{Addr: r.drv.Buffer(b), Len: uint32(len(b))}); n != 0 {
			t.Fatal(n)
		}
	}
	if s := r.dev.Stats(); s.TxDropped != 3 {
		t.Fatalf("stats %+v", s)
	}
}

// TestCloseReleases: Close stops the worker and the watcher, whether the
// watcher is waiting for frames or not, and closes the backend.
func TestCloseReleases(t *testing.T) {
	count := func(dir string) int {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	fds, goroutines := count("/proc/self/fd"), runtime.NumGoroutine()
	for i := range 4 {
		fdPair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		be, err := newBackend(fdPair[0], "pair", false)
		if err != nil {
			t.Fatal(err)
		}
		mem := vt.NewMemory(t, 1<<20)
		d, err := New(be, Config{MAC: testMAC})
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 1 {
			// Activate and pass one frame, after which the worker arms
			// the watcher and the watcher waits on the backend.
			acked := d.AckFeatures(d.Features())
			var gq [2]*vt.GuestQueue
			var qs []*virtio.Queue
			for q := range gq {
				gq[q] = vt.NewGuestQueue(mem, uint64(0x10000*(q+1)), 8)
				vq, err := virtio.NewQueue(mem, gq[q].Config(uint16(q), acked))
				if err != nil {
					t.Fatal(err)
				}
				qs = append(qs, vq)
			}
			if err := d.Activate(mem, qs, nopIRQ{}); err != nil {
				t.Fatal(err)
			}
			gq[0].AddChain(vt.Buf{Addr: 0x40000, Len: 2048, Write: true})
			d.Doorbell().Ring()
			unix.Write(fdPair[1], withHeader(txHeader, ethFrame(60, 0)))
			waitUsed(t, gq[0])
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		unix.Close(fdPair[1])
		mem.Close()
	}
	if got := count("/proc/self/fd"); got != fds {
		t.Errorf("open fds %d after closing 4 devices, %d before", got, fds)
	}
	// Close waited for both goroutines; allow the runtime's own a moment.
	for deadline := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > goroutines; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after closing 4 devices, %d before", runtime.NumGoroutine(), goroutines)
		}
	}
}

func waitUsed(t *testing.T, g *vt.GuestQueue) (uint16, uint32) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Microsecond) {
		if id, n, ok := g.PopUsed(); ok {
			return id, n
		}
	}
	t.Fatal("no used buffer")
	return 0, 0
}

type nopIRQ struct{}

func (nopIRQ) UsedBuffer()    {}
func (nopIRQ) ConfigChanged() {}
func (nopIRQ) NeedsReset()    {}

func TestNewRejectsBadMAC(t *testing.T) {
	be, _ := seqpacketPair(t)
	if _, err := New(be, Config{MAC: []byte{1, 2, 3, 4, 5, 6}}); err == nil {
		t.Fatal("multicast MAC accepted")
	}
	// New closed the backend it was given.
	if err := be.Close(); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("backend still open after New failed: %v", err)
	}
}

func TestStateRoundTrip(t *testing.T) {
	be, host := seqpacketPair(t)
	r := newRig(t, be, 16)
	b := withHeader(txHeader, ethFrame(60, 0))
	r.drv.Submit(1, vt.Buf{Addr: r.drv.Buffer(b), Len: uint32(len(b))})
	unix.Read(host, make([]byte, 100))
	s := r.dev.Save()
	raw, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var s2 State
	if err := json.Unmarshal(raw, &s2); err != nil {
		t.Fatal(err)
	}
	be2, _ := seqpacketPair(t)
	d2, err := Restore(s2, be2, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if got := d2.Save(); got != s || got.Stats.TxFrames != 1 || !bytes.Equal(d2.MAC(), testMAC) {
		t.Fatalf("restored %+v, saved %+v", got, s)
	}
}

func TestChecks(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"tap0", true}, {"husk-vm.1_a", true}, {"123456789012345", true},
		{"", false}, {"1234567890123456", false}, {".", false}, {"..", false},
		{"a/b", false}, {"a:b", false}, {"tap%d", false}, {"a b", false}, {"a\tb", false},
	} {
		if err := CheckTAPName(tc.name); (err == nil) != tc.ok {
			t.Errorf("CheckTAPName(%q) = %v", tc.name, err)
		}
	}
	for _, tc := range []struct {
		mac []byte
		ok  bool
	}{
		{testMAC, true}, {[]byte{0, 0x16, 0x3e, 1, 2, 3}, true},
		{nil, false}, {[]byte{2, 0, 0, 0, 0}, false}, {make([]byte, 8), false},
		{make([]byte, 6), false}, {[]byte{1, 0, 0x5e, 0, 0, 1}, false}, {[]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, false},
	} {
		if err := CheckMAC(tc.mac); (err == nil) != tc.ok {
			t.Errorf("CheckMAC(% x) = %v", tc.mac, err)
		}
	}
	for range 100 {
		m := RandomMAC()
		if err := CheckMAC(m); err != nil || m[0]&2 == 0 {
			t.Fatalf("RandomMAC() = %s: %v", m, err)
		}
	}
}
