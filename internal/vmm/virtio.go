package vmm

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/huskvm/husk/internal/arch/x86"
	"github.com/huskvm/husk/internal/eventfd"
	"github.com/huskvm/husk/internal/virtio"
	"github.com/huskvm/husk/internal/virtio/blk"
	"github.com/huskvm/husk/internal/virtio/mmio"
	vnet "github.com/huskvm/husk/internal/virtio/net"
	"github.com/huskvm/husk/internal/virtio/rng"
	"github.com/huskvm/husk/internal/virtio/vsock"
)

// Disk is a virtio-blk disk.
type Disk struct {
	// Path is a raw image; with Overlay, the read-only base it overlays.
	Path string
	// Overlay is this VM's copy-on-write overlay over Path, created when
	// absent. The base is never written.
	Overlay string
	// ReadOnly makes the disk read-only to the guest.
	ReadOnly bool
	// Serial is the disk's id (virtio-blk GET_ID, /sys/block/vdX/serial).
	Serial string
}

// Net is a virtio-net NIC on a host TAP interface (see package
// internal/virtio/net).
type Net struct {
	// TAP names the host interface, created if absent (which needs
	// CAP_NET_ADMIN). The host configures its side: address, link up.
	TAP string
	// MAC is the guest's address; nil picks a random locally administered
	// one.
	MAC net.HardwareAddr
}

// Vsock is the VM's virtio-vsock device.
type Vsock struct {
	// CID is the guest's context id (3 or more).
	CID uint64
	// Path is the host Unix socket (see package vsock).
	Path string
}

// virtioDev is one virtio-mmio device and what the VM wired for it.
type virtioDev struct {
	dev  virtio.Device
	t    *mmio.Transport
	irq  *eventfd.EventFD
	gsi  uint32
	base uint64
}

// maxVirtio is how many virtio-mmio devices fit the IRQ range.
const maxVirtio = x86.VirtioIRQLast - x86.VirtioIRQBase + 1

// setupVirtio creates the configured virtio devices, in a fixed order:
// disks (vda, vdb, … in Config order), NICs (eth0, eth1, … in Config
// order), vsock, rng.
func (v *VM) setupVirtio() error {
	for i, d := range v.cfg.Disks {
		dev, err := openDisk(d, v)
		if err != nil {
			return fmt.Errorf("disk %d (%s): %w", i, d.Path, err)
		}
		if err := v.addVirtio(dev); err != nil {
			return err
		}
	}
	for i, n := range v.cfg.Net {
		dev, err := openNet(n, v)
		if err != nil {
			return fmt.Errorf("net %d (TAP %s): %w", i, n.TAP, err)
		}
		if err := v.addVirtio(dev); err != nil {
			return err
		}
	}
	if s := v.cfg.Vsock; s != nil {
		os.Remove(s.Path) // a stale socket of an earlier run
		dev, err := vsock.New(vsock.Config{GuestCID: s.CID, Path: s.Path, Log: v.log})
		if err != nil {
			return err
		}
		v.vsock = dev
		if err := v.addVirtio(dev); err != nil {
			return err
		}
	}
	if v.cfg.RNG {
		dev, err := rng.New(v.log)
		if err != nil {
			return err
		}
		v.rng = dev
		if err := v.addVirtio(dev); err != nil {
			return err
		}
	}
	return nil
}

func openDisk(d Disk, v *VM) (*blk.Device, error) {
	var backend blk.Backend
	if d.Overlay != "" {
		if _, err := os.Stat(d.Overlay); errors.Is(err, os.ErrNotExist) {
			if err := blk.CreateOverlay(d.Overlay, d.Path, blk.OverlayOptions{}); err != nil {
				return nil, err
			}
		}
		o, err := blk.OpenOverlay(d.Overlay, d.Path)
		if err != nil {
			return nil, err
		}
		backend = o
	} else {
		r, err := blk.OpenRaw(d.Path, d.ReadOnly)
		if err != nil {
			return nil, err
		}
		backend = r
	}
	dev, err := blk.New(backend, blk.Config{ReadOnly: d.ReadOnly, Serial: d.Serial}, v.log)
	if err != nil {
		backend.Close()
		return nil, err
	}
	return dev, nil
}

func openNet(n Net, v *VM) (*vnet.Device, error) {
	be, err := vnet.OpenTAP(n.TAP)
	if err != nil {
		return nil, err
	}
	mac := n.MAC
	if mac == nil {
		mac = vnet.RandomMAC()
	}
	return vnet.New(be, vnet.Config{MAC: mac, Log: v.log})
}

// addVirtio puts dev on the next virtio-mmio window and IRQ: transport on
// the MMIO bus, interrupts through an irqfd, doorbells through an
// ioeventfd, and the device announced on the kernel command line.
func (v *VM) addVirtio(dev virtio.Device) error {
	i := len(v.virtio)
	if i >= maxVirtio {
		dev.Close()
		return fmt.Errorf("more than %d virtio devices", maxVirtio)
	}
	vd := &virtioDev{dev: dev, gsi: uint32(x86.VirtioIRQBase + i), base: x86.VirtioMMIOBase + uint64(i)*x86.VirtioMMIOSize}
	v.virtio = append(v.virtio, vd) // from here Close releases it
	var err error
	if vd.irq, err = eventfd.New(); err != nil {
		return err
	}
	t, err := mmio.New(dev, v.mem, vd.irq, v.log)
	if err != nil {
		return err
	}
	vd.t = t
	if err := v.mmio.insert(vd.base, mmio.Size, t); err != nil {
		return err
	}
	if err := v.vm.IRQFD(vd.irq.FD(), vd.gsi); err != nil {
		return err
	}
	if err := v.vm.IOEventFD(t.NotifyFD(), vd.base+mmio.QueueNotifyOffset, 4, false); err != nil {
		return err
	}
	v.deviceCmdline = append(v.deviceCmdline, mmio.Cmdline(vd.base, vd.gsi))
	return nil
}

// cmdline returns the kernel command line: the configured one plus the
// virtio-mmio device announcements, which go before a "--" (what follows it
// are arguments for init, not for the kernel).
func (v *VM) cmdline() string {
	return insertKernelArgs(v.cfg.Cmdline, v.deviceCmdline)
}

// insertKernelArgs adds args to cmdline ahead of its first "--" word.
func insertKernelArgs(cmdline string, args []string) string {
	if len(args) == 0 {
		return cmdline
	}
	words := strings.Split(cmdline, " ")
	for i, w := range words {
		if w == "--" {
			return strings.Join(append(append(words[:i:i], args...), words[i:]...), " ")
		}
	}
	return strings.Join(append([]string{cmdline}, args...), " ")
}

// closeVirtio stops every device's worker (and flushes disks) before guest
// memory goes away.
func (v *VM) closeVirtio() error {
	var errs []error
	for _, d := range v.virtio {
		errs = append(errs, d.dev.Close())
		if d.irq != nil {
			errs = append(errs, d.irq.Close())
		}
	}
	v.virtio = nil
	return errors.Join(errs...)
}

// Stats are counters of a VM's devices.
type Stats struct {
	// RNGBytes is the entropy virtio-rng served.
	RNGBytes uint64
	// VsockConns is the number of live vsock connections.
	VsockConns int
	// Net sums the counters of the NICs.
	Net vnet.Stats
}

// Stats returns the device counters.
func (v *VM) Stats() Stats {
	var s Stats
	if v.rng != nil {
		s.RNGBytes = v.rng.BytesServed()
	}
	if v.vsock != nil {
		s.VsockConns = v.vsock.Muxer().Conns()
	}
	for _, d := range v.virtio {
		if n, ok := d.dev.(*vnet.Device); ok {
			s.Net.Add(n.Stats())
		}
	}
	return s
}

// LogState logs each vCPU's state (kicked out of KVM_RUN for it), each
// virtio device's queues and interrupt status, and the vsock connections,
// at warning level: what a person needs to see why a guest stalled. A
// device interrupt raised and not acknowledged while every vCPU has
// interrupts enabled points at delivery; a vCPU with interrupts off for
// long points at the guest. husk-vmm calls it on SIGUSR1, from any
// goroutine.
func (v *VM) LogState() {
	var vcpus []*vcpu
	if p := v.probeable.Load(); p != nil {
		vcpus = *p
	}
	for _, c := range vcpus {
		if vw, ok := c.probe(200 * time.Millisecond); ok {
			v.log.Warn("vcpu_state", "vcpu", vw)
		} else {
			v.log.Warn("vcpu_state", "vcpu", c.id, "answered", false)
		}
	}
	for i, d := range v.virtio {
		log := v.log.With("device", d.dev.Type().String(), "index", i)
		log.Warn("device_state", "interrupt_status", d.t.InterruptStatus(), "queues", d.dev.Inspect())
	}
	if v.vsock != nil {
		conns, ctrl, ready := v.vsock.Muxer().Inspect()
		v.log.Warn("vsock_state", "ctrl_queued", ctrl, "ready", ready, "conns", conns)
	}
}
