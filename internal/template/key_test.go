package template

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const keyBase = `{
	"name": "k",
	"suite": "bookworm",
	"variant": "minbase",
	"packages": ["python3", "git", "curl"],
	"path_exclude": ["/usr/share/doc/*"],
	"users": [{"name": "user", "uid": 1000}],
	"files": [{"path": "/etc/motd", "content": "hi\n"}, {"path": "/etc/f", "source": "f.txt"}],
	"hostname": "husk",
	"size": {"free_mib": 256},
	"customize": ["echo ok"],
	"expect": ["/usr/bin/python3"]
}`

// loadKey writes recipe (and f.txt with content f) into a new directory
// and returns the loaded recipe's key.
func loadKey(t *testing.T, recipe, f string) (*Recipe, string) {
	t.Helper()
	dir := writeTree(t, map[string]string{"r.json": recipe, "f.txt": f})
	r, err := Load(filepath.Join(dir, "r.json"))
	if err != nil {
		t.Fatalf("%v\n%s", err, recipe)
	}
	return r, r.Key()
}

func TestKeyChangesWithEveryField(t *testing.T) {
	_, base := loadKey(t, keyBase, "F")
	if len(base) != 64 {
		t.Fatalf("key %q: want 64 hex digits", base)
	}
	if _, again := loadKey(t, keyBase, "F"); again != base {
		t.Fatal("the same recipe gave two keys")
	}
	for _, tc := range []struct{ name, old, new string }{
		{"name", `"name": "k"`, `"name": "k2"`},
		{"suite", `"suite": "bookworm"`, `"suite": "trixie"`},
		{"variant", `"variant": "minbase"`, `"variant": "required"`},
		{"package added", `"curl"]`, `"curl", "jq"]`},
		{"package removed", `"git", `, ``},
		{"recommends", `"hostname"`, `"recommends": true, "hostname"`},
		{"mirror", `"hostname"`, `"mirrors": ["http://example.org/debian"], "hostname"`},
		{"path exclude", `"/usr/share/doc/*"`, `"/usr/share/man/*"`},
		{"user uid", `"uid": 1000`, `"uid": 1001`},
		{"user shell", `"uid": 1000`, `"uid": 1000, "shell": "/bin/sh"`},
		{"user groups", `"uid": 1000`, `"uid": 1000, "groups": ["users"]`},
		{"file content", `"hi\n"`, `"hi!\n"`},
		{"file path", `"/etc/motd"`, `"/etc/motd2"`},
		{"file mode", `"content": "hi\n"`, `"content": "hi\n", "mode": "0600"`},
		{"file owner", `"content": "hi\n"`, `"content": "hi\n", "owner": "user"`},
		{"file added", `"source": "f.txt"}`, `"source": "f.txt"}, {"path": "/srv", "type": "dir"}`},
		{"hostname", `"hostname": "husk"`, `"hostname": "box"`},
		{"free size", `"free_mib": 256`, `"free_mib": 512`},
		{"fixed size", `"free_mib": 256`, `"fixed_mib": 2048`},
		{"free inodes", `"free_mib": 256`, `"free_mib": 256, "free_inodes": 100000`},
		{"journal", `"hostname"`, `"journal": true, "hostname"`},
		{"command", `"echo ok"`, `"echo ok2"`},
		{"command added", `"echo ok"`, `"echo ok", "true"`},
		{"expect", `"/usr/bin/python3"`, `"/usr/bin/git"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(keyBase, tc.old) {
				t.Fatalf("test bug: %q not in the recipe", tc.old)
			}
			_, k := loadKey(t, strings.Replace(keyBase, tc.old, tc.new, 1), "F")
			if k == base {
				t.Errorf("changing %s did not change the key", tc.name)
			}
		})
	}
	t.Run("source content", func(t *testing.T) {
		if _, k := loadKey(t, keyBase, "G"); k == base {
			t.Error("changing a source file's content did not change the key")
		}
	})
}

func TestKeyStableUnderEquivalentEdits(t *testing.T) {
	_, base := loadKey(t, keyBase, "F")
	for _, tc := range []struct{ name, old, new string }{
		{"package order", `["python3", "git", "curl"]`, `["curl", "python3", "git"]`},
		{"duplicate package", `["python3", "git", "curl"]`, `["git", "python3", "git", "curl"]`},
		{"whitespace", "\n\t", "\n    "},
		{"defaults spelled out", `"uid": 1000`, `"uid": 1000, "gid": 1000, "home": "/home/user", "shell": "/bin/bash"`},
		{"mode spelled differently", `"content": "hi\n"`, `"content": "hi\n", "mode": "644"`},
		{"extra slot", `"hostname"`, `"extra": [{"path": "/usr/local/bin/agent"}], "hostname"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, k := loadKey(t, strings.ReplaceAll(keyBase, tc.old, tc.new), "F")
			if k != base {
				t.Errorf("%s changed the key", tc.name)
			}
		})
	}
	t.Run("source renamed", func(t *testing.T) {
		dir := writeTree(t, map[string]string{"r.json": strings.Replace(keyBase, "f.txt", "other.txt", 1), "other.txt": "F"})
		r, err := Load(filepath.Join(dir, "r.json"))
		if err != nil {
			t.Fatal(err)
		}
		if r.Key() != base {
			t.Error("renaming a source file (same content) changed the key")
		}
	})
}

func TestExtraKey(t *testing.T) {
	r, base := loadKey(t, keyBase, "F")
	dir := t.TempDir()
	write := func(name, data string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		return p
	}
	a1 := write("a1", "agent v1", 0o755)
	a2 := write("a2", "agent v2", 0o755)
	a1copy := write("a1copy", "agent v1", 0o755)
	a1plain := write("a1plain", "agent v1", 0o644)
	key := func(files map[string]string) string {
		xs, err := r.ResolveExtra(files)
		if err != nil {
			t.Fatal(err)
		}
		return ExtraKey(base, xs)
	}
	k1 := key(map[string]string{"/usr/local/bin/agent": a1})
	if k1 == base {
		t.Fatal("extra key equals the base key")
	}
	if key(map[string]string{"/usr/local/bin/agent": a1copy}) != k1 {
		t.Error("the same content from another host path changed the key")
	}
	if key(map[string]string{"/usr/local/bin/agent": a2}) == k1 {
		t.Error("new content did not change the key")
	}
	if key(map[string]string{"/usr/local/bin/agent": a1plain}) == k1 {
		t.Error("a different mode did not change the key")
	}
	if key(map[string]string{"/usr/local/bin/agent2": a1}) == k1 {
		t.Error("a different image path did not change the key")
	}
	two := key(map[string]string{"/usr/local/bin/agent": a1, "/etc/a2": a2})
	if two == k1 {
		t.Error("adding an extra did not change the key")
	}
	// Map order is random; the key must not be.
	for i := 0; i < 20; i++ {
		if key(map[string]string{"/usr/local/bin/agent": a1, "/etc/a2": a2}) != two {
			t.Fatal("the key depends on map order")
		}
	}
	if ExtraKey(strings.Repeat("0", 64), nil) == ExtraKey(strings.Repeat("1", 64), nil) {
		t.Error("the base key is not part of the extra key")
	}
}

func TestCanonicalHasNoSourcePaths(t *testing.T) {
	r, _ := loadKey(t, keyBase, "F")
	c := string(r.Canonical())
	if strings.Contains(c, "f.txt") || !strings.Contains(c, r.Files[1].SHA256) {
		t.Errorf("canonical recipe should name source files by hash, not path:\n%s", c)
	}
	back, err := Parse(r.Canonical())
	if err == nil {
		t.Errorf("canonical recipe re-parsed as a recipe (sha256 must be rejected): %+v", back)
	}
}
