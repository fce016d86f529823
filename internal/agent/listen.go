package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
)

// Listen opens a listener from a spec:
//
//	vsock:PORT      AF_VSOCK, any CID (the guest's internal API)
//	tcp:HOST:PORT   TCP (the guest's public API; tests)
//	unix:PATH       a Unix socket
//	fd:N            an inherited listening socket (tests pass listeners this way)
func Listen(spec string) (net.Listener, error) {
	kind, arg, ok := strings.Cut(spec, ":")
	if !ok || arg == "" {
		return nil, fmt.Errorf("listener %q: want vsock:PORT, tcp:HOST:PORT, unix:PATH or fd:N", spec)
	}
	switch kind {
	case "vsock":
		port, err := strconv.ParseUint(arg, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("listener %q: bad port: %w", spec, err)
		}
		return ListenVsock(uint32(port))
	case "tcp":
		return net.Listen("tcp", arg)
	case "unix":
		return net.Listen("unix", arg)
	case "fd":
		n, err := strconv.Atoi(arg)
		if err != nil || n < 3 {
			return nil, fmt.Errorf("listener %q: want a descriptor number of 3 or more", spec)
		}
		f := os.NewFile(uintptr(n), spec)
		if f == nil {
			return nil, fmt.Errorf("listener %q: not an open descriptor", spec)
		}
		defer f.Close()
		ln, err := net.FileListener(f)
		if err != nil {
			return nil, fmt.Errorf("listener %q: %w", spec, err)
		}
		return ln, nil
	default:
		return nil, errors.New("listener " + strconv.Quote(spec) + ": unknown kind " + strconv.Quote(kind))
	}
}
