//go:build linux && amd64

package kvm

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// VCPU is a virtual CPU: its fd and its shared kvm_run mapping. One
// goroutine, locked to its OS thread, owns it. Only SetImmediateExit may be
// called from other goroutines (see the package documentation).
type VCPU struct {
	fd int
	id int
	// run is the kvm_run mapping (mmap of fd at offset 0). KVM_EXIT_IO data
	// is inside it at data_offset.
	run []byte
	// runData is run viewed as struct kvm_run.
	runData *runData
}

// ID returns the vCPU id given to CreateVCPU.
func (c *VCPU) ID() int { return c.id }

// Close unmaps kvm_run and closes the vCPU fd. Closing twice returns nil.
//
// Preconditions: no other goroutine uses c, including SetImmediateExit.
func (c *VCPU) Close() error {
	var errs []error
	if c.run != nil {
		if err := unix.Munmap(c.run); err != nil {
			errs = append(errs, fmt.Errorf("munmap kvm_run of vcpu %d: %w", c.id, err))
		}
		c.run, c.runData = nil, nil
	}
	if err := closeFd(&c.fd); err != nil {
		errs = append(errs, fmt.Errorf("close vcpu %d: %w", c.id, err))
	}
	return errors.Join(errs...)
}

// Run enters the guest once (KVM_RUN) and returns when the vCPU exits to
// userspace; ExitReason then says why. It returns unix.EINTR when a signal
// or immediate_exit interrupted it, and any other errno as is. After EINTR,
// ExitReason is not meaningful: it was ExitIntr after a signal and
// ExitUnknown after immediate_exit on the dev machines. Run does not retry,
// so that a kick reaches the caller; the caller calls Run again to resume
// the guest. Stray EINTRs happen in Go programs, so the vCPU loop must
// tolerate them. Run does not allocate.
func (c *VCPU) Run() error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(c.fd), _KVM_RUN, 0)
	if e != 0 {
		return e
	}
	return nil
}

// ExitReason returns kvm_run.exit_reason of the last Run.
func (c *VCPU) ExitReason() ExitReason { return ExitReason(c.runData.exitReason) }

// SetImmediateExit sets kvm_run.immediate_exit. While it is set, KVM_RUN
// returns EINTR at once, without entering the guest. It is the one VCPU
// method that other goroutines may call, to kick the vCPU. The store is
// atomic (see storeImmediateExit). The vCPU loop clears it after the kick.
func (c *VCPU) SetImmediateExit(on bool) {
	var v uint8
	if on {
		v = 1
	}
	storeImmediateExit(c.runData, v)
}

// IO describes the KVM_EXIT_IO of the last Run: the port, the direction, and
// the data inside the kvm_run mapping (size*count bytes at data_offset).
// For an OUT, data holds what the guest wrote. For an IN, the caller fills
// data before the next Run. data is nil if the kernel's offset and length do
// not fit in the mapping. Its capacity is its length. It does not allocate.
//
// Preconditions: ExitReason() == ExitIO.
func (c *VCPU) IO() (port uint16, write bool, data []byte) {
	io := exitAs[runIO](c.runData)
	port, write = io.port, io.direction == _KVM_EXIT_IO_OUT
	n := uint64(io.size) * uint64(io.count) // at most 255 * (2^32-1): no overflow
	off := io.dataOffset
	if size := uint64(len(c.run)); off > size || n > size-off {
		return port, write, nil
	}
	return port, write, c.run[off : off+n : off+n]
}

// IOAccess returns the access size in bytes and the repeat count of the
// KVM_EXIT_IO of the last Run. count is above 1 only for string I/O
// (INS/OUTS), where IO's data holds count accesses of size bytes.
//
// Preconditions: ExitReason() == ExitIO.
func (c *VCPU) IOAccess() (size uint8, count uint32) {
	io := exitAs[runIO](c.runData)
	return io.size, io.count
}

// MMIO describes the KVM_EXIT_MMIO of the last Run: the guest-physical
// address, the direction and the data (kvm_run.mmio.data[:len], with len
// capped at 8). For a write, data holds what the guest wrote. For a read, the
// caller fills data before the next Run. It does not allocate.
//
// Preconditions: ExitReason() == ExitMMIO.
func (c *VCPU) MMIO() (addr uint64, write bool, data []byte) {
	m := exitAs[runMMIO](c.runData)
	n := min(m.len, uint32(len(m.data)))
	return m.physAddr, m.isWrite != 0, m.data[:n:n]
}

// SystemEvent returns kvm_run.system_event.type (SystemEventShutdown, ...).
//
// Preconditions: ExitReason() == ExitSystemEvent.
func (c *VCPU) SystemEvent() (typ uint32) {
	return exitAs[runSystemEvent](c.runData).typ
}

// FailEntry returns kvm_run.fail_entry.hardware_entry_failure_reason (on
// Intel, the VM-entry failure exit reason).
//
// Preconditions: ExitReason() == ExitFailEntry.
func (c *VCPU) FailEntry() (hardwareReason uint64) {
	return exitAs[runFailEntry](c.runData).hardwareEntryFailureReason
}

// InternalError returns kvm_run.internal.suberror (InternalErrorEmulation, ...).
//
// Preconditions: ExitReason() == ExitInternalError.
func (c *VCPU) InternalError() (suberror uint32) {
	return exitAs[runInternal](c.runData).suberror
}

// InternalErrorData returns the extra words of a KVM_EXIT_INTERNAL_ERROR
// (kvm_run.internal.data[:ndata], ndata capped at 16), for diagnostics.
//
// Preconditions: ExitReason() == ExitInternalError.
func (c *VCPU) InternalErrorData() []uint64 {
	in := exitAs[runInternal](c.runData)
	n := min(in.ndata, uint32(len(in.data)))
	return append([]uint64(nil), in.data[:n]...)
}

// Regs returns the general-purpose registers (KVM_GET_REGS).
func (c *VCPU) Regs() (Regs, error) {
	var r Regs
	if _, err := ioctlPtr(c.fd, _KVM_GET_REGS, &r); err != nil {
		return Regs{}, fmt.Errorf("KVM_GET_REGS vcpu %d: %w", c.id, err)
	}
	return r, nil
}

// SetRegs sets the general-purpose registers (KVM_SET_REGS).
func (c *VCPU) SetRegs(r *Regs) error {
	if _, err := ioctlPtr(c.fd, _KVM_SET_REGS, r); err != nil {
		return fmt.Errorf("KVM_SET_REGS vcpu %d: %w", c.id, err)
	}
	return nil
}

// Sregs returns the segment, descriptor-table and control registers
// (KVM_GET_SREGS).
func (c *VCPU) Sregs() (Sregs, error) {
	var s Sregs
	if _, err := ioctlPtr(c.fd, _KVM_GET_SREGS, &s); err != nil {
		return Sregs{}, fmt.Errorf("KVM_GET_SREGS vcpu %d: %w", c.id, err)
	}
	return s, nil
}

// SetSregs sets the segment, descriptor-table and control registers
// (KVM_SET_SREGS).
func (c *VCPU) SetSregs(s *Sregs) error {
	if _, err := ioctlPtr(c.fd, _KVM_SET_SREGS, s); err != nil {
		return fmt.Errorf("KVM_SET_SREGS vcpu %d: %w", c.id, err)
	}
	return nil
}

// FPU returns the x87/SSE state (KVM_GET_FPU).
func (c *VCPU) FPU() (FPU, error) {
	var f FPU
	if _, err := ioctlPtr(c.fd, _KVM_GET_FPU, &f); err != nil {
		return FPU{}, fmt.Errorf("KVM_GET_FPU vcpu %d: %w", c.id, err)
	}
	return f, nil
}

// SetFPU sets the x87/SSE state (KVM_SET_FPU).
func (c *VCPU) SetFPU(f *FPU) error {
	if _, err := ioctlPtr(c.fd, _KVM_SET_FPU, f); err != nil {
		return fmt.Errorf("KVM_SET_FPU vcpu %d: %w", c.id, err)
	}
	return nil
}

// SetCPUID2 sets the CPUID leaves the guest sees (KVM_SET_CPUID2), usually a
// filtered copy of System.SupportedCPUID.
func (c *VCPU) SetCPUID2(entries []CPUIDEntry) error {
	if len(entries) > maxCPUIDEntries {
		return fmt.Errorf("KVM_SET_CPUID2 vcpu %d: %d entries, at most %d: %w", c.id, len(entries), maxCPUIDEntries, unix.E2BIG)
	}
	buf, hdr, ents := cpuid2Buf(len(entries))
	hdr.nent = uint32(len(entries))
	copy(ents, entries)
	if _, err := ioctlFlex(c.fd, _KVM_SET_CPUID2, buf); err != nil {
		return fmt.Errorf("KVM_SET_CPUID2 vcpu %d nent %d: %w", c.id, len(entries), err)
	}
	return nil
}

// MSRError reports a KVM_SET_MSRS or KVM_GET_MSRS that processed only Done
// of its Want entries. Index is the first MSR that KVM rejected.
type MSRError struct {
	Op         string // "KVM_SET_MSRS" or "KVM_GET_MSRS"
	VCPU       int
	Done, Want int
	Index      uint32
}

func (e *MSRError) Error() string {
	return fmt.Sprintf("%s vcpu %d: %d of %d msrs done, msr %#x rejected", e.Op, e.VCPU, e.Done, e.Want, e.Index)
}

// maxMSREntries caps the kvm_msrs buffers this package builds. The kernel
// allows fewer (MAX_IO_MSRS, 256).
const maxMSREntries = 1024

// SetMSRs writes the model-specific registers in entries (KVM_SET_MSRS). If
// KVM accepts fewer than len(entries), it returns an *MSRError naming the
// first rejected MSR. The ones before it were set.
func (c *VCPU) SetMSRs(entries []MSREntry) error {
	return c.msrs("KVM_SET_MSRS", _KVM_SET_MSRS, entries)
}

// MSRs reads the model-specific registers named by entries[i].Index into
// entries[i].Data (KVM_GET_MSRS). If KVM reads fewer than len(entries), it
// returns an *MSRError. The Data of the ones before the rejected one is
// filled in.
func (c *VCPU) MSRs(entries []MSREntry) error {
	return c.msrs("KVM_GET_MSRS", _KVM_GET_MSRS, entries)
}

func (c *VCPU) msrs(op string, req uintptr, entries []MSREntry) error {
	if len(entries) > maxMSREntries {
		return fmt.Errorf("%s vcpu %d: %d entries, at most %d: %w", op, c.id, len(entries), maxMSREntries, unix.E2BIG)
	}
	buf, hdr, ents := msrsBuf(len(entries))
	hdr.nmsrs = uint32(len(entries))
	copy(ents, entries)
	n, err := ioctlFlex(c.fd, req, buf)
	if err != nil {
		return fmt.Errorf("%s vcpu %d nmsrs %d: %w", op, c.id, len(entries), err)
	}
	done := min(int(n), len(entries))
	if req == _KVM_GET_MSRS {
		for i := range done {
			entries[i].Data = ents[i].Data
		}
	}
	if done < len(entries) {
		return &MSRError{Op: op, VCPU: c.id, Done: done, Want: len(entries), Index: entries[done].Index}
	}
	return nil
}

// MPState returns the vCPU's multiprocessing state (KVM_GET_MP_STATE), one of
// the MPState* constants.
func (c *VCPU) MPState() (uint32, error) {
	var s mpState
	if _, err := ioctlPtr(c.fd, _KVM_GET_MP_STATE, &s); err != nil {
		return 0, fmt.Errorf("KVM_GET_MP_STATE vcpu %d: %w", c.id, err)
	}
	return s.mpState, nil
}

// SetMPState sets the vCPU's multiprocessing state (KVM_SET_MP_STATE).
func (c *VCPU) SetMPState(state uint32) error {
	s := mpState{mpState: state}
	if _, err := ioctlPtr(c.fd, _KVM_SET_MP_STATE, &s); err != nil {
		return fmt.Errorf("KVM_SET_MP_STATE vcpu %d state %d: %w", c.id, state, err)
	}
	return nil
}

// LAPIC returns the in-kernel local APIC's register page (KVM_GET_LAPIC).
//
// Preconditions: the VM has an in-kernel irqchip.
func (c *VCPU) LAPIC() (LAPICState, error) {
	var s LAPICState
	if _, err := ioctlPtr(c.fd, _KVM_GET_LAPIC, &s); err != nil {
		return LAPICState{}, fmt.Errorf("KVM_GET_LAPIC vcpu %d: %w", c.id, err)
	}
	return s, nil
}

// SetLAPIC sets the in-kernel local APIC's register page (KVM_SET_LAPIC).
//
// Preconditions: the VM has an in-kernel irqchip.
func (c *VCPU) SetLAPIC(s *LAPICState) error {
	if _, err := ioctlPtr(c.fd, _KVM_SET_LAPIC, s); err != nil {
		return fmt.Errorf("KVM_SET_LAPIC vcpu %d: %w", c.id, err)
	}
	return nil
}

// TSCKHz returns the guest TSC frequency in kHz (KVM_GET_TSC_KHZ,
// CapGetTSCKHz).
func (c *VCPU) TSCKHz() (uint32, error) {
	r, err := ioctlInt(c.fd, _KVM_GET_TSC_KHZ, 0)
	if err != nil {
		return 0, fmt.Errorf("KVM_GET_TSC_KHZ vcpu %d: %w", c.id, err)
	}
	return uint32(r), nil
}

// SetTSCKHz sets the guest TSC frequency in kHz (KVM_SET_TSC_KHZ,
// CapTSCControl), e.g. to keep it stable across a snapshot restore on
// another host.
func (c *VCPU) SetTSCKHz(khz uint32) error {
	if _, err := ioctlInt(c.fd, _KVM_SET_TSC_KHZ, uintptr(khz)); err != nil {
		return fmt.Errorf("KVM_SET_TSC_KHZ vcpu %d khz %d: %w", c.id, khz, err)
	}
	return nil
}
