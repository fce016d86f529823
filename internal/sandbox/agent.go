package sandbox

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/huskvm/husk/internal/envd/filesystem/filesystemconnect"
	"github.com/huskvm/husk/internal/envd/process/processconnect"
)

// Agent is a client of one guest's agent (the envd API), reached over the
// VM's vsock socket.
type Agent struct {
	hc         *http.Client
	base       string
	Process    processconnect.ProcessClient
	Filesystem filesystemconnect.FilesystemClient
}

// NewAgent returns a client for the agent behind the vsock socket sock that
// acts as user (chosen per request with "Authorization: Basic
// base64(user:)", as the e2b SDKs do).
func NewAgent(sock, user string) *Agent {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return DialVsock(ctx, sock, AgentPort)
		},
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
	}
	auth := "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"))
	hc := &http.Client{Transport: authTransport{tr, auth}}
	const base = "http://agent"
	return &Agent{hc: hc, base: base,
		Process:    processconnect.NewProcessClient(hc, base),
		Filesystem: filesystemconnect.NewFilesystemClient(hc, base)}
}

// HTTP returns the client that reaches the agent, and the base URL to use
// with it, for its plain HTTP endpoints (/files, /envs, /init).
func (a *Agent) HTTP() (*http.Client, string) { return a.hc, a.base }

// Health asks GET /health once.
func (a *Agent) Health(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.base+"/health", nil)
	if err != nil {
		return err
	}
	resp, err := a.hc.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("GET /health: %s", resp.Status)
	}
	return nil
}

// Close drops idle connections.
func (a *Agent) Close() { a.hc.CloseIdleConnections() }

// authTransport sets the Authorization header of every request.
type authTransport struct {
	rt   http.RoundTripper
	auth string
}

func (t authTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", t.auth)
	return t.rt.RoundTrip(r)
}

func (t authTransport) CloseIdleConnections() {
	if c, ok := t.rt.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}
