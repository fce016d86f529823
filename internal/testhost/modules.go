package testhost

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// DefaultModules are the modules the test host loads (with their
// dependencies, resolved from the kernel package). Names use underscores.
// A name that is built into the kernel is skipped.
//
//   - irqbypass, kvm, kvm_amd: /dev/kvm (QEMU's "-cpu max" under TCG is an
//     AMD CPU with SVM and NPT)
//   - virtio_pci, virtio_blk, virtio_console: artifact disks and the control
//     channel (virtio-serial)
//   - ext4: artifact disks (built into the cloud kernel)
//   - tun, vhost_vsock: what tests of networking and of QEMU's vhost-vsock
//     need (vhost, vhost_iotlb, vsock and vmw_vsock_virtio_transport_common
//     come as dependencies)
var DefaultModules = []string{
	"irqbypass", "kvm", "kvm_amd",
	"virtio_pci", "virtio_blk", "virtio_console",
	"ext4",
	"tun", "vhost", "vhost_iotlb", "vsock", "vmw_vsock_virtio_transport_common", "vhost_vsock",
}

// moduleName normalises a module file name or module name: the base name
// without .ko and compression suffix, with '-' as '_' (as the kernel does).
func moduleName(file string) string {
	b := filepath.Base(file)
	if i := strings.Index(b, ".ko"); i >= 0 {
		b = b[:i]
	}
	return strings.ReplaceAll(b, "-", "_")
}

// moduleGraph is the dependency graph of a kernel's loadable modules.
type moduleGraph struct {
	path map[string]string   // module name → file, relative to the modules dir
	deps map[string][]string // module name → names it needs loaded first
}

// parseModulesDep reads depmod's modules.dep: one line per module,
// "kernel/x/a.ko: kernel/y/b.ko kernel/z/c.ko", naming the files the module
// depends on.
func parseModulesDep(r io.Reader) (moduleGraph, error) {
	g := moduleGraph{path: map[string]string{}, deps: map[string][]string{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		file, deps, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(file) == "" {
			return moduleGraph{}, fmt.Errorf("modules.dep line %d: no \"file:\" in %q", n, line)
		}
		name := moduleName(file)
		g.path[name] = strings.TrimSpace(file)
		for _, d := range strings.Fields(deps) {
			g.deps[name] = append(g.deps[name], moduleName(d))
		}
	}
	return g, sc.Err()
}

// scanModules builds the graph from the module files under dir when the
// package has no modules.dep (Debian's image packages leave it to depmod in
// postinst): paths from the file names, dependencies from each module's
// .modinfo "depends=" entry, read only for modules a resolution visits.
func scanModules(dir string) (moduleGraph, error) {
	g := moduleGraph{path: map[string]string{}, deps: nil}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && strings.Contains(d.Name(), ".ko") {
			rel, _ := filepath.Rel(dir, p)
			g.path[moduleName(d.Name())] = rel
		}
		return nil
	})
	return g, err
}

// loadModuleGraph returns the graph of a modules directory: from
// modules.dep if the package has one, else from the module files.
func loadModuleGraph(dir string) (moduleGraph, error) {
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err == nil {
		defer f.Close()
		return parseModulesDep(f)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return moduleGraph{}, err
	}
	return scanModules(dir)
}

// readBuiltin reads modules.builtin (files of modules built into the
// kernel) as a set of module names.
func readBuiltin(r io.Reader) (map[string]bool, error) {
	set := map[string]bool{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			set[moduleName(l)] = true
		}
	}
	return set, sc.Err()
}

// resolveModules orders the wanted modules and their dependencies so each
// comes after everything it depends on, and returns each ordered module's
// dependencies among them (built-in ones left out). Built-in modules are
// skipped and returned separately. depsOf returns a module's direct
// dependencies; it is g.deps when the graph came from modules.dep.
func resolveModules(g moduleGraph, builtin map[string]bool, want []string, depsOf func(name string) ([]string, error)) (order []string, needs map[string][]string, skipped []string, err error) {
	needs = map[string][]string{}
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		name = moduleName(name)
		switch state[name] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(chain, name), " → "))
		}
		if _, ok := g.path[name]; !ok {
			if builtin[name] {
				state[name] = done
				skipped = append(skipped, name)
				return nil
			}
			if len(chain) > 0 {
				return fmt.Errorf("module %s (needed by %s) is neither built in nor in the package", name, chain[len(chain)-1])
			}
			return fmt.Errorf("module %s is neither built in nor in the package", name)
		}
		state[name] = visiting
		deps, err := depsOf(name)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d, append(chain, name)); err != nil {
				return err
			}
			if d = moduleName(d); !builtin[d] || g.path[d] != "" {
				needs[name] = append(needs[name], d)
			}
		}
		state[name] = done
		order = append(order, name)
		return nil
	}
	for _, w := range want {
		if err := visit(w, nil); err != nil {
			return nil, nil, nil, err
		}
	}
	return order, needs, skipped, nil
}

// modinfoDepends reads the "depends=" entry of a module's .modinfo section.
// Gzip-compressed modules are read through compress/gzip; xz and zstd are
// not in the standard library, so those need a modules.dep.
func modinfoDepends(path string) ([]string, error) {
	data, err := readModule(path)
	if err != nil {
		return nil, err
	}
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", path, err)
	}
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("module %s: no .modinfo section", path)
	}
	info, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("module %s: .modinfo: %w", path, err)
	}
	for _, kv := range bytes.Split(info, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			var deps []string
			for _, d := range strings.Split(string(v), ",") {
				if d != "" {
					deps = append(deps, moduleName(d))
				}
			}
			return deps, nil
		}
	}
	return nil, nil
}

// readModule returns a module file's ELF bytes, decompressing .ko.gz.
func readModule(path string) ([]byte, error) {
	switch {
	case strings.HasSuffix(path, ".ko"):
		return os.ReadFile(path)
	case strings.HasSuffix(path, ".ko.gz"):
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		zr, err := gzip.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("module %s: %w", path, err)
		}
		return io.ReadAll(io.LimitReader(zr, 256<<20))
	}
	return nil, fmt.Errorf("module %s: compressed with a format Go cannot read (only .ko and .ko.gz)", path)
}

// kernelConfig reads the CONFIG_* settings of a kernel config file.
func kernelConfig(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	cfg := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok && strings.HasPrefix(k, "CONFIG_") {
			cfg[k] = v
		}
	}
	return cfg, nil
}

// moduleSet is the resolved set of modules to put into the initramfs.
type moduleSet struct {
	Order   []string            // module names in load order
	Files   []string            // their files, relative to the modules dir, same order
	Needs   map[string][]string // module name → the modules in Order it depends on
	Builtin []string            // wanted modules that are built in
	// Decompress is set when the files are compressed but the kernel cannot
	// load compressed modules (no CONFIG_MODULE_DECOMPRESS): they are
	// decompressed at build time (gzip only).
	Decompress bool
}

// resolveKernelModules resolves want against an unpacked kernel package.
func resolveKernelModules(k Kernel, want []string) (moduleSet, error) {
	dir := k.ModulesDir()
	g, err := loadModuleGraph(dir)
	if err != nil {
		return moduleSet{}, fmt.Errorf("modules of %s: %w", k.Release, err)
	}
	builtin := map[string]bool{}
	if f, err := os.Open(filepath.Join(dir, "modules.builtin")); err == nil {
		builtin, err = readBuiltin(f)
		f.Close()
		if err != nil {
			return moduleSet{}, err
		}
	}
	cfg, err := kernelConfig(k.Config())
	if err != nil {
		return moduleSet{}, err
	}
	depsOf := func(name string) ([]string, error) { return g.deps[name], nil }
	if g.deps == nil { // no modules.dep: read .modinfo
		depsOf = func(name string) ([]string, error) { return modinfoDepends(filepath.Join(dir, g.path[name])) }
	}
	order, needs, skipped, err := resolveModules(g, builtin, want, depsOf)
	if err != nil {
		return moduleSet{}, fmt.Errorf("modules of %s: %w", k.Release, err)
	}
	ms := moduleSet{Order: order, Needs: needs, Builtin: skipped}
	for _, m := range order {
		f := g.path[m]
		ms.Files = append(ms.Files, f)
		if !strings.HasSuffix(f, ".ko") && cfg["CONFIG_MODULE_DECOMPRESS"] != "y" {
			ms.Decompress = true
		}
	}
	return ms, nil
}
