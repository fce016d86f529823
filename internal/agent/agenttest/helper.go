package agenttest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/huskvm/husk/internal/agent/pid1"
)

// helperEnv carries the helperConfig, as JSON, to the re-executed test
// binary.
const helperEnv = "HUSK_AGENTTEST_HELPER"

// helperConfig is what the helper sets up.
type helperConfig struct {
	Lower, Upper, Work, Merged string
	Agent                      string   // host path of the husk-agent binary
	AgentArgs                  []string // after "serve"
	Token                      string

	// NetnsAddr, when set, is where the helper itself listens for the
	// public API, inside its new network namespace; the test passed only
	// the internal listener (InternalFD).
	NetnsAddr  string
	InternalFD bool
	Run        []string
	RunDir     string
	RunEnv     []string
}

// agentPath is where the binary is placed inside the root.
const agentPath = "/usr/local/bin/husk-agent"

// runHelper is the re-executed test binary: PID 1 of a new PID namespace,
// in a new mount namespace. It builds the root, starts the agent chrooted
// there, optionally runs a command beside it, and reaps everything.
func runHelper() int {
	var cfg helperConfig
	if err := json.Unmarshal([]byte(os.Getenv(helperEnv)), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "agenttest helper:", err)
		return 2
	}
	if err := setupRoot(&cfg); err != nil {
		fmt.Fprintln(os.Stderr, "agenttest helper:", err)
		return 2
	}

	extra := []*os.File{os.NewFile(3, "listener-3")}
	if cfg.NetnsAddr != "" {
		if err := pid1.LoopbackUp(); err != nil {
			fmt.Fprintln(os.Stderr, "agenttest helper: loopback:", err)
			return 2
		}
		ln, err := net.Listen("tcp", cfg.NetnsAddr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "agenttest helper:", err)
			return 2
		}
		f, err := ln.(*net.TCPListener).File()
		if err != nil {
			fmt.Fprintln(os.Stderr, "agenttest helper:", err)
			return 2
		}
		extra = []*os.File{f, os.NewFile(3, "listener-3")}
	} else {
		extra = append(extra, os.NewFile(4, "listener-4"))
	}

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT)

	agent := &exec.Cmd{
		Path:        agentPath,
		Args:        append([]string{"husk-agent", "serve", "-access-token-env", "HUSK_AGENT_TOKEN", "-log-level", "debug"}, cfg.AgentArgs...),
		Env:         []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HUSK_AGENT_TOKEN=" + cfg.Token},
		Dir:         "/",
		Stdout:      os.Stdout,
		Stderr:      os.Stderr,
		ExtraFiles:  extra,
		SysProcAttr: &syscall.SysProcAttr{Chroot: cfg.Merged},
	}
	if err := agent.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "agenttest helper: start agent:", err)
		return 2
	}
	agentPid := agent.Process.Pid

	runPid := 0
	if len(cfg.Run) > 0 {
		if err := waitLocalHealthy("http://"+cfg.NetnsAddr, 20*time.Second); err != nil {
			fmt.Fprintln(os.Stderr, "agenttest helper:", err)
			_ = unix.Kill(agentPid, unix.SIGKILL)
			return 2
		}
		run := exec.Command(cfg.Run[0], cfg.Run[1:]...)
		run.Dir = cfg.RunDir
		run.Env = append(os.Environ(), cfg.RunEnv...)
		run.Stdout, run.Stderr = os.Stdout, os.Stderr
		if err := run.Start(); err != nil {
			fmt.Fprintln(os.Stderr, "agenttest helper: run:", err)
			_ = unix.Kill(agentPid, unix.SIGKILL)
			return 2
		}
		runPid = run.Process.Pid
	}

	go func() {
		for range sigs {
			_ = unix.Kill(agentPid, unix.SIGTERM)
		}
	}()

	// Reap everything: the agent, the command, and the orphans of both.
	// Nothing else may call Wait, so the exec.Cmds above are never waited.
	agentCode, runCode := -1, -1
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			break
		}
		code := ws.ExitStatus()
		if ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
		switch pid {
		case agentPid:
			agentCode = code
			if runPid == 0 || runCode >= 0 {
				return exitOf(agentCode, runCode, runPid != 0)
			}
			fmt.Fprintf(os.Stderr, "agenttest helper: agent exited (status %d) before the command\n", code)
		case runPid:
			runCode = code
			if agentCode >= 0 {
				return exitOf(agentCode, runCode, true)
			}
			_ = unix.Kill(agentPid, unix.SIGTERM)
			go func() {
				time.Sleep(10 * time.Second)
				_ = unix.Kill(agentPid, unix.SIGKILL)
			}()
		}
	}
	return exitOf(agentCode, runCode, runPid != 0)
}

func exitOf(agent, run int, hasRun bool) int {
	if hasRun {
		return run
	}
	return agent
}

// setupRoot mounts the overlay and what a process expects to find in it:
// /proc (of the new PID namespace), a small /dev with a private devpts, and
// a tmpfs /tmp; then puts the agent binary in.
func setupRoot(cfg *helperConfig) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	m := cfg.Merged
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", cfg.Lower, cfg.Upper, cfg.Work)
	if err := unix.Mount("overlay", m, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mount overlay: %w", err)
	}
	mounts := []struct {
		src, target, fstype string
		flags               uintptr
		data                string
	}{
		{"proc", "proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"tmpfs", "dev", "tmpfs", unix.MS_NOSUID, "mode=0755,size=1m"},
		{"devpts", "dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"},
		{"tmpfs", "dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"tmpfs", "tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	}
	for _, x := range mounts {
		target := filepath.Join(m, x.target)
		if err := os.MkdirAll(target, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(x.src, target, x.fstype, x.flags, x.data); err != nil {
			return fmt.Errorf("mount %s on %s: %w", x.fstype, target, err)
		}
		if x.target == "dev" {
			if err := populateDev(filepath.Join(m, "dev")); err != nil {
				return err
			}
		}
	}
	return copyFile(cfg.Agent, filepath.Join(m, agentPath), 0o755)
}

// populateDev creates the device nodes and links of a minimal /dev.
func populateDev(dev string) error {
	nodes := []struct {
		name         string
		major, minor uint32
	}{{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}}
	for _, n := range nodes {
		p := filepath.Join(dev, n.name)
		if err := unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(n.major, n.minor))); err != nil {
			return fmt.Errorf("mknod %s: %w", p, err)
		}
		if err := os.Chmod(p, 0o666); err != nil {
			return err
		}
	}
	links := map[string]string{"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(dev, name)); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func waitLocalHealthy(base string, limit time.Duration) error {
	c := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(limit)
	var last error
	for time.Now().Before(deadline) {
		resp, err := c.Get(base + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusNoContent {
				return nil
			}
			err = fmt.Errorf("GET /health: %s", resp.Status)
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("agent not healthy after %v: %v", limit, last)
}
