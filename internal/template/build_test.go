package template

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/huskvm/husk/internal/testutil/kvmtest"
)

// requireBuilder skips the test (fails it when CI=true) unless this machine
// can build images: root, mmdebstrap, e2fsprogs.
func requireBuilder(t *testing.T) {
	t.Helper()
	if err := checkTools(); err != nil {
		kvmtest.Unavailable(t, "cannot build templates here: %v", err)
	}
}

// The integration tests use the real cache (HUSK_CACHE, else ~/.cache/husk):
// the first run bootstraps (~40 s per recipe), later runs find the images.

func TestBuildMinimal(t *testing.T) {
	requireBuilder(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	recipe := filepath.Join(repoRoot(t), "guest", "templates", "minimal.json")
	res, err := Build(ctx, Options{Recipe: recipe, Progress: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	img := res.Image
	t.Logf("image %s (cached %v): %d MiB, %d MiB free, built in %.1fs", img, res.Cached,
		res.Info.ImageBytes>>20, res.Info.FreeBytes>>20, res.Info.TotalSeconds)
	if filepath.Base(filepath.Dir(img)) != ShortKey(res.Key) || res.Info.Key != res.Key {
		t.Errorf("image %s, key %s, info key %s", img, res.Key, res.Info.Key)
	}
	checkImage(t, ctx, img)
	if res.Info.FreeBytes < 256<<20 {
		t.Errorf("free space %d MiB, the recipe asks for 256", res.Info.FreeBytes>>20)
	}
	sb, err := superblock(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	if sb["Block size"] != 4096 {
		t.Errorf("block size %d", sb["Block size"])
	}
	out, _ := exec.Command("dumpe2fs", "-h", img).Output()
	if !strings.Contains(string(out), "Filesystem volume name:   minimal") || strings.Contains(string(out), "has_journal") {
		t.Errorf("want label minimal and no journal:\n%s", out)
	}
	for path, want := range map[string]string{"/etc/hostname": "husk\n"} {
		if got, err := ReadFile(ctx, img, path, 4096); err != nil || string(got) != want {
			t.Errorf("%s: %q, %v; want %q", path, got, err, want)
		}
	}
	for _, p := range []string{"/usr/bin/python3", "/bin/sh", "/usr/lib/python3.11/json/__init__.py", "/etc/passwd"} {
		if st, err := Stat(ctx, img, p); err != nil || st == nil {
			t.Errorf("%s missing (%v)", p, err)
		}
	}
	for _, p := range []string{"/etc/resolv.conf", "/usr/share/man/man1", "/usr/bin/eatmydata", "/sbin/init"} {
		if st, _ := Stat(ctx, img, p); st != nil {
			t.Errorf("%s should not be in the image", p)
		}
	}
	// mmdebstrap's cleanup: no downloaded packages, no package lists.
	for dir, bad := range map[string]string{"/var/cache/apt/archives": ".deb", "/var/lib/apt/lists": "_Packages"} {
		ls, err := debugfs(ctx, img, "ls "+dir)
		if err != nil || strings.Contains(ls, bad) {
			t.Errorf("%s holds %s files (%v):\n%s", dir, bad, err, ls)
		}
	}
	runInImage(t, img, "/usr/bin/python3", "-c", "import json, sqlite3, ssl; print(json.dumps({'ok': 6*7}))")

	// Second build: from the cache, at once.
	start := time.Now()
	again, err := Build(ctx, Options{Recipe: recipe})
	if err != nil {
		t.Fatal(err)
	}
	if !again.Cached || again.Image != img || time.Since(start) > 2*time.Second {
		t.Errorf("second build: cached %v, %s, took %s", again.Cached, again.Image, time.Since(start))
	}

	// An extra file: a derived image keyed by its content; the base stays.
	hello := filepath.Join(t.TempDir(), "hello")
	os.WriteFile(hello, []byte("#!/bin/sh\necho extra says hello\n"), 0o755)
	ex, err := Build(ctx, Options{Recipe: recipe, Extra: map[string]string{"/sbin/husk-hello": hello}, Progress: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	if ex.Key == res.Key || ex.Info.BaseKey != res.Key || len(ex.Info.Extra) != 1 {
		t.Errorf("extra image: key %s base %s extras %+v (base image key %s)", ex.Key, ex.Info.BaseKey, ex.Info.Extra, res.Key)
	}
	// /sbin is a symlink to usr/sbin in bookworm: the file lands behind it.
	if got, err := ReadFile(ctx, ex.Image, "/usr/sbin/husk-hello", 4096); err != nil || !strings.Contains(string(got), "extra says hello") {
		t.Errorf("extra file: %q, %v", got, err)
	}
	if st, _ := Stat(ctx, ex.Image, "/usr/sbin/husk-hello"); st == nil || st.Mode != 0o755 || st.UID != 0 {
		t.Errorf("extra file stat %+v", st)
	}
	if ex.Info.FreeBytes < res.Info.FreeBytes-1<<20 {
		t.Errorf("extra image has %d bytes free, base %d: it should have grown", ex.Info.FreeBytes, res.Info.FreeBytes)
	}
	checkImage(t, ctx, ex.Image)
	runInImage(t, ex.Image, "/sbin/husk-hello")
	if st, _ := Stat(ctx, res.Image, "/usr/sbin/husk-hello"); st != nil {
		t.Error("the extra file leaked into the base image")
	}
	if again, err := Build(ctx, Options{Recipe: recipe, Extra: map[string]string{"/sbin/husk-hello": hello}}); err != nil || !again.Cached || again.Image != ex.Image {
		t.Errorf("second extra build: %+v, %v", again, err)
	}
	checkClean(t, res.Dir, ex.Dir)
}

func TestBuildFeatures(t *testing.T) {
	requireBuilder(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	recipe := filepath.Join("testdata", "features.json")
	if _, err := Build(ctx, Options{Recipe: recipe}); err == nil || !strings.Contains(err.Error(), "needs the extra file") {
		t.Fatalf("required extra missing: err = %v", err)
	}
	agent := filepath.Join(t.TempDir(), "agent")
	os.WriteFile(agent, []byte("#!/bin/sh\necho agent\n"), 0o644)
	res, err := Build(ctx, Options{Recipe: recipe, Extra: map[string]string{"/usr/local/bin/husk-test-agent": agent}, Progress: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	img := res.Image
	checkImage(t, ctx, img)
	if res.Info.ImageBytes < 512<<20 || !res.Info.Journal {
		t.Errorf("size %d (want 512 MiB, plus the extra's growth), journal %v", res.Info.ImageBytes, res.Info.Journal)
	}
	out, _ := exec.Command("dumpe2fs", "-h", img).Output()
	if !strings.Contains(string(out), "has_journal") {
		t.Error("journal: true but the image has no journal")
	}
	passwd, err := ReadFile(ctx, img, "/etc/passwd", 1<<20)
	if err != nil || !strings.Contains(string(passwd), "\nalice:x:1500:1500::/home/alice:/bin/sh\n") {
		t.Errorf("/etc/passwd: %v\n%s", err, passwd)
	}
	for _, tc := range []struct {
		path       string
		typ        string
		mode       uint32
		uid, gid   int
		content    string // "" = not checked
		contentSub bool
	}{
		{"/home/alice", "directory", 0o755, 1500, 1500, "", false},
		{"/etc/husk-test/greeting", "regular", 0o640, 1500, 1500, "hello, template\n", false},
		{"/etc/husk-test/inline", "regular", 0o644, 0, 0, "inline content\n", false},
		{"/srv/work", "directory", 0o700, 1500, 0, "", false},
		{"/etc/husk-test/link", "symlink", 0o777, 0, 0, "", false},
		{"/usr/local/bin/hello", "regular", 0o755, 0, 0, "hello from the image", true},
		{"/etc/husk-test/id-alice", "regular", 0o644, 0, 0, "uid=1500(alice) gid=1500(alice) groups=1500(alice),100(users)\n", false},
		{"/etc/husk-test/hostname-seen", "regular", 0o644, 0, 0, "features\n", false},
		{"/usr/local/bin/husk-test-agent", "regular", 0o750, 1500, 1500, "echo agent", true},
	} {
		st, err := Stat(ctx, img, tc.path)
		if err != nil || st == nil {
			t.Errorf("%s: missing (%v)", tc.path, err)
			continue
		}
		if st.Type != tc.typ || st.Mode != tc.mode || st.UID != tc.uid || st.GID != tc.gid {
			t.Errorf("%s: %s %04o %d:%d, want %s %04o %d:%d", tc.path, st.Type, st.Mode, st.UID, st.GID, tc.typ, tc.mode, tc.uid, tc.gid)
		}
		if tc.content != "" {
			got, err := ReadFile(ctx, img, tc.path, 4096)
			if err != nil || (tc.contentSub && !strings.Contains(string(got), tc.content)) || (!tc.contentSub && string(got) != tc.content) {
				t.Errorf("%s: content %q, %v; want %q", tc.path, got, err, tc.content)
			}
		}
	}
	runInImage(t, img, "/usr/local/bin/hello")
	checkClean(t, res.Dir)
}

// checkImage runs e2fsck -fn and lists / with debugfs.
func checkImage(t *testing.T, ctx context.Context, img string) {
	t.Helper()
	if out, err := exec.CommandContext(ctx, "e2fsck", "-fn", img).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn %s: %v\n%s", img, err, out)
	}
	ls, err := debugfs(ctx, img, "ls -l /")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{" usr", " etc", " bin", " tmp", " home"} {
		if !strings.Contains(ls, name) {
			t.Errorf("debugfs ls -l /: no%s:\n%s", name, ls)
		}
	}
}

// runInImage mounts img read-only through a loop device and runs a command
// in a chroot of it. Without loop devices it skips that part (fails under CI).
func runInImage(t *testing.T, img string, argv ...string) {
	t.Helper()
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-o", "loop,ro", img, mnt).CombinedOutput(); err != nil {
		if kvmtest.InCI() {
			t.Fatalf("mount -o loop,ro: %v: %s", err, out)
		}
		t.Logf("not running %v in the image: mount -o loop,ro: %v: %s", argv, err, out)
		return
	}
	defer func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	}()
	out, err := exec.Command("chroot", append([]string{mnt}, argv...)...).CombinedOutput()
	if err != nil {
		t.Errorf("chroot %s %v: %v\n%s", img, argv, err, out)
		return
	}
	t.Logf("in the image: %v: %s", argv, strings.TrimSpace(string(out)))
}

// checkClean asserts that no scratch (work directories, bootstrap trees,
// publish temporaries) and no mount is left behind for the entries.
func checkClean(t *testing.T, entries ...string) {
	t.Helper()
	for _, e := range entries {
		left, _ := filepath.Glob(globEscape(e) + ".*-*")
		left2, _ := filepath.Glob(rootGlob(e))
		if len(left)+len(left2) > 0 {
			t.Errorf("left behind: %v %v", left, left2)
		}
	}
	if mps, err := mountsUnder(ScratchDir); err != nil || len(mps) > 0 {
		t.Errorf("mounts left under %s: %v %v", ScratchDir, mps, err)
	}
}

// testWriter sends progress lines to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
