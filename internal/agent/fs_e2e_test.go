package agent_test

import (
	"context"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/huskvm/husk/internal/agent/agenttest"
	"github.com/huskvm/husk/internal/envd/filesystem"
)

func TestFilesystemRPCs(t *testing.T) {
	e := startAgent(t, agenttest.Options{})
	ctx := ctxTimeout(t, 60*time.Second)
	if _, err := e.shell(ctx, "", "mkdir -p tree/a/b/c && echo hi > tree/f.txt && echo deep > tree/a/b/c/deep.txt && ln -s f.txt tree/link && ln -s /nowhere tree/dangling && ln -s loop1 loop2 && ln -s loop2 loop1 && chmod 600 tree/f.txt"); err != nil {
		t.Fatal(err)
	}

	// Stat: a file, a symlink, a directory, missing.
	st, err := e.fs.Stat(ctx, connect.NewRequest(&filesystem.StatRequest{Path: "tree/f.txt"}))
	if err != nil {
		t.Fatal(err)
	}
	en := st.Msg.GetEntry()
	if en.GetName() != "f.txt" || en.GetPath() != "/home/user/tree/f.txt" || en.GetType() != filesystem.FileType_FILE_TYPE_FILE ||
		en.GetSize() != 3 || en.GetMode() != 0o600 || en.GetPermissions() != "-rw-------" || en.GetOwner() != "user" || en.GetGroup() != "user" ||
		time.Since(en.GetModifiedTime().AsTime()) > time.Minute {
		t.Errorf("stat file: %v", en)
	}
	st, err = e.fs.Stat(ctx, connect.NewRequest(&filesystem.StatRequest{Path: "/home/user/tree/link"}))
	if err != nil || st.Msg.GetEntry().GetType() != filesystem.FileType_FILE_TYPE_SYMLINK || st.Msg.GetEntry().GetSymlinkTarget() != "f.txt" {
		t.Errorf("stat symlink: %v %v", st, err)
	}
	st, err = e.fs.Stat(ctx, withUser(connect.NewRequest(&filesystem.StatRequest{Path: "~"}), "root"))
	if err != nil || st.Msg.GetEntry().GetPath() != "/root" || st.Msg.GetEntry().GetType() != filesystem.FileType_FILE_TYPE_DIRECTORY {
		t.Errorf("stat ~ as root: %v %v", st, err)
	}
	if _, err := e.fs.Stat(ctx, connect.NewRequest(&filesystem.StatRequest{Path: "/nope"})); connectCode(err) != connect.CodeNotFound {
		t.Errorf("stat missing: %v", err)
	}
	if _, err := e.fs.Stat(ctx, connect.NewRequest(&filesystem.StatRequest{Path: ""})); connectCode(err) != connect.CodeInvalidArgument {
		t.Errorf("stat empty path: %v", err)
	}
	if _, err := e.fs.Stat(ctx, withUser(connect.NewRequest(&filesystem.StatRequest{Path: "/"}), "ghost")); connectCode(err) != connect.CodeUnauthenticated {
		t.Errorf("stat as unknown user: %v", err)
	}

	// ListDir with depth.
	list := func(path string, depth uint32) []string {
		t.Helper()
		lr, err := e.fs.ListDir(ctx, connect.NewRequest(&filesystem.ListDirRequest{Path: path, Depth: depth}))
		if err != nil {
			t.Fatalf("list %s depth %d: %v", path, depth, err)
		}
		var out []string
		for _, en := range lr.Msg.GetEntries() {
			out = append(out, en.GetPath()+":"+strings.TrimPrefix(en.GetType().String(), "FILE_TYPE_"))
		}
		sort.Strings(out)
		return out
	}
	got := strings.Join(list("tree", 1), " ")
	want := "/home/user/tree/a:DIRECTORY /home/user/tree/dangling:SYMLINK /home/user/tree/f.txt:FILE /home/user/tree/link:SYMLINK"
	if got != want {
		t.Errorf("depth 1:\n got %s\nwant %s", got, want)
	}
	if got := len(list("tree", 0)); got != 4 {
		t.Errorf("depth 0 listed %d entries, want 4 (as depth 1)", got)
	}
	if got := list("/home/user/tree", 3); len(got) != 6 {
		t.Errorf("depth 3: %v", got)
	}
	if got := list("/home/user/tree", 10); len(got) != 7 || !strings.Contains(strings.Join(got, " "), "/home/user/tree/a/b/c/deep.txt:FILE") {
		t.Errorf("depth 10: %v", got)
	}
	if _, err := e.fs.ListDir(ctx, connect.NewRequest(&filesystem.ListDirRequest{Path: "tree/f.txt"})); connectCode(err) != connect.CodeInvalidArgument {
		t.Errorf("list a file: %v", err)
	}
	if _, err := e.fs.ListDir(ctx, connect.NewRequest(&filesystem.ListDirRequest{Path: "missing"})); connectCode(err) != connect.CodeNotFound {
		t.Errorf("list missing: %v", err)
	}
	if _, err := e.fs.ListDir(ctx, connect.NewRequest(&filesystem.ListDirRequest{Path: "loop1"})); connectCode(err) != connect.CodeFailedPrecondition {
		t.Errorf("list cyclic symlink: %v", err)
	}

	// MakeDir: new (with parents, owned by the user), existing, over a file.
	md, err := e.fs.MakeDir(ctx, connect.NewRequest(&filesystem.MakeDirRequest{Path: "new/nested/dir"}))
	if err != nil || md.Msg.GetEntry().GetType() != filesystem.FileType_FILE_TYPE_DIRECTORY || md.Msg.GetEntry().GetOwner() != "user" {
		t.Fatalf("makedir: %v %v", md, err)
	}
	if _, err := e.fs.MakeDir(ctx, connect.NewRequest(&filesystem.MakeDirRequest{Path: "new/nested/dir"})); connectCode(err) != connect.CodeAlreadyExists {
		t.Errorf("makedir existing: %v", err)
	}
	if _, err := e.fs.MakeDir(ctx, connect.NewRequest(&filesystem.MakeDirRequest{Path: "tree/f.txt"})); connectCode(err) != connect.CodeInvalidArgument {
		t.Errorf("makedir over file: %v", err)
	}
	if _, err := e.fs.MakeDir(ctx, connect.NewRequest(&filesystem.MakeDirRequest{Path: "tree/f.txt/sub"})); connectCode(err) != connect.CodeInvalidArgument {
		t.Errorf("makedir under file: %v", err)
	}
	r, _ := e.shell(ctx, "", "stat -c %U new new/nested")
	if string(r.stdout) != "user\nuser\n" {
		t.Errorf("makedir parents owned by %q", r.stdout)
	}

	// Move: rename, into new parents, across filesystems (/tmp is a tmpfs),
	// missing source.
	mv, err := e.fs.Move(ctx, connect.NewRequest(&filesystem.MoveRequest{Source: "tree/f.txt", Destination: "moved/f2.txt"}))
	if err != nil || mv.Msg.GetEntry().GetPath() != "/home/user/moved/f2.txt" || mv.Msg.GetEntry().GetName() != "f2.txt" {
		t.Fatalf("move: %v %v", mv, err)
	}
	mv, err = e.fs.Move(ctx, connect.NewRequest(&filesystem.MoveRequest{Source: "tree/a", Destination: "/tmp/a-moved"}))
	if err != nil || mv.Msg.GetEntry().GetType() != filesystem.FileType_FILE_TYPE_DIRECTORY {
		t.Fatalf("move across filesystems: %v %v", mv, err)
	}
	r, _ = e.shell(ctx, "", "cat /tmp/a-moved/b/c/deep.txt; stat -c %U /tmp/a-moved/b; test -e tree/a || echo gone")
	if string(r.stdout) != "deep\nuser\ngone\n" {
		t.Errorf("after cross-fs move: %q", r.stdout)
	}
	if _, err := e.fs.Move(ctx, connect.NewRequest(&filesystem.MoveRequest{Source: "nothing", Destination: "x"})); connectCode(err) != connect.CodeNotFound {
		t.Errorf("move missing: %v", err)
	}
	if _, err := e.fs.Move(ctx, connect.NewRequest(&filesystem.MoveRequest{Source: "moved", Destination: ""})); connectCode(err) != connect.CodeInvalidArgument {
		t.Errorf("move to empty: %v", err)
	}

	// Remove: a tree, then it is gone.
	if _, err := e.fs.Remove(ctx, connect.NewRequest(&filesystem.RemoveRequest{Path: "tree"})); err != nil {
		t.Fatal(err)
	}
	if _, err := e.fs.Stat(ctx, connect.NewRequest(&filesystem.StatRequest{Path: "tree"})); connectCode(err) != connect.CodeNotFound {
		t.Errorf("stat after remove: %v", err)
	}
	if _, err := e.fs.Remove(ctx, connect.NewRequest(&filesystem.RemoveRequest{Path: ""})); connectCode(err) != connect.CodeInvalidArgument {
		t.Errorf("remove empty path: %v", err)
	}
}

// watchEvent is an event in a short comparable form.
func watchEvent(ev *filesystem.FilesystemEvent) string {
	return strings.TrimPrefix(ev.GetType().String(), "EVENT_TYPE_") + " " + ev.GetName()
}

func TestWatchDir(t *testing.T) {
	e := startAgent(t, agenttest.Options{})
	ctx := ctxTimeout(t, 60*time.Second)
	for _, recursive := range []bool{false, true} {
		name := map[bool]string{false: "flat", true: "recursive"}[recursive]
		t.Run(name, func(t *testing.T) {
			dir := "w-" + name
			if _, err := e.shell(ctx, "", "mkdir -p "+dir+"/sub"); err != nil {
				t.Fatal(err)
			}
			wctx, cancel := context.WithCancel(ctx)
			defer cancel()
			req := connect.NewRequest(&filesystem.WatchDirRequest{Path: "/home/user/" + dir, Recursive: recursive, IncludeEntry: true})
			req.Header().Set("Keepalive-Ping-Interval", "1")
			stream, err := e.fs.WatchDir(wctx, req)
			if err != nil {
				t.Fatal(err)
			}
			defer stream.Close()
			if !stream.Receive() || stream.Msg().GetStart() == nil {
				t.Fatalf("first event %v %v", stream.Msg(), stream.Err())
			}
			var got []string
			keepalives := 0
			entries := map[string]*filesystem.EntryInfo{}
			// recvUntil reads events until one of them is want.
			recvUntil := func(want string) {
				t.Helper()
				for !slices.Contains(got, want) {
					if !stream.Receive() {
						t.Fatalf("stream ended: %v; got %v", stream.Err(), got)
					}
					if stream.Msg().GetKeepalive() != nil {
						keepalives++
						continue
					}
					ev := stream.Msg().GetFilesystem()
					got = append(got, watchEvent(ev))
					if ev.Entry != nil {
						entries[ev.GetName()] = ev.GetEntry()
					}
				}
			}
			// x.txt stays until its events are seen: an event's entry is
			// read when the agent handles it, and a file renamed by then
			// has none.
			if _, err := e.shell(ctx, "", "cd "+dir+" && echo 1 > x.txt && echo 2 >> x.txt && chmod 600 x.txt"); err != nil {
				t.Fatal(err)
			}
			recvUntil("CHMOD x.txt")
			if _, err := e.shell(ctx, "", "cd "+dir+" && mv x.txt y.txt && rm y.txt && echo deep > sub/d.txt && mkdir sub/new && echo n > sub/new/n.txt && echo done > end.txt"); err != nil {
				t.Fatal(err)
			}
			recvUntil("CREATE end.txt")
			joined := strings.Join(got, ",")
			for _, want := range []string{"CREATE x.txt", "WRITE x.txt", "CHMOD x.txt", "RENAME x.txt", "CREATE y.txt", "REMOVE y.txt"} {
				if !strings.Contains(joined, want) {
					t.Errorf("missing %q in %s", want, joined)
				}
			}
			deep := strings.Contains(joined, "sub/d.txt") && strings.Contains(joined, "CREATE sub/new/n.txt")
			if deep != recursive {
				t.Errorf("recursive=%v but saw nested events=%v: %s", recursive, deep, joined)
			}
			if en := entries["x.txt"]; en == nil || en.GetPath() != "/home/user/"+dir+"/x.txt" {
				t.Errorf("no entry for x.txt: %v", entries)
			}
			// Keepalives arrive while idle.
			deadline := time.Now().Add(3 * time.Second)
			for keepalives == 0 && time.Now().Before(deadline) && stream.Receive() {
				if stream.Msg().GetKeepalive() != nil {
					keepalives++
				}
			}
			if keepalives == 0 {
				t.Error("no keepalive")
			}
		})
	}
	for path, want := range map[string]connect.Code{"/nope": connect.CodeNotFound, "/etc/passwd": connect.CodeInvalidArgument, "": connect.CodeInvalidArgument} {
		s, err := e.fs.WatchDir(ctx, connect.NewRequest(&filesystem.WatchDirRequest{Path: path}))
		if err == nil {
			for s.Receive() {
			}
			err = s.Err()
			s.Close()
		}
		if connectCode(err) != want {
			t.Errorf("watch %q: %v, want %v", path, err, want)
		}
	}
}

func TestPolledWatcher(t *testing.T) {
	e := startAgent(t, agenttest.Options{})
	ctx := ctxTimeout(t, 60*time.Second)
	cw, err := e.fs.CreateWatcher(ctx, connect.NewRequest(&filesystem.CreateWatcherRequest{Path: "/tmp", Recursive: true}))
	if err != nil {
		t.Fatal(err)
	}
	id := cw.Msg.GetWatcherId()
	if _, err := e.shell(ctx, "", "mkdir /tmp/p && echo a > /tmp/p/a.txt"); err != nil {
		t.Fatal(err)
	}
	var got []string
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(strings.Join(got, ","), " p/a.txt") && time.Now().Before(deadline) {
		ev, err := e.fs.GetWatcherEvents(ctx, connect.NewRequest(&filesystem.GetWatcherEventsRequest{WatcherId: id}))
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range ev.Msg.GetEvents() {
			got = append(got, watchEvent(x))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if j := strings.Join(got, ","); !strings.Contains(j, "CREATE p") || !strings.Contains(j, "CREATE p/a.txt") {
		t.Fatalf("events %s", j)
	}
	if _, err := e.fs.RemoveWatcher(ctx, connect.NewRequest(&filesystem.RemoveWatcherRequest{WatcherId: id})); err != nil {
		t.Fatal(err)
	}
	if _, err := e.fs.GetWatcherEvents(ctx, connect.NewRequest(&filesystem.GetWatcherEventsRequest{WatcherId: id})); connectCode(err) != connect.CodeNotFound {
		t.Errorf("events of removed watcher: %v", err)
	}
	if _, err := e.fs.RemoveWatcher(ctx, connect.NewRequest(&filesystem.RemoveWatcherRequest{WatcherId: "nope"})); connectCode(err) != connect.CodeNotFound {
		t.Errorf("remove unknown watcher: %v", err)
	}
}
