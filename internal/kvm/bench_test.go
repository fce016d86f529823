//go:build linux && amd64

package kvm

import (
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// benchVCPU returns a vCPU of a fresh VM that runs code at codeAddr forever,
// on the calling goroutine's locked thread.
func benchVCPU(b *testing.B, code []byte) *VCPU {
	b.Helper()
	v := newTestVM(b, false)
	v.load(codeAddr, code)
	return v.newVCPU(0, codeAddr)
}

// BenchmarkPIOExit measures one round trip of a guest OUT through userspace:
// KVM_RUN, the exit, and reading the exit with IO.
func BenchmarkPIOExit(b *testing.B) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c := benchVCPU(b, []byte{
		0xE6, 0x10, // 1: out 0x10, al
		0xEB, 0xFC, // jmp 1b
	})
	b.ReportAllocs()
	eintr := 0
	for b.Loop() {
		if err := c.Run(); err == unix.EINTR {
			eintr++ // a stray signal; the next Run resumes the guest
			continue
		} else if err != nil {
			b.Fatal(err)
		}
		if c.ExitReason() != ExitIO {
			b.Fatalf("exit %s", describeExit(c))
		}
		if port, _, data := c.IO(); port != 0x10 || len(data) != 1 {
			b.Fatalf("exit %s", describeExit(c))
		}
	}
	b.ReportMetric(float64(eintr)/float64(b.N), "eintr/op")
}

// BenchmarkRunHLT measures one KVM_RUN that ends in a HLT exit.
func BenchmarkRunHLT(b *testing.B) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c := benchVCPU(b, []byte{
		0xF4,       // 1: hlt
		0xEB, 0xFD, // jmp 1b
	})
	b.ReportAllocs()
	eintr := 0
	for b.Loop() {
		if err := c.Run(); err == unix.EINTR {
			eintr++
			continue
		} else if err != nil {
			b.Fatal(err)
		}
		if c.ExitReason() != ExitHLT {
			b.Fatalf("exit %s", describeExit(c))
		}
	}
	b.ReportMetric(float64(eintr)/float64(b.N), "eintr/op")
}

// BenchmarkImmediateExit measures a KVM_RUN that returns EINTR at once
// because immediate_exit is set: the floor of a kicked Run.
func BenchmarkImmediateExit(b *testing.B) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c := benchVCPU(b, []byte{0xEB, 0xFE}) // jmp $
	c.SetImmediateExit(true)
	b.ReportAllocs()
	for b.Loop() {
		if err := c.Run(); err != unix.EINTR {
			b.Fatalf("Run: %v, want EINTR", err)
		}
	}
}

// BenchmarkPIOExitAlternatingThreads is BenchmarkPIOExit with KVM_RUN issued
// from two OS threads in turn, which breaks the package's threading contract
// on purpose: it measures what the contract saves (KVM switches the vCPU's
// pid on every change of thread).
func BenchmarkPIOExitAlternatingThreads(b *testing.B) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c := benchVCPU(b, []byte{
		0xE6, 0x10, // 1: out 0x10, al
		0xEB, 0xFC, // jmp 1b
	})
	turn := make(chan struct{})
	done := make(chan error)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		for range turn {
			err := c.Run()
			if err == unix.EINTR {
				err = nil
			}
			done <- err
		}
	}()
	defer close(turn)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		var err error
		if i%2 == 0 {
			turn <- struct{}{}
			err = <-done
		} else if err = c.Run(); err == unix.EINTR {
			err = nil
		}
		if err != nil {
			b.Fatal(err)
		}
		i++
	}
}
