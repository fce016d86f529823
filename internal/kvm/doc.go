// Package kvm is a thin, typed binding of the Linux KVM ioctl API for x86-64.
//
// It mirrors the kernel ABI (include/uapi/linux/kvm.h and
// arch/x86/include/uapi/asm/kvm.h; semantics in Documentation/virt/kvm/api.rst)
// as a chain of handles, each owning one file descriptor:
//
//	System (/dev/kvm) --CreateVM--> VM (VM fd) --CreateVCPU--> VCPU (vCPU fd + kvm_run mapping)
//
// Each ioctl is one small method; request numbers are derived from the
// argument's Go type (see ioc.go) and checked against the kernel's values in
// tests. The package holds no VM policy: memory layout, CPUID filtering, boot
// state and exit dispatch belong to the callers.
//
// # Threading contract
//
// System and VM methods may be called from any goroutine. KVM serialises VM
// ioctls internally.
//
// A VCPU is owned by one goroutine, its vCPU loop, which should call
// runtime.LockOSThread before CreateVCPU and keep the thread locked for the
// life of the vCPU. There are three reasons:
//
//   - api.rst asks that vCPU ioctls come from the thread that created the
//     vCPU. On x86 KVM only needs them one at a time (vcpu->mutex), but
//     KVM_RUN from a new thread makes the kernel switch the vCPU's pid, which
//     costs a synchronize_rcu().
//   - A kick interrupts KVM_RUN with a signal sent to a thread id (tgkill), so
//     the thread that runs the vCPU must not change.
//   - Signal masks are per thread.
//
// Only the owning goroutine may call Run, the exit accessors (ExitReason, IO,
// MMIO, ...) and the register and state methods. The exit accessors read
// and write the shared kvm_run page with no locking. They are valid only
// between the return of one Run and the start of the next.
//
// The one exception is SetImmediateExit, which any goroutine may call. Together
// with a signal to the vCPU thread it makes a race-free kick:
//
//	vcpu.SetImmediateExit(true)           // seen by a KVM_RUN that has not entered the guest yet
//	unix.Tgkill(pid, tid, unix.SIGURG)    // interrupts a KVM_RUN that is already in the guest
//
// Run then returns unix.EINTR. The vCPU loop clears immediate_exit with
// SetImmediateExit(false), handles the request and calls Run again. Go's
// runtime already has a SIGURG handler (for goroutine preemption) installed
// with SA_RESTART. KVM_RUN returns -EINTR rather than -ERESTARTSYS, so the
// signal is not restarted away. A spurious SIGURG from the runtime can
// therefore also end a Run with EINTR, and callers retry Run on EINTR.
//
// Close of a VCPU unmaps kvm_run. The caller must ensure no goroutine calls
// SetImmediateExit, or any other method, during or after Close.
package kvm
