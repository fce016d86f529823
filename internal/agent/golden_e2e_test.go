package agent_test

import (
	"bufio"
	"bytes"
	"compress/flate"
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/huskvm/husk/internal/agent/agenttest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

// capturedRequest is one request of testdata/wire-capture-2.json, as the
// unmodified e2b SDK sent it to a recording server (PROTOCOL.md §9).
type capturedRequest struct {
	Method  string            `json:"method"`
	URL     string            `json:"url"`
	Headers map[string]string `json:"headers"`
	Body    json.RawMessage   `json:"body"`
}

type capturedFrame struct {
	Flags byte   `json:"flags"`
	JSON  string `json:"json"`
}

// body returns the request body: envelopes re-framed for streams, the
// string otherwise. The recorder stored binary bodies as lossy UTF-8; the
// one gzip body is repaired (its magic and CRC bytes were replaced by
// U+FFFD, its deflate payload is intact).
func (c capturedRequest) body(t *testing.T) []byte {
	t.Helper()
	var frames []capturedFrame
	if err := json.Unmarshal(c.Body, &frames); err == nil {
		var b bytes.Buffer
		for _, f := range frames {
			b.WriteByte(f.Flags)
			_ = binary.Write(&b, binary.BigEndian, uint32(len(f.JSON)))
			b.WriteString(f.JSON)
		}
		return b.Bytes()
	}
	var s string
	if err := json.Unmarshal(c.Body, &s); err != nil {
		t.Fatalf("body of %s %s: %v", c.Method, c.URL, err)
	}
	if c.Headers["content-encoding"] == "gzip" && strings.ContainsRune(s, '\uFFFD') {
		return repairGzip(t, []byte(s))
	}
	return []byte(s)
}

func repairGzip(t *testing.T, lossy []byte) []byte {
	t.Helper()
	const header = 1 + 3 + 8 // 0x1f, U+FFFD (3 bytes) for 0x8b, then 8 intact header bytes
	if len(lossy) < header+8 {
		t.Fatalf("gzip body too short: %q", lossy)
	}
	rest := lossy[header:] // deflate payload, CRC (first byte lossy), ISIZE
	zr := flate.NewReader(bytes.NewReader(rest))
	plain, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("captured deflate payload: %v", err)
	}
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	zw.Write(plain)
	zw.Close()
	out := b.Bytes()
	// Sanity: the repaired stream carries the same payload and size.
	if binary.LittleEndian.Uint32(out[len(out)-4:]) != uint32(len(plain)) || crc32.ChecksumIEEE(plain) != binary.LittleEndian.Uint32(out[len(out)-8:]) {
		t.Fatal("repaired gzip is inconsistent")
	}
	return out
}

// normalise removes what varies from run to run: pids, times, sizes of
// directories, keepalives.
var (
	rePid   = regexp.MustCompile(`"pid":\d+`)
	reTime  = regexp.MustCompile(`"modifiedTime":"[^"]*"`)
	reDate  = regexp.MustCompile(`(?m)^Date: .*$`)
	rePtyB  = regexp.MustCompile(`"pty":"[^"]*"`)
	reDirSz = regexp.MustCompile(`"size":"\d+"`)
)

func normalise(s string) string {
	s = rePid.ReplaceAllString(s, `"pid":PID`)
	s = reTime.ReplaceAllString(s, `"modifiedTime":"TIME"`)
	s = reDate.ReplaceAllString(s, "Date: DATE")
	s = rePtyB.ReplaceAllString(s, `"pty":"PTY-BYTES"`)
	s = reDirSz.ReplaceAllString(s, `"size":"SIZE"`)
	return s
}

// TestWireCaptureGolden replays every envd request of the capture against the
// agent, with its exact headers (the captured X-Access-Token is the agent's
// token here) and body, and compares the normalised responses with
// testdata/golden. Control-plane requests in the capture are not the
// agent's and are skipped.
func TestWireCaptureGolden(t *testing.T) {
	raw, err := os.ReadFile("testdata/wire-capture-2.json")
	if err != nil {
		t.Fatal(err)
	}
	var reqs []capturedRequest
	if err := json.Unmarshal(raw, &reqs); err != nil {
		t.Fatal(err)
	}
	e := startAgent(t, agenttest.Options{Token: "secret-token"})
	// What the capture's requests refer to: a.txt for the download.
	if code, _, b := e.do("POST", e.a.URL+"/files?path=a.txt", strings.NewReader("hello"), map[string]string{
		"Content-Type": "application/octet-stream", "X-Access-Token": "secret-token"}); code != 200 {
		t.Fatalf("setup: %d %s", code, b)
	}
	replayed := 0
	for i, c := range reqs {
		path, _, _ := strings.Cut(c.URL, "?")
		if !isAgentPath(path) {
			continue
		}
		replayed++
		name := fmt.Sprintf("%02d_%s_%s", i, c.Method, strings.NewReplacer("/", "_", ".", "_").Replace(strings.TrimPrefix(path, "/")))
		t.Run(name, func(t *testing.T) {
			got := replay(t, e, c)
			golden := filepath.Join("testdata", "golden", name+".txt")
			if *update {
				if err := os.MkdirAll(filepath.Dir(golden), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if compactJSON(got) != compactJSON(string(want)) {
				t.Errorf("response differs from %s\n--- got\n%s\n--- want\n%s", golden, got, want)
			}
		})
	}
	if replayed != 6 {
		t.Fatalf("replayed %d requests, want the 6 envd ones", replayed)
	}
}

// compactJSON removes insignificant whitespace from the JSON object on each
// line: protojson deliberately varies its spacing between runs, so only the
// compacted form is stable.
func compactJSON(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		j := strings.IndexByte(l, '{')
		if j < 0 {
			continue
		}
		var b bytes.Buffer
		if json.Compact(&b, []byte(l[j:])) == nil {
			lines[i] = l[:j] + b.String()
		}
	}
	return strings.Join(lines, "\n")
}

func isAgentPath(p string) bool {
	return strings.HasPrefix(p, "/process.Process/") || strings.HasPrefix(p, "/filesystem.Filesystem/") ||
		p == "/files" || p == "/health" || p == "/envs"
}

// replay sends c and renders the response: status line, the headers that
// matter, and the body (one line per envelope for Connect streams).
func replay(t *testing.T, e *env, c capturedRequest) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, c.Method, e.a.URL+c.URL, bytes.NewReader(c.body(t)))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range c.Headers {
		switch k {
		case "host", "connection", "content-length", "transfer-encoding":
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := e.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out strings.Builder
	fmt.Fprintf(&out, "%d\n", resp.StatusCode)
	for _, h := range []string{"Content-Type", "Content-Encoding", "Content-Disposition"} {
		if v := resp.Header.Get(h); v != "" {
			fmt.Fprintf(&out, "%s: %s\n", h, v)
		}
	}
	out.WriteString("\n")
	if resp.Header.Get("Content-Type") != "application/connect+json" {
		b, _ := io.ReadAll(resp.Body)
		if resp.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			b, _ = io.ReadAll(zr)
			out.WriteString("(gunzipped) ")
		}
		out.WriteString(normalise(string(b)))
		return out.String()
	}
	// A Connect stream. The shell and the watch do not end by themselves:
	// act on them after their first event.
	br := bufio.NewReader(resp.Body)
	for n := 0; ; n++ {
		flags, msg, err := readEnvelope(br)
		if err != nil {
			t.Fatalf("envelope %d: %v\n%s", n, err, out.String())
		}
		if strings.Contains(msg, `"keepalive"`) {
			continue
		}
		if strings.Contains(msg, `"pty":`) {
			continue // the prompt and echo of an interactive shell vary
		}
		fmt.Fprintf(&out, "frame flags=%#02x %s\n", flags, normalise(msg))
		if flags&0x02 != 0 {
			return out.String()
		}
		if strings.Contains(msg, `"filesystem":`) {
			out.WriteString("(client closes the watch)\n")
			return out.String()
		}
		if n == 0 {
			act(t, e, c, msg)
		}
	}
}

// act drives a stream that would not end by itself.
func act(t *testing.T, e *env, c capturedRequest, first string) {
	t.Helper()
	hdr := map[string]string{"Content-Type": "application/json", "X-Access-Token": "secret-token"}
	switch {
	case strings.Contains(string(c.Body), `\"-i\"`): // the PTY shell
		var ev struct {
			Event struct {
				Start struct {
					Pid int `json:"pid"`
				} `json:"start"`
			} `json:"event"`
		}
		_ = json.Unmarshal([]byte(first), &ev)
		in := fmt.Sprintf(`{"process":{"pid":%d},"input":{"pty":"ZXhpdCAzCg=="}}`, ev.Event.Start.Pid) // "exit 3\n"
		if code, _, b := e.do("POST", e.a.URL+"/process.Process/SendInput", strings.NewReader(in), hdr); code != 200 {
			t.Fatalf("SendInput: %d %s", code, b)
		}
	case strings.HasSuffix(c.URL, "/WatchDir"):
		// Made by a process of the user, so that the entry is complete
		// when the event is read (MakeDir creates, then chowns).
		x := *e
		x.proc = newProcClient(e, "secret-token")
		if r, err := x.shell(context.Background(), "", "mkdir /home/user/watched"); err != nil || r.end.GetExitCode() != 0 {
			t.Fatalf("mkdir: %v %v", err, r)
		}
	}
}

func readEnvelope(r *bufio.Reader) (byte, string, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, "", err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > 1<<20 {
		return 0, "", fmt.Errorf("envelope of %d bytes", n)
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(r, msg); err != nil {
		return 0, "", err
	}
	return hdr[0], string(msg), nil
}
