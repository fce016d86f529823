//go:build linux

// Command devbench measures husk-vmm's virtio-blk and virtio-vsock against
// QEMU microvm's on the machine it runs on. `husk-dev bench-devices`
// (bench/devices.sh) stages it with the guest kernel, the minimal template
// image, husk-vmm and a QEMU bundle, and runs it inside the test host, or
// directly on hardware KVM. Build it static (CGO_ENABLED=0).
//
// Both VMMs boot the same vmlinux with the same command line, vCPUs and
// memory, and three read-only raw disks: the minimal template as root
// (/dev/vda), the guest program (/dev/vdb; guest.py, run by Python as
// PID 1) and a data disk of random bytes in a file written here (/dev/vdc),
// all opened through the host page cache (QEMU cache=writeback, like husk's
// raw backend). QEMU gets a vhost-vsock-device, husk-vmm its user-space
// vsock. The guest program times, with the guest's clock, one measurement
// per command it reads from its console:
//
//   - blk: one sequential read of the whole data disk in O_DIRECT reads of
//     -block-kib (MB/s), after a check of the first and last blocks'
//     SHA-256 against the image;
//   - lat: -lat O_DIRECT reads of 4 KiB, one at a time (median µs);
//   - rtt: -rtt vsock round trips of -msg bytes to a host echo server, after
//     a tenth as many unreported ones (median µs);
//   - up, down: -vsock-mib guest to host, host to guest (MB/s).
//
// During each measured blk read devbench samples the VMM's /proc/PID/smaps
// every 0.25 s, and once 0.2 s after it: its RSS and the bytes of the data
// image it has mapped (husk's raw backend reads through a mapping of the
// image, which it drops again; QEMU maps none).
//
// Both VMs run at the same time, one measuring while the other idles, so
// that the machine's changing load (other test hosts, here) hits both
// alike: each of -rounds rounds runs blk on A, B, B, A, then lat, rtt, up
// and down on A, then B, where A and B swap from round to round; every
// measurement starts after a short settling pause. Each of -boots boots
// starts both VMs afresh and runs one unreported warm-up round (page cache,
// first use of every path). A boot that fails is reported with what the
// VMMs left (a Go goroutine dump from husk-vmm) and the next one starts;
// its finished rounds count. The last line printed is
//
//	blk_read husk/qemu=<ratio of median MB/s> vsock_mbps husk=<n> qemu=<n> vsock_rtt_us husk=<n> qemu=<n>
//
// where vsock_mbps is the median over rounds of the harmonic mean of the
// two directions (both directions' bytes over both directions' time), and
// vsock_rtt_us the median over rounds of each round's median round trip.
// The exit status is non-zero if a boot failed.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/huskvm/husk/bench/qemubundle"
	"github.com/huskvm/husk/internal/shellquote"
)

type config struct {
	vmm, kernel, rootfs string
	qemu, qemuBundle    string
	machine, cmdline    string
	workdir             string
	data, writeData     string
	boots, rounds       int
	cpus, mem           int
	imageMiB, blockKiB  int
	vsockMiB, rtt, msg  int
	lat                 int
	bootTimeout         time.Duration
	stepTimeout         time.Duration
	only                string
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
	flag.StringVar(&c.rootfs, "rootfs", "", "the minimal template's ext4 image (required)")
	flag.StringVar(&c.qemu, "qemu", "", "qemu-system-x86_64 to run as is")
	flag.StringVar(&c.qemuBundle, "qemu-bundle", "", "QEMU bundle directory (bench/qemubundle) to run through its loader")
	flag.StringVar(&c.machine, "qemu-machine", DefaultMachine, "QEMU -M value")
	flag.StringVar(&c.cmdline, "cmdline", DefaultCmdline, "guest kernel command line, the same for both VMMs")
	flag.StringVar(&c.workdir, "workdir", filepath.Join(os.TempDir(), "devbench"), "where the data disk, the guest program and husk's vsock sockets go (the data disk should be in memory: tmpfs)")
	flag.StringVar(&c.data, "data", "", "an existing data disk image (from -write-data) to use instead of writing one to -workdir; it is read once first, which also fills the page cache")
	flag.StringVar(&c.writeData, "write-data", "", "only write a data disk image of -image-mib MiB to this path, and exit")
	flag.IntVar(&c.boots, "boots", 2, "boots of both VMs")
	flag.IntVar(&c.rounds, "rounds", 3, "measured rounds per boot")
	flag.IntVar(&c.cpus, "cpus", 1, "guest vCPUs")
	flag.IntVar(&c.mem, "mem", 256, "guest memory in MiB")
	flag.IntVar(&c.imageMiB, "image-mib", 256, "size of the data disk")
	flag.IntVar(&c.blockKiB, "block-kib", 1024, "bytes per guest read, in KiB")
	flag.IntVar(&c.vsockMiB, "vsock-mib", 32, "vsock bytes each way per round, in MiB")
	flag.IntVar(&c.rtt, "rtt", 500, "vsock round trips per round")
	flag.IntVar(&c.msg, "msg", 64, "bytes per round-trip message")
	flag.IntVar(&c.lat, "lat", 200, "4 KiB O_DIRECT reads per blk latency measurement")
	flag.DurationVar(&c.bootTimeout, "boot-timeout", 3*time.Minute, "exec to the guest program's READY")
	flag.DurationVar(&c.stepTimeout, "step-timeout", 2*time.Minute, "limit for one measurement")
	flag.StringVar(&c.only, "only", "", `run only "husk" or "qemu" (no ratio)`)
	flag.Var(&c.huskEnv, "husk-env", "KEY=VALUE added to husk-vmm's environment (repeatable; for investigations)")
	flag.Parse()
	if err := run(c); err != nil {
		fmt.Fprintf(os.Stderr, "devbench: %v\n", err)
		os.Exit(1)
	}
}

// measure is one kind of measurement: the guest command that runs it, the
// report entry that holds its result, and how often each VM runs it in a
// round.
type measure struct {
	name, key, unit string
	// reps is 1 or 2. With 2 the VMs go in the order A B B A, so that
	// neither gains from its place in the round: used for the figure the
	// target is about.
	reps    int
	command func(c config, warmup bool) string
}

// measures run in this order in every round.
var measures = []measure{
	{"blk", "BLK_READ_MBPS", "MB/s", 2, func(config, bool) string { return "blk" }},
	{"lat", "BLK_LAT_US", "µs", 1, func(c config, warmup bool) string { return "lat " + strconv.Itoa(warmCount(c.lat, warmup)) }},
	{"rtt", "VSOCK_RTT_US", "µs", 1, func(c config, warmup bool) string { return "rtt " + strconv.Itoa(warmCount(c.rtt, warmup)) }},
	{"up", "VSOCK_UP_MBPS", "MB/s", 1, func(c config, warmup bool) string { return "up " + strconv.Itoa(c.vsockBytes(warmup)) }},
	{"down", "VSOCK_DOWN_MBPS", "MB/s", 1, func(c config, warmup bool) string { return "down " + strconv.Itoa(c.vsockBytes(warmup)) }},
}

// settle is the pause before each measurement: what the previous one left
// running (the other guest closing its socket, the host's vhost worker)
// should not be charged to the next.
const settle = 500 * time.Millisecond

// warmCount is n, or a tenth of it in the warm-up round.
func warmCount(n int, warmup bool) int {
	if warmup {
		return max(1, n/10)
	}
	return n
}

// vsockBytes is how much a vsock transfer moves: in the warm-up round,
// enough to run the path, not to time it.
func (c config) vsockBytes(warmup bool) int {
	if warmup {
		return min(c.vsockMiB, 4) << 20
	}
	return c.vsockMiB << 20
}

func run(c config) error {
	if flag.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	if c.blockKiB < 4 || c.blockKiB%4 != 0 || c.imageMiB < 1 || c.imageMiB<<10%c.blockKiB != 0 {
		return errors.New("need -block-kib a multiple of 4 and -image-mib a multiple of -block-kib")
	}
	if c.writeData != "" {
		_, err := writeImage(c.writeData, c.imageMiB<<20, c.blockKiB<<10)
		return err
	}
	if c.vmm == "" || c.kernel == "" || c.rootfs == "" {
		return errors.New("-vmm, -kernel and -rootfs are required")
	}
	if c.boots < 1 || c.rounds < 1 || c.rtt < 1 || c.msg < 1 || c.vsockMiB < 1 || c.lat < 1 {
		return errors.New("need -boots, -rounds, -rtt, -msg, -vsock-mib and -lat ≥ 1")
	}
	vmms := []string{"husk", "qemu"}
	switch c.only {
	case "":
	case "husk", "qemu":
		vmms = []string{c.only}
	default:
		return fmt.Errorf("-only %q: want husk or qemu", c.only)
	}
	rel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	fmt.Printf("host: kernel %s, %d CPUs\n", bytes.TrimSpace(rel), runtime.NumCPU())
	if c.only != "husk" {
		if err := c.checkQEMU(); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(c.workdir, 0o755); err != nil {
		return err
	}
	d := disks{root: c.rootfs, script: filepath.Join(c.workdir, "guest.py.img"), data: c.data}
	start := time.Now()
	var want digests
	var size int64
	var err error
	if d.data == "" {
		d.data, size = filepath.Join(c.workdir, "data.img"), int64(c.imageMiB)<<20
		want, err = writeImage(d.data, int(size), c.blockKiB<<10)
		if err == nil {
			fmt.Printf("data disk: %s, %d MiB of random bytes, written in %.1fs (so in the page cache)\n", d.data, size>>20, time.Since(start).Seconds())
		}
	} else {
		want, size, err = readImage(d.data, c.blockKiB<<10)
		if err == nil {
			fmt.Printf("data disk: %s, %d MiB, read once in %.1fs (so in the page cache)\n", d.data, size>>20, time.Since(start).Seconds())
		}
	}
	if err != nil {
		return fmt.Errorf("data disk: %w", err)
	}
	if err := writeScript(d.script, params{ImageBytes: size, Block: c.blockKiB << 10, Msg: c.msg}); err != nil {
		return err
	}
	sock := filepath.Join(c.workdir, "husk.vsock")
	if err := startServers("unix", func(port uint32) (acceptor, error) { return listenUnix(fmt.Sprintf("%s_%d", sock, port)) }); err != nil {
		return err
	}
	if c.only != "husk" {
		if err := startServers("vsock", listenVsock); err != nil {
			return fmt.Errorf("%w (the host side of vhost-vsock needs the vhost_vsock module)", err)
		}
	}
	specs := map[string]vmSpec{
		"husk": {Name: "husk", Argv: c.huskArgv(d, sock), Env: c.huskEnv},
		"qemu": {Name: "qemu", Argv: c.qemuCmd(c.qemuArgs(d)...)},
	}
	fmt.Printf("guest: PVH %s, root %s, %d vCPU, %d MiB\ncmdline: %q\n", c.kernel, c.rootfs, c.cpus, c.mem, c.cmdline)
	for _, v := range vmms {
		fmt.Printf("%s: %s%s\n", v, envText(specs[v].Env), shellquote.Join(specs[v].Argv))
	}
	fmt.Printf("per round and VM: blk %d MiB in %d KiB O_DIRECT reads (twice, A B B A); lat %d reads of 4 KiB; rtt %d round trips of %d bytes; vsock %d MiB up, then down\n",
		size>>20, c.blockKiB, c.lat, c.rtt, c.msg, c.vsockMiB)
	fmt.Printf("%d boot(s) of both VMs at once, each with a warm-up round and %d measured rounds; the first VM alternates\n", c.boots, c.rounds)

	res := newResults()
	failed := 0
	for b := range c.boots {
		if err := c.boot(b, vmms, specs, sock, d.data, want, res); err != nil {
			failed++
			fmt.Printf("boot %d/%d FAILED: %v\n", b+1, c.boots, err)
		}
	}
	res.print(vmms)
	if len(vmms) == 2 {
		if err := res.verdict(); err != nil {
			return err
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d boots failed (their completed rounds are in the figures)", failed, c.boots)
	}
	return nil
}

// boot starts every VM, checks what the guests read, and runs a warm-up
// round and c.rounds measured rounds. On an error it prints what the VMMs
// left and stops them.
func (c config) boot(b int, vmms []string, specs map[string]vmSpec, sock, image string, want digests, res *results) (err error) {
	order := vmms
	if b%2 == 1 && len(vmms) == 2 {
		order = []string{vmms[1], vmms[0]}
	}
	vms := map[string]*vm{}
	defer func() {
		for _, name := range order {
			v := vms[name]
			if v == nil {
				continue
			}
			if err != nil {
				v.quit()
			}
			if serr := v.stop(); serr != nil && err == nil {
				err = serr
			}
			if err != nil {
				fmt.Fprint(os.Stderr, v.diagnostics())
			}
		}
	}()
	label := fmt.Sprintf("boot %d/%d", b+1, c.boots)
	t0 := time.Now()
	for _, name := range order {
		if name == "husk" {
			os.Remove(sock) // husk-vmm listens there; a killed one leaves the file
		}
		v, err := startVM(specs[name])
		if err != nil {
			return err
		}
		vms[name] = v
	}
	for _, name := range order {
		got, err := vms[name].await("READY", c.bootTimeout)
		if err != nil {
			return err
		}
		if err := want.check(got); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		fmt.Printf("%s  %-4s ready %.1fs after the start; guest blk queue %s\n", label, name, time.Since(t0).Seconds(), got["BLK_LIMITS"])
	}
	for r := -1; r < c.rounds; r++ {
		warmup := r < 0
		first := order
		if r%2 == 0 {
			first = slices.Clone(order)
			slices.Reverse(first)
		}
		rl := "warm-up"
		if !warmup {
			rl = fmt.Sprintf("round %d/%d", r+1, c.rounds)
		}
		for _, m := range measures {
			seq := first
			if m.reps == 2 && !warmup {
				seq = append(slices.Clone(first), first...)
				slices.Reverse(seq[len(first):])
			}
			vals := map[string][]float64{}
			var parts []string
			for _, name := range seq {
				time.Sleep(settle)
				var sampler *memSampler
				if m.name == "blk" && !warmup {
					sampler = startSampling(vms[name].cmd.Process.Pid, image)
				}
				got, err := vms[name].do(m.command(c, warmup), m.key, c.stepTimeout)
				var mem memSamples
				if sampler != nil {
					var serr error
					if mem, serr = sampler.finish(); serr != nil && err == nil {
						err = fmt.Errorf("%s: memory: %w", name, serr)
					}
				}
				if err != nil {
					return err
				}
				x, err := strconv.ParseFloat(got[m.key], 64)
				if err != nil {
					return fmt.Errorf("%s: %s %q: %w", name, m.key, got[m.key], err)
				}
				vals[name] = append(vals[name], x)
				part := fmt.Sprintf("%s %.1f", name, x)
				if sampler != nil {
					res.addMemory(name, mem)
					part += fmt.Sprintf(" (image mapped: peak %.1f MiB of %d samples, %.1f %v after)", mib(mem.peak.image), mem.n, mib(mem.idle.image), memIdle)
				}
				if k := got["BLK_REQUEST_KIB"]; k != "" && warmup {
					part += fmt.Sprintf(" (%s KiB/request)", k)
				}
				parts = append(parts, part)
			}
			if !warmup {
				res.add(m.name, vals)
			}
			fmt.Printf("%s  %-11s %-4s  %s %s\n", label, rl, m.name, strings.Join(parts, "  "), m.unit)
		}
	}
	return nil
}

// checkQEMU fails clearly when QEMU or vhost-vsock is missing.
func (c config) checkQEMU() error {
	if c.qemu == "" && c.qemuBundle == "" {
		return errors.New("need -qemu or -qemu-bundle (or -only husk)")
	}
	if _, err := os.Stat("/dev/vhost-vsock"); err != nil {
		return fmt.Errorf("vhost-vsock is absent (%w): QEMU's vhost-vsock-device needs the vhost_vsock module", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	argv := c.qemuCmd("-version")
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("QEMU cannot run: %s: %v: %s", shellquote.Join(argv), err, bytes.TrimSpace(out))
	}
	fmt.Printf("qemu: %s\n", bytes.SplitN(bytes.TrimSpace(out), []byte("\n"), 2)[0])
	return nil
}

func (c config) qemuCmd(args ...string) []string {
	if c.qemuBundle != "" {
		return qemubundle.Command(c.qemuBundle, args...)
	}
	return append([]string{c.qemu}, args...)
}

// digests are the SHA-256 of the data disk's first and last blocks.
type digests struct{ first, last string }

// writeImage writes size random bytes to path and returns the digests of
// its first and last blocks. The file is written just before the runs, so
// its pages are in the page cache for both VMMs (on tmpfs they are the
// file).
func writeImage(path string, size, block int) (digests, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o444)
	if err != nil {
		return digests{}, err
	}
	defer f.Close()
	rng := rand.NewChaCha8([32]byte{'d', 'e', 'v', 'b', 'e', 'n', 'c', 'h'})
	buf := make([]byte, block)
	var d digests
	for off := 0; off < size; off += block {
		rng.Read(buf)
		if off == 0 {
			d.first = sha(buf)
		}
		if off+block == size {
			d.last = sha(buf)
		}
		if _, err := f.Write(buf); err != nil {
			return digests{}, err
		}
	}
	return d, f.Close()
}

// readImage reads the image at path once, which leaves it in the page
// cache, and returns the digests of its first and last blocks and its size.
func readImage(path string, block int) (digests, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return digests{}, 0, err
	}
	defer f.Close()
	buf := make([]byte, block)
	var d digests
	var size int64
	for {
		n, err := io.ReadFull(f, buf)
		if err == io.EOF {
			break
		}
		if err != nil {
			return digests{}, 0, fmt.Errorf("%s: %w (the size must be a multiple of %d)", path, err, block)
		}
		if size == 0 {
			d.first = sha(buf[:n])
		}
		d.last = sha(buf[:n])
		size += int64(n)
	}
	if size == 0 {
		return digests{}, 0, fmt.Errorf("%s is empty", path)
	}
	return d, size, nil
}

func sha(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// check compares the guest's digests of the data disk's first and last
// blocks with the image's.
func (want digests) check(got map[string]string) error {
	for _, d := range []struct{ key, want string }{{"BLK_SHA256_FIRST", want.first}, {"BLK_SHA256_LAST", want.last}} {
		if got[d.key] != d.want {
			return fmt.Errorf("%s: the guest read %q, the image has %s", d.key, got[d.key], d.want)
		}
	}
	return nil
}

// memRows are the memory figures sampled around blk reads.
var memRows = []string{"img_peak", "img_idle", "rss_peak"}

// results are the measured figures.
type results struct {
	vals map[string]map[string][]float64 // measure name → VMM → values, in order
	// blkRatios holds each round's husk/QEMU ratio of mean blk MB/s.
	blkRatios []float64
}

func newResults() *results {
	r := &results{vals: map[string]map[string][]float64{}}
	for _, m := range measures {
		r.vals[m.name] = map[string][]float64{}
	}
	for _, m := range memRows {
		r.vals[m] = map[string][]float64{}
	}
	return r
}

// addMemory records a VMM's memory samples around a blk read (MiB).
func (r *results) addMemory(vmm string, s memSamples) {
	for i, x := range []int64{s.peak.image, s.idle.image, s.peak.rss} {
		r.vals[memRows[i]][vmm] = append(r.vals[memRows[i]][vmm], mib(x))
	}
}

// add records one round of a measure.
func (r *results) add(measure string, vals map[string][]float64) {
	for vmm, xs := range vals {
		r.vals[measure][vmm] = append(r.vals[measure][vmm], xs...)
	}
	if h, q := vals["husk"], vals["qemu"]; measure == "blk" && len(h) > 0 && len(q) > 0 {
		r.blkRatios = append(r.blkRatios, mean(h)/mean(q))
	}
}

func (r *results) get(measure, vmm string) []float64 { return r.vals[measure][vmm] }

// vsock returns a VMM's per-round vsock throughput: the harmonic mean of
// the round's up and down rates.
func (r *results) vsock(vmm string) []float64 {
	up, down := r.get("up", vmm), r.get("down", vmm)
	out := make([]float64, min(len(up), len(down)))
	for i := range out {
		out[i] = harmonic(up[i], down[i])
	}
	return out
}

// print prints the summary table.
func (r *results) print(vmms []string) {
	fmt.Printf("\n%-11s %-4s %3s %9s %9s %9s\n", "", "", "n", "median", "min", "max")
	rows := []struct {
		name, unit string
		get        func(vmm string) []float64
	}{
		{"blk_read", "MB/s, one sequential read of the data disk", func(v string) []float64 { return r.get("blk", v) }},
		{"blk_lat", "µs, median 4 KiB read of a round", func(v string) []float64 { return r.get("lat", v) }},
		{"vsock_rtt", "µs, median round trip of a round", func(v string) []float64 { return r.get("rtt", v) }},
		{"vsock_up", "MB/s, guest to host", func(v string) []float64 { return r.get("up", v) }},
		{"vsock_down", "MB/s, host to guest", func(v string) []float64 { return r.get("down", v) }},
		{"vsock", "MB/s, harmonic mean of up and down", r.vsock},
		{"img_peak", "MiB of the data image mapped in the VMM, most of a blk read's samples", func(v string) []float64 { return r.get("img_peak", v) }},
		{"img_idle", "the same, " + memIdle.String() + " after the read", func(v string) []float64 { return r.get("img_idle", v) }},
		{"rss_peak", "MiB, the VMM's RSS, most of a blk read's samples", func(v string) []float64 { return r.get("rss_peak", v) }},
	}
	for _, row := range rows {
		for k, v := range vmms {
			x := summarize(row.get(v))
			name, unit := "", ""
			if k == 0 {
				name, unit = row.name, "("+row.unit+")"
			}
			fmt.Printf("%-11s %-4s %3d %9.1f %9.1f %9.1f   %s\n", name, v, x.N, x.Median, x.Min, x.Max, unit)
		}
	}
}

// verdict prints the target and the result line of a comparison.
func (r *results) verdict() error {
	hb, qb := summarize(r.get("blk", "husk")), summarize(r.get("blk", "qemu"))
	if hb.N == 0 || qb.N == 0 {
		return errors.New("no measured rounds to compare")
	}
	pr := summarize(r.blkRatios)
	ratio := hb.Median / qb.Median
	met := "met"
	if ratio < 1 {
		met = "NOT met"
	}
	fmt.Printf("\nblk_read husk/qemu per round: median %.2f, min %.2f, max %.2f\n", pr.Median, pr.Min, pr.Max)
	fmt.Printf("target: blk_read husk/qemu >= 1.00: %s\n", met)
	fmt.Printf("blk_read husk/qemu=%.2f vsock_mbps husk=%.1f qemu=%.1f vsock_rtt_us husk=%.0f qemu=%.0f\n",
		ratio, summarize(r.vsock("husk")).Median, summarize(r.vsock("qemu")).Median,
		summarize(r.get("rtt", "husk")).Median, summarize(r.get("rtt", "qemu")).Median)
	return nil
}

func envText(env []string) string {
	if len(env) == 0 {
		return ""
	}
	return "env " + shellquote.Join(env) + " "
}
