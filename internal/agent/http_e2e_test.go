package agent_test

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/huskvm/husk/internal/agent"
	"github.com/huskvm/husk/internal/agent/agenttest"
	"github.com/huskvm/husk/internal/envd/filesystem"
	"github.com/huskvm/husk/internal/envd/process/processconnect"
)

// do sends a request and returns status, headers and body.
func (e *env) do(method, rawURL string, body io.Reader, hdr map[string]string) (int, http.Header, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, rawURL, body)
	if err != nil {
		e.t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := e.http.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

type restErr struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func decodeErr(t *testing.T, b []byte) restErr {
	t.Helper()
	var r restErr
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("error body %q: %v", b, err)
	}
	return r
}

func TestHealthEnvsInit(t *testing.T) {
	e := startAgent(t, agenttest.Options{})
	if code, _, _ := e.do("GET", e.a.URL+"/health", nil, nil); code != http.StatusNoContent {
		t.Fatalf("health %d", code)
	}
	// /init is internal: 404 on the public listener.
	if code, _, b := e.do("POST", e.a.URL+"/init", strings.NewReader(`{}`), nil); code != http.StatusNotFound {
		t.Fatalf("public /init %d %s", code, b)
	}
	body := `{"envVars":{"SANDBOX_VAR":"sv","A":"1"},"accessToken":"tok-1","defaultUser":"root","defaultWorkdir":"/tmp","timestamp":"2020-01-01T00:00:00Z"}`
	if code, _, b := e.do("POST", e.a.InternalURL+"/init", strings.NewReader(body), nil); code != http.StatusNoContent {
		t.Fatalf("/init %d %s", code, b)
	}
	// The host clock was not touched (ManageSystem is off outside a guest).
	if time.Now().Year() < 2024 {
		t.Fatal("clock was set")
	}
	// Now the token is required everywhere but /health and signed /files.
	if code, _, b := e.do("GET", e.a.URL+"/envs", nil, nil); code != http.StatusUnauthorized || decodeErr(t, b).Code != 401 {
		t.Fatalf("/envs without token %d %s", code, b)
	}
	code, _, b := e.do("GET", e.a.URL+"/envs", nil, map[string]string{"X-Access-Token": "tok-1"})
	if code != http.StatusOK {
		t.Fatalf("/envs %d %s", code, b)
	}
	var envs map[string]string
	if err := json.Unmarshal(b, &envs); err != nil || envs["SANDBOX_VAR"] != "sv" || envs["A"] != "1" {
		t.Fatalf("/envs %s %v", b, err)
	}
	if code, _, _ := e.do("GET", e.a.URL+"/health", nil, nil); code != http.StatusNoContent {
		t.Fatalf("health with token set %d", code)
	}
	// /init itself now needs the current token.
	if code, _, _ := e.do("POST", e.a.InternalURL+"/init", strings.NewReader(`{"accessToken":"evil"}`), nil); code != http.StatusUnauthorized {
		t.Fatalf("/init without token %d", code)
	}
	// RPCs need it too; with it, the /init defaults and env apply.
	ctx := ctxTimeout(t, 30*time.Second)
	if _, err := e.shell(ctx, "", "true"); connectCode(err) != connect.CodeUnauthenticated {
		t.Fatalf("rpc without token: %v", err)
	}
	e2 := *e
	e2.proc = newProcClient(e, "tok-1")
	r, err := e2.shell(ctx, "", "echo $SANDBOX_VAR $(id -un) $PWD")
	if err != nil {
		t.Fatal(err)
	}
	if string(r.stdout) != "sv root /tmp\n" {
		t.Fatalf("after /init: %q", r.stdout)
	}
	// Bad /init bodies.
	for _, bad := range []string{`{`, `{"defaultUser":"ghost"}`, `{"envVars":{"A=B":"x"}}`, `{"caBundle":"junk"}`, `[1]`} {
		code, _, b := e.do("POST", e.a.InternalURL+"/init", strings.NewReader(bad), map[string]string{"X-Access-Token": "tok-1"})
		if code != http.StatusBadRequest || decodeErr(t, b).Code != 400 {
			t.Errorf("/init %s: %d %s", bad, code, b)
		}
	}
	if code, _, _ := e.do("GET", e.a.URL+"/nope", nil, nil); code != http.StatusNotFound {
		t.Errorf("unknown path %d", code)
	}
	if code, _, _ := e.do("DELETE", e.a.URL+"/files", nil, nil); code != http.StatusMethodNotAllowed {
		t.Errorf("DELETE /files %d", code)
	}
}

func multipartBody(t *testing.T, files map[string]string, order []string) (string, *bytes.Buffer) {
	t.Helper()
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	for _, name := range order {
		fw, err := mw.CreateFormFile("file", name)
		if err != nil {
			t.Fatal(err)
		}
		fw.Write([]byte(files[name]))
	}
	mw.Close()
	return mw.FormDataContentType(), &b
}

type uploaded struct {
	Name     string            `json:"name"`
	Path     string            `json:"path"`
	Type     string            `json:"type"`
	Metadata map[string]string `json:"metadata"`
}

func TestFilesUploadDownload(t *testing.T) {
	e := startAgent(t, agenttest.Options{})
	ctx := ctxTimeout(t, 60*time.Second)

	// Single multipart upload, as files.write(path, data).
	ct, body := multipartBody(t, map[string]string{"a.txt": "hello"}, []string{"a.txt"})
	code, _, b := e.do("POST", e.a.URL+"/files?path=a.txt", body, map[string]string{"Content-Type": ct})
	if code != http.StatusOK {
		t.Fatalf("upload %d %s", code, b)
	}
	var ups []uploaded
	if err := json.Unmarshal(b, &ups); err != nil || len(ups) != 1 || ups[0].Path != "/home/user/a.txt" || ups[0].Name != "a.txt" || ups[0].Type != "file" {
		t.Fatalf("upload response %s", b)
	}
	// Owned by user, readable back.
	r, err := e.shell(ctx, "", "stat -c '%U:%G %a' a.txt; cat a.txt")
	if err != nil || string(r.stdout) != "user:user 644\nhello" {
		t.Fatalf("after upload: %q %v", r.stdout, err)
	}
	code, hdr, b := e.do("GET", e.a.URL+"/files?path=a.txt", nil, nil)
	if code != http.StatusOK || string(b) != "hello" || hdr.Get("Content-Length") != "5" || !strings.Contains(hdr.Get("Content-Disposition"), `filename=a.txt`) {
		t.Fatalf("download %d %q %v", code, b, hdr)
	}
	// Gzip download when asked.
	code, hdr, b = e.do("GET", e.a.URL+"/files?path=a.txt", nil, map[string]string{"Accept-Encoding": "gzip"})
	if code != http.StatusOK || hdr.Get("Content-Encoding") != "gzip" {
		t.Fatalf("gzip download %d %v", code, hdr)
	}
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if plain, _ := io.ReadAll(zr); string(plain) != "hello" {
		t.Fatalf("gunzipped %q", plain)
	}
	if code, _, _ := e.do("GET", e.a.URL+"/files?path=a.txt", nil, map[string]string{"Accept-Encoding": "identity;q=0"}); code != http.StatusNotAcceptable {
		t.Errorf("no acceptable encoding: %d", code)
	}
	// Range is served.
	code, _, b = e.do("GET", e.a.URL+"/files?path=a.txt", nil, map[string]string{"Range": "bytes=1-3"})
	if code != http.StatusPartialContent || string(b) != "ell" {
		t.Errorf("range %d %q", code, b)
	}

	// Multi-file multipart: filenames are paths, absolute or relative.
	ct, body = multipartBody(t, map[string]string{"/tmp/x/a.txt": "A", "sub/dir/b.txt": "B"}, []string{"/tmp/x/a.txt", "sub/dir/b.txt"})
	code, _, b = e.do("POST", e.a.URL+"/files", body, map[string]string{"Content-Type": ct})
	if code != http.StatusOK {
		t.Fatalf("multi upload %d %s", code, b)
	}
	ups = nil
	_ = json.Unmarshal(b, &ups)
	if len(ups) != 2 || ups[0].Path != "/tmp/x/a.txt" || ups[1].Path != "/home/user/sub/dir/b.txt" {
		t.Fatalf("multi upload response %s", b)
	}
	r, err = e.shell(ctx, "", "stat -c %U /tmp/x /home/user/sub /home/user/sub/dir; cat /tmp/x/a.txt sub/dir/b.txt")
	if err != nil || string(r.stdout) != "user\nuser\nuser\nAB" {
		t.Fatalf("parents: %q %v", r.stdout, err)
	}

	// Octet-stream with gzip and metadata, as files.write with {gzip:true}.
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte("abc"))
	zw.Close()
	code, _, b = e.do("POST", e.a.URL+"/files?path=big.bin", &gz, map[string]string{
		"Content-Type": "application/octet-stream", "Content-Encoding": "gzip", "X-Metadata-Owner": "me", "X-Metadata-Kind": "test",
	})
	if code != http.StatusOK {
		t.Fatalf("octet upload %d %s", code, b)
	}
	ups = nil
	_ = json.Unmarshal(b, &ups)
	if len(ups) != 1 || ups[0].Metadata["owner"] != "me" || ups[0].Metadata["kind"] != "test" {
		t.Fatalf("octet upload response %s", b)
	}
	st, err := e.fs.Stat(ctx, connect.NewRequest(&filesystem.StatRequest{Path: "big.bin"}))
	if err != nil {
		t.Fatal(err)
	}
	if st.Msg.GetEntry().GetSize() != 3 || st.Msg.GetEntry().GetMetadata()["owner"] != "me" {
		t.Fatalf("stat after metadata upload: %v", st.Msg.GetEntry())
	}
	// A second upload without metadata clears it.
	code, _, _ = e.do("POST", e.a.URL+"/files?path=big.bin", strings.NewReader("xyz!"), map[string]string{"Content-Type": "application/octet-stream"})
	if code != http.StatusOK {
		t.Fatal(code)
	}
	st, _ = e.fs.Stat(ctx, connect.NewRequest(&filesystem.StatRequest{Path: "big.bin"}))
	if len(st.Msg.GetEntry().GetMetadata()) != 0 || st.Msg.GetEntry().GetSize() != 4 {
		t.Fatalf("metadata not replaced: %v", st.Msg.GetEntry())
	}

	// As root: owned by root, relative to /root.
	code, _, b = e.do("POST", e.a.URL+"/files?path=r.txt&username=root", strings.NewReader("r"), map[string]string{"Content-Type": "application/octet-stream"})
	if code != http.StatusOK || !strings.Contains(string(b), `"/root/r.txt"`) {
		t.Fatalf("root upload %d %s", code, b)
	}

	// Binary content survives both ways.
	bin := make([]byte, 256*1024)
	for i := range bin {
		bin[i] = byte(i * 7)
	}
	code, _, _ = e.do("POST", e.a.URL+"/files?path=bin.dat", bytes.NewReader(bin), map[string]string{"Content-Type": "application/octet-stream"})
	if code != http.StatusOK {
		t.Fatal(code)
	}
	if code, _, b = e.do("GET", e.a.URL+"/files?path=bin.dat", nil, nil); code != http.StatusOK || !bytes.Equal(b, bin) {
		t.Fatalf("binary round trip: %d, %d bytes", code, len(b))
	}
}

func TestFilesErrors(t *testing.T) {
	e := startAgent(t, agenttest.Options{})
	octet := map[string]string{"Content-Type": "application/octet-stream"}
	ct, body := multipartBody(t, map[string]string{"d.txt": "1"}, []string{"d.txt"})
	_ = body
	for _, tc := range []struct {
		name, method, query string
		body                string
		hdr                 map[string]string
		want                int
		msg                 string
	}{
		{"missing file", "GET", "path=/nope.txt", "", nil, 404, "path '/nope.txt' does not exist"},
		{"directory", "GET", "path=/tmp", "", nil, 400, "path '/tmp' is a directory"},
		{"no path", "GET", "", "", nil, 400, ""},
		{"not regular", "GET", "path=/dev/null", "", nil, 400, ""},
		{"bad user", "GET", "path=a&username=ghost", "", nil, 401, "error looking up user 'ghost'"},
		{"nul in path", "GET", "path=a%00b", "", nil, 400, ""},
		{"upload bad type", "POST", "path=a", "x", map[string]string{"Content-Type": "text/plain"}, 400, ""},
		{"upload no type", "POST", "path=a", "x", nil, 400, ""},
		{"upload octet no path", "POST", "", "x", octet, 400, ""},
		{"upload bad encoding", "POST", "path=a", "x", map[string]string{"Content-Type": "application/octet-stream", "Content-Encoding": "br"}, 400, ""},
		{"upload bad gzip", "POST", "path=a", "not gzip", map[string]string{"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"}, 400, ""},
		{"upload onto dir", "POST", "path=/tmp", "x", octet, 400, ""},
		{"upload under file", "POST", "path=/etc/passwd/x", "x", octet, 400, ""},
		{"upload bad metadata", "POST", "path=m", "x", map[string]string{"Content-Type": "application/octet-stream", "X-Metadata-K": "caf\xc3\xa9"}, 400, ""},
		{"multipart no boundary", "POST", "path=a", "x", map[string]string{"Content-Type": "multipart/form-data"}, 400, ""},
		{"multipart truncated", "POST", "path=a", "--" + strings.TrimPrefix(ct, "multipart/form-data; boundary=") + "\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nabc", map[string]string{"Content-Type": ct}, 400, ""},
		{"multipart no file part", "POST", "", "--" + strings.TrimPrefix(ct, "multipart/form-data; boundary=") + "--\r\n", map[string]string{"Content-Type": ct}, 400, ""},
		{"upload bad user", "POST", "path=a&username=ghost", "x", octet, 401, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, hdr, b := e.do(tc.method, e.a.URL+"/files?"+tc.query, strings.NewReader(tc.body), tc.hdr)
			if code != tc.want {
				t.Fatalf("status %d, want %d: %s", code, tc.want, b)
			}
			if !strings.HasPrefix(hdr.Get("Content-Type"), "application/json") {
				t.Errorf("content type %q", hdr.Get("Content-Type"))
			}
			r := decodeErr(t, b)
			if r.Code != tc.want || !strings.Contains(r.Message, tc.msg) || r.Message == "" {
				t.Errorf("body %s, want code %d and %q", b, tc.want, tc.msg)
			}
		})
	}
	// The same path twice in one multipart upload.
	ct2, body2 := multipartBody(t, map[string]string{"dup.txt": "1", "/home/user/dup.txt": "2"}, []string{"dup.txt", "/home/user/dup.txt"})
	if code, _, b := e.do("POST", e.a.URL+"/files", body2, map[string]string{"Content-Type": ct2}); code != 400 {
		t.Errorf("duplicate path: %d %s", code, b)
	}
}

func TestFilesSignedURLs(t *testing.T) {
	const token = "0tQG31xiMp0IOQfaz9dcwi72L1CPo8e0"
	e := startAgent(t, agenttest.Options{Token: token})
	up := func(q url.Values, hdr map[string]string) (int, []byte) {
		h := map[string]string{"Content-Type": "application/octet-stream"}
		for k, v := range hdr {
			h[k] = v
		}
		code, _, b := e.do("POST", e.a.URL+"/files?"+q.Encode(), strings.NewReader("signed"), h)
		return code, b
	}
	// Without anything: 401 missing signature.
	code, b := up(url.Values{"path": {"hello.txt"}}, nil)
	if code != 401 || decodeErr(t, b).Message != "missing signature query parameter" {
		t.Fatalf("unsigned: %d %s", code, b)
	}
	// With the header.
	if code, b := up(url.Values{"path": {"hello.txt"}}, map[string]string{"X-Access-Token": token}); code != 200 {
		t.Fatalf("with token: %d %s", code, b)
	}
	// Signed for write, with user.
	q := url.Values{"path": {"hello.txt"}, "username": {"user"}, "signature": {agent.Sign("hello.txt", "write", "user", token, 0)}}
	if code, b := up(q, nil); code != 200 {
		t.Fatalf("signed write: %d %s", code, b)
	}
	// Signed download, with an expiry in the future, then in the past.
	exp := time.Now().Add(time.Minute).Unix()
	q = url.Values{"path": {"hello.txt"}, "username": {"user"}, "signature": {agent.Sign("hello.txt", "read", "user", token, exp)}, "signature_expiration": {fmt.Sprint(exp)}}
	if code, _, b := e.do("GET", e.a.URL+"/files?"+q.Encode(), nil, nil); code != 200 || string(b) != "signed" {
		t.Fatalf("signed read: %d %s", code, b)
	}
	exp = time.Now().Add(-time.Minute).Unix()
	q = url.Values{"path": {"hello.txt"}, "signature": {agent.Sign("hello.txt", "read", "", token, exp)}, "signature_expiration": {fmt.Sprint(exp)}}
	code, _, b = e.do("GET", e.a.URL+"/files?"+q.Encode(), nil, nil)
	if code != 401 || string(bytes.TrimSpace(b)) != `{"code":401,"message":"signature is already expired"}` {
		t.Fatalf("expired: %d %s", code, b)
	}
	// A read signature does not allow writing.
	q = url.Values{"path": {"hello.txt"}, "signature": {agent.Sign("hello.txt", "read", "", token, 0)}}
	if code, b := up(q, nil); code != 401 || decodeErr(t, b).Message != "invalid signature" {
		t.Fatalf("read signature for write: %d %s", code, b)
	}
	// /health needs nothing, RPCs need the header.
	if code, _, _ := e.do("GET", e.a.URL+"/health", nil, nil); code != 204 {
		t.Fatalf("health %d", code)
	}
	code, _, b = e.do("POST", e.a.URL+"/filesystem.Filesystem/Stat", strings.NewReader(`{"path":"/"}`), map[string]string{"Content-Type": "application/json"})
	if code != 401 || !strings.Contains(string(b), "unauthorized access") {
		t.Fatalf("rpc without token: %d %s", code, b)
	}
	code, _, b = e.do("POST", e.a.URL+"/filesystem.Filesystem/Stat", strings.NewReader(`{"path":"/"}`), map[string]string{"Content-Type": "application/json", "X-Access-Token": token})
	if code != 200 {
		t.Fatalf("rpc with token: %d %s", code, b)
	}
}

func newProcClient(e *env, token string) processconnect.ProcessClient {
	return processconnect.NewProcessClient(e.http, e.a.URL, connect.WithProtoJSON(), connect.WithInterceptors(tokenInterceptor(token)))
}
