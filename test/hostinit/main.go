// Command hostinit is PID 1 of the throwaway test host (see internal/testhost
// and docs/testhost.md): a QEMU TCG machine whose Debian cloud kernel loads
// kvm_amd, so that a real /dev/kvm is available to the husk VMM under test.
//
// It mounts /proc, /sys, /dev (devtmpfs), /dev/pts, /dev/shm and a tmpfs of
// the requested size at /tmp; loads the modules listed in /modules/order in
// that order with finit_module(2); opens the virtio-serial control channel;
// mounts each artifact disk read-only at /artifacts/<name> (found by its
// virtio-blk serial number, which is its name); then says Hello, runs the
// command the host sends in Start with stdin, stdout and stderr carried over
// the channel, sends its exit status, and powers the machine off.
//
// The channel protocol is internal/testhost/wire. The console (ttyS0, this
// process's stdout) carries only log lines.
//
// It must be built static: CGO_ENABLED=0 GOOS=linux GOARCH=amd64.
package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/huskvm/husk/internal/testhost/wire"
)

// Power-off codes written to the isa-debug-exit port; QEMU exits with
// (code<<1)|1. The command's status travels in the Exit frame, not here.
const (
	exitDone = 0 // the session ended normally (Exit frame sent)
	exitFail = 1 // hostinit failed (internal/testhost: hostinitFailCode)
)

// Timeouts inside the test host.
const (
	portWait     = 10 * time.Second // for the virtio-serial port to appear
	diskWait     = 10 * time.Second // for all artifact disks to appear
	drainWait    = 2 * time.Second  // for output pipes to close after the command exits
	ackWait      = 3 * time.Second  // for the host's Ack after Exit
	defaultPath  = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	modulesDir   = "/modules"
	artifactsDir = "/artifacts"
)

type initState struct {
	cfg      wire.BootConfig
	ch       *os.File               // the control channel
	w        *wire.Writer           // frames to the host
	r        *wire.Reader           // frames from the host
	modules  []string               // loaded modules, in listed order
	modLoads map[string]*moduleLoad // by module name (modName)
	modAll   []*moduleLoad          // in listed order
	disks    map[string]string      // name → /dev/vdX

	readerOnce sync.Once
	stdin      chan []byte   // Stdin payloads from the reader; empty = EOF
	stdinPipe  chan *os.File // the command's stdin, or nil if it did not start
	acked      chan struct{} // closed on Ack or when the channel fails
	cmdPID     atomic.Int32  // the running command, for Signal frames; 0 if none
}

func main() {
	start := boottime()
	s := &initState{}
	err := s.setup()
	if err != nil {
		s.fail(err)
	}
	if err := s.session(start); err != nil {
		s.fail(err)
	}
	poweroff(exitDone)
}

// logf writes a log line to the console.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stdout, "hostinit: "+format+"\n", args...)
}

func (s *initState) debugf(format string, args ...any) {
	if s.cfg.Debug {
		logf("[%.3fs] "+format, append([]any{boottime().Seconds()}, args...)...)
	}
}

// fail reports err on the console and, if the channel is up, in a Fail
// frame, then powers off.
func (s *initState) fail(err error) {
	logf("FATAL: %v", err)
	if s.w != nil {
		s.w.WriteFrame(wire.Fail, []byte(err.Error()))
		s.startReader()
		select {
		case s.stdinPipe <- nil:
		default:
		}
		s.waitAck()
	}
	poweroff(exitFail)
}

func (s *initState) setup() error {
	for _, m := range []struct {
		src, dst, fstype string
		flags            uintptr
		data             string
	}{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	} {
		if err := mount(m.src, m.dst, m.fstype, m.flags, m.data); err != nil {
			return err
		}
	}
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return err
	}
	s.cfg, err = wire.ParseCmdline(string(cmdline))
	if err != nil {
		return err
	}
	s.debugf("cmdline %q", strings.TrimSpace(string(cmdline)))
	scratch := "mode=1777"
	if s.cfg.ScratchMiB > 0 {
		scratch += fmt.Sprintf(",size=%dm", s.cfg.ScratchMiB)
	}
	for _, m := range []struct {
		src, dst, fstype string
		flags            uintptr
		data             string
	}{
		{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, scratch},
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "mode=0620,ptmxmode=0666"},
		{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	} {
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			return err
		}
		if err := mount(m.src, m.dst, m.fstype, m.flags, m.data); err != nil {
			return err
		}
	}
	os.Symlink("/proc/self/fd", "/dev/fd")
	unix.Sethostname([]byte("testhost"))
	if err := loopbackUp(); err != nil {
		logf("loopback: %v", err) // not fatal: only network tests need it
	}
	s.debugf("mounted")

	s.modLoads, s.modAll, err = s.startModules()
	if err != nil {
		return err
	}
	// The channel needs virtio_console; open it first, so that a module
	// failure, and any later one, is reported there.
	chErr := s.waitModules("virtio_pci", "virtio_console")
	if err := s.openChannel(); err != nil {
		return errors.Join(chErr, err)
	}
	s.debugf("channel open")
	go s.beat()
	if err := s.waitModules("virtio_blk"); err != nil {
		return err
	}
	if err := s.mountDisks(); err != nil {
		return err
	}
	s.debugf("disks mounted: %v", s.disks)
	var modErrs []error
	for _, m := range s.modAll {
		<-m.done
		if m.err != nil {
			modErrs = append(modErrs, m.err)
			continue
		}
		s.modules = append(s.modules, m.name)
	}
	s.debugf("modules loaded: %v", s.modules)
	return errors.Join(modErrs...)
}

func mount(src, dst, fstype string, flags uintptr, data string) error {
	if err := unix.Mount(src, dst, fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s on %s: %w", fstype, dst, err)
	}
	return nil
}

// loopbackUp brings up lo, so tests can use 127.0.0.1.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// moduleLoad is one module being loaded; done closes when it is loaded or
// failed (err).
type moduleLoad struct {
	name string
	done chan struct{}
	err  error
}

// startModules starts loading the modules listed in /modules/order. A line
// is "file.ko needed.ko...", lines in a valid load order (the host resolved
// dependencies when it built the initramfs). One goroutine loads them in
// that order while setup goes on; waitModules waits for particular ones.
// Loading in parallel was measured slower: concurrent loads contend in the
// kernel (1.4 s sequential, 2.1-2.9 s with two at a time, on 2 TCG vCPUs).
// A module whose dependency failed is not loaded.
func (s *initState) startModules() (map[string]*moduleLoad, []*moduleLoad, error) {
	order, err := os.ReadFile(filepath.Join(modulesDir, "order"))
	if errors.Is(err, os.ErrNotExist) {
		return map[string]*moduleLoad{}, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	byName := map[string]*moduleLoad{}
	var all []*moduleLoad
	files := map[*moduleLoad]string{}
	needs := map[*moduleLoad][]*moduleLoad{}
	for _, line := range strings.Split(string(order), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		m := &moduleLoad{name: modName(f[0]), done: make(chan struct{})}
		for _, d := range f[1:] {
			dep := byName[modName(d)]
			if dep == nil {
				return nil, nil, fmt.Errorf("/modules/order: %s needs %s, not listed before it", f[0], d)
			}
			needs[m] = append(needs[m], dep)
		}
		byName[m.name] = m
		files[m] = f[0]
		all = append(all, m)
	}
	go func() {
		for _, m := range all {
			for _, d := range needs[m] {
				if d.err != nil {
					m.err = fmt.Errorf("load module %s: needs %s, which failed", files[m], d.name)
				}
			}
			if m.err == nil {
				t0 := boottime()
				if err := loadModule(filepath.Join(modulesDir, files[m])); err != nil {
					m.err = fmt.Errorf("load module %s: %w", files[m], err)
				}
				s.debugf("module %s: %v (%v)", m.name, (boottime() - t0).Round(time.Millisecond), m.err)
			}
			close(m.done)
		}
	}()
	return byName, all, nil
}

// modName is the module name of a module file: no .ko suffix, '_' for '-'.
func modName(file string) string {
	if i := strings.Index(file, ".ko"); i >= 0 {
		file = file[:i]
	}
	return strings.ReplaceAll(file, "-", "_")
}

// waitModules waits for the named modules (if listed) to finish loading.
func (s *initState) waitModules(names ...string) error {
	var errs []error
	for _, n := range names {
		if m := s.modLoads[n]; m != nil {
			<-m.done
			errs = append(errs, m.err)
		}
	}
	return errors.Join(errs...)
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	flags := 0
	if !strings.HasSuffix(path, ".ko") {
		flags |= unix.MODULE_INIT_COMPRESSED_FILE // .ko.xz etc.: the kernel decompresses
	}
	err = unix.FinitModule(int(f.Fd()), "", flags)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

// openChannel finds the virtio-serial port named wire.PortName through
// /sys/class/virtio-ports (there is no udev to make /dev/virtio-ports).
func (s *initState) openChannel() error {
	deadline := time.Now().Add(portWait)
	for {
		ents, _ := os.ReadDir("/sys/class/virtio-ports")
		for _, e := range ents {
			name, err := os.ReadFile(filepath.Join("/sys/class/virtio-ports", e.Name(), "name"))
			if err != nil || strings.TrimSpace(string(name)) != wire.PortName {
				continue
			}
			f, err := os.OpenFile(filepath.Join("/dev", e.Name()), os.O_RDWR, 0)
			if err != nil {
				return fmt.Errorf("open channel /dev/%s: %w", e.Name(), err)
			}
			s.ch = f
			s.w = wire.NewWriter(f)
			s.r = wire.NewReader(f)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no virtio-serial port named %q after %v", wire.PortName, portWait)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// beat tells the host that the test host still runs, whatever the command
// does (wire.Beat), until the channel fails.
func (s *initState) beat() {
	for range time.Tick(wire.BeatInterval) {
		if s.w.WriteFrame(wire.Beat, nil) != nil {
			return
		}
	}
}

// mountDisks waits for a virtio-blk disk with each configured serial and
// mounts it read-only at /artifacts/<name>. A disk that does not mount as
// ext4 is linked there instead (/artifacts/<name> → /dev/vdX), for raw
// images a test opens itself. /dev/disk/husk/<name> always links to the disk.
func (s *initState) mountDisks() error {
	s.disks = map[string]string{}
	if err := os.MkdirAll(artifactsDir, 0o755); err != nil {
		return err
	}
	if len(s.cfg.Disks) == 0 {
		return nil
	}
	if err := os.MkdirAll("/dev/disk/husk", 0o755); err != nil {
		return err
	}
	deadline := time.Now().Add(diskWait)
	for len(s.disks) < len(s.cfg.Disks) {
		ents, _ := os.ReadDir("/sys/block")
		for _, e := range ents {
			serial, err := os.ReadFile(filepath.Join("/sys/block", e.Name(), "serial"))
			if err != nil {
				continue
			}
			s.disks[strings.TrimSpace(string(serial))] = "/dev/" + e.Name()
		}
		missing := []string{}
		for _, d := range s.cfg.Disks {
			if _, ok := s.disks[d]; !ok {
				missing = append(missing, d)
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("artifact disks %v did not appear within %v (found %v)", missing, diskWait, s.disks)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, name := range s.cfg.Disks {
		dev := s.disks[name]
		os.Symlink(dev, "/dev/disk/husk/"+name)
		dst := filepath.Join(artifactsDir, name)
		if err := os.Mkdir(dst, 0o755); err != nil {
			return err
		}
		err := unix.Mount(dev, dst, "ext4", unix.MS_RDONLY|unix.MS_NODEV, "noload")
		if err == nil {
			continue
		}
		s.debugf("disk %s (%s) is not ext4 (%v): linking the device", name, dev, err)
		os.Remove(dst)
		if err := os.Symlink(dev, dst); err != nil {
			return err
		}
	}
	return nil
}

// session says Hello, runs the command from Start and reports its status.
func (s *initState) session(start time.Duration) error {
	var uts unix.Utsname
	unix.Uname(&uts)
	_, kvmErr := os.Stat("/dev/kvm")
	hello, err := wire.Encode(wire.HelloMsg{
		UptimeNS: int64(boottime()),
		InitNS:   int64(start),
		Kernel:   unix.ByteSliceToString(uts.Release[:]),
		Modules:  s.modules,
		KVM:      kvmErr == nil,
	})
	if err != nil {
		return err
	}
	if err := s.w.WriteFrame(wire.Hello, hello); err != nil {
		return fmt.Errorf("send hello: %w", err)
	}
	f, err := s.r.ReadFrame()
	if err != nil {
		return fmt.Errorf("read start: %w", err)
	}
	if f.Type != wire.Start {
		return fmt.Errorf("got %s frame, want Start", f.Type)
	}
	var msg wire.StartMsg
	if err := msg.UnmarshalBinary(f.Payload); err != nil {
		return fmt.Errorf("decode start: %w", err)
	}
	s.debugf("start %q", msg.Args)
	s.startReader()
	status := s.run(&msg)
	s.debugf("exit status %d", status)
	if err := s.w.WriteFrame(wire.Exit, wire.EncodeInt32(status)); err != nil {
		return fmt.Errorf("send exit: %w", err)
	}
	s.waitAck()
	return nil
}

// startReader starts the one goroutine that reads the host's frames after
// Start, and the one that feeds stdin to the command.
func (s *initState) startReader() {
	s.readerOnce.Do(func() {
		s.stdin = make(chan []byte, 16)
		s.stdinPipe = make(chan *os.File, 1)
		s.acked = make(chan struct{})
		go s.readLoop()
		go s.feedStdin()
	})
}

func (s *initState) readLoop() {
	defer close(s.acked)
	defer close(s.stdin)
	for {
		f, err := s.r.ReadFrame()
		if err != nil {
			logf("channel: %v", err)
			return
		}
		switch f.Type {
		case wire.Ack:
			return
		case wire.Stdin:
			s.stdin <- bytes.Clone(f.Payload)
		case wire.Signal:
			s.signal(f.Payload)
		default:
			logf("unexpected %s frame from the host", f.Type)
		}
	}
}

// signal delivers a Signal frame's signal to the running command. One that
// arrives before the command started or after it ended has nobody to reach.
func (s *initState) signal(p []byte) {
	sig, err := wire.DecodeInt32(p)
	if err != nil || sig < 1 || sig > 64 {
		logf("bad Signal frame %x", p)
		return
	}
	if pid := s.cmdPID.Load(); pid != 0 {
		if err := unix.Kill(int(pid), unix.Signal(sig)); err != nil {
			logf("signal %d to %d: %v", sig, pid, err)
		}
	}
}

// feedStdin copies Stdin payloads into the command's stdin until the empty
// one (EOF). If the command stops reading or never started, the rest is
// discarded, so the reader keeps going and the Ack still arrives.
func (s *initState) feedStdin() {
	w := <-s.stdinPipe
	for p := range s.stdin {
		if w == nil {
			continue
		}
		if len(p) == 0 {
			w.Close()
			w = nil
			continue
		}
		if _, err := w.Write(p); err != nil {
			w.Close()
			w = nil
		}
	}
	if w != nil {
		w.Close()
	}
}

// waitAck waits a little for the host's Ack, so the host has read every
// frame before QEMU stops.
func (s *initState) waitAck() {
	select {
	case <-s.acked:
	case <-time.After(ackWait):
		logf("no Ack from the host after %v", ackWait)
	}
}

// run runs the command and returns its status: the exit code, 128+signal
// if it was killed, 127 if it could not be found, 126 if it could not start.
func (s *initState) run(msg *wire.StartMsg) int {
	env := commandEnv(s.cfg.Disks, msg.Env)
	stderr := s.w.Stream(wire.Stderr)
	path, err := lookPath(msg.Args[0], env)
	if err != nil {
		s.stdinPipe <- nil
		fmt.Fprintf(stderr, "testhost: %v\n", err)
		return 127
	}
	dir := msg.Dir
	if dir == "" {
		dir = "/tmp"
	}
	var p [3][2]*os.File
	for i := range p {
		if p[i][0], p[i][1], err = os.Pipe(); err != nil {
			s.stdinPipe <- nil
			fmt.Fprintf(stderr, "testhost: %v\n", err)
			return 126
		}
	}
	stdinR, stdinW := p[0][0], p[0][1]
	outR, outW := p[1][0], p[1][1]
	errR, errW := p[2][0], p[2][1]
	cmd := &exec.Cmd{
		Path:        path,
		Args:        msg.Args,
		Env:         env,
		Dir:         dir,
		Stdin:       stdinR,
		Stdout:      outW,
		Stderr:      errW,
		SysProcAttr: &unix.SysProcAttr{Setsid: true},
	}
	if err := cmd.Start(); err != nil {
		s.stdinPipe <- nil
		for i := range p {
			p[i][0].Close()
			p[i][1].Close()
		}
		fmt.Fprintf(stderr, "testhost: %v\n", err)
		if errors.Is(err, os.ErrNotExist) {
			return 127
		}
		return 126
	}
	// Every child is a descendant of the command, so reaping can start
	// now: the reaper collects orphans too (PID 1 inherits them).
	exited := reap(cmd.Process.Pid)
	s.cmdPID.Store(int32(cmd.Process.Pid))
	stdinR.Close()
	outW.Close()
	errW.Close()
	s.stdinPipe <- stdinW

	var pumps sync.WaitGroup
	pumps.Add(2)
	go func() { defer pumps.Done(); io.Copy(s.w.Stream(wire.Stdout), outR) }()
	go func() { defer pumps.Done(); io.Copy(stderr, errR) }()

	status := <-exited
	s.cmdPID.Store(0)
	cmd.Process.Release()
	// Output written just before exit is still in the pipes; children that
	// inherited them may keep them open, so wait only a little.
	drained := make(chan struct{})
	go func() { pumps.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(drainWait):
		logf("command's output pipes still open %v after it exited; dropping the rest", drainWait)
		outR.Close()
		errR.Close()
	}
	return status
}

// commandEnv is the command's environment: defaults, then the host's
// entries (which win).
func commandEnv(disks []string, extra []string) []string {
	path := defaultPath
	for i := len(disks) - 1; i >= 0; i-- {
		path = filepath.Join(artifactsDir, disks[i], "bin") + ":" + path
	}
	env := []string{"PATH=" + path, "HOME=/tmp", "TMPDIR=/tmp", "USER=root"}
	seen := map[string]int{}
	for i, e := range env {
		k, _, _ := strings.Cut(e, "=")
		seen[k] = i
	}
	for _, e := range extra {
		k, _, _ := strings.Cut(e, "=")
		if i, ok := seen[k]; ok {
			env[i] = e
			continue
		}
		seen[k] = len(env)
		env = append(env, e)
	}
	return env
}

// lookPath resolves name like a shell would, with the command's PATH.
func lookPath(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	path := ""
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: command not found in PATH=%s", name, path)
}

// reap reaps every child of PID 1 from now on and sends the exit status of
// pid on the returned channel: its exit code, or 128+signal.
func reap(pid int) <-chan int {
	ch := make(chan int, 1)
	go func() {
		for {
			var ws unix.WaitStatus
			got, err := unix.Wait4(-1, &ws, 0, nil)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil { // ECHILD: nothing left to reap; poll for orphans
				time.Sleep(5 * time.Millisecond)
				continue
			}
			if got != pid || !(ws.Exited() || ws.Signaled()) {
				continue
			}
			if ws.Signaled() {
				ch <- 128 + int(ws.Signal())
			} else {
				ch <- ws.ExitStatus()
			}
		}
	}()
	return ch
}

func boottime() time.Duration {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return time.Duration(ts.Nano())
}

// poweroff stops the test host: first through QEMU's isa-debug-exit device
// (QEMU exits at once), then, if that port is absent, by powering off.
func poweroff(code byte) {
	// Console writes return once the tty has them; wait (briefly) until the
	// UART has sent them, or the last log lines die with QEMU.
	drained := make(chan struct{})
	go func() { unix.IoctlSetInt(1, unix.TCSBRK, 1); close(drained) }() // tcdrain(1)
	select {
	case <-drained:
	case <-time.After(time.Second):
	}
	unix.Sync()
	if err := debugExit(code); err != nil {
		logf("isa-debug-exit: %v", err)
	}
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	// Still here: PID 1 exiting panics the kernel, which with panic=-1
	// reboots, which with -no-reboot stops QEMU.
	os.Exit(1)
}
