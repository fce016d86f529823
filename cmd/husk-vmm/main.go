// Command husk-vmm runs one microVM: it boots a Linux kernel on KVM and
// returns when the guest resets itself (exit status 0), panics, fails, is
// signalled, or runs out of time (exit status 1, with the reason on stderr).
//
// It is static (CGO_ENABLED=0) and depends on nothing beyond golang.org/x/sys.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/huskvm/husk/internal/vmm"
)

// defaultCmdline boots quietly on the serial console, resets through the
// i8042 on reboot and straight away on panic, and skips the probes of
// hardware husk does not have.
const defaultCmdline = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.dumbkbd quiet"

// errTimeout is the cause of the context ending at --timeout.
var errTimeout = errors.New("wall-clock limit reached")

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "husk-vmm: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		cfg      vmm.Config
		console  string
		timeout  time.Duration
		logLevel slog.Level
	)
	flag.StringVar(&cfg.Kernel, "kernel", "", "guest kernel: ELF vmlinux (PVH) or bzImage")
	flag.StringVar(&cfg.Initrd, "initrd", "", "initramfs to load (optional)")
	flag.StringVar(&cfg.Cmdline, "cmdline", defaultCmdline, "kernel command line")
	flag.IntVar(&cfg.VCPUs, "cpus", 1, "number of vCPUs")
	flag.IntVar(&cfg.MemMiB, "mem", 128, "guest memory in MiB")
	flag.StringVar(&console, "console", "-", `where the guest's serial console goes: "-" for stdout (stdin feeds its input), "none", or a file`)
	flag.DurationVar(&timeout, "timeout", 0, "stop the guest after this long (0: no limit)")
	flag.TextVar(&logLevel, "log-level", slog.LevelWarn, "log level: debug, info, warn, error")
	flag.Parse()
	if flag.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: logLevel}))
	switch console {
	case "-":
		cfg.Console, cfg.ConsoleIn = os.Stdout, os.Stdin
	case "none":
		cfg.Console = io.Discard
	default:
		f, err := os.OpenFile(console, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		cfg.Console = f
	}

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	if timeout > 0 {
		var stop context.CancelFunc
		ctx, stop = context.WithTimeoutCause(ctx, timeout, fmt.Errorf("%w after %v", errTimeout, timeout))
		defer stop()
	}
	vm, err := vmm.New(cfg)
	if err != nil {
		return err
	}
	defer vm.Close()
	if err := vm.Run(ctx); err != nil {
		if errors.Is(err, context.Canceled) {
			return errors.New("stopped by signal")
		}
		return err
	}
	return nil
}
