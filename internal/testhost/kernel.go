package testhost

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/huskvm/husk/internal/cache"
)

// KernelMetaPackage is the Debian package whose dependency names the test
// host's kernel package (linux-image-<abi>-cloud-amd64).
const KernelMetaPackage = "linux-image-cloud-amd64"

// Kernel is an unpacked Debian kernel package in the cache.
type Kernel struct {
	Package string // e.g. linux-image-6.1.0-56-cloud-amd64
	Version string // Debian version, e.g. 6.1.192-2
	Release string // uname -r, e.g. 6.1.0-56-cloud-amd64
	Dir     string // the unpacked package (dpkg-deb -x)
}

// Vmlinuz is the kernel image.
func (k Kernel) Vmlinuz() string { return filepath.Join(k.Dir, "boot", "vmlinuz-"+k.Release) }

// Config is the kernel's build configuration.
func (k Kernel) Config() string { return filepath.Join(k.Dir, "boot", "config-"+k.Release) }

// ModulesDir is /lib/modules/<release> of the package.
func (k Kernel) ModulesDir() string { return filepath.Join(k.Dir, "lib", "modules", k.Release) }

// kernelCacheDir is the parent of the unpacked kernels.
func kernelCacheDir() (string, error) { return cache.Dir("testhost", "kernel") }

// ensureKernel returns the current kernel package of KernelMetaPackage,
// downloading and unpacking it into the cache if needed. If apt cannot
// resolve or download it, the newest kernel already in the cache is used.
func ensureKernel(ctx context.Context, progress io.Writer) (Kernel, error) {
	parent, err := kernelCacheDir()
	if err != nil {
		return Kernel{}, err
	}
	pkg, version, err := resolveKernelCached(ctx, parent, progress)
	if err != nil {
		if k, ok := newestCachedKernel(parent); ok {
			fmt.Fprintf(progress, "testhost: %v; using cached %s %s\n", err, k.Package, k.Version)
			return k, nil
		}
		return Kernel{}, err
	}
	final := filepath.Join(parent, pkg+"_"+version)
	if k, err := loadKernel(final); err == nil {
		return k, nil
	}
	release, err := cache.Lock(final + ".lock")
	if err != nil {
		return Kernel{}, err
	}
	defer release()
	if k, err := loadKernel(final); err == nil { // another process won
		return k, nil
	}
	err = cache.Publish(final, func(tmp string) error {
		fmt.Fprintf(progress, "downloading %s %s\n", pkg, version)
		dl := exec.CommandContext(ctx, "apt-get", "download", "-q", pkg+"="+version)
		dl.Dir = tmp
		if out, err := dl.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get download %s=%s: %w\n%s", pkg, version, err, out)
		}
		debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
		if len(debs) != 1 {
			return fmt.Errorf("apt-get download %s=%s: got %d .deb files", pkg, version, len(debs))
		}
		fmt.Fprintf(progress, "unpacking %s\n", filepath.Base(debs[0]))
		if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", debs[0], tmp).CombinedOutput(); err != nil {
			return fmt.Errorf("dpkg-deb -x %s: %w\n%s", debs[0], err, out)
		}
		return os.Remove(debs[0])
	})
	if err != nil {
		return Kernel{}, err
	}
	return loadKernel(final)
}

// loadKernel checks an unpacked kernel directory <pkg>_<version>.
func loadKernel(dir string) (Kernel, error) {
	pkg, version, ok := strings.Cut(filepath.Base(dir), "_")
	if !ok {
		return Kernel{}, fmt.Errorf("kernel dir %s: name is not <package>_<version>", dir)
	}
	images, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	if len(images) != 1 {
		return Kernel{}, fmt.Errorf("kernel dir %s: %d vmlinuz files, want 1", dir, len(images))
	}
	k := Kernel{Package: pkg, Version: version, Dir: dir,
		Release: strings.TrimPrefix(filepath.Base(images[0]), "vmlinuz-")}
	for _, p := range []string{k.Config(), k.ModulesDir()} {
		if _, err := os.Stat(p); err != nil {
			return Kernel{}, fmt.Errorf("kernel dir %s: %w", dir, err)
		}
	}
	return k, nil
}

// newestCachedKernel picks the cached kernel with the highest version.
func newestCachedKernel(parent string) (Kernel, bool) {
	ents, _ := os.ReadDir(parent)
	var ks []Kernel
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), "linux-image-") || strings.Contains(e.Name(), ".tmp-") {
			continue
		}
		if k, err := loadKernel(filepath.Join(parent, e.Name())); err == nil {
			ks = append(ks, k)
		}
	}
	if len(ks) == 0 {
		return Kernel{}, false
	}
	sort.Slice(ks, func(i, j int) bool { return versionLess(ks[i].Version, ks[j].Version) })
	return ks[len(ks)-1], true
}

// versionLess orders Debian-like versions by comparing runs of digits
// numerically and everything else bytewise; good enough for kernel
// versions such as 6.1.192-2 against 6.1.176-1.
func versionLess(a, b string) bool {
	for a != "" && b != "" {
		da, ra := splitRun(a)
		db, rb := splitRun(b)
		if da != db {
			if isDigit(da[0]) && isDigit(db[0]) {
				na, nb := strings.TrimLeft(da, "0"), strings.TrimLeft(db, "0")
				if len(na) != len(nb) {
					return len(na) < len(nb)
				}
				return na < nb
			}
			return da < db
		}
		a, b = ra, rb
	}
	return len(a) < len(b)
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func splitRun(s string) (run, rest string) {
	d := isDigit(s[0])
	i := 1
	for i < len(s) && isDigit(s[i]) == d {
		i++
	}
	return s[:i], s[i:]
}

// resolveTTL is how long a resolution of KernelMetaPackage is reused:
// apt-cache takes ~1 s, and a new kernel package is rare.
const resolveTTL = 24 * time.Hour

// resolveKernelCached is resolveKernelPackage memoised for resolveTTL in
// <parent>/resolved ("<package> <version>").
func resolveKernelCached(ctx context.Context, parent string, progress io.Writer) (pkg, version string, err error) {
	memo := filepath.Join(parent, "resolved")
	if st, err := os.Stat(memo); err == nil && time.Since(st.ModTime()) < resolveTTL {
		if b, err := os.ReadFile(memo); err == nil {
			if f := strings.Fields(string(b)); len(f) == 2 {
				return f[0], f[1], nil
			}
		}
	}
	pkg, version, err = resolveKernelPackage(ctx, progress)
	if err != nil {
		return "", "", err
	}
	cache.PublishFile(memo, 0o644, func(f *os.File) error {
		_, err := fmt.Fprintf(f, "%s %s\n", pkg, version)
		return err
	})
	return pkg, version, nil
}

// resolveKernelPackage asks apt which kernel package KernelMetaPackage
// depends on in its candidate version, running apt-get update once if the
// package lists are missing.
func resolveKernelPackage(ctx context.Context, progress io.Writer) (pkg, version string, err error) {
	for attempt := 0; ; attempt++ {
		out, err := exec.CommandContext(ctx, "apt-cache", "show", "--no-all-versions", KernelMetaPackage).Output()
		if err == nil {
			if pkg, version, err = parseKernelDepends(out); err == nil {
				return pkg, version, nil
			}
		}
		if attempt > 0 {
			return "", "", fmt.Errorf("resolve %s with apt-cache: %w", KernelMetaPackage, err)
		}
		fmt.Fprintf(progress, "apt-cache knows no %s; running apt-get update\n", KernelMetaPackage)
		if out, err := exec.CommandContext(ctx, "apt-get", "update", "-q").CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("apt-get update: %w\n%s", err, out)
		}
	}
}

// parseKernelDepends finds "linux-image-X (= V)" in the Depends field of
// `apt-cache show` output.
func parseKernelDepends(show []byte) (pkg, version string, err error) {
	sc := bufio.NewScanner(bytes.NewReader(show))
	for sc.Scan() {
		deps, ok := strings.CutPrefix(sc.Text(), "Depends:")
		if !ok {
			continue
		}
		for _, d := range strings.Split(deps, ",") {
			d = strings.TrimSpace(d)
			name, rest, _ := strings.Cut(d, " ")
			if !strings.HasPrefix(name, "linux-image-") {
				continue
			}
			v, ok := strings.CutPrefix(strings.TrimSpace(rest), "(= ")
			if !ok || !strings.HasSuffix(v, ")") {
				return "", "", fmt.Errorf("dependency %q has no exact version", d)
			}
			return name, strings.TrimSuffix(v, ")"), nil
		}
	}
	return "", "", fmt.Errorf("no linux-image-* dependency in apt-cache show output")
}
