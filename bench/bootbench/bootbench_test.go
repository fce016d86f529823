//go:build linux

package main

import (
	"encoding/binary"
	"io"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
)

const smapsSample = `00400000-00650000 r-xp 00000000 fe:00 12 /artifacts/bench/husk-vmm
Size:               2368 kB
Rss:                 968 kB
Anonymous:             0 kB
AnonHugePages:         0 kB
7f0000000000-7f0000400000 rw-p 00000000 00:00 0 
Size:               4096 kB
Rss:                2048 kB
Anonymous:          2048 kB
AnonHugePages:      2048 kB
7f0000400000-7f0000600000 rw-p 00001000 fe:00 13                         /artifacts/bench/vmlinux
Size:               2048 kB
Rss:                 100 kB
Anonymous:             4 kB
AnonHugePages:         0 kB
7f0000600000-7f0008000000 rw-p 00000000 00:00 0 
Size:             124928 kB
Rss:                 300 kB
Anonymous:           300 kB
AnonHugePages:         0 kB
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  16 kB
VmFlags: rd wr mr mw me gd ac
`

func TestParseSmaps(t *testing.T) {
	vmas, err := parseSmaps(strings.NewReader(smapsSample))
	if err != nil {
		t.Fatal(err)
	}
	if len(vmas) != 5 {
		t.Fatalf("got %d mappings, want 5", len(vmas))
	}
	want := vma{Start: 0x7f0000400000, End: 0x7f0000600000, Perms: "rw-p", Path: "/artifacts/bench/vmlinux", RSS: 100 << 10, Anon: 4 << 10}
	if vmas[2] != want {
		t.Errorf("mapping 2 = %+v, want %+v", vmas[2], want)
	}
	if vmas[1].Path != "" || vmas[1].AnonHuge != 2<<20 || vmas[4].Path != "[stack]" {
		t.Errorf("mappings = %+v", vmas)
	}
	if _, err := parseSmaps(strings.NewReader("00400000-00650000 r-xp 0 0 0 x\nRss: lots\n")); err == nil {
		t.Error("bad Rss value: no error")
	}
}

func TestGuestRSS(t *testing.T) {
	vmas, err := parseSmaps(strings.NewReader(smapsSample))
	if err != nil {
		t.Fatal(err)
	}
	// husk: guest RAM is the anonymous mapping with the kernel mapped over
	// part of it: both count, the heap and the binary do not.
	ram := []addrRange{{0x7f0000400000, 0x7f0008000000}}
	got, inside, err := guestRSS(vmas, ram, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got != 400<<10 || len(inside) != 2 {
		t.Errorf("guestRSS = %d over %d mappings, want %d over 2", got, len(inside), 400<<10)
	}
	// A mapping only partly inside is counted page by page from pagemap:
	// pages 0 and 2 of the range present.
	pm := fakePagemap{0x7f0000400000 >> 12: true, 0x7f0000402000 >> 12: true}
	part := []addrRange{{0x7f0000400000, 0x7f0000404000}}
	got, _, err = guestRSS(vmas, part, pm)
	if err != nil || got != 2*pageSize {
		t.Errorf("partial guestRSS = %d, %v; want %d", got, err, 2*pageSize)
	}
	if _, _, err := guestRSS(vmas, part, nil); err == nil {
		t.Error("partial mapping without pagemap: no error")
	}
}

// fakePagemap is a sparse /proc/PID/pagemap: the listed page numbers are
// present.
type fakePagemap map[uint64]bool

func (f fakePagemap) ReadAt(p []byte, off int64) (int, error) {
	for i := 0; i+8 <= len(p); i += 8 {
		var e uint64
		if f[uint64(off+int64(i))/8] {
			e = 1<<63 | 12345
		}
		binary.LittleEndian.PutUint64(p[i:], e)
	}
	return len(p), nil
}

func TestQEMUGuestRAM(t *testing.T) {
	vmas, err := parseSmaps(strings.NewReader(smapsSample))
	if err != nil {
		t.Fatal(err)
	}
	rs, err := qemuGuestRAM(vmas, 120<<20)
	if err != nil || !reflect.DeepEqual(rs, []addrRange{{0x7f0000600000, 0x7f0008000000}}) {
		t.Errorf("qemuGuestRAM = %v, %v", rs, err)
	}
	if _, err := qemuGuestRAM(vmas, 1<<20); err == nil {
		t.Error("two candidates: no error")
	}
	if _, err := qemuGuestRAM(vmas, 1<<30); err == nil {
		t.Error("no candidate: no error")
	}
}

func TestHuskGuestRAM(t *testing.T) {
	stderr := []byte("time=2026-11-29T00:00:00Z level=DEBUG msg=guest_ram slot=0 gpa=0 size=134217728 host_addr=139637976727552\n" +
		"time=2026-11-29T00:00:00Z level=DEBUG msg=kernel_loaded protocol=PVH\n" +
		"time=2026-11-29T00:00:00Z level=DEBUG msg=guest_ram slot=1 gpa=4294967296 size=4096 host_addr=4096\n")
	got := huskGuestRAM(stderr)
	want := []addrRange{{139637976727552, 139637976727552 + 134217728}, {4096, 8192}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("huskGuestRAM = %v, want %v", got, want)
	}
	if huskGuestRAM([]byte("level=WARN msg=other\n")) != nil {
		t.Error("found guest RAM in a log without it")
	}
}

func TestStatusKB(t *testing.T) {
	status := []byte("Name:\thusk-vmm\nVmHWM:\t   30812 kB\nVmRSS:\t   30000 kB\nThreads:\t8\n")
	got, err := statusKB(status, "VmHWM", "VmRSS")
	if err != nil || got["VmHWM"] != 30812<<10 || got["VmRSS"] != 30000<<10 {
		t.Errorf("statusKB = %v, %v", got, err)
	}
	if _, err := statusKB(status, "RssAnon"); err == nil {
		t.Error("missing field: no error")
	}
}

func TestPeak(t *testing.T) {
	m := memSample{HWM: 10 << 20, Smaps: 11 << 20, Guest: 8 << 20}
	if m.Peak() != 11<<20 || m.Overhead() != 3<<20 {
		t.Errorf("Peak %d Overhead %d", m.Peak(), m.Overhead())
	}
	m.HWM = 12 << 20
	if m.Overhead() != 4<<20 {
		t.Errorf("Overhead %d", m.Overhead())
	}
}

func TestSummarize(t *testing.T) {
	s := summarize([]float64{5, 1, 4, 2, 3, 6, 7, 8, 9, 10})
	if s.N != 10 || s.Min != 1 || s.Max != 10 || s.Median != 5.5 || s.P90 != 9 || s.P10 != 1 || s.Mean != 5.5 {
		t.Errorf("summarize = %+v", s)
	}
	if math.Abs(s.Std-3.0277) > 1e-3 {
		t.Errorf("std = %v", s.Std)
	}
	if s := summarize([]float64{3, 1, 2}); s.Median != 2 || s.P90 != 3 {
		t.Errorf("odd summarize = %+v", s)
	}
	if s := summarize(nil); s.N != 0 {
		t.Errorf("empty summarize = %+v", s)
	}
}

// chunkReader returns its chunks one Read at a time.
type chunkReader struct{ chunks []string }

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.chunks[0])
	r.chunks = r.chunks[1:]
	return n, nil
}

func TestWatchConsole(t *testing.T) {
	tail := &tailBuffer{max: 1 << 10}
	marker := make(chan time.Time, 2)
	r := &chunkReader{chunks: []string{"HUSK_NPROC=1\r\nHUSK_IN", "IT_", "DONE\r\n", "HUSK_INIT_DONE\n"}}
	watchConsole(r, tail, marker)
	if len(marker) != 1 {
		t.Errorf("marker sent %d times, want once", len(marker))
	}
	if got := string(tail.Bytes()); got != "HUSK_NPROC=1\r\nHUSK_INIT_DONE\r\nHUSK_INIT_DONE\n" {
		t.Errorf("console = %q", got)
	}
	marker = make(chan time.Time, 1)
	watchConsole(&chunkReader{chunks: []string{"HUSK_INIT_DON", "\n"}}, tail, marker)
	if len(marker) != 0 {
		t.Error("marker seen in a line without it")
	}
}

func TestTailBuffer(t *testing.T) {
	b := &tailBuffer{max: 8}
	for _, s := range []string{"abc", "defg", "hijkl", "mn"} {
		if n, _ := b.Write([]byte(s)); n != len(s) {
			t.Fatalf("Write(%q) = %d", s, n)
		}
	}
	if got := string(b.Bytes()); got != "abcd\n[...]\nklmn" {
		t.Errorf("tail = %q", got)
	}
}

func TestLogTime(t *testing.T) {
	log := []byte("time=2026-11-29T01:02:03.456Z level=DEBUG msg=guest_ram slot=0\n" +
		"time=2026-11-29T01:02:03.789+01:00 level=DEBUG msg=kernel_loaded protocol=PVH\n")
	got, ok := logTime(log, "kernel_loaded")
	want := time.Date(2026, 11, 29, 0, 2, 3, 789e6, time.UTC)
	if !ok || !got.Equal(want) {
		t.Errorf("logTime = %v, %v; want %v", got, ok, want)
	}
	if _, ok := logTime(log, "vcpu_started"); ok {
		t.Error("found a record that is not there")
	}
}
