package testhost

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/huskvm/husk/internal/cache"
	"github.com/huskvm/husk/internal/cpio"
)

// HostinitPackage is the test host's /init, built static by Prepare.
const HostinitPackage = "./test/hostinit"

// Assets are the cached files that boot a test host.
type Assets struct {
	Kernel    Kernel
	Vmlinuz   string   // the kernel image QEMU loads (-kernel)
	Initramfs string   // the initramfs (-initrd): hostinit as /init plus modules
	Modules   []string // modules hostinit loads, in order
	Builtin   []string // wanted modules that are built into the kernel
}

// Prepare makes sure the kernel and the initramfs are in the cache,
// downloading and building what is missing, and returns their paths.
// Progress lines ("downloading linux-image-…") go to progress (nil: none).
//
// It rebuilds hostinit each time (a cached go build takes ~0.1 s) and
// reuses the initramfs when hostinit and the modules are unchanged.
func Prepare(ctx context.Context, progress io.Writer) (Assets, error) {
	if progress == nil {
		progress = io.Discard
	}
	k, err := ensureKernel(ctx, progress)
	if err != nil {
		return Assets{}, err
	}
	ms, err := resolveKernelModules(k, DefaultModules)
	if err != nil {
		return Assets{}, err
	}
	dir, err := cache.Dir("testhost")
	if err != nil {
		return Assets{}, err
	}
	tmp, err := os.MkdirTemp(dir, ".hostinit-")
	if err != nil {
		return Assets{}, err
	}
	defer os.RemoveAll(tmp)
	initBin := filepath.Join(tmp, "hostinit")
	if err := GoBuild(ctx, initBin, HostinitPackage, false); err != nil {
		return Assets{}, fmt.Errorf("build hostinit: %w", err)
	}
	initramfs, err := ensureInitramfs(dir, k, ms, initBin, progress)
	if err != nil {
		return Assets{}, err
	}
	return Assets{Kernel: k, Vmlinuz: k.Vmlinuz(), Initramfs: initramfs, Modules: ms.Order, Builtin: ms.Builtin}, nil
}

var (
	prepMu   sync.Mutex // guards prepared
	prepared *Assets    // the first successful Prepare of this process
)

// prepareOnce is Prepare memoised for the life of the process, so that a
// test binary running many test hosts builds hostinit once. A failure is
// not memoised.
func prepareOnce(ctx context.Context, progress io.Writer) (Assets, error) {
	prepMu.Lock()
	defer prepMu.Unlock()
	if prepared != nil {
		_, err1 := os.Stat(prepared.Vmlinuz)
		_, err2 := os.Stat(prepared.Initramfs)
		if err1 == nil && err2 == nil {
			return *prepared, nil
		}
	}
	a, err := Prepare(ctx, progress)
	if err != nil {
		return Assets{}, err
	}
	prepared = &a
	return a, nil
}

// initramfsFormat is part of the initramfs cache key: bump it when the
// layout built here changes.
const initramfsFormat = "husk-testhost-initramfs-1"

// ensureInitramfs returns the cached initramfs for this hostinit binary and
// module set, building it if needed. The cache key hashes the hostinit
// binary, the kernel package and the module files' names; package contents
// are immutable per version.
func ensureInitramfs(dir string, k Kernel, ms moduleSet, initBin string, progress io.Writer) (string, error) {
	initData, err := os.ReadFile(initBin)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s %s\n", initramfsFormat, k.Package, k.Version)
	hi := sha256.Sum256(initData)
	fmt.Fprintf(h, "hostinit %x\n", hi)
	for _, f := range ms.Files {
		fmt.Fprintf(h, "module %s\n", f)
	}
	sum := h.Sum(nil)
	final := filepath.Join(dir, "initramfs-"+hex.EncodeToString(sum[:12])+".cpio")
	if _, err := os.Stat(final); err == nil {
		now := time.Now()
		os.Chtimes(final, now, now) // keep it off the prune list
		return final, nil
	}
	fmt.Fprintf(progress, "building initramfs for %s (%d modules)\n", k.Release, len(ms.Files))
	err = cache.PublishFile(final, 0o644, func(f *os.File) error {
		return writeInitramfs(f, initData, k.ModulesDir(), ms)
	})
	if err != nil {
		return "", fmt.Errorf("build initramfs: %w", err)
	}
	pruneFiles(dir, "initramfs-*.cpio", 4, 0)
	return final, nil
}

// writeInitramfs writes the newc archive: /init, /modules/<file> and
// /modules/order, the directories hostinit mounts on, and the few /dev and
// /etc entries a program expects before devtmpfs.
//
// /modules/order has one line per module, in a valid load order: its file
// name, then the file names of the modules it needs loaded first. hostinit
// loads modules in parallel as their dependencies complete.
func writeInitramfs(w io.Writer, initData []byte, modDir string, ms moduleSet) error {
	cw := cpio.NewWriter(w)
	for _, d := range []string{"dev", "proc", "sys", "tmp", "run", "artifacts", "modules", "etc", "root"} {
		if err := cw.Dir(d, 0o755); err != nil {
			return err
		}
	}
	if err := cw.CharDev("dev/console", 0o600, 5, 1); err != nil {
		return err
	}
	if err := cw.CharDev("dev/null", 0o666, 1, 3); err != nil {
		return err
	}
	etc := map[string]string{
		"etc/hosts":  "127.0.0.1\tlocalhost testhost\n::1\tlocalhost\n",
		"etc/passwd": "root:x:0:0:root:/tmp:/bin/sh\n",
		"etc/group":  "root:x:0:\n",
	}
	for _, name := range sortedKeys(etc) {
		if err := cw.File(name, 0o644, []byte(etc[name])); err != nil {
			return err
		}
	}
	if err := cw.File("init", 0o755, initData); err != nil {
		return err
	}
	var order bytes.Buffer
	fileOf := map[string]string{} // module name → its file name in the initramfs
	for i, rel := range ms.Files {
		base := filepath.Base(rel)
		var data []byte
		var err error
		if ms.Decompress {
			data, err = readModule(filepath.Join(modDir, rel))
			base = moduleName(base) + ".ko"
		} else {
			data, err = os.ReadFile(filepath.Join(modDir, rel))
		}
		fileOf[ms.Order[i]] = base
		if err != nil {
			return err
		}
		if err := cw.File("modules/"+base, 0o644, data); err != nil {
			return err
		}
		order.WriteString(base)
		for _, d := range ms.Needs[ms.Order[i]] {
			f, ok := fileOf[d]
			if !ok {
				return fmt.Errorf("module %s needs %s, which is not before it", ms.Order[i], d)
			}
			order.WriteString(" " + f)
		}
		order.WriteString("\n")
	}
	if err := cw.File("modules/order", 0o644, order.Bytes()); err != nil {
		return err
	}
	return cw.Close()
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// pruneFiles removes the files in dir matching pattern beyond the keep
// most recently modified, if they are older than minAge (so an entry
// another process is about to use survives).
func pruneFiles(dir, pattern string, keep int, minAge time.Duration) {
	paths, _ := filepath.Glob(filepath.Join(dir, pattern))
	type entry struct {
		path string
		mod  time.Time
	}
	var es []entry
	for _, p := range paths {
		if strings.Contains(p, ".tmp-") {
			continue
		}
		if st, err := os.Stat(p); err == nil {
			es = append(es, entry{p, st.ModTime()})
		}
	}
	sort.Slice(es, func(i, j int) bool { return es[i].mod.After(es[j].mod) })
	for i, e := range es {
		if i >= keep && time.Since(e.mod) > minAge {
			os.Remove(e.path)
		}
	}
}
