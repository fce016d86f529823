package net

import (
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Backend is the host end of a NIC: a non-blocking descriptor that carries
// exactly one frame, behind its 12-byte virtio_net_hdr, per read and per
// write. That is a TAP opened by OpenTAP (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR,
// TUNSETVNETHDRSZ 12), or in tests one end of a SOCK_SEQPACKET socket pair,
// which has the same message semantics.
//
// Threading: the device's worker goroutine reads and writes; its watcher
// goroutine sleeps in waitReadable. The device closes the backend only
// after its worker has stopped, so the worker may use fd directly, without
// the poller's reference counting (which would cost an allocation per
// frame).
type Backend struct {
	fd   int             // owned and closed by f
	f    *os.File        // registered with the runtime poller: waitReadable parks a goroutine, not a thread
	rc   syscall.RawConn // f's raw connection, for waitReadable
	name string
	tap  bool // fd is a TAP, whose offloads setOffload sets
}

// newBackend wraps fd, which it owns from then on (it is closed on error
// too), and makes it non-blocking. name is for logs: the TAP's name.
func newBackend(fd int, name string, tap bool) (*Backend, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("net backend %s: set non-blocking: %w", name, err)
	}
	// A non-blocking descriptor makes os.NewFile register it with the poller.
	f := os.NewFile(uintptr(fd), name)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("net backend %s: raw conn: %w", name, err)
	}
	return &Backend{fd: fd, f: f, rc: rc, name: name, tap: tap}, nil
}

// Name returns the backend's name (the TAP interface).
func (b *Backend) Name() string { return b.name }

// read reads one frame into p without blocking: unix.EAGAIN when none is
// waiting. A frame longer than p is cut to len(p) by the kernel, and a TAP
// still returns its full length, so n may exceed len(p).
func (b *Backend) read(p []byte) (int, error) { return unix.Read(b.fd, p) }

// write sends the concatenation of iov as one frame.
func (b *Backend) write(iov [][]byte) (int, error) { return unix.Writev(b.fd, iov) }

// setOffload sets which offloaded frames (TUN_F_* flags) the host kernel
// may send a TAP; without a flag it completes that work itself first.
// Other backends take what they are given.
func (b *Backend) setOffload(flags uint) error {
	if !b.tap {
		return nil
	}
	return unix.IoctlSetInt(b.fd, unix.TUNSETOFFLOAD, int(flags))
}

// waitReadable blocks until a frame is waiting or the descriptor reports an
// error, or the backend is closed (then it returns an error). It may return
// early; the caller just tries to read.
func (b *Backend) waitReadable() error {
	return b.rc.Read(func(fd uintptr) bool {
		// The poller is edge-triggered and frames may have arrived before
		// this call: ask the descriptor itself, and only park (return
		// false) when it has nothing.
		p := [1]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(p[:], 0)
		return err != nil || n > 0
	})
}

// Close closes the descriptor and wakes a goroutine in waitReadable.
func (b *Backend) Close() error { return b.f.Close() }
