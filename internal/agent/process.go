package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/huskvm/husk/internal/envd/process"
)

// Processes (PROTOCOL.md §3.3).
//
// Each process has one reader goroutine per output (stdout and stderr, or the
// PTY master) and one waiter goroutine. Readers publish data events to the
// process's subscribers (the Start and Connect streams attached to it), one
// subscriber at a time, blocking until each has taken the event: a slow
// client slows the process down instead of losing output. While no stream is
// attached, output goes to a bounded backlog that the next Connect receives
// first.
//
// A process lives until it exits or its deadline (the Start request's
// Connect-Timeout-Ms) passes, whatever happens to the streams. Its end event
// is sent after the waiter has reaped it and the readers have drained its
// outputs. A process that ends with nobody attached is kept, finished, for
// finishedRetention so that a client that lost its stream can still Connect
// and receive the rest of the output and the end event.

const (
	readChunk         = 32 << 10 // one data event carries at most this much
	maxBacklogBytes   = 4 << 20  // output kept while no stream is attached
	drainIdle         = 100 * time.Millisecond
	drainMax          = 2 * time.Second  // after exit, stop reading outputs that stay busy this long
	finishedRetention = 60 * time.Second // how long an unobserved end event is kept
	inputWriteTimeout = 30 * time.Second // a process that never reads its input fails SendInput after this
	subscriberBuffer  = 16

	maxCmdLen   = maxPathLen
	maxArgs     = 16 << 10
	maxArgBytes = 1 << 20
	maxEnvs     = 4 << 10
	maxEnvBytes = 1 << 20
	maxTagLen   = 256
)

// Errors callers map to Connect codes.
var (
	errNoProcess     = errors.New("process not found")
	errInvalidStart  = errors.New("invalid process request")
	errNoInput       = errors.New("input not accepted")
	errTagInUse      = errors.New("tag already in use")
	errNotPermitted  = errors.New("not permitted")
	errNoSuchCommand = errors.New("executable not found")
)

const defaultPATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// proc is one process started by the agent.
type proc struct {
	pid    uint32
	tag    string
	hasTag bool
	config *process.ProcessConfig // as requested, cwd resolved; never modified
	cmd    *exec.Cmd
	isPTY  bool
	done   chan struct{} // closed once end is set

	inMu  sync.Mutex // serialises writes to, and the closing of, the input below
	stdin *os.File   // write end of the stdin pipe; nil when there is none or it was closed
	ptm   *os.File   // PTY master; nil for pipe processes

	exited   atomic.Bool // the waiter has reaped the process
	exitedAt atomic.Int64

	mu           sync.Mutex // guards the fields below
	subs         map[*subscriber]struct{}
	backlog      []*process.ProcessEvent
	backlogBytes int
	end          *process.ProcessEvent_EndEvent
	observed     bool // a stream has received, or is due to receive, the end event
}

// subscriber is one stream attached to a process.
type subscriber struct {
	backlog []*process.ProcessEvent // handed over when it attached; send these first
	ch      chan *process.ProcessEvent
	gone    chan struct{} // closed when the stream detaches
}

// procTable is the agent's set of processes, keyed by pid.
type procTable struct {
	log *slog.Logger

	mu       sync.Mutex // guards the maps
	running  map[uint32]*proc
	finished map[uint32]*proc    // ended with nobody attached; kept for finishedRetention
	tags     map[string]struct{} // tags of running (or starting) processes
}

func newProcTable(log *slog.Logger) *procTable {
	return &procTable{log: log, running: map[uint32]*proc{}, finished: map[uint32]*proc{}, tags: map[string]struct{}{}}
}

func (t *procTable) releaseTag(tag string) {
	t.mu.Lock()
	delete(t.tags, tag)
	t.mu.Unlock()
}

// startSpec is a validated request to start a process.
type startSpec struct {
	user     *User
	req      *process.StartRequest
	env      []string // base environment: PATH, HOME, USER, LOGNAME, then the sandbox's variables
	workdir  string   // default cwd; "" means the user's home
	timeout  time.Duration
	ptmx     string
	asRoot   bool // the agent runs as root and may switch users
	attached bool // attach a first subscriber before output can flow
}

// start launches a process and, if spec.attached, returns it with a first
// subscriber attached.
func (t *procTable) start(spec startSpec) (*proc, *subscriber, error) {
	cfg := spec.req.GetProcess()
	if err := validateStart(spec.req); err != nil {
		return nil, nil, err
	}
	u := spec.user

	cwd := spec.workdir
	if cfg.Cwd != nil && cfg.GetCwd() != "" {
		cwd = cfg.GetCwd()
	}
	if cwd == "" {
		cwd = u.Home
	}
	cwd, err := resolvePath(cwd, u.Home)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: cwd: %v", errInvalidStart, err)
	}
	if fi, err := os.Stat(cwd); err != nil || !fi.IsDir() {
		return nil, nil, fmt.Errorf("%w: cwd '%s' does not exist", errInvalidStart, cwd)
	}

	env := mergeEnv(spec.env, cfg.GetEnvs())
	path, err := lookPath(cfg.GetCmd(), envValue(env, "PATH"), cwd)
	if err != nil {
		return nil, nil, err
	}

	tag := spec.req.GetTag()
	hasTag := spec.req.Tag != nil
	if hasTag {
		t.mu.Lock()
		if _, taken := t.tags[tag]; taken {
			t.mu.Unlock()
			return nil, nil, fmt.Errorf("%w: %q", errTagInUse, tag)
		}
		t.tags[tag] = struct{}{}
		t.mu.Unlock()
	}
	started := false
	defer func() {
		if hasTag && !started {
			t.releaseTag(tag)
		}
	}()

	cmd := &exec.Cmd{
		Path:        path,
		Args:        append([]string{cfg.GetCmd()}, cfg.GetArgs()...),
		Env:         env,
		Dir:         cwd,
		SysProcAttr: &syscall.SysProcAttr{},
	}
	if u.UID != uint32(os.Geteuid()) || u.GID != uint32(os.Getegid()) {
		if !spec.asRoot {
			return nil, nil, fmt.Errorf("%w: the agent cannot run processes as %s", errNotPermitted, u.Name)
		}
	}
	if spec.asRoot {
		groups := u.Groups
		if groups == nil {
			groups = []uint32{}
		}
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: groups}
	}

	p := &proc{
		hasTag: hasTag,
		tag:    tag,
		config: &process.ProcessConfig{Cmd: cfg.GetCmd(), Args: cfg.GetArgs(), Envs: cfg.GetEnvs(), Cwd: &cwd},
		cmd:    cmd,
		done:   make(chan struct{}),
		subs:   map[*subscriber]struct{}{},
	}

	// childEnds are the descriptors only the child keeps; outputs are what
	// the readers drain.
	var childEnds, outputs []*os.File
	var kinds []outputKind
	closeAll := func(fs []*os.File) {
		for _, f := range fs {
			if f != nil {
				f.Close()
			}
		}
	}
	if pty := spec.req.GetPty(); spec.req.Pty != nil {
		cols, rows := clampSize(pty.GetSize().GetCols()), clampSize(pty.GetSize().GetRows())
		if cols == 0 || rows == 0 {
			cols, rows = 80, 24
		}
		m, s, err := openPTY(spec.ptmx, cols, rows)
		if err != nil {
			return nil, nil, fmt.Errorf("start process: %w", err)
		}
		p.isPTY, p.ptm = true, m
		cmd.Stdin, cmd.Stdout, cmd.Stderr = s, s, s
		cmd.SysProcAttr.Setsid = true
		cmd.SysProcAttr.Setctty = true
		cmd.SysProcAttr.Ctty = 0
		childEnds = []*os.File{s}
		outputs, kinds = []*os.File{m}, []outputKind{outPTY}
	} else {
		cmd.SysProcAttr.Setpgid = true
		or, ow, err := os.Pipe()
		if err != nil {
			return nil, nil, fmt.Errorf("start process: stdout pipe: %w", err)
		}
		er, ew, err := os.Pipe()
		if err != nil {
			closeAll([]*os.File{or, ow})
			return nil, nil, fmt.Errorf("start process: stderr pipe: %w", err)
		}
		cmd.Stdout, cmd.Stderr = ow, ew
		childEnds = []*os.File{ow, ew}
		outputs, kinds = []*os.File{or, er}, []outputKind{outStdout, outStderr}
		// No stdin field means a pipe, for older clients; false means /dev/null.
		if spec.req.Stdin == nil || spec.req.GetStdin() {
			ir, iw, err := os.Pipe()
			if err != nil {
				closeAll(append(childEnds, outputs...))
				return nil, nil, fmt.Errorf("start process: stdin pipe: %w", err)
			}
			cmd.Stdin, p.stdin = ir, iw
			childEnds = append(childEnds, ir)
		}
	}

	var sub *subscriber
	if spec.attached {
		sub = p.attachLocked()
	}
	if err := cmd.Start(); err != nil {
		closeAll(childEnds)
		closeAll(outputs)
		if p.stdin != nil {
			p.stdin.Close()
		}
		return nil, nil, fmt.Errorf("start process %s: %w", cfg.GetCmd(), err)
	}
	closeAll(childEnds)
	started = true
	p.pid = uint32(cmd.Process.Pid)

	t.mu.Lock()
	t.running[p.pid] = p
	delete(t.finished, p.pid)
	t.mu.Unlock()

	var readers sync.WaitGroup
	for i, f := range outputs {
		readers.Add(1)
		go func() {
			defer readers.Done()
			p.read(f, kinds[i])
		}()
	}
	var deadline *time.Timer
	if spec.timeout > 0 {
		deadline = time.AfterFunc(spec.timeout, func() { _ = p.signal(unix.SIGKILL) })
	}
	go t.wait(p, outputs, &readers, deadline)
	return p, sub, nil
}

// wait reaps p, drains its outputs and publishes its end event.
func (t *procTable) wait(p *proc, outputs []*os.File, readers *sync.WaitGroup, deadline *time.Timer) {
	werr := p.cmd.Wait()
	if deadline != nil {
		deadline.Stop()
	}
	p.exitedAt.Store(time.Now().UnixNano())
	p.exited.Store(true)
	for _, f := range outputs {
		_ = f.SetReadDeadline(time.Now().Add(drainIdle))
	}
	readers.Wait()
	p.inMu.Lock()
	if p.stdin != nil {
		p.stdin.Close()
		p.stdin = nil
	}
	p.ptm = nil // closed below, as an output
	p.inMu.Unlock()
	for _, f := range outputs {
		f.Close()
	}

	end := &process.ProcessEvent_EndEvent{Status: "unknown"}
	if ps := p.cmd.ProcessState; ps != nil {
		end.ExitCode = int32(ps.ExitCode())
		end.Exited = ps.Exited()
		end.Status = ps.String()
	}
	var ee *exec.ExitError
	if werr != nil && !errors.As(werr, &ee) {
		msg := werr.Error()
		end.Error = &msg
	}

	p.mu.Lock()
	p.end = end
	p.observed = len(p.subs) > 0
	close(p.done)
	p.mu.Unlock()

	t.mu.Lock()
	if t.running[p.pid] == p {
		delete(t.running, p.pid)
	}
	if p.hasTag {
		delete(t.tags, p.tag)
	}
	if !p.observed {
		t.finished[p.pid] = p
	}
	t.mu.Unlock()
	if !p.observed {
		time.AfterFunc(finishedRetention, func() { t.forget(p) })
	}
	t.log.Debug("process ended", "pid", p.pid, "status", end.Status)
}

func (t *procTable) forget(p *proc) {
	t.mu.Lock()
	if t.finished[p.pid] == p {
		delete(t.finished, p.pid)
	}
	t.mu.Unlock()
}

type outputKind int

const (
	outStdout outputKind = iota
	outStderr
	outPTY
)

// read publishes f's output until EOF, or, once the process has exited,
// until f has been idle for drainIdle or drainMax has passed: a background
// child holding the output open must not keep the end event back.
//
// The deadline only ends the wait for more output. Everything the process
// wrote before it exited is already in the pipe, so on a timeout the reader
// empties it without waiting before it decides: a reader that runs late (a
// thousand processes at once) loses nothing.
func (p *proc) read(f *os.File, kind outputKind) {
	buf := make([]byte, readChunk)
	publish := func(n int) {
		data := make([]byte, n)
		copy(data, buf[:n])
		p.publish(dataEvent(kind, data))
	}
	for {
		if p.exited.Load() {
			if time.Since(time.Unix(0, p.exitedAt.Load())) > drainMax {
				p.drainNow(f, publish, buf)
				return
			}
			_ = f.SetReadDeadline(time.Now().Add(drainIdle))
		}
		n, err := f.Read(buf)
		if n > 0 {
			publish(n)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if p.drainNow(f, publish, buf) {
				continue // more came meanwhile: keep following it
			}
			return
		}
		if err != nil {
			// EOF, or EIO from a PTY master whose slave side is closed.
			return
		}
	}
}

// drainNow reads what f holds without waiting and reports whether there
// was anything.
func (p *proc) drainNow(f *os.File, publish func(int), buf []byte) bool {
	rc, err := f.SyscallConn()
	if err != nil {
		return false
	}
	got := false
	for {
		var n int
		var rerr error
		if cerr := rc.Control(func(fd uintptr) {
			for {
				n, rerr = unix.Read(int(fd), buf)
				if !errors.Is(rerr, unix.EINTR) {
					return
				}
			}
		}); cerr != nil {
			return got
		}
		if n <= 0 || rerr != nil {
			return got
		}
		got = true
		publish(n)
	}
}

func dataEvent(kind outputKind, data []byte) *process.ProcessEvent {
	d := &process.ProcessEvent_DataEvent{}
	switch kind {
	case outStdout:
		d.Output = &process.ProcessEvent_DataEvent_Stdout{Stdout: data}
	case outStderr:
		d.Output = &process.ProcessEvent_DataEvent_Stderr{Stderr: data}
	default:
		d.Output = &process.ProcessEvent_DataEvent_Pty{Pty: data}
	}
	return &process.ProcessEvent{Event: &process.ProcessEvent_Data{Data: d}}
}

func eventSize(ev *process.ProcessEvent) int {
	d := ev.GetData()
	return len(d.GetStdout()) + len(d.GetStderr()) + len(d.GetPty())
}

// publish hands ev to every attached stream, waiting for each, or keeps it in
// the backlog when none is attached.
func (p *proc) publish(ev *process.ProcessEvent) {
	p.mu.Lock()
	if len(p.subs) == 0 {
		p.backlog = append(p.backlog, ev)
		p.backlogBytes += eventSize(ev)
		for p.backlogBytes > maxBacklogBytes && len(p.backlog) > 1 {
			p.backlogBytes -= eventSize(p.backlog[0])
			p.backlog[0] = nil
			p.backlog = p.backlog[1:]
		}
		p.mu.Unlock()
		return
	}
	subs := make([]*subscriber, 0, len(p.subs))
	for s := range p.subs {
		subs = append(subs, s)
	}
	p.mu.Unlock()
	for _, s := range subs {
		select {
		case s.ch <- ev:
		case <-s.gone:
		}
	}
}

// attach adds a stream; it receives the backlog first, then new output.
func (p *proc) attach() *subscriber {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.end != nil {
		p.observed = true
	}
	return p.attachLocked()
}

// attachLocked is attach for a process no one else can see yet, or with p.mu
// held.
func (p *proc) attachLocked() *subscriber {
	s := &subscriber{
		backlog: p.backlog,
		ch:      make(chan *process.ProcessEvent, subscriberBuffer),
		gone:    make(chan struct{}),
	}
	p.backlog, p.backlogBytes = nil, 0
	p.subs[s] = struct{}{}
	return s
}

// detach removes a stream.
func (p *proc) detach(s *subscriber) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.subs[s]; ok {
		delete(p.subs, s)
		close(s.gone)
	}
}

// endEvent returns the end event; valid once p.done is closed.
func (p *proc) endEvent() *process.ProcessEvent_EndEvent {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.end
}

// signal sends sig to the process group, which the agent created for the
// process (Setpgid, or Setsid for a PTY), so that children die with it.
func (p *proc) signal(sig unix.Signal) error {
	if p.exited.Load() {
		return fmt.Errorf("%w: process %d has exited", errNoProcess, p.pid)
	}
	err := unix.Kill(-int(p.pid), sig)
	if errors.Is(err, unix.ESRCH) {
		err = unix.Kill(int(p.pid), sig)
	}
	if errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("%w: process %d has exited", errNoProcess, p.pid)
	}
	return err
}

// writeInput writes data to the PTY (pty true) or to standard input.
func (p *proc) writeInput(data []byte, pty bool) error {
	p.inMu.Lock()
	defer p.inMu.Unlock()
	var f *os.File
	switch {
	case pty && !p.isPTY:
		return fmt.Errorf("%w: process %d has no PTY", errNoInput, p.pid)
	case !pty && p.isPTY:
		return fmt.Errorf("%w: process %d has a PTY: send pty input", errNoInput, p.pid)
	case pty:
		f = p.ptm
	default:
		f = p.stdin
	}
	if f == nil {
		if p.exited.Load() {
			return fmt.Errorf("%w: process %d has exited", errNoProcess, p.pid)
		}
		return fmt.Errorf("%w: stdin of process %d is not open", errNoInput, p.pid)
	}
	_ = f.SetWriteDeadline(time.Now().Add(inputWriteTimeout))
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write input to process %d: %w", p.pid, err)
	}
	return nil
}

// closeStdin closes standard input, so the process reads EOF.
func (p *proc) closeStdin() error {
	p.inMu.Lock()
	defer p.inMu.Unlock()
	if p.isPTY {
		return fmt.Errorf("%w: process %d has a PTY: send Ctrl-D (0x04) instead", errNoInput, p.pid)
	}
	if p.stdin == nil {
		if p.exited.Load() {
			return fmt.Errorf("%w: process %d has exited", errNoProcess, p.pid)
		}
		return fmt.Errorf("%w: stdin of process %d is not open", errNoInput, p.pid)
	}
	err := p.stdin.Close()
	p.stdin = nil
	return err
}

// resize changes the terminal size of a PTY process.
func (p *proc) resize(cols, rows uint16) error {
	p.inMu.Lock()
	defer p.inMu.Unlock()
	if !p.isPTY {
		return fmt.Errorf("%w: process %d has no PTY", errNoInput, p.pid)
	}
	if p.ptm == nil {
		return fmt.Errorf("%w: process %d has exited", errNoProcess, p.pid)
	}
	return resizePTY(p.ptm, cols, rows)
}

// lookup finds a running process by selector; with finished, also one that
// ended unobserved.
func (t *procTable) lookup(sel *process.ProcessSelector, finished bool) (*proc, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch s := sel.GetSelector().(type) {
	case *process.ProcessSelector_Pid:
		if p, ok := t.running[s.Pid]; ok {
			return p, nil
		}
		if p, ok := t.finished[s.Pid]; ok && finished {
			return p, nil
		}
		return nil, fmt.Errorf("%w: process with pid %d not found", errNoProcess, s.Pid)
	case *process.ProcessSelector_Tag:
		for _, p := range t.running {
			if p.hasTag && p.tag == s.Tag {
				return p, nil
			}
		}
		if finished {
			for _, p := range t.finished {
				if p.hasTag && p.tag == s.Tag {
					return p, nil
				}
			}
		}
		return nil, fmt.Errorf("%w: process with tag %q not found", errNoProcess, s.Tag)
	default:
		return nil, fmt.Errorf("%w: no process selector (pid or tag)", errInvalidStart)
	}
}

// list returns the running processes, by pid.
func (t *procTable) list() []*process.ProcessInfo {
	t.mu.Lock()
	ps := make([]*proc, 0, len(t.running))
	for _, p := range t.running {
		ps = append(ps, p)
	}
	t.mu.Unlock()
	sort.Slice(ps, func(i, j int) bool { return ps[i].pid < ps[j].pid })
	out := make([]*process.ProcessInfo, 0, len(ps))
	for _, p := range ps {
		info := &process.ProcessInfo{Config: p.config, Pid: p.pid}
		if p.hasTag {
			tag := p.tag
			info.Tag = &tag
		}
		out = append(out, info)
	}
	return out
}

// killAll sends SIGKILL to every running process.
func (t *procTable) killAll() {
	t.mu.Lock()
	ps := make([]*proc, 0, len(t.running))
	for _, p := range t.running {
		ps = append(ps, p)
	}
	t.mu.Unlock()
	for _, p := range ps {
		_ = p.signal(unix.SIGKILL)
	}
}

func validateStart(req *process.StartRequest) error {
	cfg := req.GetProcess()
	if cfg == nil || cfg.GetCmd() == "" {
		return fmt.Errorf("%w: process.cmd is required", errInvalidStart)
	}
	if len(cfg.GetCmd()) > maxCmdLen || strings.IndexByte(cfg.GetCmd(), 0) >= 0 {
		return fmt.Errorf("%w: process.cmd is longer than %d bytes or contains NUL", errInvalidStart, maxCmdLen)
	}
	if len(cfg.GetArgs()) > maxArgs {
		return fmt.Errorf("%w: more than %d args", errInvalidStart, maxArgs)
	}
	n := 0
	for _, a := range cfg.GetArgs() {
		n += len(a)
		if strings.IndexByte(a, 0) >= 0 {
			return fmt.Errorf("%w: an argument contains NUL", errInvalidStart)
		}
	}
	if n > maxArgBytes {
		return fmt.Errorf("%w: args longer than %d bytes in all", errInvalidStart, maxArgBytes)
	}
	if len(cfg.GetEnvs()) > maxEnvs {
		return fmt.Errorf("%w: more than %d envs", errInvalidStart, maxEnvs)
	}
	n = 0
	for k, v := range cfg.GetEnvs() {
		n += len(k) + len(v)
		if err := validEnvName(k); err != nil {
			return fmt.Errorf("%w: %v", errInvalidStart, err)
		}
		if strings.IndexByte(v, 0) >= 0 {
			return fmt.Errorf("%w: env %s: value contains NUL", errInvalidStart, k)
		}
	}
	if n > maxEnvBytes {
		return fmt.Errorf("%w: envs longer than %d bytes in all", errInvalidStart, maxEnvBytes)
	}
	if req.Tag != nil && len(req.GetTag()) > maxTagLen {
		return fmt.Errorf("%w: tag longer than %d bytes", errInvalidStart, maxTagLen)
	}
	if len(cfg.GetCwd()) > maxPathLen {
		return fmt.Errorf("%w: cwd longer than %d bytes", errInvalidStart, maxPathLen)
	}
	return nil
}

// validEnvName rejects names a process environment cannot carry.
func validEnvName(k string) error {
	if k == "" || strings.ContainsAny(k, "=\x00") {
		return fmt.Errorf("invalid environment variable name %q", k)
	}
	return nil
}

func clampSize(v uint32) uint16 {
	if v > 0xffff {
		return 0xffff
	}
	return uint16(v)
}

// baseEnv is the environment every process starts from (envd's order):
// PATH, HOME, USER, LOGNAME, then the sandbox's variables.
func baseEnv(u *User, sandbox map[string]string) []string {
	env := []string{"PATH=" + defaultPATH, "HOME=" + u.Home, "USER=" + u.Name, "LOGNAME=" + u.Name}
	keys := make([]string, 0, len(sandbox))
	for k := range sandbox {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = mergeEnv(env, map[string]string{k: sandbox[k]})
	}
	return env
}

// mergeEnv returns base with over applied: later entries win.
func mergeEnv(base []string, over map[string]string) []string {
	out := append([]string(nil), base...)
	keys := make([]string, 0, len(over))
	for k := range over {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		kv := k + "=" + over[k]
		replaced := false
		for i, e := range out {
			if strings.HasPrefix(e, k+"=") {
				out[i] = kv
				replaced = true
				break
			}
		}
		if !replaced {
			out = append(out, kv)
		}
	}
	return out
}

func envValue(env []string, k string) string {
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, k+"="); ok {
			return v
		}
	}
	return ""
}

// lookPath finds cmd as execve would for the process: a name with a slash is
// taken as it is (relative to cwd), any other is searched in pathEnv.
func lookPath(cmd, pathEnv, cwd string) (string, error) {
	if strings.Contains(cmd, "/") {
		p := cmd
		if !filepath.IsAbs(p) {
			p = filepath.Join(cwd, p)
		}
		if err := executable(p); err != nil {
			return "", fmt.Errorf("%w: %s: %v", errNoSuchCommand, cmd, err)
		}
		return p, nil
	}
	if pathEnv == "" {
		pathEnv = defaultPATH
	}
	for _, dir := range filepath.SplitList(pathEnv) {
		if dir == "" {
			dir = "."
		}
		if !filepath.IsAbs(dir) {
			dir = filepath.Join(cwd, dir)
		}
		p := filepath.Join(dir, cmd)
		if executable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: '%s' not found in PATH", errNoSuchCommand, cmd)
}

func executable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("not an executable file")
	}
	return nil
}
