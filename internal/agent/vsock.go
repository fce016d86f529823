package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// VsockAddr is an AF_VSOCK address.
type VsockAddr struct{ CID, Port uint32 }

// Network returns "vsock".
func (a *VsockAddr) Network() string { return "vsock" }

func (a *VsockAddr) String() string {
	return strconv.FormatUint(uint64(a.CID), 10) + ":" + strconv.FormatUint(uint64(a.Port), 10)
}

// vsockListener accepts AF_VSOCK connections. The net package knows no
// vsock, so the socket is an os.File (non-blocking, on the runtime poller)
// and each connection one too.
type vsockListener struct {
	f  *os.File
	rc interface {
		Read(func(uintptr) bool) error
	}
	addr *VsockAddr
	once sync.Once
}

// ListenVsock listens on port for connections from any CID (the host).
func ListenVsock(port uint32) (net.Listener, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("vsock socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock bind port %d: %w", port, err)
	}
	if err := unix.Listen(fd, 1024); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock listen port %d: %w", port, err)
	}
	f := os.NewFile(uintptr(fd), "vsock:"+strconv.FormatUint(uint64(port), 10))
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &vsockListener{f: f, rc: rc, addr: &VsockAddr{CID: unix.VMADDR_CID_ANY, Port: port}}, nil
}

func (l *vsockListener) Accept() (net.Conn, error) {
	var nfd int
	var sa unix.Sockaddr
	var aerr error
	err := l.rc.Read(func(fd uintptr) bool {
		nfd, sa, aerr = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		return aerr != unix.EAGAIN
	})
	if err != nil {
		return nil, &net.OpError{Op: "accept", Net: "vsock", Addr: l.addr, Err: err}
	}
	if aerr != nil {
		return nil, &net.OpError{Op: "accept", Net: "vsock", Addr: l.addr, Err: aerr}
	}
	remote := &VsockAddr{}
	if vm, ok := sa.(*unix.SockaddrVM); ok {
		remote.CID, remote.Port = vm.CID, vm.Port
	}
	return &vsockConn{File: os.NewFile(uintptr(nfd), "vsock-conn"), local: l.addr, remote: remote}, nil
}

func (l *vsockListener) Close() error {
	err := net.ErrClosed
	l.once.Do(func() { err = l.f.Close() })
	return err
}

func (l *vsockListener) Addr() net.Addr { return l.addr }

// vsockConn is an accepted vsock connection.
type vsockConn struct {
	*os.File
	local, remote *VsockAddr
}

// Read and Write report errors as the net package does: os.File wraps them
// in *os.PathError, which is no net.Error, and net/http takes a read that
// ended at a deadline it set itself (to stop its background read of a
// streaming request) for a broken connection and cancels the request.
func (c *vsockConn) Read(p []byte) (int, error) {
	n, err := c.File.Read(p)
	return n, c.netError("read", err)
}

func (c *vsockConn) Write(p []byte) (int, error) {
	n, err := c.File.Write(p)
	return n, c.netError("write", err)
}

func (c *vsockConn) netError(op string, err error) error {
	var pe *os.PathError
	if !errors.As(err, &pe) {
		return err // nil, or io.EOF as it is
	}
	return &net.OpError{Op: op, Net: "vsock", Source: c.local, Addr: c.remote, Err: pe.Err}
}

func (c *vsockConn) LocalAddr() net.Addr                { return c.local }
func (c *vsockConn) RemoteAddr() net.Addr               { return c.remote }
func (c *vsockConn) SetDeadline(t time.Time) error      { return c.File.SetDeadline(t) }
func (c *vsockConn) SetReadDeadline(t time.Time) error  { return c.File.SetReadDeadline(t) }
func (c *vsockConn) SetWriteDeadline(t time.Time) error { return c.File.SetWriteDeadline(t) }
