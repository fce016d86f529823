// Package vmm assembles a microVM from a Config and runs it: KVM VM and
// vCPUs, guest memory, the loaded kernel, and the legacy devices on the
// port-I/O bus.
//
// Threading: one goroutine per vCPU, locked to its OS thread for its whole
// life; it creates its vCPU, runs KVM_RUN and dispatches exits to devices.
// Device handlers run on those goroutines and never block for long. A stop
// (guest reset, error, or the caller's context) sets a flag and kicks every
// vCPU out of KVM_RUN with immediate_exit and a signal.
package vmm

import (
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/huskvm/husk/internal/arch/x86"
	vnet "github.com/huskvm/husk/internal/virtio/net"
)

// Config describes a VM to boot. It is a plain value; Validate checks it.
type Config struct {
	// Kernel is an ELF vmlinux with a PVH note, or a bzImage.
	Kernel string
	// Initrd is an optional initramfs.
	Initrd string
	// Cmdline is the kernel command line.
	Cmdline string
	// VCPUs is the number of vCPUs (1..32).
	VCPUs int
	// MemMiB is guest RAM in MiB.
	MemMiB int
	// Console receives the guest's serial output; nil discards it.
	Console io.Writer
	// ConsoleIn feeds the guest's serial input; nil gives none.
	ConsoleIn io.Reader
	// Log receives the VMM's own log records; nil discards them.
	Log *slog.Logger
	// Disks are virtio-blk disks: /dev/vda, /dev/vdb, … in order.
	Disks []Disk
	// Net are virtio-net NICs: eth0, eth1, … in order.
	Net []Net
	// Vsock, if set, is the VM's vsock device.
	Vsock *Vsock
	// RNG adds a virtio-rng device fed from the host's crypto/rand.
	RNG bool
}

// MaxMemMiB caps guest RAM (256 GiB).
const MaxMemMiB = 256 << 10

// Validate reports the first problem with c.
func (c *Config) Validate() error {
	switch {
	case c.Kernel == "":
		return errors.New("no kernel given")
	case c.VCPUs < 1 || c.VCPUs > x86.MaxVCPUs:
		return fmt.Errorf("vcpus %d out of range 1..%d", c.VCPUs, x86.MaxVCPUs)
	case c.MemMiB < 16 || c.MemMiB > MaxMemMiB:
		return fmt.Errorf("memory %d MiB out of range 16..%d", c.MemMiB, MaxMemMiB)
	case len(c.Cmdline) >= x86.CmdlineMax:
		return fmt.Errorf("command line of %d bytes exceeds %d", len(c.Cmdline), x86.CmdlineMax-1)
	case c.Vsock != nil && (c.Vsock.CID < 3 || c.Vsock.CID > 0xffffffff || c.Vsock.Path == ""):
		return fmt.Errorf("vsock needs a CID of 3..2^32-1 and a socket path (got %d, %q)", c.Vsock.CID, c.Vsock.Path)
	}
	for i, d := range c.Disks {
		if d.Path == "" {
			return fmt.Errorf("disk %d has no path", i)
		}
		if d.Overlay != "" && d.ReadOnly {
			return fmt.Errorf("disk %d: an overlay exists to take writes; drop ro or the overlay", i)
		}
	}
	taps, macs := map[string]int{}, map[string]int{}
	for i, n := range c.Net {
		if err := vnet.CheckTAPName(n.TAP); err != nil {
			return fmt.Errorf("net %d: %w", i, err)
		}
		if j, dup := taps[n.TAP]; dup {
			return fmt.Errorf("net %d: TAP %s is already net %d's", i, n.TAP, j)
		}
		taps[n.TAP] = i
		if n.MAC == nil {
			continue
		}
		if err := vnet.CheckMAC(n.MAC); err != nil {
			return fmt.Errorf("net %d: %w", i, err)
		}
		if j, dup := macs[n.MAC.String()]; dup {
			return fmt.Errorf("net %d: MAC %s is already net %d's", i, n.MAC, j)
		}
		macs[n.MAC.String()] = i
	}
	return nil
}
