package sandbox

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/huskvm/husk/internal/agent/agenttest"
)

func TestMain(m *testing.M) { agenttest.Main(m) }

// vsockProxy plays the VMM's side of Firecracker's vsock convention on a
// Unix socket: "CONNECT <port>\n" gets "OK <n>\n", and the stream then
// goes to the agent's TCP listener (port must be AgentPort); other ports are
// refused by closing, as the VMM does when no guest listener answers.
func vsockProxy(t *testing.T, agentAddr string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "v.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, err := bufio.NewReader(io.LimitReader(c, 64)).ReadString('\n')
				if err != nil || line != fmt.Sprintf("CONNECT %d\n", AgentPort) {
					return
				}
				up, err := net.Dial("tcp", agentAddr)
				if err != nil {
					return
				}
				defer up.Close()
				io.WriteString(c, "OK 1073741824\n")
				go func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite() }()
				io.Copy(c, up)
			}()
		}
	}()
	return sock
}

// startAgent runs the real agent (chrooted, see agenttest) behind a proxy.
func startAgent(t *testing.T, user string) *Agent {
	agenttest.RequireRoot(t)
	a := agenttest.Start(t, agenttest.Options{})
	sock := vsockProxy(t, strings.TrimPrefix(a.InternalURL, "http://"))
	c := NewAgent(sock, user)
	t.Cleanup(c.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Health(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

func run(t *testing.T, a *Agent, c Command) (Exit, string, string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	e, err := a.Run(ctx, c)
	return e, out.String(), errb.String(), err
}

func TestRun(t *testing.T) {
	a := startAgent(t, "root")

	t.Run("output and status", func(t *testing.T) {
		e, out, errs, err := run(t, a, Command{Args: []string{"sh", "-c", "echo out; echo err >&2; exit 3"}})
		if err != nil || e.ShellStatus() != 3 || out != "out\n" || errs != "err\n" {
			t.Fatalf("exit %+v err %v stdout %q stderr %q", e, err, out, errs)
		}
	})
	t.Run("user env dir", func(t *testing.T) {
		e, out, _, err := run(t, a, Command{Args: []string{"sh", "-c", "id -un; echo $K; pwd"}, Env: map[string]string{"K": "v w"}, Dir: "/tmp"})
		if err != nil || e.ShellStatus() != 0 || out != "root\nv w\n/tmp\n" {
			t.Fatalf("exit %+v err %v stdout %q", e, err, out)
		}
	})
	t.Run("stdin", func(t *testing.T) {
		in := bytes.Repeat([]byte("0123456789abcdef"), 20000) // several chunks
		e, out, _, err := run(t, a, Command{Args: []string{"cat"}, Stdin: bytes.NewReader(in)})
		if err != nil || e.ShellStatus() != 0 || out != string(in) {
			t.Fatalf("exit %+v err %v: %d bytes back of %d", e, err, len(out), len(in))
		}
	})
	t.Run("no stdin reads EOF", func(t *testing.T) {
		e, out, _, err := run(t, a, Command{Args: []string{"sh", "-c", "cat; echo done"}})
		if err != nil || e.ShellStatus() != 0 || out != "done\n" {
			t.Fatalf("exit %+v err %v stdout %q", e, err, out)
		}
	})
	t.Run("signal", func(t *testing.T) {
		sigs := make(chan os.Signal, 1)
		sigs <- syscall.SIGINT
		e, _, _, err := run(t, a, Command{Args: []string{"sleep", "30"}, Signals: sigs})
		if err != nil || e.Signal != int(syscall.SIGINT) || e.ShellStatus() != 130 {
			t.Fatalf("exit %+v err %v", e, err)
		}
		sigs <- syscall.SIGTERM
		e, _, _, err = run(t, a, Command{Args: []string{"sleep", "30"}, Signals: sigs})
		if err != nil || e.ShellStatus() != 143 {
			t.Fatalf("exit %+v err %v", e, err)
		}
	})
	t.Run("tty", func(t *testing.T) {
		e, out, _, err := run(t, a, Command{Args: []string{"sh", "-c", "stty size; tty -s && echo tty"}, TTY: &TTYSize{Cols: 91, Rows: 33}})
		if err != nil || e.ShellStatus() != 0 || !strings.Contains(out, "33 91") || !strings.Contains(out, "tty") {
			t.Fatalf("exit %+v err %v output %q", e, err, out)
		}
	})
	t.Run("tty interrupt", func(t *testing.T) {
		sigs := make(chan os.Signal, 1)
		sigs <- syscall.SIGINT // becomes ^C on the terminal
		e, _, _, err := run(t, a, Command{Args: []string{"sleep", "30"}, TTY: &TTYSize{Cols: 80, Rows: 24}, Signals: sigs})
		if err != nil || e.ShellStatus() != 130 {
			t.Fatalf("exit %+v err %v", e, err)
		}
	})
	t.Run("not found", func(t *testing.T) {
		_, _, _, err := run(t, a, Command{Args: []string{"no-such-command"}})
		var se *StartError
		if !errors.As(err, &se) || se.Status != 127 {
			t.Fatalf("err %v, want a StartError with status 127", err)
		}
	})
}

func TestRunAsUser(t *testing.T) {
	a := startAgent(t, "user")
	e, out, _, err := run(t, a, Command{Args: []string{"sh", "-c", "id -u; pwd"}})
	if err != nil || e.ShellStatus() != 0 || out != "1000\n/home/user\n" {
		t.Fatalf("exit %+v err %v stdout %q", e, err, out)
	}
}

func TestDialVsockRefused(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "v.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	answers := []string{"", "NO\n", "OK x\n", strings.Repeat("O", 100)}
	go func() {
		for _, ans := range answers {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			bufio.NewReader(c).ReadString('\n')
			io.WriteString(c, ans)
			c.Close()
		}
	}()
	for _, ans := range answers {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := DialVsock(ctx, sock, AgentPort)
		cancel()
		if err == nil {
			c.Close()
			t.Errorf("answer %q: dial succeeded", ans)
		}
	}
}
