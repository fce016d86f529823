package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/huskvm/husk/internal/devenv"
	"github.com/huskvm/husk/internal/sandbox"
	"github.com/huskvm/husk/internal/testhost"
)

func init() { commands["boot"] = bootCmd }

// bootCmdline boots the test init in its "uname" mode: it prints the kernel
// version, alone on its line, and reboots.
const bootCmdline = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.dumbkbd quiet husk.mode=uname"

// bootCmd boots the guest kernel in a fresh microVM under husk-vmm and
// prints what the guest prints: its kernel version. It runs directly on
// hardware KVM and inside the test host elsewhere, saying which in one line
// on stderr.
func bootCmd(args []string) error {
	fs := flag.NewFlagSet("husk-dev boot", flag.ContinueOnError)
	cpus := fs.Int("cpus", 1, "vCPUs of the microVM")
	mem := fs.Int("mem", 128, "memory of the microVM in MiB")
	timeout := fs.Duration("timeout", 5*time.Minute, "limit for the whole run")
	if ok, err := parseArgs(fs, args); !ok {
		return err
	}
	ctx, cancel := runContext(*timeout)
	defer cancel()

	stage, err := os.MkdirTemp("", "husk-boot-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	a, err := devenv.Stage(ctx, stage, os.Stderr, nil)
	if err != nil {
		return err
	}
	place := sandbox.Place(ctx, a.VMM)
	fmt.Fprintln(os.Stderr, "husk:", place.Reason)
	vmmArgs := func(dir string) []string {
		return []string{
			"--kernel", filepath.Join(dir, filepath.Base(a.Vmlinux)),
			"--initrd", filepath.Join(dir, filepath.Base(a.Initrd)),
			"--cpus", fmt.Sprint(*cpus), "--mem", fmt.Sprint(*mem),
			"--timeout", "2m", "--cmdline", bootCmdline,
		}
	}
	if place.Direct {
		cmd := exec.CommandContext(ctx, a.VMM, vmmArgs(a.Dir)...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		return cmd.Run()
	}
	const inside = "/artifacts/boot"
	code, err := testhost.Run(ctx, testhost.Spec{
		Disks:    []testhost.Disk{{Name: "boot", Path: a.Dir}},
		Args:     append([]string{filepath.Join(inside, "husk-vmm")}, vmmArgs(inside)...),
		Stdout:   os.Stdout,
		Stderr:   os.Stderr,
		Progress: os.Stderr,
		Timeout:  *timeout,
	})
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("husk-vmm exited with status %d", code)
	}
	return nil
}
