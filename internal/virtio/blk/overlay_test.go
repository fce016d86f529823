package blk

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
)

// newOverlay creates a base image with content base and an overlay over it.
func newOverlay(tb testing.TB, base []byte, opt OverlayOptions) *Overlay {
	tb.Helper()
	return newOverlayIn(tb, tb.TempDir(), base, opt)
}

// memDir returns a fresh directory on tmpfs if there is one: fdatasync is
// free there, which keeps the model tests (hundreds of flushes) fast. The
// kill -9 they simulate keeps the page cache, so the file system does not
// change what they check.
func memDir(tb testing.TB) string {
	dir, err := os.MkdirTemp("/dev/shm", "husk-blk-")
	if err != nil {
		return tb.TempDir()
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func newOverlayIn(tb testing.TB, dir string, base []byte, opt OverlayOptions) *Overlay {
	tb.Helper()
	bp, op := filepath.Join(dir, "base.img"), filepath.Join(dir, "vm.cow")
	if err := os.WriteFile(bp, base, 0o444); err != nil {
		tb.Fatal(err)
	}
	if err := CreateOverlay(op, bp, opt); err != nil {
		tb.Fatal(err)
	}
	o, err := OpenOverlay(op, bp)
	if err != nil {
		tb.Fatal(err)
	}
	return o
}

func paths(o *Overlay) (overlay, base string) { return o.f.Name(), o.base.Name() }

func reopen(tb testing.TB, o *Overlay, clean bool) *Overlay {
	tb.Helper()
	op, bp := paths(o)
	if clean {
		if err := o.Close(); err != nil {
			tb.Fatal(err)
		}
	} else {
		o.abandon()
	}
	o2, err := OpenOverlay(op, bp)
	if err != nil {
		tb.Fatal(err)
	}
	return o2
}

func readAll(tb testing.TB, o *Overlay) []byte {
	tb.Helper()
	b := make([]byte, o.Size())
	if _, err := o.ReadAt(b, 0); err != nil {
		tb.Fatal(err)
	}
	return b
}

func TestOverlayCreateCopiesNothing(t *testing.T) {
	dir := t.TempDir()
	bp := filepath.Join(dir, "base.img")
	// A 256 MiB base, mostly sparse, with data at both ends.
	f, _ := os.Create(bp)
	f.WriteAt(pattern(1<<20, 1), 0)
	f.WriteAt(pattern(1<<20, 2), 255<<20)
	f.Close()
	op := filepath.Join(dir, "vm.cow")
	if err := CreateOverlay(op, bp, OverlayOptions{}); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(op, &st); err != nil {
		t.Fatal(err)
	}
	if used := st.Blocks * 512; used > 64<<10 {
		t.Fatalf("new overlay uses %d bytes on disk", used)
	}
	if err := CreateOverlay(op, bp, OverlayOptions{}); !errors.Is(err, os.ErrExist) {
		t.Fatalf("second create: %v", err)
	}
	o, err := OpenOverlay(op, bp)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	got := make([]byte, 1<<20)
	o.ReadAt(got, 255<<20)
	if !bytes.Equal(got, pattern(1<<20, 2)) {
		t.Fatal("overlay does not show the base")
	}
	if base, data, zero := o.BlockCounts(); data != 0 || zero != 0 || base != (256<<20)/4096 {
		t.Fatalf("counts %d %d %d", base, data, zero)
	}
}

func TestOverlayWritesNeverReachBase(t *testing.T) {
	base := pattern(1<<20, 9)
	o := newOverlay(t, base, OverlayOptions{})
	_, bp := paths(o)
	sum := sha256.Sum256(base)
	o.WriteAt(pattern(100000, 1), 12345)
	o.WriteZeroes(200000, 300000, true)
	o.Discard(600000, 4096)
	o.Flush()
	o.Close()
	got, _ := os.ReadFile(bp)
	if sha256.Sum256(got) != sum {
		t.Fatal("base image changed")
	}
}

func TestOverlayPartialBlockWrite(t *testing.T) {
	base := pattern(64<<10, 3)
	o := newOverlay(t, base, OverlayOptions{})
	defer o.Close()
	// 512 bytes in the middle of block 2, then 10 bytes spanning blocks 4-5.
	o.WriteAt(bytes.Repeat([]byte{0xaa}, 512), 2*4096+1024)
	o.WriteAt(bytes.Repeat([]byte{0xbb}, 10), 5*4096-5)
	want := append([]byte(nil), base...)
	copy(want[2*4096+1024:], bytes.Repeat([]byte{0xaa}, 512))
	copy(want[5*4096-5:], bytes.Repeat([]byte{0xbb}, 10))
	if !bytes.Equal(readAll(t, o), want) {
		t.Fatal("neighbouring base bytes lost")
	}
	if _, data, _ := o.BlockCounts(); data != 3 {
		t.Fatalf("%d data blocks, want 3", data)
	}
}

func TestOverlayZeroesNeverShowBase(t *testing.T) {
	base := pattern(64<<10, 4)
	o := newOverlay(t, base, OverlayOptions{})
	want := append([]byte(nil), base...)
	for _, r := range []struct{ off, n int64 }{{4096, 8192}, {100, 50}, {20000, 10000}, {60000, 5536}} {
		if err := o.Discard(r.off, r.n); err != nil {
			t.Fatal(err)
		}
		clear(want[r.off : r.off+r.n])
	}
	if !bytes.Equal(readAll(t, o), want) {
		t.Fatal("discarded range shows base data")
	}
	if _, _, zero := o.BlockCounts(); zero < 3 {
		t.Fatalf("only %d zeroed blocks", zero)
	}
	o = reopen(t, o, true)
	defer o.Close()
	if !bytes.Equal(readAll(t, o), want) {
		t.Fatal("zeroed blocks show base data after reopen")
	}
}

// TestOverlayFlushSurvivesKill: after Flush, abandoning the files (kill -9)
// loses nothing; writes after the flush show either old or new per block.
func TestOverlayFlushSurvivesKill(t *testing.T) {
	base := pattern(256<<10, 5)
	o := newOverlay(t, base, OverlayOptions{})
	w := pattern(50000, 6)
	o.WriteAt(w, 7777)
	o.Discard(100000, 40000)
	if err := o.Flush(); err != nil {
		t.Fatal(err)
	}
	want := append([]byte(nil), base...)
	copy(want[7777:], w)
	clear(want[100000:140000])
	o = reopen(t, o, false)
	if !bytes.Equal(readAll(t, o), want) {
		t.Fatal("flushed writes lost after kill")
	}
	o.Close()
}

// TestOverlayTornMapWrite: a torn write of a map slot falls back to the
// chunk's previous flush; two damaged copies are reported, not guessed.
func TestOverlayTornMapWrite(t *testing.T) {
	base := pattern(64<<10, 7)
	o := newOverlay(t, base, OverlayOptions{})
	first := pattern(4096, 1)
	o.WriteAt(first, 0)
	o.Flush() // generation 1, slot B of chunk 0
	o.WriteAt(pattern(4096, 2), 4096)
	o.Flush() // generation 2, slot A of chunk 0
	op, bp := paths(o)
	o.Close()

	f, _ := os.OpenFile(op, os.O_RDWR, 0)
	f.WriteAt([]byte{0xde, 0xad}, slotOffset(0, 0)+100) // tear the newest copy
	f.Close()
	o, err := OpenOverlay(op, bp)
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte(nil), base...)
	copy(want, first)
	if !bytes.Equal(readAll(t, o), want) {
		t.Fatal("did not fall back to the previous flush")
	}
	// The next flush must not overwrite the surviving copy.
	o.WriteAt(pattern(4096, 3), 8192)
	o.Flush()
	o.Close()
	o, err = OpenOverlay(op, bp)
	if err != nil {
		t.Fatal(err)
	}
	copy(want[8192:], pattern(4096, 3))
	if !bytes.Equal(readAll(t, o), want) {
		t.Fatal("flush after a fallback lost data")
	}
	o.Close()

	f, _ = os.OpenFile(op, os.O_RDWR, 0)
	f.WriteAt([]byte{1}, slotOffset(0, 0)+50)
	f.WriteAt([]byte{1}, slotOffset(0, 1)+50)
	f.Close()
	if _, err := OpenOverlay(op, bp); !errors.Is(err, ErrOverlayCorrupt) {
		t.Fatalf("two damaged copies: %v", err)
	}
}

func TestOverlayOpenChecks(t *testing.T) {
	base := pattern(64<<10, 1)
	o := newOverlay(t, base, OverlayOptions{})
	op, bp := paths(o)
	o.Close()
	good, _ := os.ReadFile(op)
	for _, tc := range []struct {
		name string
		mod  func(t *testing.T)
	}{
		{"bad magic", func(t *testing.T) { patch(t, op, 0, []byte("XUSKCOW")) }},
		{"bad checksum", func(t *testing.T) { patch(t, op, 12, []byte{0, 2}) }},
		{"truncated", func(t *testing.T) { os.Truncate(op, 8192) }},
		{"base resized", func(t *testing.T) { os.Truncate(bp, 32<<10) }},
		{"bad state", func(t *testing.T) {
			page := make([]byte, pageSize)
			payload := make([]byte, slotPayload)
			payload[0] = 3 // state 3 for block 0
			encodeSlot(page, 9, 0, payload)
			patch(t, op, slotOffset(0, 0), page)
		}},
		{"state past the end", func(t *testing.T) {
			page := make([]byte, pageSize)
			payload := make([]byte, slotPayload)
			payload[100] = 1 // block 400 of a 16-block disk
			encodeSlot(page, 9, 0, payload)
			patch(t, op, slotOffset(0, 0), page)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.WriteFile(op, good, 0o644)
			os.WriteFile(bp, base, 0o444)
			tc.mod(t)
			if o, err := OpenOverlay(op, bp); err == nil {
				o.Close()
				t.Fatal("opened")
			}
		})
	}
	for _, opt := range []OverlayOptions{{BlockSize: 1000}, {BlockSize: 256}, {Size: 1000}, {BlockSize: 2 << 20}} {
		if err := CreateOverlay(filepath.Join(t.TempDir(), "x"), bp, opt); err == nil {
			t.Errorf("created with %+v", opt)
		}
	}
}

func patch(t *testing.T, path string, off int64, b []byte) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(b, off)
	f.Close()
}

// TestOverlaySharedBase: VMs of one template share the base; each sees only
// its own writes.
func TestOverlaySharedBase(t *testing.T) {
	dir := t.TempDir()
	base := pattern(1<<20, 8)
	bp := filepath.Join(dir, "base.img")
	os.WriteFile(bp, base, 0o444)
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			op := filepath.Join(dir, fmt.Sprintf("vm%d.cow", i))
			if err := CreateOverlay(op, bp, OverlayOptions{}); err != nil {
				errs <- err
				return
			}
			o, err := OpenOverlay(op, bp)
			if err != nil {
				errs <- err
				return
			}
			defer o.Close()
			mine := bytes.Repeat([]byte{byte(i)}, 10000)
			o.WriteAt(mine, int64(i)*3000)
			got := make([]byte, len(base))
			o.ReadAt(got, 0)
			want := append([]byte(nil), base...)
			copy(want[i*3000:], mine)
			if !bytes.Equal(got, want) {
				errs <- fmt.Errorf("vm %d sees other data", i)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(bp); !bytes.Equal(got, base) {
		t.Fatal("base changed")
	}
}

// model is the reference for an overlay: the current content, and the
// content as of the last flush.
type model struct {
	cur, durable []byte
	bs           int64
	touched      map[int64]bool // blocks changed since the last flush
}

func newModel(o *Overlay) *model {
	size := o.Size()
	m := &model{cur: make([]byte, size), durable: make([]byte, size), bs: int64(o.BlockSize()), touched: map[int64]bool{}}
	o.ReadAt(m.cur, 0)
	copy(m.durable, m.cur)
	return m
}

func (m *model) touch(off, n int64) {
	for b := off / m.bs; b*m.bs < off+n; b++ {
		m.touched[b] = true
	}
}

func (m *model) block(p []byte, b int64) []byte {
	return p[b*m.bs : min((b+1)*m.bs, int64(len(p)))]
}

// flushed records that every change so far is durable.
func (m *model) flushed() {
	for b := range m.touched {
		copy(m.block(m.durable, b), m.block(m.cur, b))
	}
	clear(m.touched)
}

// runModel applies ops decoded from a byte stream to an overlay and the
// model, checking reads. An op is a kind byte (mod 12: reads and writes are
// three times as likely as the rest) and two le32 values, offset and length.
// Kinds: 0 read, 1 write, 2 discard, 3 write-zeroes, 4 flush, 5 clean
// reopen, 6 kill and reopen.
func runModel(t *testing.T, o *Overlay, m *model, ops []byte) *Overlay {
	size := int64(len(m.cur))
	next := func() uint32 {
		if len(ops) < 4 {
			ops = nil
			return 0
		}
		v := uint32(ops[0]) | uint32(ops[1])<<8 | uint32(ops[2])<<16 | uint32(ops[3])<<24
		ops = ops[4:]
		return v
	}
	for step := 0; len(ops) > 0; step++ {
		kind := [...]int{0, 0, 0, 1, 1, 1, 2, 3, 4, 5, 6, 0}[ops[0]%12]
		ops = ops[1:]
		off := int64(next()) % size
		n := int64(next()) % min(size-off+1, 5*m.bs)
		switch kind {
		case 0:
			got := make([]byte, n)
			if _, err := o.ReadAt(got, off); err != nil {
				t.Fatalf("step %d read: %v", step, err)
			}
			if !bytes.Equal(got, m.cur[off:off+n]) {
				t.Fatalf("step %d: read %d+%d differs from the model", step, off, n)
			}
		case 1:
			p := pattern(int(n), byte(step))
			if _, err := o.WriteAt(p, off); err != nil {
				t.Fatalf("step %d write: %v", step, err)
			}
			copy(m.cur[off:], p)
			m.touch(off, n)
		case 2, 3:
			var err error
			if kind == 2 {
				err = o.Discard(off, n)
			} else {
				err = o.WriteZeroes(off, n, step%2 == 0)
			}
			if err != nil {
				t.Fatalf("step %d zero: %v", step, err)
			}
			clear(m.cur[off : off+n])
			m.touch(off, n)
		case 4:
			if err := o.Flush(); err != nil {
				t.Fatal(err)
			}
			m.flushed()
		case 5:
			o = reopen(t, o, true)
			m.flushed()
		case 6:
			// kill -9: the page cache survives, the in-memory map does not.
			// A block changed since the last flush reads as of that flush
			// or as now; every other block reads as now.
			o = reopen(t, o, false)
			got := readAll(t, o)
			if !bytes.Equal(got, m.cur) {
				for b := int64(0); b*m.bs < size; b++ {
					g := m.block(got, b)
					if bytes.Equal(g, m.block(m.cur, b)) || m.touched[b] && bytes.Equal(g, m.block(m.durable, b)) {
						continue
					}
					t.Fatalf("step %d: after kill, block %d is neither flushed nor current", step, b)
				}
			}
			for b := range m.touched {
				copy(m.block(m.cur, b), m.block(got, b))
			}
			m.flushed()
		}
	}
	got := readAll(t, o)
	if !bytes.Equal(got, m.cur) {
		t.Fatal("final content differs from the model")
	}
	return o
}

func TestOverlayModel(t *testing.T) {
	for _, tc := range []struct {
		name       string
		baseSize   int
		opt        OverlayOptions
		seeds, ops int
	}{
		{"4k blocks", 37*4096 + 1024, OverlayOptions{}, 8, 300},
		{"512 blocks, three map chunks", 64 << 10, OverlayOptions{BlockSize: 512, Size: 2*blocksPerChunk*512 + 4096}, 2, 150},
		{"disk larger than base", 20 * 4096, OverlayOptions{Size: 30 * 4096}, 4, 300},
		{"64k blocks", 10 * 65536, OverlayOptions{BlockSize: 65536}, 3, 300},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if testing.Short() {
				tc.seeds = 1
			}
			for seed := range uint64(tc.seeds) {
				rng := rand.New(rand.NewPCG(seed, 42))
				o := newOverlayIn(t, memDir(t), pattern(tc.baseSize, byte(seed)), tc.opt)
				m := newModel(o)
				ops := make([]byte, tc.ops*9)
				for i := range ops {
					ops[i] = byte(rng.Uint32())
				}
				// Spread offsets over the disk: for a big disk most random
				// 32-bit offsets land anywhere, which is what we want.
				o = runModel(t, o, m, ops)
				o.Close()
			}
		})
	}
}

// FuzzOverlay runs fuzzer-chosen operation sequences against the model.
func FuzzOverlay(f *testing.F) {
	f.Add([]byte{1, 0, 16, 0, 0, 0, 32, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{2, 1, 2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{1, 0xff, 0x0f, 0, 0, 0x10, 0x10, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 3, 7, 0, 0, 0, 9, 9, 0, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) > 2000 {
			return
		}
		o := newOverlayIn(t, memDir(t), pattern(11*1024, 3), OverlayOptions{BlockSize: 1024, Size: 13 * 1024})
		m := newModel(o)
		o = runModel(t, o, m, ops)
		o.Close()
	})
}

func BenchmarkOverlayRead4K(b *testing.B) {
	o := newOverlay(b, pattern(64<<20, 1), OverlayOptions{})
	defer o.Close()
	for i := int64(0); i < 64<<20; i += 2 << 20 { // some blocks in the overlay
		o.WriteAt(pattern(1<<20, 2), i)
	}
	p := make([]byte, 4096)
	b.SetBytes(4096)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := o.ReadAt(p, int64(i%16384)*4096); err != nil {
			b.Fatal(err)
		}
	}
}
