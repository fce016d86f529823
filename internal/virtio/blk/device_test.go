package blk

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/huskvm/husk/internal/virtio"
	vt "github.com/huskvm/husk/internal/virtio/virtiotest"
)

const diskSize = 1 << 20 // 2048 sectors

func rawRig(t *testing.T, cfg Config) (*rig, string) {
	t.Helper()
	path := writeFile(t, "disk.img", pattern(diskSize, 1))
	b, err := OpenRaw(path, cfg.ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	return newRig(t, b, cfg), path
}

func TestReadWrite(t *testing.T) {
	r, path := rawRig(t, Config{})
	st, data, used := r.do(TypeIn, 3, nil, 4096)
	if st != StatusOK || used != 4097 || !bytes.Equal(data, pattern(diskSize, 1)[3*512:3*512+4096]) {
		t.Fatalf("read: status %d used %d", st, used)
	}
	w := pattern(8192, 99)
	if st, _, used := r.do(TypeOut, 10, w, 0); st != StatusOK || used != 1 {
		t.Fatalf("write: status %d used %d", st, used)
	}
	if st, data, _ := r.do(TypeIn, 10, nil, 8192); st != StatusOK || !bytes.Equal(data, w) {
		t.Fatal("read back differs")
	}
	if st, _, _ := r.do(TypeFlush, 0, nil, 0); st != StatusOK {
		t.Fatal("flush failed")
	}
	onDisk, _ := os.ReadFile(path)
	if !bytes.Equal(onDisk[10*512:10*512+8192], w) {
		t.Fatal("write did not reach the image")
	}
	// Data split across descriptors at odd boundaries.
	hdr := r.drv.Buffer(reqHeader(TypeIn, 0))
	a, b := r.drv.Alloc(100), r.drv.Alloc(412)
	stat := r.drv.Alloc(1)
	n := r.drv.Submit(0, vt.Buf{Addr: hdr, Len: 16}, vt.Buf{Addr: a, Len: 100, Write: true},
		vt.Buf{Addr: b, Len: 412, Write: true}, vt.Buf{Addr: stat, Len: 1, Write: true})
	got := append(r.drv.Bytes(a, 100), r.drv.Bytes(b, 412)...)
	if n != 513 || r.drv.Bytes(stat, 1)[0] != StatusOK || !bytes.Equal(got, pattern(diskSize, 1)[:512]) {
		t.Fatal("scattered read")
	}
	rb, wb, fl, failed := r.dev.Stats()
	if rb == 0 || wb != 8192 || fl != 1 || failed != 0 {
		t.Fatalf("stats %d %d %d %d", rb, wb, fl, failed)
	}
}

func TestRequestErrors(t *testing.T) {
	r, path := rawRig(t, Config{})
	before, _ := os.ReadFile(path)
	const capSectors = diskSize / 512
	for _, tc := range []struct {
		name   string
		typ    uint32
		sector uint64
		out    []byte
		inLen  int
		want   byte
	}{
		{"read past end", TypeIn, capSectors, nil, 512, StatusIOErr},
		{"read straddling end", TypeIn, capSectors - 1, nil, 1024, StatusIOErr},
		{"read sector overflow", TypeIn, ^uint64(0) - 1, nil, 1024, StatusIOErr},
		{"write past end", TypeOut, capSectors, make([]byte, 512), 0, StatusIOErr},
		{"write huge sector", TypeOut, 1 << 60, make([]byte, 512), 0, StatusIOErr},
		{"read partial sector", TypeIn, 0, nil, 100, StatusIOErr},
		{"write partial sector", TypeOut, 0, make([]byte, 700), 0, StatusIOErr},
		{"lifetime unsupported", TypeGetLifetime, 0, nil, 16, StatusUnsupp},
		{"secure erase unsupported", TypeSecureErase, 0, ranges(segment{0, 1, 0}), 0, StatusUnsupp},
		{"unknown type", 0xff, 0, nil, 0, StatusUnsupp},
		{"legacy barrier", 0x80000001, 0, make([]byte, 512), 0, StatusUnsupp},
		{"discard unmap flag", TypeDiscard, 0, ranges(segment{0, 8, flagUnmap}), 0, StatusUnsupp},
		{"discard unknown flag", TypeDiscard, 0, ranges(segment{0, 8, 4}), 0, StatusUnsupp},
		{"write zeroes unknown flag", TypeWriteZeroes, 0, ranges(segment{0, 8, 2}), 0, StatusUnsupp},
		{"discard past end", TypeDiscard, 0, ranges(segment{capSectors - 1, 2, 0}), 0, StatusIOErr},
		{"discard over limit", TypeDiscard, 0, ranges(segment{0, MaxDiscardSectors + 1, 0}), 0, StatusIOErr},
		{"discard no range", TypeDiscard, 0, nil, 0, StatusIOErr},
		{"discard ragged payload", TypeDiscard, 0, make([]byte, 20), 0, StatusIOErr},
		{"discard too many ranges", TypeDiscard, 0, make([]byte, 16*(MaxDiscardSegments+1)), 0, StatusIOErr},
		{"discard bad second range", TypeDiscard, 0, ranges(segment{0, 8, 0}, segment{capSectors, 1, 0}), 0, StatusIOErr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, _, used := r.do(tc.typ, tc.sector, tc.out, tc.inLen)
			if st != tc.want {
				t.Fatalf("status %d, want %d", st, tc.want)
			}
			if tc.typ == TypeIn && used != 1 {
				t.Fatalf("failed read reported %d bytes", used)
			}
		})
	}
	after, _ := os.ReadFile(path)
	if !bytes.Equal(before, after) {
		t.Fatal("a failed request changed the image")
	}
}

func TestMalformedChains(t *testing.T) {
	r, _ := rawRig(t, Config{})
	// No writable byte: nowhere to put a status, so nothing is written.
	hdr := r.drv.Buffer(reqHeader(TypeIn, 0))
	if n := r.drv.Submit(0, vt.Buf{Addr: hdr, Len: 16}); n != 0 {
		t.Fatalf("used %d", n)
	}
	// Short header: IOERR.
	st := r.drv.Buffer([]byte{0xee})
	if n := r.drv.Submit(0, vt.Buf{Addr: hdr, Len: 8}, vt.Buf{Addr: st, Len: 1, Write: true}); n != 1 || r.drv.Bytes(st, 1)[0] != StatusIOErr {
		t.Fatalf("short header: used %d status %d", n, r.drv.Bytes(st, 1)[0])
	}
	// Header split over descriptors is fine.
	h := reqHeader(TypeFlush, 0)
	a, b := r.drv.Buffer(h[:5]), r.drv.Buffer(h[5:])
	if n := r.drv.Submit(0, vt.Buf{Addr: a, Len: 5}, vt.Buf{Addr: b, Len: 11}, vt.Buf{Addr: st, Len: 1, Write: true}); n != 1 || r.drv.Bytes(st, 1)[0] != StatusOK {
		t.Fatal("split header")
	}
	// The device keeps working.
	if s, _, _ := r.do(TypeIn, 0, nil, 512); s != StatusOK {
		t.Fatal("device broken")
	}
}

func TestGetID(t *testing.T) {
	r, _ := rawRig(t, Config{Serial: "husk-disk-0"})
	st, data, used := r.do(TypeGetID, 0, nil, IDBytes)
	if st != StatusOK || used != IDBytes+1 || string(data) != "husk-disk-0\x00\x00\x00\x00\x00\x00\x00\x00\x00" {
		t.Fatalf("GET_ID: %d %q %d", st, data, used)
	}
	if st, data, _ := r.do(TypeGetID, 0, nil, 4); st != StatusOK || string(data) != "husk" {
		t.Fatalf("short GET_ID: %q", data)
	}
	if _, err := New(&memBackend{tb: t, b: make([]byte, 512)}, Config{Serial: "123456789012345678901"}, nil); err == nil {
		t.Fatal("accepted a 21-byte serial")
	}
}

func TestReadOnly(t *testing.T) {
	r, path := rawRig(t, Config{ReadOnly: true})
	if r.drv.Acked&FeatureRO == 0 || r.drv.Acked&(FeatureDiscard|FeatureWriteZeroes) != 0 {
		t.Fatalf("features %#x", r.drv.Acked)
	}
	before, _ := os.ReadFile(path)
	for _, tc := range []struct {
		typ uint32
		out []byte
	}{
		{TypeOut, make([]byte, 512)},
		{TypeDiscard, ranges(segment{0, 8, 0})},
		{TypeWriteZeroes, ranges(segment{0, 8, 0})},
	} {
		if st, _, _ := r.do(tc.typ, 0, tc.out, 0); st == StatusOK {
			t.Fatalf("type %d succeeded on a read-only disk", tc.typ)
		}
	}
	if st, _, _ := r.do(TypeFlush, 0, nil, 0); st != StatusOK {
		t.Fatal("flush failed")
	}
	if st, _, _ := r.do(TypeIn, 0, nil, 512); st != StatusOK {
		t.Fatal("read failed")
	}
	after, _ := os.ReadFile(path)
	if !bytes.Equal(before, after) {
		t.Fatal("read-only image changed")
	}
}

func TestDiscardAndWriteZeroes(t *testing.T) {
	for _, kind := range []string{"raw", "overlay"} {
		t.Run(kind, func(t *testing.T) {
			var r *rig
			if kind == "raw" {
				r, _ = rawRig(t, Config{})
			} else {
				r = newRig(t, newOverlay(t, pattern(diskSize, 5), OverlayOptions{}), Config{})
			}
			for _, tc := range []struct {
				typ   uint32
				flags uint32
			}{{TypeDiscard, 0}, {TypeWriteZeroes, 0}, {TypeWriteZeroes, flagUnmap}} {
				r.resetHeap()
				if st, _, _ := r.do(TypeOut, 0, pattern(64<<10, 3), 0); st != StatusOK {
					t.Fatal("write")
				}
				// Two ranges: whole 4 KiB blocks and a ragged one.
				st, _, _ := r.do(tc.typ, 0, ranges(segment{8, 16, tc.flags}, segment{33, 3, tc.flags}), 0)
				if st != StatusOK {
					t.Fatalf("type %d flags %d: status %d", tc.typ, tc.flags, st)
				}
				_, data, _ := r.do(TypeIn, 0, nil, 64<<10)
				want := pattern(64<<10, 3)
				clear(want[8*512 : 24*512])
				clear(want[33*512 : 36*512])
				if !bytes.Equal(data, want) {
					t.Fatalf("type %d: content after zeroing differs", tc.typ)
				}
			}
		})
	}
}

func TestConfigSpace(t *testing.T) {
	o := newOverlay(t, pattern(diskSize, 0), OverlayOptions{})
	r := newRig(t, o, Config{})
	cfg := r.drv.ReadConfig(0, configSize)
	le := binary.LittleEndian
	for _, tc := range []struct {
		name      string
		got, want uint64
	}{
		{"capacity", le.Uint64(cfg[0:]), diskSize / 512},
		{"size_max", uint64(le.Uint32(cfg[8:])), SizeMax},
		{"seg_max", uint64(le.Uint32(cfg[12:])), SegMax},
		{"blk_size", uint64(le.Uint32(cfg[20:])), 512},
		{"physical_block_exp", uint64(cfg[24]), 3},
		{"min_io_size", uint64(le.Uint16(cfg[26:])), 8},
		{"num_queues", uint64(le.Uint16(cfg[34:])), 1},
		{"max_discard_sectors", uint64(le.Uint32(cfg[36:])), MaxDiscardSectors},
		{"max_discard_seg", uint64(le.Uint32(cfg[40:])), MaxDiscardSegments},
		{"discard_sector_alignment", uint64(le.Uint32(cfg[44:])), 8},
		{"max_write_zeroes_sectors", uint64(le.Uint32(cfg[48:])), MaxDiscardSectors},
		{"max_write_zeroes_seg", uint64(le.Uint32(cfg[52:])), MaxDiscardSegments},
		{"write_zeroes_may_unmap", uint64(cfg[56]), 1},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %d, want %d", tc.name, tc.got, tc.want)
		}
	}
	if SegMax*SizeMax+headerSize+1 > virtio.MaxChainBytes {
		t.Error("advertised request size exceeds the chain cap")
	}
	want := uint64(virtio.FeatureVersion1 | virtio.FeatureEventIdx | virtio.FeatureIndirectDesc |
		FeatureSizeMax | FeatureSegMax | FeatureBlkSize | FeatureFlush | FeatureTopology | FeatureDiscard | FeatureWriteZeroes)
	if r.drv.Acked != want {
		t.Fatalf("features %#x, want %#x", r.drv.Acked, want)
	}
	// Reads past the structure and config writes are harmless.
	r.drv.Bus.Write(vt.RegConfig, []byte{1, 2, 3, 4})
	if got := r.drv.ReadConfig(0, 8); le.Uint64(got) != diskSize/512 {
		t.Fatal("config write changed capacity")
	}
	if got := r.drv.ReadConfig(configSize, 4); !bytes.Equal(got, make([]byte, 4)) {
		t.Fatal("bytes past the config structure not zero")
	}
}

func TestStateRoundTrip(t *testing.T) {
	b := &memBackend{tb: t, b: make([]byte, diskSize)}
	d, err := New(b, Config{ReadOnly: true, Serial: "s1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	raw, _ := json.Marshal(d.Save())
	var s State
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatal(err)
	}
	d2, err := Restore(s, b, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if d2.Save() != d.Save() || d2.Features() != d.Features() {
		t.Fatalf("restored %+v features %#x", d2.Save(), d2.Features())
	}
	if _, err := Restore(s, &memBackend{tb: t, b: make([]byte, 512)}, nil); err == nil {
		t.Fatal("restored over a backend of another size")
	}
}

// readPaths are Raw's two ways of reading, for tests and benchmarks.
var readPaths = []struct {
	name   string
	mapped bool
}{{"preadv", false}, {"mmap", true}}

// openRawPath opens a raw image that reads from its mapping (mapped) or
// with preadv.
func openRawPath(tb testing.TB, path string, readOnly, mapped bool) *Raw {
	tb.Helper()
	r, err := OpenRaw(path, readOnly)
	if err != nil {
		tb.Fatal(err)
	}
	if mapped && r.m == nil {
		tb.Fatal("OpenRaw did not map the image")
	}
	if !mapped {
		if err := r.unmapImage(); err != nil {
			tb.Fatal(err)
		}
	}
	return r
}

// BenchmarkBlkRead4K reads 4 KiB per request into one guest buffer.
func BenchmarkBlkRead4K(b *testing.B) { benchPaths(b, 1, 4096, 4096) }

// BenchmarkBlkRead1M reads 1 MiB per request into 4 contiguous segments of
// 256 KiB (SizeMax): the shape of the guest's O_DIRECT reads in
// bench/devices.sh, whose buffer arrives in 3-4 segments.
func BenchmarkBlkRead1M(b *testing.B) { benchPaths(b, 4, SizeMax, SizeMax) }

// BenchmarkBlkRead1MScattered reads 1 MiB per request into 254 scattered
// 4 KiB guest pages through an indirect table: the shape of a guest's
// O_DIRECT read into an anonymous buffer (seg_max segments).
func BenchmarkBlkRead1MScattered(b *testing.B) { benchPaths(b, SegMax, 4096, 2*4096) }

func benchPaths(b *testing.B, segs int, segLen uint32, stride uint64) {
	for _, p := range readPaths {
		b.Run(p.name, func(b *testing.B) { benchRead(b, p.mapped, segs, segLen, stride) })
	}
}

// benchRead reads a 64 MiB image sequentially (in the page cache), a
// request of segs segments of segLen bytes, stride bytes apart in guest
// memory, at a time, from the image's mapping or with preadv. It reports
// the growth of the process's file-backed RSS (RssFile + RssShmem) over
// the run.
func benchRead(b *testing.B, mapped bool, segs int, segLen uint32, stride uint64) {
	const size = 64 << 20
	path := writeFile(b, "bench.img", pattern(size, 0))
	d, err := New(openRawPath(b, path, false, mapped), Config{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	d.AckFeatures(d.Features())
	mem := vt.NewMemory(b, 8<<20)
	g := vt.NewGuestQueue(mem, 0x1000, QueueSize)
	q, err := virtio.NewQueue(mem, g.Config(0, d.AckedFeatures()))
	if err != nil {
		b.Fatal(err)
	}
	const hdr, status, table, data = 0x100000, 0x101000, 0x102000, 0x200000
	bufs := []vt.Buf{{Addr: hdr, Len: 16}}
	for i := range segs {
		bufs = append(bufs, vt.Buf{Addr: data + uint64(i)*stride, Len: segLen, Write: true})
	}
	bufs = append(bufs, vt.Buf{Addr: status, Len: 1, Write: true})
	g.AddIndirect(table, bufs...)
	avail, _ := mem.Slice(g.Avail, 4+2*QueueSize)
	h, _ := mem.Slice(hdr, 16)
	n := segs * int(segLen)
	rss0 := fileRSS(b)
	b.SetBytes(int64(n))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		binary.LittleEndian.PutUint64(h[8:], uint64(i%(size/n)*n/SectorSize))
		binary.LittleEndian.PutUint16(avail[4+2*(i%QueueSize):], 0)
		binary.LittleEndian.PutUint16(avail[2:], uint16(i+1))
		c, err := q.Pop()
		if err != nil || c == nil {
			b.Fatal(c, err)
		}
		if used := d.HandleChain(q, c); used != uint32(n+1) {
			b.Fatalf("used %d", used)
		}
		q.AddUsed(c.Head, uint32(n+1))
	}
	b.StopTimer()
	b.ReportMetric(float64(fileRSS(b)-rss0)/(1<<20), "rss-file-MiB")
}

// fileRSS returns the process's resident file-backed and shared memory
// bytes (RssFile + RssShmem of /proc/self/status).
func fileRSS(tb testing.TB) int64 {
	st, err := os.ReadFile("/proc/self/status")
	if err != nil {
		tb.Fatal(err)
	}
	var total int64
	for _, line := range strings.Split(string(st), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && (k == "RssFile" || k == "RssShmem") {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				tb.Fatal(line, err)
			}
			total += kb << 10
		}
	}
	return total
}
