package kbuild

import (
	"fmt"
	"strings"
	"sync"
	"time"
)

// progress digests kbuild's quiet output ("  CC      fs/ext4/inode.o") into
// a count of compiled objects and the most recent one.
type progress struct {
	start time.Time

	mu      sync.Mutex // guards the fields below
	objects int
	last    string
}

// parseKbuildLine splits a quiet kbuild line into its tag and target; ok is
// false for anything else (warnings, make's own chatter).
func parseKbuildLine(line string) (tag, target string, ok bool) {
	if !strings.HasPrefix(line, "  ") {
		return "", "", false
	}
	f := strings.Fields(line)
	if len(f) < 2 {
		return "", "", false
	}
	tag = f[0]
	for _, c := range tag {
		if (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '_' {
			return "", "", false
		}
	}
	return tag, f[len(f)-1], true
}

// isObject reports whether a kbuild tag and target are one compiled object.
func isObject(tag, target string) bool {
	return (tag == "CC" || tag == "AS") && strings.HasSuffix(target, ".o")
}

func (p *progress) feed(line string) {
	tag, target, ok := parseKbuildLine(line)
	if !ok {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if isObject(tag, target) {
		p.objects++
	}
	p.last = tag + " " + target
}

func (p *progress) snapshot() (objects int, last string, elapsed time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.objects, p.last, time.Since(p.start)
}

// line renders the periodic progress line; expect is the expected object
// count, 0 if unknown.
func (p *progress) line(expect int) string {
	n, last, el := p.snapshot()
	count := fmt.Sprintf("%d objects", n)
	if expect > 0 {
		count = fmt.Sprintf("%d/~%d objects", n, expect)
	}
	if last == "" {
		last = "-"
	}
	return fmt.Sprintf("compiling: %s, %s elapsed, last: %s", count, el.Round(time.Second), last)
}
