// Package sandbox runs sandboxes from the host side: it starts husk-vmm as
// a separate process on a template's read-only root image plus a fresh
// copy-on-write overlay, talks to the guest agent over vsock, and tears the
// VM down again. It never links KVM, VMM or device code (test/deps checks):
// the VMM is a separate binary, to be jailed on its own.
package sandbox

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/huskvm/husk/internal/tailbuf"
)

// AgentPath is where templates carry husk-agent; the guest boots it as PID 1.
const AgentPath = "/usr/local/sbin/husk-agent"

// GuestCID is the guest's vsock context id. Every VM has its own vsock
// device and host socket, so one fixed CID serves all of them.
const GuestCID = 3

// bootCmdline boots quietly on the serial console, resets through the
// i8042 on reboot and at once on panic, skips hardware husk does not have,
// and runs the agent as init on the overlaid, writable root.
const bootCmdline = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.dumbkbd quiet" +
	" root=/dev/vda rw rootfstype=ext4 init=" + AgentPath

// VMSpec describes a sandbox VM.
type VMSpec struct {
	VMM    string // the husk-vmm binary
	Kernel string // guest kernel (vmlinux with a PVH note, or bzImage)
	Rootfs string // the template's root image; opened read-only, never written
	CPUs   int
	MemMiB int
	// Dir holds the VM's files: its overlay, vsock socket and console log.
	// Start creates it; Close removes it.
	Dir string
}

// VM is a running husk-vmm process.
type VM struct {
	spec   VMSpec
	cmd    *exec.Cmd
	stderr *tailbuf.Buffer
	done   chan struct{} // closed when husk-vmm has exited
	err    error         // why it exited, once done is closed
	once   sync.Once
}

// Start creates spec.Dir and starts husk-vmm in it. The VM runs until the
// guest powers off, Stop, or husk-vmm fails; husk-vmm is killed if this
// process dies.
func Start(spec VMSpec) (*VM, error) {
	if spec.CPUs < 1 || spec.MemMiB < 1 {
		return nil, fmt.Errorf("sandbox: %d vCPUs and %d MiB", spec.CPUs, spec.MemMiB)
	}
	if err := os.MkdirAll(spec.Dir, 0o700); err != nil {
		return nil, err
	}
	v := &VM{spec: spec, stderr: tailbuf.New(16 << 10), done: make(chan struct{})}
	v.cmd = exec.Command(spec.VMM,
		"--kernel", spec.Kernel,
		"--cpus", strconv.Itoa(spec.CPUs),
		"--mem", strconv.Itoa(spec.MemMiB),
		"--disk", spec.Rootfs+",overlay="+v.OverlayPath(),
		"--vsock", fmt.Sprintf("cid=%d,socket=%s", GuestCID, v.SocketPath()),
		"--rng",
		"--console", v.ConsolePath(),
		"--log-level", "warn",
		"--cmdline", bootCmdline)
	v.cmd.Stdout, v.cmd.Stderr = v.stderr, v.stderr
	// Its own process group: a terminal's Ctrl-C is for the command in
	// the guest, which husk passes on, not for the VMM.
	v.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := v.cmd.Start(); err != nil {
		os.RemoveAll(spec.Dir)
		return nil, fmt.Errorf("start husk-vmm: %w", err)
	}
	go func() {
		err := v.cmd.Wait()
		if err != nil {
			err = fmt.Errorf("husk-vmm: %w%s", err, v.diagnostics())
		}
		v.err = err
		close(v.done)
	}()
	return v, nil
}

// OverlayPath is the VM's copy-on-write overlay of the root image.
func (v *VM) OverlayPath() string { return filepath.Join(v.spec.Dir, "root.overlay") }

// SocketPath is the host end of the VM's vsock device.
func (v *VM) SocketPath() string { return filepath.Join(v.spec.Dir, "vsock.sock") }

// ConsolePath is the guest's serial console log.
func (v *VM) ConsolePath() string { return filepath.Join(v.spec.Dir, "console.log") }

// Done is closed when husk-vmm has exited.
func (v *VM) Done() <-chan struct{} { return v.done }

// Err is why husk-vmm exited (nil: the guest powered off); valid after Done.
func (v *VM) Err() error { return v.err }

// PID is husk-vmm's process id.
func (v *VM) PID() int { return v.cmd.Process.Pid }

// diagnostics is husk-vmm's stderr and the end of the guest console, for
// an error message.
func (v *VM) diagnostics() string {
	var b strings.Builder
	if s := strings.TrimSpace(v.stderr.String()); s != "" {
		fmt.Fprintf(&b, "\nhusk-vmm said:\n%s", s)
	}
	if s := strings.TrimSpace(tailFile(v.ConsolePath(), 4<<10)); s != "" {
		fmt.Fprintf(&b, "\nguest console (end):\n%s", s)
	}
	return b.String()
}

// Diagnostics describes the VM's state for an error message: husk-vmm's
// output and the end of the guest console.
func (v *VM) Diagnostics() string { return v.diagnostics() }

// DumpState asks husk-vmm for its device state (SIGUSR1: it logs every
// virtio queue's indices and every vsock connection's counters) and, a
// second later, writes what husk-vmm has said to w. It is how a run that
// stalls is looked into; the VM runs on.
func (v *VM) DumpState(w io.Writer) {
	select {
	case <-v.done:
		fmt.Fprintf(w, "husk: husk-vmm has exited: %v\n", v.err)
		return
	default:
	}
	if err := v.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		fmt.Fprintf(w, "husk: signal husk-vmm: %v\n", err)
		return
	}
	select {
	case <-v.done:
	case <-time.After(time.Second):
	}
	fmt.Fprintf(w, "husk: husk-vmm state on request (its last output):\n%s\n", strings.TrimSpace(v.stderr.String()))
}

// Close stops the VM, if it still runs: SIGTERM, then SIGKILL after grace.
// Then it removes the VM's directory (overlay included). It returns once
// husk-vmm is gone.
func (v *VM) Close(grace time.Duration) error {
	var err error
	v.once.Do(func() {
		select {
		case <-v.done:
		default:
			v.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-v.done:
			case <-time.After(grace):
				v.cmd.Process.Kill()
				<-v.done
			}
		}
		err = os.RemoveAll(v.spec.Dir)
	})
	return err
}

// WaitAgent waits until the guest agent answers /health, or the VM dies,
// or ctx ends.
func (v *VM) WaitAgent(ctx context.Context, a *Agent) error {
	for {
		err := a.Health(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-v.done:
			if v.err == nil {
				return fmt.Errorf("the guest powered off before its agent answered%s", v.diagnostics())
			}
			return v.err
		case <-ctx.Done():
			return fmt.Errorf("the guest agent did not answer (%v): %w%s", err, context.Cause(ctx), v.diagnostics())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// tailFile returns the last max bytes of a file, or "".
func tailFile(path string, max int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		f.Seek(fi.Size()-max, io.SeekStart)
	}
	b, _ := io.ReadAll(io.LimitReader(f, max))
	return string(bytes.ToValidUTF8(b, []byte("?")))
}
