// Package tailbuf keeps the end of a stream, such as a child process's
// output: the last lines of a log say how a run ended.
package tailbuf

import (
	"bytes"
	"sync"
)

// Buffer keeps the last max bytes written to it. It is safe for concurrent
// use.
type Buffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

// New returns a buffer that keeps the last max bytes.
func New(max int) *Buffer { return &Buffer{max: max} }

// Write appends p, dropping the oldest bytes beyond the buffer's size. It
// never fails.
func (t *Buffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - t.max; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
	return len(p), nil
}

// Bytes returns a copy of the kept bytes.
func (t *Buffer) Bytes() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	return bytes.Clone(t.b)
}

// String returns the kept bytes as a string.
func (t *Buffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
