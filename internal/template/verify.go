package template

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
)

// checksFor lists the paths a finished image must hold: the recipe's
// expectations, every file it added, every user's home and shell, and the
// extra files.
func checksFor(r *Recipe, extras []Extra) []string {
	var paths []string
	paths = append(paths, r.Expect...)
	for _, f := range r.Files {
		paths = append(paths, f.Path)
	}
	for _, u := range r.Users {
		paths = append(paths, u.Home, u.Shell)
	}
	for _, x := range extras {
		paths = append(paths, x.Path)
	}
	return sortedUnique(paths)
}

// verifyImage checks img without mounting it: e2fsck -fn must find nothing
// to fix, every path of checksFor must exist, every user must be in
// /etc/passwd as declared, and every extra file must hold its content with
// its mode and owner.
func verifyImage(ctx context.Context, img string, r *Recipe, extras []Extra) error {
	if out, err := exec.CommandContext(ctx, "e2fsck", "-fn", img).CombinedOutput(); err != nil {
		return fmt.Errorf("e2fsck -fn: %w:\n%s", err, tailLines(string(out), 20))
	}
	var missing []string
	for _, p := range checksFor(r, extras) {
		st, err := Stat(ctx, img, p)
		if err != nil {
			return err
		}
		if st == nil {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing from the image: %s", strings.Join(missing, ", "))
	}
	if len(r.Users) > 0 {
		passwd, err := ReadFile(ctx, img, "/etc/passwd", 1<<20)
		if err != nil {
			return err
		}
		for _, u := range r.Users {
			want := fmt.Sprintf("%s:x:%d:%d:", u.Name, u.UID, u.GID)
			found := false
			for _, l := range strings.Split(string(passwd), "\n") {
				if strings.HasPrefix(l, want) && strings.HasSuffix(l, ":"+u.Home+":"+u.Shell) {
					found = true
				}
			}
			if !found {
				return fmt.Errorf("/etc/passwd has no line %s...:%s:%s", want, u.Home, u.Shell)
			}
		}
	}
	for _, x := range extras {
		st, err := Stat(ctx, img, x.Path)
		if err != nil {
			return err
		}
		mode, _ := strconv.ParseUint(x.Mode, 8, 32)
		if st.Type != "regular" || st.Mode != uint32(mode) || st.UID != x.UID || st.GID != x.GID || st.Size != x.Bytes {
			return fmt.Errorf("extra %s: image has %s mode %04o owner %d:%d size %d, want regular %s %d:%d %d",
				x.Path, st.Type, st.Mode, st.UID, st.GID, st.Size, x.Mode, x.UID, x.GID, x.Bytes)
		}
		h := sha256.New()
		if err := debugfsCat(ctx, img, x.Path, h); err != nil {
			return err
		}
		if sum := hex.EncodeToString(h.Sum(nil)); sum != x.SHA256 {
			return fmt.Errorf("extra %s: content sha256 %s, want %s", x.Path, sum, x.SHA256)
		}
	}
	return nil
}

// InodeStat is what debugfs's stat reports about one path.
type InodeStat struct {
	Type     string // "regular", "directory", "symlink", ...
	Mode     uint32 // permission bits
	UID, GID int
	Size     int64
}

// Stat reads an inode of an ext4 image with debugfs (following symlinks in
// directories, not in the last component). It returns nil, nil if the path
// does not exist.
func Stat(ctx context.Context, img, path string) (*InodeStat, error) {
	if err := checkPathSyntax(path); err != nil {
		return nil, err
	}
	out, err := debugfs(ctx, img, "stat "+path)
	if err != nil {
		return nil, err
	}
	f := strings.Fields(out)
	val := func(k string) string {
		for i := range f[:max(len(f)-1, 0)] {
			if f[i] == k {
				return f[i+1]
			}
		}
		return ""
	}
	if val("Inode:") == "" {
		return nil, nil
	}
	st := &InodeStat{Type: val("Type:")}
	mode, err1 := strconv.ParseUint(val("Mode:"), 8, 32)
	uid, err2 := strconv.Atoi(val("User:"))
	gid, err3 := strconv.Atoi(val("Group:"))
	size, err4 := strconv.ParseInt(val("Size:"), 10, 64)
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return nil, fmt.Errorf("debugfs stat %s: unexpected output: %w\n%s", path, err, out)
	}
	st.Mode, st.UID, st.GID, st.Size = uint32(mode), uid, gid, size
	return st, nil
}

// ReadFile returns a file of an ext4 image, read with debugfs, up to max bytes.
func ReadFile(ctx context.Context, img, path string, max int64) ([]byte, error) {
	if err := checkPathSyntax(path); err != nil {
		return nil, err
	}
	var b limitedBuffer
	b.max = max
	if err := debugfsCat(ctx, img, path, &b); err != nil {
		return nil, err
	}
	if b.over {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, max)
	}
	return b.Bytes(), nil
}

type limitedBuffer struct {
	bytes.Buffer
	max  int64
	over bool
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if int64(b.Len()+len(p)) > b.max {
		b.over = true
		return len(p), nil
	}
	return b.Buffer.Write(p)
}

func debugfsCat(ctx context.Context, img, path string, w io.Writer) error {
	if st, err := Stat(ctx, img, path); err != nil {
		return err
	} else if st == nil {
		return fmt.Errorf("%s: not in %s", path, img)
	}
	cmd := exec.CommandContext(ctx, "debugfs", "-R", "cat "+path, img)
	cmd.Stdout = w
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("debugfs cat %s: %w: %s", path, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// debugfs runs one read-only request and returns its standard output.
func debugfs(ctx context.Context, img, request string) (string, error) {
	cmd := exec.CommandContext(ctx, "debugfs", "-R", request, img)
	cmd.Env = append(os.Environ(), "DEBUGFS_PAGER=__none__", "PAGER=__none__")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("debugfs %q %s: %w: %s", request, img, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
