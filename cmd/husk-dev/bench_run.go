package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/huskvm/husk/internal/devenv"
	"github.com/huskvm/husk/internal/sandbox"
	"github.com/huskvm/husk/internal/testhost"
)

func init() { commands["bench-run"] = benchRunCmd }

// benchRunCmd stages husk, husk-vmm, the guest kernel, the test initrd,
// runbench and a template image with this build's agent, and runs
// bench/runbench where Linux guests run: directly on hardware KVM, inside
// the test host elsewhere (the test host's own boot is not measured).
// runbench's stdout is passed through; its last line is the result (see
// bench/runbench).
func benchRunCmd(args []string) error {
	fs := flag.NewFlagSet("husk-dev bench-run", flag.ContinueOnError)
	execN := fs.Int("exec", 200, "measured exec round trips, each in the VM and on the host")
	execWarmup := fs.Int("exec-warmup", 20, "unmeasured exec round trips first")
	rounds := fs.Int("rounds", 10, "measured rounds of husk run, boot to the agent and cold boot")
	warmup := fs.Int("warmup", 1, "unmeasured rounds first")
	cpus := fs.Int("cpus", 1, "vCPUs of every VM (husk run's default is 2; see docs/BENCHMARKS.md)")
	mem := fs.Int("mem", 512, "memory of every VM in MiB (husk run's default)")
	tmpl := fs.String("template", "base", "template the VMs boot (guest/templates/NAME.json), with this build's agent")
	bootTimeout := fs.Duration("boot-timeout", 3*time.Minute, "limit for a boot to the agent's answer, the first output or the init marker")
	stepTimeout := fs.Duration("step-timeout", 30*time.Second, "limit for one exec, and for a VM or husk to go after its measurement")
	silence := fs.Duration("silence", 10*time.Minute, "stop when runbench prints nothing for this long (a stuck test host)")
	var host benchHost
	host.flags(fs, 60*time.Minute)
	if ok, err := parseArgs(fs, args); !ok {
		return err
	}
	ctx, cancel := runContext(host.timeout)
	defer cancel()
	ctx, stopSilent := context.WithCancelCause(ctx)
	defer stopSilent(nil)

	tmp, err := os.MkdirTemp("", "husk-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bins := map[string]string{}
	for name, pkg := range map[string]string{"runbench": "./bench/runbench", "husk": "./cmd/husk", "husk-agent": "./cmd/husk-agent"} {
		bins[name] = filepath.Join(tmp, name)
		if err := testhost.GoBuild(ctx, bins[name], pkg, false); err != nil {
			return err
		}
	}
	rootfs, err := devenv.AgentRootfs(ctx, *tmpl, bins["husk-agent"], os.Stderr)
	if err != nil {
		return fmt.Errorf("template %s: %w", *tmpl, err)
	}
	a, err := devenv.Stage(ctx, filepath.Join(tmp, "stage"), os.Stderr,
		map[string]string{"runbench": bins["runbench"], "husk": bins["husk"]})
	if err != nil {
		return err
	}
	place := sandbox.Place(ctx, a.VMM)
	fmt.Fprintln(os.Stderr, "husk:", place.Reason)
	watch := newSilenceWatch(ctx, *silence, stopSilent)
	stdout, stderr := watch.writer(os.Stdout), watch.writer(os.Stderr)

	benchArgs := func(dir, rootfs, trueRoot string) []string {
		in := func(p string) string { return filepath.Join(dir, filepath.Base(p)) }
		return []string{in("runbench"),
			"-husk", in("husk"), "-vmm", in(a.VMM), "-kernel", in(a.Vmlinux), "-initrd", in(a.Initrd),
			"-rootfs", rootfs, "-true-root", trueRoot,
			"-cpus", strconv.Itoa(*cpus), "-mem", strconv.Itoa(*mem),
			"-exec", strconv.Itoa(*execN), "-exec-warmup", strconv.Itoa(*execWarmup),
			"-rounds", strconv.Itoa(*rounds), "-warmup", strconv.Itoa(*warmup),
			"-boot-timeout", bootTimeout.String(), "-step-timeout", stepTimeout.String(),
		}
	}

	if place.Direct {
		// The host's /bin/true is the template's, chrooted in a read-only
		// mount of the image, as the test host mounts it.
		if os.Geteuid() != 0 {
			return errors.New("the host side chroots into the template image: run as root")
		}
		root := filepath.Join(tmp, "rootfs")
		if err := os.Mkdir(root, 0o755); err != nil {
			return err
		}
		if out, err := exec.CommandContext(ctx, "mount", "-o", "ro,loop,noload", rootfs, root).CombinedOutput(); err != nil {
			return fmt.Errorf("mount %s: %v: %s", rootfs, err, out)
		}
		defer exec.Command("umount", root).Run()
		argv := benchArgs(a.Dir, rootfs, root)
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Stdout, cmd.Stderr = stdout, stderr
		if err := cmd.Run(); err != nil {
			if cause := context.Cause(ctx); cause != nil {
				return cause
			}
			return err
		}
		return nil
	}

	// The template goes in raw: hostinit links it at /dev/disk/husk/rootfs,
	// which the VMs boot, and mounts it read-only at /artifacts/rootfs, where
	// the host side finds the same /bin/true.
	const inside, disk = "/artifacts/bench", "rootfs"
	return host.run(ctx, "runbench", testhost.Spec{
		Disks:  []testhost.Disk{{Name: "bench", Path: a.Dir}, {Name: disk, Path: rootfs}},
		Args:   benchArgs(inside, "/dev/disk/husk/"+disk, "/artifacts/"+disk),
		Stdout: stdout,
		Stderr: stderr,
	})
}

// silenceWatch ends a run whose command has printed nothing for a while:
// runbench bounds each of its own waits, but it cannot run at all when the
// test host's CPUs are stuck in its kernel (seen: soft lockups in nested
// KVM, docs/BENCHMARKS.md), and the test host's own limit is the whole run's.
type silenceWatch struct {
	last atomic.Int64 // time of the last output, Unix nanoseconds
}

// newSilenceWatch starts watching: stop is called once nothing has been
// written through the watch's writers for limit.
func newSilenceWatch(ctx context.Context, limit time.Duration, stop context.CancelCauseFunc) *silenceWatch {
	w := &silenceWatch{}
	w.last.Store(time.Now().UnixNano())
	go func() {
		tick := time.NewTicker(limit / 30)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-tick.C:
				if quiet := now.Sub(time.Unix(0, w.last.Load())); quiet >= limit {
					stop(fmt.Errorf("runbench printed nothing for %v: stopping", quiet.Round(time.Second)))
					return
				}
			}
		}
	}()
	return w
}

// writer passes writes on to out, noting their time.
func (w *silenceWatch) writer(out io.Writer) io.Writer { return silenceWriter{w, out} }

type silenceWriter struct {
	w   *silenceWatch
	out io.Writer
}

func (s silenceWriter) Write(p []byte) (int, error) {
	s.w.last.Store(time.Now().UnixNano())
	return s.out.Write(p)
}
