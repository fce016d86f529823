package vmm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"

	"github.com/huskvm/husk/internal/arch/x86"
	"github.com/huskvm/husk/internal/boot"
	"github.com/huskvm/husk/internal/devices/i8042"
	"github.com/huskvm/husk/internal/devices/serial"
	"github.com/huskvm/husk/internal/eventfd"
	"github.com/huskvm/husk/internal/guestmem"
	"github.com/huskvm/husk/internal/kvm"
	"github.com/huskvm/husk/internal/virtio/rng"
	"github.com/huskvm/husk/internal/virtio/vsock"
)

// COM1 is the console UART's port base.
const com1 = 0x3f8

// PanicError reports a guest reset that followed a kernel panic line on the
// console.
type PanicError struct {
	Line string
}

func (e *PanicError) Error() string { return "guest kernel panic: " + e.Line }

// VM is a built, not yet running, microVM.
type VM struct {
	cfg   Config
	log   *slog.Logger
	sys   *kvm.System
	vm    *kvm.VM
	mem   *guestmem.Memory
	image *boot.Image
	cpuid []kvm.CPUIDEntry
	// tscDeadline: KVM emulates the TSC-deadline timer, so CPUID shows it.
	tscDeadline bool
	pio         bus
	mmio        bus

	console   *panicWatcher
	uart      *serial.UART
	serialIRQ *eventfd.EventFD

	virtio        []*virtioDev
	deviceCmdline []string // virtio_mmio.device= announcements
	rng           *rng.Device
	vsock         *vsock.Device

	vcpus     []*vcpu
	probeable atomic.Pointer[[]*vcpu] // vcpus, for LogState from other goroutines

	stopOnce sync.Once
	stopped  chan struct{} // closed by stop
	stopErr  error         // why the VM stopped; nil for a clean guest reset
	stopping atomic.Bool
}

// New builds a VM from cfg: KVM VM with in-kernel IRQ chip and PIT, guest
// RAM, boot structures, the kernel and initrd, and the legacy devices.
func New(cfg Config) (_ *VM, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Console == nil {
		cfg.Console = io.Discard
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	v := &VM{cfg: cfg, log: cfg.Log, stopped: make(chan struct{})}
	defer func() {
		if err != nil {
			v.Close()
		}
	}()
	if v.sys, err = kvm.Open(); err != nil {
		return nil, err
	}
	for _, c := range []kvm.Cap{kvm.CapIRQChip, kvm.CapIRQFD, kvm.CapPIT2, kvm.CapImmediateExit, kvm.CapUserMemory} {
		if n, err := v.sys.CheckExtension(c); err != nil || n == 0 {
			return nil, fmt.Errorf("KVM lacks %v", c)
		}
	}
	if v.vm, err = v.sys.CreateVM(); err != nil {
		return nil, err
	}
	if err := v.setupVM(); err != nil {
		return nil, err
	}
	if err := v.setupMemory(); err != nil {
		return nil, err
	}
	if err := v.setupDevices(); err != nil {
		return nil, err
	}
	if err := v.setupVirtio(); err != nil {
		return nil, err
	}
	if err := v.loadKernel(); err != nil {
		return nil, err
	}
	supported, err := v.sys.SupportedCPUID()
	if err != nil {
		return nil, err
	}
	v.cpuid = supported
	n, err := v.sys.CheckExtension(kvm.CapTSCDeadlineTimer)
	v.tscDeadline = err == nil && n > 0
	return v, nil
}

// setupVM creates the VM-wide state in the order KVM requires: the TSS and
// identity-map pages before any vCPU, then the IRQ chip and the PIT.
func (v *VM) setupVM() error {
	if err := v.vm.SetTSSAddr(x86.TSSAddr); err != nil {
		return err
	}
	if err := v.vm.SetIdentityMapAddr(x86.IdentityMapAddr); err != nil {
		return err
	}
	if err := v.vm.CreateIRQChip(); err != nil {
		return err
	}
	return v.vm.CreatePIT2(kvm.PITSpeakerDummy)
}

func (v *VM) setupMemory() error {
	ranges, err := x86.RAMRanges(uint64(v.cfg.MemMiB) << 20)
	if err != nil {
		return err
	}
	if v.mem, err = guestmem.New(ranges); err != nil {
		return err
	}
	for i, r := range v.mem.Regions() {
		if err := v.vm.SetUserMemoryRegion(&kvm.UserspaceMemoryRegion{
			Slot: uint32(i), GuestPhysAddr: r.GPA, MemorySize: r.Size, UserspaceAddr: uint64(r.HostAddr()),
		}); err != nil {
			return err
		}
		v.log.Debug("guest_ram", "slot", i, "gpa", r.GPA, "size", r.Size, "host_addr", r.HostAddr())
	}
	mp, err := x86.MPTable(v.cfg.VCPUs)
	if err != nil {
		return err
	}
	for _, w := range []struct {
		addr uint64
		b    []byte
	}{{x86.GDTAddr, x86.GDT()}, {x86.PML4Addr, x86.PageTables()}, {x86.MPTableAddr, mp}} {
		if _, err := v.mem.WriteAt(w.b, int64(w.addr)); err != nil {
			return fmt.Errorf("write boot tables at %#x: %w", w.addr, err)
		}
	}
	return nil
}

func (v *VM) loadKernel() error {
	kernel, err := os.Open(v.cfg.Kernel)
	if err != nil {
		return err
	}
	defer kernel.Close()
	var initrd *os.File
	if v.cfg.Initrd != "" {
		if initrd, err = os.Open(v.cfg.Initrd); err != nil {
			return err
		}
		defer initrd.Close()
	}
	ram := v.mem.Regions()
	mm := x86.MemoryMap(rangesOf(ram))
	v.image, err = boot.Load(v.mem, boot.Params{
		Kernel: kernel, Initrd: initrd, Cmdline: v.cmdline(), MemMap: mm,
		CmdlineAddr: x86.CmdlineAddr, CmdlineMax: x86.CmdlineMax,
		StartInfoAddr: x86.StartInfoAddr, ZeroPageAddr: x86.ZeroPageAddr,
		HighMemStart: x86.HighMemStart, InitrdMax: ram[0].End(),
	})
	if err != nil {
		return err
	}
	v.log.Debug("kernel_loaded", "protocol", v.image.Protocol.String(), "entry", v.image.Entry,
		"kernel_end", v.image.KernelEnd, "initrd_addr", v.image.InitrdAddr, "initrd_size", v.image.InitrdSize)
	return nil
}

func rangesOf(rs []*guestmem.Region) []guestmem.Range {
	out := make([]guestmem.Range, len(rs))
	for i, r := range rs {
		out[i] = r.Range
	}
	return out
}

func (v *VM) setupDevices() error {
	var err error
	if v.serialIRQ, err = eventfd.New(); err != nil {
		return err
	}
	if err := v.vm.IRQFD(v.serialIRQ.FD(), x86.SerialIRQ); err != nil {
		return err
	}
	v.console = &panicWatcher{out: v.cfg.Console}
	v.uart = serial.New(v.console, func() {
		if err := v.serialIRQ.Notify(); err != nil {
			v.log.Warn("serial_irq_failed", "err", err)
		}
	})
	if err := v.pio.insert(com1, serial.Size, v.uart); err != nil {
		return err
	}
	return v.pio.insert(i8042.Base, i8042.Size, i8042.New(func() { v.stop(nil) }))
}

// Run boots the guest and blocks until it stops: nil when the guest reset
// itself (its way of powering off), a *PanicError when a kernel panic
// preceded the reset, ctx's error when ctx ended first, or the vCPU error.
func (v *VM) Run(ctx context.Context) error {
	if v.cfg.ConsoleIn != nil {
		v.uart.Start(v.cfg.ConsoleIn)
	}
	v.vcpus = make([]*vcpu, v.cfg.VCPUs)
	ready := make(chan error, v.cfg.VCPUs)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range v.vcpus {
		c := &vcpu{vm: v, id: i, log: v.log.With("vcpu", i), probes: make(chan chan<- VCPUView, 1)}
		v.vcpus[i] = c
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.loop(ready, start)
		}()
	}
	v.probeable.Store(&v.vcpus)
	// Every vCPU must exist before any runs: the boot CPU's INIT/SIPI to an
	// application processor that KVM does not know yet is lost.
	for range v.vcpus {
		if err := <-ready; err != nil {
			v.stop(err)
		}
	}
	close(start)
	select {
	case <-ctx.Done():
		v.stop(context.Cause(ctx))
	case <-v.stopped:
	}
	wg.Wait()
	if v.stopErr == nil {
		if line := v.console.panicLine(); line != "" {
			return &PanicError{Line: line}
		}
	}
	return v.stopErr
}

// stop records why the VM stops (the first reason wins) and kicks every vCPU
// out of KVM_RUN. It may be called from any goroutine, vCPUs included.
func (v *VM) stop(err error) {
	v.stopOnce.Do(func() {
		v.stopErr = err
		v.stopping.Store(true)
		close(v.stopped)
	})
	for _, c := range v.vcpus {
		if c != nil {
			c.kick()
		}
	}
}

// Close releases everything New acquired. Call it after Run returns.
func (v *VM) Close() error {
	var errs []error
	if v.uart != nil {
		v.uart.Close()
	}
	// Device workers may touch guest memory until they stop.
	errs = append(errs, v.closeVirtio())
	if v.serialIRQ != nil {
		errs = append(errs, v.serialIRQ.Close())
	}
	if v.vm != nil {
		errs = append(errs, v.vm.Close())
	}
	if v.mem != nil {
		errs = append(errs, v.mem.Close())
	}
	if v.sys != nil {
		errs = append(errs, v.sys.Close())
	}
	return errors.Join(errs...)
}
