// Package e2e boots the real guest kernel under husk-vmm and checks what the
// guest reports. It needs KVM that runs Linux guests (hardware KVM, or the
// test host) and its artifacts named by the environment:
//
//	HUSK_VMM      the husk-vmm binary
//	HUSK_VMLINUX  the guest kernel as an ELF vmlinux (PVH)
//	HUSK_BZIMAGE  the same kernel as a bzImage
//	HUSK_INITRD   the test initrd (test/guestinit as /init)
//
// `make test` builds them and runs this package where it can (test/hosted).
// Tests always run fresh (-count=1) and each has a deadline.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/huskvm/husk/internal/testutil/kvmtest"
)

// baseCmdline is the command line of every e2e boot, before the per-test
// parameters.
const baseCmdline = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.dumbkbd quiet"

// bootDeadline bounds one boot; a healthy one takes a few seconds in the
// test host, but a test host on a loaded machine has starved a guest vCPU
// past the guest's RCU stall warning (21 s) and still booted.
const bootDeadline = 180 * time.Second

type artifacts struct{ vmm, vmlinux, bzImage, initrd string }

func need(t *testing.T) artifacts {
	t.Helper()
	a := artifacts{os.Getenv("HUSK_VMM"), os.Getenv("HUSK_VMLINUX"), os.Getenv("HUSK_BZIMAGE"), os.Getenv("HUSK_INITRD")}
	for name, v := range map[string]string{"HUSK_VMM": a.vmm, "HUSK_VMLINUX": a.vmlinux, "HUSK_BZIMAGE": a.bzImage, "HUSK_INITRD": a.initrd} {
		if v == "" {
			kvmtest.Unavailable(t, "%s is not set; run the e2e tests through `make test`", name)
		}
		if _, err := os.Stat(v); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	return a
}

type result struct {
	stdout, stderr string
	err            error
	dur            time.Duration
}

// vmmCommand is husk-vmm with args, stopped when ctx ends. A husk-vmm
// stopped that way first logs its devices' state (SIGUSR1) and its
// goroutines (SIGQUIT) to its stderr, so a hang leaves its cause in the
// test's output.
func vmmCommand(ctx context.Context, a artifacts, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, a.vmm, args...)
	cmd.Cancel = func() error {
		cmd.Process.Signal(syscall.SIGUSR1)
		time.Sleep(time.Second)
		return cmd.Process.Signal(syscall.SIGQUIT)
	}
	cmd.WaitDelay = 10 * time.Second // then SIGKILL
	return cmd
}

// vmm runs husk-vmm with args under the boot deadline.
func vmm(t *testing.T, a artifacts, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bootDeadline)
	defer cancel()
	cmd := vmmCommand(ctx, a, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{stdout.String(), stderr.String(), err, time.Since(start)}
	if ctx.Err() != nil {
		t.Fatalf("husk-vmm %q did not finish within %v\nstdout:\n%s\nstderr:\n%s", args, bootDeadline, r.stdout, r.stderr)
	}
	return r
}

func token(t *testing.T) string {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// report parses the HUSK_KEY=value lines the test init prints.
func report(out string) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if k, v, ok := strings.Cut(line, "="); ok && strings.HasPrefix(k, "HUSK_") {
			m[k] = v
		}
	}
	return m
}

func TestBoot(t *testing.T) {
	a := need(t)
	type boot struct {
		name   string
		kernel string
		cpus   int
		mem    int
	}
	var boots []boot
	for _, k := range []struct{ name, path string }{{"pvh", a.vmlinux}, {"bzimage", a.bzImage}} {
		for _, cpus := range []int{1, 2, 4} {
			boots = append(boots, boot{fmt.Sprintf("%s_%dcpu", k.name, cpus), k.path, cpus, 256})
		}
		boots = append(boots, boot{k.name + "_mem4096", k.path, 2, 4096})
	}
	for _, b := range boots {
		t.Run(b.name, func(t *testing.T) {
			tok := token(t)
			r := vmm(t, a, "--kernel", b.kernel, "--initrd", a.initrd, "--cpus", strconv.Itoa(b.cpus),
				"--mem", strconv.Itoa(b.mem), "--cmdline", baseCmdline+" husk.token="+tok)
			if r.err != nil {
				t.Fatalf("husk-vmm: %v\nstdout:\n%s\nstderr:\n%s", r.err, r.stdout, r.stderr)
			}
			got := report(r.stdout)
			if _, ok := got["HUSK_INIT_DONE"]; !ok && !strings.Contains(r.stdout, "HUSK_INIT_DONE") {
				t.Fatalf("init did not finish; stdout:\n%s", r.stdout)
			}
			if u := got["HUSK_UNAME"]; !strings.HasSuffix(u, "-husk") {
				t.Errorf("uname -r = %q, want a -husk kernel", u)
			}
			if got["HUSK_TOKEN"] != tok {
				t.Errorf("token %q, want %q", got["HUSK_TOKEN"], tok)
			}
			if got["HUSK_NPROC"] != strconv.Itoa(b.cpus) {
				t.Errorf("nproc %q, want %d", got["HUSK_NPROC"], b.cpus)
			}
			// MemTotal excludes what the kernel reserves for itself, so it is a
			// bit under the configured size, and never above it.
			kb, err := strconv.Atoi(got["HUSK_MEMTOTAL_KB"])
			if err != nil || kb > b.mem*1024 || kb < b.mem*1024*85/100 {
				t.Errorf("MemTotal %q kB for --mem %d", got["HUSK_MEMTOTAL_KB"], b.mem)
			}
			if got["HUSK_CLOCKSOURCE"] != "kvm-clock" {
				t.Errorf("clocksource %q, want kvm-clock", got["HUSK_CLOCKSOURCE"])
			}
			t.Logf("booted in %v", r.dur.Round(time.Millisecond))
		})
	}
}

func TestGuestPanicFails(t *testing.T) {
	a := need(t)
	r := vmm(t, a, "--kernel", a.vmlinux, "--initrd", a.initrd, "--cmdline", baseCmdline+" husk.mode=panic")
	if r.err == nil {
		t.Fatalf("husk-vmm exited 0 after a guest panic\nstdout:\n%s", r.stdout)
	}
	if !strings.Contains(r.stderr, "Kernel panic - not syncing") {
		t.Fatalf("stderr lacks the panic text:\n%s", r.stderr)
	}
}

func TestMalformedKernelFails(t *testing.T) {
	a := need(t)
	bad := t.TempDir() + "/bad"
	// The first 4 KiB of a real vmlinux: a valid ELF header whose segments
	// run past the end of the file.
	head, err := os.ReadFile(a.vmlinux)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, head[:4096], 0o644); err != nil {
		t.Fatal(err)
	}
	r := vmm(t, a, "--kernel", bad, "--initrd", a.initrd)
	if r.err == nil || !strings.Contains(r.stderr, "past the end of the file") {
		t.Fatalf("err %v, stderr:\n%s", r.err, r.stderr)
	}
}

func TestWallClockLimit(t *testing.T) {
	a := need(t)
	r := vmm(t, a, "--kernel", a.vmlinux, "--initrd", a.initrd, "--timeout", "5s", "--cmdline", baseCmdline+" husk.mode=hang")
	if r.err == nil || !strings.Contains(r.stderr, "wall-clock limit") {
		t.Fatalf("err %v, stderr:\n%s", r.err, r.stderr)
	}
}

func TestSIGTERMStopsTheVM(t *testing.T) {
	a := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), bootDeadline)
	defer cancel()
	cmd := vmmCommand(ctx, a, "--kernel", a.vmlinux, "--initrd", a.initrd, "--cpus", "2",
		"--cmdline", baseCmdline+" husk.mode=hang")
	var stdout, stderr syncBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait until the guest's init has reported, so the stop hits a running guest.
	for !strings.Contains(stdout.String(), "HUSK_INIT_DONE") {
		if ctx.Err() != nil {
			t.Fatalf("guest never reached init; stdout:\n%s", stdout.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	if ctx.Err() != nil {
		t.Fatal("husk-vmm ignored SIGTERM")
	}
	if err == nil || !strings.Contains(stderr.String(), "stopped by signal") {
		t.Fatalf("err %v, stderr:\n%s", err, stderr.String())
	}
}

// syncBuffer is a bytes.Buffer safe to read while a command writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
