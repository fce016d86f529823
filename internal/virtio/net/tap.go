package net

import (
	"crypto/rand"
	"errors"
	"fmt"
	stdnet "net"
	"strings"

	"golang.org/x/sys/unix"
)

// ifNameMax is the longest interface name: IFNAMSIZ (16) less the NUL.
const ifNameMax = unix.IFNAMSIZ - 1

// CheckTAPName reports why name cannot name a TAP interface, following the
// kernel's dev_valid_name; it also refuses '%', with which the kernel would
// pick the name and the host could not tell which interface is the VM's.
func CheckTAPName(name string) error {
	switch {
	case name == "":
		return errors.New("TAP interface name is empty")
	case len(name) > ifNameMax:
		return fmt.Errorf("TAP interface name %q is longer than %d bytes", name, ifNameMax)
	case name == "." || name == "..":
		return fmt.Errorf("TAP interface name %q is reserved", name)
	case strings.ContainsAny(name, "/:% \t\n\v\f\r"):
		return fmt.Errorf("TAP interface name %q contains '/', ':', '%%' or white space", name)
	}
	return nil
}

// OpenTAP attaches to the TAP interface name, creating it if absent (which
// needs CAP_NET_ADMIN; attaching to an existing persistent TAP needs only
// permission from its owner). Frames carry a 12-byte virtio_net_hdr
// (IFF_VNET_HDR, TUNSETVNETHDRSZ), so offloads pass through; the host may
// send none until a driver accepts them. The host configures its side
// (address, link up) as for any interface.
func OpenTAP(name string) (*Backend, error) {
	if err := CheckTAPName(name); err != nil {
		return nil, err
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TAP %s: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		switch {
		case errors.Is(err, unix.EPERM):
			return nil, fmt.Errorf("TUNSETIFF %s: %w (creating a TAP needs CAP_NET_ADMIN; attaching needs the owner's uid or gid)", name, err)
		case errors.Is(err, unix.EBUSY):
			return nil, fmt.Errorf("TUNSETIFF %s: %w (another process is attached to it)", name, err)
		case errors.Is(err, unix.EINVAL):
			return nil, fmt.Errorf("TUNSETIFF %s: %w (an interface of that name exists and is not a single-queue TAP)", name, err)
		}
		return nil, fmt.Errorf("TUNSETIFF %s: %w", name, err)
	}
	// A persistent TAP keeps the header size and offloads of its last user.
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, HeaderSize); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETVNETHDRSZ %s: %w", name, err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, 0); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETOFFLOAD %s: %w", name, err)
	}
	return newBackend(fd, name, true)
}

// CheckMAC reports why mac cannot be a NIC's address: it must be 6 bytes,
// unicast (the I/G bit of the first byte clear) and not all zeros.
func CheckMAC(mac []byte) error {
	switch {
	case len(mac) != 6:
		return fmt.Errorf("MAC address %s is %d bytes, want 6", stdnet.HardwareAddr(mac), len(mac))
	case mac[0]&1 != 0:
		return fmt.Errorf("MAC address %s is a multicast address", stdnet.HardwareAddr(mac))
	case [6]byte(mac) == [6]byte{}:
		return errors.New("MAC address 00:00:00:00:00:00 is not an address")
	}
	return nil
}

// RandomMAC returns a random locally administered unicast address (the
// U/L bit of the first byte set, the I/G bit clear).
func RandomMAC() stdnet.HardwareAddr {
	mac := make(stdnet.HardwareAddr, 6)
	rand.Read(mac) // never fails (crypto/rand, Go 1.24+)
	mac[0] = mac[0]&^1 | 2
	return mac
}
