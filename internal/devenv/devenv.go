// Package devenv prepares what the developer commands and the e2e tests run:
// the guest kernel, the test initrd and our static binaries, staged in one
// directory; and it decides where a Linux guest can run — directly on
// /dev/kvm when that is hardware KVM, or inside the test host.
package devenv

import (
	"context"
	"io"
	"os"
	"path/filepath"

	"github.com/huskvm/husk/internal/cache"
	"github.com/huskvm/husk/internal/kbuild"
	"github.com/huskvm/husk/internal/sandbox"
	"github.com/huskvm/husk/internal/template"
	"github.com/huskvm/husk/internal/testhost"
)

// KernelFragment is the guest kernel's config fragment, relative to the
// source root.
const KernelFragment = "guest/kernel/husk.config"

// Kernel builds the guest kernel, or finds it in the cache, and returns the
// directory holding vmlinux and bzImage.
func Kernel(ctx context.Context, progress io.Writer) (string, error) {
	root, err := testhost.SourceRoot()
	if err != nil {
		return "", err
	}
	r, err := kbuild.Build(ctx, kbuild.Options{Fragment: filepath.Join(root, KernelFragment), Progress: progress})
	if err != nil {
		return "", err
	}
	return r.Dir, nil
}

// Rootfs builds the named template (guest/templates/<name>.json), or finds
// it in the cache, and returns its image.
func Rootfs(ctx context.Context, name string, progress io.Writer) (string, error) {
	return rootfs(ctx, name, nil, progress)
}

// AgentRootfs is Rootfs with the husk-agent binary agent added at
// sandbox.AgentPath: the image sandboxes boot. The agent's hash joins the
// cache key, so a changed agent gives a new image (derived from the cached
// template in seconds) and no test ever boots an old agent.
func AgentRootfs(ctx context.Context, name, agent string, progress io.Writer) (string, error) {
	return rootfs(ctx, name, map[string]string{sandbox.AgentPath: agent}, progress)
}

func rootfs(ctx context.Context, name string, extra map[string]string, progress io.Writer) (string, error) {
	root, err := testhost.SourceRoot()
	if err != nil {
		return "", err
	}
	r, err := template.Build(ctx, template.Options{Recipe: template.RecipePath(root, name), Extra: extra, Progress: progress})
	if err != nil {
		return "", err
	}
	return r.Image, nil
}

// VMMLDFlags are husk-vmm's linker flags. They turn transparent huge pages
// off for the Go heap (GODEBUG=disablethp=1 by default; the environment still
// overrides it): on hosts with THP "always" the runtime's first heap touches
// otherwise fault in whole 2 MiB pages, and husk-vmm's overhead measured
// 7.1 MiB instead of 3.9 MiB (docs/BENCHMARKS.md). The //go:debug directive
// does not accept this setting, so the linker sets the default.
const VMMLDFlags = "-X=runtime.godebugDefault=disablethp=1"

// Artifacts are the files a guest boot needs, staged in one directory.
type Artifacts struct {
	Dir     string // holds everything below, by base name
	VMM     string // husk-vmm, static
	Vmlinux string
	BzImage string
	Initrd  string // the test initrd (test/guestinit as /init)
}

// Stage builds husk-vmm and the test initrd, builds or finds the kernel, and
// links (or copies) them into dir, plus any extra files (base name -> path).
func Stage(ctx context.Context, dir string, progress io.Writer, extra map[string]string) (Artifacts, error) {
	kdir, err := Kernel(ctx, progress)
	if err != nil {
		return Artifacts{}, err
	}
	initrd, err := TestInitrd(ctx, progress)
	if err != nil {
		return Artifacts{}, err
	}
	a := Artifacts{
		Dir: dir, VMM: filepath.Join(dir, "husk-vmm"), Vmlinux: filepath.Join(dir, "vmlinux"),
		BzImage: filepath.Join(dir, "bzImage"), Initrd: filepath.Join(dir, "initrd.cpio"),
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Artifacts{}, err
	}
	if err := testhost.GoBuild(ctx, a.VMM, "./cmd/husk-vmm", false, VMMLDFlags); err != nil {
		return Artifacts{}, err
	}
	files := map[string]string{
		a.Vmlinux: filepath.Join(kdir, "vmlinux"),
		a.BzImage: filepath.Join(kdir, "bzImage"),
		a.Initrd:  initrd,
	}
	for name, src := range extra {
		files[filepath.Join(dir, name)] = src
	}
	for dst, src := range files {
		if err := cache.LinkOrCopy(src, dst); err != nil {
			return Artifacts{}, err
		}
	}
	return a, nil
}
