package virtio_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/huskvm/husk/internal/guestmem"
	"github.com/huskvm/husk/internal/virtio"
	"github.com/huskvm/husk/internal/virtio/virtiotest"
)

const (
	testMem   = 8 << 20
	ringBase  = 0x1000
	dataBase  = 0x100000
	qsize     = 16
	allFeat   = virtio.FeatureEventIdx | virtio.FeatureIndirectDesc
	tableAddr = 0x80000
)

type rig struct {
	mem *guestmem.Memory
	g   *virtiotest.GuestQueue
	q   *virtio.Queue
}

func newRig(t testing.TB, features uint64) *rig {
	t.Helper()
	mem := virtiotest.NewMemory(t, testMem)
	g := virtiotest.NewGuestQueue(mem, ringBase, qsize)
	q, err := virtio.NewQueue(mem, g.Config(0, features))
	if err != nil {
		t.Fatal(err)
	}
	return &rig{mem: mem, g: g, q: q}
}

func buf(i int, n uint32, write bool) virtiotest.Buf {
	return virtiotest.Buf{Addr: dataBase + uint64(i)*0x1000, Len: n, Write: write}
}

func TestPopValidChains(t *testing.T) {
	for _, tc := range []struct {
		name     string
		indirect bool
		bufs     []virtiotest.Buf
	}{
		{"one readable", false, []virtiotest.Buf{buf(0, 16, false)}},
		{"one writable", false, []virtiotest.Buf{buf(0, 512, true)}},
		{"read write", false, []virtiotest.Buf{buf(0, 16, false), buf(1, 4096, true), buf(2, 1, true)}},
		{"full queue", false, func() (b []virtiotest.Buf) {
			for i := range qsize {
				b = append(b, buf(i, 8, i >= 8))
			}
			return b
		}()},
		{"zero-length buffer", false, []virtiotest.Buf{buf(0, 0, false), buf(1, 0, true)}},
		{"indirect", true, []virtiotest.Buf{buf(0, 16, false), buf(1, 4096, true), buf(2, 1, true)}},
		{"indirect full", true, func() (b []virtiotest.Buf) {
			for i := range qsize {
				b = append(b, buf(i, 100, i >= 3))
			}
			return b
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, allFeat)
			var head uint16
			if tc.indirect {
				head = r.g.AddIndirect(tableAddr, tc.bufs...)
			} else {
				head = r.g.AddChain(tc.bufs...)
			}
			c, err := r.q.Pop()
			if err != nil || c == nil {
				t.Fatalf("Pop = %v, %v", c, err)
			}
			if c.Head != head {
				t.Fatalf("head %d, want %d", c.Head, head)
			}
			segs := c.Segments()
			if len(segs) != len(tc.bufs) {
				t.Fatalf("%d segments, want %d", len(segs), len(tc.bufs))
			}
			var rl, wl int
			for i, s := range segs {
				b := tc.bufs[i]
				if s.Addr != b.Addr || len(s.Buf) != int(b.Len) || s.Writable != b.Write {
					t.Fatalf("segment %d = {%#x %d %v}, want %+v", i, s.Addr, len(s.Buf), s.Writable, b)
				}
				if b.Write {
					wl += int(b.Len)
				} else {
					rl += int(b.Len)
				}
			}
			if c.ReadableLen() != rl || c.WritableLen() != wl || c.Len() != rl+wl {
				t.Fatalf("lengths %d/%d, want %d/%d", c.ReadableLen(), c.WritableLen(), rl, wl)
			}
			if c, err := r.q.Pop(); c != nil || err != nil {
				t.Fatalf("second Pop = %v, %v", c, err)
			}
			if err := r.q.AddUsed(head, 7); err != nil {
				t.Fatal(err)
			}
			if id, n, ok := r.g.PopUsed(); !ok || id != head || n != 7 {
				t.Fatalf("used = %d %d %v", id, n, ok)
			}
		})
	}
}

// TestPopMisuse covers every guest-misuse case, Firecracker-style: each
// yields its own error kind, and a non-fatal one leaves the queue usable with
// the bad head returned at length 0.
func TestPopMisuse(t *testing.T) {
	type setup func(r *rig)
	desc := func(i uint16, addr uint64, n uint32, flags, next uint16) func(r *rig) {
		return func(r *rig) { r.g.SetDesc(i, addr, n, flags, next) }
	}
	seq := func(fs ...func(r *rig)) setup {
		return func(r *rig) {
			for _, f := range fs {
				f(r)
			}
		}
	}
	publish0 := func(r *rig) { r.g.Publish(0) }
	indirectEntry := func(i int, addr uint64, n uint32, flags, next uint16) func(r *rig) {
		return func(r *rig) { virtiotest.WriteDesc(r.mem, tableAddr+16*uint64(i), addr, n, flags, next) }
	}
	const N, W, I = virtiotest.DescNext, virtiotest.DescWrite, virtiotest.DescIndirect
	for _, tc := range []struct {
		name     string
		features uint64
		setup    setup
		want     virtio.ErrorKind
	}{
		{"avail idx too far", allFeat, func(r *rig) { r.g.SetAvailIdx(qsize + 1) }, virtio.ErrInvalidAvailIdx},
		{"avail idx far behind", allFeat, func(r *rig) { r.g.SetAvailIdx(0xffff) }, virtio.ErrInvalidAvailIdx},
		{"head out of range", allFeat, func(r *rig) { r.g.Publish(qsize) }, virtio.ErrHeadOutOfRange},
		{"next out of range", allFeat, seq(desc(0, dataBase, 8, N, qsize), publish0), virtio.ErrDescIndexOutOfRange},
		{"self loop", allFeat, seq(desc(0, dataBase, 8, N, 0), publish0), virtio.ErrChainLoop},
		{"two-cycle", allFeat, seq(desc(0, dataBase, 8, N, 1), desc(1, dataBase, 8, N, 0), publish0), virtio.ErrChainLoop},
		{"loop in indirect", allFeat, seq(desc(0, tableAddr, 32, I, 0),
			indirectEntry(0, dataBase, 8, N, 1), indirectEntry(1, dataBase, 8, N, 0), publish0), virtio.ErrChainLoop},
		{"indirect next out of range", allFeat, seq(desc(0, tableAddr, 32, I, 0),
			indirectEntry(0, dataBase, 8, N, 2), publish0), virtio.ErrDescIndexOutOfRange},
		{"indirect not negotiated", virtio.FeatureEventIdx, seq(desc(0, tableAddr, 16, I, 0),
			indirectEntry(0, dataBase, 8, 0, 0), publish0), virtio.ErrIndirectNotNegotiated},
		{"indirect in indirect", allFeat, seq(desc(0, tableAddr, 32, I, 0),
			indirectEntry(0, dataBase, 8, N, 1), indirectEntry(1, tableAddr, 16, I, 0), publish0), virtio.ErrIndirectInIndirect},
		{"indirect with next", allFeat, seq(desc(0, tableAddr, 16, I|N, 1),
			indirectEntry(0, dataBase, 8, 0, 0), publish0), virtio.ErrIndirectWithNext},
		{"indirect length zero", allFeat, seq(desc(0, tableAddr, 0, I, 0), publish0), virtio.ErrIndirectLength},
		{"indirect length odd", allFeat, seq(desc(0, tableAddr, 17, I, 0), publish0), virtio.ErrIndirectLength},
		{"indirect too large", allFeat, seq(desc(0, tableAddr, 16*(qsize+1), I, 0), publish0), virtio.ErrIndirectTooLarge},
		{"indirect table outside memory", allFeat, seq(desc(0, testMem-16, 32, I, 0), publish0), virtio.ErrDescAddress},
		{"direct plus indirect too long", allFeat, func(r *rig) {
			for i := range uint16(qsize - 1) {
				r.g.SetDesc(i, dataBase, 8, N, i+1)
			}
			r.g.SetDesc(qsize-1, tableAddr, 32, I, 0)
			virtiotest.WriteDesc(r.mem, tableAddr, dataBase, 8, N, 1)
			virtiotest.WriteDesc(r.mem, tableAddr+16, dataBase, 8, 0, 0)
			r.g.Publish(0)
		}, virtio.ErrChainTooLong},
		{"too many bytes", allFeat, func(r *rig) {
			for i := range uint16(qsize) {
				r.g.SetDesc(i, 0, testMem, N|W, i+1) // overlapping 8 MiB buffers
			}
			r.g.SetDesc(qsize-1, 0, testMem, W, 0)
			r.g.Publish(0)
		}, virtio.ErrChainTooBig},
		{"readable after writable", allFeat, seq(desc(0, dataBase, 8, N|W, 1), desc(1, dataBase, 8, 0, 0), publish0), virtio.ErrReadableAfterWritable},
		{"buffer outside memory", allFeat, seq(desc(0, testMem-4, 8, 0, 0), publish0), virtio.ErrDescAddress},
		{"buffer address wraps", allFeat, seq(desc(0, ^uint64(0)-2, 8, 0, 0), publish0), virtio.ErrDescAddress},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, tc.features)
			tc.setup(r)
			c, err := r.q.Pop()
			if c != nil || !errors.Is(err, tc.want) {
				t.Fatalf("Pop = %v, %v; want %v", c, err, tc.want)
			}
			var qe *virtio.Error
			if !errors.As(err, &qe) || qe.Fatal() != tc.want.Fatal() {
				t.Fatalf("error %#v: fatal mismatch", err)
			}
			if err.Error() == "" {
				t.Fatal("empty message")
			}
			if tc.want.Fatal() {
				if _, err2 := r.q.Pop(); !errors.Is(err2, tc.want) {
					t.Fatalf("broken queue popped again: %v", err2)
				}
				if r.q.Broken() == nil {
					t.Fatal("Broken() = nil")
				}
				if err := r.q.AddUsed(0, 0); err == nil {
					t.Fatal("AddUsed on a broken queue succeeded")
				}
				return
			}
			// The bad chain went back to the driver with length 0 and the
			// queue still works.
			if id, n, ok := r.g.PopUsed(); !ok || id != 0 || n != 0 {
				t.Fatalf("bad chain not returned: %d %d %v", id, n, ok)
			}
			head := r.g.AddChain(buf(0, 8, false))
			if c, err := r.q.Pop(); err != nil || c == nil || c.Head != head {
				t.Fatalf("queue unusable after a bad chain: %v %v", c, err)
			}
		})
	}
}

func TestNewQueueValidates(t *testing.T) {
	mem := virtiotest.NewMemory(t, 1<<20)
	good := virtio.QueueConfig{Size: 16, DescTable: 0x1000, AvailRing: 0x2000, UsedRing: 0x3000}
	for _, tc := range []struct {
		name string
		mod  func(c *virtio.QueueConfig)
		want virtio.ErrorKind
	}{
		{"size zero", func(c *virtio.QueueConfig) { c.Size = 0 }, virtio.ErrQueueSize},
		{"size not power of two", func(c *virtio.QueueConfig) { c.Size = 3 }, virtio.ErrQueueSize},
		{"size too big", func(c *virtio.QueueConfig) { c.Size = 65535 }, virtio.ErrQueueSize},
		{"desc misaligned", func(c *virtio.QueueConfig) { c.DescTable = 0x1008 }, virtio.ErrRingAlignment},
		{"avail misaligned", func(c *virtio.QueueConfig) { c.AvailRing = 0x2001 }, virtio.ErrRingAlignment},
		{"used misaligned", func(c *virtio.QueueConfig) { c.UsedRing = 0x3002 }, virtio.ErrRingAlignment},
		{"desc outside memory", func(c *virtio.QueueConfig) { c.DescTable = 1<<20 - 16 }, virtio.ErrRingAddress},
		{"used outside memory", func(c *virtio.QueueConfig) { c.UsedRing = 1 << 40 }, virtio.ErrRingAddress},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.mod(&c)
			if q, err := virtio.NewQueue(mem, c); q != nil || !errors.Is(err, tc.want) {
				t.Fatalf("NewQueue = %v, %v; want %v", q, err, tc.want)
			}
		})
	}
	if _, err := virtio.NewQueue(mem, good); err != nil {
		t.Fatal(err)
	}
}

func TestIndexWrapAround(t *testing.T) {
	r := newRig(t, allFeat)
	for i := range 70000 { // past the uint16 wrap of every index
		head := r.g.AddChain(buf(0, 8, false), buf(1, 8, true))
		c, err := r.q.Pop()
		if err != nil || c == nil || c.Head != head {
			t.Fatalf("iteration %d: Pop = %v, %v", i, c, err)
		}
		if err := r.q.AddUsed(c.Head, uint32(i)); err != nil {
			t.Fatal(err)
		}
		if id, n, ok := r.g.PopUsed(); !ok || id != head || n != uint32(i) {
			t.Fatalf("iteration %d: used %d %d %v", i, id, n, ok)
		}
	}
}

func TestNeedsInterrupt(t *testing.T) {
	t.Run("flags", func(t *testing.T) {
		r := newRig(t, 0)
		if r.q.NeedsInterrupt() {
			t.Fatal("interrupt with nothing used")
		}
		add := func() {
			r.g.AddChain(buf(0, 8, true))
			c, _ := r.q.Pop()
			r.q.AddUsed(c.Head, 0)
		}
		add()
		if !r.q.NeedsInterrupt() {
			t.Fatal("no interrupt for a used buffer")
		}
		r.g.SetAvailFlags(1) // VRING_AVAIL_F_NO_INTERRUPT
		add()
		if r.q.NeedsInterrupt() {
			t.Fatal("interrupt despite NO_INTERRUPT")
		}
	})
	t.Run("event idx", func(t *testing.T) {
		r := newRig(t, allFeat)
		add := func(n int) {
			for range n {
				r.g.AddChain(buf(0, 8, true))
				c, err := r.q.Pop()
				if err != nil || c == nil {
					t.Fatal(c, err)
				}
				r.q.AddUsed(c.Head, 0)
			}
		}
		r.g.SetUsedEvent(0)
		add(1) // used idx 0 -> 1 crosses used_event 0
		if !r.q.NeedsInterrupt() {
			t.Fatal("want interrupt crossing used_event 0")
		}
		r.g.SetUsedEvent(5)
		add(2) // 1 -> 3: not yet at 5
		if r.q.NeedsInterrupt() {
			t.Fatal("interrupt before used_event")
		}
		add(3) // 3 -> 6 crosses 5
		if !r.q.NeedsInterrupt() {
			t.Fatal("want interrupt crossing used_event 5")
		}
		add(1) // 6 -> 7, used_event still 5: already crossed
		if r.q.NeedsInterrupt() {
			t.Fatal("second interrupt for the same used_event")
		}
	})
}

func TestNotificationSuppression(t *testing.T) {
	t.Run("flags", func(t *testing.T) {
		r := newRig(t, 0)
		r.q.DisableNotification()
		if r.g.UsedFlags() != 1 {
			t.Fatal("NO_NOTIFY not set")
		}
		more, err := r.q.EnableNotification()
		if err != nil || more || r.g.UsedFlags() != 0 {
			t.Fatalf("EnableNotification = %v, %v, flags %d", more, err, r.g.UsedFlags())
		}
		r.g.AddChain(buf(0, 8, false))
		if more, _ := r.q.EnableNotification(); !more {
			t.Fatal("pending chain not reported")
		}
	})
	t.Run("event idx", func(t *testing.T) {
		r := newRig(t, allFeat)
		for range 3 {
			r.g.AddChain(buf(0, 8, false))
		}
		for range 3 {
			r.q.Pop()
		}
		more, err := r.q.EnableNotification()
		if err != nil || more {
			t.Fatal(more, err)
		}
		if ev := r.g.AvailEvent(); ev != 3 {
			t.Fatalf("avail_event %d, want 3", ev)
		}
		r.g.AddChain(buf(0, 8, false))
		if more, _ := r.q.EnableNotification(); !more {
			t.Fatal("pending chain not reported")
		}
	})
	t.Run("bad idx", func(t *testing.T) {
		r := newRig(t, allFeat)
		r.g.SetAvailIdx(1000)
		if _, err := r.q.EnableNotification(); !errors.Is(err, virtio.ErrInvalidAvailIdx) {
			t.Fatalf("err %v", err)
		}
	})
}

func TestCursor(t *testing.T) {
	r := newRig(t, allFeat)
	for i := range 3 {
		r.mem.WriteAt(bytes.Repeat([]byte{byte('a' + i)}, 4), int64(dataBase+uint64(i)*0x1000))
	}
	r.g.AddChain(buf(0, 4, false), buf(1, 4, false), buf(2, 4, false), buf(3, 3, true), buf(4, 0, true), buf(5, 3, true))
	c, err := r.q.Pop()
	if err != nil {
		t.Fatal(err)
	}
	rd := c.Readable()
	if rd.Len() != 12 {
		t.Fatalf("readable %d", rd.Len())
	}
	got, _ := io.ReadAll(&rd)
	if string(got) != "aaaabbbbcccc" {
		t.Fatalf("read %q", got)
	}
	rd = c.Readable()
	if n := rd.Skip(3); n != 3 {
		t.Fatal(n)
	}
	lim := rd.Limit(6)
	got, _ = io.ReadAll(&lim)
	if string(got) != "abbbbc" || rd.Len() != 9 {
		t.Fatalf("limited read %q, rest %d", got, rd.Len())
	}
	if p := rd.Next(100); string(p) != "a" {
		t.Fatalf("Next = %q", p)
	}

	w := c.Writable()
	if w.Len() != 6 {
		t.Fatalf("writable %d", w.Len())
	}
	if n, err := w.Write([]byte("xyzuvwEXTRA")); n != 6 || err != io.ErrShortWrite {
		t.Fatalf("Write = %d, %v", n, err)
	}
	a, _ := r.mem.Slice(dataBase+3*0x1000, 3)
	b, _ := r.mem.Slice(dataBase+5*0x1000, 3)
	if string(a)+string(b) != "xyzuvw" {
		t.Fatalf("guest got %q %q", a, b)
	}
	w = c.Writable()
	if n := w.Zero(4); n != 4 || string(a) != "\x00\x00\x00" || string(b) != "\x00vw" {
		t.Fatalf("Zero: %d %q %q", n, a, b)
	}
	var empty virtio.Cursor
	if n, err := empty.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatal(n, err)
	}
}

func TestErrorText(t *testing.T) {
	e := &virtio.Error{Kind: virtio.ErrInvalidAvailIdx, Queue: 2, Index: 5, Value: 300}
	if got := e.Error(); got != "virtqueue 2: invalid available index: avail idx 300, device at 5" {
		t.Fatal(got)
	}
	if !e.Fatal() || !errors.Is(e, virtio.ErrInvalidAvailIdx) || errors.Is(e, virtio.ErrChainLoop) {
		t.Fatal("kind matching")
	}
	if virtio.ErrorKind(200).Error() == "" {
		t.Fatal("unknown kind has no text")
	}
}

func BenchmarkQueuePopAddUsed(b *testing.B) {
	r := newRig(b, allFeat)
	// One 3-descriptor chain (header, data, status), republished each time.
	r.g.SetDesc(0, dataBase, 16, virtiotest.DescNext, 1)
	r.g.SetDesc(1, dataBase+0x1000, 4096, virtiotest.DescNext|virtiotest.DescWrite, 2)
	r.g.SetDesc(2, dataBase+0x2000, 1, virtiotest.DescWrite, 0)
	avail, _ := r.mem.Slice(ringBase+16*qsize, 4+2*qsize)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		binary.LittleEndian.PutUint16(avail[4+2*(i%qsize):], 0)
		binary.LittleEndian.PutUint16(avail[2:], uint16(i+1))
		c, err := r.q.Pop()
		if err != nil || c == nil {
			b.Fatal(c, err)
		}
		if err := r.q.AddUsed(c.Head, uint32(c.WritableLen())); err != nil {
			b.Fatal(err)
		}
	}
	if !r.q.NeedsInterrupt() {
		b.Fatal("no interrupt")
	}
}
