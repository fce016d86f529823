package agent_test

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/huskvm/husk/internal/agent/agenttest"
	"github.com/huskvm/husk/internal/envd/filesystem/filesystemconnect"
	"github.com/huskvm/husk/internal/envd/process"
	"github.com/huskvm/husk/internal/envd/process/processconnect"
)

func TestMain(m *testing.M) { agenttest.Main(m) }

// env is one agent under test with its clients. The JSON clients speak
// exactly as the e2b JS SDK does (Connect protocol, JSON codec); the binary
// ones as the Python SDK does.
type env struct {
	t     *testing.T
	a     *agenttest.Agent
	http  *http.Client
	proc  processconnect.ProcessClient // JSON
	procB processconnect.ProcessClient // binary protobuf
	fs    filesystemconnect.FilesystemClient
	token string
}

func startAgent(t *testing.T, opts agenttest.Options) *env {
	t.Helper()
	a := agenttest.Start(t, opts)
	hc := &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: 2000,
		DisableCompression:  true,
	}}
	t.Cleanup(hc.CloseIdleConnections)
	e := &env{t: t, a: a, http: hc, token: opts.Token}
	var copts []connect.ClientOption
	if opts.Token != "" {
		copts = append(copts, connect.WithInterceptors(tokenInterceptor(opts.Token)))
	}
	e.proc = processconnect.NewProcessClient(hc, a.URL, append(copts, connect.WithProtoJSON())...)
	e.procB = processconnect.NewProcessClient(hc, a.URL, copts...)
	e.fs = filesystemconnect.NewFilesystemClient(hc, a.URL, append(copts, connect.WithProtoJSON())...)
	return e
}

// tokenInterceptor adds X-Access-Token to every call.
type tokenInterceptor string

func (ti tokenInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set("X-Access-Token", string(ti))
		return next(ctx, req)
	}
}

func (ti tokenInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		conn.RequestHeader().Set("X-Access-Token", string(ti))
		return conn
	}
}

func (ti tokenInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

func basicAuth(user string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"))
}

// withUser sets the Basic-auth user on a request.
func withUser[T any](req *connect.Request[T], user string) *connect.Request[T] {
	if user != "" {
		req.Header().Set("Authorization", basicAuth(user))
	}
	return req
}

// result is everything a Start or Connect stream carried.
type result struct {
	pid        uint32
	stdout     []byte
	stderr     []byte
	pty        []byte
	end        *process.ProcessEvent_EndEvent
	keepalives int
	first      string // kind of the first event
}

// shell starts "bash -l -c script" as the SDK does and collects the stream.
func (e *env) shell(ctx context.Context, user, script string) (*result, error) {
	f := false
	req := connect.NewRequest(&process.StartRequest{
		Process: &process.ProcessConfig{Cmd: "/bin/bash", Args: []string{"-l", "-c", script}},
		Stdin:   &f,
	})
	return e.run(ctx, withUser(req, user))
}

func (e *env) run(ctx context.Context, req *connect.Request[process.StartRequest]) (*result, error) {
	stream, err := e.proc.Start(ctx, req)
	if err != nil {
		return nil, err
	}
	defer stream.Close()
	r := &result{}
	for stream.Receive() {
		collect(r, stream.Msg().GetEvent())
	}
	return r, stream.Err()
}

func collect(r *result, ev *process.ProcessEvent) {
	kind := ""
	switch v := ev.GetEvent().(type) {
	case *process.ProcessEvent_Start:
		kind = "start"
		r.pid = v.Start.GetPid()
	case *process.ProcessEvent_Data:
		kind = "data"
		r.stdout = append(r.stdout, v.Data.GetStdout()...)
		r.stderr = append(r.stderr, v.Data.GetStderr()...)
		r.pty = append(r.pty, v.Data.GetPty()...)
	case *process.ProcessEvent_End:
		kind = "end"
		r.end = v.End
	case *process.ProcessEvent_Keepalive:
		kind = "keepalive"
		r.keepalives++
	}
	if r.first == "" {
		r.first = kind
	}
}

func connectCode(err error) connect.Code {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce.Code()
	}
	return connect.CodeUnknown
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func itoa(i int) string { return strconv.Itoa(i) }
