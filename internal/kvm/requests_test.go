//go:build linux && amd64

package kvm

import "testing"

// TestRequestNumbers compares each derived request number with the literal
// value of the kernel macro on x86-64.
func TestRequestNumbers(t *testing.T) {
	for _, tc := range []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"KVM_GET_API_VERSION", _KVM_GET_API_VERSION, 0xae00},
		{"KVM_CREATE_VM", _KVM_CREATE_VM, 0xae01},
		{"KVM_CHECK_EXTENSION", _KVM_CHECK_EXTENSION, 0xae03},
		{"KVM_GET_VCPU_MMAP_SIZE", _KVM_GET_VCPU_MMAP_SIZE, 0xae04},
		{"KVM_GET_SUPPORTED_CPUID", _KVM_GET_SUPPORTED_CPUID, 0xc008ae05},
		{"KVM_CREATE_VCPU", _KVM_CREATE_VCPU, 0xae41},
		{"KVM_SET_USER_MEMORY_REGION", _KVM_SET_USER_MEMORY_REGION, 0x4020ae46},
		{"KVM_SET_TSS_ADDR", _KVM_SET_TSS_ADDR, 0xae47},
		{"KVM_SET_IDENTITY_MAP_ADDR", _KVM_SET_IDENTITY_MAP_ADDR, 0x4008ae48},
		{"KVM_CREATE_IRQCHIP", _KVM_CREATE_IRQCHIP, 0xae60},
		{"KVM_IRQ_LINE", _KVM_IRQ_LINE, 0x4008ae61},
		{"KVM_IRQFD", _KVM_IRQFD, 0x4020ae76},
		{"KVM_CREATE_PIT2", _KVM_CREATE_PIT2, 0x4040ae77},
		{"KVM_IOEVENTFD", _KVM_IOEVENTFD, 0x4040ae79},
		{"KVM_RUN", _KVM_RUN, 0xae80},
		{"KVM_GET_REGS", _KVM_GET_REGS, 0x8090ae81},
		{"KVM_SET_REGS", _KVM_SET_REGS, 0x4090ae82},
		{"KVM_GET_SREGS", _KVM_GET_SREGS, 0x8138ae83},
		{"KVM_SET_SREGS", _KVM_SET_SREGS, 0x4138ae84},
		{"KVM_GET_MSRS", _KVM_GET_MSRS, 0xc008ae88},
		{"KVM_SET_MSRS", _KVM_SET_MSRS, 0x4008ae89},
		{"KVM_GET_FPU", _KVM_GET_FPU, 0x81a0ae8c},
		{"KVM_SET_FPU", _KVM_SET_FPU, 0x41a0ae8d},
		{"KVM_GET_LAPIC", _KVM_GET_LAPIC, 0x8400ae8e},
		{"KVM_SET_LAPIC", _KVM_SET_LAPIC, 0x4400ae8f},
		{"KVM_SET_CPUID2", _KVM_SET_CPUID2, 0x4008ae90},
		{"KVM_GET_MP_STATE", _KVM_GET_MP_STATE, 0x8004ae98},
		{"KVM_SET_MP_STATE", _KVM_SET_MP_STATE, 0x4004ae99},
		{"KVM_SET_TSC_KHZ", _KVM_SET_TSC_KHZ, 0xaea2},
		{"KVM_GET_TSC_KHZ", _KVM_GET_TSC_KHZ, 0xaea3},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %#x, want %#x", tc.name, tc.got, tc.want)
		}
	}
}

func TestIocPanicsOnOversizedArgument(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("ioc accepted a 16 KiB argument, which does not fit in 14 bits")
		}
	}()
	iow(0x01, 1<<14)
}

func TestIoctlPtrPanicsOnSizeMismatch(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("ioctlPtr accepted a Regs for a Sregs request")
		}
	}()
	ioctlPtr(-1, _KVM_SET_SREGS, &Regs{})
}

func TestStrings(t *testing.T) {
	for _, tc := range []struct {
		got, want string
	}{
		{ExitIO.String(), "KVM_EXIT_IO"},
		{ExitMMIO.String(), "KVM_EXIT_MMIO"},
		{ExitHLT.String(), "KVM_EXIT_HLT"},
		{ExitShutdown.String(), "KVM_EXIT_SHUTDOWN"},
		{ExitFailEntry.String(), "KVM_EXIT_FAIL_ENTRY"},
		{ExitInternalError.String(), "KVM_EXIT_INTERNAL_ERROR"},
		{ExitSystemEvent.String(), "KVM_EXIT_SYSTEM_EVENT"},
		{ExitReason(1000).String(), "ExitReason(1000)"},
		{CapIRQChip.String(), "KVM_CAP_IRQCHIP"},
		{CapImmediateExit.String(), "KVM_CAP_IMMEDIATE_EXIT"},
		{Cap(9999).String(), "Cap(9999)"},
	} {
		if tc.got != tc.want {
			t.Errorf("String() = %q, want %q", tc.got, tc.want)
		}
	}
}

func TestLAPICStateRegisterAccess(t *testing.T) {
	var s LAPICState
	s.Set32(0x350, 0x700)
	if got := s.Get32(0x350); got != 0x700 {
		t.Errorf("Get32(0x350) = %#x, want 0x700", got)
	}
	if s.Regs[0x351] != 0x07 {
		t.Errorf("register not stored little-endian: % x", s.Regs[0x350:0x354])
	}
	s.Set32(LAPICRegSize-3, 1) // out of range: no-op, no panic
	if got := s.Get32(-1); got != 0 {
		t.Errorf("Get32(-1) = %#x, want 0", got)
	}
}
