package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/huskvm/husk/internal/testutil/kvmtest"
)

// The virtio tests boot the minimal template (Debian with python3) from
// virtio-blk and run Python as PID 1: the test's program reaches the guest
// on a second disk (/dev/vdb), so it needs nothing baked into the image.

// pyPrelude wraps a test program: it mounts /proc and /sys, runs the
// program, prints HUSK_OK or a traceback and HUSK_FAIL, and reboots.
const pyPrelude = `import os, sys, ctypes, traceback, hashlib, socket, struct, fcntl, time
libc = ctypes.CDLL(None, use_errno=True)
def mount(src, dst, fs):
    os.makedirs(dst, exist_ok=True)
    if libc.mount(src.encode(), dst.encode(), fs.encode(), 0, None) != 0:
        raise OSError(ctypes.get_errno(), 'mount ' + dst)
def report(k, v):
    print('HUSK_%s=%s' % (k, v), flush=True)
try:
    mount('proc', '/proc', 'proc')
    mount('sysfs', '/sys', 'sysfs')
    exec(PROGRAM)
    report('OK', 1)
except BaseException:
    traceback.print_exc()
    report('FAIL', 1)
sys.stdout.flush()
os.sync()
libc.reboot(0x1234567)
`

// pyCmdline boots the template and runs the program on /dev/vdb.
const pyCmdline = baseCmdline + ` root=/dev/vda rw init=/usr/bin/python3 -- -c "exec(open('/dev/vdb','rb').read().rstrip(bytes(1)))"`

type pyVM struct {
	rootOverlay string   // the root disk's overlay: a fresh file, or one to reuse
	disks       []string // more --disk values: /dev/vdc, …
	extra       []string // more husk-vmm flags
}

// pyScript writes the program, wrapped in the prelude, as a raw disk image.
func pyScript(t *testing.T, program string) string {
	t.Helper()
	src := "PROGRAM = " + strconv.Quote(program) + "\n" + pyPrelude
	b := []byte(src)
	b = append(b, make([]byte, 4096-len(b)%4096)...)
	path := filepath.Join(t.TempDir(), "script.img")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func needRootfs(t *testing.T) string {
	p := os.Getenv("HUSK_ROOTFS")
	if p == "" {
		kvmtest.Unavailable(t, "HUSK_ROOTFS is not set; run the e2e tests through `make test`")
	}
	return p
}

// pyArgs returns husk-vmm's arguments for vm running program.
func pyArgs(t *testing.T, a artifacts, vm pyVM, program string) []string {
	if vm.rootOverlay == "" {
		vm.rootOverlay = filepath.Join(t.TempDir(), "root.overlay")
	}
	args := []string{"--kernel", a.vmlinux, "--mem", "256", "--log-level", "info",
		"--disk", needRootfs(t) + ",overlay=" + vm.rootOverlay,
		"--disk", pyScript(t, program) + ",ro",
		"--cmdline", pyCmdline}
	for _, d := range vm.disks {
		args = append(args, "--disk", d)
	}
	return append(args, vm.extra...)
}

// py boots vm with program and returns what the guest reported; the program
// must succeed.
func py(t *testing.T, a artifacts, vm pyVM, program string) (map[string]string, result) {
	t.Helper()
	r := vmm(t, a, pyArgs(t, a, vm, program)...)
	got := report(r.stdout)
	if r.err != nil || got["HUSK_OK"] != "1" {
		t.Fatalf("guest program failed: %v\nstdout:\n%s\nstderr:\n%s", r.err, r.stdout, r.stderr)
	}
	return got, r
}

func TestPythonOnExt4Root(t *testing.T) {
	a := need(t)
	got, _ := py(t, a, pyVM{}, `report('PY', 6*7); report('ROOT', open('/proc/mounts').read().split('\n')[0])`)
	if got["HUSK_PY"] != "42" || !strings.HasPrefix(got["HUSK_ROOT"], "/dev/root / ext4 rw") {
		t.Fatalf("report %v", got)
	}
}

func TestRNGServedByVMM(t *testing.T) {
	a := need(t)
	got, r := py(t, a, pyVM{extra: []string{"--rng"}}, `
report('RNG', open('/sys/class/misc/hw_random/rng_current').read().strip())
f, n = open('/dev/hwrng', 'rb', buffering=0), 0
while n < 65536:
    n += len(f.read(65536 - n))
report('HWRNG_BYTES', n)`)
	if got["HUSK_RNG"] != "virtio_rng.0" || got["HUSK_HWRNG_BYTES"] != "65536" {
		t.Fatalf("report %v", got)
	}
	m := regexp.MustCompile(`rng_bytes=(\d+)`).FindStringSubmatch(r.stderr)
	if m == nil {
		t.Fatalf("husk-vmm did not report rng bytes:\n%s", r.stderr)
	}
	if n, _ := strconv.Atoi(m[1]); n < 65536 {
		t.Fatalf("husk-vmm served %d bytes of entropy, the guest read 65536", n)
	}
}

func sha(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return hex.EncodeToString(h.Sum(nil))
}

// TestOverlayIsolation: two VMs on one base each write; the base is
// unchanged and each sees only its own writes, also after a restart.
func TestOverlayIsolation(t *testing.T) {
	a := need(t)
	base := sha(t, needRootfs(t))
	dir := t.TempDir()
	ovA, ovB := filepath.Join(dir, "a.overlay"), filepath.Join(dir, "b.overlay")
	py(t, a, pyVM{rootOverlay: ovA}, `open('/mine', 'w').write('A'); os.sync()`)
	py(t, a, pyVM{rootOverlay: ovB}, `open('/mine', 'w').write('B'); os.sync()`)
	for _, tc := range []struct{ overlay, want string }{{ovA, "A"}, {ovB, "B"}} {
		got, _ := py(t, a, pyVM{rootOverlay: tc.overlay}, `report('MINE', open('/mine').read())`)
		if got["HUSK_MINE"] != tc.want {
			t.Errorf("restarted VM reads %q from its own write, want %q", got["HUSK_MINE"], tc.want)
		}
	}
	got, _ := py(t, a, pyVM{}, `report('EXISTS', os.path.exists('/mine'))`)
	if got["HUSK_EXISTS"] != "False" {
		t.Error("a fresh VM on the base sees another VM's write")
	}
	if sha(t, needRootfs(t)) != base {
		t.Fatal("the base image changed")
	}
}

// TestOverlayBlockSemantics checks, on a data disk of random bytes under an
// overlay: zeroed and discarded ranges read back as zeros, never as base
// data; a 512-byte write keeps the neighbouring base bytes; and a guest
// flush survives kill -9 of husk-vmm.
func TestOverlayBlockSemantics(t *testing.T) {
	a := need(t)
	dir := t.TempDir()
	basePath, overlay := filepath.Join(dir, "data.img"), filepath.Join(dir, "data.overlay")
	data := make([]byte, 4<<20)
	rng := rand.NewChaCha8([32]byte{1})
	rng.Read(data)
	if err := os.WriteFile(basePath, data, 0o444); err != nil {
		t.Fatal(err)
	}
	baseSum := sha(t, basePath)
	disk := basePath + ",overlay=" + overlay
	got, _ := py(t, a, pyVM{disks: []string{disk}}, `
BLKDISCARD, BLKZEROOUT = 0x1277, 0x127f
fd = os.open('/dev/vdc', os.O_RDWR)
fcntl.ioctl(fd, BLKZEROOUT, struct.pack('QQ', 1 << 20, 65536))
fcntl.ioctl(fd, BLKDISCARD, struct.pack('QQ', 2 << 20, 65536))
os.pwrite(fd, b'\xab' * 512, (3 << 20) + 512)
os.fsync(fd)
os.close(fd)
# read through a fresh descriptor, bypassing nothing but our own writes
fd = os.open('/dev/vdc', os.O_RDONLY | os.O_DIRECT)
import mmap
buf = mmap.mmap(-1, 4096)
def rd(off):
    os.preadv(fd, [buf], off)
    return bytes(buf)
report('ZEROED', rd(1 << 20) == bytes(4096) and rd((1 << 20) + 61440) == bytes(4096))
report('DISCARDED', rd(2 << 20) == bytes(4096))
report('PATCH', hashlib.sha256(rd(3 << 20)).hexdigest())`)
	patch := append([]byte(nil), data[3<<20:3<<20+4096]...)
	copy(patch[512:1024], bytes.Repeat([]byte{0xab}, 512))
	want := sha256.Sum256(patch)
	if got["HUSK_ZEROED"] != "True" || got["HUSK_DISCARDED"] != "True" || got["HUSK_PATCH"] != hex.EncodeToString(want[:]) {
		t.Fatalf("report %v; want zeroed, discarded, patch %x", got, want)
	}

	// A flushed write survives kill -9: the guest writes, fsyncs, reports,
	// then waits to be killed.
	tok := token(t)
	ctx, cancel := context.WithTimeout(context.Background(), bootDeadline)
	defer cancel()
	cmd := vmmCommand(ctx, a, pyArgs(t, a, pyVM{disks: []string{disk}}, `
fd = os.open('/dev/vdc', os.O_RDWR)
os.pwrite(fd, b'`+tok+`', 0x5000)
os.fsync(fd)
report('SYNCED', 1)
time.sleep(3600)`)...)
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for !strings.Contains(out.String(), "HUSK_SYNCED=1") {
		if ctx.Err() != nil || strings.Contains(out.String(), "HUSK_FAIL") {
			cmd.Process.Kill()
			t.Fatalf("guest never synced:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd.Process.Kill()
	cmd.Wait()
	got, _ = py(t, a, pyVM{disks: []string{disk}}, `
fd = os.open('/dev/vdc', os.O_RDONLY)
report('TOKEN', os.pread(fd, `+strconv.Itoa(len(tok))+`, 0x5000).decode())`)
	if got["HUSK_TOKEN"] != tok {
		t.Fatalf("after kill -9 the disk reads %q, want %q", got["HUSK_TOKEN"], tok)
	}
	if sha(t, basePath) != baseSum {
		t.Fatal("the data disk's base changed")
	}
}

// vsockBytes is how much each bulk transfer moves (HUSK_E2E_VSOCK_MIB
// overrides it): in the nested test host 256 MiB each way, boot included,
// takes under two minutes.
var vsockBytes = envMiB("HUSK_E2E_VSOCK_MIB", 256) << 20

// envMiB reads a size in MiB from the environment.
func envMiB(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

// TestVsock: a round trip the host starts, and a bulk transfer each way
// where the sender closes right after its last write and the receiver reads
// to EOF, checksummed on both sides.
func TestVsock(t *testing.T) {
	a := need(t)
	sock := filepath.Join(t.TempDir(), "v.sock")
	up, err := net.Listen("unix", sock+"_5000")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	down, err := net.Listen("unix", sock+"_5001")
	if err != nil {
		t.Fatal(err)
	}
	defer down.Close()

	// Host side of the bulk transfers.
	upSum := make(chan string, 1)
	go func() {
		c, err := up.Accept()
		if err != nil {
			upSum <- err.Error()
			return
		}
		defer c.Close()
		h := sha256.New()
		n, _ := io.Copy(h, c)
		upSum <- fmt.Sprintf("%d:%x", n, h.Sum(nil))
	}()
	downSum := make(chan string, 1)
	go func() {
		c, err := down.Accept()
		if err != nil {
			downSum <- err.Error()
			return
		}
		h := sha256.New()
		rng := rand.NewChaCha8([32]byte{2})
		buf := make([]byte, 1<<20)
		for sent := 0; sent < vsockBytes; sent += len(buf) {
			rng.Read(buf)
			h.Write(buf)
			if _, err := c.Write(buf); err != nil {
				break
			}
		}
		c.Close() // right after the last write
		downSum <- fmt.Sprintf("%d:%x", vsockBytes, h.Sum(nil))
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 5*bootDeadline)
	defer cancel()
	cmd := vmmCommand(ctx, a, pyArgs(t, a, pyVM{extra: []string{"--vsock", "cid=3,socket=" + sock}}, fmt.Sprintf(`
N = %d
l = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
l.bind((socket.VMADDR_CID_ANY, 6000))
l.listen(1)
report('LISTENING', 1)
c, _ = l.accept()
c.sendall(c.recv(64).upper())
c.close()
s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
s.connect((2, 5000))
h, block, sent = hashlib.sha256(), os.urandom(1 << 20), 0
while sent < N:
    block = hashlib.sha512(block).digest() * 16384
    h.update(block)
    s.sendall(block)
    sent += len(block)
s.close()
report('UP', '%%d:%%s' %% (sent, h.hexdigest()))
s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
s.connect((2, 5001))
h, n = hashlib.sha256(), 0
while True:
    b = s.recv(1 << 20)
    if not b:
        break
    h.update(b)
    n += len(b)
s.close()
report('DOWN', '%%d:%%s' %% (n, h.hexdigest()))`, vsockBytes))...)
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for !strings.Contains(out.String(), "HUSK_LISTENING=1") {
		if ctx.Err() != nil || strings.Contains(out.String(), "HUSK_FAIL") {
			cmd.Process.Kill()
			t.Fatalf("guest never listened:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "CONNECT 6000\n")
	br := bufio.NewReader(c)
	if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "OK ") {
		t.Fatalf("CONNECT answered %q, %v", line, err)
	}
	c.Write([]byte("ping"))
	if b, _ := io.ReadAll(br); string(b) != "PING" {
		t.Fatalf("round trip got %q", b)
	}
	c.Close()
	err = cmd.Wait()
	got := report(out.String())
	if err != nil || got["HUSK_OK"] != "1" {
		t.Fatalf("guest program failed: %v\n%s", err, out.String())
	}
	if u := <-upSum; got["HUSK_UP"] != u {
		t.Errorf("guest to host: guest sent %s, host received %s", got["HUSK_UP"], u)
	}
	if d := <-downSum; got["HUSK_DOWN"] != d {
		t.Errorf("host to guest: host sent %s, guest received %s", d, got["HUSK_DOWN"])
	}
	t.Logf("%d MiB each way in %v", vsockBytes>>20, time.Since(start).Round(time.Millisecond))
}
