package cpio

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestRoundTripWithCpio checks the archive against GNU cpio's reader, an
// independent implementation of the format.
func TestRoundTripWithCpio(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio(1) not installed")
	}
	var buf bytes.Buffer
	w := NewWriter(&buf)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(w.Dir("etc", 0o755))
	must(w.File("etc/hello", 0o644, []byte("hello, world\n")))
	must(w.File("odd", 0o755, []byte("x")))
	must(w.Symlink("link", "etc/hello"))
	must(w.Close())
	if buf.Len()%4 != 0 {
		t.Fatalf("archive length %d not 4-aligned", buf.Len())
	}
	dir := t.TempDir()
	cmd := exec.Command("cpio", "-idm", "--quiet")
	cmd.Dir = dir
	cmd.Stdin = &buf
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i: %v: %s", err, out)
	}
	got, err := os.ReadFile(filepath.Join(dir, "link"))
	must(err)
	if string(got) != "hello, world\n" {
		t.Fatalf("link reads %q", got)
	}
	got, err = os.ReadFile(filepath.Join(dir, "odd"))
	must(err)
	if string(got) != "x" {
		t.Fatalf("odd reads %q", got)
	}
}

func TestRejectsDuplicatesAndBadNames(t *testing.T) {
	w := NewWriter(&bytes.Buffer{})
	if err := w.File("a", 0o644, nil); err != nil {
		t.Fatal(err)
	}
	if err := w.File("/a", 0o644, nil); err == nil {
		t.Fatal("duplicate entry accepted")
	}
	w = NewWriter(&bytes.Buffer{})
	if err := w.File("", 0o644, nil); err == nil {
		t.Fatal("empty name accepted")
	}
}
