package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/huskvm/husk/internal/envd/process"
)

// Command is a process to run in the guest.
type Command struct {
	Args []string          // Args[0] is looked up in the guest's PATH
	Env  map[string]string // added to the agent's default environment
	Dir  string            // working directory; "" is the user's home

	// Stdin, if not nil, feeds the process's standard input (or its
	// terminal, with TTY); its end closes the input. nil gives /dev/null.
	Stdin io.Reader
	// TTY, if not nil, runs the process on a pseudo-terminal of this size;
	// the terminal's output goes to Stdout.
	TTY *TTYSize

	Stdout, Stderr io.Writer

	// Signals carries signals for the process while it runs: SIGINT and
	// SIGTERM are passed on (SIGINT as the terminal's ^C byte under a TTY);
	// others are ignored.
	Signals <-chan os.Signal
	// Resize carries new terminal sizes (TTY only).
	Resize <-chan TTYSize
}

// TTYSize is a terminal size in characters.
type TTYSize struct{ Cols, Rows uint32 }

// Exit is how a process ended.
type Exit struct {
	Code   int    // exit code; -1 if a signal ended the process
	Signal int    // the signal that ended it, or 0
	Status string // the agent's description, e.g. "exit status 1"
}

// ShellStatus is the status a shell would report: the code, or 128+N for
// signal N.
func (e Exit) ShellStatus() int {
	if e.Signal > 0 {
		return 128 + e.Signal
	}
	return e.Code
}

// StartError is a process that could not start; Status is the shell's
// status for it: 127 (no such command) or 126 (cannot run it).
type StartError struct {
	Status int
	Err    error
}

func (e *StartError) Error() string { return e.Err.Error() }
func (e *StartError) Unwrap() error { return e.Err }

// inputChunk is the most stdin one SendInput carries.
const inputChunk = 32 << 10

// Run runs c in the guest and waits for it to end, streaming its output.
// A process that cannot start gives a *StartError.
func (a *Agent) Run(ctx context.Context, c Command) (Exit, error) {
	if len(c.Args) == 0 || c.Args[0] == "" {
		return Exit{}, errors.New("no command given")
	}
	cfg := &process.ProcessConfig{Cmd: c.Args[0], Args: c.Args[1:], Envs: c.Env}
	if c.Dir != "" {
		cfg.Cwd = proto.String(c.Dir)
	}
	msg := &process.StartRequest{Process: cfg, Stdin: proto.Bool(c.Stdin != nil && c.TTY == nil)}
	if c.TTY != nil {
		msg.Pty = &process.PTY{Size: &process.PTY_Size{Cols: c.TTY.Cols, Rows: c.TTY.Rows}}
	}
	// The control pump has ended when Run returns, so that it cannot take a
	// signal meant for whatever runs next on the same channel.
	var control sync.WaitGroup
	defer control.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := a.Process.Start(ctx, connect.NewRequest(msg))
	if err != nil {
		return Exit{}, startError(err)
	}
	defer stream.Close()

	var pid uint32
	started := false
	for stream.Receive() {
		ev := stream.Msg().GetEvent()
		switch {
		case ev.GetStart() != nil && !started:
			started = true
			pid = ev.GetStart().GetPid()
			sel := &process.ProcessSelector{Selector: &process.ProcessSelector_Pid{Pid: pid}}
			if c.Stdin != nil {
				go a.pumpInput(ctx, sel, c.Stdin, c.TTY != nil)
			}
			control.Go(func() { a.pumpControl(ctx, sel, c) })
		case ev.GetData() != nil:
			d := ev.GetData()
			var err error
			switch {
			case d.GetStdout() != nil:
				_, err = c.Stdout.Write(d.GetStdout())
			case d.GetStderr() != nil:
				_, err = c.Stderr.Write(d.GetStderr())
			case d.GetPty() != nil:
				_, err = c.Stdout.Write(d.GetPty())
			}
			if err != nil {
				return Exit{}, fmt.Errorf("write output: %w", err)
			}
		case ev.GetEnd() != nil:
			return exitOf(ev.GetEnd()), nil
		}
	}
	if err := stream.Err(); err != nil {
		if !started {
			return Exit{}, startError(err)
		}
		return Exit{}, fmt.Errorf("process %d: %w", pid, err)
	}
	return Exit{}, fmt.Errorf("process %d: the stream ended without an end event", pid)
}

// pumpInput sends r to the process until its end, then closes the input
// (a terminal gets no EOF: it stays, as when a user stops typing).
func (a *Agent) pumpInput(ctx context.Context, sel *process.ProcessSelector, r io.Reader, tty bool) {
	buf := make([]byte, inputChunk)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			in := &process.ProcessInput{Input: &process.ProcessInput_Stdin{Stdin: buf[:n]}}
			if tty {
				in.Input = &process.ProcessInput_Pty{Pty: buf[:n]}
			}
			if _, serr := a.Process.SendInput(ctx, connect.NewRequest(&process.SendInputRequest{Process: sel, Input: in})); serr != nil {
				return // the process is gone, or the run is over
			}
		}
		if err != nil {
			if !tty {
				a.Process.CloseStdin(ctx, connect.NewRequest(&process.CloseStdinRequest{Process: sel}))
			}
			return
		}
	}
}

// pumpControl passes signals and terminal resizes on until ctx ends.
func (a *Agent) pumpControl(ctx context.Context, sel *process.ProcessSelector, c Command) {
	for {
		select {
		case <-ctx.Done():
			return
		case sig := <-c.Signals:
			switch {
			case sig == syscall.SIGINT && c.TTY != nil:
				in := &process.ProcessInput{Input: &process.ProcessInput_Pty{Pty: []byte{0x03}}}
				a.Process.SendInput(ctx, connect.NewRequest(&process.SendInputRequest{Process: sel, Input: in}))
			case sig == syscall.SIGINT:
				a.Process.SendSignal(ctx, connect.NewRequest(&process.SendSignalRequest{Process: sel, Signal: process.Signal_SIGNAL_SIGINT}))
			case sig == syscall.SIGTERM:
				a.Process.SendSignal(ctx, connect.NewRequest(&process.SendSignalRequest{Process: sel, Signal: process.Signal_SIGNAL_SIGTERM}))
			}
		case size := <-c.Resize:
			if c.TTY != nil {
				pty := &process.PTY{Size: &process.PTY_Size{Cols: size.Cols, Rows: size.Rows}}
				a.Process.Update(ctx, connect.NewRequest(&process.UpdateRequest{Process: sel, Pty: pty}))
			}
		}
	}
}

// startError classifies a failed start: a missing command is 127, one the
// user may not run 126, anything else an error of husk's.
func startError(err error) error {
	var ce *connect.Error
	if errors.As(err, &ce) {
		switch {
		case ce.Code() == connect.CodeInvalidArgument && strings.Contains(ce.Message(), "executable not found"):
			return &StartError{Status: 127, Err: errors.New(ce.Message())}
		case ce.Code() == connect.CodePermissionDenied, ce.Code() == connect.CodeInvalidArgument:
			return &StartError{Status: 126, Err: errors.New(ce.Message())}
		}
	}
	return fmt.Errorf("start: %w", err)
}

// exitOf reads an end event. The agent describes a signal death as Go's
// os.ProcessState does ("signal: killed"), so the number is found by name.
func exitOf(end *process.ProcessEvent_EndEvent) Exit {
	e := Exit{Code: int(end.GetExitCode()), Status: end.GetStatus()}
	if end.GetExited() {
		return e
	}
	name, ok := strings.CutPrefix(e.Status, "signal: ")
	if !ok {
		return e
	}
	name = strings.TrimSuffix(name, " (core dumped)")
	for n := 1; n < 65; n++ {
		if syscall.Signal(n).String() == name {
			e.Signal = n
			break
		}
	}
	return e
}
