package template

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCustomizeScript runs the generated hook with a fake chroot on PATH
// that records its arguments, and checks what would run inside the image:
// hostile-looking commands arrive intact, owners and modes are applied,
// and files.tar holds the files in order.
func TestCustomizeScript(t *testing.T) {
	dir := writeTree(t, map[string]string{
		"r.json": `{"name": "c", "hostname": "box",
			"users": [{"name": "user", "uid": 1000, "groups": ["adm", "users"]}],
			"files": [
				{"path": "/etc/motd", "content": "it's \"quoted\"\n"},
				{"path": "/home/user/work", "type": "dir", "owner": "user:user", "mode": "0700"},
				{"path": "/usr/local/bin/tool", "source": "tool.sh", "mode": "4755", "owner": "user"},
				{"path": "/etc/link", "type": "symlink", "target": "motd", "owner": "1000:1000"}
			],
			"customize": ["echo 'single' \"double\" $HOME; rm -f /x", "true"]}`,
		"tool.sh": "#!/bin/sh\necho tool\n",
	})
	r, err := Load(filepath.Join(dir, "r.json"))
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	b := &builder{r: r}
	script, err := b.writeCustomize(work)
	if err != nil {
		t.Fatal(err)
	}

	bin := t.TempDir()
	record := filepath.Join(work, "calls")
	fake := `#!/bin/sh
# fake chroot: one line per call, arguments separated by |; tar's stdin is saved.
shift
if [ "$1" = tar ]; then cat > "` + work + `/stdin.tar"; fi
(IFS='|'; printf '%s\n' "$*") >> "` + record + `"
exit 0
`
	if err := os.WriteFile(filepath.Join(bin, "chroot"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", script, "/nonexistent-root")
	cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("hook failed: %v\n%s", err, out)
	}
	calls, _ := os.ReadFile(record)
	want := []string{
		"rm|-f|/etc/resolv.conf|/etc/hostname",
		"getent|group|1000",
		"useradd|-u|1000|-g|1000|-m|-d|/home/user|-s|/bin/bash|-G|adm,users|user",
		"tar|-x|-p|--numeric-owner|-C|/|-f|-",
		"chown|-h|user:user|/home/user/work",
		"chmod|0700|/home/user/work",
		"chown|-h|user|/usr/local/bin/tool",
		"chmod|4755|/usr/local/bin/tool",
		"chown|-h|1000:1000|/etc/link",
		`/bin/sh|-c|echo 'single' "double" $HOME; rm -f /x`,
		"/bin/sh|-c|true",
	}
	if got := strings.Split(strings.TrimSpace(string(calls)), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("chroot calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	data, err := os.ReadFile(filepath.Join(work, "stdin.tar"))
	if err != nil {
		t.Fatal(err)
	}
	type entry struct {
		name string
		typ  byte
		mode int64
		body string
		link string
	}
	var got []entry
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s: owner %d:%d in the tar, want 0:0", h.Name, h.Uid, h.Gid)
		}
		body, _ := io.ReadAll(tr)
		got = append(got, entry{h.Name, h.Typeflag, h.Mode, string(body), h.Linkname})
	}
	wantEntries := []entry{
		{"etc/hostname", tar.TypeReg, 0o644, "box\n", ""},
		{"etc/hosts", tar.TypeReg, 0o644, "", ""},
		{"etc/motd", tar.TypeReg, 0o644, "it's \"quoted\"\n", ""},
		{"home/user/work/", tar.TypeDir, 0o700, "", ""},
		{"usr/local/bin/tool", tar.TypeReg, 0o4755, "#!/bin/sh\necho tool\n", ""},
		{"etc/link", tar.TypeSymlink, 0o777, "", "motd"},
	}
	if len(got) != len(wantEntries) {
		t.Fatalf("tar entries %+v, want %+v", got, wantEntries)
	}
	for i, w := range wantEntries {
		g := got[i]
		if w.name == "etc/hosts" {
			if !strings.Contains(g.body, "127.0.1.1\tbox\n") {
				t.Errorf("/etc/hosts: %q", g.body)
			}
			w.body = g.body
		}
		if g != w {
			t.Errorf("tar entry %d: %+v, want %+v", i, g, w)
		}
	}
}

// TestSourceChangedDuringBuild: content that no longer matches the hash the
// key was made from must not reach an image.
func TestSourceChangedDuringBuild(t *testing.T) {
	dir := writeTree(t, map[string]string{
		"r.json": `{"name": "c", "files": [{"path": "/etc/f", "source": "f"}]}`,
		"f":      "one",
	})
	r, err := Load(filepath.Join(dir, "r.json"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "f"), []byte("two"), 0o644)
	b := &builder{r: r}
	if _, err := b.writeCustomize(t.TempDir()); err == nil || !strings.Contains(err.Error(), "changed while building") {
		t.Fatalf("err = %v", err)
	}
}

func TestDebugfsScript(t *testing.T) {
	xs := []Extra{
		{Path: "/init", Mode: "0755"},
		{Path: "/usr/local/bin/agent", Mode: "0700", UID: 1000, GID: 100},
	}
	got := debugfsScript(xs, []string{"/", "/usr/local/bin"})
	want := `cd /
rm init
write extra-0 init
sif init mode 0100755
sif init uid 0
sif init gid 0
mkdir /usr
mkdir /usr/local
mkdir /usr/local/bin
cd /usr/local/bin
rm agent
write extra-1 agent
sif agent mode 0100700
sif agent uid 1000
sif agent gid 100
`
	if got != want {
		t.Errorf("script:\n%s\nwant:\n%s", got, want)
	}
}
