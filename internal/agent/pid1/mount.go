package pid1

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Mount is one filesystem PID 1 mounts.
type Mount struct {
	Source, Target, FSType string
	Flags                  uintptr
	Data                   string
	Mode                   os.FileMode // of Target, if PID 1 creates it
}

const (
	nosuid = unix.MS_NOSUID
	nodev  = unix.MS_NODEV
	noexec = unix.MS_NOEXEC
)

// Mounts are mounted in order and unmounted in reverse.
var Mounts = []Mount{
	{"proc", "/proc", "proc", nosuid | nodev | noexec, "", 0o555},
	{"sysfs", "/sys", "sysfs", nosuid | nodev | noexec, "", 0o555},
	{"devtmpfs", "/dev", "devtmpfs", nosuid, "mode=0755", 0o755},
	{"devpts", "/dev/pts", "devpts", nosuid | noexec, "gid=5,mode=0620,ptmxmode=0666", 0o755},
	{"tmpfs", "/dev/shm", "tmpfs", nosuid | nodev, "mode=1777", 0o1777},
	{"tmpfs", "/run", "tmpfs", nosuid | nodev, "mode=0755", 0o755},
	{"tmpfs", "/tmp", "tmpfs", nosuid | nodev, "mode=1777", 0o1777},
	{"cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid | nodev | noexec, "", 0o555},
}

// mount mounts m, creating its target; a target that is already a mount
// point of this kind (the kernel mounts devtmpfs itself) is fine.
func (m Mount) mount() error {
	if err := os.MkdirAll(m.Target, m.Mode.Perm()); err != nil {
		return fmt.Errorf("mkdir %s: %w", m.Target, err)
	}
	err := unix.Mount(m.Source, m.Target, m.FSType, m.Flags, m.Data)
	if errors.Is(err, unix.EBUSY) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("mount %s on %s: %w", m.FSType, m.Target, err)
	}
	return nil
}
