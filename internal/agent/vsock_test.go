package agent

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The vsock listener itself is exercised for real by every e2e test that
// talks to the agent in a guest (test/e2e/agent_test.go, run_test.go): the
// hosts here have no vsock loopback. These tests cover the connection
// wrapper on a Unix socket pair, which behaves the same below it.

// socketConn wraps one end of a non-blocking socket pair as the listener
// wraps an accepted vsock connection.
func socketConn(t *testing.T) (*vsockConn, *os.File) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	c := &vsockConn{File: os.NewFile(uintptr(fds[0]), "vsock-conn"), local: &VsockAddr{CID: 3, Port: 49983}, remote: &VsockAddr{CID: 2, Port: 1024}}
	peer := os.NewFile(uintptr(fds[1]), "peer")
	t.Cleanup(func() { c.Close(); peer.Close() })
	return c, peer
}

// TestVsockConnErrors: net/http tells a deadline it set itself from a broken
// connection by a direct net.Error assertion (not errors.As); an
// *os.PathError there made it cancel every streaming request.
func TestVsockConnErrors(t *testing.T) {
	c, peer := socketConn(t)
	if _, err := peer.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("read %q %v", buf, err)
	}
	_ = c.SetReadDeadline(time.Now())
	_, err := c.Read(buf)
	ne, ok := err.(net.Error)
	if !ok || !ne.Timeout() {
		t.Fatalf("read past its deadline: %T %v, want a net.Error that is a timeout", err, err)
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read past its deadline: %v does not wrap os.ErrDeadlineExceeded", err)
	}
	_ = c.SetReadDeadline(time.Time{})
	peer.Close()
	if _, err := c.Read(buf); err != io.EOF {
		t.Fatalf("read after the peer closed: %v, want io.EOF itself", err)
	}
	if c.RemoteAddr().Network() != "vsock" || c.LocalAddr().String() != "3:49983" {
		t.Errorf("addresses %v %v", c.LocalAddr(), c.RemoteAddr())
	}
}
