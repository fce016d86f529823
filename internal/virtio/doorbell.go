package virtio

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Doorbell is the event a device's worker goroutine sleeps on: an eventfd
// that the guest rings through KVM_IOEVENTFD (no exit to user space), that
// the transport rings on a QueueNotify write that does reach it, and that a
// device's host-side backends may ring too.
//
// The eventfd is wrapped in an *os.File so that Wait parks the goroutine on
// the Go runtime's poller instead of holding an OS thread, and so that Close
// wakes a blocked Wait.
type Doorbell struct {
	fd  int             // for KVM_IOEVENTFD; owned and closed by f
	f   *os.File        // non-blocking, registered with the runtime poller
	rc  syscall.RawConn // f's raw connection, for Ring
	buf [8]byte         // Wait's read buffer; Wait has a single caller
}

// NewDoorbell creates a doorbell with a fresh eventfd.
func NewDoorbell() (*Doorbell, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "virtio-doorbell")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("doorbell raw conn: %w", err)
	}
	return &Doorbell{fd: fd, f: f, rc: rc}, nil
}

// FD returns the eventfd, to register with KVM_IOEVENTFD. It stays open
// until Close.
func (d *Doorbell) FD() int { return d.fd }

var one = [8]byte{1}

// Ring wakes the waiter. It never blocks and is safe to call from any
// goroutine, including vCPU goroutines, and after Close (then it does
// nothing).
func (d *Doorbell) Ring() {
	// A full counter (EAGAIN) already wakes the reader, so errors are moot.
	_ = d.rc.Write(func(fd uintptr) bool {
		_, _ = unix.Write(int(fd), one[:])
		return true
	})
}

// Wait blocks until the doorbell has been rung since the previous Wait, and
// consumes the rings. It returns os.ErrClosed once the doorbell is closed.
//
// Preconditions: only one goroutine calls Wait.
func (d *Doorbell) Wait() error {
	for {
		_, err := d.f.Read(d.buf[:])
		if err == nil {
			return nil
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, os.ErrClosed) {
			return os.ErrClosed
		}
		return fmt.Errorf("doorbell read: %w", err)
	}
}

// Close closes the eventfd and wakes a blocked Wait. KVM keeps its own
// reference to an eventfd registered with KVM_IOEVENTFD; deassign it first.
func (d *Doorbell) Close() error { return d.f.Close() }
