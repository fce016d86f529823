package testhost

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"sync"
	"time"

	"github.com/huskvm/husk/internal/testhost/wire"
)

// hangAfter is how long a test host may keep silent, or one of its CPUs
// stuck, before Run takes it for hung: it kills QEMU and returns
// ErrHostDied, as for a test host that crashed, instead of waiting out
// Spec.Timeout. hostinit beats every wire.BeatInterval, so silence this long
// is many missed beats; and no test's own deadline helps once a test host
// CPU spins in the kernel, since the process there cannot be killed.
const hangAfter = 2 * time.Minute

// watchSilence calls died once s has waited hangAfter (limit) for a frame
// without one arriving, checking every tick, until ctx is done. Only time
// spent waiting on the test host counts: a host side slow to consume output
// does not make the test host look hung.
func watchSilence(ctx context.Context, s *session, limit, tick time.Duration, died context.CancelCauseFunc) {
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if q := s.quietFor(now); q >= limit {
				died(fmt.Errorf("%w: hung, it sent nothing for %v (hostinit beats every %v)",
					ErrHostDied, q.Round(time.Millisecond), wire.BeatInterval))
				return
			}
		}
	}
}

// quietFor is how long serve has been waiting for the current frame at
// now; zero while it handles one.
func (s *session) quietFor(now time.Time) time.Duration {
	since := s.waitingSince.Load()
	if since == 0 {
		return 0
	}
	return now.Sub(time.Unix(0, since))
}

// stuckFor matches the test host kernel's reports of a CPU that has not
// scheduled for a while (soft lockup) and of a task blocked for a while
// (hung task); the first group is how many seconds.
var stuckFor = regexp.MustCompile(`soft lockup - CPU#\d+ stuck for (\d+)s!|INFO: task .* blocked for more than (\d+) seconds`)

// kernelFailures are the test host kernel's reports of its own failure (a
// soft lockup or hung task aside). After one the test host cannot be
// trusted, and it may take minutes more to panic: in a CI run at c83a6c6,
// "BUG: TASK stack guard page was hit" came 176 s before the panic.
var kernelFailures = []string{"BUG: ", "Oops: ", "general protection fault", "Kernel panic"}

// traceEnd ends the kernel's report of a failure ("---[ end trace …" after
// an oops, "---[ end Kernel panic …"); traceGrace is how long consoleWatch
// waits for it, so that the report's registers and call trace reach the
// console's tail before QEMU is killed.
const (
	traceEnd   = "---[ end "
	traceGrace = 10 * time.Second
)

// maxConsoleLine caps the bytes consoleWatch keeps of one console line.
const maxConsoleLine = 1024

// consoleWatch passes console bytes to w and calls died once the test host's
// kernel reports its own failure (at the end of its report, or grace after
// its first line), or a CPU or task stuck for at least limit.
// In the runs this was made for, none came back: the husk-vmm on a stuck
// CPU spun in the kernel for 40 minutes until the run's deadline, and in
// another run khugepaged stayed blocked for 20 minutes, as did the tests.
type consoleWatch struct {
	w     io.Writer
	limit time.Duration
	grace time.Duration
	died  context.CancelCauseFunc

	mu      sync.Mutex
	line    []byte // the current line's start, at most maxConsoleLine bytes
	failure error  // the kernel reported its failure; died is due
}

func (l *consoleWatch) Write(p []byte) (int, error) {
	l.mu.Lock()
	for rest := p; len(rest) > 0; {
		i := bytes.IndexByte(rest, '\n')
		chunk := rest
		if i >= 0 {
			chunk = rest[:i]
		}
		l.line = append(l.line, chunk[:min(len(chunk), maxConsoleLine-len(l.line))]...)
		if i < 0 {
			break
		}
		l.check()
		l.line = l.line[:0]
		rest = rest[i+1:]
	}
	l.mu.Unlock()
	return l.w.Write(p)
}

func (l *consoleWatch) check() {
	if m := stuckFor.FindSubmatch(l.line); m != nil {
		secs, err := strconv.Atoi(string(m[1]) + string(m[2]))
		if err == nil && time.Duration(secs)*time.Second >= l.limit {
			l.died(fmt.Errorf("%w: hung, its kernel reports %q", ErrHostDied, printable(l.line, maxConsoleLine)))
		}
		return
	}
	if l.failure != nil {
		if bytes.Contains(l.line, []byte(traceEnd)) {
			l.died(l.failure)
		}
		return
	}
	for _, f := range kernelFailures {
		if bytes.Contains(l.line, []byte(f)) {
			err := fmt.Errorf("%w: its kernel reports %q", ErrHostDied, printable(l.line, maxConsoleLine))
			l.failure = err
			time.AfterFunc(l.grace, func() { l.died(err) })
			return
		}
	}
}
