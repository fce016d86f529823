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

// TestVsockListener accepts a connection over the kernel's vsock loopback
// (CID 1), where the host has it.
func TestVsockListener(t *testing.T) {
	const port = 49983 + 1000
	ln, err := ListenVsock(port)
	if err != nil {
		if errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EADDRNOTAVAIL) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.EADDRINUSE) {
			t.Skipf("no usable vsock here: %v", err)
		}
		t.Fatal(err)
	}
	defer ln.Close()
	if ln.Addr().Network() != "vsock" {
		t.Errorf("network %q", ln.Addr().Network())
	}
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Skipf("vsock socket: %v", err)
	}
	client := os.NewFile(uintptr(fd), "vsock-client")
	defer client.Close()
	if err := unix.Connect(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_LOCAL, Port: port}); err != nil {
		t.Skipf("no vsock loopback (vsock_loopback module): %v", err)
	}
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := client.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("read %q %v", buf, err)
	}
	// net/http tells its own deadline from a broken connection by a direct
	// net.Error assertion, not errors.As.
	_ = conn.SetReadDeadline(time.Now())
	if _, err := conn.Read(buf); err == nil {
		t.Fatal("read past its deadline succeeded")
	} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatalf("read past its deadline: %T %v, want a net.Error that is a timeout", err, err)
	}
	_ = conn.SetReadDeadline(time.Time{})
	if conn.RemoteAddr().Network() != "vsock" {
		t.Errorf("remote %v", conn.RemoteAddr())
	}
	// Close unblocks a pending Accept.
	done := make(chan error, 1)
	go func() { _, err := ln.Accept(); done <- err }()
	time.Sleep(50 * time.Millisecond)
	ln.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Accept after Close succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept did not return after Close")
	}
}
