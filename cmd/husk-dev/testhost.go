package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/huskvm/husk/internal/cache"
	"github.com/huskvm/husk/internal/testhost"
)

func init() { commands["testhost"] = testhostCmd }

// diskFlags collects repeated -disk name=path flags.
type diskFlags []testhost.Disk

func (d *diskFlags) String() string { return fmt.Sprint(*d) }

func (d *diskFlags) Set(v string) error {
	name, path, ok := strings.Cut(v, "=")
	if !ok || name == "" || path == "" {
		return errors.New("want name=path")
	}
	*d = append(*d, testhost.Disk{Name: name, Path: path})
	return nil
}

// envFlags collects repeated -env KEY=VALUE flags.
type envFlags []string

func (e *envFlags) String() string { return strings.Join(*e, " ") }

func (e *envFlags) Set(v string) error {
	if !strings.Contains(v, "=") {
		return errors.New("want KEY=VALUE")
	}
	*e = append(*e, v)
	return nil
}

// testhostCmd runs a command in a throwaway test host (QEMU TCG with a
// nested-capable KVM inside); see docs/testhost.md.
func testhostCmd(args []string) error {
	fs := flag.NewFlagSet("testhost", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: husk-dev testhost [flags] -- CMD ARGS...
       husk-dev testhost -prepare

Runs CMD in a fresh test host (QEMU TCG + Debian cloud kernel with kvm_amd,
so /dev/kvm works inside) with stdin, stdout and stderr connected, and exits
with its status. CMD is a path inside the test host, e.g. /artifacts/bin/x
for -disk bin=DIR, or a name found in /artifacts/<disk>/bin.

flags:
`)
		fs.PrintDefaults()
	}
	var (
		disks   diskFlags
		env     envFlags
		scratch = fs.Int("scratch", testhost.DefaultScratchMiB, "size of the tmpfs at /tmp, MiB")
		mem     = fs.Int("mem", testhost.DefaultMemMiB, "test host RAM, MiB")
		cpus    = fs.Int("cpus", testhost.DefaultCPUs, "test host vCPUs")
		timeout = fs.Duration("timeout", testhost.DefaultTimeout, "limit for the whole run, boot included")
		console = fs.Bool("console", false, "echo the test host console to stderr")
		logPath = fs.String("console-log", "", "write the console to this file (default <cache>/testhost/console.log)")
		dir     = fs.String("dir", "", "working directory inside (default /tmp)")
		prepare = fs.Bool("prepare", false, "only download/build the kernel and initramfs, and print their paths")
		stats   = fs.Bool("stats", false, "print timings to stderr at the end")
		debug   = fs.Bool("debug", false, "hostinit logs its steps on the console")
	)
	fs.Var(&disks, "disk", "artifact disk `name=path` (directory or raw image), mounted read-only at /artifacts/name; repeatable")
	fs.Var(&env, "env", "`KEY=VALUE` for the command's environment; repeatable")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if *prepare {
		a, err := testhost.Prepare(ctx, os.Stderr)
		if err != nil {
			return err
		}
		fmt.Printf("kernel     %s (%s %s)\n", a.Vmlinuz, a.Kernel.Package, a.Kernel.Version)
		fmt.Printf("initramfs  %s\n", a.Initramfs)
		fmt.Printf("modules    %s\n", strings.Join(a.Modules, " "))
		fmt.Printf("built in   %s\n", strings.Join(a.Builtin, " "))
		return nil
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errors.New("no command given")
	}

	if *logPath == "" {
		d, err := cache.Dir("testhost")
		if err != nil {
			return err
		}
		*logPath = filepath.Join(d, "console.log")
	}
	logFile, err := os.Create(*logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	var consoleW io.Writer = logFile
	if *console {
		consoleW = io.MultiWriter(logFile, os.Stderr)
	}

	var st testhost.Stats
	code, err := testhost.Run(ctx, testhost.Spec{
		Disks:      disks,
		ScratchMiB: *scratch,
		MemMiB:     *mem,
		CPUs:       *cpus,
		Args:       fs.Args(),
		Env:        env,
		Dir:        *dir,
		Stdin:      os.Stdin,
		Stdout:     os.Stdout,
		Stderr:     os.Stderr,
		Console:    consoleW,
		Timeout:    *timeout,
		Progress:   os.Stderr,
		Debug:      *debug,
		Stats:      &st,
	})
	if *stats {
		fmt.Fprintf(os.Stderr, "testhost: prepare %v, boot %v (kernel to init %v, init ready at %v), command %v, shutdown %v, total %v; kvm=%v\n",
			st.Prepare.Round(time.Millisecond), st.Boot.Round(time.Millisecond), st.GuestInit.Round(time.Millisecond),
			st.GuestReady.Round(time.Millisecond), st.Command.Round(time.Millisecond), st.Shutdown.Round(time.Millisecond),
			st.Total.Round(time.Millisecond), st.KVM)
	}
	if err != nil {
		if errors.Is(err, context.Canceled) {
			fmt.Fprintln(os.Stderr, "husk-dev testhost: interrupted")
			logFile.Close()
			os.Exit(130)
		}
		return fmt.Errorf("%w\n(console log: %s)", err, *logPath)
	}
	if code != 0 {
		logFile.Close()
		os.Exit(code & 0xff)
	}
	return nil
}
