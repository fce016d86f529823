package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// AgentPort is the guest agent's vsock port (DESIGN.md: envd on 49983).
const AgentPort = 49983

// maxHandshakeLine caps the VMM's answer to CONNECT ("OK <port>\n").
const maxHandshakeLine = 32

// DialVsock opens a stream to guest port port through the VMM's vsock Unix
// socket at sock, with Firecracker's convention: write "CONNECT <port>\n",
// read "OK <host port>\n". The answer is read a byte at a time so that no
// byte of the stream that follows is consumed.
func DialVsock(ctx context.Context, sock string, port uint32) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	} else {
		c.SetDeadline(time.Now().Add(30 * time.Second))
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := fmt.Fprintf(c, "CONNECT %d\n", port); err != nil {
		c.Close()
		return nil, fmt.Errorf("vsock connect to port %d: %w", port, err)
	}
	line, err := readLine(c, maxHandshakeLine)
	if err == nil {
		err = checkOK(line)
	}
	if err != nil {
		c.Close()
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("vsock connect to port %d: %w", port, err)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// readLine reads up to and excluding '\n', at most max bytes.
func readLine(c net.Conn, max int) (string, error) {
	var b [1]byte
	var line []byte
	for len(line) <= max {
		if _, err := c.Read(b[:]); err != nil {
			if len(line) == 0 {
				return "", fmt.Errorf("no answer (the guest has no listener there yet?): %w", err)
			}
			return "", err
		}
		if b[0] == '\n' {
			return string(line), nil
		}
		line = append(line, b[0])
	}
	return "", errors.New("answer too long")
}

// checkOK accepts "OK <n>".
func checkOK(line string) error {
	rest, ok := strings.CutPrefix(line, "OK ")
	if !ok {
		return fmt.Errorf("answer %q, want OK <port>", line)
	}
	if _, err := strconv.ParseUint(rest, 10, 32); err != nil {
		return fmt.Errorf("answer %q, want OK <port>", line)
	}
	return nil
}
