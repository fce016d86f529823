package vsock

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/huskvm/husk/internal/virtio"
	vt "github.com/huskvm/husk/internal/virtio/virtiotest"
)

type nopIRQ struct{}

func (nopIRQ) UsedBuffer()    {}
func (nopIRQ) ConfigChanged() {}
func (nopIRQ) NeedsReset()    {}

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

// TestDeviceQueues drives the device through its virtqueues as a guest
// driver would: a host CONNECT arrives as a REQUEST in an RX buffer, the
// guest's RESPONSE and data go out through TX.
func TestDeviceQueues(t *testing.T) {
	mem := vt.NewMemory(t, 8<<20)
	path := filepath.Join(t.TempDir(), "v.sock")
	d, err := New(Config{GuestCID: 7, Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if cid := binary.LittleEndian.Uint64(func() []byte { b := make([]byte, 8); d.ReadConfig(0, b); return b }()); cid != 7 {
		t.Fatalf("config guest_cid %d", cid)
	}
	acked := d.AckFeatures(d.Features())
	var gq [3]*vt.GuestQueue
	var qs []*virtio.Queue
	for i := range gq {
		gq[i] = vt.NewGuestQueue(mem, uint64(0x10000*(i+1)), 16)
		q, err := virtio.NewQueue(mem, gq[i].Config(uint16(i), acked))
		if err != nil {
			t.Fatal(err)
		}
		qs = append(qs, q)
	}
	if err := d.Activate(mem, qs, nopIRQ{}); err != nil {
		t.Fatal(err)
	}
	// Two RX buffers of header + 4 KiB, as Linux 6.1 posts them.
	for i := uint64(0); i < 2; i++ {
		gq[rxQueue].AddChain(vt.Buf{Addr: 0x100000 + i*0x2000, Len: HeaderSize, Write: true}, vt.Buf{Addr: 0x100000 + i*0x2000 + 64, Len: 4096, Write: true})
	}
	d.Doorbell().Ring()

	host, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	fmt.Fprintf(host, "CONNECT 52\n")
	_, n := waitUsed(t, gq[rxQueue])
	hb, _ := mem.Slice(0x100000, HeaderSize)
	req, err := ParseHeader(hb)
	if err != nil || n != HeaderSize || req.Op != opRequest || req.DstPort != 52 || req.DstCID != 7 {
		t.Fatalf("RX got %d bytes: %+v %v", n, req, err)
	}

	send := func(op uint16, payload []byte) {
		h := Header{SrcCID: 7, DstCID: HostCID, SrcPort: 52, DstPort: req.SrcPort, Len: uint32(len(payload)), Type: typeStream, Op: op, BufAlloc: 1 << 16}
		var b [HeaderSize]byte
		h.Put(b[:])
		mem.WriteAt(b[:], 0x300000)
		mem.WriteAt(payload, 0x300100)
		gq[txQueue].AddChain(vt.Buf{Addr: 0x300000, Len: HeaderSize}, vt.Buf{Addr: 0x300100, Len: uint32(len(payload))})
		d.Doorbell().Ring()
		waitUsed(t, gq[txQueue])
	}
	send(opResponse, nil)
	br := bufio.NewReader(host)
	if line, err := br.ReadString('\n'); err != nil || line != fmt.Sprintf("OK %d\n", req.SrcPort) {
		t.Fatalf("host got %q %v", line, err)
	}
	send(opRW, []byte("from the guest"))
	got := make([]byte, 14)
	if _, err := br.Read(got); err != nil || string(got) != "from the guest" {
		t.Fatalf("host got %q %v", got, err)
	}
	host.Write([]byte("to the guest"))
	_, n = waitUsed(t, gq[rxQueue])
	hb, _ = mem.Slice(0x102000, HeaderSize)
	rw, _ := ParseHeader(hb)
	data, _ := mem.Slice(0x102000+64, uint64(rw.Len))
	if rw.Op != opRW || string(data) != "to the guest" || n != HeaderSize+12 {
		t.Fatalf("RX got %+v %q (%d bytes)", rw, data, n)
	}
	// A truncated packet on TX is dropped, and the device keeps serving.
	gq[txQueue].AddChain(vt.Buf{Addr: 0x300000, Len: 10})
	d.Doorbell().Ring()
	if _, n := waitUsed(t, gq[txQueue]); n != 0 {
		t.Fatal("truncated packet got a length")
	}
	if d.Muxer().Conns() != 1 {
		t.Fatalf("%d connections", d.Muxer().Conns())
	}
	d.Reset()
	if d.Muxer().Conns() != 0 {
		t.Fatal("reset kept connections")
	}
}

// TestRXRefillKicks: when the device runs out of RX buffers with packets
// pending, the guest's refill must be announced by the notification
// protocol (EVENT_IDX's avail_event), and a driver that kicks only when told
// to still gets every packet.
func TestRXRefillKicks(t *testing.T) {
	mem := vt.NewMemory(t, 8<<20)
	path := filepath.Join(t.TempDir(), "v.sock")
	d, err := New(Config{GuestCID: 7, Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	acked := d.AckFeatures(d.Features())
	if acked&virtio.FeatureEventIdx == 0 {
		t.Fatal("EVENT_IDX not offered")
	}
	var gq [3]*vt.GuestQueue
	var qs []*virtio.Queue
	for i := range gq {
		gq[i] = vt.NewGuestQueue(mem, uint64(0x10000*(i+1)), 16)
		q, err := virtio.NewQueue(mem, gq[i].Config(uint16(i), acked))
		if err != nil {
			t.Fatal(err)
		}
		qs = append(qs, q)
	}
	if err := d.Activate(mem, qs, nopIRQ{}); err != nil {
		t.Fatal(err)
	}
	rx := gq[rxQueue]
	added := uint16(0)
	// addRX posts one buffer and kicks only if the device asked for it
	// (virtio 1.2 §2.7.10: vring_need_event).
	addRX := func() {
		old := added
		rx.AddChain(vt.Buf{Addr: 0x100000 + uint64(added%8)*0x2000, Len: HeaderSize + 4096, Write: true})
		added++
		if ev := rx.AvailEvent(); uint16(added-ev-1) < uint16(added-old) {
			d.Doorbell().Ring()
		}
	}
	// Three host connections queue three REQUESTs; the guest has one buffer.
	addRX()
	d.Doorbell().Ring()
	for i := 0; i < 3; i++ {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "CONNECT %d\n", 100+i)
	}
	for got := 0; got < 3; got++ {
		waitUsed(t, rx)
		addRX()
	}
}
