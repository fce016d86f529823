package agenttest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Main is TestMain for packages that use Start: it runs the namespace helper
// when the binary was re-executed as one, else the tests.
func Main(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(runHelper())
	}
	code := m.Run()
	buildMu.Lock()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	buildMu.Unlock()
	os.Exit(code)
}

// Options configure Start and Run.
type Options struct {
	// Token is the agent's access token from the start; "" means none.
	Token string
	// Args are extra husk-agent serve flags.
	Args []string
}

// Agent is a running husk-agent.
type Agent struct {
	// URL is the public API (no /init); InternalURL the internal one.
	URL, InternalURL string
	// Upper is the overlay's upper directory: files the agent and its
	// processes wrote, as the host sees them.
	Upper string

	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
}

// Log returns what the agent and the helper printed so far.
func (a *Agent) Log() string { return a.log.String() }

// Start runs husk-agent chrooted into a fresh overlay of Root, as root, in
// new mount and PID namespaces, listening on two loopback TCP ports that the
// test created. It stops the agent when the test ends and prints its log if
// the test failed.
func Start(t testing.TB, opts Options) *Agent {
	t.Helper()
	pub, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	in, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{
		URL:         "http://" + pub.Addr().String(),
		InternalURL: "http://" + in.Addr().String(),
	}
	cfg := helperConfig{Token: opts.Token, AgentArgs: append([]string{"-public", "fd:3", "-internal", "fd:4"}, opts.Args...)}
	cmd, log, upper := prepare(t, &cfg, []net.Listener{pub, in}, false)
	a.cmd, a.log, a.Upper = cmd, log, upper
	if err := cmd.Start(); err != nil {
		t.Fatalf("start agent helper: %v", err)
	}
	pub.Close()
	in.Close()
	for _, f := range cmd.ExtraFiles {
		f.Close()
	}
	a.done = make(chan struct{})
	go func() { _ = cmd.Wait(); close(a.done) }()
	t.Cleanup(func() {
		a.Stop()
		if t.Failed() {
			t.Logf("agent log:\n%s", a.Log())
		}
	})
	if err := waitHealthy(a.URL, a.done, 20*time.Second); err != nil {
		a.Stop()
		t.Fatalf("agent did not come up: %v\nlog:\n%s", err, a.Log())
	}
	return a
}

// Stop stops the agent (SIGTERM, then SIGKILL after 10 s); everything it
// started dies with its PID namespace.
func (a *Agent) Stop() {
	select {
	case <-a.done:
		return
	default:
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.done
	}
}

// RunInNetwork starts the agent as Start does, but in a new network
// namespace too, with its public API on 127.0.0.1:49983 of that namespace
// (the address the e2b SDKs use in debug mode), runs argv there (not
// chrooted, in dir, with env added) once the agent is healthy, stops the
// agent and returns argv's combined output and exit error.
func RunInNetwork(t testing.TB, opts Options, dir string, env []string, argv ...string) (string, error) {
	t.Helper()
	in, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := helperConfig{
		Token:      opts.Token,
		AgentArgs:  append([]string{"-public", "fd:3", "-internal", "fd:4"}, opts.Args...),
		NetnsAddr:  "127.0.0.1:49983",
		Run:        argv,
		RunDir:     dir,
		RunEnv:     env,
		InternalFD: true,
	}
	cmd, log, _ := prepare(t, &cfg, []net.Listener{in}, true)
	err = cmd.Start()
	in.Close()
	for _, f := range cmd.ExtraFiles {
		f.Close()
	}
	if err != nil {
		t.Fatalf("start agent helper: %v", err)
	}
	err = cmd.Wait()
	return log.String(), err
}

// prepare builds the helper command: the overlay directories, the agent
// binary, the listeners as descriptors 3, 4, ….
func prepare(t testing.TB, cfg *helperConfig, lns []net.Listener, netns bool) (*exec.Cmd, *syncBuffer, string) {
	t.Helper()
	cfg.Lower = Root(t)
	cfg.Agent = agentBinary(t)
	tmp := t.TempDir()
	cfg.Upper = filepath.Join(tmp, "upper")
	cfg.Work = filepath.Join(tmp, "work")
	cfg.Merged = filepath.Join(tmp, "merged")
	for _, d := range []string{cfg.Upper, cfg.Work, cfg.Merged} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+string(raw))
	flags := uintptr(syscall.CLONE_NEWNS | syscall.CLONE_NEWPID)
	if netns {
		flags |= syscall.CLONE_NEWNET
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: flags, Pdeathsig: syscall.SIGKILL}
	for _, ln := range lns {
		f, err := ln.(*net.TCPListener).File()
		if err != nil {
			t.Fatal(err)
		}
		cmd.ExtraFiles = append(cmd.ExtraFiles, f)
	}
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	return cmd, log, cfg.Upper
}

func waitHealthy(base string, done <-chan struct{}, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	c := &http.Client{Timeout: time.Second}
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return fmt.Errorf("agent exited")
		default:
		}
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
	return fmt.Errorf("not healthy after %v: %v", limit, last)
}

var (
	buildMu  sync.Mutex
	buildDir string
	buildBin string
)

// agentBinary builds cmd/husk-agent once per test binary, static.
func agentBinary(t testing.TB) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if buildBin != "" {
		return buildBin
	}
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		t.Fatalf("go list -m: %v", err)
	}
	modDir := strings.TrimSpace(string(out))
	dir, err := os.MkdirTemp("", "husk-agent-test-")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "husk-agent")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/husk-agent")
	cmd.Dir = modDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		t.Fatalf("build husk-agent: %v\n%s", err, out)
	}
	buildDir, buildBin = dir, bin
	return bin
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
