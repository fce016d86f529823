package virtio_test

import (
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/huskvm/husk/internal/guestmem"
	"github.com/huskvm/husk/internal/virtio"
	"github.com/huskvm/husk/internal/virtio/virtiotest"
)

// echo is a minimal device: it copies each chain's readable bytes into its
// writable ones.
type echo struct {
	virtio.Common
	processed atomic.Int64
	block     chan struct{} // if set, process waits on it
}

func (e *echo) Type() virtio.DeviceType             { return 0xff }
func (e *echo) ReadConfig(off uint64, data []byte)  { virtio.ConfigRead([]byte{1, 2, 3, 4}, off, data) }
func (e *echo) WriteConfig(off uint64, data []byte) {}
func (e *echo) Close() error                        { return e.Common.Close() }
func (e *echo) process(a *virtio.Activation) {
	if e.block != nil {
		<-e.block
	}
	q := a.Queues[0]
	for !a.Stopped() {
		c, err := q.Pop()
		if err != nil {
			var qe *virtio.Error
			if errors.As(err, &qe) && qe.Fatal() {
				a.Fail()
				return
			}
			continue
		}
		if c == nil {
			break
		}
		r, w := c.Readable(), c.Writable()
		var n int
		for p := r.Next(w.Len()); p != nil; p = r.Next(w.Len()) {
			k, _ := w.Write(p)
			n += k
		}
		q.AddUsed(c.Head, uint32(n))
		e.processed.Add(1)
	}
	if q.NeedsInterrupt() {
		a.Interrupt.UsedBuffer()
	}
}

var _ virtio.Device = (*echo)(nil)

func newEcho(t *testing.T) *echo {
	t.Helper()
	e := &echo{}
	if err := e.Init(virtio.FeatureEventIdx|virtio.FeatureIndirectDesc|1<<3, []uint16{16}); err != nil {
		t.Fatal(err)
	}
	e.Start(e.process)
	t.Cleanup(func() { e.Close() })
	return e
}

type fakeIRQ struct {
	used, config, reset atomic.Int64
}

func (f *fakeIRQ) UsedBuffer()    { f.used.Add(1) }
func (f *fakeIRQ) ConfigChanged() { f.config.Add(1) }
func (f *fakeIRQ) NeedsReset()    { f.reset.Add(1) }

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

func activate(t *testing.T, e *echo, mem *guestmem.Memory, irq virtio.Interrupt) *virtiotest.GuestQueue {
	t.Helper()
	g := virtiotest.NewGuestQueue(mem, ringBase, qsize)
	q, err := virtio.NewQueue(mem, g.Config(0, e.AckedFeatures()))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Activate(mem, []*virtio.Queue{q}, irq); err != nil {
		t.Fatal(err)
	}
	return g
}

func TestCommonInit(t *testing.T) {
	for _, tc := range []struct {
		name     string
		features uint64
		sizes    []uint16
	}{
		{"ring reset", virtio.FeatureRingReset, []uint16{16}},
		{"packed", virtio.FeatureRingPacked, []uint16{16}},
		{"bit 45", 1 << 45, []uint16{16}},
		{"no queues", 0, nil},
		{"size 0", 0, []uint16{0}},
		{"size 3", 0, []uint16{3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c virtio.Common
			if err := c.Init(tc.features, tc.sizes); err == nil {
				c.Close()
				t.Fatal("accepted")
			}
		})
	}
}

func TestFeatureNegotiation(t *testing.T) {
	e := newEcho(t)
	if f := e.Features(); f != virtio.FeatureVersion1|virtio.FeatureEventIdx|virtio.FeatureIndirectDesc|1<<3 {
		t.Fatalf("offered %#x", f)
	}
	// The driver asks for bits never offered (RING_RESET, bit 4, bit 60):
	// they are masked.
	got := e.AckFeatures(virtio.FeatureVersion1 | virtio.FeatureRingReset | 1<<3 | 1<<4 | 1<<60)
	if want := virtio.FeatureVersion1 | 1<<3; got != want || e.AckedFeatures() != want {
		t.Fatalf("acked %#x, want %#x", got, want)
	}
	e.Reset()
	if e.AckedFeatures() != 0 {
		t.Fatal("reset kept acked features")
	}
}

func TestWorkerLifecycle(t *testing.T) {
	mem := virtiotest.NewMemory(t, testMem) // before the device: cleanups run in reverse
	e := newEcho(t)
	e.AckFeatures(e.Features())
	irq := &fakeIRQ{}
	g := activate(t, e, mem, irq)
	if err := e.Activate(mem, nil, irq); err == nil {
		t.Fatal("second activation accepted")
	}
	mem.WriteAt([]byte("ping"), dataBase)
	g.AddChain(buf(0, 4, false), buf(1, 4, true))
	e.Doorbell().Ring()
	waitFor(t, "echo", func() bool { return g.UsedIdx() == 1 })
	if got, _ := mem.Slice(dataBase+0x1000, 4); string(got) != "ping" {
		t.Fatalf("echoed %q", got)
	}
	waitFor(t, "interrupt", func() bool { return irq.used.Load() == 1 })

	// Paused: rings are ignored until Resume.
	e.Pause()
	g.AddChain(buf(0, 4, false), buf(1, 4, true))
	e.Doorbell().Ring()
	time.Sleep(20 * time.Millisecond)
	if g.UsedIdx() != 1 {
		t.Fatal("paused worker processed a chain")
	}
	// Inspect shows both sides of the ring: one chain waiting.
	if v := e.Inspect(); len(v) != 1 || v[0].AvailIdx != 2 || v[0].NextAvail != 1 || v[0].UsedIdx != 1 || v[0].NextUsed != 1 || v[0].Size != 16 {
		t.Fatalf("Inspect: %+v", v)
	}
	e.Resume()
	waitFor(t, "resume", func() bool { return g.UsedIdx() == 2 })

	// Reset: no more processing of the old queues.
	e.Reset()
	g.AddChain(buf(0, 4, false), buf(1, 4, true))
	e.Doorbell().Ring()
	time.Sleep(20 * time.Millisecond)
	if g.UsedIdx() != 2 {
		t.Fatal("reset device processed a chain")
	}
	// Reactivation after reset works.
	e.AckFeatures(e.Features())
	g = activate(t, e, mem, irq)
	g.AddChain(buf(0, 4, false), buf(1, 4, true))
	e.Doorbell().Ring()
	waitFor(t, "reactivated", func() bool { return g.UsedIdx() == 1 })
}

func TestResetDoesNotWaitForWorker(t *testing.T) {
	mem := virtiotest.NewMemory(t, testMem)
	e := &echo{block: make(chan struct{})}
	if err := e.Init(0, []uint16{16}); err != nil {
		t.Fatal(err)
	}
	e.Start(e.process)
	defer e.Close()
	g := activate(t, e, mem, &fakeIRQ{})
	g.AddChain(buf(0, 4, false), buf(1, 4, true))
	e.Doorbell().Ring()
	time.Sleep(10 * time.Millisecond) // the worker is now stuck in process
	done := make(chan struct{})
	go func() { e.Reset(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Reset blocked on a busy worker")
	}
	close(e.block)
	e.Pause() // waits for the worker to finish its (abandoned) batch
	if g.UsedIdx() != 0 {
		t.Fatal("worker completed a chain after reset")
	}
}

func TestFailSignalsNeedsResetOnce(t *testing.T) {
	mem := virtiotest.NewMemory(t, testMem) // before the device: cleanups run in reverse
	e := newEcho(t)
	irq := &fakeIRQ{}
	g := activate(t, e, mem, irq)
	g.SetAvailIdx(100)
	e.Doorbell().Ring()
	waitFor(t, "needs reset", func() bool { return irq.reset.Load() == 1 })
	e.Doorbell().Ring()
	time.Sleep(10 * time.Millisecond)
	if n := irq.reset.Load(); n != 1 {
		t.Fatalf("NeedsReset called %d times", n)
	}
	if !e.Active().Stopped() {
		t.Fatal("failed activation still running")
	}
}

func TestCommonStateRoundTrip(t *testing.T) {
	mem := virtiotest.NewMemory(t, testMem) // before the device: cleanups run in reverse
	e := newEcho(t)
	e.AckFeatures(e.Features())
	irq := &fakeIRQ{}
	g := activate(t, e, mem, irq)
	g.AddChain(buf(0, 4, false), buf(1, 4, true))
	e.Doorbell().Ring()
	waitFor(t, "first chain", func() bool { return g.UsedIdx() == 1 })

	e.Pause()
	s := e.SaveCommon()
	raw, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var back virtio.CommonState
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s, back) || !s.Activated || len(s.Queues) != 1 || s.Queues[0].NextAvail != 1 {
		t.Fatalf("state %+v", back)
	}

	// A fresh device picks up from the saved position.
	e2 := newEcho(t)
	if err := e2.RestoreCommon(back, mem, irq); err != nil {
		t.Fatal(err)
	}
	if e2.AckedFeatures() != e.AckedFeatures() {
		t.Fatal("acked features lost")
	}
	g.AddChain(buf(0, 4, false), buf(1, 4, true))
	e2.Doorbell().Ring()
	waitFor(t, "restored device", func() bool { return g.UsedIdx() == 2 })
	if e2.processed.Load() != 1 {
		t.Fatalf("restored device processed %d chains", e2.processed.Load())
	}

	// Inactive state restores to an inactive device.
	e3 := newEcho(t)
	if err := e3.RestoreCommon(virtio.CommonState{}, nil, nil); err != nil || e3.Active() != nil {
		t.Fatal(err)
	}
	bad := back
	bad.AckedFeatures |= virtio.FeatureRingReset
	if err := e3.RestoreCommon(bad, mem, irq); err == nil {
		t.Fatal("restored unoffered features")
	}
}

func TestDoorbell(t *testing.T) {
	d, err := virtio.NewDoorbell()
	if err != nil {
		t.Fatal(err)
	}
	d.Ring()
	d.Ring()
	if err := d.Wait(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	var werr error
	go func() { defer wg.Done(); werr = d.Wait() }()
	time.Sleep(10 * time.Millisecond)
	d.Close()
	wg.Wait()
	if !errors.Is(werr, os.ErrClosed) {
		t.Fatalf("Wait after Close = %v", werr)
	}
	d.Ring() // harmless after Close
}

func TestConfigRead(t *testing.T) {
	cfg := []byte{1, 2, 3, 4}
	for _, tc := range []struct {
		off  uint64
		n    int
		want []byte
	}{
		{0, 4, []byte{1, 2, 3, 4}},
		{2, 4, []byte{3, 4, 0, 0}},
		{4, 2, []byte{0, 0}},
		{1 << 63, 1, []byte{0}},
	} {
		got := []byte{9, 9, 9, 9}[:tc.n]
		virtio.ConfigRead(cfg, tc.off, got)
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ConfigRead(%d, %d) = %v, want %v", tc.off, tc.n, got, tc.want)
		}
	}
}

func TestLogLimit(t *testing.T) {
	var l virtio.LogLimit
	if _, ok := l.Allow(); !ok {
		t.Fatal("first record suppressed")
	}
	for range 5 {
		if _, ok := l.Allow(); ok {
			t.Fatal("burst not suppressed")
		}
	}
}
