package template

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// derive builds (or finds) the image holding extras on top of the recipe's
// base image: a sparse copy of the base, grown by the extras' size with
// resize2fs so that the recipe's free space stays free, with the files
// written in by debugfs (no mount, no chroot).
func (b *builder) derive(ctx context.Context, extras []Extra) (*Result, error) {
	baseKey := b.r.Key()
	key := ExtraKey(baseKey, extras)
	short := ShortKey(key)
	final := filepath.Join(b.dir, short)
	if !b.o.Force {
		if res := cached(final, key); res != nil {
			touch(final)
			return res, nil
		}
	}
	if err := checkTools(); err != nil {
		return nil, err
	}
	release, done, err := b.lockEntry(final, key, b.o.Force)
	if err != nil || done != nil {
		return done, err
	}
	defer release()
	start := time.Now()
	base, err := b.base(ctx, b.o.Force)
	if err != nil {
		return nil, err
	}
	t := time.Now()
	work := fmt.Sprintf("%s.work-%d", final, os.Getpid())
	if err := os.MkdirAll(work, 0o755); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if ok {
			os.RemoveAll(work)
		} else {
			os.Remove(filepath.Join(work, ImageName))
			for i := range extras {
				os.Remove(filepath.Join(work, fmt.Sprintf("extra-%d", i)))
			}
			b.logf("adding extra files failed; log kept in %s", work)
		}
	}()
	logf, err := os.Create(filepath.Join(work, LogName))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "base image %s (%s)\n", base.Image, base.Key)

	// Copy every extra into the scratch directory, re-hashing it: what goes
	// into the image is exactly what the key covers, and debugfs reads
	// from a path without spaces or quotes.
	var grow int64
	for i := range extras {
		x := &extras[i]
		name := fmt.Sprintf("extra-%d", i)
		sum, n, err := copyHashed(x.Source, filepath.Join(work, name))
		if err != nil {
			return nil, fmt.Errorf("extra %s: %w", x.Path, err)
		}
		if sum != x.SHA256 || n != x.Bytes {
			return nil, fmt.Errorf("extra %s: %s changed while building", x.Path, x.Source)
		}
		grow += blocks(n) + blockSize
	}
	img := filepath.Join(work, ImageName)
	if out, err := exec.CommandContext(ctx, "cp", "--sparse=always", base.Image, img).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("copy %s: %w: %s", base.Image, err, out)
	}
	if err := os.Chmod(img, 0o644); err != nil {
		return nil, err
	}
	fi, err := os.Stat(img)
	if err != nil {
		return nil, err
	}
	// Grow by the extras plus 1 MiB (directories, extent blocks), in MiB.
	size := (fi.Size() + grow + 2<<20 - 1) &^ (1<<20 - 1)
	if err := os.Truncate(img, size); err != nil {
		return nil, err
	}
	if err := runTo(ctx, logf, work, "resize2fs", img, strconv.FormatInt(size/1024, 10)+"K"); err != nil {
		return nil, err
	}
	dirs := make([]string, len(extras))
	for i, x := range extras {
		if dirs[i], err = resolveInImage(ctx, img, path.Dir(x.Path)); err != nil {
			return nil, fmt.Errorf("extra %s: %w", x.Path, err)
		}
	}
	script := debugfsScript(extras, dirs)
	fmt.Fprintf(logf, "+ debugfs -w -f - %s <<EOF\n%sEOF\n", img, script)
	cmd := exec.CommandContext(ctx, "debugfs", "-w", "-f", "-", img)
	cmd.Dir = work
	cmd.Stdin = strings.NewReader(script)
	// debugfs reports failed requests on stderr and still exits 0; the
	// verification below is what decides.
	out, err := cmd.CombinedOutput()
	logf.Write(out)
	if err != nil {
		return nil, fmt.Errorf("debugfs -w: %w: %s", err, tailLines(string(out), 10))
	}
	if err := verifyImage(ctx, img, b.r, extras); err != nil {
		return nil, fmt.Errorf("verify %s: %w (debugfs said: %s)", img, err, tailLines(string(out), 10))
	}
	info := *base.Info
	info.Key, info.BaseKey, info.Extra = key, base.Key, extras
	info.BootstrapSeconds, info.BootstrapStages, info.MkfsSeconds, info.VerifySeconds = 0, nil, 0, 0
	info.ExtraSeconds = seconds(time.Since(t))
	if err := fillImageInfo(ctx, img, &info); err != nil {
		return nil, err
	}
	info.TotalSeconds = seconds(time.Since(start))
	info.BuiltAt = time.Now().UTC().Round(time.Second)
	if err := publish(final, img, logf.Name(), b.r, &info); err != nil {
		return nil, err
	}
	ok = true
	touch(final)
	if removed, err := pruneDerived(b.dir, keepDerived, minDerivedAge); err != nil {
		b.logf("pruning older images with extra files: %v", err)
	} else if len(removed) > 0 {
		b.logf("removed %d older images with extra files (keeping the %d most recently used)", len(removed), keepDerived)
	}
	b.logf("added %d extra files to %s in %s: %s (%s image, %s free)", len(extras), ShortKey(base.Key), round(time.Since(t)),
		short, mib(info.ImageBytes), mib(info.FreeBytes))
	return &Result{Image: filepath.Join(final, ImageName), Dir: final, Key: key, Info: &info}, nil
}

// debugfsScript writes extras[i] from ./extra-i into dirs[i] (its parent
// directory with the image's symlinks resolved: debugfs's cd does not
// follow a symlink): create the parents (existing ones make harmless
// errors), replace the file, set mode and owner. Paths passed
// checkPathSyntax, so they need no quoting.
func debugfsScript(extras []Extra, dirs []string) string {
	var s strings.Builder
	for i, x := range extras {
		dir, name := dirs[i], path.Base(x.Path)
		if dir != "/" {
			parts := strings.Split(dir[1:], "/")
			for j := range parts {
				fmt.Fprintf(&s, "mkdir /%s\n", strings.Join(parts[:j+1], "/"))
			}
		}
		mode, _ := strconv.ParseUint(x.Mode, 8, 32)
		fmt.Fprintf(&s, "cd %s\nrm %s\nwrite extra-%d %s\nsif %s mode 0%o\nsif %s uid %d\nsif %s gid %d\n",
			dir, name, i, name, name, 0o100000|mode, name, x.UID, name, x.GID)
	}
	return s.String()
}

// resolveInImage resolves the symlinks of p inside the image, as the guest
// would see them (absolute targets and .. stay inside the image's root). The
// part of p that does not exist yet is appended as is.
func resolveInImage(ctx context.Context, img, p string) (string, error) {
	if p == "/" {
		return p, nil
	}
	parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
	cur := "/"
	for hops := 0; len(parts) > 0; {
		c := parts[0]
		parts = parts[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			cur = path.Dir(cur)
			continue
		}
		next := path.Join(cur, c)
		if err := checkPathSyntax(next); err != nil {
			return "", fmt.Errorf("resolving %s: %w", p, err)
		}
		st, err := Stat(ctx, img, next)
		if err != nil {
			return "", err
		}
		if st == nil {
			return path.Join(append([]string{next}, parts...)...), nil
		}
		if st.Type != "symlink" {
			cur = next
			continue
		}
		if hops++; hops > 40 {
			return "", fmt.Errorf("resolving %s: too many levels of symbolic links", p)
		}
		target, err := readlinkInImage(ctx, img, next)
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(target, "/") {
			cur = "/"
		}
		parts = append(strings.Split(target, "/"), parts...)
	}
	return cur, nil
}

// readlinkInImage returns the target of the symlink at p (whose directories
// have no symlinks left).
func readlinkInImage(ctx context.Context, img, p string) (string, error) {
	out, err := debugfs(ctx, img, "stat "+p)
	if err != nil {
		return "", err
	}
	const fast = `Fast link dest: "`
	if i := strings.Index(out, fast); i >= 0 {
		t := out[i+len(fast):]
		if j := strings.LastIndex(t, "\""); j >= 0 {
			return t[:j], nil
		}
	}
	// A slow symlink (60 bytes or more) keeps its target in a data block.
	b, err := ReadFile(ctx, img, p, 4096)
	if err != nil {
		return "", fmt.Errorf("readlink %s: %w", p, err)
	}
	if len(b) == 0 {
		return "", fmt.Errorf("readlink %s: empty target", p)
	}
	return string(b), nil
}

// copyHashed copies from to a new file to and returns the SHA-256 and size
// of what it copied.
func copyHashed(from, to string) (string, int64, error) {
	in, err := os.Open(from)
	if err != nil {
		return "", 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", 0, err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), io.LimitReader(in, MaxSourceBytes+1))
	if err == nil && n > MaxSourceBytes {
		err = fmt.Errorf("larger than %d bytes", MaxSourceBytes)
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return hex.EncodeToString(h.Sum(nil)), n, err
}

// runTo runs a command in dir with its output appended to log.
func runTo(ctx context.Context, log *os.File, dir, name string, args ...string) error {
	fmt.Fprintf(log, "+ %s %s\n", name, strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	log.Write(out)
	if err != nil {
		return fmt.Errorf("%s: %w: %s", name, err, tailLines(string(out), 10))
	}
	return nil
}
