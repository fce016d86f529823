package template

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// repoRoot is the repository root, found from this file's location.
func repoRoot(t testing.TB) string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("no caller information")
	}
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func TestShippedRecipes(t *testing.T) {
	dir := filepath.Join(repoRoot(t), "guest", "templates")
	for _, name := range []string{"minimal", "base"} {
		r, err := Load(filepath.Join(dir, name+".json"))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if r.Name != name {
			t.Errorf("%s.json: name %q, want the file's name", name, r.Name)
		}
		if r.Suite != "bookworm" || r.Variant != "minbase" {
			t.Errorf("%s: suite/variant %s/%s", name, r.Suite, r.Variant)
		}
		if !contains(r.Packages, "python3") {
			t.Errorf("%s: no python3 in %v", name, r.Packages)
		}
	}
	base, err := Load(filepath.Join(dir, "base.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"bash", "coreutils", "python3", "nodejs", "git", "curl", "ca-certificates"} {
		if !contains(base.Packages, p) {
			t.Errorf("base: missing package %s", p)
		}
	}
	if len(base.Users) != 1 || base.Users[0].Name != "user" || base.Users[0].UID != 1000 ||
		base.Users[0].Home != "/home/user" || base.Users[0].Shell != "/bin/bash" {
		t.Errorf("base: users %+v, want user 1000 /home/user /bin/bash", base.Users)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestParseDefaults(t *testing.T) {
	r, err := Parse([]byte(`{"name": "t.x_1", "packages": ["b", "a", "b"],
		"files": [{"path": "/etc/x", "content": "x"}, {"path": "/srv/d", "type": "dir"}],
		"users": [{"name": "u", "uid": 1001}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if r.Suite != DefaultSuite || r.Variant != DefaultVariant || r.Size.FreeMiB != DefaultFreeMiB || r.Hostname != "t-x-1" {
		t.Errorf("defaults: %+v", r)
	}
	if strings.Join(r.Packages, ",") != "a,b" {
		t.Errorf("packages %v, want sorted and deduplicated", r.Packages)
	}
	if f := r.Files[0]; f.Type != "file" || f.Mode != "0644" || f.Owner != "0:0" {
		t.Errorf("file defaults: %+v", f)
	}
	if f := r.Files[1]; f.Mode != "0755" {
		t.Errorf("dir default mode %s", f.Mode)
	}
	if u := r.Users[0]; u.GID != 1001 || u.Home != "/home/u" || u.Shell != "/bin/bash" {
		t.Errorf("user defaults: %+v", u)
	}
}

func TestParseRejects(t *testing.T) {
	for _, tc := range []struct{ name, json, want string }{
		{"not json", `{`, "parse"},
		{"trailing", `{"name":"a"} {}`, "trailing"},
		{"unknown field", `{"name":"a","pakages":["x"]}`, "unknown field"},
		{"no name", `{}`, "name"},
		{"name with slash", `{"name":"../a"}`, "name"},
		{"name upper", `{"name":"Base"}`, "name"},
		{"variant", `{"name":"a","variant":"extract"}`, "variant"},
		{"suite", `{"name":"a","suite":"bookworm;rm"}`, "suite"},
		{"package comma", `{"name":"a","packages":["python3,evil"]}`, "package"},
		{"package option", `{"name":"a","packages":["--allow-unauthenticated"]}`, "package"},
		{"package space", `{"name":"a","packages":["a b"]}`, "package"},
		{"mirror newline", `{"name":"a","mirrors":["deb http://x bookworm main\ndeb http://evil x y"]}`, "mirror"},
		{"mirror scheme", `{"name":"a","mirrors":["file:///etc"]}`, "mirror"},
		{"dot dot", `{"name":"a","files":[{"path":"/etc/../../x","content":""}]}`, "not clean"},
		{"dot dot component", `{"name":"a","files":[{"path":"/..","content":""}]}`, "path"},
		{"relative", `{"name":"a","files":[{"path":"etc/x","content":""}]}`, "absolute"},
		{"root", `{"name":"a","files":[{"path":"/","type":"dir"}]}`, "below /"},
		{"trailing slash", `{"name":"a","files":[{"path":"/etc/","content":""}]}`, "not clean"},
		{"space", `{"name":"a","files":[{"path":"/etc/a b","content":""}]}`, "component"},
		{"quote", `{"name":"a","files":[{"path":"/etc/a'b","content":""}]}`, "component"},
		{"newline", `{"name":"a","files":[{"path":"/etc/a\nb","content":""}]}`, "component"},
		{"proc", `{"name":"a","files":[{"path":"/proc/sys/kernel/hostname","content":"x"}]}`, "mounted from the host"},
		{"dev", `{"name":"a","files":[{"path":"/dev/sda","content":"x"}]}`, "mounted from the host"},
		{"sys", `{"name":"a","files":[{"path":"/sys","type":"dir"}]}`, "mounted from the host"},
		{"source abs", `{"name":"a","files":[{"path":"/etc/x","source":"/etc/shadow"}]}`, "relative"},
		{"source escape", `{"name":"a","files":[{"path":"/etc/x","source":"../../etc/shadow"}]}`, "without .."},
		{"source and content", `{"name":"a","files":[{"path":"/etc/x","source":"f","content":"x"}]}`, "exactly one"},
		{"neither", `{"name":"a","files":[{"path":"/etc/x"}]}`, "exactly one"},
		{"sha given", `{"name":"a","files":[{"path":"/etc/x","content":"x","sha256":"00"}]}`, "computed"},
		{"dup path", `{"name":"a","files":[{"path":"/etc/x","content":"x"},{"path":"/etc/x","content":"y"}]}`, "twice"},
		{"bad type", `{"name":"a","files":[{"path":"/etc/x","type":"fifo"}]}`, "type"},
		{"symlink mode", `{"name":"a","files":[{"path":"/etc/x","type":"symlink","target":"y","mode":"0644"}]}`, "symlink"},
		{"symlink no target", `{"name":"a","files":[{"path":"/etc/x","type":"symlink"}]}`, "target"},
		{"mode", `{"name":"a","files":[{"path":"/etc/x","content":"","mode":"0999"}]}`, "mode"},
		{"mode big", `{"name":"a","files":[{"path":"/etc/x","content":"","mode":"017777"}]}`, "mode"},
		{"owner", `{"name":"a","files":[{"path":"/etc/x","content":"","owner":"a;b"}]}`, "owner"},
		{"owner id", `{"name":"a","files":[{"path":"/etc/x","content":"","owner":"99999999:0"}]}`, "owner"},
		{"huge inline", `{"name":"a","files":[{"path":"/etc/x","content":"` + strings.Repeat("x", MaxInlineBytes+1) + `"}]}`, "larger than"},
		{"root user", `{"name":"a","users":[{"name":"root","uid":1}]}`, "not root"},
		{"uid 0", `{"name":"a","users":[{"name":"u","uid":0}]}`, "uid"},
		{"uid big", `{"name":"a","users":[{"name":"u","uid":65534}]}`, "uid"},
		{"user name", `{"name":"a","users":[{"name":"u;rm -rf /","uid":1000}]}`, "login name"},
		{"dup user", `{"name":"a","users":[{"name":"u","uid":1000},{"name":"u","uid":1001}]}`, "twice"},
		{"dup uid", `{"name":"a","users":[{"name":"u","uid":1000},{"name":"v","uid":1000}]}`, "twice"},
		{"home", `{"name":"a","users":[{"name":"u","uid":1000,"home":"/home/../etc"}]}`, "home"},
		{"shell", `{"name":"a","users":[{"name":"u","uid":1000,"shell":"bash"}]}`, "shell"},
		{"group", `{"name":"a","users":[{"name":"u","uid":1000,"groups":["a b"]}]}`, "group"},
		{"hostname", `{"name":"a","hostname":"-x"}`, "hostname"},
		{"hostname dots", `{"name":"a","hostname":"a.b"}`, "hostname"},
		{"huge free", `{"name":"a","size":{"free_mib":1000000000}}`, "larger than"},
		{"huge fixed", `{"name":"a","size":{"fixed_mib":9223372036854775807}}`, "larger than"},
		{"overflow", `{"name":"a","size":{"fixed_mib":99999999999999999999}}`, "parse"},
		{"negative", `{"name":"a","size":{"free_mib":-1}}`, "negative"},
		{"both sizes", `{"name":"a","size":{"free_mib":1,"fixed_mib":100}}`, "not both"},
		{"tiny fixed", `{"name":"a","size":{"fixed_mib":1}}`, "below"},
		{"inodes", `{"name":"a","size":{"free_inodes":1000000000}}`, "free_inodes"},
		{"empty command", `{"name":"a","customize":[" "]}`, "empty"},
		{"nul command", `{"name":"a","customize":["a\u0000b"]}`, "NUL"},
		{"glob", `{"name":"a","path_exclude":["usr/share/doc/*"]}`, "glob"},
		{"glob newline", `{"name":"a","path_exclude":["/usr/*\npath-include=/x"]}`, "glob"},
		{"extra owner", `{"name":"a","extra":[{"path":"/sbin/x","owner":"root"}]}`, "numeric"},
		{"extra path", `{"name":"a","extra":[{"path":"sbin/x"}]}`, "absolute"},
		{"expect", `{"name":"a","expect":["../x"]}`, "absolute"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.json))
			if err == nil {
				t.Fatalf("accepted %s", tc.json)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestParseTooLarge(t *testing.T) {
	big := `{"name":"a","customize":["` + strings.Repeat("x", MaxRecipeBytes) + `"]}`
	if _, err := Parse([]byte(big)); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("err = %v", err)
	}
	p := filepath.Join(t.TempDir(), "r.json")
	os.WriteFile(p, []byte(big), 0o644)
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("Load: err = %v", err)
	}
}

// writeRecipe writes files (relative path -> content) below a new directory
// and returns the directory.
func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestLoadSources(t *testing.T) {
	top := writeTree(t, map[string]string{
		"secret":                 "outside",
		"recipes/files/hello":    "hello\n",
		"recipes/files/sub/deep": "deep\n",
	})
	rdir := filepath.Join(top, "recipes")
	os.Symlink("../secret", filepath.Join(rdir, "files", "escape"))
	os.Symlink(filepath.Join(top, "secret"), filepath.Join(rdir, "files", "escape-abs"))
	os.Symlink("hello", filepath.Join(rdir, "files", "inside-link"))
	os.Mkdir(filepath.Join(rdir, "files", "adir"), 0o755)

	load := func(source string) (*Recipe, error) {
		p := filepath.Join(rdir, "r.json")
		os.WriteFile(p, []byte(`{"name":"s","files":[{"path":"/etc/x","source":"`+source+`"}]}`), 0o644)
		return Load(p)
	}
	r, err := load("files/hello")
	if err != nil {
		t.Fatal(err)
	}
	const helloSum = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
	if r.Files[0].SHA256 != helloSum {
		t.Errorf("sha256 %s, want %s", r.Files[0].SHA256, helloSum)
	}
	if _, err := load("files/inside-link"); err != nil {
		t.Errorf("symlink inside the recipe directory: %v", err)
	}
	if _, err := load("files/sub/deep"); err != nil {
		t.Errorf("subdirectory: %v", err)
	}
	for _, bad := range []string{"../secret", "files/../../secret", "files/escape", "files/escape-abs", "files/adir", "files/missing", "/etc/passwd"} {
		if _, err := load(bad); err == nil {
			t.Errorf("source %q accepted", bad)
		}
	}
}

func TestResolveExtra(t *testing.T) {
	dir := writeTree(t, map[string]string{"agent": "AGENT", "data": "DATA"})
	agent, data := filepath.Join(dir, "agent"), filepath.Join(dir, "data")
	os.Chmod(agent, 0o700)
	r, err := Parse([]byte(`{"name":"a","files":[{"path":"/etc/x","content":""}],
		"extra":[{"path":"/usr/local/bin/agent","required":true,"owner":"0:0"},{"path":"/etc/data","mode":"0600","owner":"1000:1000"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.ResolveExtra(nil); err == nil || !strings.Contains(err.Error(), "needs the extra file /usr/local/bin/agent") {
		t.Fatalf("missing required extra: err = %v", err)
	}
	xs, err := r.ResolveExtra(map[string]string{"/usr/local/bin/agent": agent, "/etc/data": data, "/opt/plain": data})
	if err != nil {
		t.Fatal(err)
	}
	if len(xs) != 3 || xs[0].Path != "/etc/data" || xs[1].Path != "/opt/plain" || xs[2].Path != "/usr/local/bin/agent" {
		t.Fatalf("not sorted by path: %+v", xs)
	}
	if x := xs[0]; x.Mode != "0600" || x.UID != 1000 || x.GID != 1000 || x.Bytes != 4 {
		t.Errorf("slot mode/owner not applied: %+v", x)
	}
	if x := xs[1]; x.Mode != "0644" || x.UID != 0 {
		t.Errorf("undeclared non-executable extra: %+v", x)
	}
	if x := xs[2]; x.Mode != "0755" {
		t.Errorf("executable extra: mode %s, want 0755", x.Mode)
	}
	for name, extra := range map[string]map[string]string{
		"bad path":     {"/usr/local/bin/agent": agent, "/etc/../x": data},
		"proc":         {"/usr/local/bin/agent": agent, "/proc/x": data},
		"clash":        {"/usr/local/bin/agent": agent, "/etc/x": data},
		"missing file": {"/usr/local/bin/agent": filepath.Join(dir, "nope")},
		"directory":    {"/usr/local/bin/agent": dir},
	} {
		if _, err := r.ResolveExtra(extra); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestImageGeometry(t *testing.T) {
	tree := treeSize{files: 10000, bytes: 200 << 20}
	size, inodes, err := imageGeometry(Size{FreeMiB: 256}, false, tree)
	if err != nil {
		t.Fatal(err)
	}
	if size < (200+256)<<20 || size%(1<<20) != 0 {
		t.Errorf("size %d: want at least content + free, in MiB", size)
	}
	if inodes < tree.files+16384 {
		t.Errorf("inodes %d: want the tree's plus at least 16384", inodes)
	}
	withJournal, _, _ := imageGeometry(Size{FreeMiB: 256}, true, tree)
	if withJournal <= size {
		t.Errorf("journal does not make the image larger: %d <= %d", withJournal, size)
	}
	if s, n, err := imageGeometry(Size{FixedMiB: 1024, FreeInodes: 5000}, false, tree); err != nil || s != 1<<30 || n != 15000 {
		t.Errorf("fixed: %d, %d, %v", s, n, err)
	}
	if _, _, err := imageGeometry(Size{FixedMiB: 200}, false, tree); err == nil {
		t.Error("content larger than fixed_mib accepted")
	}
	if _, _, err := imageGeometry(Size{FreeMiB: MaxImageMiB}, false, tree); err == nil {
		t.Error("image above MaxImageMiB accepted")
	}
}

func TestUUIDFromKey(t *testing.T) {
	u := uuidFromKey("bf92c29c72cd95a8dfd58ba9d654572e2c75996fb60cabacd927fb2fe2b230c3")
	if u != "bf92c29c-72cd-45a8-9fd5-8ba9d654572e" {
		t.Errorf("uuid %s", u)
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	if got := unescapeMountinfo(`/a\040b\134c\011d`); got != "/a b\\c\td" {
		t.Errorf("got %q", got)
	}
}

func TestCheckOwner(t *testing.T) {
	for _, ok := range []string{"0:0", "user", "user:user", "1000:100", "root:adm", "www-data"} {
		if err := checkOwner(ok, false); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", ":", "user:", ":x", "a:b:c", "A", "u u", "70000:0"} {
		if err := checkOwner(bad, false); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if err := checkOwner("user:user", true); err == nil {
		t.Error("names accepted where numeric ids are required")
	}
	if err := checkOwner("0", true); err == nil {
		t.Error("uid without gid accepted where uid:gid is required")
	}
}
