package mmio_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/huskvm/husk/internal/eventfd"
	"github.com/huskvm/husk/internal/guestmem"
	"github.com/huskvm/husk/internal/virtio"
	"github.com/huskvm/husk/internal/virtio/mmio"
	"github.com/huskvm/husk/internal/virtio/rng"
	vt "github.com/huskvm/husk/internal/virtio/virtiotest"
)

const memSize = 4 << 20

type rig struct {
	mem *guestmem.Memory
	dev *rng.Device
	irq *eventfd.EventFD
	t   *mmio.Transport
	drv *vt.Driver
}

// newRig builds an rng device behind a transport. Cleanups run in reverse:
// device before memory.
func newRig(tb testing.TB) *rig {
	tb.Helper()
	mem := vt.NewMemory(tb, memSize)
	return newRigMem(tb, mem)
}

func newRigMem(tb testing.TB, mem *guestmem.Memory) *rig {
	tb.Helper()
	dev, err := rng.New(nil)
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
	return &rig{mem: mem, dev: dev, irq: irq, t: tr, drv: vt.NewDriver(tb, tr, mem)}
}

const features = virtio.FeatureVersion1 | virtio.FeatureEventIdx | virtio.FeatureIndirectDesc

func (r *rig) setup(tb testing.TB) {
	tb.Helper()
	if err := r.drv.Setup(features, 64); err != nil {
		tb.Fatal(err)
	}
}

func TestIdentityRegisters(t *testing.T) {
	r := newRig(t)
	for _, tc := range []struct {
		name string
		off  uint64
		want uint32
	}{
		{"magic", vt.RegMagic, 0x74726976},
		{"version", vt.RegVersion, 2},
		{"device id", vt.RegDeviceID, 4},
		{"vendor", vt.RegVendorID, mmio.VendorID},
		{"queue num max", vt.RegQueueNumMax, rng.QueueSize},
		{"shm len low", 0x0b0, 0xffffffff},
		{"shm len high", 0x0b4, 0xffffffff},
		{"status", vt.RegStatus, 0},
		{"interrupt status", vt.RegInterruptStatus, 0},
		{"write-only reads zero", vt.RegQueueDescLow, 0},
		{"unknown offset reads zero", 0x0f0, 0},
		{"config space", vt.RegConfig, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := r.drv.Read32(tc.off); got != tc.want {
				t.Fatalf("read %#x = %#x, want %#x", tc.off, got, tc.want)
			}
		})
	}
	r.drv.Write32(vt.RegQueueSel, 1)
	if got := r.drv.Read32(vt.RegQueueNumMax); got != 0 {
		t.Fatalf("QueueNumMax of missing queue = %d", got)
	}
	if mmio.Cmdline(0xd0000000, 5) != "virtio_mmio.device=4K@0xd0000000:5" {
		t.Fatal(mmio.Cmdline(0xd0000000, 5))
	}
}

func TestBadAccessesIgnored(t *testing.T) {
	r := newRig(t)
	r.setup(t)
	before := r.t.Save()
	for _, tc := range []struct {
		off uint64
		n   int
	}{
		{vt.RegStatus, 1}, {vt.RegStatus, 2}, {vt.RegStatus, 8}, {vt.RegStatus + 1, 4},
		{vt.RegQueueSel, 3}, {0x0e0, 4}, {mmio.Size, 4}, {mmio.Size - 2, 4},
		{1 << 62, 4}, {^uint64(0), 1}, {vt.RegConfig, 0}, {vt.RegConfig, 16},
	} {
		data := bytes.Repeat([]byte{0xaa}, tc.n)
		r.t.Read(tc.off, data)
		if tc.off < mmio.ConfigOffset || tc.off >= mmio.Size || tc.n > 8 || tc.n == 0 {
			if !bytes.Equal(data, make([]byte, tc.n)) {
				t.Errorf("bad read %#x/%d = %x, want zeros", tc.off, tc.n, data)
			}
		}
		r.t.Write(tc.off, bytes.Repeat([]byte{0xff}, tc.n))
	}
	// Writes to read-only registers are ignored too.
	for _, off := range []uint64{vt.RegMagic, vt.RegVersion, vt.RegDeviceID, vt.RegQueueNumMax, vt.RegInterruptStatus, vt.RegConfigGeneration, 0x0c0} {
		r.drv.Write32(off, 0xffffffff)
	}
	if after := r.t.Save(); !reflect.DeepEqual(before, after) {
		t.Fatalf("bad accesses changed state:\n%+v\n%+v", before, after)
	}
}

func TestFeatureNegotiation(t *testing.T) {
	r := newRig(t)
	d := r.drv
	d.Write32(vt.RegStatus, 1)
	d.Write32(vt.RegStatus, 3)
	var offered uint64
	for sel := range uint32(3) {
		d.Write32(vt.RegDeviceFeaturesSel, sel)
		v := uint64(d.Read32(vt.RegDeviceFeatures))
		if sel == 2 && v != 0 {
			t.Fatalf("feature word 2 = %#x", v)
		}
		if sel < 2 {
			offered |= v << (32 * sel)
		}
	}
	if offered != features {
		t.Fatalf("offered %#x, want %#x (no RING_RESET, no packed)", offered, features)
	}

	t.Run("unrequested bits masked", func(t *testing.T) {
		d.Write32(vt.RegDriverFeaturesSel, 0)
		d.Write32(vt.RegDriverFeatures, 0xffffffff)
		d.Write32(vt.RegDriverFeaturesSel, 1)
		d.Write32(vt.RegDriverFeatures, 0xffffffff)
		d.Write32(vt.RegStatus, 0xb)
		if d.Status()&virtio.StatusFeaturesOK == 0 {
			t.Fatal("FEATURES_OK refused")
		}
		if got := r.dev.AckedFeatures(); got != features {
			t.Fatalf("acked %#x, want %#x", got, features)
		}
		// After FEATURES_OK the driver features are frozen.
		d.Write32(vt.RegDriverFeaturesSel, 1)
		d.Write32(vt.RegDriverFeatures, 0)
		if st := r.t.Save(); st.DriverFeatures>>32 != 0xffffffff {
			t.Fatal("driver features changed after FEATURES_OK")
		}
	})
	t.Run("version 1 required", func(t *testing.T) {
		d.Write32(vt.RegStatus, 0)
		d.Write32(vt.RegStatus, 1)
		d.Write32(vt.RegStatus, 3)
		d.Write32(vt.RegDriverFeaturesSel, 0)
		d.Write32(vt.RegDriverFeatures, uint32(virtio.FeatureEventIdx))
		d.Write32(vt.RegStatus, 0xb)
		if d.Status() != 3 {
			t.Fatalf("status %#x: FEATURES_OK accepted without VERSION_1", d.Status())
		}
		d.Write32(vt.RegStatus, 0xf)
		if d.Status() != 3 || r.dev.Active() != nil {
			t.Fatal("DRIVER_OK accepted without FEATURES_OK")
		}
	})
}

func TestStatusProtocol(t *testing.T) {
	for _, tc := range []struct {
		name   string
		writes []uint32
		want   uint32
	}{
		{"driver before acknowledge", []uint32{2}, 0},
		{"features ok before driver", []uint32{1, 9}, 1},
		{"driver ok before features ok", []uint32{1, 3, 7}, 3},
		{"clearing a bit", []uint32{1, 3, 1}, 3},
		{"unknown bit", []uint32{1, 0x11}, 1},
		{"failed any time", []uint32{1, 0x81}, 0x81},
		{"needs reset bit is the device's", []uint32{0x41}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			for _, w := range tc.writes {
				r.drv.Write32(vt.RegStatus, w)
			}
			if got := r.drv.Status(); got != tc.want {
				t.Fatalf("status %#x, want %#x", got, tc.want)
			}
		})
	}
}

func TestRNGEndToEnd(t *testing.T) {
	r := newRig(t)
	r.setup(t)
	if r.drv.Acked != features {
		t.Fatalf("acked %#x", r.drv.Acked)
	}
	a, b := r.drv.Alloc(100), r.drv.Alloc(60)
	n := r.drv.Submit(0, vt.Buf{Addr: a, Len: 100, Write: true}, vt.Buf{Addr: b, Len: 60, Write: true})
	if n != 160 || r.dev.BytesServed() != 160 {
		t.Fatalf("used len %d, served %d", n, r.dev.BytesServed())
	}
	if bytes.Equal(r.drv.Bytes(a, 100), make([]byte, 100)) {
		t.Fatal("no entropy written")
	}
	waitFor(t, "interrupt status", func() bool { return r.drv.Read32(vt.RegInterruptStatus)&1 != 0 })
	if c, _ := r.irq.Read(); c == 0 {
		t.Fatal("irqfd not signalled")
	}
	if s := r.drv.AckInterrupt(); s != mmio.InterruptUsedBuffer {
		t.Fatalf("interrupt status %#x", s)
	}
	if r.drv.Read32(vt.RegInterruptStatus) != 0 {
		t.Fatal("ACK did not clear")
	}
	// Indirect chains and a readable-only request (gets nothing).
	tbl := r.drv.Alloc(64)
	head := r.drv.Queues[0].AddIndirect(tbl, vt.Buf{Addr: a, Len: 10}, vt.Buf{Addr: b, Len: 20, Write: true})
	r.drv.Kick(0)
	if id, n := r.drv.WaitUsed(0); id != head || n != 20 {
		t.Fatalf("indirect: id %d len %d", id, n)
	}
	if n := r.drv.Submit(0, vt.Buf{Addr: a, Len: 10}); n != 0 {
		t.Fatalf("readable-only request got %d bytes", n)
	}
	// The cap: overlapping descriptors claiming 64 × 64 KiB get 64 KiB.
	big := r.drv.Alloc(64 << 10)
	var bufs []vt.Buf
	for range 64 {
		bufs = append(bufs, vt.Buf{Addr: big, Len: 64 << 10, Write: true})
	}
	if n := r.drv.Submit(0, bufs...); n != rng.MaxBytesPerRequest {
		t.Fatalf("capped request served %d bytes", n)
	}
}

func TestQueueRegistersFrozenWhenReady(t *testing.T) {
	r := newRig(t)
	r.setup(t)
	before := r.t.Save().Queues[0]
	r.drv.Write32(vt.RegQueueSel, 0)
	r.drv.Write32(vt.RegQueueNum, 8)
	r.drv.Write32(vt.RegQueueDescLow, 0x5000)
	if after := r.t.Save().Queues[0]; after != before {
		t.Fatalf("live queue reconfigured: %+v -> %+v", before, after)
	}
	// Writing 0 to QueueReady is allowed (Linux's vm_del_vq) and reads back 0.
	r.drv.Write32(vt.RegQueueReady, 0)
	if r.drv.Read32(vt.RegQueueReady) != 0 {
		t.Fatal("QueueReady not cleared")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

func TestBadQueueConfigNeedsReset(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(d *vt.Driver)
	}{
		{"size not power of two", func(d *vt.Driver) { d.Write32(vt.RegQueueNum, 3) }},
		{"size above max", func(d *vt.Driver) { d.Write32(vt.RegQueueNum, 512) }},
		{"ring outside memory", func(d *vt.Driver) { d.Write32(vt.RegQueueDeviceHigh, 0x10) }},
		{"misaligned ring", func(d *vt.Driver) { d.Write32(vt.RegQueueDescLow, 0x10008) }},
		{"queue not ready", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			d := r.drv
			d.Write32(vt.RegStatus, 1)
			d.Write32(vt.RegStatus, 3)
			d.Write32(vt.RegDriverFeaturesSel, 1)
			d.Write32(vt.RegDriverFeatures, 1)
			d.Write32(vt.RegStatus, 0xb)
			g := vt.NewGuestQueue(r.mem, vt.DriverRingBase, 16)
			d.Write32(vt.RegQueueSel, 0)
			d.Write32(vt.RegQueueNum, 16)
			d.Write32(vt.RegQueueDescLow, uint32(g.Desc))
			d.Write32(vt.RegQueueDriverLow, uint32(g.Avail))
			d.Write32(vt.RegQueueDeviceLow, uint32(g.Used))
			if tc.mod != nil {
				tc.mod(d)
				d.Write32(vt.RegQueueReady, 1)
			}
			gen := d.Read32(vt.RegConfigGeneration)
			d.Write32(vt.RegStatus, 0xf)
			if s := d.Status(); s&virtio.StatusNeedsReset == 0 {
				t.Fatalf("status %#x lacks DEVICE_NEEDS_RESET", s)
			}
			if d.Read32(vt.RegInterruptStatus)&mmio.InterruptConfigChange == 0 {
				t.Fatal("no config change interrupt")
			}
			if d.Read32(vt.RegConfigGeneration) == gen {
				t.Fatal("config generation unchanged")
			}
			if r.dev.Active() != nil {
				t.Fatal("device activated")
			}
		})
	}
}

// TestGuestBreaksQueue: a corrupt available index sets DEVICE_NEEDS_RESET
// with a config interrupt; a reset recovers the device.
func TestGuestBreaksQueue(t *testing.T) {
	r := newRig(t)
	r.setup(t)
	r.drv.Queues[0].SetAvailIdx(1000)
	r.drv.Kick(0)
	waitFor(t, "needs reset", func() bool { return r.drv.Status()&virtio.StatusNeedsReset != 0 })
	if s := r.drv.AckInterrupt(); s&mmio.InterruptConfigChange == 0 {
		t.Fatalf("interrupt status %#x", s)
	}
	r.drv.Write32(vt.RegStatus, 0)
	if s := r.t.Save(); s.Status != 0 || s.NeedsReset || s.InterruptStatus != 0 || s.DriverFeatures != 0 || s.Queues[0].Ready {
		t.Fatalf("reset left state behind: %+v", s)
	}
	r.setup(t)
	buf := r.drv.Alloc(16)
	if n := r.drv.Submit(0, vt.Buf{Addr: buf, Len: 16, Write: true}); n != 16 {
		t.Fatalf("after reset: %d bytes", n)
	}
}

// TestSixDevices runs six virtio-mmio devices over one guest memory at
// once: nothing is global.
func TestSixDevices(t *testing.T) {
	mem := vt.NewMemory(t, 64<<20)
	rigs := make([]*rig, 6)
	for i := range rigs {
		rigs[i] = newRigMem(t, mem)
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(rigs))
	for i, r := range rigs {
		// Each driver gets its own rings and heap in the shared memory.
		d := &vt.Driver{TB: t, Bus: r.t, Mem: mem}
		d.SetHeap(uint64(16+i*4) << 20)
		r.drv = d
		if err := setupAt(d, uint64(i)); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := d.Alloc(32)
			for range 100 {
				head := d.Queues[0].AddChain(vt.Buf{Addr: b, Len: 32, Write: true})
				d.Kick(0)
				deadline := time.Now().Add(10 * time.Second)
				for {
					if id, n, ok := d.Queues[0].PopUsed(); ok {
						if id != head || n != 32 {
							errs <- fmt.Errorf("device %d: used %d/%d", i, id, n)
							return
						}
						break
					}
					if time.Now().After(deadline) {
						errs <- fmt.Errorf("device %d: timeout", i)
						return
					}
					time.Sleep(50 * time.Microsecond)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for i, r := range rigs {
		if got := r.dev.BytesServed(); got != 3200 {
			t.Errorf("device %d served %d bytes", i, got)
		}
		if seen[r.t.NotifyFD()] {
			t.Errorf("device %d shares a notify fd", i)
		}
		seen[r.t.NotifyFD()] = true
	}
}

// setupAt is Driver.Setup with the rings of device i placed apart from the
// others'.
func setupAt(d *vt.Driver, i uint64) error {
	return d.SetupAt(features, 64, vt.DriverRingBase+i*4*vt.DriverRingStride)
}

func TestStateRoundTrip(t *testing.T) {
	r := newRig(t)
	r.setup(t)
	b := r.drv.Alloc(32)
	r.drv.Submit(0, vt.Buf{Addr: b, Len: 32, Write: true})
	r.dev.Pause()
	s := r.t.Save()
	ds := r.dev.Save()
	raw, err := json.Marshal(struct {
		T mmio.State
		D rng.State
	}{s, ds})
	if err != nil {
		t.Fatal(err)
	}
	var back struct {
		T mmio.State
		D rng.State
	}
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back.T, s) || back.D != ds {
		t.Fatalf("decoded state differs:\n%+v\n%+v", back.T, s)
	}

	// A new device and transport over the same memory carry on.
	dev2, err := rng.Restore(back.D, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dev2.Close()
	irq2, _ := eventfd.New()
	defer irq2.Close()
	t2, err := mmio.New(dev2, r.mem, irq2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := t2.Restore(back.T); err != nil {
		t.Fatal(err)
	}
	if got := t2.Save(); !reflect.DeepEqual(got, s) {
		t.Fatalf("restored state %+v, want %+v", got, s)
	}
	r.drv.Bus = t2
	if n := r.drv.Submit(0, vt.Buf{Addr: b, Len: 32, Write: true}); n != 32 {
		t.Fatal(n)
	}
	if dev2.BytesServed() != 64 || dev2.Requests() != 2 {
		t.Fatalf("restored counters %d/%d", dev2.BytesServed(), dev2.Requests())
	}
	bad := back.T
	bad.Queues = nil
	if err := t2.Restore(bad); err == nil {
		t.Fatal("restored a state without queues")
	}
}

func TestNewRejectsNil(t *testing.T) {
	if _, err := mmio.New(nil, nil, nil, nil); err == nil {
		t.Fatal("accepted nil device")
	}
}

func BenchmarkMMIODispatch(b *testing.B) {
	r := newRig(b)
	r.setup(b)
	var data [4]byte
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r.t.Read(vt.RegInterruptStatus, data[:])
		binary.LittleEndian.PutUint32(data[:], 0)
		r.t.Write(vt.RegInterruptACK, data[:])
	}
}
