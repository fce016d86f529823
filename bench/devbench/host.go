//go:build linux

package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// The host side of the vsock measurements: three servers, the same code
// behind two kinds of listener. husk-vmm hands a guest connection to host
// port P to a Unix socket listening at <socket>_P (Firecracker's
// convention); QEMU's vhost-vsock-device lets the host kernel deliver it to
// an AF_VSOCK listener on port P. The listeners live as long as devbench.

// acceptor is a listener of either kind.
type acceptor interface {
	Accept() (io.ReadWriteCloser, error)
}

// unixAcceptor accepts husk-vmm's connections to <socket>_P.
type unixAcceptor struct{ l net.Listener }

func (u unixAcceptor) Accept() (io.ReadWriteCloser, error) { return u.l.Accept() }

// listenUnix listens at path, replacing a stale socket file.
func listenUnix(path string) (acceptor, error) {
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	return unixAcceptor{l}, nil
}

// vsockAcceptor is an AF_VSOCK listener on the host (VMADDR_CID_ANY).
type vsockAcceptor struct{ fd int }

// listenVsock listens on AF_VSOCK port port. The host side of
// vhost-vsock needs the vhost_vsock module, which also creates
// /dev/vhost-vsock for QEMU.
func listenVsock(port uint32) (acceptor, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket(AF_VSOCK): %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind vsock port %d: %w", port, err)
	}
	if err := unix.Listen(fd, 8); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("listen vsock port %d: %w", port, err)
	}
	return vsockAcceptor{fd}, nil
}

// Accept blocks in accept4 (the listener lives as long as the process, so
// it never needs waking) and wraps the connection in a blocking *os.File.
func (v vsockAcceptor) Accept() (io.ReadWriteCloser, error) {
	for {
		nfd, _, err := unix.Accept4(v.fd, unix.SOCK_CLOEXEC)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("accept vsock: %w", err)
		}
		return os.NewFile(uintptr(nfd), "vsock"), nil
	}
}

// handlers serve one guest connection each, by port.
var handlers = map[uint32]func(io.ReadWriteCloser) error{
	portEcho:   serveEcho,
	portSink:   serveSink,
	portSource: serveSource,
}

// serve accepts connections on l forever and serves each with h on its own
// goroutine; failures are printed (the guest then fails or times out, and
// its run is reported as failed).
func serve(name string, l acceptor, h func(io.ReadWriteCloser) error) {
	for {
		c, err := l.Accept()
		if err != nil {
			fmt.Fprintf(os.Stderr, "devbench: %s: %v\n", name, err)
			return
		}
		go func() {
			defer c.Close()
			if err := h(c); err != nil {
				fmt.Fprintf(os.Stderr, "devbench: %s: %v\n", name, err)
			}
		}()
	}
}

// serveEcho writes back whatever it reads, until end of file.
func serveEcho(c io.ReadWriteCloser) error {
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// maxTransfer caps the length a guest may ask for or announce.
const maxTransfer = 1 << 40

func readLength(c io.Reader) (int64, error) {
	var b [8]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return 0, fmt.Errorf("reading the length: %w", err)
	}
	n := binary.LittleEndian.Uint64(b[:])
	if n > maxTransfer {
		return 0, fmt.Errorf("length %d over %d", n, maxTransfer)
	}
	return int64(n), nil
}

// serveSink reads a length and that many bytes, then answers with the
// count received.
func serveSink(c io.ReadWriteCloser) error {
	n, err := readLength(c)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	var got int64
	for got < n {
		k, err := c.Read(buf[:min(int64(len(buf)), n-got)])
		got += int64(k)
		if err != nil {
			return fmt.Errorf("after %d of %d bytes: %w", got, n, err)
		}
	}
	_, err = c.Write(binary.LittleEndian.AppendUint64(nil, uint64(got)))
	return err
}

// serveSource reads a length, sends that many bytes, and waits for the
// guest to close (so that nothing it still has to read is cut off).
func serveSource(c io.ReadWriteCloser) error {
	n, err := readLength(c)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	for sent := int64(0); sent < n; {
		k, err := c.Write(buf[:min(int64(len(buf)), n-sent)])
		sent += int64(k)
		if err != nil {
			return fmt.Errorf("after %d of %d bytes: %w", sent, n, err)
		}
	}
	_, err = io.Copy(io.Discard, c)
	return err
}

// startServers starts the three servers behind listeners made by listen.
func startServers(kind string, listen func(port uint32) (acceptor, error)) error {
	for port, h := range handlers {
		l, err := listen(port)
		if err != nil {
			return fmt.Errorf("%s port %d: %w", kind, port, err)
		}
		go serve(fmt.Sprintf("%s port %d", kind, port), l, h)
	}
	return nil
}
