//go:build linux

// Command bootbench measures cold boots of the test guest under husk-vmm
// and under QEMU microvm on the machine it runs on. `husk-dev bench-boot`
// (bench/boot.sh) stages it with the guest, husk-vmm and a QEMU bundle and
// runs it inside the test host, or directly on hardware KVM. Build it
// static (CGO_ENABLED=0).
//
// Comparison mode (default): after a warm-up pair, -pairs pairs of boots,
// husk and QEMU alternating which goes first, of the same vmlinux through
// PVH with the same initrd and byte-identical kernel command lines, 1 vCPU
// and 128 MiB. A boot is timed from just before exec to the moment the init
// marker line (HUSK_INIT_DONE) is read from the VMM's stdout. The guest then
// sits still (husk.mode=hang) while the bench reads the VMM's peak RSS and
// guest-RAM residency (/proc/PID/status, smaps, pagemap), then SIGKILLs it.
// Memory overhead = peak RSS − resident bytes of the guest RAM mappings,
// where peak RSS is VmHWM or, when the kernel's batched RSS counters lag
// behind, the sum of smaps Rss (memSample.Peak). The last line printed is
//
//	boot husk/qemu=<ratio of medians> husk_overhead_mib=<median> qemu_overhead_mib=<median>
//
// Hang-rate mode (-hang N): N husk boots, vCPU counts cycling through
// -hang-cpus, guest rebooting after the marker (husk.mode=reboot); a boot
// hangs if the marker, or the VMM's exit after it, does not come within
// -timeout. The last line printed is
//
//	boots=N hangs=K failures=F median_s=… p90_s=… max_s=…
package main

import (
	"bytes"
	"cmp"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/huskvm/husk/bench/qemubundle"
	"github.com/huskvm/husk/internal/shellquote"
)

// DefaultCmdline is husk-vmm's default command line plus husk.mode=hang.
// QEMU microvm has no i8042, so its reboot=k would hang QEMU: no matter,
// both VMMs are killed at the marker, and the line must be the same for both.
const DefaultCmdline = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.dumbkbd quiet husk.mode=hang"

// DefaultMachine is QEMU's fastest microvm for this guest: no option ROMs
// (qboot boots PVH itself), no RTC, the ISA serial port as console, no ACPI
// tables (the guest kernel has no ACPI; with acpi=off QEMU builds none and
// qboot writes an MP table instead), and nothing appended to the command
// line (auto-kernel-cmdline adds only virtio-mmio devices, and there are
// none, but off makes the identity of the command lines certain).
const DefaultMachine = "microvm,x-option-roms=off,rtc=off,isa-serial=on,acpi=off,auto-kernel-cmdline=off"

type config struct {
	vmm, kernel, initrd string
	qemu, qemuBundle    string
	machine, cmdline    string
	pairs, warmup       int
	cpus, mem           int
	timeout             time.Duration
	hang                int
	hangCPUs            string
	detail              bool
	only                string
	hangVMM             string
	huskEnv             listFlag
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, " ") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var c config
	flag.StringVar(&c.vmm, "vmm", "", "husk-vmm executable (required)")
	flag.StringVar(&c.kernel, "kernel", "", "guest vmlinux (required)")
	flag.StringVar(&c.initrd, "initrd", "", "test initrd (required)")
	flag.StringVar(&c.qemu, "qemu", "", "qemu-system-x86_64 to run as is")
	flag.StringVar(&c.qemuBundle, "qemu-bundle", "", "QEMU bundle directory (bench/qemubundle) to run through its loader")
	flag.StringVar(&c.machine, "qemu-machine", DefaultMachine, "QEMU -M value")
	flag.StringVar(&c.cmdline, "cmdline", DefaultCmdline, "guest kernel command line, the same for both VMMs")
	flag.IntVar(&c.pairs, "pairs", 15, "measured husk/QEMU pairs")
	flag.IntVar(&c.warmup, "warmup", 1, "unmeasured pairs first (page cache, first exec)")
	flag.IntVar(&c.cpus, "cpus", 1, "vCPUs of the comparison boots")
	flag.IntVar(&c.mem, "mem", 128, "guest memory in MiB")
	flag.DurationVar(&c.timeout, "timeout", 60*time.Second, "per boot: limit to the marker (and from it to the exit in -hang mode)")
	flag.IntVar(&c.hang, "hang", 0, "hang-rate mode: boot husk this many times instead of comparing")
	flag.StringVar(&c.hangCPUs, "hang-cpus", "1,2,4", "vCPU counts the -hang boots cycle through")
	flag.StringVar(&c.hangVMM, "hang-vmm", "husk", `VMM of the -hang boots: "husk", or "qemu" (for comparison; reboot=k becomes reboot=t, microvm has no i8042)`)
	flag.BoolVar(&c.detail, "detail", false, "print the memory map of the last measured boot of each VMM")
	flag.StringVar(&c.only, "only", "", `comparison mode: run only "husk" or "qemu" (no ratio)`)
	flag.Var(&c.huskEnv, "husk-env", "KEY=VALUE added to husk-vmm's environment (repeatable; for investigations, e.g. GODEBUG=...)")
	flag.Parse()
	if err := run(c); err != nil {
		fmt.Fprintf(os.Stderr, "bootbench: %v\n", err)
		os.Exit(1)
	}
}

func run(c config) error {
	if c.vmm == "" || c.kernel == "" || c.initrd == "" {
		return errors.New("-vmm, -kernel and -initrd are required")
	}
	if flag.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	printEnv()
	needQEMU := c.only != "husk"
	if c.hang > 0 {
		needQEMU = c.hangVMM == "qemu"
	}
	if needQEMU && c.qemu == "" && c.qemuBundle == "" {
		return errors.New("need -qemu or -qemu-bundle")
	}
	if c.hang > 0 {
		return hangRate(c)
	}
	return compare(c)
}

func printEnv() {
	rel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	thp, _ := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	fmt.Printf("host: kernel %s, %d CPUs, THP %s\n", bytes.TrimSpace(rel), runtime.NumCPU(), bytes.TrimSpace(thp))
}

func (c config) huskArgv(cpus int, cmdline string) []string {
	return []string{c.vmm, "--kernel", c.kernel, "--initrd", c.initrd,
		"--cpus", strconv.Itoa(cpus), "--mem", strconv.Itoa(c.mem),
		"--cmdline", cmdline, "--log-level", "debug"}
}

func (c config) qemuArgv(cpus int, cmdline string) []string {
	args := []string{"-M", c.machine, "-enable-kvm", "-cpu", "host,-arch-capabilities",
		"-m", strconv.Itoa(c.mem), "-smp", strconv.Itoa(cpus),
		"-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
		"-kernel", c.kernel, "-initrd", c.initrd, "-append", cmdline}
	return c.qemuCmd(args...)
}

// qemuCmd is the argument vector that runs QEMU with args.
func (c config) qemuCmd(args ...string) []string {
	if c.qemuBundle != "" {
		return qemubundle.Command(c.qemuBundle, args...)
	}
	return append([]string{c.qemu}, args...)
}

func (c config) huskSpec(cpus int, cmdline string) bootSpec {
	return bootSpec{
		Name: "husk", Argv: c.huskArgv(cpus, cmdline), Env: c.huskEnv, Timeout: c.timeout,
		SetupMark: "kernel_loaded",
		FindRAM: func(stderr []byte, _ []vma) ([]addrRange, error) {
			rs := huskGuestRAM(stderr)
			if len(rs) == 0 {
				return nil, errors.New("husk-vmm logged no guest_ram record (needs --log-level debug)")
			}
			return rs, nil
		},
	}
}

func (c config) qemuSpec(cpus int, cmdline string) bootSpec {
	size := uint64(c.mem) << 20
	return bootSpec{
		Name: "qemu", Argv: c.qemuArgv(cpus, cmdline), Timeout: c.timeout,
		FindRAM: func(_ []byte, vmas []vma) ([]addrRange, error) { return qemuGuestRAM(vmas, size) },
	}
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// compare runs the husk/QEMU pairs and prints the table and the result line.
func compare(c config) error {
	specs := []bootSpec{c.huskSpec(c.cpus, c.cmdline), c.qemuSpec(c.cpus, c.cmdline)}
	switch c.only {
	case "":
	case "husk":
		specs = specs[:1]
	case "qemu":
		specs = specs[1:]
	default:
		return fmt.Errorf("-only %q: want husk or qemu", c.only)
	}
	if c.qemuBundle != "" || c.qemu != "" {
		argv := c.qemuCmd("-version")
		if out, err := exec.Command(argv[0], argv[1:]...).Output(); err == nil {
			fmt.Printf("qemu: %s\n", bytes.SplitN(bytes.TrimSpace(out), []byte("\n"), 2)[0])
		}
	}
	fmt.Printf("guest: PVH %s, initrd %s, %d vCPU, %d MiB\ncmdline: %q\n", c.kernel, c.initrd, c.cpus, c.mem, c.cmdline)
	for _, s := range specs {
		env := ""
		if len(s.Env) > 0 {
			env = "env " + shellquote.Join(s.Env) + " "
		}
		fmt.Printf("%s: %s%s\n", s.Name, env, shellquote.Join(s.Argv))
	}
	fmt.Printf("%d warm-up pair(s), then %d pairs; the first of each pair alternates\n", c.warmup, c.pairs)

	type sample struct{ boot, overhead, peak, setup []float64 }
	samples := make([]sample, len(specs))
	last := make([]bootResult, len(specs))
	failures := 0
	for i := -c.warmup; i < c.pairs; i++ {
		order := []int{0, 1}[:len(specs)]
		if len(specs) == 2 && (i+c.warmup)%2 == 1 {
			order = []int{1, 0}
		}
		label := fmt.Sprintf("pair %2d", i+1)
		if i < 0 {
			label = "warm-up"
		}
		var parts []string
		for _, k := range order {
			s := specs[k]
			r := boot(s)
			if r.Outcome == outcomeStuck {
				reportFailure(s, r)
				return fmt.Errorf("%s: %v: stopping", s.Name, r.Err)
			}
			if r.Outcome != outcomeOK {
				failures++
				parts = append(parts, fmt.Sprintf("%s %s: %v", s.Name, r.Outcome, r.Err))
				reportFailure(s, r)
				continue
			}
			setup := ""
			if r.Setup > 0 {
				setup = fmt.Sprintf(" (set-up %.3fs)", r.Setup.Seconds())
			}
			parts = append(parts, fmt.Sprintf("%s %6.3fs%s peak %5.1f guest %5.1f overhead %4.1f MiB",
				s.Name, r.Boot.Seconds(), setup, mib(int64(r.Mem.Peak())), mib(int64(r.Mem.Guest)), mib(r.Mem.Overhead())))
			if i >= 0 {
				samples[k].boot = append(samples[k].boot, r.Boot.Seconds())
				samples[k].overhead = append(samples[k].overhead, mib(r.Mem.Overhead()))
				samples[k].peak = append(samples[k].peak, mib(int64(r.Mem.Peak())))
				if r.Setup > 0 {
					samples[k].setup = append(samples[k].setup, r.Setup.Seconds())
				}
				last[k] = r
			}
		}
		fmt.Printf("%s  %s\n", label, strings.Join(parts, " | "))
	}

	fmt.Printf("\n%-5s %3s %8s %8s %8s %8s %8s   %s\n", "boot", "n", "median", "min", "p90", "max", "mean", "(seconds, exec to init marker)")
	for k, s := range specs {
		b := summarize(samples[k].boot)
		fmt.Printf("%-5s %3d %8.3f %8.3f %8.3f %8.3f %8.3f\n", s.Name, b.N, b.Median, b.Min, b.P90, b.Max, b.Mean)
		if u := summarize(samples[k].setup); u.N > 0 {
			fmt.Printf("%-5s %3d %8.3f %8.3f %8.3f %8.3f %8.3f   (of which set-up: exec to the kernel loaded, before any vCPU)\n",
				"", u.N, u.Median, u.Min, u.P90, u.Max, u.Mean)
		}
	}
	fmt.Printf("\n%-5s %3s %8s %8s %8s %8s   %s\n", "mem", "n", "median", "min", "max", "peak", "(MiB: overhead = peak RSS at the marker − resident guest RAM; peak = median of max(VmHWM, Σ smaps Rss))")
	for k, s := range specs {
		o := summarize(samples[k].overhead)
		fmt.Printf("%-5s %3d %8.1f %8.1f %8.1f %8.1f\n", s.Name, o.N, o.Median, o.Min, o.Max, summarize(samples[k].peak).Median)
	}
	if c.detail {
		for k, s := range specs {
			if len(last[k].Mem.VMAs) > 0 {
				printDetail(s.Name, last[k].Mem)
				fmt.Printf("%s console:\n%s", s.Name, last[k].Console)
			}
		}
	}
	if failures > 0 {
		fmt.Printf("\n%d boot(s) failed or hung; they are left out of the figures\n", failures)
	}
	if len(specs) != 2 {
		return nil
	}
	h, q := summarize(samples[0].boot), summarize(samples[1].boot)
	if h.N == 0 || q.N == 0 {
		return errors.New("no successful boots to compare")
	}
	ho, qo := summarize(samples[0].overhead), summarize(samples[1].overhead)
	ratio := h.Median / q.Median
	fmt.Printf("\ntargets: husk/qemu <= 1.00: %s; husk overhead <= 5.0 MiB: %s\n", verdict(ratio <= 1.0), verdict(ho.Median <= 5.0))
	fmt.Printf("boot husk/qemu=%.2f husk_overhead_mib=%.1f qemu_overhead_mib=%.1f\n", ratio, ho.Median, qo.Median)
	if failures > 0 {
		os.Exit(1)
	}
	return nil
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

// reportFailure prints what a failed or hung boot left behind.
func reportFailure(s bootSpec, r bootResult) {
	fmt.Fprintf(os.Stderr, "--- %s %s: %v\n--- argv: %s\n--- console:\n%s\n", s.Name, r.Outcome, r.Err, shellquote.Join(s.Argv), r.Console)
	if r.Diag != "" {
		fmt.Fprintf(os.Stderr, "--- process:\n%s", r.Diag)
	}
	fmt.Fprintf(os.Stderr, "--- stderr:\n%s\n---\n", r.Stderr)
}

// printDetail prints where a VMM's resident memory is at the marker:
// files by name (all their mappings together), anonymous mappings one by
// one with their size and huge-page share, guest RAM marked; largest first.
func printDetail(name string, m memSample) {
	fmt.Printf("\n%s at the marker: VmHWM %.1f VmRSS %.1f (anon %.1f, file %.1f) smaps Σ Rss %.1f, guest %.1f (anon %.1f, THP %.1f) MiB; %d threads; %d minor, %d major faults\n",
		name, mib(int64(m.HWM)), mib(int64(m.RSS)), mib(int64(m.RSSAnon)), mib(int64(m.RSSFile)), mib(int64(m.Smaps)),
		mib(int64(m.Guest)), mib(int64(m.GuestAnon)), mib(int64(m.GuestHuge)), m.Threads, m.MinorFaults, m.MajFaults)
	type row struct {
		what      string
		rss, huge uint64
	}
	byName := map[string]*row{}
	var rows []*row
	var small row
	for _, v := range m.VMAs {
		if v.RSS == 0 {
			continue
		}
		what := v.Path
		guest := false
		for _, r := range m.GuestRanges {
			guest = guest || (v.Start < r.End && r.Start < v.End)
		}
		switch {
		case guest && what == "":
			what = "guest RAM, anonymous"
		case guest:
			what = "guest RAM, mapped from " + what
		case what == "":
			what = fmt.Sprintf("anonymous %s %#x (%d KiB)", v.Perms, v.Start, v.Size()>>10)
		}
		if v.RSS < 16<<10 && !guest {
			small.rss += v.RSS
			small.huge += v.AnonHuge
			continue
		}
		r := byName[what]
		if r == nil {
			r = &row{what: what}
			byName[what] = r
			rows = append(rows, r)
		}
		r.rss += v.RSS
		r.huge += v.AnonHuge
	}
	small.what = "mappings under 16 KiB resident, together"
	rows = append(rows, &small)
	slices.SortStableFunc(rows, func(a, b *row) int { return cmp.Compare(b.rss, a.rss) })
	fmt.Printf("  %9s %9s  %s\n", "KiB", "THP KiB", "mapping")
	for _, r := range rows {
		fmt.Printf("  %9d %9d  %s\n", r.rss>>10, r.huge>>10, r.what)
	}
}

// hangRate boots husk (or QEMU) c.hang times and reports hangs, failures and the
// boot-time distribution.
func hangRate(c config) error {
	var cpus []int
	for _, f := range strings.Split(c.hangCPUs, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return fmt.Errorf("-hang-cpus %q: bad count %q", c.hangCPUs, f)
		}
		cpus = append(cpus, n)
	}
	cmdline := strings.Replace(c.cmdline, "husk.mode=hang", "husk.mode=reboot", 1)
	spec := c.huskSpec
	switch c.hangVMM {
	case "husk":
	case "qemu":
		spec = c.qemuSpec
		cmdline = strings.Replace(cmdline, "reboot=k", "reboot=t", 1)
	default:
		return fmt.Errorf("-hang-vmm %q: want husk or qemu", c.hangVMM)
	}
	fmt.Printf("hang rate: %d %s boots, vCPUs cycling %v, %d MiB, timeout %v to the marker and %v from it to the exit\ncmdline: %q\n",
		c.hang, c.hangVMM, cpus, c.mem, c.timeout, c.timeout, cmdline)
	var all []float64
	byCPUs := map[int][]float64{}
	hangs, failures := 0, 0
	for i := 0; i < c.hang; i++ {
		n := cpus[i%len(cpus)]
		s := spec(n, cmdline)
		s.WaitExit = true
		s.FindRAM = nil
		r := boot(s)
		switch r.Outcome {
		case outcomeStuck:
			reportFailure(s, r)
			return fmt.Errorf("boot %d: %s: %v: stopping", i+1, s.Name, r.Err)
		case outcomeOK:
			all = append(all, r.Boot.Seconds())
			byCPUs[n] = append(byCPUs[n], r.Boot.Seconds())
			fmt.Printf("boot %3d cpus=%d %6.3fs exit +%.3fs ok\n", i+1, n, r.Boot.Seconds(), r.Exit.Seconds())
		case outcomeHang:
			hangs++
			fmt.Printf("boot %3d cpus=%d HANG: %v\n", i+1, n, r.Err)
			reportFailure(s, r)
		default:
			failures++
			fmt.Printf("boot %3d cpus=%d FAIL: %v\n", i+1, n, r.Err)
			reportFailure(s, r)
		}
	}
	fmt.Printf("\n%-6s %3s %8s %8s %8s %8s %8s   %s\n", "vcpus", "n", "median", "min", "p90", "max", "mean", "(seconds, exec to init marker)")
	for _, n := range cpus[:min(len(cpus), c.hang)] {
		b := summarize(byCPUs[n])
		fmt.Printf("%-6d %3d %8.3f %8.3f %8.3f %8.3f %8.3f\n", n, b.N, b.Median, b.Min, b.P90, b.Max, b.Mean)
	}
	a := summarize(all)
	fmt.Printf("%-6s %3d %8.3f %8.3f %8.3f %8.3f %8.3f\n", "all", a.N, a.Median, a.Min, a.P90, a.Max, a.Mean)
	fmt.Printf("\nboots=%d hangs=%d failures=%d median_s=%.3f p90_s=%.3f max_s=%.3f\n", c.hang, hangs, failures, a.Median, a.P90, a.Max)
	if hangs+failures > 0 {
		os.Exit(1)
	}
	return nil
}
