//go:build linux

package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"syscall"
	"time"

	"github.com/huskvm/husk/internal/shellquote"
	"github.com/huskvm/husk/internal/tailbuf"
)

// vmSpec is one VMM invocation.
type vmSpec struct {
	Name string
	Argv []string
	Env  []string // added to the environment
}

// vm is a running VMM with the guest program: commands go in through the
// serial console's input, results come back as console lines.
type vm struct {
	spec    vmSpec
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	entries chan entry    // the guest's report entries, in order; closed at the console's end
	exited  chan struct{} // closed once the VMM has exited and its console been read to the end
	exitErr error         // cmd.Wait's result; set before exited is closed
	console *tailbuf.Buffer
	stderr  *tailbuf.Buffer
}

// entry is one DEVBENCH_<Key>=<Value> line.
type entry struct{ Key, Value string }

var reportLine = regexp.MustCompile(`DEVBENCH_([A-Z0-9_]+)=(\S*)`)

// parseEntry returns the report entry in a console line, if there is one.
func parseEntry(line string) (entry, bool) {
	m := reportLine.FindStringSubmatch(line)
	if m == nil {
		return entry{}, false
	}
	return entry{m[1], m[2]}, true
}

// startVM starts a VMM. The guest's console input is a pipe that stays open
// (neither VMM sees end of file on it) and carries the commands.
func startVM(s vmSpec) (*vm, error) {
	// stderr has room for a Go goroutine dump (see quit).
	v := &vm{spec: s, console: tailbuf.New(32 << 10), stderr: tailbuf.New(256 << 10),
		entries: make(chan entry, 64), exited: make(chan struct{})}
	v.cmd = exec.Command(s.Argv[0], s.Argv[1:]...)
	var err error
	if v.stdin, err = v.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := v.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	v.cmd.Stderr = v.stderr
	v.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if len(s.Env) > 0 {
		v.cmd.Env = append(os.Environ(), s.Env...)
	}
	if err := v.cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", s.Name, err)
	}
	go func() {
		sc := bufio.NewScanner(io.TeeReader(stdout, v.console))
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			if e, ok := parseEntry(sc.Text()); ok {
				v.entries <- e
			}
		}
		io.Copy(io.Discard, stdout) // after a line too long: keep the console flowing
		close(v.entries)
		v.exitErr = v.cmd.Wait() // Wait closes the pipe: only after reading it to its end
		close(v.exited)
	}()
	return v, nil
}

// await collects the guest's report entries until key arrives, and returns
// them all by key (the last value of each). It fails when the guest reports
// FAIL, the VMM exits, or timeout passes.
func (v *vm) await(key string, timeout time.Duration) (map[string]string, error) {
	got := map[string]string{}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case e, ok := <-v.entries:
			if !ok {
				<-v.exited
				return got, fmt.Errorf("%s exited: %s", v.spec.Name, exitText(v.exitErr))
			}
			got[e.Key] = e.Value
			switch e.Key {
			case key:
				return got, nil
			case "FAIL":
				time.Sleep(200 * time.Millisecond) // let the traceback's end arrive
				return got, fmt.Errorf("%s: the guest program failed (traceback on the console)", v.spec.Name)
			}
		case <-timer.C:
			return got, fmt.Errorf("%s: no %s from the guest within %v", v.spec.Name, key, timeout)
		}
	}
}

// do sends one command and awaits its result entry.
func (v *vm) do(command, key string, timeout time.Duration) (map[string]string, error) {
	if _, err := io.WriteString(v.stdin, command+"\n"); err != nil {
		return nil, fmt.Errorf("%s: sending %q: %w", v.spec.Name, command, err)
	}
	return v.await(key, timeout)
}

// reapTimeout bounds the wait from SIGKILL to the VMM's exit (a thread
// stuck in the kernel can delay it).
const reapTimeout = 30 * time.Second

// stop SIGKILLs the VMM (the guest program never ends by itself) and waits,
// within reapTimeout, for it to be gone. Only one goroutine may call stop
// (or await); calling it again is harmless.
func (v *vm) stop() error {
	v.cmd.Process.Kill()
	go func() {
		for range v.entries { // unblock the reader
		}
	}()
	defer v.stdin.Close()
	select {
	case <-v.exited:
		return nil
	case <-time.After(reapTimeout):
		return fmt.Errorf("%s (pid %d) is still there %v after SIGKILL", v.spec.Name, v.cmd.Process.Pid, reapTimeout)
	}
}

// quitTimeout is how long quit waits for the VMM to exit.
const quitTimeout = 5 * time.Second

// quit asks a VMM that stopped answering to exit with SIGQUIT before stop
// kills it: husk-vmm, a Go program, then prints every goroutine's stack to
// its stderr (which diagnostics shows), and QEMU simply exits.
func (v *vm) quit() {
	v.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-v.exited:
	case <-time.After(quitTimeout):
	}
}

// diagnostics is what a failed VMM left: its command line, console and
// stderr.
func (v *vm) diagnostics() string {
	return fmt.Sprintf("--- %s argv: %s\n--- %s console:\n%s\n--- %s stderr:\n%s\n---\n",
		v.spec.Name, shellquote.Join(v.spec.Argv), v.spec.Name, v.console.Bytes(), v.spec.Name, v.stderr.Bytes())
}

func exitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ProcessState.String()
	}
	return err.Error()
}
