package vmm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/huskvm/husk/internal/testutil/kvmtest"
)

// Tiny guest programs: they run the same in 32-bit protected mode and in
// long mode, print to COM1 and reset through the i8042.

// puts emits "mov dx, 0x3f8" then "mov al, c; out dx, al" for each byte.
func puts(s string) []byte {
	b := []byte{0x66, 0xba, 0xf8, 0x03}
	for i := 0; i < len(s); i++ {
		b = append(b, 0xb0, s[i], 0xee)
	}
	return b
}

var (
	i8042Reset = []byte{0xb0, 0xfe, 0xe6, 0x64, 0xf4} // mov al, 0xfe; out 0x64, al; hlt
	spin       = []byte{0xeb, 0xfe}                   // jmp $
	// lidt [0] (a null IDT: the boot IDT is empty anyway), then load a bad
	// selector into DS: #GP, #DF, triple fault.
	tripleFault = []byte{0x0f, 0x01, 0x1d, 0, 0, 0, 0, 0x66, 0xb8, 0x34, 0x12, 0x8e, 0xd8, 0xf4}
)

var le = binary.LittleEndian

// pvhKernel wraps code in an ELF with a PVH note, loaded and entered at 16 MiB.
func pvhKernel(code []byte) []byte {
	const paddr, codeOff, phoff = 0x1000000, 0x1000, 64
	note := make([]byte, 24)
	le.PutUint32(note[0:], 4)
	le.PutUint32(note[4:], 8)
	le.PutUint32(note[8:], 18)
	copy(note[12:], "Xen\x00")
	le.PutUint64(note[16:], paddr)
	b := make([]byte, codeOff+len(code))
	copy(b, "\x7fELF\x02\x01\x01")
	le.PutUint16(b[16:], 2)
	le.PutUint16(b[18:], 62)
	le.PutUint64(b[32:], phoff)
	le.PutUint16(b[54:], 56)
	le.PutUint16(b[56:], 2)
	ph := b[phoff:]
	le.PutUint32(ph[0:], 1) // PT_LOAD
	le.PutUint64(ph[8:], codeOff)
	le.PutUint64(ph[24:], paddr)
	le.PutUint64(ph[32:], uint64(len(code)))
	le.PutUint64(ph[40:], uint64(len(code)))
	ph = ph[56:]
	le.PutUint32(ph[0:], 4) // PT_NOTE
	le.PutUint64(ph[8:], 0x200)
	le.PutUint64(ph[32:], uint64(len(note)))
	copy(b[0x200:], note)
	copy(b[codeOff:], code)
	return b
}

// bzKernel wraps code in a bzImage whose 64-bit entry (offset 0x200 of the
// protected-mode part) is code.
func bzKernel(code []byte) []byte {
	const sects = 4
	b := make([]byte, (sects+1)*512+0x200+len(code))
	b[0x1f1] = sects
	le.PutUint16(b[0x1fe:], 0xaa55)
	b[0x200], b[0x201] = 0xeb, 0x6a
	copy(b[0x202:], "HdrS")
	le.PutUint16(b[0x206:], 0x020f)
	le.PutUint32(b[0x22c:], 0x7fffffff)
	b[0x236] = 1
	le.PutUint32(b[0x238:], 2047)
	copy(b[(sects+1)*512+0x200:], code)
	return b
}

func runGuest(t *testing.T, kernel []byte, vcpus int, timeout time.Duration) (string, error) {
	t.Helper()
	kvmtest.RequireKVM(t)
	path := filepath.Join(t.TempDir(), "kernel")
	if err := os.WriteFile(path, kernel, 0o644); err != nil {
		t.Fatal(err)
	}
	var console bytes.Buffer
	vm, err := New(Config{Kernel: path, Cmdline: "console=ttyS0", VCPUs: vcpus, MemMiB: 64, Console: &console})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := vm.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}()
	ctx, cancel := context.WithTimeoutCause(context.Background(), timeout, errors.New("test timeout"))
	defer cancel()
	err = vm.Run(ctx)
	return console.String(), err
}

func TestBootPrintsAndResets(t *testing.T) {
	for _, tc := range []struct {
		name   string
		kernel func([]byte) []byte
		vcpus  int
	}{
		{"pvh", pvhKernel, 1},
		{"bzimage", bzKernel, 1},
		{"pvh 4 vcpus", pvhKernel, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code := append(puts("hello from the guest\n"), i8042Reset...)
			out, err := runGuest(t, tc.kernel(code), tc.vcpus, 30*time.Second)
			if err != nil {
				t.Fatalf("run: %v (console %q)", err, out)
			}
			if out != "hello from the guest\n" {
				t.Fatalf("console %q", out)
			}
		})
	}
}

func TestPanicThenResetIsAnError(t *testing.T) {
	code := append(puts("[    1.0] Kernel panic - not syncing: Attempted to kill init!\n"), i8042Reset...)
	_, err := runGuest(t, pvhKernel(code), 1, 30*time.Second)
	var pe *PanicError
	if !errors.As(err, &pe) || !strings.Contains(pe.Line, "Attempted to kill init!") || strings.Contains(pe.Line, "[") {
		t.Fatalf("err = %v, want a *PanicError with the panic text", err)
	}
}

// TestTripleFaultIsReset: a triple fault stops the VM as a reset does, and
// the log says where it happened.
func TestTripleFaultIsReset(t *testing.T) {
	kvmtest.RequireKVM(t)
	path := filepath.Join(t.TempDir(), "kernel")
	if err := os.WriteFile(path, pvhKernel(tripleFault), 0o644); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	vm, err := New(Config{Kernel: path, VCPUs: 1, MemMiB: 64, Log: slog.New(slog.NewTextHandler(&log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := vm.Run(ctx); err != nil {
		t.Fatalf("run: %v", err)
	}
	if !strings.Contains(log.String(), "guest_triple_fault") || !strings.Contains(log.String(), "rip=0x") {
		t.Fatalf("log %q: want a guest_triple_fault record with the RIP", log.String())
	}
}

func TestTimeoutKicksSpinningVCPUs(t *testing.T) {
	start := time.Now()
	_, err := runGuest(t, pvhKernel(spin), 2, 300*time.Millisecond)
	if err == nil || err.Error() != "test timeout" {
		t.Fatalf("err = %v, want the context's cause", err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("stop took %v", d)
	}
}

func TestConfigValidate(t *testing.T) {
	ok := Config{Kernel: "k", VCPUs: 1, MemMiB: 128}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []Config{
		{VCPUs: 1, MemMiB: 128},
		{Kernel: "k", VCPUs: 0, MemMiB: 128},
		{Kernel: "k", VCPUs: 33, MemMiB: 128},
		{Kernel: "k", VCPUs: 1, MemMiB: 8},
		{Kernel: "k", VCPUs: 1, MemMiB: 128, Cmdline: strings.Repeat("x", 5000)},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}

func TestMalformedKernel(t *testing.T) {
	kvmtest.RequireKVM(t)
	path := filepath.Join(t.TempDir(), "kernel")
	os.WriteFile(path, []byte("definitely not a kernel, but long enough to read a header from......"), 0o644)
	_, err := New(Config{Kernel: path, VCPUs: 1, MemMiB: 64})
	if err == nil || !strings.Contains(err.Error(), "neither an ELF vmlinux nor a bzImage") {
		t.Fatalf("err = %v", err)
	}
}

func TestBus(t *testing.T) {
	var b bus
	d := &recorder{}
	if err := b.insert(0x3f8, 8, d); err != nil {
		t.Fatal(err)
	}
	if err := b.insert(0x60, 5, d); err != nil {
		t.Fatal(err)
	}
	for _, r := range [][2]uint64{{0x3f0, 9}, {0x3ff, 1}, {0x5c, 5}, {0, 0}, {^uint64(0), 2}} {
		if err := b.insert(r[0], r[1], d); err == nil {
			t.Errorf("insert %#x+%d accepted", r[0], r[1])
		}
	}
	data := []byte{0}
	if !b.read(0x3fd, data) || d.off != 5 {
		t.Fatalf("read 0x3fd: offset %d", d.off)
	}
	if b.read(0x400, data) || data[0] != 0xff {
		t.Fatal("unclaimed read must return all ones")
	}
	if !b.write(0x64, data) || d.off != 4 || b.write(0x65, data) {
		t.Fatal("write dispatch")
	}
}

type recorder struct{ off uint64 }

func (r *recorder) Read(off uint64, data []byte)  { r.off = off }
func (r *recorder) Write(off uint64, data []byte) { r.off = off }

func countDir(t *testing.T, dir string) int {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestNoLeaks boots and tears down VMs repeatedly: file descriptors must
// come back to where they were, and the vCPU threads (locked, so they die
// with their goroutines) must not pile up. The Go runtime keeps idle threads
// from earlier blocking syscalls, so a few more threads afterwards are noise
// (CI saw 3); a leak grows with the number of VMs, at least one per VM.
func TestNoLeaks(t *testing.T) {
	kvmtest.RequireKVM(t)
	const vms, vcpus = 10, 4
	code := append(puts("x"), i8042Reset...)
	runGuest(t, pvhKernel(code), vcpus, 30*time.Second) // warm up the runtime's thread pool
	fds, threads := countDir(t, "/proc/self/fd"), countDir(t, "/proc/self/task")
	for i := 0; i < vms; i++ {
		if _, err := runGuest(t, pvhKernel(code), vcpus, 30*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if got := countDir(t, "/proc/self/fd"); got != fds {
		t.Errorf("open fds %d after %d VMs, %d before", got, vms, fds)
	}
	got := countDir(t, "/proc/self/task")
	t.Logf("threads %d after %d VMs of %d vCPUs, %d before", got, vms, vcpus, threads)
	if got-threads >= vms {
		t.Errorf("threads grew by %d over %d VMs of %d vCPUs: vCPU threads leak", got-threads, vms, vcpus)
	}
}

func TestInsertKernelArgs(t *testing.T) {
	dev := []string{"virtio_mmio.device=4K@0xd0000000:5"}
	for _, tc := range []struct{ in, want string }{
		{"console=ttyS0", "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5"},
		{"root=/dev/vda init=/bin/sh -- -c \"a -- b\"", "root=/dev/vda init=/bin/sh virtio_mmio.device=4K@0xd0000000:5 -- -c \"a -- b\""},
		{"-- x", "virtio_mmio.device=4K@0xd0000000:5 -- x"},
	} {
		if got := insertKernelArgs(tc.in, dev); got != tc.want {
			t.Errorf("insertKernelArgs(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if got := insertKernelArgs("a -- b", nil); got != "a -- b" {
		t.Errorf("no args changed the line: %q", got)
	}
}

// TestLogStateProbesVCPUs: LogState kicks each vCPU out of KVM_RUN and logs
// where it was and whether it took interrupts, for a guest spinning with
// interrupts off and one spinning with them on; the VM runs on afterwards.
func TestLogStateProbesVCPUs(t *testing.T) {
	for _, tc := range []struct {
		name string
		code []byte
		loop string // where the guest spins
		want string
	}{
		{"interrupts off", spin, "RIP:16777216 ", "IF:false"}, // the boot state has IF clear
		// mov al, 0xff; out 0x21, al; out 0xa1, al (mask both PICs, or the
		// PIT's tick meets the empty IDT); sti; jmp $
		{"interrupts on", append([]byte{0xb0, 0xff, 0xe6, 0x21, 0xe6, 0xa1, 0xfb}, spin...), "RIP:16777223 ", "IF:true"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kvmtest.RequireKVM(t)
			path := filepath.Join(t.TempDir(), "kernel")
			if err := os.WriteFile(path, pvhKernel(tc.code), 0o644); err != nil {
				t.Fatal(err)
			}
			var log lockedBuffer
			vm, err := New(Config{Kernel: path, VCPUs: 2, MemMiB: 64, Log: slog.New(slog.NewTextHandler(&log, nil))})
			if err != nil {
				t.Fatal(err)
			}
			defer vm.Close()
			ctx, cancel := context.WithCancelCause(context.Background())
			done := make(chan error, 1)
			go func() { done <- vm.Run(ctx) }()
			// LogState before the vCPUs exist logs none; retry until vCPU 0
			// answers with the state of the spin loop.
			deadline := time.Now().Add(20 * time.Second)
			for !strings.Contains(log.String(), tc.loop) {
				select {
				case err := <-done:
					t.Fatalf("the VM stopped: %v; log %q", err, lastBytes(log.String(), 2000))
				default:
				}
				if time.Now().After(deadline) {
					t.Fatalf("no vcpu_state for the spin loop in %q", lastBytes(log.String(), 2000))
				}
				vm.LogState()
				time.Sleep(50 * time.Millisecond)
			}
			out := log.String()
			if !strings.Contains(out, tc.want) || !strings.Contains(out, "MPState:runnable") {
				t.Errorf("log %q: want %s and MPState:runnable", out, tc.want)
			}
			// The application processor never got INIT/SIPI: it answers too.
			if !strings.Contains(out, "ID:1 ") {
				t.Errorf("log %q: no state for vCPU 1", out)
			}
			cancel(errors.New("done"))
			if err := <-done; err == nil || err.Error() != "done" {
				t.Fatalf("run: %v, want the VM to have run on until cancelled", err)
			}
		})
	}
}

func lastBytes(s string, n int) string { return s[max(0, len(s)-n):] }
