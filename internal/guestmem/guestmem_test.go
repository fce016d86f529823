package guestmem

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func newMem(t *testing.T) *Memory {
	t.Helper()
	m, err := New([]Range{{0, 1 << 20}, {4 << 20, 64 << 10}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func TestNewRejectsBadRanges(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ranges []Range
	}{
		{"empty", []Range{{0, 0}}},
		{"unaligned gpa", []Range{{100, PageSize}}},
		{"unaligned size", []Range{{0, 100}}},
		{"overlap", []Range{{0, 2 * PageSize}, {PageSize, PageSize}}},
		{"unsorted", []Range{{2 * PageSize, PageSize}, {0, PageSize}}},
		{"wraps", []Range{{^uint64(0) - PageSize + 1, 2 * PageSize}}},
		{"too big", []Range{{0, MaxTotal + PageSize}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if m, err := New(tc.ranges); err == nil {
				m.Close()
				t.Fatal("accepted")
			}
		})
	}
}

func TestBoundsChecks(t *testing.T) {
	m := newMem(t)
	for _, tc := range []struct {
		gpa, n uint64
		ok     bool
	}{
		{0, 1 << 20, true},
		{1<<20 - 8, 8, true},
		{1<<20 - 7, 8, false}, // straddles the end of region 0
		{1 << 20, 1, false},   // hole
		{4 << 20, 64 << 10, true},
		{4<<20 + 1, 64 << 10, false},
		{^uint64(0), 2, false}, // wraps
		{0, ^uint64(0), false},
	} {
		_, err := m.Slice(tc.gpa, tc.n)
		if (err == nil) != tc.ok {
			t.Errorf("Slice(%#x, %#x): err=%v, want ok=%v", tc.gpa, tc.n, err, tc.ok)
		}
		var re *RangeError
		if err != nil && !errors.As(err, &re) {
			t.Errorf("Slice(%#x, %#x): error %T is not a *RangeError", tc.gpa, tc.n, err)
		}
	}
	if _, err := m.ReadAt(make([]byte, 4), -1); err == nil {
		t.Error("negative ReadAt offset accepted")
	}
}

func TestAccessors(t *testing.T) {
	m := newMem(t)
	if err := m.PutUint64(4<<20+8, 0x1122334455667788); err != nil {
		t.Fatal(err)
	}
	if v, _ := m.Uint32(4<<20 + 8); v != 0x55667788 {
		t.Fatalf("Uint32 = %#x", v)
	}
	if v, _ := m.Uint16(4<<20 + 12); v != 0x3344 {
		t.Fatalf("Uint16 = %#x", v)
	}
	if err := m.PutUint32(1<<20-2, 1); err == nil {
		t.Fatal("PutUint32 across the end accepted")
	}
	if m.Size() != 1<<20+64<<10 {
		t.Fatalf("Size = %d", m.Size())
	}
}

func TestLoadFile(t *testing.T) {
	data := make([]byte, 5*PageSize+123)
	for i := range data {
		data[i] = byte(i*7 + i>>8)
	}
	path := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, tc := range []struct {
		name string
		off  int64
		gpa  uint64
		n    uint64
	}{
		{"aligned", 0, 0x10000, uint64(len(data))},
		{"congruent unaligned", 100, 0x20000 + 100, uint64(len(data)) - 100},
		{"incongruent", 1, 0x30000, 3 * PageSize},
		{"small", PageSize + 5, 0x40000 + 5, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMem(t)
			sentinel := bytes.Repeat([]byte{0xAA}, 2*PageSize)
			m.WriteAt(sentinel, int64(tc.gpa&^(PageSize-1))-PageSize)
			end := tc.gpa + tc.n
			m.WriteAt(sentinel, int64(end))
			if err := m.LoadFile(f, tc.off, tc.gpa, tc.n); err != nil {
				t.Fatal(err)
			}
			got, _ := m.Slice(tc.gpa, tc.n)
			if !bytes.Equal(got, data[tc.off:tc.off+int64(tc.n)]) {
				t.Fatal("loaded bytes differ")
			}
			before, _ := m.Slice(tc.gpa&^(PageSize-1), tc.gpa%PageSize)
			after, _ := m.Slice(end, PageSize)
			if !bytes.Equal(before, sentinel[:len(before)]) || !bytes.Equal(after, sentinel[:PageSize]) {
				t.Fatal("bytes around the load changed")
			}
			// The mapping is private: writes reach the guest, not the file.
			got[0] ^= 0xff
			onDisk, _ := os.ReadFile(path)
			if !bytes.Equal(onDisk, data) {
				t.Fatal("guest write reached the file")
			}
		})
	}
	m := newMem(t)
	if err := m.LoadFile(f, int64(len(data))-10, 0, 11); err == nil {
		t.Fatal("load past the end of the file accepted")
	}
	if err := m.LoadFile(f, 0, 1<<20-10, 11); err == nil {
		t.Fatal("load past the end of guest memory accepted")
	}
}

func BenchmarkGuestMemCopy(b *testing.B) {
	m, err := New([]Range{{0, 1 << 20}})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	buf := make([]byte, 4096)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := m.WriteAt(buf, int64(i%200)*4096); err != nil {
			b.Fatal(err)
		}
	}
}
