package x86

import (
	"math/bits"

	"github.com/huskvm/husk/internal/kvm"
)

// CPUID bits the VMM adjusts.
const (
	cpuidVMX         = 1 << 5  // leaf 1 ECX
	cpuidTSCDeadline = 1 << 24 // leaf 1 ECX
	cpuidHypervisor  = 1 << 31 // leaf 1 ECX
	cpuidHTT         = 1 << 28 // leaf 1 EDX
	cpuidSVM         = 1 << 2  // leaf 0x80000001 ECX
	cpuidCmpLegacy   = 1 << 1  // leaf 0x80000001 ECX
	cpuidTopoExt     = 1 << 22 // leaf 0x80000001 ECX

	leafSMTLevel  = 1 // level type in ECX[15:8] of leaves 0xB / 0x1F
	leafCoreLevel = 2
)

// CPUIDOptions says how to shape the CPUID a vCPU sees.
type CPUIDOptions struct {
	// VCPUs is the VM's vCPU count; ID is this vCPU's index and APIC id.
	VCPUs, ID int
	// TSCDeadline reports that KVM emulates the TSC-deadline timer
	// (KVM_CAP_TSC_DEADLINE_TIMER); the bit is then advertised even if
	// KVM_GET_SUPPORTED_CPUID left it out.
	TSCDeadline bool
	// Nested keeps VMX/SVM visible to the guest.
	Nested bool
}

// FilterCPUID returns the CPUID for one vCPU, derived from the entries KVM
// supports: the hypervisor bit (without it the guest never looks for
// kvmclock), TSC-deadline, APIC ids and a topology of VCPUs cores in one
// package with one thread each, and nested virtualisation masked.
func FilterCPUID(supported []kvm.CPUIDEntry, o CPUIDOptions) []kvm.CPUIDEntry {
	out := make([]kvm.CPUIDEntry, 0, len(supported))
	apic := uint32(o.ID)
	n := uint32(max(o.VCPUs, 1))
	coreBits := uint32(bits.Len32(n - 1)) // bits of the APIC id that select the core
	for _, e := range supported {
		switch e.Function {
		case 1:
			e.ECX |= cpuidHypervisor
			if o.TSCDeadline {
				e.ECX |= cpuidTSCDeadline
			}
			if !o.Nested {
				e.ECX &^= cpuidVMX
			}
			e.EBX = apic<<24 | n<<16 | e.EBX&0xffff // initial APIC id, logical processor count, CLFLUSH/brand
			if n > 1 {
				e.EDX |= cpuidHTT
			} else {
				e.EDX &^= cpuidHTT
			}
		case 4:
			// Intel deterministic cache parameters: EAX[31:26] = cores per package - 1,
			// EAX[25:14] = threads sharing this cache - 1 (one thread per core).
			e.EAX = e.EAX&0x3fff | (n-1)<<26
		case 0xb, 0x1f:
			// Extended topology: subleaf 0 is the SMT level (one thread per
			// core), subleaf 1 the core level (n cores); EDX is the x2APIC id.
			switch e.Index {
			case 0:
				e.EAX, e.EBX, e.ECX = 0, 1, leafSMTLevel<<8
			case 1:
				e.EAX, e.EBX, e.ECX = coreBits, n, 1|leafCoreLevel<<8
			default:
				e.EAX, e.EBX, e.ECX = 0, 0, e.Index
			}
			e.EDX = apic
		case 0x80000001:
			if !o.Nested {
				e.ECX &^= cpuidSVM
			}
			if n > 1 {
				e.ECX |= cpuidCmpLegacy
			}
		case 0x80000008:
			// AMD: ECX[15:12] APIC id bits for cores, ECX[7:0] cores - 1.
			e.ECX = e.ECX&^0xf0ff | coreBits<<12 | (n - 1)
		case 0x8000001e:
			// AMD extended APIC id and core id (one thread per core).
			e.EAX = apic
			e.EBX = e.EBX&^0xffff | apic&0xff
			e.ECX = 0
		}
		out = append(out, e)
	}
	return out
}
