package blk

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A read-write image truncated by someone else under a device reading from
// its mapping: reads of the missing pages fail with IOERR, refused by
// MADV_POPULATE_READ or, where populating is off (Linux < 5.14, simulated),
// by a SIGBUS in the copy recovered into an error; the process goes on, and
// reads of what is left still work.
func TestRawMapTruncated(t *testing.T) {
	for _, populate := range []bool{true, false} {
		t.Run(fmt.Sprintf("populate=%v", populate), func(t *testing.T) {
			data := pattern(diskSize, 1)
			path := writeFile(t, "disk.img", data)
			back := openRawPath(t, path, false, true)
			back.noPopulate = !populate
			r := newRig(t, back, Config{})
			if err := os.Truncate(path, diskSize/2+100); err != nil {
				t.Fatal(err)
			}
			// The last sector before the cut, the page holding the cut
			// (readable: the page is there, zeros past the end) and past it.
			for _, tc := range []struct {
				sector uint64
				n      int
				want   byte
			}{
				{diskSize/2/512 - 1, 512, StatusOK},
				{diskSize / 2 / 512, 4096, StatusOK},
				{diskSize/2/512 + 8, 4096, StatusIOErr},
				{diskSize/2/512 - 8, 64 << 10, StatusIOErr},
				{0, 8192, StatusOK},
			} {
				st, got, used := r.do(TypeIn, tc.sector, nil, tc.n)
				if st != tc.want || used > uint32(tc.n)+1 {
					t.Fatalf("read %d+%d: status %d used %d, want status %d", tc.sector, tc.n, st, used, tc.want)
				}
				off := int(tc.sector * 512)
				if st == StatusOK && off+tc.n <= diskSize/2 && !bytes.Equal(got, data[off:off+tc.n]) {
					t.Fatalf("read %d+%d: wrong bytes", tc.sector, tc.n)
				}
			}
			if _, _, _, failed := r.dev.Stats(); failed != 2 {
				t.Fatalf("%d failed requests, want 2", failed)
			}
		})
	}
}

// A fault in the copy is an error that counts the buffers filled before it,
// and the goroutine's panic-on-fault flag is set only while copying.
func TestRawMapFault(t *testing.T) {
	path := writeFile(t, "disk.img", pattern(64<<10, 1))
	r := openRawPath(t, path, true, true)
	defer r.Close()
	r.noPopulate = true // so that the copy meets the missing page
	if err := os.Truncate(path, 40<<10); err != nil {
		t.Fatal(err)
	}
	n, err := r.ReadVecAt(split(make([]byte, 16<<10), 4096+512), 32<<10)
	if !errors.As(err, new(faultError)) || n != 4096+512 {
		t.Fatalf("read across the end = %d, %v; want the first buffer and a memory fault", n, err)
	}
	buf := make([]byte, 4096)
	if _, err := r.ReadVecAt([][]byte{buf}, 0); err != nil {
		t.Fatal(err)
	}
	if debug.SetPanicOnFault(false) {
		t.Fatal("panic on fault left set")
	}
}

// A panic in the copy that is not a memory fault is a bug: it is not turned
// into an I/O error.
func TestRawMapOtherPanic(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("no panic")
		}
	}()
	dst := bufCursor{bufs: [][]byte{make([]byte, 10)}}
	copyGuarded(&dst, make([]byte, 20)) // more than the buffers hold: index out of range
}

// Reads from the mapping see every change to the image: vectored writes,
// zeroing and hole punching, and writes through another descriptor.
func TestRawMapCoherent(t *testing.T) {
	const size = 256 << 10
	path := writeFile(t, "disk.img", pattern(size, 1))
	r := openRawPath(t, path, false, true)
	defer r.Close()
	want := pattern(size, 1)
	check := func(what string) {
		t.Helper()
		got := make([]byte, size)
		if n, err := r.ReadVecAt(split(got, 4096, 512, 64<<10), 0); err != nil || n != size {
			t.Fatalf("after %s: ReadVecAt = %d, %v", what, n, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("after %s: the mapping reads other bytes", what)
		}
	}
	check("nothing")
	in := pattern(20<<10, 7)
	if _, err := r.WriteVecAt(split(in, 4096), 3000); err != nil {
		t.Fatal(err)
	}
	copy(want[3000:], in)
	check("pwritev")
	if err := r.WriteZeroes(64<<10, 16<<10, false); err != nil {
		t.Fatal(err)
	}
	clear(want[64<<10 : 80<<10])
	check("write zeroes")
	if err := r.Discard(128<<10, 32<<10); err != nil {
		t.Fatal(err)
	}
	clear(want[128<<10 : 160<<10])
	check("discard")
	other, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.WriteAt([]byte("elsewhere"), size-9); err != nil {
		t.Fatal(err)
	}
	copy(want[size-9:], "elsewhere")
	check("a write through another descriptor")
}

// Reading through the mapping keeps at most mapBudget + mapWindow bytes of
// the image mapped, and none mapIdle after the last read: RSS does not grow
// with the bytes read.
func TestRawMapRSS(t *testing.T) {
	const size = 48 << 20
	r := openRawPath(t, writeFile(t, "disk.img", pattern(size, 1)), true, true)
	defer r.Close()
	buf := make([]byte, 1<<20)
	peak := int64(0)
	for off := int64(0); off < size; off += int64(len(buf)) {
		if _, err := r.ReadVecAt(split(buf, 4096), off); err != nil {
			t.Fatal(err)
		}
		peak = max(peak, mappedRSS(t, r.m))
		if off == 4<<20 && peak < 4<<20 {
			// The check's control: the pages read are mapped for now.
			t.Fatalf("%d KiB mapped after reading 5 MiB", peak>>10)
		}
	}
	t.Logf("at most %d KiB of the image mapped while reading %d MiB", peak>>10, size>>20)
	if peak > mapBudget+mapWindow+hostPage {
		t.Errorf("up to %d KiB of the image mapped while reading, want at most %d", peak>>10, (mapBudget+mapWindow)>>10)
	}
	deadline := time.Now().Add(100 * mapIdle)
	for mappedRSS(t, r.m) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d KiB of the image still mapped %v after the last read", mappedRSS(t, r.m)>>10, 100*mapIdle)
		}
		time.Sleep(mapIdle / 4)
	}
	// Close with the idle drop pending.
	r2 := openRawPath(t, writeFile(t, "disk.img", pattern(1<<20, 1)), true, true)
	if _, err := r2.ReadVecAt([][]byte{buf}, 0); err != nil {
		t.Fatal(err)
	}
	if err := r2.Close(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * mapIdle)
}

var smapsHeader = regexp.MustCompile(`^[0-9a-f]+-[0-9a-f]+ `)

// mappedRSS returns the resident bytes of the mapping m, from the page
// tables (/proc/self/smaps).
func mappedRSS(tb testing.TB, m []byte) int64 {
	tb.Helper()
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		tb.Fatal(err)
	}
	start := strings.TrimPrefix(fmt.Sprintf("%p-", &m[0]), "0x")
	in := false
	for _, line := range strings.Split(string(smaps), "\n") {
		if smapsHeader.MatchString(line) {
			in = strings.HasPrefix(line, start)
			continue
		}
		if v, ok := strings.CutPrefix(line, "Rss:"); ok && in {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				tb.Fatal(line, err)
			}
			return kb << 10
		}
	}
	tb.Fatalf("no mapping at %s in /proc/self/smaps", start)
	return 0
}

// Images that cannot be mapped are read with preadv.
func TestRawMapFallback(t *testing.T) {
	empty, err := OpenRaw(writeFile(t, "empty.img", nil), true)
	if err != nil {
		t.Fatal(err)
	}
	defer empty.Close()
	if empty.m != nil {
		t.Error("empty image mapped")
	}
	if n, err := empty.ReadVecAt(nil, 0); n != 0 || err != nil {
		t.Errorf("empty read = %d, %v", n, err)
	}
	huge := writeFile(t, "huge.img", nil)
	if err := os.Truncate(huge, maxMapBytes+1<<20); err != nil {
		t.Skip("no sparse file of more than 1 TiB here:", err)
	}
	r, err := OpenRaw(huge, true)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.m != nil {
		t.Errorf("image over %d bytes mapped", int64(maxMapBytes))
	}
	buf := pattern(8192, 3)
	if n, err := r.ReadVecAt(split(buf, 4096), maxMapBytes); n != len(buf) || err != nil || !bytes.Equal(buf, make([]byte, len(buf))) {
		t.Errorf("read past 1 TiB = %d, %v", n, err)
	}
}
