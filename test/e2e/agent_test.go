package e2e

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/huskvm/husk/internal/envd/filesystem"
	"github.com/huskvm/husk/internal/envd/process"
	"github.com/huskvm/husk/internal/envd/process/processconnect"
	"github.com/huskvm/husk/internal/sandbox"
	"github.com/huskvm/husk/internal/testutil/kvmtest"
)

// A trimmed copy of the agent's host suite (internal/agent/*_e2e_test.go,
// which runs the agent chrooted on the host) against husk-agent as PID 1 of a
// booted guest, over vsock. The host suite proves the agent; this one proves
// that the guest kernel and the base template give it what it needs:
// devpts and the tty line discipline, inotify on ext4 and tmpfs, xattrs,
// users and credentials, many concurrent processes and vsock streams.

const (
	// guestAgentBoot bounds the boot up to the agent's first answer; it
	// takes 10-20 s in a busy test host.
	guestAgentBoot = 3 * time.Minute
	// guestAgentStep bounds each subtest; all of them are quick, so this
	// only keeps a hung guest from eating the whole e2e timeout.
	guestAgentStep = 2 * time.Minute
)

// guestAgentEnv is the one guest the suite shares, with clients acting as
// root and as the template's "user" (uid 1000).
type guestAgentEnv struct {
	sock string // the VM's vsock socket
	root *sandbox.Agent
	user *sandbox.Agent
}

func TestAgentInGuest(t *testing.T) {
	a := need(t)
	base := os.Getenv("HUSK_BASE")
	if base == "" {
		kvmtest.Unavailable(t, "HUSK_BASE is not set; run the e2e tests through `make test`")
	}
	dir := filepath.Join(t.TempDir(), "vm")
	vm, err := sandbox.Start(sandbox.VMSpec{VMM: a.vmm, Kernel: a.vmlinux, Rootfs: base, CPUs: 2, MemMiB: 512, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	// Whatever fails below, husk-vmm does not outlive the test; Close is
	// idempotent, so the checked Close at the end is not disturbed.
	t.Cleanup(func() { vm.Close(5 * time.Second) })
	g := &guestAgentEnv{sock: vm.SocketPath(), root: sandbox.NewAgent(vm.SocketPath(), "root"), user: sandbox.NewAgent(vm.SocketPath(), "user")}
	defer g.root.Close()
	defer g.user.Close()

	ctx, cancel := context.WithTimeout(context.Background(), guestAgentBoot)
	start := time.Now()
	err = vm.WaitAgent(ctx, g.root)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("agent answered %v after start", time.Since(start).Round(time.Millisecond))
	start = time.Now()

	for _, st := range []struct {
		name string
		fn   func(*testing.T, context.Context)
	}{
		{"PTY", g.testPTY},
		{"WatchDir", g.testWatchDir},
		{"PolledWatcher", g.testPolledWatcher},
		{"Files", g.testFiles},
		{"SwitchUser", g.testSwitchUser},
		{"Concurrent50", g.testConcurrent},
		{"ProcessControl", g.testProcessControl},
	} {
		t.Run(st.name, func(t *testing.T) {
			select {
			case <-vm.Done():
				t.Fatalf("the VM is gone: %v%s", vm.Err(), vm.Diagnostics())
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), guestAgentStep)
			defer cancel()
			st.fn(t, ctx)
		})
	}

	t.Logf("subtests took %v", time.Since(start).Round(time.Millisecond))
	if t.Failed() {
		// The console tells a kernel gap (a missing filesystem, an oops)
		// from an agent bug; the VM's directory goes with Close.
		t.Logf("guest state:%s", vm.Diagnostics())
	}
	pid := vm.PID()
	if err := vm.Close(10 * time.Second); err != nil {
		t.Errorf("close: %v", err)
	}
	select {
	case <-vm.Done():
	default:
		t.Error("husk-vmm still runs after Close")
	}
	// husk-vmm leads its own process group: nothing of it may be left.
	if err := syscall.Kill(-pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("husk-vmm's process group %d after Close: %v, want ESRCH", pid, err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the VM's directory after Close: %v, want it gone", err)
	}
}

// guestAgentResult is everything a process stream carried.
type guestAgentResult struct {
	pid                 uint32
	stdout, stderr, pty []byte
	end                 *process.ProcessEvent_EndEvent
}

func (r *guestAgentResult) add(ev *process.ProcessEvent) {
	switch {
	case ev.GetStart() != nil:
		r.pid = ev.GetStart().GetPid()
	case ev.GetData() != nil:
		r.stdout = append(r.stdout, ev.GetData().GetStdout()...)
		r.stderr = append(r.stderr, ev.GetData().GetStderr()...)
		r.pty = append(r.pty, ev.GetData().GetPty()...)
	case ev.GetEnd() != nil:
		r.end = ev.GetEnd()
	}
}

// guestAgentRun starts a process and collects its stream to the end. A
// refused start is an error, whether connect reports it at once or as the
// stream's error.
func guestAgentRun(ctx context.Context, pc processconnect.ProcessClient, req *process.StartRequest) (*guestAgentResult, error) {
	stream, err := pc.Start(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, err
	}
	defer stream.Close()
	r := &guestAgentResult{}
	for stream.Receive() {
		r.add(stream.Msg().GetEvent())
	}
	return r, stream.Err()
}

// guestAgentShell runs script under sh with no stdin and wants it to exit 0.
func guestAgentShell(t *testing.T, ctx context.Context, a *sandbox.Agent, script string) string {
	t.Helper()
	r, err := guestAgentRun(ctx, a.Process, &process.StartRequest{
		Process: &process.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", script}},
		Stdin:   proto.Bool(false),
	})
	if err != nil {
		t.Fatalf("%s: %v", script, err)
	}
	if r.end == nil || r.end.GetExitCode() != 0 {
		t.Fatalf("%s: end %v, stdout %q, stderr %q", script, r.end, r.stdout, r.stderr)
	}
	return string(r.stdout)
}

func guestAgentPid(pid uint32) *process.ProcessSelector {
	return &process.ProcessSelector{Selector: &process.ProcessSelector_Pid{Pid: pid}}
}

// testPTY drives an interactive bash on a terminal, as the SDK's pty.create
// does: size, resize, input as terminal bytes, ^C through the line
// discipline, exit status.
func (g *guestAgentEnv) testPTY(t *testing.T, ctx context.Context) {
	stream, err := g.user.Process.Start(ctx, connect.NewRequest(&process.StartRequest{
		Process: &process.ProcessConfig{
			Cmd:  "/bin/bash",
			Args: []string{"-i", "-l"},
			Envs: map[string]string{"TERM": "xterm-256color", "LANG": "C.UTF-8"},
		},
		Pty: &process.PTY{Size: &process.PTY_Size{Cols: 91, Rows: 33}},
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	if !stream.Receive() || stream.Msg().GetEvent().GetStart() == nil {
		t.Fatalf("first event %v: %v", stream.Msg(), stream.Err())
	}
	sel := guestAgentPid(stream.Msg().GetEvent().GetStart().GetPid())
	send := func(s string) {
		t.Helper()
		if _, err := g.user.Process.SendInput(ctx, connect.NewRequest(&process.SendInputRequest{
			Process: sel, Input: &process.ProcessInput{Input: &process.ProcessInput_Pty{Pty: []byte(s)}},
		})); err != nil {
			t.Fatal(err)
		}
	}
	// The terminal echoes input, so every awaited text is one that only
	// the command's output contains.
	var out bytes.Buffer
	waitFor := func(want string) {
		t.Helper()
		for !strings.Contains(out.String(), want) {
			if !stream.Receive() {
				t.Fatalf("stream ended waiting for %q: %v\n%s", want, stream.Err(), out.String())
			}
			d := stream.Msg().GetEvent().GetData()
			if len(d.GetStdout()) > 0 || len(d.GetStderr()) > 0 {
				t.Fatalf("a terminal process sent stdout/stderr data: %v", d)
			}
			out.Write(d.GetPty())
		}
	}
	send("stty size; tty; echo $TERM\n")
	waitFor("33 91")
	waitFor("/dev/pts/")
	waitFor("xterm-256color")

	if _, err := g.user.Process.Update(ctx, connect.NewRequest(&process.UpdateRequest{
		Process: sel, Pty: &process.PTY{Size: &process.PTY_Size{Cols: 120, Rows: 40}},
	})); err != nil {
		t.Fatal(err)
	}
	send("stty size\n")
	waitFor("40 120")

	// ^C reaches the foreground job as SIGINT; without it the sleep
	// outlasts the subtest's deadline. The job prints "ready" itself: bash
	// hands it the terminal before it runs, so the ^C cannot reach bash
	// instead (which would leave the sleep running).
	send("sh -c 'echo ready-$((1+1)); exec sleep 300'\n")
	waitFor("ready-2")
	send("\x03")
	send("echo after-$((6*7))\n")
	waitFor("after-42")

	send("exit 5\n")
	r := &guestAgentResult{}
	for stream.Receive() {
		r.add(stream.Msg().GetEvent())
	}
	if r.end == nil || r.end.GetExitCode() != 5 || !r.end.GetExited() {
		t.Fatalf("end %v: %v", r.end, stream.Err())
	}
}

// guestAgentWatchEvent is an event in a short comparable form.
func guestAgentWatchEvent(ev *filesystem.FilesystemEvent) string {
	return strings.TrimPrefix(ev.GetType().String(), "EVENT_TYPE_") + " " + ev.GetName()
}

// testWatchDir watches a fresh directory recursively (inotify on the ext4
// root) while a shell creates, writes, renames and removes files and
// directories in it and below it.
func (g *guestAgentEnv) testWatchDir(t *testing.T, ctx context.Context) {
	const dir = "/home/user/guest-watch"
	if _, err := g.user.Filesystem.MakeDir(ctx, connect.NewRequest(&filesystem.MakeDirRequest{Path: dir + "/sub"})); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := g.user.Filesystem.WatchDir(wctx, connect.NewRequest(&filesystem.WatchDirRequest{Path: dir, Recursive: true, IncludeEntry: true}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	if !stream.Receive() || stream.Msg().GetStart() == nil {
		t.Fatalf("first event %v: %v", stream.Msg(), stream.Err())
	}
	// One inotify instance reports in order, so once the last change of a
	// step is seen, so are the ones before it.
	var got []string
	await := func(want string) *filesystem.FilesystemEvent {
		t.Helper()
		for {
			if !stream.Receive() {
				t.Fatalf("stream ended waiting for %q: %v; got %v", want, stream.Err(), got)
			}
			ev := stream.Msg().GetFilesystem()
			if ev == nil {
				continue // a keepalive
			}
			got = append(got, guestAgentWatchEvent(ev))
			if got[len(got)-1] == want {
				return ev
			}
		}
	}
	guestAgentShell(t, ctx, g.user, "cd "+dir+" && echo 1 > x.txt && echo 2 >> x.txt && chmod 600 x.txt && mv x.txt y.txt && rm y.txt"+
		" && echo deep > sub/d.txt && mkdir sub/new && echo n > sub/new/n.txt")
	// The watcher adds sub/new when it sees it created, and reports what
	// is already in it then, so n.txt is seen either way; removing sub/new
	// only after that makes its contents' removal certain to be seen too.
	await("CREATE sub/new/n.txt")
	guestAgentShell(t, ctx, g.user, "cd "+dir+" && rm -r sub/new && echo done > end.txt")
	end := await("CREATE end.txt").GetEntry()
	joined := "," + strings.Join(got, ",") + ","
	for _, want := range []string{"CREATE x.txt", "WRITE x.txt", "CHMOD x.txt", "RENAME x.txt", "CREATE y.txt", "REMOVE y.txt",
		"CREATE sub/d.txt", "WRITE sub/d.txt", "CREATE sub/new", "REMOVE sub/new/n.txt", "REMOVE sub/new"} {
		if !strings.Contains(joined, ","+want+",") {
			t.Errorf("missing %q in %s", want, joined)
		}
	}
	// The entry is read when the event is handled, maybe before the
	// write: its size is not checked.
	if end.GetPath() != dir+"/end.txt" || end.GetType() != filesystem.FileType_FILE_TYPE_FILE || end.GetOwner() != "user" {
		t.Errorf("entry of end.txt: %v", end)
	}
}

// testPolledWatcher uses CreateWatcher, GetWatcherEvents and RemoveWatcher
// once, on the guest's /tmp (a tmpfs: inotify there too).
func (g *guestAgentEnv) testPolledWatcher(t *testing.T, ctx context.Context) {
	const dir = "/tmp/guest-poll"
	if _, err := g.user.Filesystem.MakeDir(ctx, connect.NewRequest(&filesystem.MakeDirRequest{Path: dir})); err != nil {
		t.Fatal(err)
	}
	cw, err := g.user.Filesystem.CreateWatcher(ctx, connect.NewRequest(&filesystem.CreateWatcherRequest{Path: dir, Recursive: true}))
	if err != nil {
		t.Fatal(err)
	}
	id := cw.Msg.GetWatcherId()
	guestAgentShell(t, ctx, g.user, "mkdir "+dir+"/p && echo a > "+dir+"/p/a.txt")
	var got []string
	for !strings.Contains(strings.Join(got, ","), "CREATE p/a.txt") {
		ev, err := g.user.Filesystem.GetWatcherEvents(ctx, connect.NewRequest(&filesystem.GetWatcherEventsRequest{WatcherId: id}))
		if err != nil {
			t.Fatalf("%v; got %v", err, got)
		}
		for _, x := range ev.Msg.GetEvents() {
			got = append(got, guestAgentWatchEvent(x))
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no CREATE p/a.txt: got %v", got)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if !strings.Contains(strings.Join(got, ","), "CREATE p,") {
		t.Errorf("no CREATE p: got %v", got)
	}
	if _, err := g.user.Filesystem.RemoveWatcher(ctx, connect.NewRequest(&filesystem.RemoveWatcherRequest{WatcherId: id})); err != nil {
		t.Fatal(err)
	}
	if _, err := g.user.Filesystem.GetWatcherEvents(ctx, connect.NewRequest(&filesystem.GetWatcherEventsRequest{WatcherId: id})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("events of a removed watcher: %v, want not_found", err)
	}
}

// guestAgentDo sends one HTTP request to the agent and reads the answer.
func guestAgentDo(t *testing.T, ctx context.Context, a *sandbox.Agent, method, path string, body io.Reader, hdr map[string]string) (int, http.Header, []byte) {
	t.Helper()
	hc, base := a.HTTP()
	req, err := http.NewRequestWithContext(ctx, method, base+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

// guestAgentUploaded is one element of POST /files' answer.
type guestAgentUploaded struct {
	Name     string            `json:"name"`
	Path     string            `json:"path"`
	Type     string            `json:"type"`
	Metadata map[string]string `json:"metadata"`
}

func guestAgentUploads(t *testing.T, code int, b []byte) []guestAgentUploaded {
	t.Helper()
	var ups []guestAgentUploaded
	if code != http.StatusOK {
		t.Fatalf("upload: %d %s", code, b)
	}
	if err := json.Unmarshal(b, &ups); err != nil {
		t.Fatalf("upload answer %s: %v", b, err)
	}
	return ups
}

// testFiles uploads (multipart and octet-stream, gzip), downloads
// byte-exact (identity and gzip), and checks ownership and metadata (kept
// as user.* xattrs on the ext4 root) through Stat.
func (g *guestAgentEnv) testFiles(t *testing.T, ctx context.Context) {
	stat := func(path string) *filesystem.EntryInfo {
		t.Helper()
		st, err := g.root.Filesystem.Stat(ctx, connect.NewRequest(&filesystem.StatRequest{Path: path}))
		if err != nil {
			t.Fatalf("stat %s: %v", path, err)
		}
		return st.Msg.GetEntry()
	}

	// Multipart, as files.write(path, data), into a directory that does
	// not exist yet: the file and its new parents belong to the user.
	var mp bytes.Buffer
	mw := multipart.NewWriter(&mp)
	fw, err := mw.CreateFormFile("file", "a.txt")
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(fw, "hello")
	mw.Close()
	code, _, b := guestAgentDo(t, ctx, g.user, "POST", "/files?username=user&path=guest-files/sub/a.txt", &mp, map[string]string{"Content-Type": mw.FormDataContentType()})
	ups := guestAgentUploads(t, code, b)
	if len(ups) != 1 || ups[0].Path != "/home/user/guest-files/sub/a.txt" || ups[0].Name != "a.txt" || ups[0].Type != "file" {
		t.Fatalf("multipart upload answer %s", b)
	}
	for _, p := range []string{"/home/user/guest-files", "/home/user/guest-files/sub", "/home/user/guest-files/sub/a.txt"} {
		if en := stat(p); en.GetOwner() != "user" || en.GetGroup() != "user" {
			t.Errorf("%s belongs to %s:%s, want user:user", p, en.GetOwner(), en.GetGroup())
		}
	}
	if en := stat("/home/user/guest-files/sub/a.txt"); en.GetSize() != 5 || en.GetMode() != 0o644 || en.GetType() != filesystem.FileType_FILE_TYPE_FILE {
		t.Errorf("stat after upload: %v", en)
	}

	// Binary octet-stream, gzip-encoded on the way up, with metadata.
	bin := make([]byte, 256<<10) // many vsock packets each way
	if _, err := rand.Read(bin); err != nil {
		t.Fatal(err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(bin)
	zw.Close()
	code, _, b = guestAgentDo(t, ctx, g.user, "POST", "/files?path=guest-files/bin.dat", &gz, map[string]string{
		"Content-Type": "application/octet-stream", "Content-Encoding": "gzip", "X-Metadata-Owner": "me", "X-Metadata-Kind": "test",
	})
	ups = guestAgentUploads(t, code, b)
	if len(ups) != 1 || ups[0].Path != "/home/user/guest-files/bin.dat" || ups[0].Metadata["owner"] != "me" || ups[0].Metadata["kind"] != "test" {
		t.Fatalf("octet-stream upload answer %s", b)
	}
	en := stat("/home/user/guest-files/bin.dat")
	if en.GetSize() != int64(len(bin)) || en.GetOwner() != "user" || len(en.GetMetadata()) != 2 || en.GetMetadata()["owner"] != "me" || en.GetMetadata()["kind"] != "test" {
		t.Errorf("stat after metadata upload: %v", en)
	}

	// Back byte for byte: plain, then gzip when asked (an explicit
	// Accept-Encoding keeps Go's transport from unzipping it).
	code, hdr, b := guestAgentDo(t, ctx, g.user, "GET", "/files?path=guest-files/bin.dat", nil, map[string]string{"Accept-Encoding": "identity"})
	if code != http.StatusOK || !bytes.Equal(b, bin) || hdr.Get("Content-Length") != fmt.Sprint(len(bin)) {
		t.Errorf("download: %d, %d bytes (Content-Length %q) of %d, equal %v", code, len(b), hdr.Get("Content-Length"), len(bin), bytes.Equal(b, bin))
	}
	code, hdr, b = guestAgentDo(t, ctx, g.user, "GET", "/files?path=guest-files/bin.dat", nil, map[string]string{"Accept-Encoding": "gzip"})
	if code != http.StatusOK || hdr.Get("Content-Encoding") != "gzip" {
		t.Fatalf("gzip download: %d %v", code, hdr)
	}
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if plain, err := io.ReadAll(zr); err != nil || !bytes.Equal(plain, bin) {
		t.Errorf("gunzipped download: %d bytes of %d, %v", len(plain), len(bin), err)
	}

	// An upload without metadata replaces it: none is left.
	code, _, b = guestAgentDo(t, ctx, g.user, "POST", "/files?path=guest-files/bin.dat", strings.NewReader("xyz!"), map[string]string{"Content-Type": "application/octet-stream"})
	guestAgentUploads(t, code, b)
	if en := stat("/home/user/guest-files/bin.dat"); len(en.GetMetadata()) != 0 || en.GetSize() != 4 {
		t.Errorf("metadata not replaced: %v", en)
	}

	// As root: relative to /root, owned by root.
	code, _, b = guestAgentDo(t, ctx, g.user, "POST", "/files?username=root&path=guest-r.txt", strings.NewReader("r"), map[string]string{"Content-Type": "application/octet-stream"})
	if ups := guestAgentUploads(t, code, b); len(ups) != 1 || ups[0].Path != "/root/guest-r.txt" {
		t.Fatalf("root upload answer %s", b)
	}
	if en := stat("/root/guest-r.txt"); en.GetOwner() != "root" || en.GetGroup() != "root" {
		t.Errorf("root's upload belongs to %s:%s", en.GetOwner(), en.GetGroup())
	}

	// An unknown user is refused.
	code, _, b = guestAgentDo(t, ctx, g.user, "POST", "/files?username=ghost&path=x", strings.NewReader("x"), map[string]string{"Content-Type": "application/octet-stream"})
	if code != http.StatusUnauthorized || !strings.Contains(string(b), "error looking up user 'ghost'") {
		t.Errorf("upload as ghost: %d %s", code, b)
	}
}

// testSwitchUser runs one command as root and as user: the agent switches
// credentials, home and working directory; an unknown user is refused.
func (g *guestAgentEnv) testSwitchUser(t *testing.T, ctx context.Context) {
	const script = `id -u; id -g; id -un; echo "$HOME|$USER"; pwd`
	for _, tc := range []struct {
		a    *sandbox.Agent
		want string
	}{
		{g.root, "0\n0\nroot\n/root|root\n/root\n"},
		{g.user, "1000\n1000\nuser\n/home/user|user\n/home/user\n"},
	} {
		if got := guestAgentShell(t, ctx, tc.a, script); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
	ghost := sandbox.NewAgent(g.sock, "ghost")
	defer ghost.Close()
	_, err := guestAgentRun(ctx, ghost.Process, &process.StartRequest{Process: &process.ProcessConfig{Cmd: "/bin/true"}})
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != connect.CodeUnauthenticated || ce.Message() != "invalid username: 'ghost'" {
		t.Errorf("start as ghost: %v, want unauthenticated \"invalid username: 'ghost'\"", err)
	}
}

// testConcurrent runs 50 processes at once, each on its own vsock
// connection, each with its own output and exit status.
func (g *guestAgentEnv) testConcurrent(t *testing.T, ctx context.Context) {
	const n = 50
	results := make([]*guestAgentResult, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = guestAgentRun(ctx, g.user.Process, &process.StartRequest{
				Process: &process.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", fmt.Sprintf("echo out-%d; echo err-%d >&2; exit %d", i, i, i+1)}},
				Stdin:   proto.Bool(false),
			})
		}()
	}
	wg.Wait()
	pids := map[uint32]bool{}
	for i, r := range results {
		if errs[i] != nil {
			t.Errorf("process %d: %v", i, errs[i])
			continue
		}
		pids[r.pid] = true
		e := r.end
		if e == nil || e.GetExitCode() != int32(i+1) || !e.GetExited() || e.GetStatus() != fmt.Sprintf("exit status %d", i+1) {
			t.Errorf("process %d: end %v, want exit status %d", i, e, i+1)
		}
		if string(r.stdout) != fmt.Sprintf("out-%d\n", i) || string(r.stderr) != fmt.Sprintf("err-%d\n", i) {
			t.Errorf("process %d: stdout %q stderr %q", i, r.stdout, r.stderr)
		}
	}
	if !t.Failed() && len(pids) != n {
		t.Errorf("%d distinct pids for %d processes", len(pids), n)
	}
}

// testProcessControl: a missing command, a background process in List
// ended by SIGKILL, and stdin through a pipe to cat.
func (g *guestAgentEnv) testProcessControl(t *testing.T, ctx context.Context) {
	_, err := guestAgentRun(ctx, g.user.Process, &process.StartRequest{Process: &process.ProcessConfig{Cmd: "no-such-command"}})
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != connect.CodeInvalidArgument || !strings.Contains(ce.Message(), "executable not found") {
		t.Errorf("start a missing command: %v, want invalid_argument \"executable not found\"", err)
	}

	// A background process: listed while it runs, gone after SIGKILL.
	tag := "guest-bg"
	bg, err := g.user.Process.Start(ctx, connect.NewRequest(&process.StartRequest{
		Process: &process.ProcessConfig{Cmd: "/bin/sleep", Args: []string{"300"}},
		Stdin:   proto.Bool(false),
		Tag:     &tag,
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer bg.Close()
	if !bg.Receive() || bg.Msg().GetEvent().GetStart() == nil {
		t.Fatalf("first event %v: %v", bg.Msg(), bg.Err())
	}
	pid := bg.Msg().GetEvent().GetStart().GetPid()
	listed := func() *process.ProcessInfo {
		t.Helper()
		lr, err := g.user.Process.List(ctx, connect.NewRequest(&process.ListRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range lr.Msg.GetProcesses() {
			if p.GetPid() == pid {
				return p
			}
		}
		return nil
	}
	if p := listed(); p == nil || p.GetTag() != tag || p.GetConfig().GetCmd() != "/bin/sleep" || p.GetConfig().GetCwd() != "/home/user" {
		t.Fatalf("pid %d listed as %v", pid, p)
	}
	if _, err := g.user.Process.SendSignal(ctx, connect.NewRequest(&process.SendSignalRequest{Process: guestAgentPid(pid), Signal: process.Signal_SIGNAL_SIGKILL})); err != nil {
		t.Fatal(err)
	}
	r := &guestAgentResult{}
	for bg.Receive() {
		r.add(bg.Msg().GetEvent())
	}
	if r.end == nil || r.end.GetStatus() != "signal: killed" || r.end.GetExited() || r.end.GetExitCode() != -1 {
		t.Fatalf("end after SIGKILL %v: %v", r.end, bg.Err())
	}
	// The table forgets it just after the end event is sent.
	for listed() != nil {
		select {
		case <-ctx.Done():
			t.Fatalf("pid %d still listed after its end", pid)
		case <-time.After(50 * time.Millisecond):
		}
	}

	// Stdin through a pipe: cat echoes it, CloseStdin ends it with 0.
	cat, err := g.user.Process.Start(ctx, connect.NewRequest(&process.StartRequest{
		Process: &process.ProcessConfig{Cmd: "/bin/cat"},
		Stdin:   proto.Bool(true),
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close()
	r = &guestAgentResult{}
	if !cat.Receive() {
		t.Fatal(cat.Err())
	}
	r.add(cat.Msg().GetEvent())
	if _, err := g.user.Process.SendInput(ctx, connect.NewRequest(&process.SendInputRequest{
		Process: guestAgentPid(r.pid), Input: &process.ProcessInput{Input: &process.ProcessInput_Stdin{Stdin: []byte("ping\n")}},
	})); err != nil {
		t.Fatal(err)
	}
	for string(r.stdout) != "ping\n" {
		if !cat.Receive() {
			t.Fatalf("stream ended with stdout %q: %v", r.stdout, cat.Err())
		}
		r.add(cat.Msg().GetEvent())
	}
	if _, err := g.user.Process.CloseStdin(ctx, connect.NewRequest(&process.CloseStdinRequest{Process: guestAgentPid(r.pid)})); err != nil {
		t.Fatal(err)
	}
	for cat.Receive() {
		r.add(cat.Msg().GetEvent())
	}
	if r.end == nil || r.end.GetExitCode() != 0 || !r.end.GetExited() || string(r.stdout) != "ping\n" {
		t.Fatalf("cat: end %v stdout %q: %v", r.end, r.stdout, cat.Err())
	}
}
