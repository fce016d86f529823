//go:build linux

package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseEntry(t *testing.T) {
	for _, tc := range []struct {
		line string
		want entry
		ok   bool
	}{
		{"DEVBENCH_BLK_READ_MBPS=123.45", entry{"BLK_READ_MBPS", "123.45"}, true},
		{"[    1.234] x DEVBENCH_READY=1 trailing", entry{"READY", "1"}, true},
		{"DEVBENCH_BLK_LIMITS=max_segments:254,max_sectors_kb:1280", entry{"BLK_LIMITS", "max_segments:254,max_sectors_kb:1280"}, true},
		{"blk", entry{}, false},
		{"devbench_ready=1", entry{}, false},
	} {
		got, ok := parseEntry(tc.line)
		if got != tc.want || ok != tc.ok {
			t.Errorf("parseEntry(%q) = %v, %v; want %v, %v", tc.line, got, ok, tc.want, tc.ok)
		}
	}
}

func TestScript(t *testing.T) {
	b, err := script(params{ImageBytes: 256 << 20, Block: 1 << 20, Msg: 64})
	if err != nil {
		t.Fatal(err)
	}
	if len(b)%4096 != 0 {
		t.Errorf("script is %d bytes, not whole 4 KiB blocks", len(b))
	}
	if bytes.IndexByte(b, 0) >= 0 {
		t.Error("script holds a NUL byte; Python rejects source with NULs")
	}
	first, _, _ := bytes.Cut(b, []byte("\n"))
	for _, want := range []string{`P = {`, `"image_bytes":268435456`, `"block":1048576`, `"data_serial":"devbench-data"`, `"port_echo":5000`} {
		if !bytes.Contains(first, []byte(want)) {
			t.Errorf("parameter line %s lacks %s", first, want)
		}
	}
	if !bytes.Contains(b, []byte("def vsock_rtt")) {
		t.Error("script lacks the guest program")
	}
}

// TestCmdlineInitArgs: the kernel hands init only the parameters it does
// not know that have neither '=' nor '.' (there is no "--", see
// DefaultCmdline), so init's arguments must have neither.
func TestCmdlineInitArgs(t *testing.T) {
	_, args, ok := strings.Cut(DefaultCmdline, "init=/usr/bin/python3 ")
	if !ok {
		t.Fatalf("no init=/usr/bin/python3 in %q", DefaultCmdline)
	}
	if strings.Contains(DefaultCmdline, " -- ") {
		t.Error(`the command line has "--": QEMU's appended devices would become init's arguments`)
	}
	if strings.ContainsAny(args, "=.") {
		t.Errorf("init's arguments %q hold '=' or '.': the kernel would not pass them to init", args)
	}
	if !strings.HasPrefix(args, `-c "`) || !strings.HasSuffix(args, `"`) {
		t.Errorf("init's arguments %q are not -c and one quoted program", args)
	}
}

func TestArgv(t *testing.T) {
	c := config{vmm: "/b/husk-vmm", kernel: "/b/vmlinux", qemu: "/usr/bin/qemu-system-x86_64",
		machine: DefaultMachine, cmdline: DefaultCmdline, cpus: 1, mem: 256}
	d := disks{root: "/b/root.ext4", script: "/t/guest.py.img", data: "/t/data.img"}
	husk := strings.Join(c.huskArgv(d, "/t/v.sock"), " ")
	for _, want := range []string{
		"--disk /b/root.ext4,ro,serial=devbench-root --disk /t/guest.py.img,ro,serial=devbench-script --disk /t/data.img,ro,serial=devbench-data",
		"--vsock cid=3,socket=/t/v.sock", "--mem 256", "--cpus 1",
	} {
		if !strings.Contains(husk, want) {
			t.Errorf("husk argv %q lacks %q", husk, want)
		}
	}
	qemu := strings.Join(c.qemuCmd(c.qemuArgs(d)...), " ")
	for _, want := range []string{
		"-drive id=root,file=/b/root.ext4,format=raw,if=none,readonly=on,cache=writeback,aio=threads -device virtio-blk-device,drive=root,serial=devbench-root",
		"-drive id=data,file=/t/data.img,format=raw,if=none,readonly=on,cache=writeback,aio=threads -device virtio-blk-device,drive=data,serial=devbench-data",
		"-device vhost-vsock-device,guest-cid=3", "-m 256", "-smp 1",
	} {
		if !strings.Contains(qemu, want) {
			t.Errorf("qemu argv %q lacks %q", qemu, want)
		}
	}
	// The disks must be in the same guest order on both: vda, vdb, vdc.
	if strings.Index(qemu, "drive=root") > strings.Index(qemu, "drive=script") || strings.Index(qemu, "drive=script") > strings.Index(qemu, "drive=data") {
		t.Errorf("qemu disks out of order: %q", qemu)
	}
}

func TestWriteImage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data.img")
	const size, block = 1 << 20, 64 << 10
	d, err := writeImage(path, size, block)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != size {
		t.Fatalf("image is %d bytes, want %d", len(b), size)
	}
	digest := func(p []byte) string { h := sha256.Sum256(p); return hex.EncodeToString(h[:]) }
	if d.first != digest(b[:block]) || d.last != digest(b[size-block:]) {
		t.Error("digests do not match the image's first and last blocks")
	}
	if err := d.check(map[string]string{"BLK_SHA256_FIRST": d.first, "BLK_SHA256_LAST": d.last}); err != nil {
		t.Error(err)
	}
	if err := d.check(map[string]string{"BLK_SHA256_FIRST": d.last, "BLK_SHA256_LAST": d.last}); err == nil {
		t.Error("a wrong first block passed the check")
	}
	r, n, err := readImage(path, block)
	if err != nil || r != d || n != size {
		t.Errorf("readImage = %+v, %d, %v; want %+v, %d", r, n, err, d, size)
	}
	if _, _, err := readImage(path, 3<<20); err == nil {
		t.Error("readImage of an image that is not whole blocks: no error")
	}
}

// pipeConn is one end of a connected Unix socket pair: a real socket, so
// that closing one side is seen as end of file on the other.
func pipeConn(t *testing.T) (server, client net.Conn) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	client, err = net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	if server, err = l.Accept(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

func length(n uint64) []byte { return binary.LittleEndian.AppendUint64(nil, n) }

func TestServers(t *testing.T) {
	t.Run("echo", func(t *testing.T) {
		s, c := pipeConn(t)
		done := make(chan error, 1)
		go func() { done <- serveEcho(s) }()
		msg := bytes.Repeat([]byte{0xa5}, 64)
		for range 3 {
			c.Write(msg)
			back := make([]byte, len(msg))
			if _, err := io.ReadFull(c, back); err != nil || !bytes.Equal(back, msg) {
				t.Fatalf("echo: %v, %x", err, back)
			}
		}
		c.Close()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
	t.Run("sink", func(t *testing.T) {
		s, c := pipeConn(t)
		done := make(chan error, 1)
		go func() { done <- serveSink(s) }()
		const n = 3<<20 + 5
		c.Write(length(n))
		c.Write(make([]byte, n))
		ack := make([]byte, 8)
		if _, err := io.ReadFull(c, ack); err != nil || binary.LittleEndian.Uint64(ack) != n {
			t.Fatalf("ack %x, %v; want %d", ack, err, n)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
	t.Run("source", func(t *testing.T) {
		s, c := pipeConn(t)
		done := make(chan error, 1)
		go func() { done <- serveSource(s) }()
		const n = 2<<20 + 7
		c.Write(length(n))
		got, err := io.ReadAll(io.LimitReader(c, n))
		if err != nil || len(got) != n {
			t.Fatalf("read %d bytes, %v; want %d", len(got), err, n)
		}
		c.Close() // the server waits for this before it closes
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
	t.Run("bad length", func(t *testing.T) {
		s, c := pipeConn(t)
		c.Write(length(maxTransfer + 1))
		if err := serveSink(s); err == nil {
			t.Fatal("a length over maxTransfer was accepted")
		}
	})
}

// fakeVMM is a stand-in for a VMM and its guest: it reports READY, then
// answers every command line with DEVBENCH_ECHO=<line>, and fails on "die".
const fakeVMM = `echo boot noise; echo DEVBENCH_READY=1
while read -r cmd; do
	case "$cmd" in
	die) echo Traceback; echo DEVBENCH_FAIL=1 ;;
	quit) exit 3 ;;
	*) echo "DEVBENCH_EXTRA=x"; echo "DEVBENCH_ECHO=$cmd" ;;
	esac
done`

func TestVM(t *testing.T) {
	start := func(t *testing.T) *vm {
		v, err := startVM(vmSpec{Name: "fake", Argv: []string{"/bin/sh", "-c", fakeVMM}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { v.stop() })
		if _, err := v.await("READY", 10*time.Second); err != nil {
			t.Fatal(err)
		}
		return v
	}
	t.Run("commands", func(t *testing.T) {
		v := start(t)
		for _, cmd := range []string{"blk", "up 1024"} {
			got, err := v.do(cmd, "ECHO", 10*time.Second)
			if err != nil || got["ECHO"] != strings.Fields(cmd)[0] && got["ECHO"] != cmd || got["EXTRA"] != "x" {
				t.Fatalf("do(%q) = %v, %v", cmd, got, err)
			}
		}
		if err := v.stop(); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(v.console.Bytes()), "boot noise") {
			t.Errorf("console %q lacks the VMM's output", v.console.Bytes())
		}
	})
	t.Run("guest failure", func(t *testing.T) {
		v := start(t)
		if _, err := v.do("die", "ECHO", 10*time.Second); err == nil || !strings.Contains(err.Error(), "failed") {
			t.Fatalf("do(die) = %v, want a guest failure", err)
		}
	})
	t.Run("exit", func(t *testing.T) {
		v := start(t)
		if _, err := v.do("quit", "ECHO", 10*time.Second); err == nil || !strings.Contains(err.Error(), "exit status 3") {
			t.Fatalf("do(quit) = %v, want the exit status", err)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		v := start(t)
		if _, err := v.await("NEVER", 50*time.Millisecond); err == nil {
			t.Fatal("await of a key that never comes returned no error")
		}
	})
}

func TestStats(t *testing.T) {
	s := summarize([]float64{5, 1, 3, 2})
	if s.N != 4 || s.Min != 1 || s.Max != 5 || s.Median != 2.5 {
		t.Errorf("summarize = %+v", s)
	}
	if summarize(nil).N != 0 {
		t.Error("summarize(nil) is not empty")
	}
	// 1 MB at 10 MB/s and 1 MB at 40 MB/s: 2 MB in 0.125 s.
	if h := harmonic(10, 40); math.Abs(h-16) > 1e-9 {
		t.Errorf("harmonic(10, 40) = %v, want 16", h)
	}
	if harmonic(10, 0) != 0 {
		t.Error("harmonic with a zero rate is not 0")
	}
	if m := mean([]float64{1, 2, 6}); m != 3 {
		t.Errorf("mean = %v", m)
	}
}

func TestResults(t *testing.T) {
	r := newResults()
	r.add("blk", map[string][]float64{"husk": {110, 90}, "qemu": {100, 100}})
	r.add("blk", map[string][]float64{"husk": {120, 120}, "qemu": {100, 100}})
	r.add("up", map[string][]float64{"husk": {10}, "qemu": {20}})
	r.add("down", map[string][]float64{"husk": {40}, "qemu": {20}})
	if got := r.get("blk", "husk"); !slices.Equal(got, []float64{110, 90, 120, 120}) {
		t.Errorf("husk blk = %v", got)
	}
	if !slices.Equal(r.blkRatios, []float64{1, 1.2}) {
		t.Errorf("per-round ratios = %v, want [1 1.2]", r.blkRatios)
	}
	if v := r.vsock("husk"); len(v) != 1 || math.Abs(v[0]-16) > 1e-9 {
		t.Errorf("husk vsock = %v, want [16]", v)
	}
}

func TestParseSmaps(t *testing.T) {
	smaps := `55d0c0000000-55d0c0400000 r-xp 00000000 fd:01 1234                       /artifacts/bench/husk-vmm
Size:               4096 kB
Rss:                2980 kB
VmFlags: rd ex mr mw me dw
7f0000000000-7f0010000000 r--s 00000000 00:20 77                         /tmp/devbench/data.img
Size:             262144 kB
Rss:                8192 kB
7f0020000000-7f0030000000 rw-p 00000000 00:00 0 
Rss:               14196 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Rss:                  12 kB
`
	m, err := parseSmaps([]byte(smaps), "/tmp/devbench/data.img")
	if err != nil {
		t.Fatal(err)
	}
	if m.rss != (2980+8192+14196+12)<<10 || m.image != 8192<<10 {
		t.Errorf("parseSmaps = %+v", m)
	}
	if _, err := parseSmaps([]byte("7f0000000000-7f0010000000 r--s 00000000 00:20 77 /x\nRss: x kB\n"), "/x"); err == nil {
		t.Error("a bad Rss line: no error")
	}
}

// readMemory finds a file this process maps, and counts its pages.
func TestReadMemory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data.img")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := syscall.Mmap(int(f.Fd()), 0, 1<<20, syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(b)
	sum := 0
	for i := 0; i < 256<<10; i += 4096 { // the first 256 KiB
		sum += int(b[i])
	}
	m, err := readMemory(os.Getpid(), path)
	if err != nil {
		t.Fatal(err)
	}
	if m.image < 256<<10 || m.image > 1<<20 || m.rss < m.image {
		t.Errorf("readMemory = %+v, want 256 KiB-1 MiB of the image (%d)", m, sum)
	}
}
