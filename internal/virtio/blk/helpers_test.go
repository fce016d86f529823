package blk

import (
	"encoding/binary"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/huskvm/husk/internal/eventfd"
	"github.com/huskvm/husk/internal/guestmem"
	"github.com/huskvm/husk/internal/virtio/mmio"
	vt "github.com/huskvm/husk/internal/virtio/virtiotest"
)

// memBackend is an in-memory disk that fails the test on any access outside
// it: the device must never pass an unchecked range to a backend.
type memBackend struct {
	tb      testing.TB
	b       []byte
	flushes int
}

func (m *memBackend) in(off, n int64) {
	if off < 0 || n < 0 || off > int64(len(m.b)) || n > int64(len(m.b))-off {
		m.tb.Fatalf("backend access %d+%d outside %d bytes", off, n, len(m.b))
	}
}
func (m *memBackend) Size() int64 { return int64(len(m.b)) }
func (m *memBackend) ReadAt(p []byte, off int64) (int, error) {
	m.in(off, int64(len(p)))
	return copy(p, m.b[off:]), nil
}
func (m *memBackend) WriteAt(p []byte, off int64) (int, error) {
	m.in(off, int64(len(p)))
	return copy(m.b[off:], p), nil
}
func (m *memBackend) Flush() error { m.flushes++; return nil }
func (m *memBackend) Discard(off, n int64) error {
	m.in(off, n)
	clear(m.b[off : off+n])
	return nil
}
func (m *memBackend) WriteZeroes(off, n int64, _ bool) error { return m.Discard(off, n) }
func (m *memBackend) Close() error                           { return nil }

// abandon closes an overlay's files without flushing: what kill -9 leaves.
func (o *Overlay) abandon() {
	o.f.Close()
	o.base.Close()
}

// rig is a blk device behind a virtio-mmio transport with a fake driver.
type rig struct {
	mem *guestmem.Memory
	dev *Device
	drv *vt.Driver
}

const allFeatures = ^uint64(0)

func newRig(tb testing.TB, b Backend, cfg Config) *rig {
	tb.Helper()
	mem := vt.NewMemory(tb, 16<<20)
	dev, err := New(b, cfg, nil)
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
	if err := drv.Setup(allFeatures, 128); err != nil {
		tb.Fatal(err)
	}
	return &rig{mem: mem, dev: dev, drv: drv}
}

func reqHeader(typ uint32, sector uint64) []byte {
	h := make([]byte, 16)
	binary.LittleEndian.PutUint32(h[0:], typ)
	binary.LittleEndian.PutUint64(h[8:], sector)
	return h
}

func ranges(segs ...segment) []byte {
	var b []byte
	for _, s := range segs {
		b = binary.LittleEndian.AppendUint64(b, s.Sector)
		b = binary.LittleEndian.AppendUint32(b, s.Num)
		b = binary.LittleEndian.AppendUint32(b, s.Flags)
	}
	return b
}

// do sends one request: header, then out as device-readable data, then
// inLen device-writable bytes, then the status byte. It returns the status,
// the device-written data and the used length.
func (r *rig) do(typ uint32, sector uint64, out []byte, inLen int) (byte, []byte, uint32) {
	bufs := []vt.Buf{{Addr: r.drv.Buffer(reqHeader(typ, sector)), Len: 16}}
	if len(out) > 0 {
		bufs = append(bufs, vt.Buf{Addr: r.drv.Buffer(out), Len: uint32(len(out))})
	}
	var in uint64
	if inLen > 0 {
		in = r.drv.Alloc(inLen)
		bufs = append(bufs, vt.Buf{Addr: in, Len: uint32(inLen), Write: true})
	}
	st := r.drv.Buffer([]byte{0xee})
	bufs = append(bufs, vt.Buf{Addr: st, Len: 1, Write: true})
	used := r.drv.Submit(0, bufs...)
	var data []byte
	if inLen > 0 {
		data = r.drv.Bytes(in, inLen)
	}
	return r.drv.Bytes(st, 1)[0], data, used
}

// resetHeap lets long tests reuse the guest heap.
func (r *rig) resetHeap() { r.drv.SetHeap(vt.DriverHeapBase) }

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) + seed
	}
	return b
}

func writeFile(tb testing.TB, name string, data []byte) string {
	tb.Helper()
	p := filepath.Join(tb.TempDir(), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		tb.Fatal(err)
	}
	return p
}
