//go:build linux

package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/huskvm/husk/internal/shellquote"
	"github.com/huskvm/husk/internal/tailbuf"
)

// initMarker is the last line the test init (test/guestinit) writes.
var initMarker = []byte("HUSK_INIT_DONE")

// runOutput is what `husk run -- echo hi` must print.
const runOutput = "hi\n"

// firstResult holds the seconds of each measured round that succeeded.
type firstResult struct {
	run   []float64 // husk run: exec to the first byte of stdout
	exit  []float64 // husk run: that first byte to husk's exit
	agent []float64 // sandbox VM: start of husk-vmm to the agent's answer
	boot  []float64 // husk-vmm with the test initrd: exec to the init marker
	// failures counts the steps that failed or hung.
	failures int
}

// firstOutput times husk run against a cold boot, and the boot of husk
// run's VM to its agent's answer (which tells husk's own share of the run
// from the guest's), in rounds of the three whose order rotates. A step
// that fails or hangs is reported on stderr and its round left out; the
// bench stops once the failures reach half the number of rounds, or if a
// process survives SIGKILL.
func firstOutput(c config) (firstResult, error) {
	var res firstResult
	runArgv := []string{c.husk, "run", "--direct", "--vmm", c.vmm, "--kernel", c.kernel, "--rootfs", c.rootfs,
		"--cpus", strconv.Itoa(c.cpus), "--mem", strconv.Itoa(c.mem), "--timeout", c.bootTimeout.String(),
		"--", "echo", "hi"}
	bootArgv := []string{c.vmm, "--kernel", c.kernel, "--initrd", c.initrd,
		"--cpus", strconv.Itoa(c.cpus), "--mem", strconv.Itoa(c.mem), "--cmdline", bootCmdline}
	fmt.Printf("\nrun: TMPDIR=%s %s\nagent: internal/sandbox Start and WaitAgent, the VM husk run boots\nboot: %s\n"+
		"%d warm-up round(s), then %d rounds; the order rotates\n",
		c.tmp, shellquote.Join(runArgv), shellquote.Join(bootArgv), c.warmup, c.rounds)

	for i := -c.warmup; i < c.rounds; i++ {
		var run, exit, agent, boot time.Duration
		steps := []struct {
			name string
			do   func() error
		}{
			{"run", func() (err error) { run, exit, err = timeRun(runArgv, c); return }},
			{"agent", func() (err error) { agent, err = timeAgent(c); return }},
			{"boot", func() (err error) { boot, err = timeBoot(bootArgv, c); return }},
		}
		label := fmt.Sprintf("round %2d", i+1)
		if i < 0 {
			label = "warm-up "
		}
		ok := true
		var order []string
		for k := range steps {
			s := steps[(i+c.warmup+k)%len(steps)]
			order = append(order, s.name)
			progress("%s: %s", label, s.name)
			err := s.do()
			var st stuckError
			if errors.As(err, &st) {
				return res, err
			}
			if err != nil {
				ok = false
				res.failures++
				fmt.Fprintf(os.Stderr, "--- %s, %s failed: %v\n", label, s.name, err)
				if res.failures*2 >= c.warmup+c.rounds {
					return res, fmt.Errorf("%d steps failed", res.failures)
				}
			}
		}
		if !ok {
			fmt.Printf("%s  failed (stderr)\n", label)
			continue
		}
		fmt.Printf("%s  run %6.3fs (exit +%.3fs) | agent %6.3fs | boot %6.3fs   (%s)\n",
			label, run.Seconds(), exit.Seconds(), agent.Seconds(), boot.Seconds(), strings.Join(order, ", "))
		if i >= 0 {
			res.run = append(res.run, run.Seconds())
			res.exit = append(res.exit, exit.Seconds())
			res.agent = append(res.agent, agent.Seconds())
			res.boot = append(res.boot, boot.Seconds())
		}
	}
	if len(res.run) == 0 {
		return res, errors.New("no round succeeded")
	}
	if res.failures > 0 {
		fmt.Printf("%d step(s) failed; their rounds are left out\n", res.failures)
	}
	return res, nil
}

// timeAgent boots the VM husk run boots and times it from the start of
// husk-vmm to the agent's first answer; then it stops the VM.
func timeAgent(c config) (time.Duration, error) {
	vm, agent, d, err := bootAgent(c)
	if err != nil {
		return 0, err
	}
	agent.Close()
	if err := closeVM(vm, c.stepTimeout); err != nil {
		return 0, err
	}
	return d, nil
}

// timeRun runs husk run to the end and returns the time from exec to the
// first byte on its stdout, and from there to its exit.
func timeRun(argv []string, c config) (first, exit time.Duration, err error) {
	p, err := startChild(argv, []string{"TMPDIR=" + c.tmp}, watchFirstByte)
	if err != nil {
		return 0, 0, err
	}
	// husk's own --timeout is c.bootTimeout; this only backs it up.
	tMark, err := p.awaitMark(c.bootTimeout + c.stepTimeout)
	if err != nil {
		return 0, 0, p.fail(err, c.stepTimeout)
	}
	select {
	case werr := <-p.exited:
		exit = time.Since(tMark)
		p.drain()
		if werr != nil {
			return 0, 0, p.report(fmt.Errorf("husk run: %v", werr))
		}
	case <-time.After(c.stepTimeout):
		return 0, 0, p.fail(fmt.Errorf("husk run did not exit within %v of its output", c.stepTimeout), c.stepTimeout)
	}
	if got := string(p.stdout.Bytes()); got != runOutput {
		return 0, 0, p.report(fmt.Errorf("husk run printed %q, want %q", got, runOutput))
	}
	return tMark.Sub(p.t0), exit, nil
}

// timeBoot boots husk-vmm and returns the time from exec to the init
// marker; then it kills the VMM.
func timeBoot(argv []string, c config) (time.Duration, error) {
	p, err := startChild(argv, nil, watchMarker)
	if err != nil {
		return 0, err
	}
	tMark, err := p.awaitMark(c.bootTimeout)
	if err != nil {
		return 0, p.fail(err, c.stepTimeout)
	}
	if err := p.kill(c.stepTimeout); err != nil {
		return 0, err
	}
	return tMark.Sub(p.t0), nil
}

// child is a started process whose stdout is watched for a mark.
type child struct {
	argv           []string
	cmd            *exec.Cmd
	t0             time.Time // just before exec
	stdout, stderr *tailbuf.Buffer
	stdin          *os.File       // write end, open (and empty) until the end
	mark           chan time.Time // when stdout showed the mark
	exited         chan error     // cmd.Wait's result
	readers        sync.WaitGroup // the stdout and stderr copiers
}

// startChild starts argv with env added to the environment, stdin an open
// empty pipe (as a console that nobody types on), and stdout passed
// through watch, which sends the time of the mark.
func startChild(argv, env []string, watch func(io.Reader, io.Writer, chan<- time.Time)) (*child, error) {
	p := &child{argv: argv, stdout: tailbuf.New(16 << 10), stderr: tailbuf.New(16 << 10),
		mark: make(chan time.Time, 1), exited: make(chan error, 1)}
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		outR.Close()
		outW.Close()
		return nil, err
	}
	p.stdin = inW
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Stdin, p.cmd.Stdout, p.cmd.Stderr = inR, outW, errW
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if len(env) > 0 {
		p.cmd.Env = append(os.Environ(), env...)
	}
	p.t0 = time.Now()
	err = p.cmd.Start()
	inR.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		errR.Close()
		return nil, err
	}
	p.readers.Add(2)
	go func() { defer p.readers.Done(); defer outR.Close(); watch(outR, p.stdout, p.mark) }()
	go func() { defer p.readers.Done(); defer errR.Close(); io.Copy(p.stderr, errR) }()
	go func() { p.exited <- p.cmd.Wait() }()
	return p, nil
}

// awaitMark waits up to limit for the mark; exiting before it is an error.
func (p *child) awaitMark(limit time.Duration) (time.Time, error) {
	timer := time.NewTimer(limit)
	defer timer.Stop()
	select {
	case t := <-p.mark:
		return t, nil
	case err := <-p.exited:
		p.exited <- err // for fail
		return time.Time{}, fmt.Errorf("exited before its output (%v)", err)
	case <-timer.C:
		return time.Time{}, fmt.Errorf("no output within %v", limit)
	}
}

// stuckError is a process that outlived SIGKILL (or a VM its SIGTERM and
// SIGKILL): its threads are stuck in the kernel, and the machine is not fit
// to measure on.
type stuckError struct{ error }

// kill SIGKILLs the process and waits up to limit for it to be gone.
func (p *child) kill(limit time.Duration) error {
	p.cmd.Process.Kill()
	select {
	case <-p.exited:
		p.drain()
		return nil
	case <-time.After(limit):
		return stuckError{p.report(fmt.Errorf("pid %d still there %v after SIGKILL", p.cmd.Process.Pid, limit))}
	}
}

// fail ends a process that went wrong and describes what it left behind.
func (p *child) fail(why error, limit time.Duration) error {
	if err := p.kill(limit); err != nil {
		return err
	}
	return p.report(why)
}

// report adds the command and the tails of its output to err.
func (p *child) report(err error) error {
	return fmt.Errorf("%w\n--- argv: %s\n--- stdout:\n%s\n--- stderr:\n%s\n---", err, shellquote.Join(p.argv), p.stdout.Bytes(), p.stderr.Bytes())
}

// drain waits briefly for stdout and stderr to reach EOF (a grandchild
// that inherited them could hold them open), then closes stdin.
func (p *child) drain() {
	done := make(chan struct{})
	go func() { p.readers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
	}
	p.stdin.Close()
}

// watchFirstByte copies r into keep and sends the time at which the first
// bytes were read.
func watchFirstByte(r io.Reader, keep io.Writer, mark chan<- time.Time) {
	buf := make([]byte, 32<<10)
	seen := false
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if !seen {
				seen = true
				mark <- time.Now()
			}
			keep.Write(buf[:n])
		}
		if err != nil {
			return
		}
	}
}

// watchMarker copies r into keep and sends the time at which the first
// line holding initMarker was read.
func watchMarker(r io.Reader, keep io.Writer, mark chan<- time.Time) {
	br := bufio.NewReader(io.TeeReader(r, keep))
	for {
		line, err := br.ReadBytes('\n')
		if err != nil {
			return
		}
		if bytes.Contains(line, initMarker) {
			mark <- time.Now()
			break
		}
	}
	io.Copy(io.Discard, br)
}
