package main

import (
	"context"
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"io"
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

	// SIGUSR1: husk-vmm's device state on stderr, for a run that stalls.
	var cur atomic.Pointer[sandbox.VM]
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	defer func() { signal.Stop(usr1); close(usr1) }()
	go func() {
		for range usr1 {
			if vm := cur.Load(); vm != nil {
				vm.DumpState(os.Stderr)
			}
		}
	}()

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
	var (
		vm    *sandbox.VM
		agent *sandbox.Agent
		err   error
	)
	for attempt := 1; ; attempt++ {
		vm, agent, err = boot(bctx, o, &cur)
		var se signalError
		if cause := context.Cause(bctx); errors.As(cause, &se) {
			if err == nil {
				agent.Close()
				vm.Close(5 * time.Second)
			}
			return 128 + int(se.sig), nil
		}
		if err == nil {
			break
		}
		if errors.Is(context.Cause(ctx), errTimedOut) {
			return timedOut(o)
		}
		var failed *bootError
		if !errors.As(err, &failed) || attempt == bootAttempts {
			return 0, fmt.Errorf("boot: %w", err)
		}
		fmt.Fprintf(os.Stderr, "husk: boot: %v\nhusk: the command had not started; booting a fresh VM (%d of %d)\n", err, attempt+1, bootAttempts)
	}
	booted.Store(true)
	defer vm.Close(5 * time.Second)
	defer agent.Close()

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
			why := "the guest powered off or reset"
			if err := vm.Err(); err != nil {
				why = err.Error()
			}
			return 0, fmt.Errorf("the VM stopped while the command ran (%s)%s", why, vm.Diagnostics())
		default:
		}
		return 0, fmt.Errorf("%w%s", err, vm.Diagnostics())
	}
	return exit.ShellStatus(), nil
}

// bootAttempts bounds the VMs one run boots. A guest that dies or hangs
// before its agent answers ran none of the command, so a fresh VM takes its
// place, and the failure is printed. On the test host's nested SVM under TCG
// a boot fails now and then on its own (docs/testhost.md); on hardware KVM a
// printed boot failure is a bug to chase.
const bootAttempts = 3

// bootError is a VM whose guest hung or stopped before its agent answered,
// while husk-vmm itself did not fail.
type bootError struct{ err error }

func (e *bootError) Error() string { return e.err.Error() }
func (e *bootError) Unwrap() error { return e.err }

// boot starts a VM on a fresh overlay and waits for its agent; cur holds the
// VM while it boots and after.
func boot(ctx context.Context, o *runOptions, cur *atomic.Pointer[sandbox.VM]) (*sandbox.VM, *sandbox.Agent, error) {
	dir, err := os.MkdirTemp("", "husk-run-")
	if err != nil {
		return nil, nil, err
	}
	vm, err := sandbox.Start(sandbox.VMSpec{VMM: o.vmm, Kernel: o.kernel, Rootfs: o.rootfs, CPUs: o.cpus, MemMiB: o.mem, Dir: dir})
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	cur.Store(vm)
	agent := sandbox.NewAgent(vm.SocketPath(), o.user)
	wctx, wcancel := context.WithTimeout(ctx, bootTimeout)
	defer wcancel()
	if err := vm.WaitAgent(wctx, agent); err != nil {
		guest := true // the guest hung, or powered off or reset on its own
		select {
		case <-vm.Done():
			guest = vm.Err() == nil
		default:
		}
		agent.Close()
		vm.Close(5 * time.Second)
		if !guest { // husk-vmm failed: not the guest's doing
			return nil, nil, err
		}
		return nil, nil, &bootError{err}
	}
	return vm, agent, nil
}

// timedOut reports the end of a run at --timeout.
func timedOut(o *runOptions) (int, error) {
	fmt.Fprintf(os.Stderr, "husk: timed out: --timeout %v reached; the VM was stopped\n", o.timeout)
	return exitTimeout, nil
}

// signalError is a run ended by a signal before the command started.
type signalError struct{ sig syscall.Signal }

func (e signalError) Error() string { return "interrupted by " + e.sig.String() }

// hostAttempts bounds the test hosts one run boots. A test host fails on its
// own now and then (TCG's nested SVM, docs/testhost.md); one that dies
// before the command has printed anything, read any input or been sent a
// signal is replaced by a fresh one, since nothing of the run has reached
// the user yet and the command's VM kept nothing.
const hostAttempts = 3

// hostRun is testhost.Run; tests replace it.
var hostRun = testhost.Run

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
	return runStaged(ctx, o, cmd, stage, sigs)
}

// runStaged runs the inner husk run in test hosts, with husk, husk-vmm and
// the kernel in stage, starting a fresh test host after one died unseen.
func runStaged(ctx context.Context, o *runOptions, cmd []string, stage string, sigs chan os.Signal) (int, error) {
	// What reached the user, or came from them, in any attempt.
	var touched atomic.Bool
	fwd := make(chan os.Signal, cap(sigs))
	go func() {
		for sig := range sigs {
			touched.Store(true)
			fwd <- sig
		}
	}()
	spec := testhost.Spec{
		Disks:    []testhost.Disk{{Name: "husk", Path: stage}, {Name: "rootfs", Path: o.rootfs}},
		Stdout:   touchWriter{os.Stdout, &touched},
		Stderr:   touchWriter{os.Stderr, &touched},
		Signals:  fwd,
		Progress: os.Stderr,
	}
	if o.stdin || o.tty {
		spec.Stdin = os.Stdin
		touched.Store(true) // input read by one test host is lost to the next
	}
	deadline, limited := ctx.Deadline()
	for attempt := 1; ; attempt++ {
		timeout := o.timeout // a fresh test host gets what is left of it
		if limited && attempt > 1 {
			timeout = max(time.Until(deadline).Round(time.Second), time.Second)
		}
		// The test host's own limit only backs up the inner --timeout.
		spec.Timeout = 24 * time.Hour
		if timeout > 0 {
			spec.Timeout = timeout + 10*time.Minute
		}
		spec.Args = innerRun(o, cmd, timeout)
		code, err := hostRun(ctx, spec)
		switch {
		case err == nil:
			return code, nil
		case errors.Is(context.Cause(ctx), errTimedOut):
			return timedOut(o)
		case attempt < hostAttempts && errors.Is(err, testhost.ErrHostDied) && !touched.Load() && ctx.Err() == nil:
			reason, _, _ := strings.Cut(err.Error(), "\n")
			fmt.Fprintf(os.Stderr, "husk: %s; the command had not printed anything, so it runs again in a fresh test host (%d of %d)\n",
				reason, attempt+1, hostAttempts)
		default:
			return 0, fmt.Errorf("test host: %w", err)
		}
	}
}

// innerRun is the husk run command line inside the test host; timeout 0 is
// no limit.
func innerRun(o *runOptions, cmd []string, timeout time.Duration) []string {
	const in = "/artifacts/husk/"
	inner := []string{in + "husk", "run", "--direct", "--vmm", in + "husk-vmm", "--kernel", in + "vmlinux",
		"--rootfs", "/dev/disk/husk/rootfs",
		"--cpus", strconv.Itoa(o.cpus), "--mem", strconv.Itoa(o.mem), "--user", o.user}
	if timeout > 0 {
		inner = append(inner, "--timeout", timeout.String())
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
	return append(append(inner, "--"), cmd...)
}

// touchWriter notes that a write reached the user.
type touchWriter struct {
	w       io.Writer
	touched *atomic.Bool
}

func (t touchWriter) Write(p []byte) (int, error) {
	if len(p) > 0 {
		t.touched.Store(true)
	}
	return t.w.Write(p)
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
