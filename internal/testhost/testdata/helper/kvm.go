package main

import (
	"fmt"
	"os"
	"runtime"
	"syscall"
	"time"
	"unsafe"
)

// KVM ioctls (linux/kvm.h), as few as a real-mode HLT needs.
const (
	kvmGetAPIVersion       = 0xae00
	kvmCreateVM            = 0xae01
	kvmGetVCPUMmapSize     = 0xae04
	kvmCreateVCPU          = 0xae41
	kvmSetUserMemoryRegion = 0x4020ae46
	kvmRun                 = 0xae80
	kvmGetRegs             = 0x8090ae81
	kvmSetRegs             = 0x4090ae82
	kvmGetSregs            = 0x8138ae83
	kvmSetSregs            = 0x4138ae84
	kvmExitIO              = 2
	kvmExitHLT             = 5
)

func ioctl(fd, req, arg uintptr) (uintptr, error) {
	r, _, e := syscall.Syscall(syscall.SYS_IOCTL, fd, req, arg)
	if e != 0 {
		return r, e
	}
	return r, nil
}

// kvmSmoke creates a VM with 4 KiB of memory holding
// "mov al,42; out 0x10,al; hlt" at 0x1000, runs it in real mode and checks
// that it exits with port I/O (42 on port 0x10) and then HLT.
func kvmSmoke() error {
	runtime.LockOSThread()
	start := time.Now()
	kvm, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer kvm.Close()
	if v, err := ioctl(kvm.Fd(), kvmGetAPIVersion, 0); err != nil || v != 12 {
		return fmt.Errorf("KVM_GET_API_VERSION = %d, %v", v, err)
	}
	vm, err := ioctl(kvm.Fd(), kvmCreateVM, 0)
	if err != nil {
		return fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	mem, err := syscall.Mmap(-1, 0, 0x2000, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED|syscall.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	copy(mem[0x1000:], []byte{0xb0, 42, 0xe6, 0x10, 0xf4})
	region := struct {
		slot, flags            uint32
		gpa, size, userAddress uint64
	}{0, 0, 0, 0x2000, uint64(uintptr(unsafe.Pointer(&mem[0])))}
	if _, err := ioctl(vm, kvmSetUserMemoryRegion, uintptr(unsafe.Pointer(&region))); err != nil {
		return fmt.Errorf("KVM_SET_USER_MEMORY_REGION: %w", err)
	}
	vcpu, err := ioctl(vm, kvmCreateVCPU, 0)
	if err != nil {
		return fmt.Errorf("KVM_CREATE_VCPU: %w", err)
	}
	size, err := ioctl(kvm.Fd(), kvmGetVCPUMmapSize, 0)
	if err != nil {
		return err
	}
	run, err := syscall.Mmap(int(vcpu), 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		return err
	}
	var sregs [0x138]byte
	if _, err := ioctl(vcpu, kvmGetSregs, uintptr(unsafe.Pointer(&sregs))); err != nil {
		return fmt.Errorf("KVM_GET_SREGS: %w", err)
	}
	clear(sregs[0:8])   // cs.base = 0
	clear(sregs[12:14]) // cs.selector = 0
	if _, err := ioctl(vcpu, kvmSetSregs, uintptr(unsafe.Pointer(&sregs))); err != nil {
		return fmt.Errorf("KVM_SET_SREGS: %w", err)
	}
	var regs [18]uint64
	regs[16] = 0x1000 // rip
	regs[17] = 2      // rflags
	if _, err := ioctl(vcpu, kvmSetRegs, uintptr(unsafe.Pointer(&regs))); err != nil {
		return fmt.Errorf("KVM_SET_REGS: %w", err)
	}
	var exits []string
	for i := 0; i < 10; i++ {
		if _, err := ioctl(vcpu, kvmRun, 0); err != nil {
			if err == syscall.EINTR {
				continue
			}
			return fmt.Errorf("KVM_RUN: %w", err)
		}
		reason := *(*uint32)(unsafe.Pointer(&run[8]))
		switch reason {
		case kvmExitIO:
			// struct kvm_run.io: direction u8, size u8, port u16, count u32, data_offset u64
			port := *(*uint16)(unsafe.Pointer(&run[32+2]))
			off := *(*uint64)(unsafe.Pointer(&run[32+8]))
			exits = append(exits, fmt.Sprintf("io port %#x value %d", port, run[off]))
		case kvmExitHLT:
			exits = append(exits, "hlt")
			fmt.Printf("kvm ok: %v in %v\n", exits, time.Since(start).Round(time.Microsecond))
			return nil
		default:
			return fmt.Errorf("exit reason %d after %v", reason, exits)
		}
	}
	return fmt.Errorf("no HLT after %v", exits)
}
