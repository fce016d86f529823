package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/huskvm/husk/bench/qemubundle"
	"github.com/huskvm/husk/internal/cache"
	"github.com/huskvm/husk/internal/devenv"
	"github.com/huskvm/husk/internal/sandbox"
	"github.com/huskvm/husk/internal/testhost"
)

func init() { commands["bench-devices"] = benchDevicesCmd }

// benchDevicesCmd stages the guest kernel, the minimal template, husk-vmm,
// devbench and (in the test host) a QEMU bundle, and runs bench/devbench
// where Linux guests run, as bench-boot does. devbench's stdout is passed
// through; its last line is the result (see bench/devbench).
func benchDevicesCmd(args []string) error {
	fs := flag.NewFlagSet("husk-dev bench-devices", flag.ContinueOnError)
	boots := fs.Int("boots", 2, "boots of both VMs")
	rounds := fs.Int("rounds", 3, "measured rounds per boot (after a warm-up round)")
	imageMiB := fs.Int("image-mib", 256, "size of the data disk the guest reads")
	dataOnDisk := fs.Bool("data-on-disk", false, "put the data disk's image on an artifact disk (ext4, like a real image store) instead of the test host's tmpfs")
	blockKiB := fs.Int("block-kib", 1024, "bytes per guest O_DIRECT read, in KiB")
	vsockMiB := fs.Int("vsock-mib", 32, "vsock MiB each way per round")
	rtt := fs.Int("rtt", 500, "vsock round trips per round")
	lat := fs.Int("lat", 200, "4 KiB O_DIRECT reads per blk latency measurement")
	cpus := fs.Int("cpus", 1, "guest vCPUs")
	only := fs.String("only", "", `run only "husk" or "qemu" (no ratio)`)
	var huskEnv envList
	fs.Var(&huskEnv, "husk-env", "KEY=VALUE added to husk-vmm's environment (repeatable; for investigations)")
	bootTimeout := fs.Duration("boot-timeout", 3*time.Minute, "limit from the start of a VM to its guest program's READY")
	stepTimeout := fs.Duration("step-timeout", 2*time.Minute, "limit for one measurement")
	var host benchHost
	host.flags(fs, 30*time.Minute)
	if ok, err := parseArgs(fs, args); !ok {
		return err
	}
	ctx, cancel := runContext(host.timeout)
	defer cancel()

	tmp, err := os.MkdirTemp("", "husk-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bench := filepath.Join(tmp, "devbench")
	if err := testhost.GoBuild(ctx, bench, "./bench/devbench", false); err != nil {
		return err
	}
	rootfs, err := devenv.Rootfs(ctx, "minimal", os.Stderr)
	if err != nil {
		return err
	}
	const rootName = "minimal.ext4"
	a, err := devenv.Stage(ctx, filepath.Join(tmp, "stage"), os.Stderr, map[string]string{"devbench": bench, rootName: rootfs})
	if err != nil {
		return err
	}
	var dataDir string
	if *dataOnDisk {
		if dataDir, err = dataImage(ctx, bench, *imageMiB); err != nil {
			return err
		}
	}
	place := sandbox.Place(ctx, a.VMM)
	fmt.Fprintln(os.Stderr, "husk:", place.Reason)

	// benchArgs is devbench's command line, with the staged files in dir
	// and the data image at data ("": devbench writes one to its tmpfs).
	benchArgs := func(dir, data string) []string {
		in := func(p string) string { return filepath.Join(dir, filepath.Base(p)) }
		argv := []string{in(bench),
			"-vmm", in(a.VMM), "-kernel", in(a.Vmlinux), "-rootfs", in(rootName),
			"-boots", strconv.Itoa(*boots), "-rounds", strconv.Itoa(*rounds),
			"-image-mib", strconv.Itoa(*imageMiB), "-block-kib", strconv.Itoa(*blockKiB),
			"-vsock-mib", strconv.Itoa(*vsockMiB), "-rtt", strconv.Itoa(*rtt), "-lat", strconv.Itoa(*lat), "-cpus", strconv.Itoa(*cpus),
			"-boot-timeout", bootTimeout.String(), "-step-timeout", stepTimeout.String(),
		}
		if *only != "" {
			argv = append(argv, "-only", *only)
		}
		if data != "" {
			argv = append(argv, "-data", data)
		}
		for _, e := range huskEnv {
			argv = append(argv, "-husk-env", e)
		}
		return argv
	}
	needQEMU := *only != "husk"

	if place.Direct {
		data := ""
		if dataDir != "" {
			data = filepath.Join(dataDir, dataName)
		}
		argv := benchArgs(a.Dir, data)
		if needQEMU {
			argv = append(argv, "-qemu", qemubundle.System)
		}
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		return cmd.Run()
	}

	disks := []testhost.Disk{{Name: "bench", Path: a.Dir}}
	data := ""
	if dataDir != "" {
		disks = append(disks, testhost.Disk{Name: "data", Path: dataDir})
		data = "/artifacts/data/" + dataName
	}
	spec := testhost.Spec{
		Disks: disks,
		Args:  benchArgs("/artifacts/bench", data),
		// Without -data-on-disk devbench writes the data disk to /tmp, the
		// test host's tmpfs.
		ScratchMiB: max(testhost.DefaultScratchMiB, *imageMiB+512),
		Stdout:     os.Stdout,
		Stderr:     os.Stderr,
	}
	if needQEMU {
		if err := addQEMU(ctx, &spec); err != nil {
			return err
		}
	}
	return host.run(ctx, "devbench", spec)
}

// dataName is the data image's name in its directory.
const dataName = "data.img"

// dataLayout is part of the data image's cache key: bump it when devbench
// writes different bytes.
const dataLayout = "1"

// dataImage returns a cache directory holding devbench's data image of
// imageMiB MiB (its bytes depend on nothing else), writing it with devbench
// -write-data the first time.
func dataImage(ctx context.Context, devbench string, imageMiB int) (string, error) {
	parent, err := cache.Dir("bench", "devices")
	if err != nil {
		return "", err
	}
	final := filepath.Join(parent, fmt.Sprintf("data-%dMiB-%s", imageMiB, dataLayout))
	if cache.Exists(final) {
		return final, nil
	}
	fmt.Fprintf(os.Stderr, "writing the %d MiB data image to %s\n", imageMiB, final)
	err = cache.Publish(final, func(tmp string) error {
		out, err := exec.CommandContext(ctx, devbench, "-write-data", filepath.Join(tmp, dataName), "-image-mib", strconv.Itoa(imageMiB)).CombinedOutput()
		if err != nil {
			return fmt.Errorf("devbench -write-data: %w: %s", err, out)
		}
		return nil
	})
	return final, err
}
