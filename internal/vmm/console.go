package vmm

import (
	"bytes"
	"io"
	"sync"
)

// panicMarker starts the line a Linux kernel prints when it panics.
var panicMarker = []byte("Kernel panic - not syncing")

// maxConsoleLine bounds the line buffer the panic watcher keeps.
const maxConsoleLine = 512

// panicWatcher passes console output through and remembers the first line
// that reports a kernel panic. The guest controls its console, so this is
// advisory: it explains a reset, it does not prove anything.
type panicWatcher struct {
	out io.Writer

	mu    sync.Mutex // guards line and panic
	line  []byte
	panic string
}

func (w *panicWatcher) Write(p []byte) (int, error) {
	w.mu.Lock()
	for _, c := range p {
		if c == '\n' {
			w.endLine()
			continue
		}
		if len(w.line) < maxConsoleLine {
			w.line = append(w.line, c)
		}
	}
	w.mu.Unlock()
	return w.out.Write(p)
}

func (w *panicWatcher) endLine() {
	if w.panic == "" {
		if i := bytes.Index(w.line, panicMarker); i >= 0 {
			w.panic = string(bytes.TrimRight(w.line[i:], "\r"))
		}
	}
	w.line = w.line[:0]
}

// panicLine returns the first panic line seen, including one still
// unterminated, or "".
func (w *panicWatcher) panicLine() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.panic == "" {
		w.endLine()
	}
	return w.panic
}
