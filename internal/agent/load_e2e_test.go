package agent_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/huskvm/husk/internal/agent/agenttest"
	"github.com/huskvm/husk/internal/envd/process"
)

// Test100MiBOutput streams 100 MiB of random bytes through stdout (JSON
// codec, as the SDK reads it) and through /files both ways, and checks
// every byte with SHA-256.
func Test100MiBOutput(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	e := startAgent(t, agenttest.Options{})
	ctx := ctxTimeout(t, 5*time.Minute)
	r, err := e.shell(ctx, "", "head -c 104857600 /dev/urandom > /tmp/big && sha256sum /tmp/big | cut -d' ' -f1")
	if err != nil || r.end.GetExitCode() != 0 {
		t.Fatalf("make file: %v %v %s", err, r.end, r.stderr)
	}
	want := strings.TrimSpace(string(r.stdout))

	// The stream is read as raw Connect envelopes and decoded with
	// encoding/json: the bytes are exactly what the SDK receives, and the
	// test does not spend minutes in protojson under -race.
	start := time.Now()
	js := `{"process":{"cmd":"/bin/cat","args":["/tmp/big"]},"stdin":false}`
	var env bytes.Buffer
	env.WriteByte(0)
	_ = binary.Write(&env, binary.BigEndian, uint32(len(js)))
	env.WriteString(js)
	req, _ := http.NewRequestWithContext(ctx, "POST", e.a.URL+"/process.Process/Start", &env)
	req.Header.Set("Content-Type", "application/connect+json")
	req.Header.Set("Connect-Protocol-Version", "1")
	resp, err := e.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/connect+json" {
		t.Fatalf("start: %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	br := bufio.NewReaderSize(resp.Body, 1<<20)
	h := sha256.New()
	n, events := 0, 0
	var end *struct {
		ExitCode int32 `json:"exitCode"`
		Status   string
	}
	for {
		flags, msg, err := readEnvelope(br)
		if err != nil {
			t.Fatalf("after %d events: %v", events, err)
		}
		if flags&2 != 0 {
			if msg != "{}" {
				t.Fatalf("end of stream: %s", msg)
			}
			break
		}
		var ev struct {
			Event struct {
				Data *struct {
					Stdout []byte `json:"stdout"`
					Stderr []byte `json:"stderr"`
				} `json:"data"`
				End *struct {
					ExitCode int32 `json:"exitCode"`
					Status   string
				} `json:"end"`
			} `json:"event"`
		}
		if err := json.Unmarshal([]byte(msg), &ev); err != nil {
			t.Fatalf("event %d: %v", events, err)
		}
		if d := ev.Event.Data; d != nil {
			if len(d.Stderr) > 0 {
				t.Fatalf("stderr: %q", d.Stderr)
			}
			h.Write(d.Stdout)
			n += len(d.Stdout)
			events++
		}
		if ev.Event.End != nil {
			end = ev.Event.End
		}
	}
	resp.Body.Close()
	got := hex.EncodeToString(h.Sum(nil))
	if n != 100<<20 || got != want || end == nil || end.ExitCode != 0 {
		t.Fatalf("stdout: %d bytes sha256 %s end %v, want %d bytes %s", n, got, end, 100<<20, want)
	}
	t.Logf("100 MiB stdout in %d events, %v", events, time.Since(start))

	// Download, and upload it again under another name.
	start = time.Now()
	resp, err = e.http.Get(e.a.URL + "/files?path=/tmp/big")
	if err != nil {
		t.Fatal(err)
	}
	body := sha256.New()
	var copy bytes.Buffer
	if _, err := io.Copy(io.MultiWriter(body, &copy), resp.Body); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := hex.EncodeToString(body.Sum(nil)); resp.StatusCode != 200 || got != want {
		t.Fatalf("download: %d sha256 %s", resp.StatusCode, got)
	}
	req, _ = http.NewRequest("POST", e.a.URL+"/files?path=/tmp/big2", &copy)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = e.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("upload: %d", resp.StatusCode)
	}
	r, err = e.shell(ctx, "", "sha256sum /tmp/big2 | cut -d' ' -f1")
	if err != nil || strings.TrimSpace(string(r.stdout)) != want {
		t.Fatalf("uploaded copy: %q %v", r.stdout, err)
	}
	t.Logf("100 MiB download and upload in %v", time.Since(start))
}

// TestBinaryOutput sends every byte value through stdout and stderr.
func TestBinaryOutput(t *testing.T) {
	e := startAgent(t, agenttest.Options{})
	ctx := ctxTimeout(t, 60*time.Second)
	var all bytes.Buffer
	for i := 0; i < 4; i++ {
		for b := 0; b < 256; b++ {
			all.WriteByte(byte(b))
		}
	}
	// printf with octal escapes of all 256 values, four times, to both.
	var esc strings.Builder
	for _, b := range all.Bytes() {
		fmt.Fprintf(&esc, "\\%03o", b)
	}
	script := fmt.Sprintf("printf '%s'; printf '%s' >&2", esc.String(), esc.String())
	for _, c := range []struct {
		name string
		cl   func() *env
	}{{"json", func() *env { return e }}, {"binary", func() *env { x := *e; x.proc = e.procB; return &x }}} {
		r, err := c.cl().shell(ctx, "", script)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(r.stdout, all.Bytes()) || !bytes.Equal(r.stderr, all.Bytes()) {
			t.Fatalf("%s: stdout %d bytes, stderr %d bytes differ from the 1024 sent", c.name, len(r.stdout), len(r.stderr))
		}
	}
}

// TestThousandProcesses runs 1000 short processes at once, each exiting
// with its own status (i mod 256, the most an exit status holds) and
// printing its own number.
func TestThousandProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	e := startAgent(t, agenttest.Options{})
	ctx := ctxTimeout(t, 5*time.Minute)
	const n = 1000
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		pids     = map[uint32]int{}
		failures []string
	)
	start := time.Now()
	gate := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			f := false
			var r *result
			var err error
			for try := 0; try < 3; try++ {
				r, err = e.run(ctx, connect.NewRequest(&process.StartRequest{
					Process: &process.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", fmt.Sprintf("sleep 1; echo %d; exit %d", i, i%256)}},
					Stdin:   &f,
				}))
				if err == nil || connectCode(err) != connect.CodeUnavailable {
					break
				}
			}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				failures = append(failures, fmt.Sprintf("%d: %v", i, err))
			case r.end == nil || r.end.GetExitCode() != int32(i%256) || string(r.stdout) != fmt.Sprintf("%d\n", i):
				failures = append(failures, fmt.Sprintf("%d: stdout %q end %v", i, r.stdout, r.end))
			default:
				if j, dup := pids[r.pid]; dup {
					failures = append(failures, fmt.Sprintf("%d and %d had pid %d", i, j, r.pid))
				}
				pids[r.pid] = i
			}
		}()
	}
	close(gate)
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d of %d failed, e.g. %v", len(failures), n, failures[:min(5, len(failures))])
	}
	t.Logf("%d concurrent processes in %v", n, time.Since(start))
	// None is left behind.
	lr, err := e.proc.List(context.Background(), connect.NewRequest(&process.ListRequest{}))
	if err != nil || len(lr.Msg.GetProcesses()) != 0 {
		t.Fatalf("still listed: %v %v", lr, err)
	}
}
