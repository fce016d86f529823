package agent_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/huskvm/husk/internal/agent/agenttest"
	"github.com/huskvm/husk/internal/envd/process"
)

func TestProcessStartBasics(t *testing.T) {
	e := startAgent(t, agenttest.Options{})
	ctx := ctxTimeout(t, 60*time.Second)

	for _, tc := range []struct {
		name, user, script string
		wantOut, wantErr   string
		wantCode           int32
		wantExited         bool
		wantStatus         string
	}{
		{"default user", "", "id -un; pwd; echo $HOME", "user\n/home/user\n/home/user\n", "", 0, true, "exit status 0"},
		{"root", "root", "id -u; pwd", "0\n/root\n", "", 0, true, "exit status 0"},
		{"user by name", "user", "id -u; id -g", "1000\n1000\n", "", 0, true, "exit status 0"},
		{"stderr and status", "", "echo out; echo err >&2; exit 7", "out\n", "err\n", 7, true, "exit status 7"},
		{"killed by signal", "", "kill -9 $$", "", "", -1, false, "signal: killed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := e.shell(ctx, tc.user, tc.script)
			if err != nil {
				t.Fatal(err)
			}
			if r.first != "start" || r.pid == 0 {
				t.Errorf("first event %q pid %d, want start with a pid", r.first, r.pid)
			}
			if string(r.stdout) != tc.wantOut || string(r.stderr) != tc.wantErr {
				t.Errorf("stdout %q stderr %q, want %q %q", r.stdout, r.stderr, tc.wantOut, tc.wantErr)
			}
			if r.end == nil {
				t.Fatal("no end event")
			}
			if r.end.GetExitCode() != tc.wantCode || r.end.GetExited() != tc.wantExited || r.end.GetStatus() != tc.wantStatus {
				t.Errorf("end %v, want code %d exited %v status %q", r.end, tc.wantCode, tc.wantExited, tc.wantStatus)
			}
		})
	}
}

func TestProcessStartConfig(t *testing.T) {
	e := startAgent(t, agenttest.Options{})
	ctx := ctxTimeout(t, 60*time.Second)
	cwd := "/tmp"
	f := false
	req := connect.NewRequest(&process.StartRequest{
		Process: &process.ProcessConfig{
			Cmd:  "/bin/bash",
			Args: []string{"-l", "-c", `echo "$B|$PWD|$USER|$LOGNAME|$HOME"`},
			Envs: map[string]string{"B": "2"},
			Cwd:  &cwd,
		},
		Stdin: &f,
	})
	r, err := e.run(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(r.stdout), "2|/tmp|user|user|/home/user\n"; got != want {
		t.Errorf("stdout %q, want %q", got, want)
	}

	// A command found through PATH, and relative cwd against home.
	rel := "."
	r, err = e.run(ctx, connect.NewRequest(&process.StartRequest{
		Process: &process.ProcessConfig{Cmd: "pwd", Cwd: &rel},
	}))
	if err != nil {
		t.Fatal(err)
	}
	if string(r.stdout) != "/home/user\n" {
		t.Errorf("pwd printed %q", r.stdout)
	}
}

func TestProcessStartErrors(t *testing.T) {
	e := startAgent(t, agenttest.Options{})
	ctx := ctxTimeout(t, 60*time.Second)
	nope := "/nonexistent"
	for _, tc := range []struct {
		name string
		req  *connect.Request[process.StartRequest]
		user string
		want connect.Code
	}{
		{"no cmd", connect.NewRequest(&process.StartRequest{Process: &process.ProcessConfig{}}), "", connect.CodeInvalidArgument},
		{"no process", connect.NewRequest(&process.StartRequest{}), "", connect.CodeInvalidArgument},
		{"missing cwd", connect.NewRequest(&process.StartRequest{Process: &process.ProcessConfig{Cmd: "true", Cwd: &nope}}), "", connect.CodeInvalidArgument},
		{"missing command", connect.NewRequest(&process.StartRequest{Process: &process.ProcessConfig{Cmd: "no-such-command"}}), "", connect.CodeInvalidArgument},
		{"bad env name", connect.NewRequest(&process.StartRequest{Process: &process.ProcessConfig{Cmd: "true", Envs: map[string]string{"A=B": "1"}}}), "", connect.CodeInvalidArgument},
		{"bad user", connect.NewRequest(&process.StartRequest{Process: &process.ProcessConfig{Cmd: "true"}}), "nobody-here", connect.CodeUnauthenticated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.run(ctx, withUser(tc.req, tc.user))
			if connectCode(err) != tc.want {
				t.Fatalf("error %v, want code %v", err, tc.want)
			}
		})
	}
}

func TestProcessStdinSignalListConnect(t *testing.T) {
	e := startAgent(t, agenttest.Options{})
	ctx := ctxTimeout(t, 60*time.Second)
	tr := true
	tag := "cat-1"
	stream, err := e.proc.Start(ctx, connect.NewRequest(&process.StartRequest{
		Process: &process.ProcessConfig{Cmd: "/bin/cat"},
		Stdin:   &tr,
		Tag:     &tag,
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	if !stream.Receive() {
		t.Fatal(stream.Err())
	}
	pid := stream.Msg().GetEvent().GetStart().GetPid()
	if pid == 0 {
		t.Fatalf("first event %v, want start", stream.Msg())
	}

	// List shows it with its config and tag.
	lr, err := e.proc.List(ctx, connect.NewRequest(&process.ListRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range lr.Msg.GetProcesses() {
		if p.GetPid() == pid {
			found = true
			if p.GetTag() != tag || p.GetConfig().GetCmd() != "/bin/cat" || p.GetConfig().GetCwd() != "/home/user" {
				t.Errorf("listed %v", p)
			}
		}
	}
	if !found {
		t.Fatalf("pid %d not listed in %v", pid, lr.Msg)
	}

	// SendInput by pid, then by tag; cat echoes both.
	for _, sel := range []*process.ProcessSelector{
		{Selector: &process.ProcessSelector_Pid{Pid: pid}},
		{Selector: &process.ProcessSelector_Tag{Tag: tag}},
	} {
		_, err := e.proc.SendInput(ctx, connect.NewRequest(&process.SendInputRequest{
			Process: sel,
			Input:   &process.ProcessInput{Input: &process.ProcessInput_Stdin{Stdin: []byte("ping\n")}},
		}))
		if err != nil {
			t.Fatal(err)
		}
		if !stream.Receive() {
			t.Fatal(stream.Err())
		}
		if got := string(stream.Msg().GetEvent().GetData().GetStdout()); got != "ping\n" {
			t.Fatalf("echo %q", got)
		}
	}

	// The tag is taken while cat runs.
	if _, err := e.run(ctx, connect.NewRequest(&process.StartRequest{Process: &process.ProcessConfig{Cmd: "true"}, Tag: &tag})); connectCode(err) != connect.CodeAlreadyExists {
		t.Errorf("duplicate tag: %v", err)
	}
	// A pipe process has no terminal to resize.
	if _, err := e.proc.Update(ctx, connect.NewRequest(&process.UpdateRequest{
		Process: &process.ProcessSelector{Selector: &process.ProcessSelector_Tag{Tag: tag}},
		Pty:     &process.PTY{Size: &process.PTY_Size{Cols: 10, Rows: 10}},
	})); connectCode(err) != connect.CodeFailedPrecondition {
		t.Errorf("resize a pipe process: %v", err)
	}
	if _, err := e.proc.SendInput(ctx, connect.NewRequest(&process.SendInputRequest{})); connectCode(err) != connect.CodeInvalidArgument {
		t.Errorf("input without selector: %v", err)
	}

	// PTY input to a pipe process fails.
	_, err = e.proc.SendInput(ctx, connect.NewRequest(&process.SendInputRequest{
		Process: &process.ProcessSelector{Selector: &process.ProcessSelector_Pid{Pid: pid}},
		Input:   &process.ProcessInput{Input: &process.ProcessInput_Pty{Pty: []byte("x")}},
	}))
	if connectCode(err) != connect.CodeFailedPrecondition {
		t.Errorf("pty input to pipe process: %v", err)
	}

	// A second stream through Connect receives output too.
	cctx, ccancel := context.WithCancel(ctx)
	cs, err := e.proc.Connect(cctx, connect.NewRequest(&process.ConnectRequest{
		Process: &process.ProcessSelector{Selector: &process.ProcessSelector_Pid{Pid: pid}},
	}))
	if err != nil {
		t.Fatal(err)
	}
	if !cs.Receive() || cs.Msg().GetEvent().GetStart().GetPid() != pid {
		t.Fatalf("connect: first event %v err %v", cs.Msg(), cs.Err())
	}
	_, err = e.procB.SendInput(ctx, connect.NewRequest(&process.SendInputRequest{
		Process: &process.ProcessSelector{Selector: &process.ProcessSelector_Pid{Pid: pid}},
		Input:   &process.ProcessInput{Input: &process.ProcessInput_Stdin{Stdin: []byte("both\n")}},
	}))
	if err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]interface {
		Receive() bool
		Err() error
	}{"start": stream, "connect": cs} {
		if !s.Receive() {
			t.Fatalf("%s stream: %v", name, s.Err())
		}
	}
	if string(cs.Msg().GetEvent().GetData().GetStdout()) != "both\n" || string(stream.Msg().GetEvent().GetData().GetStdout()) != "both\n" {
		t.Fatalf("fan-out: %v / %v", cs.Msg(), stream.Msg())
	}
	ccancel()
	cs.Close()

	// CloseStdin ends cat with status 0.
	if _, err := e.proc.CloseStdin(ctx, connect.NewRequest(&process.CloseStdinRequest{
		Process: &process.ProcessSelector{Selector: &process.ProcessSelector_Pid{Pid: pid}},
	})); err != nil {
		t.Fatal(err)
	}
	r := &result{}
	for stream.Receive() {
		collect(r, stream.Msg().GetEvent())
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if r.end == nil || r.end.GetExitCode() != 0 || !r.end.GetExited() {
		t.Fatalf("end %v", r.end)
	}

	// Gone: not_found everywhere.
	sel := &process.ProcessSelector{Selector: &process.ProcessSelector_Pid{Pid: pid}}
	if _, err := e.proc.SendSignal(ctx, connect.NewRequest(&process.SendSignalRequest{Process: sel, Signal: process.Signal_SIGNAL_SIGKILL})); connectCode(err) != connect.CodeNotFound {
		t.Errorf("signal to ended process: %v", err)
	}
	if _, err := e.proc.SendInput(ctx, connect.NewRequest(&process.SendInputRequest{Process: sel, Input: &process.ProcessInput{Input: &process.ProcessInput_Stdin{Stdin: []byte("x")}}})); connectCode(err) != connect.CodeNotFound {
		t.Errorf("input to ended process: %v", err)
	}
}

func TestProcessSignals(t *testing.T) {
	e := startAgent(t, agenttest.Options{})
	ctx := ctxTimeout(t, 60*time.Second)
	for _, tc := range []struct {
		sig        process.Signal
		wantStatus string
	}{
		{process.Signal_SIGNAL_SIGKILL, "signal: killed"},
		{process.Signal_SIGNAL_SIGTERM, "signal: terminated"},
	} {
		t.Run(tc.sig.String(), func(t *testing.T) {
			f := false
			// bash -c with two commands forks sleep; the signal reaches the
			// whole process group.
			stream, err := e.proc.Start(ctx, connect.NewRequest(&process.StartRequest{
				Process: &process.ProcessConfig{Cmd: "/bin/bash", Args: []string{"-c", "sleep 100; echo never"}},
				Stdin:   &f,
			}))
			if err != nil {
				t.Fatal(err)
			}
			defer stream.Close()
			if !stream.Receive() {
				t.Fatal(stream.Err())
			}
			pid := stream.Msg().GetEvent().GetStart().GetPid()
			start := time.Now()
			_, err = e.proc.SendSignal(ctx, connect.NewRequest(&process.SendSignalRequest{
				Process: &process.ProcessSelector{Selector: &process.ProcessSelector_Pid{Pid: pid}},
				Signal:  tc.sig,
			}))
			if err != nil {
				t.Fatal(err)
			}
			r := &result{}
			for stream.Receive() {
				collect(r, stream.Msg().GetEvent())
			}
			if r.end == nil || r.end.GetStatus() != tc.wantStatus || r.end.GetExitCode() != -1 || r.end.GetExited() {
				t.Fatalf("end %v, want %q", r.end, tc.wantStatus)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("took %v to end", d)
			}
		})
	}
	_, err := e.proc.SendSignal(ctx, connect.NewRequest(&process.SendSignalRequest{
		Process: &process.ProcessSelector{Selector: &process.ProcessSelector_Pid{Pid: 1}},
		Signal:  process.Signal_SIGNAL_UNSPECIFIED,
	}))
	if connectCode(err) != connect.CodeInvalidArgument {
		t.Errorf("unspecified signal: %v", err)
	}
	_, err = e.proc.SendSignal(ctx, connect.NewRequest(&process.SendSignalRequest{
		Process: &process.ProcessSelector{Selector: &process.ProcessSelector_Pid{Pid: 999999}},
		Signal:  process.Signal_SIGNAL_SIGKILL,
	}))
	if connectCode(err) != connect.CodeNotFound {
		t.Errorf("unknown pid: %v", err)
	}
}

func TestProcessOutlivesStream(t *testing.T) {
	e := startAgent(t, agenttest.Options{})
	ctx := ctxTimeout(t, 60*time.Second)
	f := false
	sctx, cancel := context.WithCancel(ctx)
	stream, err := e.proc.Start(sctx, connect.NewRequest(&process.StartRequest{
		Process: &process.ProcessConfig{Cmd: "/bin/bash", Args: []string{"-c", "echo one; sleep 1; echo two; sleep 1; echo three; exit 3"}},
		Stdin:   &f,
	}))
	if err != nil {
		t.Fatal(err)
	}
	if !stream.Receive() {
		t.Fatal(stream.Err())
	}
	pid := stream.Msg().GetEvent().GetStart().GetPid()
	if !stream.Receive() || string(stream.Msg().GetEvent().GetData().GetStdout()) != "one\n" {
		t.Fatalf("first output %v %v", stream.Msg(), stream.Err())
	}
	// Drop the stream; the process goes on and "two" goes to the backlog.
	cancel()
	stream.Close()
	time.Sleep(1500 * time.Millisecond)

	cs, err := e.proc.Connect(ctx, connect.NewRequest(&process.ConnectRequest{
		Process: &process.ProcessSelector{Selector: &process.ProcessSelector_Pid{Pid: pid}},
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	r := &result{}
	for cs.Receive() {
		collect(r, cs.Msg().GetEvent())
	}
	if err := cs.Err(); err != nil {
		t.Fatal(err)
	}
	if r.first != "start" || r.pid != pid || string(r.stdout) != "two\nthree\n" || r.end.GetExitCode() != 3 {
		t.Fatalf("connect got first=%s pid=%d out=%q end=%v", r.first, r.pid, r.stdout, r.end)
	}

	// A process that ends while nobody is attached can still be connected
	// to, once, for its end.
	sctx, cancel = context.WithCancel(ctx)
	stream, err = e.proc.Start(sctx, connect.NewRequest(&process.StartRequest{
		Process: &process.ProcessConfig{Cmd: "/bin/bash", Args: []string{"-c", "sleep 0.5; echo late; exit 4"}},
		Stdin:   &f,
	}))
	if err != nil {
		t.Fatal(err)
	}
	if !stream.Receive() {
		t.Fatal(stream.Err())
	}
	pid = stream.Msg().GetEvent().GetStart().GetPid()
	cancel()
	stream.Close()
	time.Sleep(1500 * time.Millisecond)
	cs2, err := e.proc.Connect(ctx, connect.NewRequest(&process.ConnectRequest{
		Process: &process.ProcessSelector{Selector: &process.ProcessSelector_Pid{Pid: pid}},
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer cs2.Close()
	r = &result{}
	for cs2.Receive() {
		collect(r, cs2.Msg().GetEvent())
	}
	if r.first != "start" || string(r.stdout) != "late\n" || r.end.GetExitCode() != 4 {
		t.Fatalf("connect after end: first=%s out=%q end=%v err=%v", r.first, r.stdout, r.end, cs2.Err())
	}
}

func TestProcessDeadline(t *testing.T) {
	e := startAgent(t, agenttest.Options{})
	ctx := ctxTimeout(t, 60*time.Second)
	f := false
	req := connect.NewRequest(&process.StartRequest{
		Process: &process.ProcessConfig{Cmd: "/bin/sleep", Args: []string{"100"}},
		Stdin:   &f,
	})
	// The deadline travels as Connect-Timeout-Ms; the process is killed
	// when it passes even though nobody cancels anything.
	dctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer cancel()
	stream, err := e.proc.Start(dctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if !stream.Receive() {
		t.Fatal(stream.Err())
	}
	pid := stream.Msg().GetEvent().GetStart().GetPid()
	for stream.Receive() {
	}
	stream.Close()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		lr, err := e.proc.List(ctx, connect.NewRequest(&process.ListRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		alive := false
		for _, p := range lr.Msg.GetProcesses() {
			alive = alive || p.GetPid() == pid
		}
		if !alive {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("process %d still running after its deadline", pid)
}

func TestProcessKeepalive(t *testing.T) {
	e := startAgent(t, agenttest.Options{})
	ctx := ctxTimeout(t, 60*time.Second)
	f := false
	req := connect.NewRequest(&process.StartRequest{
		Process: &process.ProcessConfig{Cmd: "/bin/sleep", Args: []string{"2.5"}},
		Stdin:   &f,
	})
	req.Header().Set("Keepalive-Ping-Interval", "1")
	r, err := e.run(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if r.keepalives < 2 || r.end == nil {
		t.Fatalf("keepalives %d end %v, want >= 2 and an end", r.keepalives, r.end)
	}
}

func TestProcessPTY(t *testing.T) {
	e := startAgent(t, agenttest.Options{})
	ctx := ctxTimeout(t, 60*time.Second)
	// What the SDK's pty.create sends.
	stream, err := e.proc.Start(ctx, connect.NewRequest(&process.StartRequest{
		Process: &process.ProcessConfig{
			Cmd:  "/bin/bash",
			Args: []string{"-i", "-l"},
			Envs: map[string]string{"TERM": "xterm-256color", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"},
		},
		Pty: &process.PTY{Size: &process.PTY_Size{Cols: 80, Rows: 24}},
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	if !stream.Receive() {
		t.Fatal(stream.Err())
	}
	pid := stream.Msg().GetEvent().GetStart().GetPid()
	sel := &process.ProcessSelector{Selector: &process.ProcessSelector_Pid{Pid: pid}}
	send := func(s string) {
		t.Helper()
		if _, err := e.proc.SendInput(ctx, connect.NewRequest(&process.SendInputRequest{
			Process: sel, Input: &process.ProcessInput{Input: &process.ProcessInput_Pty{Pty: []byte(s)}},
		})); err != nil {
			t.Fatal(err)
		}
	}
	var out bytes.Buffer
	waitFor := func(want string) {
		t.Helper()
		for !strings.Contains(out.String(), want) {
			if !stream.Receive() {
				t.Fatalf("stream ended waiting for %q: %v\n%s", want, stream.Err(), out.String())
			}
			ev := stream.Msg().GetEvent()
			if d := ev.GetData(); d != nil {
				if len(d.GetStdout()) > 0 || len(d.GetStderr()) > 0 {
					t.Fatalf("pty process sent stdout/stderr data: %v", d)
				}
				out.Write(d.GetPty())
			}
		}
	}
	send("stty size; tty; echo $TERM\n")
	waitFor("24 80")
	waitFor("/dev/pts/")
	waitFor("xterm-256color")

	if _, err := e.proc.Update(ctx, connect.NewRequest(&process.UpdateRequest{
		Process: sel, Pty: &process.PTY{Size: &process.PTY_Size{Cols: 120, Rows: 40}},
	})); err != nil {
		t.Fatal(err)
	}
	send("stty size\n")
	waitFor("40 120")

	// stdin input and CloseStdin are refused on a PTY.
	if _, err := e.proc.SendInput(ctx, connect.NewRequest(&process.SendInputRequest{
		Process: sel, Input: &process.ProcessInput{Input: &process.ProcessInput_Stdin{Stdin: []byte("x")}},
	})); connectCode(err) != connect.CodeFailedPrecondition {
		t.Errorf("stdin to pty: %v", err)
	}
	if _, err := e.proc.CloseStdin(ctx, connect.NewRequest(&process.CloseStdinRequest{Process: sel})); connectCode(err) != connect.CodeFailedPrecondition {
		t.Errorf("close stdin of pty: %v", err)
	}
	if _, err := e.proc.Update(ctx, connect.NewRequest(&process.UpdateRequest{
		Process: sel, Pty: &process.PTY{Size: &process.PTY_Size{Cols: 0, Rows: 40}},
	})); connectCode(err) != connect.CodeInvalidArgument {
		t.Errorf("zero-size resize: %v", err)
	}

	send("exit 5\n")
	r := &result{}
	for stream.Receive() {
		collect(r, stream.Msg().GetEvent())
	}
	if r.end == nil || r.end.GetExitCode() != 5 {
		t.Fatalf("end %v err %v", r.end, stream.Err())
	}
}
