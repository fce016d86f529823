//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/huskvm/husk/internal/sandbox"
)

// trueArgv is the command both sides run: the template's /bin/true.
var trueArgv = []string{"/bin/true"}

// rttResult holds the round trips in milliseconds and the exec VM's boot
// to its agent's first answer.
type rttResult struct {
	husk, host []float64 // /bin/true in the VM, here
	health     []float64 // GET /health: the transport alone, no process
	boot       time.Duration
}

// execRTT boots one VM and times /bin/true in it through the agent and on
// this machine by fork+exec, and the agent's /health (what the transport
// alone costs), one after the other, the order rotating each round, so
// that load changes reach all of them alike.
func execRTT(c config) (res rttResult, err error) {
	vm, agent, boot, err := bootAgent(c)
	if err != nil {
		return res, err
	}
	defer func() {
		agent.Close()
		t0 := time.Now()
		cerr := closeVM(vm, c.stepTimeout)
		progress("exec: VM stopped in %.3fs", time.Since(t0).Seconds())
		if err == nil {
			err = cerr
		}
	}()
	res.boot = boot
	progress("exec: VM booted in %.3fs", boot.Seconds())
	fmt.Printf("\nexec: %q, %d warm-up then %d measured, in the VM (booted in %.3fs) and chrooted in %s here, and GET /health; the order rotates\n",
		trueArgv, c.execWarmup, c.execN, res.boot.Seconds(), c.trueRoot)

	for i := -c.execWarmup; i < c.execN; i++ {
		var h, b, g time.Duration
		steps := []func() error{
			func() (err error) { h, err = huskExec(agent, c.stepTimeout); return },
			func() (err error) { b, err = hostExec(c.trueRoot, c.stepTimeout); return },
			func() (err error) { g, err = health(agent, c.stepTimeout); return },
		}
		for k := range steps {
			if err := steps[(i+c.execWarmup+k)%len(steps)](); err != nil {
				return res, fmt.Errorf("round %d: %w", i+c.execWarmup+1, err)
			}
		}
		if i >= 0 {
			res.husk = append(res.husk, ms(h))
			res.host = append(res.host, ms(b))
			res.health = append(res.health, ms(g))
		}
		if n := i + 1; n > 0 && n%50 == 0 {
			progress("exec: %d/%d round trips", n, c.execN)
		}
	}
	return res, nil
}

// huskExec runs /bin/true in the VM and times it from the Start request to
// the end event.
func huskExec(a *sandbox.Agent, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	t0 := time.Now()
	exit, err := a.Run(ctx, sandbox.Command{Args: trueArgv, Stdout: io.Discard, Stderr: io.Discard})
	d := time.Since(t0)
	if err != nil {
		return 0, fmt.Errorf("in the VM: %w", err)
	}
	if exit.ShellStatus() != 0 {
		return 0, fmt.Errorf("in the VM: %s", exit.Status)
	}
	return d, nil
}

// bootAgent starts a VM as husk run does and waits for its agent's
// answer; it returns the time from the start of husk-vmm to that answer.
func bootAgent(c config) (*sandbox.VM, *sandbox.Agent, time.Duration, error) {
	dir, err := os.MkdirTemp(c.tmp, "vm-")
	if err != nil {
		return nil, nil, 0, err
	}
	t0 := time.Now()
	vm, err := sandbox.Start(sandbox.VMSpec{VMM: c.vmm, Kernel: c.kernel, Rootfs: c.rootfs, CPUs: c.cpus, MemMiB: c.mem, Dir: dir})
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, 0, err
	}
	agent := sandbox.NewAgent(vm.SocketPath(), "root")
	ctx, cancel := context.WithTimeout(context.Background(), c.bootTimeout)
	err = vm.WaitAgent(ctx, agent)
	cancel()
	d := time.Since(t0)
	if err != nil {
		agent.Close()
		if cerr := closeVM(vm, c.stepTimeout); cerr != nil {
			return nil, nil, 0, errors.Join(fmt.Errorf("boot to the agent: %w", err), cerr)
		}
		return nil, nil, 0, fmt.Errorf("boot to the agent: %w", err)
	}
	return vm, agent, d, nil
}

// health times one GET /health: an HTTP round trip to the agent over the
// same vsock connection pool, with no process behind it.
func health(a *sandbox.Agent, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	hc, base := a.HTTP()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/health", nil)
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	resp, err := hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("GET /health: %w", err)
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	d := time.Since(t0)
	if err != nil {
		return 0, fmt.Errorf("GET /health: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		return 0, fmt.Errorf("GET /health: %s", resp.Status)
	}
	return d, nil
}

// hostExec runs /bin/true here, chrooted in root, and times it from before
// the fork to the end of the wait. Like the agent's child it gets
// /dev/null as stdin, pipes (drained) as stdout and stderr, and its own
// process group.
func hostExec(root string, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, trueArgv[0], trueArgv[1:]...)
	cmd.Dir = "/" // inside the chroot
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root, Setpgid: true}
	t0 := time.Now()
	err := cmd.Run()
	d := time.Since(t0)
	if err != nil {
		return 0, fmt.Errorf("here, chrooted in %s: %w", root, err)
	}
	return d, nil
}

// closeVM stops a VM and waits at most bound for husk-vmm to go: a VMM
// stuck in the kernel must not hang the bench (it dies with this process,
// PR_SET_PDEATHSIG), and it stops it (stuckError).
func closeVM(vm *sandbox.VM, bound time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- vm.Close(5 * time.Second) }()
	select {
	case err := <-done:
		return err
	case <-time.After(bound):
		return stuckError{fmt.Errorf("husk-vmm (pid %d) still there %v after SIGTERM%s", vm.PID(), bound, vm.Diagnostics())}
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
