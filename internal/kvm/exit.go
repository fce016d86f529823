//go:build linux && amd64

package kvm

import "strconv"

// ExitReason is kvm_run.exit_reason: why KVM_RUN returned to userspace.
type ExitReason uint32

// Exit reasons (KVM_EXIT_*). Reasons that only other architectures produce
// are left out.
const (
	ExitUnknown       ExitReason = _KVM_EXIT_UNKNOWN
	ExitException     ExitReason = _KVM_EXIT_EXCEPTION
	ExitIO            ExitReason = _KVM_EXIT_IO
	ExitHypercall     ExitReason = _KVM_EXIT_HYPERCALL
	ExitDebug         ExitReason = _KVM_EXIT_DEBUG
	ExitHLT           ExitReason = _KVM_EXIT_HLT
	ExitMMIO          ExitReason = _KVM_EXIT_MMIO
	ExitIRQWindowOpen ExitReason = _KVM_EXIT_IRQ_WINDOW_OPEN
	ExitShutdown      ExitReason = _KVM_EXIT_SHUTDOWN
	ExitFailEntry     ExitReason = _KVM_EXIT_FAIL_ENTRY
	ExitIntr          ExitReason = _KVM_EXIT_INTR
	ExitSetTPR        ExitReason = _KVM_EXIT_SET_TPR
	ExitTPRAccess     ExitReason = _KVM_EXIT_TPR_ACCESS
	ExitNMI           ExitReason = _KVM_EXIT_NMI
	ExitInternalError ExitReason = _KVM_EXIT_INTERNAL_ERROR
	ExitWatchdog      ExitReason = _KVM_EXIT_WATCHDOG
	ExitEPR           ExitReason = _KVM_EXIT_EPR
	ExitSystemEvent   ExitReason = _KVM_EXIT_SYSTEM_EVENT
	ExitIOAPICEOI     ExitReason = _KVM_EXIT_IOAPIC_EOI
	ExitHyperV        ExitReason = _KVM_EXIT_HYPERV
	ExitX86RDMSR      ExitReason = _KVM_EXIT_X86_RDMSR
	ExitX86WRMSR      ExitReason = _KVM_EXIT_X86_WRMSR
	ExitDirtyRingFull ExitReason = _KVM_EXIT_DIRTY_RING_FULL
	ExitAPResetHold   ExitReason = _KVM_EXIT_AP_RESET_HOLD
	ExitX86BusLock    ExitReason = _KVM_EXIT_X86_BUS_LOCK
	ExitXen           ExitReason = _KVM_EXIT_XEN
	ExitNotify        ExitReason = _KVM_EXIT_NOTIFY
	ExitMemoryFault   ExitReason = _KVM_EXIT_MEMORY_FAULT
)

// String returns the kernel name of r, such as "KVM_EXIT_IO".
func (r ExitReason) String() string {
	switch r {
	case ExitUnknown:
		return "KVM_EXIT_UNKNOWN"
	case ExitException:
		return "KVM_EXIT_EXCEPTION"
	case ExitIO:
		return "KVM_EXIT_IO"
	case ExitHypercall:
		return "KVM_EXIT_HYPERCALL"
	case ExitDebug:
		return "KVM_EXIT_DEBUG"
	case ExitHLT:
		return "KVM_EXIT_HLT"
	case ExitMMIO:
		return "KVM_EXIT_MMIO"
	case ExitIRQWindowOpen:
		return "KVM_EXIT_IRQ_WINDOW_OPEN"
	case ExitShutdown:
		return "KVM_EXIT_SHUTDOWN"
	case ExitFailEntry:
		return "KVM_EXIT_FAIL_ENTRY"
	case ExitIntr:
		return "KVM_EXIT_INTR"
	case ExitSetTPR:
		return "KVM_EXIT_SET_TPR"
	case ExitTPRAccess:
		return "KVM_EXIT_TPR_ACCESS"
	case ExitNMI:
		return "KVM_EXIT_NMI"
	case ExitInternalError:
		return "KVM_EXIT_INTERNAL_ERROR"
	case ExitWatchdog:
		return "KVM_EXIT_WATCHDOG"
	case ExitEPR:
		return "KVM_EXIT_EPR"
	case ExitSystemEvent:
		return "KVM_EXIT_SYSTEM_EVENT"
	case ExitIOAPICEOI:
		return "KVM_EXIT_IOAPIC_EOI"
	case ExitHyperV:
		return "KVM_EXIT_HYPERV"
	case ExitX86RDMSR:
		return "KVM_EXIT_X86_RDMSR"
	case ExitX86WRMSR:
		return "KVM_EXIT_X86_WRMSR"
	case ExitDirtyRingFull:
		return "KVM_EXIT_DIRTY_RING_FULL"
	case ExitAPResetHold:
		return "KVM_EXIT_AP_RESET_HOLD"
	case ExitX86BusLock:
		return "KVM_EXIT_X86_BUS_LOCK"
	case ExitXen:
		return "KVM_EXIT_XEN"
	case ExitNotify:
		return "KVM_EXIT_NOTIFY"
	case ExitMemoryFault:
		return "KVM_EXIT_MEMORY_FAULT"
	}
	return "ExitReason(" + strconv.FormatUint(uint64(r), 10) + ")"
}

// System event types (kvm_run.system_event.type), returned by VCPU.SystemEvent.
const (
	SystemEventShutdown uint32 = _KVM_SYSTEM_EVENT_SHUTDOWN
	SystemEventReset    uint32 = _KVM_SYSTEM_EVENT_RESET
	SystemEventCrash    uint32 = _KVM_SYSTEM_EVENT_CRASH
	SystemEventWakeup   uint32 = _KVM_SYSTEM_EVENT_WAKEUP
	SystemEventSuspend  uint32 = _KVM_SYSTEM_EVENT_SUSPEND
	SystemEventSEVTerm  uint32 = _KVM_SYSTEM_EVENT_SEV_TERM
)

// Internal error suberrors (kvm_run.internal.suberror), returned by
// VCPU.InternalError.
const (
	InternalErrorEmulation            uint32 = _KVM_INTERNAL_ERROR_EMULATION
	InternalErrorSimulEx              uint32 = _KVM_INTERNAL_ERROR_SIMUL_EX
	InternalErrorDeliveryEv           uint32 = _KVM_INTERNAL_ERROR_DELIVERY_EV
	InternalErrorUnexpectedExitReason uint32 = _KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON
)
