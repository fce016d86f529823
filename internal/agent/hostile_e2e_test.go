package agent_test

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/huskvm/husk/internal/agent/agenttest"
	"github.com/huskvm/husk/internal/envd/process"
)

func TestStreamInput(t *testing.T) {
	e := startAgent(t, agenttest.Options{})
	ctx := ctxTimeout(t, 60*time.Second)
	for name, client := range map[string]*env{"json": e, "binary": func() *env { x := *e; x.proc = e.procB; return &x }()} {
		t.Run(name, func(t *testing.T) {
			tr := true
			stream, err := client.proc.Start(ctx, connect.NewRequest(&process.StartRequest{
				Process: &process.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", "cat; echo end"}},
				Stdin:   &tr,
			}))
			if err != nil {
				t.Fatal(err)
			}
			defer stream.Close()
			if !stream.Receive() {
				t.Fatal(stream.Err())
			}
			pid := stream.Msg().GetEvent().GetStart().GetPid()
			in := client.proc.StreamInput(ctx)
			sel := &process.ProcessSelector{Selector: &process.ProcessSelector_Pid{Pid: pid}}
			msgs := []*process.StreamInputRequest{
				{Event: &process.StreamInputRequest_Start{Start: &process.StreamInputRequest_StartEvent{Process: sel}}},
				{Event: &process.StreamInputRequest_Keepalive{Keepalive: &process.StreamInputRequest_KeepAlive{}}},
			}
			for i := 0; i < 5; i++ {
				msgs = append(msgs, &process.StreamInputRequest{Event: &process.StreamInputRequest_Data{Data: &process.StreamInputRequest_DataEvent{
					Input: &process.ProcessInput{Input: &process.ProcessInput_Stdin{Stdin: []byte{byte('a' + i)}}},
				}}})
			}
			for _, m := range msgs {
				if err := in.Send(m); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := in.CloseAndReceive(); err != nil {
				t.Fatal(err)
			}
			if _, err := client.proc.CloseStdin(ctx, connect.NewRequest(&process.CloseStdinRequest{Process: sel})); err != nil {
				t.Fatal(err)
			}
			r := &result{}
			for stream.Receive() {
				collect(r, stream.Msg().GetEvent())
			}
			if string(r.stdout) != "abcdeend\n" || r.end.GetExitCode() != 0 {
				t.Fatalf("stdout %q end %v", r.stdout, r.end)
			}
			// Data before start is refused.
			bad := client.proc.StreamInput(ctx)
			_ = bad.Send(msgs[2])
			if _, err := bad.CloseAndReceive(); connectCode(err) != connect.CodeInvalidArgument {
				t.Errorf("data before start: %v", err)
			}
		})
	}
}

// TestHostileBodies sends what no SDK would: every answer is a 4xx (or a
// Connect error code) with a message, and the agent keeps serving.
func TestHostileBodies(t *testing.T) {
	e := startAgent(t, agenttest.Options{})
	ctx := ctxTimeout(t, 60*time.Second)
	json := map[string]string{"Content-Type": "application/json"}
	stream := map[string]string{"Content-Type": "application/connect+json"}
	for _, tc := range []struct {
		name, path, body string
		hdr              map[string]string
		wantStatus       int
		wantIn           string
	}{
		{"not json", "/filesystem.Filesystem/Stat", "{", json, 400, "invalid_argument"},
		{"wrong types", "/filesystem.Filesystem/ListDir", `{"path":1,"depth":"x"}`, json, 400, "invalid_argument"},
		{"unknown method", "/process.Process/Nope", `{}`, json, 404, ""},
		{"bad content type", "/process.Process/List", `{}`, map[string]string{"Content-Type": "text/plain"}, 415, ""},
		{"oversized message", "/process.Process/SendInput", `{"input":{"stdin":"` + strings.Repeat("A", 17<<20) + `"}}`, json, 429, "resource_exhausted"},
		{"truncated envelope", "/process.Process/Start", "\x00\x00\x00\x01\x00{", stream, 200, "protocol error"},
		{"huge envelope length", "/process.Process/Start", "\x00\x7f\xff\xff\xff{}", stream, 200, "resource_exhausted"},
		{"compressed envelope", "/process.Process/Start", "\x01\x00\x00\x00\x02{}", stream, 200, "internal"},
		{"bad basic auth", "/process.Process/List", `{}`, map[string]string{"Content-Type": "application/json", "Authorization": "Basic !!"}, 200, ""},
		{"cmd with NUL", "/process.Process/Start", envelope(`{"process":{"cmd":"a\u0000b"}}`), stream, 200, "invalid_argument"},
		{"too many args", "/process.Process/Start", envelope(`{"process":{"cmd":"true","args":[` + strings.Repeat(`"x",`, 20000) + `"x"]}}`), stream, 200, "invalid_argument"},
		{"path too long", "/filesystem.Filesystem/Stat", `{"path":"/` + strings.Repeat("a", 5000) + `"}`, json, 400, "invalid_argument"},
		{"init on public", "/init", `{}`, json, 404, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, b := e.do("POST", e.a.URL+tc.path, strings.NewReader(tc.body), tc.hdr)
			if code != tc.wantStatus || !bytes.Contains(b, []byte(tc.wantIn)) {
				t.Fatalf("%d %.300s, want %d containing %q", code, b, tc.wantStatus, tc.wantIn)
			}
		})
	}
	if code, _, _ := e.do("GET", e.a.URL+"/health", nil, nil); code != http.StatusNoContent {
		t.Fatalf("agent unhealthy after hostile input: %d", code)
	}
	if r, err := e.shell(ctx, "", "echo still here"); err != nil || string(r.stdout) != "still here\n" {
		t.Fatalf("after hostile input: %v %q", err, r.stdout)
	}
}

func envelope(js string) string {
	n := len(js)
	return string([]byte{0, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}) + js
}
