//go:build linux && amd64

package kvm

import (
	"testing"
	"unsafe"
)

// TestABISizes checks every ABI mirror against the kernel's sizeof
// (x86-64, include/uapi/linux/kvm.h and arch/x86/include/uapi/asm/kvm.h).
func TestABISizes(t *testing.T) {
	for _, tc := range []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"kvm_regs", unsafe.Sizeof(Regs{}), 144},
		{"kvm_segment", unsafe.Sizeof(Segment{}), 24},
		{"kvm_dtable", unsafe.Sizeof(DTable{}), 16},
		{"kvm_sregs", unsafe.Sizeof(Sregs{}), 312},
		{"kvm_fpu", unsafe.Sizeof(FPU{}), 416},
		{"kvm_cpuid2 (header)", unsafe.Sizeof(cpuid2Header{}), 8},
		{"kvm_cpuid_entry2", unsafe.Sizeof(CPUIDEntry{}), 40},
		{"kvm_msrs (header)", unsafe.Sizeof(msrsHeader{}), 8},
		{"kvm_msr_entry", unsafe.Sizeof(MSREntry{}), 16},
		{"kvm_userspace_memory_region", unsafe.Sizeof(UserspaceMemoryRegion{}), 32},
		{"kvm_lapic_state", unsafe.Sizeof(LAPICState{}), 1024},
		{"kvm_mp_state", unsafe.Sizeof(mpState{}), 4},
		{"kvm_irq_level", unsafe.Sizeof(irqLevel{}), 8},
		{"kvm_pit_config", unsafe.Sizeof(pitConfig{}), 64},
		{"kvm_irqfd", unsafe.Sizeof(irqfd{}), 32},
		{"kvm_ioeventfd", unsafe.Sizeof(ioeventfd{}), 64},
		// struct kvm_run up to and including kvm_dirty_regs; minRunSize adds s.
		{"kvm_run (header+union+regs masks)", unsafe.Sizeof(runData{}), 304},
		{"kvm_run.io", unsafe.Sizeof(runIO{}), 16},
		{"kvm_run.mmio", unsafe.Sizeof(runMMIO{}), 24},
		{"kvm_run.fail_entry", unsafe.Sizeof(runFailEntry{}), 16},
		{"kvm_run.internal", unsafe.Sizeof(runInternal{}), 136},
		{"kvm_run.system_event", unsafe.Sizeof(runSystemEvent{}), 136},
	} {
		if tc.got != tc.want {
			t.Errorf("sizeof(%s) = %d, want %d", tc.name, tc.got, tc.want)
		}
	}
}

// TestABIOffsets checks field offsets where a shifted field would keep the
// struct's size unchanged or where the exit accessors depend on them.
func TestABIOffsets(t *testing.T) {
	var r runData
	var io runIO
	var m runMMIO
	var s Sregs
	var seg Segment
	var f FPU
	var ioe ioeventfd
	var fe runFailEntry
	var se runSystemEvent
	for _, tc := range []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"kvm_run.request_interrupt_window", unsafe.Offsetof(r.requestInterruptWindow), 0},
		{"kvm_run.immediate_exit", unsafe.Offsetof(r.immediateExit), 1},
		{"kvm_run.exit_reason", unsafe.Offsetof(r.exitReason), 8},
		{"kvm_run.ready_for_interrupt_injection", unsafe.Offsetof(r.readyForInterruptInjection), 12},
		{"kvm_run.if_flag", unsafe.Offsetof(r.ifFlag), 13},
		{"kvm_run.flags", unsafe.Offsetof(r.flags), 14},
		{"kvm_run.cr8", unsafe.Offsetof(r.cr8), 16},
		{"kvm_run.apic_base", unsafe.Offsetof(r.apicBase), 24},
		{"kvm_run exit union", unsafe.Offsetof(r.exit), 32},
		{"kvm_run.kvm_valid_regs", unsafe.Offsetof(r.kvmValidRegs), 288},
		{"kvm_run.kvm_dirty_regs", unsafe.Offsetof(r.kvmDirtyRegs), 296},
		{"kvm_run.io.direction", unsafe.Offsetof(io.direction), 0},
		{"kvm_run.io.size", unsafe.Offsetof(io.size), 1},
		{"kvm_run.io.port", unsafe.Offsetof(io.port), 2},
		{"kvm_run.io.count", unsafe.Offsetof(io.count), 4},
		{"kvm_run.io.data_offset", unsafe.Offsetof(io.dataOffset), 8},
		{"kvm_run.mmio.phys_addr", unsafe.Offsetof(m.physAddr), 0},
		{"kvm_run.mmio.data", unsafe.Offsetof(m.data), 8},
		{"kvm_run.mmio.len", unsafe.Offsetof(m.len), 16},
		{"kvm_run.mmio.is_write", unsafe.Offsetof(m.isWrite), 20},
		{"kvm_run.fail_entry.cpu", unsafe.Offsetof(fe.cpu), 8},
		{"kvm_run.system_event.flags/data", unsafe.Offsetof(se.data), 8},
		{"kvm_segment.selector", unsafe.Offsetof(seg.Selector), 12},
		{"kvm_segment.unusable", unsafe.Offsetof(seg.Unusable), 22},
		{"kvm_sregs.gdt", unsafe.Offsetof(s.GDT), 192},
		{"kvm_sregs.cr0", unsafe.Offsetof(s.CR0), 224},
		{"kvm_sregs.apic_base", unsafe.Offsetof(s.APICBase), 272},
		{"kvm_sregs.interrupt_bitmap", unsafe.Offsetof(s.InterruptBitmap), 280},
		{"kvm_fpu.last_ip", unsafe.Offsetof(f.LastIP), 136},
		{"kvm_fpu.xmm", unsafe.Offsetof(f.XMM), 152},
		{"kvm_fpu.mxcsr", unsafe.Offsetof(f.MXCSR), 408},
		{"kvm_ioeventfd.fd", unsafe.Offsetof(ioe.fd), 20},
		{"kvm_ioeventfd.flags", unsafe.Offsetof(ioe.flags), 24},
	} {
		if tc.got != tc.want {
			t.Errorf("offsetof(%s) = %d, want %d", tc.name, tc.got, tc.want)
		}
	}
}

// fakeVCPU returns a VCPU whose kvm_run is size bytes of ordinary Go
// memory, so the exit accessors can be tested against any union contents.
func fakeVCPU(size int) *VCPU {
	words := make([]uint64, (size+7)/8)
	// SAFETY: words is pointer-free, 8-byte aligned and at least size bytes;
	// the byte view keeps it alive.
	m := unsafe.Slice((*byte)(unsafe.Pointer(&words[0])), size)
	return &VCPU{fd: -1, run: m, runData: runDataOf(m)}
}

// TestExitAccessorBounds checks that IO and MMIO never slice outside the
// kvm_run mapping or the mmio data array, whatever the union holds.
func TestExitAccessorBounds(t *testing.T) {
	const size = 3 * 4096
	c := fakeVCPU(size)
	c.runData.exitReason = _KVM_EXIT_IO
	io := exitAs[runIO](c.runData)
	for _, tc := range []struct {
		name        string
		dataOffset  uint64
		size, count uint32
		wantLen     int // -1: nil
	}{
		{"in bounds", 4096, 4, 1, 4},
		{"string op", 4096, 2, 8, 16},
		{"ends at mapping end", size - 4, 4, 1, 4},
		{"one past the end", size - 3, 4, 1, -1},
		{"offset past the end", size + 1, 1, 1, -1},
		{"offset near 2^64", ^uint64(0) - 1, 4, 1, -1},
		{"huge count", 4096, 255, ^uint32(0), -1},
		{"empty", 0, 0, 0, 0},
	} {
		io.dataOffset, io.size, io.count, io.port, io.direction = tc.dataOffset, uint8(tc.size), tc.count, 0x3f8, _KVM_EXIT_IO_OUT
		port, write, data := c.IO()
		if port != 0x3f8 || !write {
			t.Errorf("%s: IO() port %#x write %t, want 0x3f8 true", tc.name, port, write)
		}
		switch {
		case tc.wantLen < 0 && data != nil:
			t.Errorf("%s: IO() data len %d, want nil", tc.name, len(data))
		case tc.wantLen >= 0 && (data == nil || len(data) != tc.wantLen || cap(data) != tc.wantLen):
			t.Errorf("%s: IO() data len %d cap %d (nil %t), want len=cap=%d", tc.name, len(data), cap(data), data == nil, tc.wantLen)
		}
	}
	io.dataOffset, io.size, io.count = 4096, 1, 1
	_, _, data := c.IO()
	data[0] = 0x5a
	if c.run[4096] != 0x5a {
		t.Error("IO() data does not alias the kvm_run mapping")
	}

	m := exitAs[runMMIO](c.runData)
	m.physAddr, m.isWrite, m.len = 0xd0000000, 1, 200
	copy(m.data[:], "12345678")
	addr, write, data := c.MMIO()
	if addr != 0xd0000000 || !write || string(data) != "12345678" || cap(data) != 8 {
		t.Errorf("MMIO() = %#x, %t, %q (cap %d), want len capped at 8", addr, write, data, cap(data))
	}
	m.len, m.isWrite = 2, 0
	if _, write, data := c.MMIO(); write || string(data) != "12" || cap(data) != 2 {
		t.Errorf("MMIO() write %t data %q cap %d, want read of %q with cap 2", write, data, cap(data), "12")
	}

	exitAs[runSystemEvent](c.runData).typ = SystemEventReset
	if got := c.SystemEvent(); got != SystemEventReset {
		t.Errorf("SystemEvent() = %d, want %d", got, SystemEventReset)
	}
	exitAs[runFailEntry](c.runData).hardwareEntryFailureReason = 0x21
	if got := c.FailEntry(); got != 0x21 {
		t.Errorf("FailEntry() = %#x, want 0x21", got)
	}
	in := exitAs[runInternal](c.runData)
	in.suberror, in.ndata, in.data[0], in.data[15] = InternalErrorEmulation, 99, 7, 8
	if got := c.InternalError(); got != InternalErrorEmulation {
		t.Errorf("InternalError() = %d", got)
	}
	if d := c.InternalErrorData(); len(d) != 16 || d[0] != 7 || d[15] != 8 {
		t.Errorf("InternalErrorData() = %v, want 16 words (ndata capped)", d)
	}
}

// TestSetImmediateExitLeavesNeighbours checks that the word-wide atomic
// store of immediate_exit changes byte 1 only.
func TestSetImmediateExitLeavesNeighbours(t *testing.T) {
	c := fakeVCPU(4096)
	c.run[0], c.run[2], c.run[3] = 0xaa, 0xbb, 0xcc
	c.SetImmediateExit(true)
	if c.run[1] != 1 || c.runData.immediateExit != 1 {
		t.Errorf("immediate_exit = %d, want 1", c.run[1])
	}
	c.SetImmediateExit(false)
	if c.run[1] != 0 {
		t.Errorf("immediate_exit = %d, want 0", c.run[1])
	}
	if c.run[0] != 0xaa || c.run[2] != 0xbb || c.run[3] != 0xcc {
		t.Errorf("neighbouring bytes changed: % x", c.run[:4])
	}
}
