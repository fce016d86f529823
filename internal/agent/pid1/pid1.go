// Package pid1 is what husk-agent does as the guest's init: mount the
// kernel filesystems, set the hostname, bring up loopback, then run the agent
// server as its child, reap every orphan, and power the guest off through
// reboot(2) when asked.
//
// The server is a separate process (the same binary, started again) so that
// the reaper's wait4(-1) never takes an exit status the server's own Wait is
// waiting for. PID 1 stays small: everything here is either a system call
// sequence or a pure function with a unit test.
package pid1

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"time"

	"golang.org/x/sys/unix"
)

// ExitPowerOff is the exit status with which the server asks PID 1 to power
// the guest off. Any other exit of the server is a crash: PID 1 starts it
// again, within restartBudget.
const ExitPowerOff = 100

// Config is how PID 1 starts the server.
type Config struct {
	// Exe is the server binary; default "/proc/self/exe".
	Exe string
	// Args are the server's arguments, without argv[0].
	Args []string
	// Hostname is set before anything starts; default "husk".
	Hostname string
	// StopTimeout is how long the server and then every other process get
	// to exit after SIGTERM before SIGKILL; default 5 s.
	StopTimeout time.Duration
	Log         *slog.Logger
}

// Run is PID 1. It returns only if it cannot power off.
func Run(cfg Config) error {
	if cfg.Exe == "" {
		cfg.Exe = "/proc/self/exe"
	}
	if cfg.Hostname == "" {
		cfg.Hostname = "husk"
	}
	if cfg.StopTimeout == 0 {
		cfg.StopTimeout = 5 * time.Second
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	// Signals first, so a SIGCHLD or SIGTERM during setup is not lost.
	sigs := make(chan os.Signal, 64)
	signal.Notify(sigs, unix.SIGCHLD, unix.SIGTERM, unix.SIGINT, unix.SIGPWR)

	for _, m := range Mounts {
		if err := m.mount(); err != nil {
			log.Warn("mount", "target", m.Target, "err", err)
		}
	}
	if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
		log.Warn("sethostname", "err", err)
	}
	if err := LoopbackUp(); err != nil {
		log.Warn("loopback", "err", err)
	}
	raiseNoFile(log)

	var (
		server   *os.Process
		restarts restartBudget
	)
	start := func() {
		p, err := os.StartProcess(cfg.Exe, append([]string{"husk-agent"}, cfg.Args...), &os.ProcAttr{
			Files: []*os.File{os.Stdin, os.Stdout, os.Stderr},
			Env:   os.Environ(),
		})
		if err != nil {
			log.Error("start server", "err", err)
			server = nil
			return
		}
		server = p
		log.Info("server started", "pid", p.Pid)
	}
	start()
	if server == nil {
		return shutdown(log, nil, cfg.StopTimeout)
	}

	for sig := range sigs {
		switch sig {
		case unix.SIGCHLD:
			for _, r := range reap() {
				if server == nil || r.pid != server.Pid {
					continue
				}
				log.Info("server exited", "status", r.status)
				server = nil
				if r.status.Exited() && r.status.ExitStatus() == ExitPowerOff {
					return shutdown(log, nil, cfg.StopTimeout)
				}
				if !restarts.allow(time.Now()) {
					log.Error("server keeps exiting; powering off")
					return shutdown(log, nil, cfg.StopTimeout)
				}
				time.Sleep(restartDelay)
				start()
				if server == nil {
					return shutdown(log, nil, cfg.StopTimeout)
				}
			}
		default:
			log.Info("power off", "signal", sig.String())
			return shutdown(log, server, cfg.StopTimeout)
		}
	}
	return errors.New("signal channel closed")
}

// reaped is one child collected by reap.
type reaped struct {
	pid    int
	status unix.WaitStatus
}

// reap collects every child that has exited, without blocking.
func reap() []reaped {
	var out []reaped
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return out
		}
		out = append(out, reaped{pid, ws})
	}
}

// shutdown stops the server (if running), then every other process, syncs,
// unmounts and reboots; the VMM sees the reset and exits.
func shutdown(log *slog.Logger, server *os.Process, grace time.Duration) error {
	if server != nil {
		_ = server.Signal(unix.SIGTERM)
		waitFor(func() bool {
			for _, r := range reap() {
				if r.pid == server.Pid {
					return true
				}
			}
			return unix.Kill(server.Pid, 0) != nil
		}, grace)
	}
	_ = unix.Kill(-1, unix.SIGTERM)
	waitFor(func() bool { reap(); return unix.Kill(-1, 0) != nil }, grace)
	_ = unix.Kill(-1, unix.SIGKILL)
	waitFor(func() bool { reap(); return unix.Kill(-1, 0) != nil }, time.Second)
	unix.Sync()
	for i := len(Mounts) - 1; i >= 0; i-- {
		_ = unix.Unmount(Mounts[i].Target, unix.MNT_DETACH)
	}
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		log.Warn("remount / read-only", "err", err)
	}
	unix.Sync()
	log.Info("reboot")
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	return fmt.Errorf("reboot: %w", err)
}

// waitFor polls done every 20 ms until it is true or d has passed.
func waitFor(done func() bool, d time.Duration) {
	deadline := time.Now().Add(d)
	for !done() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
}

// raiseNoFile lifts the descriptor limit the server and its processes
// inherit: the kernel's default of 1024/4096 is too low for an agent that
// runs a thousand processes at once.
func raiseNoFile(log *slog.Logger) {
	lim := unix.Rlimit{Cur: 1 << 20, Max: 1 << 20}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		log.Warn("setrlimit NOFILE", "err", err)
	}
}

const restartDelay = 500 * time.Millisecond

// restartBudget allows at most restartLimit server restarts per
// restartWindow.
type restartBudget struct{ times []time.Time }

const (
	restartLimit  = 5
	restartWindow = time.Minute
)

func (b *restartBudget) allow(now time.Time) bool {
	keep := b.times[:0]
	for _, t := range b.times {
		if now.Sub(t) < restartWindow {
			keep = append(keep, t)
		}
	}
	b.times = keep
	if len(b.times) >= restartLimit {
		return false
	}
	b.times = append(b.times, now)
	return true
}
