//go:build linux && amd64

package kvm

import "strconv"

// Cap is a KVM capability, the argument of KVM_CHECK_EXTENSION.
type Cap int

// Capabilities (KVM_CAP_*) that an x86 VMM may check.
const (
	CapIRQChip            Cap = _KVM_CAP_IRQCHIP
	CapHLT                Cap = _KVM_CAP_HLT
	CapUserMemory         Cap = _KVM_CAP_USER_MEMORY
	CapSetTSSAddr         Cap = _KVM_CAP_SET_TSS_ADDR
	CapExtCPUID           Cap = _KVM_CAP_EXT_CPUID
	CapNrVCPUs            Cap = _KVM_CAP_NR_VCPUS // recommended maximum vCPUs per VM
	CapNrMemslots         Cap = _KVM_CAP_NR_MEMSLOTS
	CapPIT                Cap = _KVM_CAP_PIT
	CapMPState            Cap = _KVM_CAP_MP_STATE
	CapCoalescedMMIO      Cap = _KVM_CAP_COALESCED_MMIO
	CapSyncMMU            Cap = _KVM_CAP_SYNC_MMU
	CapUserNMI            Cap = _KVM_CAP_USER_NMI
	CapIRQRouting         Cap = _KVM_CAP_IRQ_ROUTING
	CapIRQInjectStatus    Cap = _KVM_CAP_IRQ_INJECT_STATUS
	CapIRQFD              Cap = _KVM_CAP_IRQFD
	CapPIT2               Cap = _KVM_CAP_PIT2
	CapPITState2          Cap = _KVM_CAP_PIT_STATE2
	CapIOEventFD          Cap = _KVM_CAP_IOEVENTFD
	CapSetIdentityMapAddr Cap = _KVM_CAP_SET_IDENTITY_MAP_ADDR
	CapAdjustClock        Cap = _KVM_CAP_ADJUST_CLOCK
	CapInternalErrorData  Cap = _KVM_CAP_INTERNAL_ERROR_DATA
	CapVCPUEvents         Cap = _KVM_CAP_VCPU_EVENTS
	CapDebugRegs          Cap = _KVM_CAP_DEBUGREGS
	CapXSave              Cap = _KVM_CAP_XSAVE
	CapXCRs               Cap = _KVM_CAP_XCRS
	CapTSCControl         Cap = _KVM_CAP_TSC_CONTROL
	CapGetTSCKHz          Cap = _KVM_CAP_GET_TSC_KHZ
	CapMaxVCPUs           Cap = _KVM_CAP_MAX_VCPUS // hard maximum vCPUs per VM
	CapTSCDeadlineTimer   Cap = _KVM_CAP_TSC_DEADLINE_TIMER
	CapKVMClockCtrl       Cap = _KVM_CAP_KVMCLOCK_CTRL
	CapSignalMSI          Cap = _KVM_CAP_SIGNAL_MSI
	CapReadonlyMem        Cap = _KVM_CAP_READONLY_MEM
	CapIRQFDResample      Cap = _KVM_CAP_IRQFD_RESAMPLE
	CapIOEventFDNoLength  Cap = _KVM_CAP_IOEVENTFD_NO_LENGTH
	CapSplitIRQChip       Cap = _KVM_CAP_SPLIT_IRQCHIP
	CapIOEventFDAnyLength Cap = _KVM_CAP_IOEVENTFD_ANY_LENGTH
	CapMaxVCPUID          Cap = _KVM_CAP_MAX_VCPU_ID
	CapX2APICAPI          Cap = _KVM_CAP_X2APIC_API
	CapImmediateExit      Cap = _KVM_CAP_IMMEDIATE_EXIT
	CapX86DisableExits    Cap = _KVM_CAP_X86_DISABLE_EXITS
	CapGetMSRFeatures     Cap = _KVM_CAP_GET_MSR_FEATURES
)

var capNames = map[Cap]string{
	CapIRQChip:            "KVM_CAP_IRQCHIP",
	CapHLT:                "KVM_CAP_HLT",
	CapUserMemory:         "KVM_CAP_USER_MEMORY",
	CapSetTSSAddr:         "KVM_CAP_SET_TSS_ADDR",
	CapExtCPUID:           "KVM_CAP_EXT_CPUID",
	CapNrVCPUs:            "KVM_CAP_NR_VCPUS",
	CapNrMemslots:         "KVM_CAP_NR_MEMSLOTS",
	CapPIT:                "KVM_CAP_PIT",
	CapMPState:            "KVM_CAP_MP_STATE",
	CapCoalescedMMIO:      "KVM_CAP_COALESCED_MMIO",
	CapSyncMMU:            "KVM_CAP_SYNC_MMU",
	CapUserNMI:            "KVM_CAP_USER_NMI",
	CapIRQRouting:         "KVM_CAP_IRQ_ROUTING",
	CapIRQInjectStatus:    "KVM_CAP_IRQ_INJECT_STATUS",
	CapIRQFD:              "KVM_CAP_IRQFD",
	CapPIT2:               "KVM_CAP_PIT2",
	CapPITState2:          "KVM_CAP_PIT_STATE2",
	CapIOEventFD:          "KVM_CAP_IOEVENTFD",
	CapSetIdentityMapAddr: "KVM_CAP_SET_IDENTITY_MAP_ADDR",
	CapAdjustClock:        "KVM_CAP_ADJUST_CLOCK",
	CapInternalErrorData:  "KVM_CAP_INTERNAL_ERROR_DATA",
	CapVCPUEvents:         "KVM_CAP_VCPU_EVENTS",
	CapDebugRegs:          "KVM_CAP_DEBUGREGS",
	CapXSave:              "KVM_CAP_XSAVE",
	CapXCRs:               "KVM_CAP_XCRS",
	CapTSCControl:         "KVM_CAP_TSC_CONTROL",
	CapGetTSCKHz:          "KVM_CAP_GET_TSC_KHZ",
	CapMaxVCPUs:           "KVM_CAP_MAX_VCPUS",
	CapTSCDeadlineTimer:   "KVM_CAP_TSC_DEADLINE_TIMER",
	CapKVMClockCtrl:       "KVM_CAP_KVMCLOCK_CTRL",
	CapSignalMSI:          "KVM_CAP_SIGNAL_MSI",
	CapReadonlyMem:        "KVM_CAP_READONLY_MEM",
	CapIRQFDResample:      "KVM_CAP_IRQFD_RESAMPLE",
	CapIOEventFDNoLength:  "KVM_CAP_IOEVENTFD_NO_LENGTH",
	CapSplitIRQChip:       "KVM_CAP_SPLIT_IRQCHIP",
	CapIOEventFDAnyLength: "KVM_CAP_IOEVENTFD_ANY_LENGTH",
	CapMaxVCPUID:          "KVM_CAP_MAX_VCPU_ID",
	CapX2APICAPI:          "KVM_CAP_X2APIC_API",
	CapImmediateExit:      "KVM_CAP_IMMEDIATE_EXIT",
	CapX86DisableExits:    "KVM_CAP_X86_DISABLE_EXITS",
	CapGetMSRFeatures:     "KVM_CAP_GET_MSR_FEATURES",
}

// String returns the kernel name of c, such as "KVM_CAP_IRQCHIP".
func (c Cap) String() string {
	if s, ok := capNames[c]; ok {
		return s
	}
	return "Cap(" + strconv.Itoa(int(c)) + ")"
}
