//go:build linux

package kvm

// ABI mirrors of the kernel structs that cross the ioctl boundary. Field order,
// widths and explicit padding follow the kernel headers exactly.
// abi_unsafe_test.go checks every size and the kvm_run offsets against the
// kernel's sizeof/offsetof.

// Regs mirrors struct kvm_regs (arch/x86/include/uapi/asm/kvm.h).
type Regs struct {
	RAX, RBX, RCX, RDX uint64
	RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11   uint64
	R12, R13, R14, R15 uint64
	RIP, RFLAGS        uint64
}

// Segment mirrors struct kvm_segment: a segment register with its hidden
// descriptor cache.
type Segment struct {
	Base     uint64
	Limit    uint32
	Selector uint16
	Type     uint8
	Present  uint8
	DPL      uint8
	DB       uint8
	S        uint8
	L        uint8
	G        uint8
	AVL      uint8
	Unusable uint8
	_        uint8 // padding
}

// DTable mirrors struct kvm_dtable: the GDTR or IDTR.
type DTable struct {
	Base  uint64
	Limit uint16
	_     [3]uint16 // padding
}

// Sregs mirrors struct kvm_sregs.
type Sregs struct {
	CS, DS, ES, FS, GS, SS Segment
	TR, LDT                Segment
	GDT, IDT               DTable
	CR0, CR2, CR3, CR4     uint64
	CR8                    uint64
	EFER                   uint64
	APICBase               uint64
	// InterruptBitmap has one bit per pending external interrupt vector.
	InterruptBitmap [(_KVM_NR_INTERRUPTS + 63) / 64]uint64
}

// FPU mirrors struct kvm_fpu: the legacy x87/SSE state (the FXSAVE image).
type FPU struct {
	FPR        [8][16]uint8
	FCW        uint16
	FSW        uint16
	FTWX       uint8 // abridged tag word, as in FXSAVE
	_          uint8 // pad1
	LastOpcode uint16
	LastIP     uint64
	LastDP     uint64
	XMM        [16][16]uint8
	MXCSR      uint32
	_          uint32 // pad2
}

// CPUIDEntry mirrors struct kvm_cpuid_entry2.
type CPUIDEntry struct {
	Function uint32
	Index    uint32
	Flags    uint32 // CPUIDFlag*
	EAX      uint32
	EBX      uint32
	ECX      uint32
	EDX      uint32
	_        [3]uint32 // padding
}

// CPUIDEntry.Flags bits.
const (
	// CPUIDFlagSignificantIndex marks a leaf whose output depends on Index (ECX).
	CPUIDFlagSignificantIndex uint32 = _KVM_CPUID_FLAG_SIGNIFCANT_INDEX
	CPUIDFlagStatefulFunc     uint32 = _KVM_CPUID_FLAG_STATEFUL_FUNC
	CPUIDFlagStateReadNext    uint32 = _KVM_CPUID_FLAG_STATE_READ_NEXT
)

// cpuid2Header mirrors struct kvm_cpuid2 without its flexible array member
// (struct kvm_cpuid_entry2 entries[]).
type cpuid2Header struct {
	nent    uint32
	padding uint32
}

// MSREntry mirrors struct kvm_msr_entry.
type MSREntry struct {
	Index uint32
	_     uint32 // reserved
	Data  uint64
}

// msrsHeader mirrors struct kvm_msrs without its flexible array member
// (struct kvm_msr_entry entries[]).
type msrsHeader struct {
	nmsrs uint32
	pad   uint32
}

// UserspaceMemoryRegion mirrors struct kvm_userspace_memory_region.
type UserspaceMemoryRegion struct {
	Slot          uint32
	Flags         uint32 // MemLogDirtyPages, MemReadonly
	GuestPhysAddr uint64
	MemorySize    uint64 // bytes; 0 deletes the slot
	UserspaceAddr uint64 // start of the host mapping backing the slot
}

// UserspaceMemoryRegion.Flags bits.
const (
	MemLogDirtyPages uint32 = _KVM_MEM_LOG_DIRTY_PAGES
	MemReadonly      uint32 = _KVM_MEM_READONLY
)

// LAPICRegSize is the size of the local APIC register page in LAPICState.
const LAPICRegSize = _KVM_APIC_REG_SIZE

// LAPICState mirrors struct kvm_lapic_state: the local APIC register page,
// with each 32-bit register at its xAPIC MMIO offset (Intel SDM Vol. 3
// "Local APIC Register Address Map").
type LAPICState struct {
	Regs [LAPICRegSize]byte
}

// Get32 returns the 32-bit APIC register at byte offset off (e.g. 0x350 for
// LVT LINT0). It returns 0 if off is out of range.
func (s *LAPICState) Get32(off int) uint32 {
	if off < 0 || off > len(s.Regs)-4 {
		return 0
	}
	b := s.Regs[off : off+4]
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

// Set32 sets the 32-bit APIC register at byte offset off. It does nothing if
// off is out of range.
func (s *LAPICState) Set32(off int, v uint32) {
	if off < 0 || off > len(s.Regs)-4 {
		return
	}
	b := s.Regs[off : off+4]
	b[0], b[1], b[2], b[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
}

// MP states (kvm_mp_state.mp_state), for VCPU.MPState and VCPU.SetMPState.
const (
	MPStateRunnable      uint32 = _KVM_MP_STATE_RUNNABLE
	MPStateUninitialized uint32 = _KVM_MP_STATE_UNINITIALIZED
	MPStateInitReceived  uint32 = _KVM_MP_STATE_INIT_RECEIVED
	MPStateHalted        uint32 = _KVM_MP_STATE_HALTED
	MPStateSIPIReceived  uint32 = _KVM_MP_STATE_SIPI_RECEIVED
	MPStateStopped       uint32 = _KVM_MP_STATE_STOPPED
	MPStateCheckStop     uint32 = _KVM_MP_STATE_CHECK_STOP
	MPStateOperating     uint32 = _KVM_MP_STATE_OPERATING
	MPStateLoad          uint32 = _KVM_MP_STATE_LOAD
	MPStateAPResetHold   uint32 = _KVM_MP_STATE_AP_RESET_HOLD
	MPStateSuspended     uint32 = _KVM_MP_STATE_SUSPENDED
)

// mpState mirrors struct kvm_mp_state.
type mpState struct {
	mpState uint32
}

// irqLevel mirrors struct kvm_irq_level. The first field is a union of
// __u32 irq (in) and __s32 status (out, for KVM_IRQ_LINE_STATUS only).
type irqLevel struct {
	irq   uint32
	level uint32
}

// PITSpeakerDummy is the kvm_pit_config flag that makes the in-kernel PIT
// emulate a dummy PC speaker on port 0x61.
const PITSpeakerDummy uint32 = _KVM_PIT_SPEAKER_DUMMY

// pitConfig mirrors struct kvm_pit_config.
type pitConfig struct {
	flags uint32
	pad   [15]uint32
}

// irqfd mirrors struct kvm_irqfd.
type irqfd struct {
	fd         uint32
	gsi        uint32
	flags      uint32
	resamplefd uint32
	pad        [16]uint8
}

// ioeventfd mirrors struct kvm_ioeventfd.
type ioeventfd struct {
	datamatch uint64
	addr      uint64 // a legal PIO or MMIO address
	len       uint32 // 1, 2, 4 or 8 bytes; 0 matches any length (CapIOEventFDAnyLength)
	fd        int32
	flags     uint32
	pad       [36]uint8
}

// runData mirrors the part of struct kvm_run that this package uses: the
// header, the 256-byte exit union and the sync-register masks. The kernel's
// struct ends with a 2048-byte union s (sync registers), which is not mirrored.
// The I/O data that KVM_EXIT_IO's data_offset points at lies beyond it, in
// the same mapping.
//
//	offset  field
//	     0  request_interrupt_window  u8    in
//	     1  immediate_exit            u8    in (named immediate_exit__unsafe since Linux 6.12; same ABI)
//	     2  padding1                  [6]u8
//	     8  exit_reason               u32   out
//	    12  ready_for_interrupt_injection u8, if_flag u8, flags u16
//	    16  cr8, apic_base            u64 each
//	    32  exit union                [256]u8 (runIO, runMMIO, ...)
//	   288  kvm_valid_regs, kvm_dirty_regs  u64 each
//	   304  s                         [2048]u8 (not mirrored)
type runData struct {
	requestInterruptWindow     uint8
	immediateExit              uint8
	padding1                   [6]uint8
	exitReason                 uint32
	readyForInterruptInjection uint8
	ifFlag                     uint8
	flags                      uint16
	cr8                        uint64
	apicBase                   uint64
	exit                       [_KVM_RUN_EXIT_UNION]byte
	kvmValidRegs               uint64
	kvmDirtyRegs               uint64
}

// minRunSize is the smallest kvm_run mapping this package accepts: the
// mirrored header plus the sync-register union.
const minRunSize = 304 + _SYNC_REGS_SIZE

// Views of kvm_run's exit union, one per exit reason read by this package.

// runIO mirrors kvm_run.io (KVM_EXIT_IO).
type runIO struct {
	direction  uint8 // _KVM_EXIT_IO_IN or _KVM_EXIT_IO_OUT
	size       uint8 // bytes per access
	port       uint16
	count      uint32 // accesses (more than 1 for string I/O)
	dataOffset uint64 // of the data, from the start of kvm_run
}

// runMMIO mirrors kvm_run.mmio (KVM_EXIT_MMIO).
type runMMIO struct {
	physAddr uint64
	data     [8]uint8
	len      uint32
	isWrite  uint8
	_        [3]uint8 // tail padding the C struct also has
}

// runFailEntry mirrors kvm_run.fail_entry (KVM_EXIT_FAIL_ENTRY).
type runFailEntry struct {
	hardwareEntryFailureReason uint64
	cpu                        uint32
	_                          uint32
}

// runInternal mirrors kvm_run.internal (KVM_EXIT_INTERNAL_ERROR).
type runInternal struct {
	suberror uint32
	ndata    uint32
	data     [16]uint64
}

// runSystemEvent mirrors kvm_run.system_event (KVM_EXIT_SYSTEM_EVENT). In the
// kernel, data is a union with __u64 flags (the pre-5.18 layout), so flags is
// data[0].
type runSystemEvent struct {
	typ   uint32
	ndata uint32
	data  [16]uint64
}
