//go:build linux && amd64

package kvm

import "golang.org/x/sys/unix"

// ioctlInt issues ioctl(fd, req, arg) for a request whose argument is an
// integer passed by value (or none), retrying on EINTR. It returns the
// ioctl's non-negative result, or the bare unix.Errno on failure.
//
// KVM_RUN does not go through here: its EINTR is a kick, which the caller
// must see.
func ioctlInt(fd int, req, arg uintptr) (uintptr, error) {
	for {
		r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return r, e
		}
		return r, nil
	}
}

// closeFd closes *fd once and marks it closed. A second call returns nil.
func closeFd(fd *int) error {
	if *fd < 0 {
		return nil
	}
	err := unix.Close(*fd)
	*fd = -1
	return err
}
