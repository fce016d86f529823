package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/huskvm/husk/bench/qemubundle"
	"github.com/huskvm/husk/internal/devenv"
	"github.com/huskvm/husk/internal/sandbox"
	"github.com/huskvm/husk/internal/testhost"
)

func init() { commands["bench-boot"] = benchBootCmd }

// benchBootCmd stages the guest, husk-vmm, bootbench and (in the test host)
// a QEMU bundle, and runs bench/bootbench where Linux guests run: directly
// on hardware KVM, inside the test host elsewhere. bootbench's stdout is
// passed through; its last line is the result (see bench/bootbench).
func benchBootCmd(args []string) error {
	fs := flag.NewFlagSet("husk-dev bench-boot", flag.ContinueOnError)
	pairs := fs.Int("pairs", 15, "measured husk/QEMU pairs")
	warmup := fs.Int("warmup", 1, "unmeasured pairs first")
	hang := fs.Int("hang", 0, "hang-rate mode: boot husk this many times (e.g. 100) instead of comparing")
	hangCPUs := fs.String("hang-cpus", "1,2,4", "vCPU counts the -hang boots cycle through")
	hangVMM := fs.String("hang-vmm", "husk", `VMM of the -hang boots: husk, or qemu for comparison`)
	bootTimeout := fs.Duration("boot-timeout", 60*time.Second, "per boot: limit to the init marker (and from it to the exit with -hang)")
	detail := fs.Bool("detail", false, "print the memory map of the last measured boot of each VMM")
	only := fs.String("only", "", `run only "husk" or "qemu" (no ratio)`)
	machine := fs.String("qemu-machine", "", "QEMU -M value (default: bootbench's microvm line)")
	cmdline := fs.String("cmdline", "", "guest command line for both VMMs (default: bootbench's)")
	var huskEnv envList
	fs.Var(&huskEnv, "husk-env", "KEY=VALUE added to husk-vmm's environment (repeatable; for investigations)")
	var host benchHost
	host.flags(fs, 60*time.Minute)
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
	bench := filepath.Join(tmp, "bootbench")
	if err := testhost.GoBuild(ctx, bench, "./bench/bootbench", false); err != nil {
		return err
	}
	a, err := devenv.Stage(ctx, filepath.Join(tmp, "stage"), os.Stderr, map[string]string{"bootbench": bench})
	if err != nil {
		return err
	}
	place := sandbox.Place(ctx, a.VMM)
	fmt.Fprintln(os.Stderr, "husk:", place.Reason)

	benchArgs := func(dir string) []string {
		in := func(p string) string { return filepath.Join(dir, filepath.Base(p)) }
		argv := []string{in(bench),
			"-vmm", in(a.VMM), "-kernel", in(a.Vmlinux), "-initrd", in(a.Initrd),
			"-pairs", strconv.Itoa(*pairs), "-warmup", strconv.Itoa(*warmup),
			"-hang", strconv.Itoa(*hang), "-hang-cpus", *hangCPUs, "-hang-vmm", *hangVMM,
			"-timeout", bootTimeout.String(), "-detail=" + strconv.FormatBool(*detail),
		}
		if *only != "" {
			argv = append(argv, "-only", *only)
		}
		if *machine != "" {
			argv = append(argv, "-qemu-machine", *machine)
		}
		if *cmdline != "" {
			argv = append(argv, "-cmdline", *cmdline)
		}
		for _, e := range huskEnv {
			argv = append(argv, "-husk-env", e)
		}
		return argv
	}
	needQEMU := *only != "husk"
	if *hang > 0 {
		needQEMU = *hangVMM == "qemu"
	}

	if place.Direct {
		argv := benchArgs(a.Dir)
		if needQEMU {
			argv = append(argv, "-qemu", qemubundle.System)
		}
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		return cmd.Run()
	}

	spec := testhost.Spec{
		Disks:  []testhost.Disk{{Name: "bench", Path: a.Dir}},
		Args:   benchArgs("/artifacts/bench"),
		Stdout: os.Stdout,
		Stderr: os.Stderr,
	}
	if needQEMU {
		if err := addQEMU(ctx, &spec); err != nil {
			return err
		}
	}
	return host.run(ctx, "bootbench", spec)
}
