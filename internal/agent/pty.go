package agent

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// openPTY opens a new pseudo-terminal pair through ptmx (normally
// /dev/ptmx): the master, which the agent reads and writes, and the slave,
// which becomes the child's stdin, stdout, stderr and controlling terminal.
func openPTY(ptmx string, cols, rows uint16) (master, slave *os.File, err error) {
	m, err := os.OpenFile(ptmx, os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open %s: %w", ptmx, err)
	}
	fail := func(err error) (*os.File, *os.File, error) {
		m.Close()
		return nil, nil, err
	}
	rc, err := m.SyscallConn()
	if err != nil {
		return fail(err)
	}
	var n int
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		if ierr = unix.IoctlSetPointerInt(int(fd), unix.TIOCSPTLCK, 0); ierr != nil {
			ierr = fmt.Errorf("TIOCSPTLCK: %w", ierr)
			return
		}
		if n, ierr = unix.IoctlGetInt(int(fd), unix.TIOCGPTN); ierr != nil {
			ierr = fmt.Errorf("TIOCGPTN: %w", ierr)
			return
		}
		if cols != 0 && rows != 0 {
			ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Col: cols, Row: rows})
		}
	}); err != nil {
		return fail(err)
	}
	if ierr != nil {
		return fail(ierr)
	}
	// The slave lives in the devpts instance that ptmx belongs to: ptmx is
	// either <devpts>/ptmx or a /dev/ptmx beside /dev/pts.
	name := ptsDir(ptmx) + "/" + strconv.Itoa(n)
	s, err := os.OpenFile(name, os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fail(fmt.Errorf("open %s: %w", name, err))
	}
	return m, s, nil
}

func ptsDir(ptmx string) string {
	if ptmx == "/dev/ptmx" {
		return "/dev/pts"
	}
	for i := len(ptmx) - 1; i >= 0; i-- {
		if ptmx[i] == '/' {
			return ptmx[:i]
		}
	}
	return "."
}

// resizePTY sets the window size of the terminal whose master is m.
func resizePTY(m *os.File, cols, rows uint16) error {
	rc, err := m.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Col: cols, Row: rows})
	}); err != nil {
		return err
	}
	if ierr != nil {
		return fmt.Errorf("TIOCSWINSZ: %w", ierr)
	}
	return nil
}
