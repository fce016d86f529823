//go:build linux

package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// initMarker is the last line the test init (test/guestinit) writes.
var initMarker = []byte("HUSK_INIT_DONE")

// bootSpec is one VMM invocation.
type bootSpec struct {
	Name    string
	Argv    []string
	Env     []string      // added to the environment
	Timeout time.Duration // exec to marker, and marker to exit with WaitExit
	// WaitExit waits for the VMM to exit by itself after the marker (the
	// guest reboots) instead of killing it there.
	WaitExit bool
	// FindRAM, if set, locates guest RAM (from the VMM's stderr so far and
	// its mappings) and the bench samples memory at the marker.
	FindRAM func(stderr []byte, vmas []vma) ([]addrRange, error)
	// SetupMark is the message of the VMM's log record that ends its set-up
	// (husk-vmm: kernel_loaded); "" for none.
	SetupMark string
}

// Outcomes of a boot.
const (
	outcomeOK   = "ok"
	outcomeHang = "hang" // no marker, or no exit after it, within the timeout
	outcomeFail = "fail" // exited early or unsuccessfully, or could not be measured
	// outcomeStuck: the VMM outlived SIGKILL (a thread stuck in the kernel)
	// or blocked reads of its /proc files; the bench cannot go on.
	outcomeStuck = "stuck"
)

// Bounds on the steps after a boot that the VMM's state could block.
const (
	reapTimeout   = 30 * time.Second // SIGKILL to exit
	sampleTimeout = 30 * time.Second // reading /proc/PID/{status,smaps,pagemap}
	diagTimeout   = 30 * time.Second // diagnoseHang
)

type bootResult struct {
	Outcome string
	Err     error
	Boot    time.Duration // exec to the marker line read from the pipe
	Exit    time.Duration // marker to exit, with WaitExit
	// Setup is exec to the SetupMark record (husk-vmm: Go start, VM, memory
	// and kernel loaded, vCPUs not yet created); 0 if not logged.
	Setup   time.Duration
	Mem     memSample
	Console []byte // tail of the console (stdout)
	Stderr  []byte // tail of stderr
	Diag    string // state of a hung VMM (diagnoseHang)
}

// boot runs one VMM and times it from just before exec to the moment the
// init marker is read from its stdout.
func boot(s bootSpec) (r bootResult) {
	console := &tailBuffer{max: 16 << 10}
	stderr := &tailBuffer{max: 64 << 10}
	defer func() {
		r.Console, r.Stderr = console.Bytes(), stderr.Bytes()
	}()
	inR, inW, err := os.Pipe()
	if err != nil {
		return bootResult{Outcome: outcomeFail, Err: err}
	}
	defer inW.Close() // the guest's console input stays open, and empty, until the end
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		return bootResult{Outcome: outcomeFail, Err: err}
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		inR.Close()
		outR.Close()
		outW.Close()
		return bootResult{Outcome: outcomeFail, Err: err}
	}
	cmd := exec.Command(s.Argv[0], s.Argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if len(s.Env) > 0 {
		cmd.Env = append(os.Environ(), s.Env...)
	}

	t0 := time.Now()
	err = cmd.Start()
	inR.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return bootResult{Outcome: outcomeFail, Err: err}
	}
	marker := make(chan time.Time, 1)
	var readers sync.WaitGroup
	readers.Add(2)
	go func() {
		defer readers.Done()
		defer outR.Close()
		watchConsole(outR, console, marker)
	}()
	go func() {
		defer readers.Done()
		defer errR.Close()
		io.Copy(stderr, errR)
	}()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	finish := func() {
		// The pipes reach EOF when the VMM is gone; a grandchild holding them
		// would keep them open, so do not wait forever.
		done := make(chan struct{})
		go func() { readers.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(2 * time.Second):
		}
	}

	timer := time.NewTimer(s.Timeout)
	defer timer.Stop()
	var tMarker time.Time
	select {
	case tMarker = <-marker:
		r.Boot = tMarker.Sub(t0)
	case err := <-exited:
		finish()
		return bootResult{Outcome: outcomeFail, Err: fmt.Errorf("exited before the init marker: %v", exitText(err))}
	case <-timer.C:
		r.Outcome, r.Err = outcomeHang, fmt.Errorf("no init marker within %v", s.Timeout)
		r.Diag = diagnose(s.Name, cmd.Process.Pid, r.Err)
		if err := stopHung(cmd, exited); err != nil {
			r.Outcome, r.Err = outcomeStuck, fmt.Errorf("%v, and then %w", r.Err, err)
		}
		finish()
		return r
	}

	if s.SetupMark != "" {
		log := waitFor(stderr, func(b []byte) bool { _, ok := logTime(b, s.SetupMark); return ok })
		if t, ok := logTime(log, s.SetupMark); ok {
			r.Setup = t.Sub(t0)
		}
	}
	if s.FindRAM != nil {
		type sample struct {
			m   memSample
			err error
		}
		done := make(chan sample, 1)
		go func() {
			m, err := sampleMem(cmd.Process.Pid, func(vmas []vma) ([]addrRange, error) {
				return s.FindRAM(waitFor(stderr, guestRAMLine.Match), vmas)
			})
			done <- sample{m, err}
		}()
		select {
		case d := <-done:
			r.Mem = d.m
			if d.err != nil {
				r.Outcome, r.Err = outcomeFail, fmt.Errorf("memory at the marker: %w", d.err)
			}
		case <-time.After(sampleTimeout):
			r.Outcome, r.Err = outcomeStuck, fmt.Errorf("reading the VMM's /proc files blocked for %v", sampleTimeout)
			r.Diag = diagnose(s.Name, cmd.Process.Pid, r.Err)
		}
	}
	if !s.WaitExit {
		if err := reap(cmd, exited); err != nil {
			r.Outcome, r.Err = outcomeStuck, err
			r.Diag += diagnose(s.Name, cmd.Process.Pid, err)
		}
		finish()
		if r.Outcome == "" {
			r.Outcome = outcomeOK
		}
		return r
	}
	timer.Reset(s.Timeout)
	select {
	case err := <-exited:
		r.Exit = time.Since(tMarker)
		finish()
		if err != nil {
			r.Outcome, r.Err = outcomeFail, fmt.Errorf("after the init marker: %v", exitText(err))
		}
	case <-timer.C:
		r.Outcome, r.Err = outcomeHang, fmt.Errorf("no exit within %v after the init marker", s.Timeout)
		r.Diag = diagnose(s.Name, cmd.Process.Pid, r.Err)
		if err := stopHung(cmd, exited); err != nil {
			r.Outcome, r.Err = outcomeStuck, fmt.Errorf("%v, and then %w", r.Err, err)
		}
		finish()
	}
	if r.Outcome == "" {
		r.Outcome = outcomeOK
	}
	return r
}

// stopHung asks a hung VMM for a goroutine dump (SIGQUIT: a Go program
// prints every goroutine's stack and exits; QEMU just exits) and kills it if
// it is still there 3 s later.
func stopHung(cmd *exec.Cmd, exited <-chan error) error {
	cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-exited:
		return nil
	case <-time.After(3 * time.Second):
		return reap(cmd, exited)
	}
}

// reap SIGKILLs the VMM and waits, within reapTimeout, for it to be gone.
func reap(cmd *exec.Cmd, exited <-chan error) error {
	cmd.Process.Kill()
	select {
	case <-exited:
		return nil
	case <-time.After(reapTimeout):
		return fmt.Errorf("the VMM (pid %d) is still there %v after SIGKILL", cmd.Process.Pid, reapTimeout)
	}
}

// diagnose says on stderr at once that a boot went wrong (the report with
// the details comes later), and returns diagnoseHang's description, or
// what it got to within diagTimeout.
func diagnose(name string, pid int, why error) string {
	fmt.Fprintf(os.Stderr, "bootbench: %s (pid %d): %v; diagnosing\n", name, pid, why)
	done := make(chan string, 1)
	go func() { done <- diagnoseHang(pid) }()
	select {
	case d := <-done:
		return d
	case <-time.After(diagTimeout):
		return fmt.Sprintf("diagnosis of pid %d blocked for %v\n", pid, diagTimeout)
	}
}

func exitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ProcessState.String()
	}
	return err.Error()
}

// watchConsole copies the console into tail and sends the time at which the
// first line holding the init marker was read.
func watchConsole(r io.Reader, tail *tailBuffer, marker chan<- time.Time) {
	buf := make([]byte, 32<<10)
	var line []byte
	seen := false
	for {
		n, err := r.Read(buf)
		if n > 0 {
			p := buf[:n]
			tail.Write(p)
			for !seen && len(p) > 0 {
				i := bytes.IndexByte(p, '\n')
				if i < 0 {
					line = append(line, p...)
					break
				}
				line = append(line, p[:i]...)
				p = p[i+1:]
				if bytes.Contains(line, initMarker) {
					seen = true
					marker <- time.Now()
				}
				line = line[:0]
			}
		}
		if err != nil {
			return
		}
	}
}

// waitFor returns b's contents once match holds for them, or after 2 s.
func waitFor(b *tailBuffer, match func([]byte) bool) []byte {
	deadline := time.Now().Add(2 * time.Second)
	for {
		data := b.Bytes()
		if match(data) || time.Now().After(deadline) {
			return data
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// tailBuffer keeps the first and the last bytes written to it, up to max in
// all: the start of a log says how a run began, its end how it ended.
type tailBuffer struct {
	mu   sync.Mutex
	max  int
	head []byte
	tail []byte
	cut  bool
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	n := len(p)
	t.mu.Lock()
	defer t.mu.Unlock()
	if room := t.max/2 - len(t.head); room > 0 {
		k := min(room, len(p))
		t.head = append(t.head, p[:k]...)
		p = p[k:]
	}
	t.tail = append(t.tail, p...)
	if over := len(t.tail) - t.max/2; over > 0 {
		t.tail = append(t.tail[:0], t.tail[over:]...)
		t.cut = true
	}
	return n, nil
}

func (t *tailBuffer) Bytes() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := append([]byte(nil), t.head...)
	if t.cut {
		out = append(out, "\n[...]\n"...)
	}
	return append(out, t.tail...)
}
