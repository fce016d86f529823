package main

import (
	"context"
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/huskvm/husk/internal/cache"
	"github.com/huskvm/husk/internal/devenv"
	"github.com/huskvm/husk/internal/sandbox"
	"github.com/huskvm/husk/internal/testhost"
)

// runOptions are husk run's flags.
type runOptions struct {
	cpus, mem int
	template  string
	timeout   time.Duration
	stdin     bool
	tty       bool
	env       envFlags
	dir       string
	user      string

	// Where the parts are; by default husk finds or builds them.
	vmm, kernel, rootfs string
	direct              bool   // run here without probing (the test host's inner run)
	ttySize             string // COLSxROWS, when stdin is not the terminal
}

// bootTimeout bounds a boot to the agent's first answer.
const bootTimeout = 3 * time.Minute

// errTimedOut is the cause of a run's context ending at --timeout.
var errTimedOut = errors.New("--timeout reached")

func runCmd(args []string) int {
	fs := flag.NewFlagSet("husk run", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: husk run [flags] -- CMD [ARGS...]

Runs CMD in a fresh microVM booted from a template's read-only image plus a
copy-on-write overlay that is deleted afterwards. stdout and stderr stream
live and separately; the exit status is CMD's, 128+N if signal N ended it,
124 if --timeout stopped it, 125 if husk or the VM failed, 126/127 if CMD
could not run / was not found. SIGINT and SIGTERM are passed on to CMD.

Where /dev/kvm cannot run guest kernels at a usable speed (nested, software
KVM), the VM runs inside the test host (QEMU TCG), and husk says so.

`)
		fs.PrintDefaults()
	}
	o := runOptions{env: envFlags{}}
	fs.IntVar(&o.cpus, "cpus", 2, "vCPUs")
	fs.IntVar(&o.mem, "mem", 512, "guest memory in MiB")
	fs.StringVar(&o.template, "template", "base", "template (guest/templates/NAME.json)")
	fs.DurationVar(&o.timeout, "timeout", 0, "stop the VM after this long, boot included (0: no limit)")
	fs.BoolVar(&o.stdin, "i", false, "attach standard input")
	fs.BoolVar(&o.tty, "t", false, "run CMD on a pseudo-terminal")
	fs.Var(o.env, "e", "environment variable `KEY=VALUE` for CMD (repeatable)")
	fs.StringVar(&o.dir, "w", "", "working directory in the guest (default: the user's home)")
	fs.StringVar(&o.user, "user", "root", "guest user to run CMD as (root or user)")
	fs.StringVar(&o.vmm, "vmm", "", "husk-vmm binary (default: next to husk)")
	fs.StringVar(&o.kernel, "kernel", "", "guest kernel (default: build or find the husk kernel)")
	fs.StringVar(&o.rootfs, "rootfs", "", "root image holding husk-agent (default: build or find --template with the agent)")
	fs.BoolVar(&o.direct, "direct", false, "run the VM on this machine's /dev/kvm without probing it")
	fs.StringVar(&o.ttySize, "tty-size", "", "terminal size `COLSxROWS` for -t (default: the terminal's)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return exitHusk
	}
	cmd := fs.Args()
	if len(cmd) == 0 {
		fmt.Fprintln(os.Stderr, "husk run: no command given: husk run [flags] -- CMD [ARGS...]")
		return exitHusk
	}

	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	ctx := context.Background()
	if o.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, o.timeout, errTimedOut)
		defer cancel()
	}

	// Raw mode for -t on a terminal: keys, Ctrl-C included, go to the
	// guest's terminal as bytes.
	if o.tty && isTerminal(0) {
		if o.ttySize == "" {
			s := termSize(0)
			o.ttySize = fmt.Sprintf("%dx%d", s.Cols, s.Rows)
		}
		restore, err := makeRaw(0)
		if err != nil {
			return fail(err)
		}
		defer restore()
	}

	code, err := run(ctx, &o, cmd, sigs)
	if err != nil {
		return fail(err)
	}
	return code
}

// fail reports husk's own failure.
func fail(err error) int {
	fmt.Fprintf(os.Stderr, "husk: %v\n", err)
	return exitHusk
}

// run finds the parts, decides where the VM runs and runs cmd there.
func run(ctx context.Context, o *runOptions, cmd []string, sigs chan os.Signal) (int, error) {
	exe, err := os.Executable()
	if err != nil {
		return 0, err
	}
	bin := filepath.Dir(exe)
	if o.vmm == "" {
		o.vmm = filepath.Join(bin, "husk-vmm")
	}
	if o.direct {
		if o.kernel == "" || o.rootfs == "" {
			return 0, errors.New("--direct needs --kernel and --rootfs")
		}
		return runHere(ctx, o, cmd, sigs)
	}
	// Build or find the kernel and the template with this agent. Progress
	// shows on stderr only when something is built.
	if o.kernel == "" {
		dir, err := devenv.Kernel(ctx, os.Stderr)
		if err != nil {
			return 0, fmt.Errorf("guest kernel: %w", err)
		}
		o.kernel = filepath.Join(dir, "vmlinux")
	}
	if o.rootfs == "" {
		img, err := devenv.AgentRootfs(ctx, o.template, filepath.Join(bin, "husk-agent"), os.Stderr)
		if err != nil {
			return 0, fmt.Errorf("template %s: %w", o.template, err)
		}
		o.rootfs = img
	}
	place := sandbox.Place(ctx, o.vmm)
	if place.Direct {
		return runHere(ctx, o, cmd, sigs)
	}
	fmt.Fprintln(os.Stderr, "husk:", place.Reason)
	return runInTestHost(ctx, o, exe, cmd, sigs)
}

// runHere boots a VM with husk-vmm on this machine and runs cmd in it.
func runHere(ctx context.Context, o *runOptions, cmd []string, sigs chan os.Signal) (int, error) {
	c := sandbox.Command{Args: cmd, Env: o.env, Dir: o.dir, Stdout: os.Stdout, Stderr: os.Stderr}
	if o.stdin {
		c.Stdin = os.Stdin
	}
	var resize chan os.Signal
	if o.tty {
		size, err := parseSize(o.ttySize)
		if err != nil {
			return 0, err
		}
		c.TTY = &size
		if isTerminal(0) {
			resize = make(chan os.Signal, 1)
			signal.Notify(resize, syscall.SIGWINCH)
			sizes := make(chan sandbox.TTYSize, 1)
			go func() {
				for range resize {
					sizes <- termSize(0)
				}
			}()
			c.Resize = sizes
		}
	}

	dir, err := os.MkdirTemp("", "husk-run-")
	if err != nil {
		return 0, err
	}
	vm, err := sandbox.Start(sandbox.VMSpec{VMM: o.vmm, Kernel: o.kernel, Rootfs: o.rootfs, CPUs: o.cpus, MemMiB: o.mem, Dir: dir})
	if err != nil {
		os.RemoveAll(dir)
		return 0, err
	}
	defer vm.Close(5 * time.Second)
	// SIGUSR1: husk-vmm's device state on stderr, for a run that stalls.
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	defer func() { signal.Stop(usr1); close(usr1) }()
	go func() {
		for range usr1 {
			vm.DumpState(os.Stderr)
		}
	}()
	agent := sandbox.NewAgent(vm.SocketPath(), o.user)
	defer agent.Close()

	// A signal during boot ends the run; afterwards it is the command's.
	fwd := make(chan os.Signal, 8)
	c.Signals = fwd
	var booted atomic.Bool
	bctx, bcancel := context.WithCancelCause(ctx)
	defer bcancel(nil)
	go func() {
		for s := range sigs {
			if booted.Load() {
				select {
				case fwd <- s:
				default:
				}
				continue
			}
			bcancel(signalError{s.(syscall.Signal)})
		}
	}()
	wctx, wcancel := context.WithTimeout(bctx, bootTimeout)
	err = vm.WaitAgent(wctx, agent)
	wcancel()
	booted.Store(true)
	var se signalError
	if cause := context.Cause(bctx); errors.As(cause, &se) {
		return 128 + int(se.sig), nil
	}
	if err != nil {
		if errors.Is(context.Cause(ctx), errTimedOut) {
			return timedOut(o)
		}
		return 0, fmt.Errorf("boot: %w", err)
	}

	exit, err := agent.Run(ctx, c)
	var start *sandbox.StartError
	switch {
	case errors.As(err, &start):
		fmt.Fprintf(os.Stderr, "husk: %v\n", start.Err)
		return start.Status, nil
	case err != nil && errors.Is(context.Cause(ctx), errTimedOut):
		return timedOut(o)
	case err != nil:
		select {
		case <-vm.Done():
			return 0, fmt.Errorf("the VM stopped while the command ran: %v", vm.Err())
		default:
		}
		return 0, fmt.Errorf("%w%s", err, vm.Diagnostics())
	}
	return exit.ShellStatus(), nil
}

// timedOut reports the end of a run at --timeout.
func timedOut(o *runOptions) (int, error) {
	fmt.Fprintf(os.Stderr, "husk: timed out: --timeout %v reached; the VM was stopped\n", o.timeout)
	return exitTimeout, nil
}

// signalError is a run ended by a signal before the command started.
type signalError struct{ sig syscall.Signal }

func (e signalError) Error() string { return "interrupted by " + e.sig.String() }

// runInTestHost runs husk itself inside the test host, which runs the VM on
// its nested KVM: the same run, one level down. stdin, stdout, stderr,
// signals and the exit status pass through.
func runInTestHost(ctx context.Context, o *runOptions, exe string, cmd []string, sigs chan os.Signal) (int, error) {
	if err := checkStatic(exe); err != nil {
		return 0, err
	}
	stage, err := os.MkdirTemp("", "husk-stage-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(stage)
	for name, src := range map[string]string{"husk": exe, "husk-vmm": o.vmm, "vmlinux": o.kernel} {
		if err := cache.LinkOrCopy(src, filepath.Join(stage, name)); err != nil {
			return 0, err
		}
	}
	const in = "/artifacts/husk/"
	inner := []string{in + "husk", "run", "--direct", "--vmm", in + "husk-vmm", "--kernel", in + "vmlinux",
		"--rootfs", "/dev/disk/husk/rootfs",
		"--cpus", strconv.Itoa(o.cpus), "--mem", strconv.Itoa(o.mem), "--user", o.user}
	if o.timeout > 0 {
		inner = append(inner, "--timeout", o.timeout.String())
	}
	if o.stdin {
		inner = append(inner, "-i")
	}
	if o.tty {
		inner = append(inner, "-t")
		if o.ttySize != "" {
			inner = append(inner, "--tty-size", o.ttySize)
		}
	}
	for k, v := range o.env {
		inner = append(inner, "-e", k+"="+v)
	}
	if o.dir != "" {
		inner = append(inner, "-w", o.dir)
	}
	inner = append(append(inner, "--"), cmd...)

	spec := testhost.Spec{
		Disks:    []testhost.Disk{{Name: "husk", Path: stage}, {Name: "rootfs", Path: o.rootfs}},
		Args:     inner,
		Stdout:   os.Stdout,
		Stderr:   os.Stderr,
		Signals:  sigs,
		Progress: os.Stderr,
		// The test host's own limit only backs up the inner --timeout.
		Timeout: 24 * time.Hour,
	}
	if o.timeout > 0 {
		spec.Timeout = o.timeout + 10*time.Minute
	}
	if o.stdin || o.tty {
		spec.Stdin = os.Stdin
	}
	code, err := testhost.Run(ctx, spec)
	if err != nil {
		if errors.Is(context.Cause(ctx), errTimedOut) {
			return timedOut(o)
		}
		return 0, fmt.Errorf("test host: %w", err)
	}
	return code, nil
}

// checkStatic refuses a husk binary that the test host cannot run: it has
// no libc, so husk must be static (CGO_ENABLED=0, as `make build` does).
func checkStatic(exe string) error {
	f, err := elf.Open(exe)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked and cannot run inside the test host: build it with CGO_ENABLED=0 (make build)", exe)
		}
	}
	return nil
}

// parseSize reads COLSxROWS.
func parseSize(s string) (sandbox.TTYSize, error) {
	if s == "" {
		return sandbox.TTYSize{Cols: 80, Rows: 24}, nil
	}
	c, r, ok := strings.Cut(s, "x")
	cols, err1 := strconv.ParseUint(c, 10, 16)
	rows, err2 := strconv.ParseUint(r, 10, 16)
	if !ok || err1 != nil || err2 != nil || cols == 0 || rows == 0 {
		return sandbox.TTYSize{}, fmt.Errorf("--tty-size %q: want COLSxROWS, e.g. 80x24", s)
	}
	return sandbox.TTYSize{Cols: uint32(cols), Rows: uint32(rows)}, nil
}

// envFlags collects -e KEY=VALUE.
type envFlags map[string]string

func (e envFlags) String() string { return "" }

func (e envFlags) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("want KEY=VALUE, got %q", v)
	}
	e[k] = val
	return nil
}
