// Package eventfd wraps Linux's eventfd(2): a counter that one side bumps and
// another (here usually KVM, through irqfd or ioeventfd) consumes.
package eventfd

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"
)

// EventFD is a non-blocking, close-on-exec eventfd.
type EventFD struct {
	fd int
}

// New creates an eventfd with a zero counter.
func New() (*EventFD, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	return &EventFD{fd: fd}, nil
}

// FD returns the descriptor, for registering with KVM or epoll.
func (e *EventFD) FD() int { return e.fd }

// Notify adds one to the counter. A full counter (EAGAIN) already signals the
// reader, so it is not an error.
func (e *EventFD) Notify() error {
	var one = [8]byte{1}
	if _, err := unix.Write(e.fd, one[:]); err != nil && err != unix.EAGAIN {
		return fmt.Errorf("eventfd write: %w", err)
	}
	return nil
}

// Read returns and resets the counter; it returns 0 when the counter is zero.
func (e *EventFD) Read() (uint64, error) {
	var b [8]byte
	if _, err := unix.Read(e.fd, b[:]); err != nil {
		if err == unix.EAGAIN {
			return 0, nil
		}
		return 0, fmt.Errorf("eventfd read: %w", err)
	}
	return binary.NativeEndian.Uint64(b[:]), nil
}

// Close closes the descriptor.
func (e *EventFD) Close() error { return unix.Close(e.fd) }
