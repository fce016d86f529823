package testhost

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/huskvm/husk/internal/testhost/wire"
)

// Disk is an artifact disk: attached read-only as a virtio-blk device and
// mounted at /artifacts/<Name> in the test host.
type Disk struct {
	// Name is 1 to 20 characters of [A-Za-z0-9._-]; it is also the disk's
	// virtio-blk serial, by which hostinit finds it.
	Name string
	// Path is a directory, packed into an ext4 image (mkfs.ext4 -d, cached
	// by a hash of its contents), or an existing raw image file. An image
	// that is not ext4 appears as /artifacts/<Name> → /dev/vdX instead.
	Path string
}

// Spec describes one command run in a fresh test host.
type Spec struct {
	Disks      []Disk
	ScratchMiB int // size of the tmpfs at /tmp (default DefaultScratchMiB)
	MemMiB     int // test host RAM (default DefaultMemMiB)
	CPUs       int // test host vCPUs (default DefaultCPUs)

	// Args is the command line; Args[0] is a path inside the test host,
	// such as /artifacts/bin/e2e.test, or a name looked up in PATH, which
	// starts with /artifacts/<disk>/bin for each disk.
	Args []string
	Env  []string // added to PATH, HOME=/tmp, TMPDIR=/tmp, USER=root; entries here win
	Dir  string   // working directory inside (default /tmp)

	Stdin io.Reader // nil: empty
	// Signals, if not nil, are passed on to the command (syscall.Signal
	// values; others are ignored) while it runs.
	Signals <-chan os.Signal
	Stdout  io.Writer // nil: discarded
	Stderr  io.Writer // nil: discarded
	Console io.Writer // the test host's serial console and QEMU's messages; nil: discarded

	// Timeout bounds the whole run, boot included (default DefaultTimeout).
	// QEMU is killed when it expires or ctx is done.
	Timeout   time.Duration
	hangAfter time.Duration // tests shorten hangAfter here

	Progress      io.Writer // asset download and build progress lines; nil: none
	Debug         bool      // hostinit logs each step on the console
	ExtraQEMUArgs []string  // appended to the QEMU command line
	Stats         *Stats    // if not nil, filled with timings
}

// Defaults for Spec.
const (
	DefaultScratchMiB = 1024
	DefaultMemMiB     = 6144
	DefaultCPUs       = 2
	DefaultTimeout    = 10 * time.Minute
)

// QEMU is the QEMU binary Run starts (looked up in PATH).
const QEMU = "qemu-system-x86_64"

// Stats are the timings of one Run.
type Stats struct {
	Prepare    time.Duration // Prepare and disk images, before QEMU starts
	Boot       time.Duration // QEMU start to Hello (host clock): boot + hostinit setup
	GuestInit  time.Duration // test host uptime when hostinit started
	GuestReady time.Duration // test host uptime at Hello
	Command    time.Duration // Start sent to Exit received
	Shutdown   time.Duration // Exit received to QEMU gone
	Total      time.Duration // all of Run
	Kernel     string        // test host kernel release
	Modules    []string      // modules hostinit loaded
	KVM        bool          // /dev/kvm existed in the test host
}

// ErrTimeout is the cause of a Run that hit Spec.Timeout.
var ErrTimeout = errors.New("timed out")

// ErrHostDied is a Run whose test host stopped without reporting the
// command's status: its kernel crashed, QEMU died, or it hung (see
// hangAfter) and Run killed it. The error carries the console's tail.
var ErrHostDied = errors.New("the test host died")

// hostinitFailCode is what hostinit writes to the isa-debug-exit port when
// it fails (test/hostinit: exitFail).
const hostinitFailCode = 1

// debugExitStatus is QEMU's exit status after a guest writes code to the
// isa-debug-exit port.
func debugExitStatus(code int) int { return code<<1 | 1 }

// Grace periods on the host side.
const (
	shutdownGrace = 5 * time.Second // Exit frame to QEMU gone, before we kill it
	consoleTail   = 8 << 10         // console bytes kept for error messages
)

func (s *Spec) setDefaults() {
	if s.ScratchMiB == 0 {
		s.ScratchMiB = DefaultScratchMiB
	}
	if s.MemMiB == 0 {
		s.MemMiB = DefaultMemMiB
	}
	if s.CPUs == 0 {
		s.CPUs = DefaultCPUs
	}
	if s.Timeout == 0 {
		s.Timeout = DefaultTimeout
	}
	if s.hangAfter == 0 {
		s.hangAfter = hangAfter
	}
	if s.Stdout == nil {
		s.Stdout = io.Discard
	}
	if s.Stderr == nil {
		s.Stderr = io.Discard
	}
	if s.Console == nil {
		s.Console = io.Discard
	}
	if s.Progress == nil {
		s.Progress = io.Discard
	}
}

func (s *Spec) bootConfig() wire.BootConfig {
	c := wire.BootConfig{ScratchMiB: s.ScratchMiB, Debug: s.Debug}
	for _, d := range s.Disks {
		c.Disks = append(c.Disks, d.Name)
	}
	return c
}

func (s *Spec) start() wire.StartMsg {
	return wire.StartMsg{Args: s.Args, Env: s.Env, Dir: s.Dir}
}

func (s *Spec) validate() error {
	if s.MemMiB < 256 || s.CPUs < 1 || s.CPUs > 64 || s.Timeout < 0 {
		return fmt.Errorf("testhost: bad size: %d MiB, %d CPUs, timeout %v", s.MemMiB, s.CPUs, s.Timeout)
	}
	if err := s.bootConfig().Validate(); err != nil {
		return fmt.Errorf("testhost: %w", err)
	}
	st := s.start()
	if _, err := st.MarshalBinary(); err != nil {
		return fmt.Errorf("testhost: %w", err)
	}
	return nil
}

// Run boots a fresh test host, runs s.Args in it with s.Stdin, s.Stdout and
// s.Stderr connected, and returns the command's exit status (128+signal if
// it was killed). err reports a failure of the test host itself: assets,
// QEMU, hostinit setup, the channel, or the timeout; then exitCode is -1.
//
// Run blocks until QEMU has exited and its temporary files are removed. A
// Stdin that blocks in Read is left to a goroutine, as os/exec does.
func Run(ctx context.Context, s Spec) (exitCode int, err error) {
	begin := time.Now()
	s.setDefaults()
	if err := s.validate(); err != nil {
		return -1, err
	}
	ctx, cancel := context.WithTimeoutCause(ctx, s.Timeout, fmt.Errorf("%w after %v", ErrTimeout, s.Timeout))
	defer cancel()
	ctx, hung := context.WithCancelCause(ctx) // see hangAfter
	defer hung(nil)
	stats := s.Stats
	if stats == nil {
		stats = new(Stats)
	}
	*stats = Stats{}
	defer func() { stats.Total = time.Since(begin) }()

	qemu, err := exec.LookPath(QEMU)
	if err != nil {
		return -1, fmt.Errorf("testhost: %w", err)
	}
	assets, err := prepareOnce(ctx, s.Progress)
	if err != nil {
		return -1, fmt.Errorf("testhost: prepare: %w", err)
	}
	images := make([]string, len(s.Disks))
	for i, d := range s.Disks {
		if images[i], err = diskImage(ctx, d, s.Progress); err != nil {
			return -1, fmt.Errorf("testhost: %w", err)
		}
	}
	tmp, err := os.MkdirTemp("", "husk-testhost-")
	if err != nil {
		return -1, fmt.Errorf("testhost: %w", err)
	}
	defer os.RemoveAll(tmp)
	sock := filepath.Join(tmp, "ctl.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return -1, fmt.Errorf("testhost: control socket: %w", err)
	}
	defer ln.Close()

	console := &tailWriter{w: &consoleWatch{w: s.Console, limit: s.hangAfter, grace: traceGrace, died: hung}}
	cmd := exec.CommandContext(ctx, qemu, qemuArgs(assets, &s, images, sock)...)
	cmd.Stdout = console // the serial console (-serial stdio)
	cmd.Stderr = console // QEMU's own messages
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = time.Second
	stats.Prepare = time.Since(begin)
	if err := cmd.Start(); err != nil {
		return -1, fmt.Errorf("testhost: start %s: %w", QEMU, err)
	}
	qemuStart := time.Now()
	qemuDone := make(chan error, 1)
	go func() { qemuDone <- cmd.Wait() }()
	qemuExited := false
	defer func() { // no QEMU outlives Run
		if !qemuExited {
			cmd.Process.Kill()
			<-qemuDone
		}
	}()
	fail := func(format string, args ...any) (int, error) {
		err := fmt.Errorf("testhost: "+format, args...)
		if tail := console.Tail(); tail != "" {
			err = fmt.Errorf("%w\n--- test host console (last %d bytes) ---\n%s", err, len(tail), tail)
		}
		return -1, err
	}

	type accepted struct {
		c   net.Conn
		err error
	}
	connCh := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept()
		connCh <- accepted{c, err}
	}()
	var conn net.Conn
	select {
	case a := <-connCh:
		if a.err != nil {
			return fail("control socket: %w", a.err)
		}
		conn = a.c
	case err := <-qemuDone:
		qemuExited = true
		if ctx.Err() != nil { // CommandContext killed it
			return fail("%w", context.Cause(ctx))
		}
		return fail("%s exited before connecting to the control socket: %v", QEMU, err)
	case <-ctx.Done():
		return fail("%w", context.Cause(ctx))
	}
	defer conn.Close()

	sess := &session{spec: &s, stats: stats, console: console, qemuStart: qemuStart}
	sessDone := make(chan struct{})
	go func() { sess.serve(conn); close(sessDone) }()
	go watchSilence(ctx, sess, s.hangAfter, time.Second, hung)

	// qemuExit explains a session that ended without an Exit frame
	// because QEMU exited.
	qemuExit := func(err error) (int, error) {
		if ctx.Err() != nil { // CommandContext killed it
			return fail("%w", context.Cause(ctx))
		}
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == debugExitStatus(hostinitFailCode) {
			return fail("hostinit failed (see the console below)")
		}
		if sess.err != nil && !errors.Is(sess.err, io.EOF) && !errors.Is(sess.err, io.ErrUnexpectedEOF) {
			return fail("%w (%s: %v)", sess.err, QEMU, err)
		}
		return fail("%w: %s exited (%v) without an exit status from it", ErrHostDied, QEMU, err)
	}

	select {
	case <-sessDone:
		if sess.err != nil {
			if ctx.Err() != nil {
				return fail("%w", context.Cause(ctx))
			}
			if errors.Is(sess.err, io.EOF) || errors.Is(sess.err, io.ErrUnexpectedEOF) {
				// The channel closed: QEMU is exiting; its status says why.
				select {
				case err := <-qemuDone:
					qemuExited = true
					return qemuExit(err)
				case <-time.After(2 * time.Second):
				}
			}
			return fail("%w", sess.err)
		}
		exitAt := time.Now()
		select {
		case <-qemuDone:
			qemuExited = true
		case <-time.After(shutdownGrace):
			fmt.Fprintf(console, "testhost: QEMU still running %v after the exit status; killing it\n", shutdownGrace)
		case <-ctx.Done():
		}
		stats.Shutdown = time.Since(exitAt)
		return sess.status, sess.writeErr
	case err := <-qemuDone:
		qemuExited = true
		// QEMU closed the socket, so the session ends with the frames
		// it managed to read; close our end in case it did not.
		select {
		case <-sessDone:
		case <-time.After(time.Second):
			conn.Close()
			<-sessDone
		}
		if sess.exited {
			return sess.status, sess.writeErr
		}
		return qemuExit(err)
	case <-ctx.Done():
		cmd.Process.Kill()
		<-qemuDone
		qemuExited = true
		conn.Close()
		<-sessDone
		return fail("%w", context.Cause(ctx))
	}
}

// kernelCmdline is the test host kernel's command line before the husk.*
// parameters. tsc=reliable keeps the TSC as clocksource (TCG's TSCs fail
// the sync check, and the HPET fallback makes every clock read an emulated
// MMIO access); mitigations=off because the test host is throwaway. Each
// saves ~0.5 s of boot.
const kernelCmdline = "console=ttyS0 panic=-1 quiet loglevel=4 tsc=reliable mitigations=off"

// qemuArgs is the QEMU command line of a test host (see MEASURED.md,
// "The test host that works").
func qemuArgs(a Assets, s *Spec, images []string, sock string) []string {
	cmdline := kernelCmdline + " " + s.bootConfig().Cmdline()
	args := []string{
		"-accel", "tcg,thread=multi", "-cpu", "max",
		"-smp", strconv.Itoa(s.CPUs), "-m", strconv.Itoa(s.MemMiB) + "M",
		"-M", "q35", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-serial", "stdio",
		"-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
		"-kernel", a.Vmlinuz, "-initrd", a.Initramfs, "-append", strings.TrimSpace(cmdline),
		"-device", "virtio-serial-pci,id=vser",
		"-chardev", "socket,id=ctl,path=" + qemuEscape(sock),
		"-device", "virtserialport,bus=vser.0,chardev=ctl,name=" + wire.PortName,
	}
	for i, img := range images {
		id := "disk" + strconv.Itoa(i)
		args = append(args,
			"-drive", "file="+qemuEscape(img)+",format=raw,if=none,readonly=on,id="+id,
			"-device", "virtio-blk-pci,drive="+id+",serial="+s.Disks[i].Name)
	}
	return append(args, s.ExtraQEMUArgs...)
}

// qemuEscape escapes a value for QEMU's comma-separated option syntax.
func qemuEscape(v string) string { return strings.ReplaceAll(v, ",", ",,") }

// session is the host side of the control channel. Everything the guest
// sends is untrusted: frames are length-capped by wire.Reader, and any
// frame out of protocol order ends the session with an error.
type session struct {
	spec      *Spec
	stats     *Stats
	console   *tailWriter
	qemuStart time.Time

	// Set by serve, read by watchSilence while it runs: UnixNano since
	// serve waits for a frame; 0 while it handles one.
	waitingSince atomic.Int64

	// Set by serve; read after it returns.
	exited   bool  // an Exit frame arrived
	status   int   // its status
	err      error // protocol or channel failure (nil once exited)
	writeErr error // first error writing Stdout or Stderr
}

func (s *session) serve(conn net.Conn) {
	r := wire.NewReader(conn)
	w := wire.NewWriter(conn)
	over := make(chan struct{})
	defer close(over)
	started := false
	var startAt time.Time
	for {
		s.waitingSince.Store(time.Now().UnixNano())
		f, err := r.ReadFrame()
		s.waitingSince.Store(0)
		if err != nil {
			s.err = fmt.Errorf("control channel: %w", err)
			return
		}
		switch f.Type {
		case wire.Log:
			fmt.Fprintf(s.console, "hostinit: %s\n", printable(f.Payload, 4096))
		case wire.Beat:
			if len(f.Payload) != 0 {
				s.err = fmt.Errorf("control channel: Beat frame with %d bytes of payload", len(f.Payload))
				return
			}
		case wire.Fail:
			w.WriteFrame(wire.Ack, nil) // lets hostinit power off at once
			s.err = fmt.Errorf("test host setup failed: %s", printable(f.Payload, 4096))
			return
		case wire.Hello:
			if started {
				s.err = errors.New("control channel: second Hello")
				return
			}
			started = true
			s.stats.Boot = time.Since(s.qemuStart)
			var h wire.HelloMsg
			if err := json.Unmarshal(f.Payload, &h); err != nil {
				s.err = fmt.Errorf("control channel: bad Hello: %w", err)
				return
			}
			s.stats.GuestInit = time.Duration(h.InitNS)
			s.stats.GuestReady = time.Duration(h.UptimeNS)
			s.stats.Kernel = h.Kernel
			s.stats.Modules = h.Modules
			s.stats.KVM = h.KVM
			st := s.spec.start()
			start, err := st.MarshalBinary()
			if err == nil {
				err = w.WriteFrame(wire.Start, start)
			}
			if err != nil {
				s.err = fmt.Errorf("control channel: send Start: %w", err)
				return
			}
			startAt = time.Now()
			go pumpStdin(w, s.spec.Stdin)
			if s.spec.Signals != nil {
				go pumpSignals(w, s.spec.Signals, over)
			}
		case wire.Stdout, wire.Stderr:
			if !started {
				s.err = fmt.Errorf("control channel: %s before Hello", f.Type)
				return
			}
			dst := s.spec.Stdout
			if f.Type == wire.Stderr {
				dst = s.spec.Stderr
			}
			if s.writeErr == nil {
				if _, err := dst.Write(f.Payload); err != nil {
					s.writeErr = fmt.Errorf("testhost: write %s: %w", strings.ToLower(f.Type.String()), err)
				}
			}
		case wire.Exit:
			if !started {
				s.err = errors.New("control channel: Exit before Hello")
				return
			}
			status, err := wire.DecodeInt32(f.Payload)
			if err != nil {
				s.err = fmt.Errorf("control channel: %w", err)
				return
			}
			s.stats.Command = time.Since(startAt)
			s.exited, s.status = true, status
			w.WriteFrame(wire.Ack, nil)
			return
		default:
			s.err = fmt.Errorf("control channel: unexpected %s frame from the test host", f.Type)
			return
		}
	}
}

// pumpStdin copies stdin into Stdin frames and ends with the empty frame.
// It stops when the channel fails (the session is over).
func pumpStdin(w *wire.Writer, stdin io.Reader) {
	if stdin == nil {
		w.WriteFrame(wire.Stdin, nil)
		return
	}
	buf := make([]byte, wire.ChunkSize)
	for {
		n, err := stdin.Read(buf)
		if n > 0 {
			if w.WriteFrame(wire.Stdin, buf[:n]) != nil {
				return
			}
		}
		if err != nil {
			w.WriteFrame(wire.Stdin, nil)
			return
		}
	}
}

// pumpSignals sends each signal as a Signal frame until the session is over.
func pumpSignals(w *wire.Writer, sigs <-chan os.Signal, over <-chan struct{}) {
	for {
		select {
		case <-over:
			return
		case sig := <-sigs:
			if n, ok := sig.(syscall.Signal); ok {
				w.WriteFrame(wire.Signal, wire.EncodeInt32(int(n)))
			}
		}
	}
}

// printable renders untrusted guest text for a message: at most max bytes,
// valid UTF-8, control characters other than newline and tab escaped.
func printable(p []byte, max int) string {
	if len(p) > max {
		p = p[:max]
	}
	var b strings.Builder
	for _, r := range strings.ToValidUTF8(string(p), "\uFFFD") {
		if r == '\r' {
			continue
		}
		if r < 0x20 && r != '\n' && r != '\t' || r == 0x7f {
			fmt.Fprintf(&b, "\\x%02x", r)
			continue
		}
		b.WriteRune(r)
	}
	return strings.TrimRight(b.String(), "\n")
}

// tailWriter passes writes to w and keeps the last consoleTail bytes.
type tailWriter struct {
	mu  sync.Mutex // guards buf and serialises writes to w
	w   io.Writer
	buf []byte
}

func (t *tailWriter) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > consoleTail {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-consoleTail:]...)
	}
	t.w.Write(p) // a failing console must not stop the run
	return len(p), nil
}

// Tail returns the last bytes written, as printable text.
func (t *tailWriter) Tail() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.buf
	// Start at a line if one begins in the first part.
	if i := strings.IndexByte(string(b[:min(len(b), 512)]), '\n'); i >= 0 && len(b) == consoleTail {
		b = b[i+1:]
	}
	for len(b) > 0 && !utf8.Valid(b[:1]) && !utf8.RuneStart(b[0]) {
		b = b[1:]
	}
	return printable(b, consoleTail)
}
