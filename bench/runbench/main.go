//go:build linux

// Command runbench measures what running a command in a husk sandbox costs
// on the machine it runs on. `husk-dev bench-run` (bench/run.sh) stages it
// with husk, husk-vmm, the guest kernel, the test initrd and a template
// image holding the agent, and runs it inside the test host, or directly on
// hardware KVM. Build it static (CGO_ENABLED=0).
//
// Exec round trip: one VM is booted (internal/sandbox, as husk run boots
// it) and /bin/true is run in it through the agent over vsock, -exec times
// after -exec-warmup unmeasured runs, each timed from the Start request to
// its end event. In the same rounds the same /bin/true (the template's:
// -true-root is where its file system is mounted) is run on this machine
// by fork+exec, chrooted there so that it finds the same dynamic loader
// and libc, with stdout and stderr on pipes as the agent gives them; and
// the agent's GET /health is timed, the transport without a process.
//
// First output: rounds of (a) `husk run --direct -- echo hi`, from just
// before exec to the first byte on its stdout; (b) the VM husk run boots,
// from the start of husk-vmm to its agent's first answer; and (c) a cold
// boot of the same kernel with the test initrd (test/guestinit) and no
// devices, from just before exec of husk-vmm to the init marker line on
// the console. All with the same vCPUs and memory; the order rotates.
//
// The last line printed is
//
//	exec_rtt husk/host=<ratio of medians> run_first_output/boot=<ratio of medians> exec_rtt_ms=<husk median>
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// bootCmdline is husk-vmm's default command line plus husk.mode=hang (as
// bench/bootbench boots): the test init reports, prints the marker and
// then waits to be killed.
const bootCmdline = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.dumbkbd quiet husk.mode=hang"

type config struct {
	husk, vmm, kernel, initrd string
	rootfs, trueRoot          string
	tmp                       string
	cpus, mem                 int
	execN, execWarmup         int
	rounds, warmup            int
	bootTimeout, stepTimeout  time.Duration
}

func main() {
	var c config
	flag.StringVar(&c.husk, "husk", "", "husk executable (required)")
	flag.StringVar(&c.vmm, "vmm", "", "husk-vmm executable (required)")
	flag.StringVar(&c.kernel, "kernel", "", "guest vmlinux (required)")
	flag.StringVar(&c.initrd, "initrd", "", "test initrd, for the cold boots (required)")
	flag.StringVar(&c.rootfs, "rootfs", "", "template image holding husk-agent (required)")
	flag.StringVar(&c.trueRoot, "true-root", "", "where -rootfs's file system is mounted, for the host's /bin/true (required)")
	flag.StringVar(&c.tmp, "tmp", os.TempDir(), "directory for the VMs' overlays and sockets")
	flag.IntVar(&c.cpus, "cpus", 1, "vCPUs of every VM (husk run's default is 2)")
	flag.IntVar(&c.mem, "mem", 512, "memory of every VM in MiB (husk run's default)")
	flag.IntVar(&c.execN, "exec", 200, "measured exec round trips, each in the VM and on the host")
	flag.IntVar(&c.execWarmup, "exec-warmup", 20, "unmeasured exec round trips first")
	flag.IntVar(&c.rounds, "rounds", 10, "measured rounds of husk run, boot to the agent and cold boot")
	flag.IntVar(&c.warmup, "warmup", 1, "unmeasured rounds first")
	flag.DurationVar(&c.bootTimeout, "boot-timeout", 3*time.Minute, "limit for a boot to the agent's answer, the first output or the init marker")
	flag.DurationVar(&c.stepTimeout, "step-timeout", 30*time.Second, "limit for one exec, and for a VM or husk to go after its measurement")
	flag.Parse()
	if err := run(c); err != nil {
		fmt.Fprintf(os.Stderr, "runbench: %v\n", err)
		os.Exit(1)
	}
}

func run(c config) error {
	for _, f := range []struct{ name, v string }{
		{"husk", c.husk}, {"vmm", c.vmm}, {"kernel", c.kernel}, {"initrd", c.initrd},
		{"rootfs", c.rootfs}, {"true-root", c.trueRoot},
	} {
		if f.v == "" {
			return fmt.Errorf("-%s is required", f.name)
		}
	}
	if flag.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	if c.execN < 1 || c.rounds < 1 {
		return errors.New("-exec and -rounds must be at least 1")
	}
	tmp, err := os.MkdirTemp(c.tmp, "runbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	c.tmp = tmp

	rel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	fmt.Printf("host: kernel %s, %d CPUs\n", bytes.TrimSpace(rel), runtime.NumCPU())
	fmt.Printf("VMs: %d vCPUs, %d MiB; kernel %s; template %s\n", c.cpus, c.mem, c.kernel, c.rootfs)

	// The boots come first: in the test host, the first VM started after
	// the exec VM's minute of traffic took 55-140 s to its first output
	// instead of ~10 s (docs/BENCHMARKS.md), and nothing is started after
	// the exec VM this way.
	first, err := firstOutput(c)
	if err != nil {
		return fmt.Errorf("first output: %w", err)
	}
	rtt, err := execRTT(c)
	if err != nil {
		return fmt.Errorf("exec round trips: %w", err)
	}

	h, b := summarize(rtt.husk), summarize(rtt.host)
	r, bt := summarize(first.run), summarize(first.boot)
	fmt.Printf("\n%-26s %4s %9s %9s %9s %9s %9s %9s\n", "", "n", "median", "min", "p10", "p90", "max", "mean")
	row := func(name string, s summary, unit string) {
		fmt.Printf("%-26s %4d %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f   %s\n", name, s.N, s.Median, s.Min, s.P10, s.P90, s.Max, s.Mean, unit)
	}
	row("exec /bin/true: husk", h, "ms, Start request to end event, over vsock")
	row("exec /bin/true: host", b, "ms, fork+exec to wait, chrooted")
	row("GET /health: husk", summarize(rtt.health), "ms, the agent's transport alone")
	row("husk run to first output", r, "s, exec to the first byte on stdout")
	row("husk run, output to exit", summarize(first.exit), "s")
	row("VM boot to agent answer", summarize(first.agent), "s, start of husk-vmm to GET /health answered")
	row("cold boot to init", bt, "s, exec of husk-vmm to the init marker")
	fmt.Printf("\nexec_rtt husk/host=%.2f run_first_output/boot=%.2f exec_rtt_ms=%.2f\n",
		h.Median/b.Median, r.Median/bt.Median, h.Median)
	if first.failures > 0 {
		return fmt.Errorf("%d step(s) failed (above)", first.failures)
	}
	return nil
}

// progress writes a progress line to stderr, stamped with the time since
// boot as the kernel stamps its console messages, so that the two can be
// read side by side (a stall of the test host shows only on its console).
func progress(format string, args ...any) {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	fmt.Fprintf(os.Stderr, "runbench: [%10.3f] "+format+"\n", append([]any{time.Duration(ts.Nano()).Seconds()}, args...)...)
}
