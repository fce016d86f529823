package blk

import (
	"bytes"
	"os"
	"testing"
)

// split cuts b into buffers of the given sizes, cycling through them.
func split(b []byte, sizes ...int) [][]byte {
	var out [][]byte
	for i := 0; len(b) > 0; i++ {
		n := min(sizes[i%len(sizes)], len(b))
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

func TestRawVectorIO(t *testing.T) {
	const size = 1 << 20
	data := pattern(size, 3)
	for _, tc := range []struct {
		name  string
		off   int
		n     int
		sizes []int
	}{
		{"one buffer", 4096, 8192, []int{8192}},
		{"pages", 0, 64 << 10, []int{4096}},
		{"more buffers than IOV_MAX", 512, 1500 * 512, []int{512}},
		{"uneven, with empty buffers", 1000, 3 * 4096, []int{0, 100, 0, 4096, 7}},
		{"up to the end", size - 3*512, 3 * 512, []int{512}},
	} {
		for _, p := range readPaths {
			t.Run(tc.name+"/"+p.name, func(t *testing.T) { testVectorIO(t, p.mapped, data, tc.off, tc.n, tc.sizes) })
		}
	}
}

// testVectorIO reads n bytes at off into buffers of the given sizes, writes
// other bytes there, and checks the file and what reads return after: a
// read from the mapping sees the write.
func testVectorIO(t *testing.T, mapped bool, data []byte, off, n int, sizes []int) {
	path := writeFile(t, "disk.img", data)
	r := openRawPath(t, path, false, mapped)
	defer r.Close()
	got := make([]byte, n)
	k, err := r.ReadVecAt(split(got, sizes...), int64(off))
	if err != nil || k != n || !bytes.Equal(got, data[off:off+n]) {
		t.Fatalf("ReadVecAt = %d, %v; data equal %v", k, err, bytes.Equal(got, data[off:off+n]))
	}
	in := pattern(n, 9)
	if k, err := r.WriteVecAt(split(in, sizes...), int64(off)); err != nil || k != n {
		t.Fatalf("WriteVecAt = %d, %v", k, err)
	}
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := append(append(append([]byte(nil), data[:off]...), in...), data[off+n:]...)
	if !bytes.Equal(file, want) {
		t.Fatal("the file does not hold exactly the written buffers")
	}
	clear(got)
	if k, err := r.ReadVecAt(split(got, sizes...), int64(off)); err != nil || k != n || !bytes.Equal(got, in) {
		t.Fatalf("ReadVecAt after the write = %d, %v; data equal %v", k, err, bytes.Equal(got, in))
	}
}

func TestRawVectorIOErrors(t *testing.T) {
	for _, p := range readPaths {
		t.Run(p.name, func(t *testing.T) { testVectorIOErrors(t, p.mapped) })
	}
}

func testVectorIOErrors(t *testing.T, mapped bool) {
	path := writeFile(t, "disk.img", pattern(64<<10, 1))
	ro := openRawPath(t, path, true, mapped)
	defer ro.Close()
	buf := make([]byte, 8192)
	if _, err := ro.WriteVecAt([][]byte{buf}, 0); err == nil {
		t.Error("WriteVecAt on a read-only image: no error")
	}
	if _, err := ro.ReadVecAt([][]byte{buf, buf}, 64<<10-8192); err == nil {
		t.Error("ReadVecAt past the end: no error")
	}
	if _, err := ro.ReadVecAt([][]byte{buf}, -512); err == nil {
		t.Error("ReadVecAt at a negative offset: no error")
	}
	// The file shrinks under the open backend: preadv stops short inside a
	// buffer, and the rest of it cannot be read; a read from the mapping
	// fails as a whole (MADV_POPULATE_READ refuses the window before the
	// copy; TestRawMapTruncated covers the copy's fault).
	rw := openRawPath(t, path, false, mapped)
	defer rw.Close()
	if err := os.Truncate(path, 40<<10); err != nil {
		t.Fatal(err)
	}
	n, err := rw.ReadVecAt(split(make([]byte, 16<<10), 4096+512), 32<<10)
	want := 8 << 10
	if mapped {
		want = 0
	}
	if err == nil || n != want {
		t.Errorf("ReadVecAt across the new end = %d, %v; want %d and an error", n, err, want)
	}
}
