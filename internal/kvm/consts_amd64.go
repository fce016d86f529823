//go:build linux

package kvm

// Constants from include/uapi/linux/kvm.h and arch/x86/include/uapi/asm/kvm.h,
// in kernel spelling. Only the values this package uses or exports are listed.
// The exported Go names (ExitIO, CapIRQChip, ...) are defined from these.
// Ioctl request numbers are in requests_unsafe.go, derived from the argument
// types.

// KVM_GET_API_VERSION must return this value.
const _KVM_API_VERSION = 12

// kvm_run.exit_reason.
const (
	_KVM_EXIT_UNKNOWN         = 0
	_KVM_EXIT_EXCEPTION       = 1
	_KVM_EXIT_IO              = 2
	_KVM_EXIT_HYPERCALL       = 3
	_KVM_EXIT_DEBUG           = 4
	_KVM_EXIT_HLT             = 5
	_KVM_EXIT_MMIO            = 6
	_KVM_EXIT_IRQ_WINDOW_OPEN = 7
	_KVM_EXIT_SHUTDOWN        = 8
	_KVM_EXIT_FAIL_ENTRY      = 9
	_KVM_EXIT_INTR            = 10
	_KVM_EXIT_SET_TPR         = 11
	_KVM_EXIT_TPR_ACCESS      = 12
	_KVM_EXIT_NMI             = 16
	_KVM_EXIT_INTERNAL_ERROR  = 17
	_KVM_EXIT_WATCHDOG        = 21
	_KVM_EXIT_EPR             = 23
	_KVM_EXIT_SYSTEM_EVENT    = 24
	_KVM_EXIT_IOAPIC_EOI      = 26
	_KVM_EXIT_HYPERV          = 27
	_KVM_EXIT_X86_RDMSR       = 29
	_KVM_EXIT_X86_WRMSR       = 30
	_KVM_EXIT_DIRTY_RING_FULL = 31
	_KVM_EXIT_AP_RESET_HOLD   = 32
	_KVM_EXIT_X86_BUS_LOCK    = 33
	_KVM_EXIT_XEN             = 34
	_KVM_EXIT_NOTIFY          = 37
	_KVM_EXIT_MEMORY_FAULT    = 39
)

// kvm_run.io.direction.
const (
	_KVM_EXIT_IO_IN  = 0
	_KVM_EXIT_IO_OUT = 1
)

// kvm_run.system_event.type.
const (
	_KVM_SYSTEM_EVENT_SHUTDOWN = 1
	_KVM_SYSTEM_EVENT_RESET    = 2
	_KVM_SYSTEM_EVENT_CRASH    = 3
	_KVM_SYSTEM_EVENT_WAKEUP   = 4
	_KVM_SYSTEM_EVENT_SUSPEND  = 5
	_KVM_SYSTEM_EVENT_SEV_TERM = 6
)

// kvm_run.internal.suberror.
const (
	_KVM_INTERNAL_ERROR_EMULATION              = 1
	_KVM_INTERNAL_ERROR_SIMUL_EX               = 2
	_KVM_INTERNAL_ERROR_DELIVERY_EV            = 3
	_KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4
)

// KVM_CHECK_EXTENSION arguments.
const (
	_KVM_CAP_IRQCHIP               = 0
	_KVM_CAP_HLT                   = 1
	_KVM_CAP_USER_MEMORY           = 3
	_KVM_CAP_SET_TSS_ADDR          = 4
	_KVM_CAP_EXT_CPUID             = 7
	_KVM_CAP_NR_VCPUS              = 9
	_KVM_CAP_NR_MEMSLOTS           = 10
	_KVM_CAP_PIT                   = 11
	_KVM_CAP_MP_STATE              = 14
	_KVM_CAP_COALESCED_MMIO        = 15
	_KVM_CAP_SYNC_MMU              = 16
	_KVM_CAP_USER_NMI              = 22
	_KVM_CAP_IRQ_ROUTING           = 25
	_KVM_CAP_IRQ_INJECT_STATUS     = 26
	_KVM_CAP_IRQFD                 = 32
	_KVM_CAP_PIT2                  = 33
	_KVM_CAP_PIT_STATE2            = 35
	_KVM_CAP_IOEVENTFD             = 36
	_KVM_CAP_SET_IDENTITY_MAP_ADDR = 37
	_KVM_CAP_ADJUST_CLOCK          = 39
	_KVM_CAP_INTERNAL_ERROR_DATA   = 40
	_KVM_CAP_VCPU_EVENTS           = 41
	_KVM_CAP_DEBUGREGS             = 50
	_KVM_CAP_XSAVE                 = 55
	_KVM_CAP_XCRS                  = 56
	_KVM_CAP_TSC_CONTROL           = 60
	_KVM_CAP_GET_TSC_KHZ           = 61
	_KVM_CAP_MAX_VCPUS             = 66
	_KVM_CAP_TSC_DEADLINE_TIMER    = 72
	_KVM_CAP_KVMCLOCK_CTRL         = 76
	_KVM_CAP_SIGNAL_MSI            = 77
	_KVM_CAP_READONLY_MEM          = 81
	_KVM_CAP_IRQFD_RESAMPLE        = 82
	_KVM_CAP_IOEVENTFD_NO_LENGTH   = 100
	_KVM_CAP_SPLIT_IRQCHIP         = 121
	_KVM_CAP_IOEVENTFD_ANY_LENGTH  = 122
	_KVM_CAP_MAX_VCPU_ID           = 128
	_KVM_CAP_X2APIC_API            = 129
	_KVM_CAP_IMMEDIATE_EXIT        = 136
	_KVM_CAP_X86_DISABLE_EXITS     = 143
	_KVM_CAP_GET_MSR_FEATURES      = 153
)

// kvm_userspace_memory_region.flags.
const (
	_KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
	_KVM_MEM_READONLY        = 1 << 1
)

// kvm_pit_config.flags.
const _KVM_PIT_SPEAKER_DUMMY = 1

// kvm_irqfd.flags.
const (
	_KVM_IRQFD_FLAG_DEASSIGN = 1 << 0
	_KVM_IRQFD_FLAG_RESAMPLE = 1 << 1
)

// kvm_ioeventfd.flags (1 << kvm_ioeventfd_flag_nr_*).
const (
	_KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0
	_KVM_IOEVENTFD_FLAG_PIO       = 1 << 1
	_KVM_IOEVENTFD_FLAG_DEASSIGN  = 1 << 2
)

// kvm_mp_state.mp_state.
const (
	_KVM_MP_STATE_RUNNABLE      = 0
	_KVM_MP_STATE_UNINITIALIZED = 1
	_KVM_MP_STATE_INIT_RECEIVED = 2
	_KVM_MP_STATE_HALTED        = 3
	_KVM_MP_STATE_SIPI_RECEIVED = 4
	_KVM_MP_STATE_STOPPED       = 5
	_KVM_MP_STATE_CHECK_STOP    = 6
	_KVM_MP_STATE_OPERATING     = 7
	_KVM_MP_STATE_LOAD          = 8
	_KVM_MP_STATE_AP_RESET_HOLD = 9
	_KVM_MP_STATE_SUSPENDED     = 10
)

// kvm_cpuid_entry2.flags.
const (
	_KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0 // sic: kernel spelling
	_KVM_CPUID_FLAG_STATEFUL_FUNC    = 1 << 1
	_KVM_CPUID_FLAG_STATE_READ_NEXT  = 1 << 2
)

// Array sizes in the x86 ABI structs.
const (
	_KVM_NR_INTERRUPTS  = 256   // bits in kvm_sregs.interrupt_bitmap
	_KVM_APIC_REG_SIZE  = 0x400 // kvm_lapic_state.regs
	_KVM_RUN_EXIT_UNION = 256   // the exit union of kvm_run ("char padding[256]")
	_SYNC_REGS_SIZE     = 2048  // kvm_run.s ("SYNC_REGS_SIZE_BYTES")
)
