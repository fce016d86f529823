// Package qemubundle packs the host's qemu-system-x86_64 with everything it
// loads into one self-contained directory, so that QEMU can run inside the
// test host, whose root holds nothing but hostinit and kernel modules.
//
// A bundle is laid out as QEMU's own install tree, relocated:
//
//	bin/qemu-system-x86_64      the executable, unchanged
//	bin/ld-linux-x86-64.so.2    the dynamic loader it names (PT_INTERP)
//	lib/<soname>                every shared library ldd lists
//	share/qemu/<file>           firmware and option ROMs (symlinks resolved)
//	VERSION                     the qemu-system-x86 package version
//
// The executable's interpreter path (/lib64/ld-linux-x86-64.so.2) does not
// exist inside the test host, so the bundle runs through its loader:
//
//	<dir>/bin/ld-linux-x86-64.so.2 --library-path <dir>/lib <dir>/bin/qemu-system-x86_64 -L <dir>/share/qemu ...
//
// Command returns that argument vector. QEMU then finds its data directory
// both through -L and relative to /proc/self/exe (the loader, in bin/).
//
// Bundles are cached under <cache>/bench/qemu/<version>-<layout>, keyed by
// the Debian package version of qemu-system-x86 (the executable's SHA-256
// when dpkg does not know it).
package qemubundle

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/huskvm/husk/internal/cache"
)

// System is the QEMU executable that gets bundled.
const System = "/usr/bin/qemu-system-x86_64"

// layout is part of the cache key: bump it when the bundle's contents change.
const layout = "1"

// Paths inside a bundle.
const (
	BinName    = "bin/qemu-system-x86_64"
	LoaderName = "bin/ld-linux-x86-64.so.2"
	LibDir     = "lib"
	DataDir    = "share/qemu"
)

// dataFiles are copied from the first of dataDirs that has them. microvm
// opens bios-microvm.bin (qboot) and nothing else (strace, QEMU 7.2,
// -enable-kvm, x-option-roms=off); the others are what microvm with option
// ROMs on and the pc/q35 machines load, so that later users of the bundle
// (e.g. a vhost-vsock-device peer) are not limited to one machine type.
var dataFiles = []string{
	"bios-microvm.bin", "qboot.rom", "pvh.bin", "linuxboot.bin", "linuxboot_dma.bin",
	"multiboot.bin", "multiboot_dma.bin", "kvmvapic.bin", "bios-256k.bin", "bios.bin",
}

var dataDirs = []string{"/usr/share/qemu", "/usr/share/seabios", "/usr/lib/ipxe/qemu"}

// Command returns the argument vector that runs the bundle in dir with
// QEMU's args appended: the loader, its library path, the executable and -L.
func Command(dir string, args ...string) []string {
	argv := []string{
		filepath.Join(dir, LoaderName),
		"--library-path", filepath.Join(dir, LibDir),
		filepath.Join(dir, BinName),
		"-L", filepath.Join(dir, DataDir),
	}
	return append(argv, args...)
}

// Version returns the bundle's cache key part for the host's QEMU: the
// qemu-system-x86 package version, else the executable's SHA-256 prefix.
func Version(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "dpkg-query", "-W", "-f=${Version}", "qemu-system-x86").Output()
	if v := strings.TrimSpace(string(out)); err == nil && v != "" {
		return v, nil
	}
	f, err := os.Open(System)
	if err != nil {
		return "", fmt.Errorf("qemu bundle: %w (install qemu-system-x86)", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return "sha256-" + hex.EncodeToString(h.Sum(nil))[:16], nil
}

// Bundle returns the directory of the bundle of the host's QEMU, building
// it in the cache if needed (~40 MB, a second or two). Progress lines go to
// progress (nil: none).
func Bundle(ctx context.Context, progress io.Writer) (string, error) {
	if progress == nil {
		progress = io.Discard
	}
	v, err := Version(ctx)
	if err != nil {
		return "", err
	}
	parent, err := cache.Dir("bench", "qemu")
	if err != nil {
		return "", err
	}
	final := filepath.Join(parent, sanitize(v)+"-"+layout)
	if cache.Exists(final) {
		return final, nil
	}
	release, err := cache.Lock(final + ".lock")
	if err != nil {
		return "", err
	}
	defer release()
	if cache.Exists(final) {
		return final, nil
	}
	if err := cache.RemoveStale(final); err != nil {
		return "", err
	}
	fmt.Fprintf(progress, "bundling %s (qemu-system-x86 %s)\n", System, v)
	err = cache.Publish(final, func(tmp string) error { return fill(ctx, tmp, v) })
	if err != nil {
		return "", fmt.Errorf("qemu bundle: %w", err)
	}
	return final, nil
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9._+-]`)

// sanitize makes a package version usable as a file name (epochs have ':').
func sanitize(v string) string { return unsafeChars.ReplaceAllString(v, "_") }

func fill(ctx context.Context, dir, version string) error {
	libs, loader, err := sharedLibs(ctx, System)
	if err != nil {
		return err
	}
	for _, d := range []string{"bin", LibDir, DataDir} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := copyFile(System, filepath.Join(dir, BinName), 0o755); err != nil {
		return err
	}
	if err := copyFile(loader, filepath.Join(dir, LoaderName), 0o755); err != nil {
		return err
	}
	for name, path := range libs {
		if err := copyFile(path, filepath.Join(dir, LibDir, name), 0o644); err != nil {
			return err
		}
	}
	found := false
	for _, name := range dataFiles {
		for _, d := range dataDirs {
			src := filepath.Join(d, name)
			if !cache.Exists(src) {
				continue
			}
			if err := copyFile(src, filepath.Join(dir, DataDir, name), 0o644); err != nil {
				return err
			}
			found = found || name == "bios-microvm.bin"
			break
		}
	}
	if !found {
		return fmt.Errorf("no bios-microvm.bin in %v", dataDirs)
	}
	return os.WriteFile(filepath.Join(dir, "VERSION"), []byte(version+"\n"), 0o644)
}

// sharedLibs runs ldd on exe and returns its libraries (soname -> resolved
// path) and its dynamic loader.
func sharedLibs(ctx context.Context, exe string) (libs map[string]string, loader string, err error) {
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "ldd", exe)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, "", fmt.Errorf("ldd %s: %w: %s", exe, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return parseLdd(out)
}

// parseLdd reads ldd's output: "soname => path (addr)" per library, the
// vDSO without a path, and the loader as "path (addr)".
func parseLdd(out []byte) (libs map[string]string, loader string, err error) {
	libs = map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 0:
		case len(f) >= 3 && f[1] == "=>":
			if f[2] == "not" {
				return nil, "", fmt.Errorf("ldd: %s not found", f[0])
			}
			libs[f[0]] = f[2]
		case strings.HasPrefix(f[0], "/") && strings.Contains(filepath.Base(f[0]), "ld-linux"):
			loader = f[0]
		case strings.HasPrefix(f[0], "linux-vdso") || strings.HasPrefix(f[0], "linux-gate"):
		default:
			return nil, "", fmt.Errorf("ldd: unexpected line %q", sc.Text())
		}
	}
	if loader == "" {
		return nil, "", errors.New("ldd: no dynamic loader listed")
	}
	if len(libs) == 0 {
		return nil, "", errors.New("ldd: no libraries listed")
	}
	return libs, loader, nil
}

// copyFile copies the file src points to (symlinks followed) to dst.
func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return out.Close()
}
