//go:build linux

// Command guestinit is /init of the end-to-end test initrd: it reports what
// the guest sees on the console and then reboots, panics or hangs as the
// kernel command line asks. Build it static (CGO_ENABLED=0); `husk-dev
// initrd` wraps it in a newc cpio archive.
//
// Kernel command line:
//
//	husk.token=<s>   echoed back as HUSK_TOKEN=<s>
//	husk.mode=reboot (default) report, sync, reboot(2) RESTART
//	husk.mode=panic  report, then exit: "Kernel panic - not syncing: Attempted to kill init!"
//	husk.mode=uname  print only the `uname -r` line, then reboot
//	husk.mode=hang   report, then sleep forever
//
// Report, one write to the console:
//
//	HUSK_UNAME=<uname -r>
//	HUSK_TOKEN=<husk.token>
//	HUSK_NPROC=<online CPUs>
//	HUSK_MEMTOTAL_KB=<MemTotal>
//	HUSK_CLOCKSOURCE=<current clocksource>
//	HUSK_ERROR=<problem>        (only if something could not be read)
//	HUSK_INIT_DONE
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

func main() {
	var errs []string
	for _, m := range []struct{ fstype, target string }{
		{"proc", "/proc"},
		{"sysfs", "/sys"},
		{"devtmpfs", "/dev"},
	} {
		if err := mount(m.fstype, m.target); err != nil {
			errs = append(errs, err.Error())
		}
	}
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		errs = append(errs, fmt.Sprintf("read /proc/cmdline: %v", err))
	}
	p := ParseCmdline(string(cmdline))

	if p.Mode == ModeUname {
		console(uname(&errs) + "\n")
		// The kernel's own "reboot: Restarting system" (KERN_EMERG) would
		// follow the version: console log level 0 silences even that, so the
		// last line on the console is ours. (syslog(2) cannot go below 1.)
		os.WriteFile("/proc/sys/kernel/printk", []byte("0"), 0)
		reboot()
	}

	r := Report{Uname: uname(&errs), Token: p.Token}
	if p.UnknownMode != "" {
		errs = append(errs, fmt.Sprintf("unknown husk.mode %q, rebooting", p.UnknownMode))
	}
	r.NProc = nproc(&errs)
	if b, err := os.ReadFile("/proc/meminfo"); err != nil {
		errs = append(errs, fmt.Sprintf("read /proc/meminfo: %v", err))
	} else if r.MemTotalKB, err = MemTotalKB(b); err != nil {
		errs = append(errs, fmt.Sprintf("/proc/meminfo: %v", err))
	}
	const csPath = "/sys/devices/system/clocksource/clocksource0/current_clocksource"
	if b, err := os.ReadFile(csPath); err != nil {
		errs = append(errs, fmt.Sprintf("read %s: %v", csPath, err))
	} else {
		r.Clocksource = strings.TrimSpace(string(b))
	}
	r.Errors = errs
	console(r.Lines())

	switch p.Mode {
	case ModePanic:
		// PID 1 exiting makes the kernel panic ("Attempted to kill init!");
		// with panic=-1 on the command line the guest then reboots at once.
		os.Exit(1)
	case ModeHang:
		for {
			// A blocking syscall rather than select{}: with no goroutine left
			// runnable the Go runtime would report a deadlock and exit.
			unix.Pause()
		}
	default:
		reboot()
	}
}

// mount mounts a pseudo file system, creating the mount point if needed; a
// file system that is already there (EBUSY) is fine.
func mount(fstype, target string) error {
	if err := os.MkdirAll(target, 0o755); err != nil {
		return fmt.Errorf("mkdir %s: %w", target, err)
	}
	err := unix.Mount(fstype, target, fstype, unix.MS_NOSUID|unix.MS_NOEXEC, "")
	if err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("mount %s on %s: %w", fstype, target, err)
	}
	return nil
}

func uname(errs *[]string) string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		*errs = append(*errs, fmt.Sprintf("uname: %v", err))
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

// nproc counts the CPUs init may run on, falling back to the online list.
func nproc(errs *[]string) int {
	var set unix.CPUSet
	err := unix.SchedGetaffinity(0, &set)
	if err == nil {
		return set.Count()
	}
	*errs = append(*errs, fmt.Sprintf("sched_getaffinity: %v", err))
	b, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		*errs = append(*errs, fmt.Sprintf("read cpu/online: %v", err))
		return 0
	}
	n, err := CountCPUList(string(b))
	if err != nil {
		*errs = append(*errs, err.Error())
	}
	return n
}

// console writes s to the console in one write(2), so that kernel messages
// cannot land in the middle of the report.
func console(s string) {
	os.Stdout.WriteString(s)
}

// reboot syncs and restarts the machine; the VMM sees the reset and exits.
// If reboot(2) fails init exits, which panics the kernel: either way the
// guest stops.
func reboot() {
	unix.Sync()
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	console(fmt.Sprintf("HUSK_ERROR=reboot: %v\n", err))
	os.Exit(2)
}
