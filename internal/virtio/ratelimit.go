package virtio

import (
	"sync"
	"time"
)

// LogLimit rate-limits one guest-triggerable log call site, as Firecracker's
// logger does per call site: a guest that hammers a bad register or a broken
// chain must not flood the VMM's log. Use one LogLimit per call site:
//
//	if dropped, ok := t.badReg.Allow(); ok {
//		t.log.Warn("mmio_bad_access", "offset", off, "dropped", dropped)
//	}
//
// Check Allow before building log arguments, so that a suppressed record
// costs no allocation. The zero LogLimit allows one record per second.
type LogLimit struct {
	mu      sync.Mutex // guards the fields below
	next    time.Time  // earliest time of the next allowed record
	dropped uint64     // records suppressed since the last allowed one
}

// LogInterval is the minimum time between two records of one call site.
const LogInterval = time.Second

// Allow reports whether a record may be logged now and, if so, how many
// were suppressed before it.
func (l *LogLimit) Allow() (dropped uint64, ok bool) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Before(l.next) {
		l.dropped++
		return 0, false
	}
	l.next = now.Add(LogInterval)
	dropped, l.dropped = l.dropped, 0
	return dropped, true
}
