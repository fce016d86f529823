package tailbuf

import (
	"strings"
	"sync"
	"testing"
)

func TestKeepsTheEnd(t *testing.T) {
	b := New(8)
	if n, err := b.Write([]byte("0123")); n != 4 || err != nil {
		t.Fatalf("Write: %d, %v", n, err)
	}
	b.Write([]byte("456789abcdef"))
	if got := b.String(); got != "89abcdef" {
		t.Fatalf("kept %q, want the last 8 bytes", got)
	}
	got := b.Bytes()
	got[0] = 'X'
	if b.String() != "89abcdef" {
		t.Fatal("Bytes returned the buffer itself, not a copy")
	}
}

func TestConcurrentWrites(t *testing.T) {
	b := New(1 << 10)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				b.Write([]byte("x"))
			}
		})
	}
	wg.Wait()
	if got := b.String(); got != strings.Repeat("x", 1<<10) {
		t.Fatalf("kept %d bytes, want %d", len(got), 1<<10)
	}
}
