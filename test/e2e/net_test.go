package e2e

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The net tests give the Python guest a virtio-net NIC on a TAP interface
// of the test host and talk TCP to it over the TAP. The test host has no
// shell and no iproute2: the host side is configured with ioctls.

// netEchoBytes is how much the guest sends through the host's TCP echo;
// the same comes back.
const netEchoBytes = 16 << 20

// netDeadline bounds TestNet, boot included. An idle test host takes under
// a minute; the margin is for a machine shared with other test hosts.
const netDeadline = 10 * time.Minute

// The point-to-point network between the test host and the guest.
var (
	netHostIP  = net.IPv4(10, 77, 0, 1).To4()
	netGuestIP = net.IPv4(10, 77, 0, 2).To4()
	netMask    = net.IPv4Mask(255, 255, 255, 0)
)

// hostTAP creates the persistent TAP interface name with the host's
// address, link up, for husk-vmm to attach to, and deletes it when the test
// ends.
func hostTAP(t *testing.T, name string, addr net.IP, mask net.IPMask) {
	t.Helper()
	tunIoctl := func(persist int) error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return err
		}
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			return fmt.Errorf("TUNSETIFF %s: %w", name, err)
		}
		if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, persist); err != nil {
			return fmt.Errorf("TUNSETPERSIST %s %d: %w", name, persist, err)
		}
		return nil
	}
	if err := tunIoctl(1); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tunIoctl(0); err != nil {
			t.Errorf("deleting TAP %s: %v", name, err)
		}
	})
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(s)
	ioctl := func(what string, req uint, ifr *unix.Ifreq) {
		t.Helper()
		if err := unix.IoctlIfreq(s, req, ifr); err != nil {
			t.Fatalf("%s %s: %v", what, name, err)
		}
	}
	newIfreq := func() *unix.Ifreq {
		t.Helper()
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			t.Fatal(err)
		}
		return ifr
	}
	ifr := newIfreq()
	if err := ifr.SetInet4Addr(addr.To4()); err != nil {
		t.Fatal(err)
	}
	ioctl("SIOCSIFADDR", unix.SIOCSIFADDR, ifr)
	ifr = newIfreq()
	if err := ifr.SetInet4Addr(mask); err != nil {
		t.Fatal(err)
	}
	ioctl("SIOCSIFNETMASK", unix.SIOCSIFNETMASK, ifr)
	ifr = newIfreq()
	ioctl("SIOCGIFFLAGS", unix.SIOCGIFFLAGS, ifr)
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	ioctl("SIOCSIFFLAGS", unix.SIOCSIFFLAGS, ifr)
}

// TestNet: the guest sees the configured MAC on eth0 and a random locally
// administered one on eth1 (whose TAP husk-vmm creates), and a
// checksummed TCP echo of netEchoBytes runs between the guest and a server
// on the test host, over the first TAP.
func TestNet(t *testing.T) {
	a := need(t)
	const tap0, tap1, mac0 = "husknet0", "husknet1", "02:68:75:73:6b:01"
	hostTAP(t, tap0, netHostIP, netMask)

	ctx, cancel := context.WithTimeout(context.Background(), netDeadline)
	defer cancel()
	ln, err := net.Listen("tcp", net.JoinHostPort(netHostIP.String(), "7000"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type echoed struct {
		sum string
		dur time.Duration
		err error
	}
	echo := make(chan echoed, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			echo <- echoed{err: err}
			return
		}
		defer c.Close()
		start := time.Now()
		if dl, ok := ctx.Deadline(); ok {
			c.SetDeadline(dl)
		}
		// Echo everything and hash it on the way, until the guest shuts
		// down its sending side.
		h := sha256.New()
		n, err := io.Copy(io.MultiWriter(c, h), c)
		c.(*net.TCPConn).CloseWrite()
		echo <- echoed{fmt.Sprintf("%d:%x", n, h.Sum(nil)), time.Since(start), err}
	}()

	cmdline := baseCmdline + fmt.Sprintf(" ip=%s:::%s::eth0:off", netGuestIP, net.IP(netMask)) +
		strings.TrimPrefix(pyCmdline, baseCmdline)
	args := pyArgs(t, a, pyVM{extra: []string{
		"--net", "tap=" + tap0 + ",mac=" + mac0,
		"--net", "tap=" + tap1,
		"--cmdline", cmdline,
	}}, fmt.Sprintf(`
import threading
report('MAC0', open('/sys/class/net/eth0/address').read().strip())
report('MAC1', open('/sys/class/net/eth1/address').read().strip())
N = %d
s = socket.create_connection(('%s', 7000), timeout=120)
got, rh, err = [0], hashlib.sha256(), []
def rx():
    try:
        while True:
            b = s.recv(1 << 20)
            if not b:
                break
            rh.update(b)
            got[0] += len(b)
    except BaseException as e:
        err.append(e)
t = threading.Thread(target=rx)
t.start()
sh, sent = hashlib.sha256(), 0
while sent < N:
    b = os.urandom(min(1 << 20, N - sent))
    sh.update(b)
    s.sendall(b)
    sent += len(b)
    if sent %% (4 << 20) == 0:
        report('PROGRESS', '%%d sent, %%d echoed' %% (sent, got[0]))  # tells a stall from a slow machine
s.shutdown(socket.SHUT_WR)
t.join()
s.close()
if err:
    raise err[0]
report('SENT', '%%d:%%s' %% (sent, sh.hexdigest()))
report('RECV', '%%d:%%s' %% (got[0], rh.hexdigest()))`, netEchoBytes, netHostIP))

	cmd := vmmCommand(ctx, a, args...)
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err = cmd.Run()
	got := report(out.String())
	if ctx.Err() != nil || err != nil || got["HUSK_OK"] != "1" {
		t.Fatalf("guest program failed: %v (context: %v)\n%s", err, ctx.Err(), out.String())
	}
	if got["HUSK_MAC0"] != mac0 {
		t.Errorf("eth0 has MAC %q, want %q", got["HUSK_MAC0"], mac0)
	}
	if mac1, err := net.ParseMAC(got["HUSK_MAC1"]); err != nil || len(mac1) != 6 || mac1[0]&3 != 2 {
		t.Errorf("eth1 has MAC %q, want a random locally administered unicast one", got["HUSK_MAC1"])
	}
	var e echoed
	select {
	case e = <-echo:
	case <-ctx.Done():
		t.Fatal("the echo server never finished")
	}
	if e.err != nil {
		t.Fatalf("echo server: %v", e.err)
	}
	if got["HUSK_SENT"] != e.sum || got["HUSK_RECV"] != e.sum {
		t.Fatalf("guest sent %s, host echoed %s, guest received %s", got["HUSK_SENT"], e.sum, got["HUSK_RECV"])
	}
	if !strings.HasPrefix(e.sum, strconv.Itoa(netEchoBytes)+":") {
		t.Fatalf("echoed %s, want %d bytes", e.sum, netEchoBytes)
	}
	// The VMM's own counters: no malformed chain, and frames longer than
	// the MTU on average both ways, which only TCP segmentation offload
	// (the guest's TSO out, the TAP's GSO in) makes.
	m := regexp.MustCompile(`net_rx_frames=(\d+) net_rx_bytes=(\d+) net_rx_dropped=(\d+) net_tx_frames=(\d+) net_tx_bytes=(\d+) net_tx_errors=(\d+)`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("husk-vmm did not report its net counters:\n%s", out.String())
	}
	n := make([]int, len(m))
	for i := 1; i < len(m); i++ {
		n[i], _ = strconv.Atoi(m[i])
	}
	rxFrames, rxBytes, rxDropped, txFrames, txBytes, txErrors := n[1], n[2], n[3], n[4], n[5], n[6]
	if rxBytes < netEchoBytes || txBytes < netEchoBytes {
		t.Errorf("husk-vmm moved %d bytes in and %d out for a %d-byte echo", rxBytes, txBytes, netEchoBytes)
	}
	if txErrors != 0 {
		t.Errorf("husk-vmm rejected %d of the guest's frames", txErrors)
	}
	if rxBytes <= 1514*rxFrames || txBytes <= 1514*txFrames {
		t.Errorf("average frame %d bytes in, %d out: no segmentation offload", rxBytes/max(rxFrames, 1), txBytes/max(txFrames, 1))
	}
	t.Logf("%d MiB echoed in %v (boot and all: %v); frames in %d (avg %d B, %d dropped), out %d (avg %d B)",
		netEchoBytes>>20, e.dur.Round(time.Millisecond), time.Since(start).Round(time.Millisecond),
		rxFrames, rxBytes/max(rxFrames, 1), rxDropped, txFrames, txBytes/max(txFrames, 1))
}

// TestNetFlagErrors: bad --net values fail before anything starts, with
// the reason.
func TestNetFlagErrors(t *testing.T) {
	a := need(t)
	for _, tc := range []struct {
		flags []string
		want  string
	}{
		{[]string{"mac=02:00:00:00:00:01"}, "net needs tap=NAME"},
		{[]string{"tap=x,mac=zz"}, `net mac "zz"`},
		{[]string{"tap=x,speed=10"}, `net option "speed=10"`},
		{[]string{"tap=a/b"}, "contains '/'"},
		{[]string{"tap=0123456789abcdef"}, "longer than 15 bytes"},
		{[]string{"tap=x,mac=01:00:5e:00:00:01"}, "multicast"},
		{[]string{"tap=x", "tap=x"}, "net 1: TAP x is already net 0's"},
		{[]string{"tap=x,mac=02:00:00:00:00:01", "tap=y,mac=02:00:00:00:00:01"}, "net 1: MAC 02:00:00:00:00:01 is already net 0's"},
	} {
		args := []string{"--kernel", a.vmlinux}
		for _, f := range tc.flags {
			args = append(args, "--net", f)
		}
		r := vmm(t, a, args...)
		if r.err == nil || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("--net %q: err %v, stderr %q; want %q", tc.flags, r.err, r.stderr, tc.want)
		}
	}
}
