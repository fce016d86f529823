package cache

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestRoot(t *testing.T) {
	for _, tc := range []struct {
		name                  string
		husk, xdg, home, want string
	}{
		{name: "husk cache wins", husk: "/c/h", xdg: "/x", home: "/home/u", want: "/c/h"},
		{name: "xdg", xdg: "/x", home: "/home/u", want: "/x/husk"},
		{name: "relative xdg is ignored", xdg: "rel", home: "/home/u", want: "/home/u/.cache/husk"},
		{name: "home", home: "/home/u", want: "/home/u/.cache/husk"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("HUSK_CACHE", tc.husk)
			t.Setenv("XDG_CACHE_HOME", tc.xdg)
			t.Setenv("HOME", tc.home)
			got, err := Root()
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("Root() = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestDirCreates(t *testing.T) {
	root := t.TempDir()
	t.Setenv("HUSK_CACHE", root)
	d, err := Dir("kernel", "abc")
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(root, "kernel", "abc"); d != want {
		t.Fatalf("Dir = %q, want %q", d, want)
	}
	if fi, err := os.Stat(d); err != nil || !fi.IsDir() {
		t.Fatalf("Dir did not create %s: %v", d, err)
	}
}

func TestPublish(t *testing.T) {
	final := filepath.Join(t.TempDir(), "entry")
	boom := errors.New("boom")
	if err := Publish(final, func(tmp string) error {
		if err := os.WriteFile(filepath.Join(tmp, "half"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		return boom
	}); !errors.Is(err, boom) {
		t.Fatalf("failed fill: err = %v, want boom", err)
	}
	if Exists(final) || Exists(TempName(final)) {
		t.Fatal("failed fill left a directory behind")
	}

	if err := Publish(final, func(tmp string) error {
		return os.WriteFile(filepath.Join(tmp, "f"), []byte("one"), 0o644)
	}); err != nil {
		t.Fatal(err)
	}
	// A second publisher losing the race keeps the first copy and succeeds.
	if err := Publish(final, func(tmp string) error {
		return os.WriteFile(filepath.Join(tmp, "f"), []byte("two"), 0o644)
	}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(final, "f")); string(b) != "one" {
		t.Fatalf("content %q, want the first publication", b)
	}
	if Exists(TempName(final)) {
		t.Fatal("losing publisher left its temporary directory")
	}
}

func TestPublishFile(t *testing.T) {
	final := filepath.Join(t.TempDir(), "f")
	if err := PublishFile(final, 0o644, func(f *os.File) error {
		_, err := f.WriteString("data")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	if err := PublishFile(final, 0o644, func(f *os.File) error {
		f.WriteString("partial")
		return boom
	}); !errors.Is(err, boom) {
		t.Fatalf("err = %v, want boom", err)
	}
	if b, _ := os.ReadFile(final); string(b) != "data" {
		t.Fatalf("content %q, want %q", b, "data")
	}
	if Exists(TempName(final)) {
		t.Fatal("temporary file left behind")
	}
}

func TestLock(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.lock")
	release, err := Lock(p)
	if err != nil {
		t.Fatal(err)
	}
	// flock locks belong to the open file description, so a second open in
	// the same process contends like another process would.
	if _, err := TryLock(p); !errors.Is(err, ErrLocked) {
		t.Fatalf("TryLock while held: err = %v, want ErrLocked", err)
	}
	release()
	r2, err := TryLock(p)
	if err != nil {
		t.Fatalf("TryLock after release: %v", err)
	}
	r2()
}

func TestRemoveStale(t *testing.T) {
	dir := t.TempDir()
	final := filepath.Join(dir, "e[1]")
	for _, n := range []string{final + ".tmp-1", final + ".tmp-22", filepath.Join(dir, "e1.tmp-3"), final} {
		if err := os.MkdirAll(n, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := RemoveStale(final); err != nil {
		t.Fatal(err)
	}
	if Exists(final+".tmp-1") || Exists(final+".tmp-22") {
		t.Fatal("stale temporaries survived")
	}
	if !Exists(final) || !Exists(filepath.Join(dir, "e1.tmp-3")) {
		t.Fatal("RemoveStale removed more than the temporaries of final")
	}
}

func TestLinkOrCopy(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, []byte("x"), 0o750); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "dst")
	os.WriteFile(dst, []byte("old"), 0o600)
	if err := LinkOrCopy(src, dst); err != nil {
		t.Fatal(err)
	}
	a, _ := os.Stat(src)
	b, _ := os.Stat(dst)
	if !os.SameFile(a, b) {
		t.Error("same file system: want a hard link")
	}
	cp := filepath.Join(dir, "cp")
	if err := CopyFile(src, cp); err != nil {
		t.Fatal(err)
	}
	c, err := os.Stat(cp)
	if err != nil || os.SameFile(a, c) || c.Mode().Perm() != 0o750 {
		t.Errorf("copy: %v %v", c, err)
	}
	if b, _ := os.ReadFile(cp); string(b) != "x" {
		t.Errorf("copy holds %q", b)
	}
}
