//go:build linux

package main

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
)

// guestProgram is the Python program the guest runs as PID 1.
//
//go:embed guest.py
var guestProgram string

// DefaultCmdline boots the minimal template read-only from /dev/vda with
// Python as init, running the program on /dev/vdb. It is given to both VMMs
// as is; each appends its virtio-mmio announcements.
//
// There is no "--" before init's arguments, because QEMU microvm appends its
// announcements at the very end, and after "--" the kernel would hand them
// to init instead of probing the devices. Without it, the kernel passes
// every parameter it does not know to init as an argument if it has neither
// '=' nor '.' in it: "-c" and the program line, which is written without
// either for that reason. The disk is padded with newlines, not NULs, so
// that the text reads as Python source.
const DefaultCmdline = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.dumbkbd quiet " +
	`root=/dev/vda ro init=/usr/bin/python3 -c "exec(getattr(open('/dev/vdb'),'read')())"`

// Disk serials: the guest finds the data disk by its serial, the same under
// both VMMs.
const (
	serialRoot   = "devbench-root"
	serialScript = "devbench-script"
	serialData   = "devbench-data"
)

// Host-side vsock ports the guest connects to (guest-initiated, so that
// husk's <socket>_<port> listeners and AF_VSOCK listeners serve the same
// program).
const (
	portEcho   = 5000 // echoes what it reads: round-trip latency
	portSink   = 5001 // reads a length and that many bytes: guest to host
	portSource = 5002 // reads a length and sends that many bytes: host to guest
)

// guestCID is the guest's vsock context id under both VMMs.
const guestCID = 3

// params are the guest program's fixed parameters; what to measure, and
// how much, comes with each command (see guest.py).
type params struct {
	ImageBytes int64 // size of the data disk
	Block      int   // bytes per O_DIRECT read
	Msg        int   // bytes per round-trip message
}

// script returns the guest program with its parameters, padded with
// newlines to whole 4 KiB blocks (a disk's size is a multiple of its sector
// size).
func script(p params) ([]byte, error) {
	block, err := json.Marshal(map[string]any{
		"image_bytes": p.ImageBytes, "block": p.Block, "msg": p.Msg, "data_serial": serialData,
		"port_echo": portEcho, "port_sink": portSink, "port_source": portSource,
	})
	if err != nil {
		return nil, err
	}
	// JSON of strings and integers is a Python literal.
	b := []byte("P = " + string(block) + "\n" + guestProgram)
	for len(b)%4096 != 0 {
		b = append(b, '\n')
	}
	return b, nil
}

// writeScript writes the program for p as a raw disk image at path.
func writeScript(path string, p params) error {
	b, err := script(p)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o444)
}

// disks are the three disks of a run, in guest order: vda, vdb, vdc.
type disks struct{ root, script, data string }

// huskArgv is husk-vmm's command line. Every disk is read-only: the root
// file system is mounted ro, and the data disk is only read.
func (c config) huskArgv(d disks, sock string) []string {
	return []string{c.vmm, "--kernel", c.kernel, "--cmdline", c.cmdline,
		"--cpus", strconv.Itoa(c.cpus), "--mem", strconv.Itoa(c.mem),
		"--disk", d.root + ",ro,serial=" + serialRoot,
		"--disk", d.script + ",ro,serial=" + serialScript,
		"--disk", d.data + ",ro,serial=" + serialData,
		"--vsock", fmt.Sprintf("cid=%d,socket=%s", guestCID, sock),
	}
}

// DefaultMachine is bootbench's microvm without auto-kernel-cmdline=off:
// here QEMU must announce its virtio-mmio devices on the command line, the
// guest kernel having no ACPI.
const DefaultMachine = "microvm,x-option-roms=off,rtc=off,isa-serial=on,acpi=off"

// qemuDrive is the host side of a QEMU disk: raw, read-only, through the
// host page cache (cache=writeback: no O_DIRECT, the same as husk's raw
// backend, which uses pread and pwrite), and served by QEMU's thread pool.
func qemuDrive(id, path string) string {
	return "id=" + id + ",file=" + path + ",format=raw,if=none,readonly=on,cache=writeback,aio=threads"
}

// qemuArgs is QEMU microvm's command line after the executable. The
// devices are in guest order: QEMU microvm gives the first -device the
// first transport, and the kernel numbers the disks in that order.
func (c config) qemuArgs(d disks) []string {
	args := []string{"-M", c.machine, "-enable-kvm", "-cpu", "host,-arch-capabilities",
		"-m", strconv.Itoa(c.mem), "-smp", strconv.Itoa(c.cpus),
		"-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
		"-kernel", c.kernel, "-append", c.cmdline,
	}
	for _, disk := range []struct{ id, path, serial string }{
		{"root", d.root, serialRoot}, {"script", d.script, serialScript}, {"data", d.data, serialData},
	} {
		args = append(args, "-drive", qemuDrive(disk.id, disk.path),
			"-device", "virtio-blk-device,drive="+disk.id+",serial="+disk.serial)
	}
	return append(args, "-device", fmt.Sprintf("vhost-vsock-device,guest-cid=%d", guestCID))
}
