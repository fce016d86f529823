package e2e

import (
	"bufio"
	"context"
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
	"testing"
	"time"

	"github.com/huskvm/husk/internal/virtio/vsock"
)

// The vsock stress tests watch husk-vmm from outside while a guest misuses
// vsock: its resident memory (VmRSS) and open descriptors, read from /proc,
// must stay bounded, and the VMM must go on serving new connections.

// stressDeadline bounds one stress test, boot included.
const stressDeadline = 15 * time.Minute

// rssSlackMiB bounds husk-vmm's RSS growth over its RSS right after boot.
// What the VMM may legitimately hold for vsock is small: per connection at
// most BufAlloc (256 KiB) of guest bytes the host has not taken and one
// 64 KiB read chunk of host bytes the guest has no credit for, so
// 128 connections × 320 KiB = 40 MiB at the very worst, and a few hundred
// KiB for the two stuck connections of TestVsockNeverReads. Guest RAM the
// guest touches after boot is counted too (it is anonymous memory of the
// VMM), which the tests keep small. A VMM that buffered what a sender
// pushes at a non-reader would blow through it.
const rssSlackMiB = 64

// blockedWithin bounds the bytes a sender gets through to a peer that never
// reads before it blocks: the guest's 256 KiB receive buffer (or husk's
// 256 KiB BufAlloc the other way), husk's 64 KiB read chunk, and the host
// kernel's Unix socket buffers (a few hundred KiB). Flow control that works
// stops far below; a VMM that buffers instead takes whatever it is sent, so
// the senders stop and fail the test once they get past it.
const blockedWithin = 8 << 20

// stuckFor is how long a send must make no progress to count as blocked:
// with a peer that reads, credit comes back within milliseconds.
const stuckFor = 5 * time.Second

// pyVsock defines vsock(), a guest stream socket for connecting. Its connect
// timeout is a minute: Linux's default of 2 s would be a latency bound,
// which these tests do not set (the test host is emulated and shared).
// SO_VM_SOCKETS_CONNECT_TIMEOUT is option 6 and takes a struct timeval,
// which Python's setsockopt cannot pass for AF_VSOCK (it sends integers
// only), so it goes through libc.
const pyVsock = `
def vsock():
    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    tv = struct.pack('ll', 60, 0)
    if libc.setsockopt(s.fileno(), socket.AF_VSOCK, 6, tv, len(tv)) != 0:
        raise OSError(ctypes.get_errno(), 'SO_VM_SOCKETS_CONNECT_TIMEOUT')
    return s
`

// vmmStats is what /proc tells about a process.
type vmmStats struct {
	rssKiB int // VmRSS
	fds    int // entries of /proc/<pid>/fd
}

func (s vmmStats) String() string {
	return fmt.Sprintf("RSS %.1f MiB, %d fds", float64(s.rssKiB)/1024, s.fds)
}

func readStats(pid int) (vmmStats, error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return vmmStats{}, err
	}
	var s vmmStats
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			s.rssKiB, err = strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err != nil {
				return vmmStats{}, fmt.Errorf("VmRSS %q: %w", v, err)
			}
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return vmmStats{}, err
	}
	s.fds = len(fds)
	return s, nil
}

// vsockVM is a running husk-vmm with a vsock device, booted into a Python
// program.
type vsockVM struct {
	t    *testing.T
	ctx  context.Context
	cmd  *exec.Cmd
	out  *syncBuffer // the guest's console and husk-vmm's log
	sock string      // the vsock device's host socket

	exited  chan struct{} // closed once husk-vmm has exited
	exitErr error         // cmd.Wait's result; set before exited closes

	mu   sync.Mutex // guards peak
	peak vmmStats
	stop chan struct{} // closed to end the sampler
	done chan struct{} // closed when the sampler has ended
}

// startVsockVM boots program with a vsock device on sock, waits for the
// guest to report HUSK_LISTENING, and starts sampling husk-vmm's stats.
func startVsockVM(t *testing.T, ctx context.Context, a artifacts, sock, program string) *vsockVM {
	t.Helper()
	v := &vsockVM{t: t, ctx: ctx, out: &syncBuffer{}, sock: sock, exited: make(chan struct{}),
		stop: make(chan struct{}), done: make(chan struct{})}
	v.cmd = vmmCommand(ctx, a, pyArgs(t, a, pyVM{extra: []string{"--vsock", "cid=3,socket=" + sock}}, program)...)
	v.cmd.Stdout, v.cmd.Stderr = v.out, v.out
	if err := v.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		v.exitErr = v.cmd.Wait()
		close(v.exited)
	}()
	t.Cleanup(func() {
		v.cmd.Process.Kill() // fails harmlessly once it has exited
		<-v.exited
	})
	v.waitReport("LISTENING")
	go v.sample()
	t.Cleanup(v.stopSampling)
	return v
}

// waitReport waits until the guest has printed a whole HUSK_<key>= line and
// returns its value; the guest failing, husk-vmm exiting or the deadline
// passing fails the test.
func (v *vsockVM) waitReport(key string) string {
	v.t.Helper()
	for {
		out := v.out.String()
		// Only whole lines: the console arrives a few bytes at a time.
		if val, ok := report(out[:strings.LastIndexByte(out, '\n')+1])["HUSK_"+key]; ok {
			return val
		}
		if strings.Contains(out, "HUSK_FAIL") {
			v.t.Fatalf("the guest program failed while the test waited for HUSK_%s:\n%s", key, out)
		}
		select {
		case <-v.exited:
			v.t.Fatalf("husk-vmm exited (%v) while the test waited for HUSK_%s:\n%s", v.exitErr, key, v.out.String())
		case <-v.ctx.Done():
			v.t.Fatalf("waiting for HUSK_%s: %v\n%s", key, v.ctx.Err(), out)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stats reads husk-vmm's stats now.
func (v *vsockVM) stats() vmmStats {
	v.t.Helper()
	s, err := readStats(v.cmd.Process.Pid)
	if err != nil {
		v.t.Fatal(err)
	}
	return s
}

// sample keeps the highest RSS and fd count seen until stop is closed.
func (v *vsockVM) sample() {
	defer close(v.done)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if s, err := readStats(v.cmd.Process.Pid); err == nil {
			v.mu.Lock()
			v.peak.rssKiB, v.peak.fds = max(v.peak.rssKiB, s.rssKiB), max(v.peak.fds, s.fds)
			v.mu.Unlock()
		}
		select {
		case <-v.stop:
			return
		case <-tick.C:
		}
	}
}

func (v *vsockVM) stopSampling() {
	select {
	case <-v.stop:
	default:
		close(v.stop)
	}
	<-v.done
}

// peakStats returns the highest RSS and fd count sampled so far.
func (v *vsockVM) peakStats() vmmStats {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.peak
}

// connect opens a host-initiated connection to guest port. It returns nil
// when the VMM closes the connection instead of answering OK (a refusal).
func (v *vsockVM) connect(port int) (net.Conn, *bufio.Reader) {
	v.t.Helper()
	c, err := net.Dial("unix", v.sock)
	if err != nil {
		v.t.Fatal(err)
	}
	fmt.Fprintf(c, "CONNECT %d\n", port)
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if errors.Is(err, io.EOF) && line == "" {
		c.Close()
		return nil, nil
	}
	if err != nil || !strings.HasPrefix(line, "OK ") {
		v.t.Fatalf("CONNECT %d answered %q, %v", port, line, err)
	}
	return c, br
}

// finish waits for husk-vmm to exit after the guest program ended and
// returns the guest's report; both must have succeeded.
func (v *vsockVM) finish() map[string]string {
	v.t.Helper()
	select {
	case <-v.exited:
	case <-v.ctx.Done():
		v.t.Fatalf("husk-vmm did not exit: %v\n%s", v.ctx.Err(), v.out.String())
	}
	v.stopSampling()
	got := report(v.out.String())
	if v.exitErr != nil || got["HUSK_OK"] != "1" {
		v.t.Fatalf("guest program failed: %v\n%s", v.exitErr, v.out.String())
	}
	return got
}

// checkBounded fails if the peak RSS grew more than rssSlackMiB over base,
// or if the peak fd count exceeds base by more than extraFDs.
func checkBounded(t *testing.T, base, peak vmmStats, extraFDs int) {
	t.Helper()
	if grew := peak.rssKiB - base.rssKiB; grew > rssSlackMiB<<10 {
		t.Errorf("husk-vmm's RSS grew by %d KiB (from %v to a peak of %v); the bound is %d MiB", grew, base, peak, rssSlackMiB)
	}
	if peak.fds > base.fds+extraFDs {
		t.Errorf("husk-vmm had %d fds at its peak, %d after boot; the bound is %d more", peak.fds, base.fds, extraFDs)
	}
}

// TestVsockNeverReads: the host pushes into a guest socket the guest never
// reads, and the guest pushes into a host socket the host never reads, at
// the same time. Both senders must block after a bounded number of bytes
// (credit-based flow control) instead of husk-vmm buffering what they send,
// and a third connection must still work while both are stuck.
func TestVsockNeverReads(t *testing.T) {
	a := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), stressDeadline)
	defer cancel()
	sock := filepath.Join(t.TempDir(), "v.sock")
	up, err := net.Listen("unix", sock+"_5000")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	upConn := make(chan net.Conn, 1) // accepted and never read
	go func() {
		if c, err := up.Accept(); err == nil {
			upConn <- c
		}
	}()

	vm := startVsockVM(t, ctx, a, sock, pyVsock+fmt.Sprintf(`
sink = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
sink.bind((socket.VMADDR_CID_ANY, 6000))
sink.listen(1)
ctl = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
ctl.bind((socket.VMADDR_CID_ANY, 6001))
ctl.listen(1)
report('LISTENING', 1)
sunk, _ = sink.accept()  # the host writes here; nothing reads
up = vsock()
up.connect((2, 5000))  # the host accepts and never reads
up.settimeout(%d)
block, sent = bytes(1 << 16), 0
try:
    while sent <= %d:  # past this, flow control has failed: stop and tell
        sent += up.send(block)
except socket.timeout:
    pass
report('UP_BLOCKED_AT', sent)
k, _ = ctl.accept()
report('CTL', k.recv(16).decode())
k.sendall(b'bye')
for s in (k, sunk, up):
    s.close()`, int(stuckFor/time.Second), blockedWithin))
	base := vm.stats()
	t.Logf("after boot: %v", base)

	// Host to guest: write until a write makes no progress for stuckFor.
	down, _ := vm.connect(6000)
	if down == nil {
		t.Fatal("CONNECT 6000 refused")
	}
	defer down.Close()
	start := time.Now()
	buf := make([]byte, 64<<10)
	written := 0
	for {
		down.SetWriteDeadline(time.Now().Add(stuckFor))
		n, err := down.Write(buf)
		written += n
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatalf("host write after %d bytes: %v", written, err)
		}
		if written > blockedWithin {
			t.Fatalf("the host wrote %d bytes into a connection the guest never reads; flow control should stop it within %d", written, blockedWithin)
		}
	}
	t.Logf("host to guest: blocked after %d KiB (%v)", written>>10, time.Since(start).Round(time.Millisecond))

	// Guest to host: the guest reports once its send made no progress for
	// stuckFor.
	upSent, err := strconv.Atoi(vm.waitReport("UP_BLOCKED_AT"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("guest to host: blocked after %d KiB", upSent>>10)
	if upSent > blockedWithin {
		t.Errorf("the guest sent %d bytes into a connection the host never reads; flow control should stop it within %d", upSent, blockedWithin)
	}
	stuck := vm.stats()
	t.Logf("both stuck: %v", stuck)

	// A third connection still works while both are stuck.
	ctl, br := vm.connect(6001)
	if ctl == nil {
		t.Fatal("CONNECT 6001 refused while two connections are stuck")
	}
	defer ctl.Close()
	fmt.Fprint(ctl, "done")
	if b, _ := io.ReadAll(br); string(b) != "bye" {
		t.Fatalf("control connection read %q", b)
	}
	select {
	case c := <-upConn:
		c.Close()
	case <-ctx.Done():
		t.Fatal("the guest's connection never reached the host listener")
	}
	got := vm.finish()
	if got["HUSK_CTL"] != "done" {
		t.Errorf("guest read %q on the control connection", got["HUSK_CTL"])
	}
	peak := vm.peakStats()
	t.Logf("peak: %v", peak)
	// Stuck: the two connections and the control one, one fd each.
	checkBounded(t, base, peak, 8)
}

// TestVsockManyConns: with a control connection open, the guest opens more
// connections at once than the VMM's cap (the excess must be refused with a
// reset while the held ones keep working), then 10 000 short connections
// from 8 threads; the host then opens 1000 of its own. husk-vmm's RSS and
// fds stay bounded, the fds come back to where they were, and a last
// connection each way works.
func TestVsockManyConns(t *testing.T) {
	const (
		maxConns   = vsock.DefaultMaxConns
		burst      = maxConns + 72
		many       = 10000
		workers    = 8
		hostConns  = 1000
		guestCtl   = 6000 // guest control listener
		guestEcho  = 6001 // guest echo server for host-initiated connections
		hostBurst  = 5000 // host listener that holds the burst's connections
		hostEcho   = 5001 // host echo listener
		extraFDMax = maxConns + 8
	)
	a := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), stressDeadline)
	defer cancel()
	sock := filepath.Join(t.TempDir(), "v.sock")

	burstL, err := net.Listen("unix", fmt.Sprintf("%s_%d", sock, hostBurst))
	if err != nil {
		t.Fatal(err)
	}
	defer burstL.Close()
	var heldMu sync.Mutex
	var held []net.Conn // the burst's connections
	go func() {
		for {
			c, err := burstL.Accept()
			if err != nil {
				return
			}
			heldMu.Lock()
			held = append(held, c)
			heldMu.Unlock()
		}
	}()
	defer func() {
		heldMu.Lock()
		for _, c := range held {
			c.Close()
		}
		heldMu.Unlock()
	}()
	echoL, err := net.Listen("unix", fmt.Sprintf("%s_%d", sock, hostEcho))
	if err != nil {
		t.Fatal(err)
	}
	defer echoL.Close()
	var echoed atomic.Int64
	go func() {
		for {
			c, err := echoL.Accept()
			if err != nil {
				return
			}
			echoed.Add(1)
			go func() {
				io.Copy(c, c) // until the guest closes
				c.Close()
			}()
		}
	}()

	vm := startVsockVM(t, ctx, a, sock, pyVsock+fmt.Sprintf(`
import threading
BURST, N, WORKERS = %d, %d, %d
def serve():
    l = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    l.bind((socket.VMADDR_CID_ANY, %d))
    l.listen(64)
    while True:
        c, _ = l.accept()
        c.sendall(c.recv(1))
        c.close()
threading.Thread(target=serve, daemon=True).start()
l = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
l.bind((socket.VMADDR_CID_ANY, %d))
l.listen(1)
report('LISTENING', 1)
ctl, _ = l.accept()  # open until the end: it counts towards the cap
report('CTL', ctl.recv(16).decode())
held, refused = [], 0
for i in range(BURST):
    s = vsock()
    try:
        s.connect((2, %d))
        held.append(s)
    except ConnectionResetError:
        refused += 1
        s.close()
report('BURST', '%%d:%%d' %% (len(held), refused))
for s in held:
    if s.recv(1) != b'g':
        raise Exception('a held connection lost its data')
    s.close()
# The VMM drops a closed connection a little after the close; the host
# says when they are gone, so that the workers never meet the cap.
report('CTL2', ctl.recv(16).decode())
errs, slowest = [], [0.0]
def worker(n):
    try:
        for _ in range(n):
            s = vsock()
            c0 = time.monotonic()
            s.connect((2, %d))
            slowest[0] = max(slowest[0], time.monotonic() - c0)
            s.sendall(b'x')
            if s.recv(1) != b'x':
                raise Exception('echo lost')
            s.close()
    except BaseException as e:
        errs.append(e)
ts = [threading.Thread(target=worker, args=(N // WORKERS,)) for _ in range(WORKERS)]
t0 = time.monotonic()
for t in ts:
    t.start()
for t in ts:
    t.join()
if errs:
    raise errs[0]
report('MANY', '%%d in %%.1f s, slowest connect %%.3f s' %% (N, time.monotonic() - t0, slowest[0]))
report('CTL3', ctl.recv(16).decode())
s = vsock()
s.connect((2, %d))
s.sendall(b'y')
report('LAST', s.recv(1).decode())
s.close()
ctl.sendall(b'bye')
ctl.close()`, burst, many, workers, guestEcho, guestCtl, hostBurst, hostEcho, hostEcho))
	// The guest waits for the control connection: nothing is open yet.
	base := vm.stats()
	t.Logf("after boot: %v", base)
	ctl, br := vm.connect(guestCtl)
	if ctl == nil {
		t.Fatal("the control CONNECT was refused")
	}
	defer ctl.Close()
	fmt.Fprint(ctl, "burst")

	// The burst: the cap less the control connection is accepted, the rest
	// reset.
	want := fmt.Sprintf("%d:%d", maxConns-1, burst-maxConns+1)
	if got := vm.waitReport("BURST"); got != want {
		t.Fatalf("guest burst of %d: held:refused %s, want %s (the cap is %d, one is the control connection)", burst, got, want, maxConns)
	}
	atCap := vm.stats()
	t.Logf("%d connections open: %v", maxConns, atCap)
	// At the cap a host-initiated connection is refused too: closed
	// without an OK.
	if c, _ := vm.connect(guestEcho); c != nil {
		c.Close()
		t.Fatalf("CONNECT accepted with %d connections open; the cap is %d", maxConns, maxConns)
	}
	for {
		heldMu.Lock()
		n := len(held)
		heldMu.Unlock()
		if n == maxConns-1 {
			break
		}
		if n > maxConns-1 || ctx.Err() != nil {
			t.Fatalf("host accepted %d of the burst's connections, want %d", n, maxConns-1)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Every held connection still carries data.
	heldMu.Lock()
	for _, c := range held {
		if _, err := c.Write([]byte("g")); err != nil {
			t.Fatalf("write to a held connection: %v", err)
		}
		c.Close()
	}
	held = nil
	heldMu.Unlock()
	settled := waitFDs(t, vm, base.fds+1) // the control connection
	t.Logf("after the burst: %v", settled)

	// 10 000 short connections from the guest.
	fmt.Fprint(ctl, "many")
	start := time.Now()
	manyReport := vm.waitReport("MANY")
	t.Logf("guest: %s (%v host time); echo listener accepted %d", manyReport,
		time.Since(start).Round(time.Millisecond), echoed.Load())
	settled = waitFDs(t, vm, base.fds+1)
	t.Logf("after the guest's connections: %v", settled)

	// 1000 short connections from the host.
	start = time.Now()
	for i := range hostConns {
		c, r := vm.connect(guestEcho)
		if c == nil {
			t.Fatalf("host connection %d refused", i)
		}
		c.Write([]byte("h"))
		if b, err := io.ReadAll(r); err != nil || string(b) != "h" {
			t.Fatalf("host connection %d read %q, %v", i, b, err)
		}
		c.Close()
	}
	t.Logf("host: %d connections in %v", hostConns, time.Since(start).Round(time.Millisecond))
	settled = waitFDs(t, vm, base.fds+1)
	t.Logf("after the host's connections: %v", settled)

	// One more connection each way.
	fmt.Fprint(ctl, "last")
	if b, _ := io.ReadAll(br); string(b) != "bye" {
		t.Fatalf("control connection read %q", b)
	}
	got := vm.finish()
	if got["HUSK_CTL"] != "burst" || got["HUSK_CTL2"] != "many" || got["HUSK_CTL3"] != "last" || got["HUSK_LAST"] != "y" {
		t.Errorf("report %v", got)
	}
	if n := echoed.Load(); n != many+1 {
		t.Errorf("host echo listener accepted %d connections, the guest made %d", n, many+1)
	}
	peak := vm.peakStats()
	t.Logf("peak: %v", peak)
	checkBounded(t, base, peak, extraFDMax)
}

// settleDeadline bounds the wait for husk-vmm's fds to come back after the
// last connection closed: the closes trail the guest's report by a few
// packets, not by seconds.
const settleDeadline = time.Minute

// waitFDs waits until husk-vmm's fd count is back to at most base and
// returns the stats then. Not getting there within settleDeadline fails the
// test: a descriptor leaked.
func waitFDs(t *testing.T, vm *vsockVM, base int) vmmStats {
	t.Helper()
	deadline := time.Now().Add(settleDeadline)
	for {
		s := vm.stats()
		if s.fds <= base {
			return s
		}
		if time.Now().After(deadline) || vm.ctx.Err() != nil {
			t.Fatalf("husk-vmm's fds stay at %d, %d after boot", s.fds, base)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
