package testhost

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/huskvm/husk/internal/testhost/wire"
)

// blockingWriter blocks its first Write for a while: a host side slow to
// take the command's output.
type blockingWriter struct{ first chan struct{} }

func (b blockingWriter) Write(p []byte) (int, error) {
	select {
	case <-b.first:
	default:
		close(b.first)
		time.Sleep(2500 * time.Millisecond)
	}
	return len(p), nil
}

// TestWatchSilence: a test host that beats, or whose output the host is
// slow to take, is alive; one that goes quiet is taken for hung, with
// ErrHostDied as the cause.
func TestWatchSilence(t *testing.T) {
	host, g := net.Pipe()
	defer g.Close()
	spec := &Spec{Args: []string{"/x"}, Stdout: blockingWriter{make(chan struct{})}}
	spec.setDefaults()
	s := &session{spec: spec, stats: new(Stats), console: &tailWriter{w: io.Discard}, qemuStart: time.Now()}
	done := make(chan struct{})
	go func() { s.serve(host); host.Close(); close(done) }()
	go io.Copy(io.Discard, g) // Start and Stdin frames from the host

	const limit = time.Second
	ctx, died := context.WithCancelCause(context.Background())
	defer died(nil)
	watched := make(chan struct{})
	go func() { watchSilence(ctx, s, limit, 20*time.Millisecond, died); close(watched) }()

	w := wire.NewWriter(g)
	beatFor := func(d time.Duration) {
		for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
			if err := w.WriteFrame(wire.Beat, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	beatFor(2 * limit)
	if err := w.WriteFrame(wire.Hello, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteFrame(wire.Stdout, []byte("slow to take")); err != nil { // blocks the host 2.5 s
		t.Fatal(err)
	}
	beatFor(limit)
	if ctx.Err() != nil {
		t.Fatalf("taken for hung while alive: %v", context.Cause(ctx))
	}
	quiet := time.Now() // no later than the host starts to wait for the next frame
	if err := w.WriteFrame(wire.Beat, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-watched:
	case <-time.After(30 * time.Second):
		t.Fatal("a silent test host was not taken for hung")
	}
	if q := time.Since(quiet); q < limit {
		t.Errorf("taken for hung after %v of silence, before the limit %v", q, limit)
	}
	if err := context.Cause(ctx); !errors.Is(err, ErrHostDied) || !strings.Contains(err.Error(), "sent nothing") {
		t.Fatalf("cause %v, want ErrHostDied saying it sent nothing", err)
	}
	g.Close()
	<-done
}

// TestConsoleWatch: the console passes through unchanged; a soft lockup
// shorter than the limit is tolerated, one at the limit (its line split
// across writes) marks the test host hung; an endless line stays capped.
func TestConsoleWatch(t *testing.T) {
	var out bytes.Buffer
	ctx, died := context.WithCancelCause(context.Background())
	defer died(nil)
	l := &consoleWatch{w: &out, limit: 2 * time.Minute, died: died}
	var in []string
	write := func(s string) {
		in = append(in, s)
		if n, err := l.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write: %d, %v", n, err)
		}
	}
	write("[  262.7] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [husk-vmm:227]\n")
	write("[  290.7] watchdog: BUG: soft lockup - CPU#1 stuck for 119s! [husk-vmm:227]\r\n")
	write(strings.Repeat("x", 1<<20)) // no newline
	if len(l.line) > maxConsoleLine {
		t.Fatalf("line buffer grew to %d bytes", len(l.line))
	}
	write("\nnot a lockup: stuck for 500s!\n")
	write("[  364.8] INFO: task khugepaged:36 blocked for more than 60 seconds.\n")
	if ctx.Err() != nil {
		t.Fatalf("hung before a long lockup: %v", context.Cause(ctx))
	}
	write("[ 2437.7] watchdog: BUG: soft lockup - CPU#0 stu")
	write("ck for 2165s! [husk-vmm:227]")
	if ctx.Err() != nil {
		t.Fatal("hung before the line ended")
	}
	write("\n")
	err := context.Cause(ctx)
	if !errors.Is(err, ErrHostDied) || !strings.Contains(err.Error(), "stuck for 2165s") {
		t.Fatalf("cause %v, want ErrHostDied quoting the lockup", err)
	}
	if out.String() != strings.Join(in, "") {
		t.Fatal("console bytes changed on the way through")
	}
}

// TestConsoleWatchKernelFailure: the test host's kernel reporting its own
// failure marks it dead at the end of the report, or a grace period after
// its first line when no end comes; ordinary lines and guest-caused KVM
// messages do not, nor does a trace's end without a failure before it.
func TestConsoleWatchKernelFailure(t *testing.T) {
	const end = "[  149.4] ---[ end trace 0000000000000000 ]---"
	for _, tc := range []struct {
		line string
		dead bool
	}{
		{"[    7.2] kvm [99]: vcpu0, guest rIP: 0xffffffff810032cd Unhandled WRMSR(0xc0010007) = 0xffff", false},
		{"[    5.0] EXT4-fs (vdb): VFS: Can't find ext4 filesystem", false},
		{"hostinit: disks mounted", false},
		{"[  149.3] BUG: TASK stack guard page was hit at 00000000b464aaf1", true},
		{"[  149.3] Oops: 0000 [#1] PREEMPT SMP NOPTI", true},
		{"[  9.1] general protection fault, probably for non-canonical address", true},
		{"[  325.4] Kernel panic - not syncing: corrupted stack end detected inside scheduler", true},
	} {
		ctx, died := context.WithCancelCause(context.Background())
		var out bytes.Buffer
		l := &consoleWatch{w: &out, limit: time.Minute, grace: time.Hour, died: died}
		l.Write([]byte(tc.line + "\n[  149.3] RIP: 0010:__svm_vcpu_run+0x8/0x100\n"))
		if ctx.Err() != nil {
			t.Errorf("%q: dead before the report ended", tc.line)
		}
		l.Write([]byte(end + "\n"))
		if dead := ctx.Err() != nil; dead != tc.dead {
			t.Errorf("%q: dead %v, want %v", tc.line, dead, tc.dead)
		} else if dead && (!errors.Is(context.Cause(ctx), ErrHostDied) || !strings.Contains(context.Cause(ctx).Error(), tc.line)) {
			t.Errorf("%q: cause %v", tc.line, context.Cause(ctx))
		}
		if !strings.Contains(out.String(), "__svm_vcpu_run") {
			t.Errorf("%q: the report did not pass through", tc.line)
		}
		died(nil)
	}

	// A hung task at least as long as the limit is dead at once.
	for _, tc := range []struct {
		line string
		dead bool
	}{
		{"[  484.8] INFO: task khugepaged:36 blocked for more than 120 seconds.", true},
		{"[  484.8] INFO: task khugepaged:36 blocked for more than 30 seconds.", false},
	} {
		ctx, died := context.WithCancelCause(context.Background())
		l := &consoleWatch{w: io.Discard, limit: time.Minute, grace: time.Hour, died: died}
		l.Write([]byte(tc.line + "\n"))
		if dead := ctx.Err() != nil; dead != tc.dead {
			t.Errorf("%q: dead %v, want %v", tc.line, dead, tc.dead)
		}
		died(nil)
	}

	// A report that never ends is taken for dead after the grace.
	ctx, died := context.WithCancelCause(context.Background())
	defer died(nil)
	l := &consoleWatch{w: io.Discard, limit: time.Minute, grace: 50 * time.Millisecond, died: died}
	l.Write([]byte("[  137.4] BUG: TASK stack guard page was hit at 0000000035138270\n[  137.5] stack guard page: 0000 [#1]"))
	select {
	case <-ctx.Done():
		if !strings.Contains(context.Cause(ctx).Error(), "stack guard page was hit") {
			t.Errorf("cause %v", context.Cause(ctx))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a failure without the report's end was not taken for dead")
	}
}
