package vmm

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/huskvm/husk/internal/arch/x86"
	"github.com/huskvm/husk/internal/boot"
	"github.com/huskvm/husk/internal/kvm"
	"golang.org/x/sys/unix"
)

// vcpu is one virtual CPU and the goroutine that runs it.
type vcpu struct {
	vm  *VM
	id  int
	log *slog.Logger

	tid atomic.Int32 // OS thread running the vCPU; 0 when none

	mu     sync.Mutex // guards k against kick racing with close
	k      *kvm.VCPU
	closed bool

	exits  atomic.Uint64        // exits to user space handled
	probes chan chan<- VCPUView // state requests, answered between runs
}

// VCPUView is what a vCPU was doing when it was probed: where the guest
// was, whether it took interrupts, and how many exits it had made.
type VCPUView struct {
	ID      int
	RIP     uint64
	RFLAGS  uint64
	IF      bool   // RFLAGS.IF: the guest takes interrupts
	MPState string // runnable, halted, ...
	Exits   uint64
	Err     string `json:",omitempty"`
}

// view reads the vCPU's state. Only the vCPU's own goroutine calls it,
// between runs.
func (c *vcpu) view(k *kvm.VCPU) VCPUView {
	v := VCPUView{ID: c.id, Exits: c.exits.Load()}
	r, err := k.Regs()
	if err != nil {
		v.Err = err.Error()
		return v
	}
	v.RIP, v.RFLAGS, v.IF = r.RIP, r.RFLAGS, r.RFLAGS&(1<<9) != 0
	st, err := k.MPState()
	if err != nil {
		v.Err = err.Error()
		return v
	}
	v.MPState = mpStateName(st)
	return v
}

func mpStateName(st uint32) string {
	switch st {
	case kvm.MPStateRunnable:
		return "runnable"
	case kvm.MPStateUninitialized:
		return "uninitialized"
	case kvm.MPStateInitReceived:
		return "init_received"
	case kvm.MPStateHalted:
		return "halted"
	case kvm.MPStateSIPIReceived:
		return "sipi_received"
	}
	return fmt.Sprint(st)
}

// probe asks the vCPU for its state: it is kicked out of KVM_RUN and
// answers before it enters again. ok is false if it did not answer within
// the timeout (it has stopped, or is busy with a long exit).
func (c *vcpu) probe(timeout time.Duration) (VCPUView, bool) {
	reply := make(chan VCPUView, 1)
	for sent := false; !sent; {
		select {
		case c.probes <- reply:
			sent = true
		default:
			// An earlier probe gave up waiting (its kick may have come
			// before the vCPU existed): take its request back.
			select {
			case <-c.probes:
			default:
			}
		}
	}
	c.kick()
	select {
	case v := <-reply:
		return v, true
	case <-time.After(timeout):
		return VCPUView{}, false
	}
}

// loop is the vCPU goroutine. It locks itself to its OS thread for good: the
// vCPU is kicked by a signal to that thread, so the goroutine must never
// migrate, and the thread dies with it. It creates and sets up the vCPU,
// reports on ready, waits for start, then runs until the VM stops.
func (c *vcpu) loop(ready chan<- error, start <-chan struct{}) {
	runtime.LockOSThread()
	c.tid.Store(int32(unix.Gettid()))
	defer c.tid.Store(0)
	err := c.setup()
	ready <- err
	if err != nil {
		return
	}
	defer c.close()
	<-start
	k := c.k
	for !c.vm.stopping.Load() {
		if err := k.Run(); err != nil {
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
				// Kicked or interrupted by a runtime signal. Clear the kick; the
				// loop condition then catches a stop that raced with it (stop
				// sets stopping before immediate_exit).
				k.SetImmediateExit(false)
				select {
				case reply := <-c.probes:
					reply <- c.view(k)
				default:
				}
				continue
			}
			c.vm.stop(fmt.Errorf("vcpu %d: KVM_RUN: %w", c.id, err))
			return
		}
		c.exits.Add(1)
		if err := c.handleExit(k); err != nil {
			if errors.Is(err, errReset) {
				err = nil
			}
			c.vm.stop(err)
			return
		}
	}
}

func (c *vcpu) setup() error {
	k, err := c.vm.vm.CreateVCPU(c.id)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.k = k
	c.mu.Unlock()
	ids := x86.FilterCPUID(c.vm.cpuid, x86.CPUIDOptions{VCPUs: c.vm.cfg.VCPUs, ID: c.id, TSCDeadline: c.vm.tscDeadline})
	// CPUID before SREGS: KVM checks CR4 and EFER against the CPUID.
	if err := k.SetCPUID2(ids); err != nil {
		return fmt.Errorf("vcpu %d: %w", c.id, err)
	}
	fpu := x86.BootFPU()
	if err := k.SetFPU(&fpu); err != nil {
		return fmt.Errorf("vcpu %d: %w", c.id, err)
	}
	if c.id != 0 {
		return nil // application processors wait in KVM for INIT and SIPI
	}
	long := c.vm.image.Protocol == boot.Linux64
	s, err := k.Sregs()
	if err != nil {
		return fmt.Errorf("vcpu %d: %w", c.id, err)
	}
	x86.BootSregs(&s, long)
	if err := k.SetSregs(&s); err != nil {
		return fmt.Errorf("vcpu %d: %w", c.id, err)
	}
	r := x86.BootRegs(c.vm.image.Entry, c.vm.image.BootStruct, long)
	if err := k.SetRegs(&r); err != nil {
		return fmt.Errorf("vcpu %d: %w", c.id, err)
	}
	return nil
}

// kick makes the vCPU leave KVM_RUN soon: immediate_exit stops the next
// entry, the signal interrupts a running one. Safe from any goroutine.
func (c *vcpu) kick() {
	c.mu.Lock()
	if c.k != nil && !c.closed {
		c.k.SetImmediateExit(true)
	}
	c.mu.Unlock()
	if tid := c.tid.Load(); tid != 0 {
		// SIGURG: the Go runtime already handles it (preemption) and ignores
		// stray ones, and its delivery makes KVM_RUN return EINTR.
		unix.Tgkill(unix.Getpid(), int(tid), unix.SIGURG)
	}
}

func (c *vcpu) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	if err := c.k.Close(); err != nil {
		c.log.Warn("vcpu_close_failed", "err", err)
	}
}

// errReset is the guest asking for a reset, its way to power off.
var errReset = errors.New("guest reset")

// handleExit services one VM exit. It returns errReset when the guest reset
// itself and another error when the VM cannot go on.
func (c *vcpu) handleExit(k *kvm.VCPU) error {
	switch r := k.ExitReason(); r {
	case kvm.ExitIO:
		port, write, data := k.IO()
		size, count := k.IOAccess()
		if data == nil || size == 0 || len(data) != int(size)*int(count) {
			return fmt.Errorf("vcpu %d: malformed port I/O exit at port %#x", c.id, port)
		}
		// A string instruction (rep outsb/insb) delivers count accesses at once.
		for i := 0; i < len(data); i += int(size) {
			if write {
				c.vm.pio.write(uint64(port), data[i:i+int(size)])
			} else {
				c.vm.pio.read(uint64(port), data[i:i+int(size)])
			}
		}
	case kvm.ExitMMIO:
		addr, write, data := k.MMIO()
		if write {
			c.vm.mmio.write(addr, data)
		} else {
			c.vm.mmio.read(addr, data)
		}
	case kvm.ExitShutdown:
		// A triple fault: how `reboot=t` resets, and how a badly broken guest
		// dies. Our command lines reset through the i8042, so say where it
		// happened: a crash must not pass for a clean power-off unseen.
		attrs := []any{"vcpu", c.id}
		if regs, err := k.Regs(); err == nil {
			attrs = append(attrs, "rip", fmt.Sprintf("%#x", regs.RIP), "rsp", fmt.Sprintf("%#x", regs.RSP))
		}
		if sregs, err := k.Sregs(); err == nil {
			attrs = append(attrs, "cr2", fmt.Sprintf("%#x", sregs.CR2), "cr3", fmt.Sprintf("%#x", sregs.CR3))
		}
		c.vm.log.Warn("guest_triple_fault", attrs...)
		return errReset
	case kvm.ExitSystemEvent:
		switch t := k.SystemEvent(); t {
		case kvm.SystemEventReset, kvm.SystemEventShutdown:
			return errReset
		default:
			return fmt.Errorf("vcpu %d: system event %d", c.id, t)
		}
	case kvm.ExitHLT:
		return fmt.Errorf("vcpu %d: halted with interrupts off", c.id)
	case kvm.ExitFailEntry:
		return fmt.Errorf("vcpu %d: KVM_RUN failed entry, hardware reason %#x", c.id, k.FailEntry())
	case kvm.ExitInternalError:
		return fmt.Errorf("vcpu %d: KVM internal error, suberror %d", c.id, k.InternalError())
	default:
		return fmt.Errorf("vcpu %d: unexpected exit %v", c.id, r)
	}
	return nil
}
