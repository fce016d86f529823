//go:build linux && amd64

package kvm

import (
	"errors"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestIRQChipSetup creates the x86 platform pieces in the order a VMM does
// (TSS, identity map, irqchip, PIT) and checks that a second irqchip is
// refused with the errno intact.
func TestIRQChipSetup(t *testing.T) {
	v := newTestVM(t, true) // SetTSSAddr, SetIdentityMapAddr, CreateIRQChip, CreatePIT2
	if err := v.vm.CreateIRQChip(); !errors.Is(err, unix.EEXIST) {
		t.Errorf("second CreateIRQChip: %v, want EEXIST", err)
	}
	if v.vm.Fd() < 0 {
		t.Errorf("Fd() = %d", v.vm.Fd())
	}
}

func TestIRQFDAndIOEventFDRegister(t *testing.T) {
	v := newTestVM(t, true)
	efd := eventfd(t)
	if err := v.vm.IRQFD(efd, 5); err != nil {
		t.Fatal(err)
	}
	if err := v.vm.IRQFDDeassign(efd, 5); err != nil {
		t.Fatal(err)
	}
	if err := v.vm.IRQFD(-1, 5); !errors.Is(err, unix.EBADF) {
		t.Errorf("IRQFD(-1): %v, want EBADF", err)
	}
	for _, tc := range []struct {
		name   string
		addr   uint64
		length uint32
		pio    bool
	}{
		{"pio", 0x70, 1, true},
		{"pio any length", 0x72, 0, true},
		{"mmio", 0x10010, 4, false},
	} {
		if err := v.vm.IOEventFD(efd, tc.addr, tc.length, tc.pio); err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if err := v.vm.IOEventFDDeassign(efd, tc.addr, tc.length, tc.pio); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
		if err := v.vm.IOEventFDDeassign(efd, tc.addr, tc.length, tc.pio); !errors.Is(err, unix.ENOENT) {
			t.Errorf("%s: deassigning twice: %v, want ENOENT", tc.name, err)
		}
	}
}

// TestIOEventFDSignalsWithoutExit checks that guest writes to registered PIO
// and MMIO addresses signal their eventfds in the kernel, with no exit, and
// that they exit again once deassigned.
func TestIOEventFDSignalsWithoutExit(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	v := newTestVM(t, false)
	v.load(codeAddr, []byte{
		0xB0, 0x01, // mov al, 1
		0xE6, 0x70, // out 0x70, al     ; PIO ioeventfd
		0xB8, 0x00, 0x10, // mov ax, 0x1000
		0x8E, 0xD8, // mov ds, ax
		0xA2, 0x10, 0x00, // mov [0x10], al   ; MMIO ioeventfd at 0x10010 (al = 0)
		0xE6, 0x71, // out 0x71, al     ; a plain exit
		0xF4, // hlt
	})
	pioFd, mmioFd := eventfd(t), eventfd(t)
	if err := v.vm.IOEventFD(pioFd, 0x70, 1, true); err != nil {
		t.Fatal(err)
	}
	if err := v.vm.IOEventFD(mmioFd, 0x10010, 1, false); err != nil {
		t.Fatal(err)
	}
	c := v.newVCPU(0, codeAddr)
	if err := runOut(c, 0x71, 0x00); err != nil {
		t.Fatalf("want the first exit at port 0x71, past both ioeventfd writes: %v", err)
	}
	if n := eventfdCount(t, pioFd); n != 1 {
		t.Errorf("PIO eventfd count %d, want 1", n)
	}
	if n := eventfdCount(t, mmioFd); n != 1 {
		t.Errorf("MMIO eventfd count %d, want 1", n)
	}

	if err := v.vm.IOEventFDDeassign(pioFd, 0x70, 1, true); err != nil {
		t.Fatal(err)
	}
	if err := v.vm.IOEventFDDeassign(mmioFd, 0x10010, 1, false); err != nil {
		t.Fatal(err)
	}
	if err := c.SetRegs(&Regs{RIP: codeAddr, RSP: stackTop, RFLAGS: 2}); err != nil {
		t.Fatal(err)
	}
	if err := runOut(c, 0x70, 0x01); err != nil {
		t.Fatal(err)
	}
	if err := runExit(c, ExitMMIO); err != nil {
		t.Fatal(err)
	}
	if addr, write, data := c.MMIO(); addr != 0x10010 || !write || len(data) != 1 {
		t.Errorf("exit %s, want MMIO write of 1 byte at 0x10010", describeExit(c))
	}
	if err := runOut(c, 0x71, 0x00); err != nil {
		t.Fatal(err)
	}
	if n := eventfdCount(t, pioFd) + eventfdCount(t, mmioFd); n != 0 {
		t.Errorf("deassigned eventfds signalled %d times", n)
	}
}

// TestInterruptDelivery wakes a real-mode guest halted with interrupts on,
// first through an irqfd and then through KVM_IRQ_LINE, via the in-kernel
// 8259 PIC (IRQ 5, vector 0x0d). The BSP's in-kernel local APIC starts with
// LINT0 in ExtINT mode, so PIC interrupts reach it.
func TestInterruptDelivery(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	v := newTestVM(t, true)
	const isr = 0x1100
	v.load(codeAddr, []byte{
		0xFA,       // cli
		0xB0, 0x11, // mov al, 0x11  ; ICW1: edge, cascade, ICW4 follows
		0xE6, 0x20, // out 0x20, al
		0xB0, 0x08, // mov al, 0x08  ; ICW2: IRQ 0-7 -> vectors 0x08-0x0f
		0xE6, 0x21, // out 0x21, al
		0xB0, 0x04, // mov al, 0x04  ; ICW3: slave on IRQ 2
		0xE6, 0x21, // out 0x21, al
		0xB0, 0x01, // mov al, 0x01  ; ICW4: 8086 mode
		0xE6, 0x21, // out 0x21, al
		0xB0, 0xDF, // mov al, 0xdf  ; OCW1: unmask IRQ 5 only
		0xE6, 0x21, // out 0x21, al
		0xE6, 0x10, // out 0x10, al  ; tell the test the PIC is set up
		0xFB,       // 1: sti
		0xF4,       // hlt           ; halts in the kernel (in-kernel irqchip)
		0xEB, 0xFC, // jmp 1b
	})
	v.load(isr, []byte{
		0xB0, 0x20, // mov al, 0x20
		0xE6, 0x20, // out 0x20, al  ; EOI
		0xB0, 0xAB, // mov al, 0xab
		0xE6, 0x12, // out 0x12, al  ; report the interrupt
		0xCF, // iret
	})
	v.load(0x0d*4, []byte{isr & 0xff, isr >> 8, 0, 0}) // IVT[0x0d] = 0000:1100 (offset, segment)

	efd := eventfd(t)
	if err := v.vm.IRQFD(efd, 5); err != nil {
		t.Fatal(err)
	}
	c := v.newVCPU(0, codeAddr)
	if err := runOut(c, 0x10, 0xDF); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name  string
		raise func() error
	}{
		{"irqfd", func() error {
			_, err := unix.Write(efd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
			return err
		}},
		{"KVM_IRQ_LINE", func() error {
			if err := v.vm.IRQLine(5, true); err != nil {
				return err
			}
			return v.vm.IRQLine(5, false)
		}},
	} {
		// Raise the interrupt from another goroutine while the vCPU is
		// halted inside KVM_RUN.
		raised := make(chan error, 1)
		time.AfterFunc(20*time.Millisecond, func() { raised <- tc.raise() })
		if err := runOut(c, 0x12, 0xAB); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if err := <-raised; err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
	}
	if err := v.vm.IRQFDDeassign(efd, 5); err != nil {
		t.Fatal(err)
	}
}

func TestMPStateAndLAPIC(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	v := newTestVM(t, true)
	bsp := v.newVCPU(0, codeAddr)
	ap := v.newVCPU(1, codeAddr)
	if s, err := bsp.MPState(); err != nil || s != MPStateRunnable {
		t.Errorf("BSP MPState() = %d, %v, want %d (runnable)", s, err, MPStateRunnable)
	}
	if s, err := ap.MPState(); err != nil || s != MPStateUninitialized {
		t.Errorf("AP MPState() = %d, %v, want %d (uninitialized, waiting for INIT/SIPI)", s, err, MPStateUninitialized)
	}
	if err := ap.SetMPState(MPStateRunnable); err != nil {
		t.Fatal(err)
	}
	if s, err := ap.MPState(); err != nil || s != MPStateRunnable {
		t.Errorf("AP MPState() after SetMPState = %d, %v, want runnable", s, err)
	}

	const apicID, lvt0 = 0x20, 0x350
	l, err := ap.LAPIC()
	if err != nil {
		t.Fatal(err)
	}
	if id := l.Get32(apicID) >> 24; id != 1 {
		t.Errorf("AP APIC ID = %d, want 1", id)
	}
	l, err = bsp.LAPIC()
	if err != nil {
		t.Fatal(err)
	}
	if mode := l.Get32(lvt0) >> 8 & 7; mode != 7 {
		t.Errorf("BSP LVT LINT0 = %#x, want delivery mode 7 (ExtINT)", l.Get32(lvt0))
	}
	l.Set32(lvt0, 1<<16|7<<8) // masked ExtINT
	if err := bsp.SetLAPIC(&l); err != nil {
		t.Fatal(err)
	}
	l2, err := bsp.LAPIC()
	if err != nil {
		t.Fatal(err)
	}
	if got := l2.Get32(lvt0); got != 1<<16|7<<8 {
		t.Errorf("LVT LINT0 after SetLAPIC = %#x, want %#x", got, 1<<16|7<<8)
	}
}
