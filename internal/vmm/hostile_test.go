package vmm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/huskvm/husk/internal/arch/x86"
	"github.com/huskvm/husk/internal/testutil/kvmtest"
	"github.com/huskvm/husk/internal/virtio"
	"github.com/huskvm/husk/internal/virtio/blk"
	"github.com/huskvm/husk/internal/virtio/virtiotest"
)

// The hostile-queue tests run a guest that programs virtio devices with
// crafted rings (see hostile_guest_test.go) on real KVM, through the VMM's
// normal wiring: MMIO exits, ioeventfd doorbells, device workers. For every
// case the device must refuse (return the chain unused, fail the request
// with an error status, or set DEVICE_NEEDS_RESET), log it, and go on:
// another device serves meanwhile, and after a reset the attacked device
// serves a valid request. The VM then resets itself and Run returns nil.

// The hostile VM's devices, in the order setupVirtio places them: the disk,
// vsock, rng.
var (
	blkDev   = mmioDev{"blk", virtio.DeviceBlock, x86.VirtioMMIOBase}
	vsockDev = mmioDev{"vsock", virtio.DeviceVsock, x86.VirtioMMIOBase + x86.VirtioMMIOSize}
	rngDev   = mmioDev{"rng", virtio.DeviceEntropy, x86.VirtioMMIOBase + 2*x86.VirtioMMIOSize}
)

const (
	hostileMemMiB = 64
	ramEnd        = hostileMemMiB << 20
	outsideRAM    = 0x4000_0000 // 1 GiB: no RAM, no device
	diskSectors   = 128
	hostPort      = 5000 // host vsock port with a listener
	guestCID      = 3
	ringSize      = 8
)

// sectorWord is the first word of each sector of the test disk.
func sectorWord(s uint64) uint32 { return 0x5ec7_0000 | uint32(s) }

// hostileCase is one attack on one device.
type hostileCase struct {
	name   string
	dev    mmioDev
	attack func(g *guest, d mmioDev)
	// log is text one of the VMM's log records must contain.
	log string
	// repeats, if more than 1, is how many times the attack triggers that
	// record at once: the log must hold fewer (guest-triggerable records
	// are rate-limited).
	repeats int
}

// TestHostileQueues runs each case in a VM of its own, then checks that no
// descriptor or goroutine outlived the VMs.
func TestHostileQueues(t *testing.T) {
	kvmtest.RequireKVM(t)
	fds, goroutines := countDir(t, "/proc/self/fd"), runtime.NumGoroutine()

	var cases []hostileCase
	for _, d := range []mmioDev{rngDev, blkDev} {
		cases = append(cases,
			hostileCase{"descriptor loop", d, descLoop, "descriptor chain loops", loopChains},
			hostileCase{"avail index far ahead", d, availFarAhead, "invalid available index", 0},
			hostileCase{"head out of range", d, headOutOfRange, "chain head out of range", 0},
			hostileCase{"ring outside RAM", d, badQueue(queueRegs{num: ringSize, desc: outsideRAM, avail: outsideRAM + 0x1000, used: outsideRAM + 0x2000}), "ring outside guest memory", 0},
		)
	}
	cases = append(cases,
		hostileCase{"chain longer than the queue", rngDev, badChain(uint32(virtio.FeatureIndirectDesc), func(g *guest, r *vring) {
			// Seven direct descriptors, then an indirect table of eight: 15
			// buffers in a queue of 8.
			for i := range ringSize - 1 {
				g.desc(r.desc, i, g.buffer(16, 0), 16, fWrite|fNext, uint16(i+1))
			}
			tab := g.table(ringSize)
			for i := range ringSize {
				g.desc(tab, i, g.buffer(16, 0), 16, fWrite|fNext, uint16(i+1))
			}
			g.desc(tab, ringSize-1, g.buffer(16, 0), 16, fWrite, 0)
			g.desc(r.desc, ringSize-1, tab, 16*ringSize, fIndirect, 0)
		}), "descriptor chain longer than the queue size", 0},
		hostileCase{"next index out of range", rngDev, badChain(0, func(g *guest, r *vring) {
			g.desc(r.desc, 0, g.buffer(16, 0), 16, fWrite|fNext, 200)
		}), "descriptor index out of range", 0},
		hostileCase{"overlapping buffers past the byte cap", rngDev, badChain(0, func(g *guest, r *vring) {
			// Eight views of the same 16 MiB of RAM: 128 MiB of buffers in
			// a 64 MiB guest.
			for i := range ringSize {
				g.desc(r.desc, i, 0, 16<<20, fWrite|fNext, uint16(i+1))
			}
			g.desc(r.desc, ringSize-1, 0, 16<<20, fWrite, 0)
		}), "descriptor chain buffers exceed the byte limit", 0},
		hostileCase{"indirect table outside RAM", rngDev, badChain(uint32(virtio.FeatureIndirectDesc), func(g *guest, r *vring) {
			g.desc(r.desc, 0, outsideRAM, 32, fIndirect, 0)
		}), "descriptor buffer outside guest memory", 0},
		hostileCase{"nested indirect table", rngDev, badChain(uint32(virtio.FeatureIndirectDesc), func(g *guest, r *vring) {
			inner, outer := g.table(1), g.table(1)
			g.desc(inner, 0, g.buffer(16, 0), 16, fWrite, 0)
			g.desc(outer, 0, inner, 16, fIndirect, 0)
			g.desc(r.desc, 0, outer, 16, fIndirect, 0)
		}), "indirect descriptor inside an indirect table", 0},
		hostileCase{"indirect without the feature", rngDev, badChain(0, func(g *guest, r *vring) {
			tab := g.table(1)
			g.desc(tab, 0, g.buffer(16, 0), 16, fWrite, 0)
			g.desc(r.desc, 0, tab, 16, fIndirect, 0)
		}), "indirect descriptor without VIRTIO_F_INDIRECT_DESC", 0},
		hostileCase{"buffer wraps the address space", rngDev, badChain(0, func(g *guest, r *vring) {
			g.desc(r.desc, 0, 0xffff_ffff_ffff_f000, 0x2000, fWrite, 0)
		}), "descriptor buffer outside guest memory", 0},
		hostileCase{"buffer runs past the end of RAM", rngDev, badChain(0, func(g *guest, r *vring) {
			g.desc(r.desc, 0, ramEnd-8, 16, fWrite, 0)
		}), "descriptor buffer outside guest memory", 0},
		hostileCase{"queue size not a power of two", rngDev, badQueue(queueRegs{num: 3}), "invalid queue size: 3", 0},
		hostileCase{"queue size zero", rngDev, badQueue(queueRegs{num: 0}), "size 0, maximum", 0},
		hostileCase{"queue size above the maximum", rngDev, badQueue(queueRegs{num: 512}), "size 512, maximum", 0},
		hostileCase{"misaligned ring", rngDev, func(g *guest, d mmioDev) {
			r := g.ring(ringSize)
			q := regsOf(r)
			q.desc += 8
			badQueue(q)(g, d)
		}, "misaligned ring address", 0},
		hostileCase{"notify unconfigured queues", rngDev, notifyUnconfigured, "queue_ready_no_queue", 0},
		hostileCase{"sector past the capacity", blkDev, blkPastCapacity, "virtio_blk_request_failed", 0},
		hostileCase{"request without a status byte", blkDev, badChain(0, func(g *guest, r *vring) {
			g.desc(r.desc, 0, blkHeader(g, blk.TypeIn, 0), 16, 0, 0)
		}), "no device-writable status byte", 0},
		hostileCase{"readable after writable", blkDev, badChain(0, func(g *guest, r *vring) {
			g.desc(r.desc, 0, blkHeader(g, blk.TypeIn, 0), 16, fNext, 1)
			g.desc(r.desc, 1, g.buffer(512, 0), 512, fWrite|fNext, 2)
			g.desc(r.desc, 2, g.buffer(1, 0xff), 1, 0, 0)
		}), "device-readable descriptor after a device-writable one", 0},
		hostileCase{"tx descriptor loop", vsockDev, vsockTXLoop, "descriptor chain loops", 0},
		hostileCase{"packet longer than its chain", vsockDev, vsockShortPacket, "payload length exceeds", 0},
		hostileCase{"rx avail index far ahead", vsockDev, vsockRXFarAhead, "invalid available index", 0},
		hostileCase{"event queue left unconfigured", vsockDev, func(g *guest, d mmioDev) {
			g.start(d, 0, regsOf(g.ring(ringSize)), regsOf(g.ring(ringSize)))
			g.checkStatus(d, statusBroken)
		}, "queue 2 not ready", 0},
	)

	for _, tc := range cases {
		t.Run(tc.dev.name+" "+tc.name, func(t *testing.T) {
			g := newGuest()
			for _, d := range []mmioDev{blkDev, vsockDev, rngDev} {
				g.check(d.name+".device_id", d.reg(virtiotest.RegDeviceID), 0xffffffff, uint32(d.id))
			}
			tc.attack(g, tc.dev)
			// Another device serves while the attacked one awaits its reset.
			other := rngDev
			if tc.dev == rngDev {
				other = blkDev
			}
			serve(g, other, 1)
			// A reset, a proper start, and the attacked device serves again.
			serve(g, tc.dev, 2)
			log := runHostile(t, g)
			if n := strings.Count(log, tc.log); n == 0 {
				t.Errorf("the VMM's log lacks %q:\n%s", tc.log, log)
			} else if tc.repeats > 1 && n >= tc.repeats {
				t.Errorf("%d log records of %q for %d occurrences: not rate-limited\n%s", n, tc.log, tc.repeats, log)
			}
		})
	}

	// Every VM's devices, workers and sockets are gone.
	if got := countDir(t, "/proc/self/fd"); got != fds {
		t.Errorf("open fds %d after the hostile VMs, %d before", got, fds)
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > goroutines && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // goroutines exit just after the Close that ends them
	}
	if got := runtime.NumGoroutine(); got > goroutines {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines after the hostile VMs, %d before:\n%s", got, goroutines, buf[:runtime.Stack(buf, true)])
	}
}

// serve has the guest reset and start d with fresh queues and check that it
// serves a valid request; n tells the requests of one guest apart.
func serve(g *guest, d mmioDev, n int) {
	switch d {
	case rngDev:
		r := g.ring(ringSize)
		g.desc(r.desc, 0, g.buffer(16, 0), 16, fWrite, 0)
		g.start(d, 0, regsOf(r))
		g.publish(r, 0)
		g.notify(d, 0)
		g.waitUsed("rng", r, 1, 16)
	case blkDev:
		r := g.ring(ringSize)
		sector := uint64(n)
		data, status := g.buffer(512, 0), g.buffer(1, 0xff)
		g.desc(r.desc, 0, blkHeader(g, blk.TypeIn, sector), 16, fNext, 1)
		g.desc(r.desc, 1, data, 512, fWrite|fNext, 2)
		g.desc(r.desc, 2, status, 1, fWrite, 0)
		g.start(d, 0, regsOf(r))
		g.publish(r, 0)
		g.notify(d, 0)
		g.waitUsed("blk", r, 1, 513)
		g.check("blk.request_status", status, 0xff, blk.StatusOK)
		g.check("blk.data", data, 0xffffffff, sectorWord(sector))
	case vsockDev:
		rx, tx, ev := g.ring(ringSize), g.ring(ringSize), g.ring(ringSize)
		pkt := g.buffer(64, 0)
		g.desc(rx.desc, 0, pkt, 64, fWrite, 0)
		g.desc(tx.desc, 0, vsockPacket(g, uint32(1000+n), 0), 44, 0, 0)
		g.start(d, 0, regsOf(rx), regsOf(tx), regsOf(ev))
		g.publish(rx, 0)
		g.notify(d, 0)
		g.publish(tx, 0)
		g.notify(d, 1)
		g.waitUsed("vsock.tx", tx, 1, 0)
		g.waitUsed("vsock.rx", rx, 1, 44)
		g.check("vsock.rx.op", pkt+28, 0xffffffff, 2<<16|1) // type STREAM, op RESPONSE
	}
	g.checkStatus(d, statusLive)
}

// badChain returns an attack that lays out a malformed chain at head 0 of
// d's request queue (with lay) and checks that the device returns it with
// nothing written and stays live.
func badChain(feat0 uint32, lay func(g *guest, r *vring)) func(*guest, mmioDev) {
	return func(g *guest, d mmioDev) {
		r := g.ring(ringSize)
		lay(g, r)
		g.start(d, feat0, regsOf(r))
		g.publish(r, 0)
		g.notify(d, 0)
		g.waitUsed(d.name, r, 1, 0)
		g.checkStatus(d, statusLive)
	}
}

// loopChains is how many looping chains descLoop makes available at once.
const loopChains = 4

// descLoop makes loopChains chains available, each the loop A → B → A: each
// comes back unused and the queue stays live.
func descLoop(g *guest, d mmioDev) {
	r := g.ring(ringSize)
	g.desc(r.desc, 0, g.buffer(16, 0), 16, fWrite|fNext, 1)
	g.desc(r.desc, 1, g.buffer(16, 0), 16, fWrite|fNext, 0)
	g.start(d, 0, regsOf(r))
	g.publish(r, make([]uint16, loopChains)...)
	g.notify(d, 0)
	g.waitUsed(d.name, r, loopChains, 0)
	g.checkStatus(d, statusLive)
}

// availFarAhead moves the available index more than the queue size ahead:
// the queue is corrupt, the device needs a reset.
func availFarAhead(g *guest, d mmioDev) {
	r := g.ring(ringSize)
	g.desc(r.desc, 0, g.buffer(16, 0), 16, fWrite, 0)
	g.start(d, 0, regsOf(r))
	g.write(r.avail, 0x100<<16)
	g.notify(d, 0)
	g.waitNeedsReset(d)
	g.checkStatus(d, statusBroken)
	g.check(d.name+".used", r.usedIdxAddr(), 0xffff, 0)
}

// headOutOfRange makes a chain available whose head is past the table.
func headOutOfRange(g *guest, d mmioDev) {
	r := g.ring(ringSize)
	g.start(d, 0, regsOf(r))
	g.publish(r, 200)
	g.notify(d, 0)
	g.waitNeedsReset(d)
	g.checkStatus(d, statusBroken)
	g.check(d.name+".used", r.usedIdxAddr(), 0xffff, 0)
}

// badQueue returns an attack that starts d with queue 0 set to q, which the
// device must refuse at DRIVER_OK.
func badQueue(q queueRegs) func(*guest, mmioDev) {
	return func(g *guest, d mmioDev) {
		g.start(d, 0, q)
		g.checkStatus(d, statusBroken)
	}
}

// notifyUnconfigured rings the doorbell of a queue before it is set up and
// of a queue the device does not have, and readies a queue that does not
// exist: the device ignores all three and then serves.
func notifyUnconfigured(g *guest, d mmioDev) {
	g.notify(d, 0)
	g.write(d.reg(virtiotest.RegQueueSel), 5)
	g.write(d.reg(virtiotest.RegQueueReady), 1)
	r := g.ring(ringSize)
	g.desc(r.desc, 0, g.buffer(16, 0), 16, fWrite, 0)
	g.start(d, 0, regsOf(r))
	g.notify(d, 7)
	g.checkStatus(d, statusLive)
	g.publish(r, 0)
	g.notify(d, 0)
	g.waitUsed(d.name, r, 1, 16)
}

// blkHeader returns a virtio-blk request header (struct virtio_blk_outhdr).
func blkHeader(g *guest, typ uint32, sector uint64) uint64 {
	h := g.alloc(16, 16)
	g.put32(h, typ)
	g.put64(h+8, sector)
	return h
}

// blkPastCapacity reads a sector far past the disk's end: the request fails
// with IOERR and the device stays live.
func blkPastCapacity(g *guest, d mmioDev) {
	r := g.ring(ringSize)
	status := g.buffer(1, 0xff)
	g.desc(r.desc, 0, blkHeader(g, blk.TypeIn, 1<<40), 16, fNext, 1)
	g.desc(r.desc, 1, g.buffer(512, 0), 512, fWrite|fNext, 2)
	g.desc(r.desc, 2, status, 1, fWrite, 0)
	g.start(d, 0, regsOf(r))
	g.publish(r, 0)
	g.notify(d, 0)
	g.waitUsed(d.name, r, 1, 1)
	g.check("blk.request_status", status, 0xff, blk.StatusIOErr)
	g.checkStatus(d, statusLive)
}

// vsockPacket returns a vsock packet header (virtio 1.2 §5.10.6): a REQUEST
// from guest port src to the host's listener, claiming payloadLen bytes of
// payload.
func vsockPacket(g *guest, src, payloadLen uint32) uint64 {
	h := g.alloc(44, 16)
	g.put64(h, guestCID)
	g.put64(h+8, 2) // the host
	g.put32(h+16, src)
	g.put32(h+20, hostPort)
	g.put32(h+24, payloadLen)
	g.put16(h+28, 1) // STREAM
	g.put16(h+30, 1) // REQUEST
	g.put32(h+36, 64<<10)
	return h
}

// vsockTXLoop sends a packet whose chain loops: returned unused, and the
// device stays live.
func vsockTXLoop(g *guest, d mmioDev) {
	rx, tx, ev := g.ring(ringSize), g.ring(ringSize), g.ring(ringSize)
	g.desc(tx.desc, 0, vsockPacket(g, 900, 0), 44, fNext, 1)
	g.desc(tx.desc, 1, vsockPacket(g, 901, 0), 44, fNext, 0)
	g.start(d, 0, regsOf(rx), regsOf(tx), regsOf(ev))
	g.publish(tx, 0)
	g.notify(d, 1)
	g.waitUsed("vsock.tx", tx, 1, 0)
	g.checkStatus(d, statusLive)
}

// vsockShortPacket sends a header that claims 1000 bytes of payload in a
// chain of 44 bytes: dropped, and the device stays live.
func vsockShortPacket(g *guest, d mmioDev) {
	rx, tx, ev := g.ring(ringSize), g.ring(ringSize), g.ring(ringSize)
	g.desc(tx.desc, 0, vsockPacket(g, 902, 1000), 44, 0, 0)
	g.start(d, 0, regsOf(rx), regsOf(tx), regsOf(ev))
	g.publish(tx, 0)
	g.notify(d, 1)
	g.waitUsed("vsock.tx", tx, 1, 0)
	g.checkStatus(d, statusLive)
}

// vsockRXFarAhead connects, and once the device has taken the request
// (the answer waits: there are no receive buffers), moves the receive
// ring's available index far ahead: the device finds the ring corrupt and
// needs a reset. Corrupting it before the request went in would stop the
// device before it takes the request, whenever the worker looks at the
// receive ring first.
func vsockRXFarAhead(g *guest, d mmioDev) {
	rx, tx, ev := g.ring(ringSize), g.ring(ringSize), g.ring(ringSize)
	g.desc(tx.desc, 0, vsockPacket(g, 903, 0), 44, 0, 0)
	g.start(d, 0, regsOf(rx), regsOf(tx), regsOf(ev))
	g.publish(tx, 0)
	g.notify(d, 1)
	g.waitUsed("vsock.tx", tx, 1, 0)
	g.write(rx.avail, 0x100<<16)
	g.notify(d, 0)
	g.waitNeedsReset(d)
	g.checkStatus(d, statusBroken)
}

// lockedBuffer is a bytes.Buffer that the VMM's goroutines may write while
// the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// hostileDeadline bounds one hostile VM's run.
const hostileDeadline = 60 * time.Second

// runHostile boots g with a disk, vsock and rng, checks that the VM reset
// itself and that the console is what the script expects, and returns the
// VMM's log.
func runHostile(t *testing.T, g *guest) string {
	t.Helper()
	dir := t.TempDir()
	kernel, disk, sock := filepath.Join(dir, "kernel"), filepath.Join(dir, "disk"), filepath.Join(dir, "v.sock")
	if err := os.WriteFile(kernel, g.image(), 0o644); err != nil {
		t.Fatal(err)
	}
	img := make([]byte, diskSectors*blk.SectorSize)
	for s := range uint64(diskSectors) {
		le.PutUint32(img[s*blk.SectorSize:], sectorWord(s))
	}
	if err := os.WriteFile(disk, img, 0o644); err != nil {
		t.Fatal(err)
	}
	// The host side of the guest's vsock connections: accepted, then held
	// until the VM is gone.
	l, err := net.Listen("unix", fmt.Sprintf("%s_%d", sock, hostPort))
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan []net.Conn)
	go func() {
		var held []net.Conn
		for {
			c, err := l.Accept()
			if err != nil {
				accepted <- held
				return
			}
			held = append(held, c)
		}
	}()
	defer func() {
		l.Close()
		for _, c := range <-accepted {
			c.Close()
		}
	}()

	var console, log lockedBuffer
	vm, err := New(Config{
		Kernel: kernel, VCPUs: 1, MemMiB: hostileMemMiB, Console: &console,
		Log:   slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Disks: []Disk{{Path: disk}}, Vsock: &Vsock{CID: guestCID, Path: sock}, RNG: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeoutCause(context.Background(), hostileDeadline, errors.New("hostile guest did not finish"))
	defer cancel()
	start := time.Now()
	runErr := vm.Run(ctx)
	if err := vm.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	t.Logf("ran %d ops in %v", g.ops, time.Since(start).Round(time.Millisecond))
	if runErr != nil {
		t.Errorf("run: %v", runErr)
	}
	if got, want := console.String(), g.console(); got != want {
		t.Errorf("console:\n%s\nwant:\n%s", got, want)
	}
	// Guest misuse is a warning; an error record is the VMM failing itself.
	if strings.Contains(log.String(), "level=ERROR") {
		t.Error("the VMM logged an error")
	}
	if t.Failed() {
		t.Logf("VMM log:\n%s", log.String())
	}
	return log.String()
}
