package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/huskvm/husk/bench/qemubundle"
	"github.com/huskvm/husk/internal/testhost"
)

// benchHost is what the bench-* commands share: the test host's flags and
// running a bench program inside it.
type benchHost struct {
	cpus       int
	timeout    time.Duration
	consoleLog string
	debug      bool
}

// flags registers the test host's flags on fs; timeout is the default
// limit for the whole run.
func (h *benchHost) flags(fs *flag.FlagSet, timeout time.Duration) {
	fs.IntVar(&h.cpus, "testhost-cpus", 2, "vCPUs of the test host")
	fs.DurationVar(&h.timeout, "timeout", timeout, "limit for the whole run")
	fs.StringVar(&h.consoleLog, "console-log", "", "write the test host's console to this file")
	fs.BoolVar(&h.debug, "debug", false, "hostinit logs its steps on the test host console")
}

// parseArgs parses args into fs, which takes no positional arguments. It
// returns false, and no error, when the user asked for help.
func parseArgs(fs *flag.FlagSet, args []string) (bool, error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return false, nil
		}
		return false, err
	}
	if fs.NArg() != 0 {
		return false, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return true, nil
}

// runContext is a command's context: cancelled by SIGINT or SIGTERM, and
// after timeout.
func runContext(timeout time.Duration) (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	return ctx, func() { cancel(); stop() }
}

// addQEMU adds the QEMU bundle to a test-host run: a disk, and the flag
// that tells the bench program where it is.
func addQEMU(ctx context.Context, spec *testhost.Spec) error {
	const inside = "/artifacts/qemu"
	dir, err := qemubundle.Bundle(ctx, os.Stderr)
	if err != nil {
		return err
	}
	spec.Disks = append(spec.Disks, testhost.Disk{Name: "qemu", Path: dir})
	spec.Args = append(spec.Args, "-qemu-bundle", inside)
	return nil
}

// run runs spec, whose Args, Disks and output the caller set, in a test
// host until ctx's deadline. program names spec.Args[0] in errors.
func (h *benchHost) run(ctx context.Context, program string, spec testhost.Spec) error {
	if h.consoleLog != "" {
		f, err := os.Create(h.consoleLog)
		if err != nil {
			return err
		}
		defer f.Close()
		spec.Console = f
	}
	spec.CPUs, spec.Debug, spec.Progress = h.cpus, h.debug, os.Stderr
	if d, ok := ctx.Deadline(); ok {
		spec.Timeout = time.Until(d)
	}
	code, err := testhost.Run(ctx, spec)
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("%s exited with status %d", program, code)
	}
	return nil
}

// envList is a repeatable KEY=VALUE flag.
type envList []string

func (l *envList) String() string { return strings.Join(*l, " ") }

func (l *envList) Set(v string) error {
	if !strings.Contains(v, "=") {
		return fmt.Errorf("%q is not KEY=VALUE", v)
	}
	*l = append(*l, v)
	return nil
}
