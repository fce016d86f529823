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
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
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
	if len(os.Args) == 2 && os.Args[1] == "--probe" {
		os.Exit(probe())
	}
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
	flag.Func("disk", "a virtio-blk disk, PATH[,ro][,overlay=FILE][,serial=ID]; repeat for vdb, vdc, …\n(with overlay=, PATH is a read-only base and writes go to FILE, created if absent)", func(v string) error {
		d, err := parseDisk(v)
		cfg.Disks = append(cfg.Disks, d)
		return err
	})
	flag.Func("net", "a virtio-net NIC on a host TAP interface, tap=NAME[,mac=XX:XX:XX:XX:XX:XX]; repeat for eth1, …\n(the TAP is created if absent; without mac=, a random locally administered address)", func(v string) error {
		n, err := parseNet(v)
		cfg.Net = append(cfg.Net, n)
		return err
	})
	flag.Func("vsock", "a virtio-vsock device, cid=N,socket=PATH (host side: Firecracker's CONNECT convention)", func(v string) error {
		s, err := parseVsock(v)
		cfg.Vsock = s
		return err
	})
	flag.BoolVar(&cfg.RNG, "rng", false, "add a virtio-rng device")
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
	dump := make(chan os.Signal, 1)
	signal.Notify(dump, syscall.SIGUSR1)
	defer signal.Stop(dump)
	go func() {
		for range dump {
			vm.LogState()
		}
	}()
	err = vm.Run(ctx)
	st := vm.Stats()
	cfg.Log.Info("vm_stopped", "rng_bytes", st.RNGBytes, "vsock_conns", st.VsockConns,
		"net_rx_frames", st.Net.RxFrames, "net_rx_bytes", st.Net.RxBytes, "net_rx_dropped", st.Net.RxDropped,
		"net_tx_frames", st.Net.TxFrames, "net_tx_bytes", st.Net.TxBytes, "net_tx_errors", st.Net.TxErrors,
		"net_tx_dropped", st.Net.TxDropped)
	if errors.Is(err, context.Canceled) {
		return errors.New("stopped by signal")
	}
	return err
}

// parseDisk parses PATH[,ro][,overlay=FILE][,serial=ID].
func parseDisk(v string) (vmm.Disk, error) {
	parts := strings.Split(v, ",")
	d := vmm.Disk{Path: parts[0]}
	for _, p := range parts[1:] {
		switch k, val, _ := strings.Cut(p, "="); k {
		case "ro":
			d.ReadOnly = true
		case "overlay":
			d.Overlay = val
		case "serial":
			d.Serial = val
		default:
			return d, fmt.Errorf("disk option %q: want ro, overlay= or serial=", p)
		}
	}
	if d.Path == "" {
		return d, errors.New("disk needs a path")
	}
	return d, nil
}

// parseNet parses tap=NAME[,mac=XX:XX:XX:XX:XX:XX]; vmm.Config.Validate
// checks the name and the address.
func parseNet(v string) (vmm.Net, error) {
	var n vmm.Net
	for _, p := range strings.Split(v, ",") {
		switch k, val, _ := strings.Cut(p, "="); k {
		case "tap":
			n.TAP = val
		case "mac":
			mac, err := net.ParseMAC(val)
			if err != nil {
				return n, fmt.Errorf("net mac %q: want six colon-separated hex bytes", val)
			}
			n.MAC = mac
		default:
			return n, fmt.Errorf("net option %q: want tap= or mac=", p)
		}
	}
	if n.TAP == "" {
		return n, errors.New("net needs tap=NAME")
	}
	return n, nil
}

// parseVsock parses cid=N,socket=PATH.
func parseVsock(v string) (*vmm.Vsock, error) {
	s := &vmm.Vsock{}
	for _, p := range strings.Split(v, ",") {
		k, val, _ := strings.Cut(p, "=")
		switch k {
		case "cid":
			n, err := strconv.ParseUint(val, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("vsock cid %q: %w", val, err)
			}
			s.CID = n
		case "socket":
			s.Path = val
		default:
			return nil, fmt.Errorf("vsock option %q: want cid= or socket=", p)
		}
	}
	return s, nil
}
