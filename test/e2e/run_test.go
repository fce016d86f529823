package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/huskvm/husk/internal/testutil/kvmtest"
)

// The husk run tests drive the husk binary as a user would, with the base
// template (HUSK_BASE, holding this build's agent) and --direct: inside the
// test host the VM runs on its /dev/kvm, as husk itself does one level up.

// runDeadline bounds one husk run: a boot plus a short command.
const runDeadline = 3 * time.Minute

type huskRun struct {
	stdin  io.Reader
	flags  []string // before "--"
	tmpdir string   // TMPDIR for husk (its per-run directories); default t.TempDir()
}

type runResult struct {
	stdout, stderr string
	code           int
}

// huskCmd returns the husk run command for r and argv.
func huskCmd(t *testing.T, ctx context.Context, r huskRun, argv ...string) *exec.Cmd {
	t.Helper()
	husk, base := os.Getenv("HUSK_HUSK"), os.Getenv("HUSK_BASE")
	if husk == "" || base == "" {
		kvmtest.Unavailable(t, "HUSK_HUSK and HUSK_BASE are not set; run the e2e tests through `make test`")
	}
	a := need(t)
	args := append([]string{"run", "--direct", "--vmm", a.vmm, "--kernel", a.vmlinux, "--rootfs", base}, r.flags...)
	cmd := exec.CommandContext(ctx, husk, append(append(args, "--"), argv...)...)
	if r.tmpdir == "" {
		r.tmpdir = t.TempDir()
	}
	cmd.Env = append(os.Environ(), "TMPDIR="+r.tmpdir)
	cmd.Stdin = r.stdin
	return cmd
}

// husk runs husk run to the end and returns what it printed and its status.
func husk(t *testing.T, r huskRun, argv ...string) runResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), runDeadline)
	defer cancel()
	cmd := huskCmd(t, ctx, r, argv...)
	// Past the deadline, husk first prints husk-vmm's device state
	// (SIGUSR1), so that a stalled run explains itself.
	cmd.Cancel = func() error {
		cmd.Process.Signal(syscall.SIGUSR1)
		time.Sleep(2 * time.Second)
		return cmd.Process.Kill()
	}
	cmd.WaitDelay = 10 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := runResult{stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()}
	var ee *exec.ExitError
	if ctx.Err() != nil || (err != nil && !errors.As(err, &ee)) {
		t.Fatalf("husk run %q: %v (deadline %v)\nstdout (%d bytes), the end:\n%q\nstderr (%d bytes), the end:\n%s",
			argv, err, runDeadline, len(res.stdout), lastBytes(res.stdout, 4<<10), len(res.stderr), lastBytes(res.stderr, 16<<10))
	}
	return res
}

// lastBytes is the end of s, at most n bytes: a failure shows how a long
// output ended without flooding the log.
func lastBytes(s string, n int) string { return s[max(0, len(s)-n):] }

func TestHuskRunPython(t *testing.T) {
	r := husk(t, huskRun{}, "python3", "-c", "print(6*7)")
	if r.code != 0 || r.stdout != "42\n" {
		t.Fatalf("status %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestHuskRunStatuses(t *testing.T) {
	for _, tc := range []struct {
		name   string
		flags  []string
		argv   []string
		code   int
		stderr string
	}{
		{"exit code", nil, []string{"sh", "-c", "echo out; echo err >&2; exit 7"}, 7, "err\n"},
		{"killed by signal", nil, []string{"sh", "-c", "kill -TERM $$"}, 128 + 15, ""},
		{"not found", nil, []string{"no-such-command"}, 127, "not found"},
		{"husk failed", []string{"--mem", "0"}, []string{"true"}, 125, "husk"},
		{"tty", []string{"-t"}, []string{"tty"}, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := husk(t, huskRun{flags: tc.flags}, tc.argv...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.stderr) {
				t.Fatalf("status %d, want %d; stderr %q, want it to contain %q; stdout %q", r.code, tc.code, r.stderr, tc.stderr, r.stdout)
			}
			if tc.name == "exit code" && r.stdout != "out\n" {
				t.Errorf("stdout %q: stdout and stderr must stay apart", r.stdout)
			}
			if tc.name == "tty" && !strings.HasPrefix(r.stdout, "/dev/pts/") {
				t.Errorf("tty printed %q", r.stdout)
			}
		})
	}
}

func TestHuskRunStdin(t *testing.T) {
	r := husk(t, huskRun{stdin: strings.NewReader("hi\n"), flags: []string{"-i"}}, "cat")
	if r.code != 0 || r.stdout != "hi\n" {
		t.Fatalf("status %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
}

// TestHuskRunLargeOutput: 50 MiB on stdout arrive byte-exact; the guest
// prints its checksum on stderr.
func TestHuskRunLargeOutput(t *testing.T) {
	const n = 50 << 20
	prog := `import hashlib, os, sys
h = hashlib.sha256()
block = bytes(range(256)) * 256
left = ` + strconv.Itoa(n) + `
while left:
    b = block[:min(left, len(block))]
    b = hashlib.sha256(b + left.to_bytes(8, 'little')).digest() * (len(b) // 32) + b[:len(b) % 32]
    sys.stdout.buffer.write(b)
    h.update(b)
    left -= len(b)
sys.stdout.flush()
print(h.hexdigest(), file=sys.stderr)`
	r := husk(t, huskRun{}, "python3", "-c", prog)
	sum := sha256.Sum256([]byte(r.stdout))
	if r.code != 0 || len(r.stdout) != n || strings.TrimSpace(r.stderr) != hex.EncodeToString(sum[:]) {
		t.Fatalf("status %d, %d bytes of %d, host sha256 %x, guest said %q", r.code, len(r.stdout), n, sum, r.stderr)
	}
}

func TestHuskRunTimeout(t *testing.T) {
	r := husk(t, huskRun{flags: []string{"--timeout", "40s"}}, "sleep", "600")
	if r.code != 124 || !strings.Contains(r.stderr, "timed out") {
		t.Fatalf("status %d stderr %q", r.code, r.stderr)
	}
}

// TestHuskRunSignals: SIGINT and SIGTERM given to husk reach the command;
// under -t, SIGINT arrives as the terminal's ^C.
func TestHuskRunSignals(t *testing.T) {
	for _, tc := range []struct {
		name  string
		flags []string
		argv  []string
		sig   syscall.Signal
		code  int
		out   string
	}{
		{"SIGINT handled", nil, []string{"sh", "-c", `trap 'echo got INT; exit 5' INT; echo ready; while :; do sleep 0.1; done`}, syscall.SIGINT, 5, "got INT"},
		{"SIGTERM", nil, []string{"sh", "-c", "echo ready; exec sleep 600"}, syscall.SIGTERM, 128 + 15, ""},
		{"SIGINT under -t", []string{"-t"}, []string{"sh", "-c", "echo ready; exec sleep 600"}, syscall.SIGINT, 128 + 2, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), runDeadline)
			defer cancel()
			cmd := huskCmd(t, ctx, huskRun{flags: tc.flags}, tc.argv...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var stdout bytes.Buffer
			ready := make(chan struct{})
			copied := make(chan struct{})
			go func() {
				defer close(copied)
				buf := make([]byte, 4096)
				once := sync.Once{}
				for {
					n, err := out.Read(buf)
					stdout.Write(buf[:n])
					if strings.Contains(stdout.String(), "ready") {
						once.Do(func() { close(ready) })
					}
					if err != nil {
						return
					}
				}
			}()
			select {
			case <-ready:
			case <-copied:
				cmd.Wait()
				t.Fatalf("husk ended before the command was ready: stdout %q stderr %q", stdout.String(), stderr.String())
			case <-ctx.Done():
				t.Fatalf("the command never got ready: stderr %q", stderr.String())
			}
			cmd.Process.Signal(tc.sig)
			<-copied
			cmd.Wait()
			if code := cmd.ProcessState.ExitCode(); code != tc.code || !strings.Contains(stdout.String(), tc.out) {
				t.Fatalf("status %d, want %d; stdout %q; stderr %q", code, tc.code, stdout.String(), stderr.String())
			}
		})
	}
}

// TestHuskRunConcurrent: two runs on one template at once each see only
// their own writes, the template stays bit-identical, and neither leaves a
// husk-vmm process or a file behind.
func TestHuskRunConcurrent(t *testing.T) {
	base := os.Getenv("HUSK_BASE")
	if base == "" {
		kvmtest.Unavailable(t, "HUSK_BASE is not set; run the e2e tests through `make test`")
	}
	before := sha(t, base)
	tmp := t.TempDir()
	var wg sync.WaitGroup
	results := make([]runResult, 2)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mark := "run-" + strconv.Itoa(i)
			results[i] = husk(t, huskRun{tmpdir: tmp}, "sh", "-c",
				"cat /etc/husk-mark 2>/dev/null; echo "+mark+" > /etc/husk-mark && sync && cat /etc/husk-mark")
		}()
	}
	wg.Wait()
	for i, r := range results {
		if want := "run-" + strconv.Itoa(i) + "\n"; r.code != 0 || r.stdout != want {
			t.Errorf("run %d: status %d stdout %q, want %q (only its own write); stderr %q", i, r.code, r.stdout, want, r.stderr)
		}
	}
	if after := sha(t, base); after != before {
		t.Errorf("template changed: sha256 %s before, %s after", before, after)
	}
	if left, _ := filepath.Glob(filepath.Join(tmp, "*")); len(left) != 0 {
		t.Errorf("left behind: %v", left)
	}
	if pids := vmmProcesses(t); len(pids) != 0 {
		t.Errorf("husk-vmm processes still running: %v", pids)
	}
}

// vmmProcesses lists running husk-vmm processes.
func vmmProcesses(t *testing.T) []string {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []string
	for _, e := range ents {
		if b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm")); err == nil && strings.TrimSpace(string(b)) == "husk-vmm" {
			pids = append(pids, e.Name())
		}
	}
	return pids
}
