// Package kbuild builds husk's guest kernel from Debian's linux-source-6.1
// and caches the result outside the repository.
//
// Recipe: unpack the source tarball once per source version, then in an
// out-of-tree build directory per key run `make tinyconfig`, merge the
// repository's fragment (guest/kernel/husk.config) over it, `make
// olddefconfig`, verify that every fragment option survived, and
// `make vmlinux bzImage`. The key hashes the fragment, the source package
// version and RecipeVersion.
//
// Cache layout below the cache root (see internal/cache):
//
//	kernel/src/linux-source-6.1_<version>/linux-source-6.1/  unpacked source, shared by all configs
//	kernel/build/<key16>/                                    O= object tree (kept only on failure or -keep-build)
//	kernel/<key16>/{vmlinux,bzImage,config,build.json,build.log}  published outputs
//	kernel/<key16>.lock                                      flock held while building that key
package kbuild

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/huskvm/husk/internal/cache"
)

// Options configures Build.
type Options struct {
	// Fragment is the path of the config fragment (required).
	Fragment string
	// Tarball is the kernel source tarball; DefaultTarball if empty.
	Tarball string
	// Jobs is make's -j; runtime.NumCPU() if zero.
	Jobs int
	// Force rebuilds even when the output is cached.
	Force bool
	// KeepBuild keeps the object tree after a successful build.
	KeepBuild bool
	// CheckOnly stops after configuring and verifying the fragment; nothing
	// is compiled or published, and Result.Dir is the build directory.
	CheckOnly bool
	// Progress receives stage lines and periodic progress; nil discards.
	Progress io.Writer
	// ProgressEvery is the period of progress lines while compiling; 5s if zero.
	ProgressEvery time.Duration
}

// Result describes a published (or cached) build.
type Result struct {
	Dir    string // the output directory (build directory with CheckOnly)
	Key    string
	Cached bool // true if nothing had to be built
	Info   *Info
}

// Info is the content of build.json.
type Info struct {
	Key            string    `json:"key"`
	SourcePackage  string    `json:"source_package"`
	SourceVersion  string    `json:"source_version"`
	Recipe         string    `json:"recipe"`
	FragmentSHA256 string    `json:"fragment_sha256"`
	Compiler       string    `json:"compiler"`
	Jobs           int       `json:"jobs"`
	BuildSeconds   float64   `json:"build_seconds"`
	Objects        int       `json:"objects"`
	VmlinuxBytes   int64     `json:"vmlinux_bytes"`
	BzImageBytes   int64     `json:"bzimage_bytes"`
	PVHEntry       string    `json:"pvh_entry,omitempty"`
	BuiltAt        time.Time `json:"built_at"`
}

// Output file names inside a published build directory.
const (
	VmlinuxName = "vmlinux"
	BzImageName = "bzImage"
	ConfigName  = "config"
	InfoName    = "build.json"
	LogName     = "build.log"
)

// Build returns the cached kernel for o.Fragment, building it first if needed.
func Build(ctx context.Context, o Options) (*Result, error) {
	if o.Fragment == "" {
		return nil, errors.New("no config fragment given")
	}
	if o.Tarball == "" {
		o.Tarball = DefaultTarball
	}
	if o.Jobs <= 0 {
		o.Jobs = runtime.NumCPU()
	}
	if o.ProgressEvery <= 0 {
		o.ProgressEvery = 5 * time.Second
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	fragBytes, err := os.ReadFile(o.Fragment)
	if err != nil {
		return nil, fmt.Errorf("read fragment: %w", err)
	}
	frag, err := ParseFragment(fragBytes)
	if err != nil {
		return nil, fmt.Errorf("parse fragment %s: %w", o.Fragment, err)
	}
	srcVersion, err := SourceVersion(ctx)
	if err != nil {
		return nil, err
	}
	key := Key(fragBytes, srcVersion)
	short := ShortKey(key)
	kdir, err := cache.Dir("kernel")
	if err != nil {
		return nil, err
	}
	out := filepath.Join(kdir, short)
	if !o.Force && !o.CheckOnly {
		if info, err := readInfo(out); err == nil {
			return &Result{Dir: out, Key: key, Cached: true, Info: info}, nil
		}
	}

	release, err := cache.TryLock(out + ".lock")
	if errors.Is(err, cache.ErrLocked) {
		o.logf("waiting for another build of kernel %s", short)
		release, err = cache.Lock(out + ".lock")
	}
	if err != nil {
		return nil, err
	}
	defer release()
	if !o.Force && !o.CheckOnly {
		if info, err := readInfo(out); err == nil { // built while we waited
			return &Result{Dir: out, Key: key, Cached: true, Info: info}, nil
		}
	}

	b := &builder{o: o, frag: frag, fragSum: sha256.Sum256(fragBytes), srcVersion: srcVersion, key: key}
	b.buildDir = filepath.Join(kdir, "build", short)
	if err := os.MkdirAll(b.buildDir, 0o755); err != nil {
		return nil, err
	}
	if b.src, err = b.unpack(ctx, kdir); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(b.buildDir, LogName))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	b.log = logf

	start := time.Now()
	resolved, err := b.configure(ctx)
	if err != nil {
		return nil, err
	}
	if o.CheckOnly {
		return &Result{Dir: b.buildDir, Key: key}, nil
	}
	objects, err := b.compile(ctx)
	if err != nil {
		return nil, err
	}
	info := &Info{
		Key:            key,
		SourcePackage:  SourcePackage,
		SourceVersion:  srcVersion,
		Recipe:         RecipeVersion,
		FragmentSHA256: hex.EncodeToString(b.fragSum[:]),
		Compiler:       strings.Trim(resolved["CONFIG_CC_VERSION_TEXT"], `"`),
		Jobs:           o.Jobs,
		BuildSeconds:   time.Since(start).Round(100 * time.Millisecond).Seconds(),
		Objects:        objects,
		BuiltAt:        time.Now().UTC().Round(time.Second),
	}
	if err := b.publish(out, resolved, info); err != nil {
		return nil, err
	}
	o.logf("built kernel %s in %s: vmlinux %s, bzImage %s", short,
		time.Duration(info.BuildSeconds*float64(time.Second)), mib(info.VmlinuxBytes), mib(info.BzImageBytes))
	if !o.KeepBuild {
		if err := os.RemoveAll(b.buildDir); err != nil {
			o.logf("warning: remove build dir: %v", err)
		}
	}
	return &Result{Dir: out, Key: key, Info: info}, nil
}

// ReadInfo reads build.json from a published build directory.
func ReadInfo(dir string) (*Info, error) { return readInfo(dir) }

func readInfo(dir string) (*Info, error) {
	data, err := os.ReadFile(filepath.Join(dir, InfoName))
	if err != nil {
		return nil, err
	}
	var info Info
	if err := json.Unmarshal(data, &info); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, InfoName), err)
	}
	return &info, nil
}

type builder struct {
	o          Options
	frag       []Option
	fragSum    [32]byte
	srcVersion string
	key        string
	src        string // unpacked source tree
	buildDir   string // O= directory
	log        *os.File
}

func (o Options) logf(format string, args ...any) {
	fmt.Fprintf(o.Progress, "kernel: "+format+"\n", args...)
}

// unpack returns the source tree for b.srcVersion, unpacking the tarball into
// the cache the first time.
func (b *builder) unpack(ctx context.Context, kdir string) (string, error) {
	srcRoot := filepath.Join(kdir, "src")
	if err := os.MkdirAll(srcRoot, 0o755); err != nil {
		return "", err
	}
	entry := filepath.Join(srcRoot, SourcePackage+"_"+sanitize(b.srcVersion))
	tree := filepath.Join(entry, SourcePackage)
	if cache.Exists(filepath.Join(tree, "Makefile")) {
		return tree, nil
	}
	release, err := cache.Lock(entry + ".lock")
	if err != nil {
		return "", err
	}
	defer release()
	if cache.Exists(filepath.Join(tree, "Makefile")) {
		return tree, nil
	}
	if err := cache.RemoveStale(entry); err != nil {
		return "", err
	}
	fi, err := os.Stat(b.o.Tarball)
	if err != nil {
		return "", fmt.Errorf("kernel source: %w (install %s)", err, SourcePackage)
	}
	b.o.logf("unpacking %s %s (%s) into %s...", SourcePackage, b.srcVersion, mib(fi.Size()), entry)
	start := time.Now()
	err = cache.Publish(entry, func(tmp string) error {
		cmd := exec.CommandContext(ctx, "tar", "-xf", b.o.Tarball, "-C", tmp)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("unpack %s: %w: %s", b.o.Tarball, err, tail(string(out), 10))
		}
		if !cache.Exists(filepath.Join(tmp, SourcePackage, "Makefile")) {
			return fmt.Errorf("unpack %s: no %s/Makefile in the tarball", b.o.Tarball, SourcePackage)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	b.o.logf("unpacked in %s", time.Since(start).Round(time.Second))
	return tree, nil
}

// configure writes the resolved .config into the build directory and checks
// it against the fragment.
func (b *builder) configure(ctx context.Context) (map[string]string, error) {
	b.o.logf("configuring %s (tinyconfig + %s + olddefconfig) in %s", ShortKey(b.key), filepath.Base(b.o.Fragment), b.buildDir)
	if err := b.make(ctx, "tinyconfig", nil); err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(b.buildDir, ".config")
	base, err := os.ReadFile(cfgPath)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(cfgPath, Merge(base, b.frag), 0o644); err != nil {
		return nil, err
	}
	if err := b.make(ctx, "olddefconfig", nil); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(cfgPath)
	if err != nil {
		return nil, err
	}
	resolved := ParseConfig(data)
	if bad := Dropped(b.frag, resolved); len(bad) > 0 {
		return nil, &DroppedError{Mismatches: bad, Config: cfgPath}
	}
	b.o.logf("config ok: all %d fragment options as asked", len(b.frag))
	return resolved, nil
}

// compile runs make vmlinux bzImage and returns the number of compiled objects.
func (b *builder) compile(ctx context.Context) (int, error) {
	expect := b.expectedObjects()
	if expect > 0 {
		b.o.logf("compiling with -j%d (about %d objects, as in the last build)", b.o.Jobs, expect)
	} else {
		b.o.logf("compiling with -j%d", b.o.Jobs)
	}
	p := &progress{start: time.Now()}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(b.o.ProgressEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				b.o.logf("%s", p.line(expect))
			}
		}
	}()
	err := b.make(ctx, "", p, fmt.Sprintf("-j%d", b.o.Jobs), "vmlinux", "bzImage")
	close(done)
	wg.Wait()
	if err != nil {
		return 0, err
	}
	n, _, _ := p.snapshot()
	b.o.logf("compiled %d objects in %s", n, time.Since(p.start).Round(time.Second))
	return n, nil
}

// expectedObjects is the object count of the most recent published build, used
// as the denominator of the progress line; 0 if there is none.
func (b *builder) expectedObjects() int {
	dirs, _ := filepath.Glob(filepath.Join(filepath.Dir(b.buildDir), "..", "*", InfoName))
	var best *Info
	for _, d := range dirs {
		if info, err := readInfo(filepath.Dir(d)); err == nil && info.Objects > 0 && (best == nil || info.BuiltAt.After(best.BuiltAt)) {
			best = info
		}
	}
	if best == nil {
		return 0
	}
	return best.Objects
}

// make runs make in the source tree with O=buildDir, logging all output; p,
// if not nil, is fed every output line. On failure the log's tail goes to
// the progress writer.
func (b *builder) make(ctx context.Context, target string, p *progress, extra ...string) error {
	args := []string{"-C", b.src, "O=" + b.buildDir, "ARCH=x86_64",
		"KBUILD_BUILD_USER=husk", "KBUILD_BUILD_HOST=husk"}
	args = append(args, extra...)
	if target != "" {
		args = append(args, target)
	}
	cmd := exec.CommandContext(ctx, "make", args...)
	cmd.Env = makeEnv()
	fmt.Fprintf(b.log, "+ make %s\n", strings.Join(args, " "))
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return fmt.Errorf("start make: %w", err)
	}
	pw.Close()
	var lines tailBuf
	sc := bufio.NewScanner(pr)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(b.log, line)
		lines.add(line)
		if p != nil {
			p.feed(line)
		}
	}
	pr.Close()
	if err := cmd.Wait(); err != nil {
		what := target
		if what == "" {
			what = strings.Join(extra, " ")
		}
		fmt.Fprintf(b.o.Progress, "kernel: make %s failed; last lines of %s:\n%s\n", what, b.log.Name(), strings.Join(lines.lines(), "\n"))
		return fmt.Errorf("make %s: %w (full log: %s)", what, err, b.log.Name())
	}
	return nil
}

// makeEnv is the environment of make: ours without make's own variables (a
// parent make's jobserver must not leak in) and with a fixed locale.
func makeEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEFILES", "ARCH", "CROSS_COMPILE", "O", "KBUILD_OUTPUT", "LC_ALL", "LANG":
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C")
}

// publish copies the outputs into a fresh cache entry and renames it into place.
func (b *builder) publish(out string, resolved map[string]string, info *Info) error {
	vmlinux := filepath.Join(b.buildDir, "vmlinux")
	bz := filepath.Join(b.buildDir, "arch", "x86", "boot", "bzImage")
	if resolved["CONFIG_PVH"] == "y" {
		f, err := os.Open(vmlinux)
		if err != nil {
			return err
		}
		entry, err := PVHEntry(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("vmlinux built with CONFIG_PVH=y: %w", err)
		}
		info.PVHEntry = fmt.Sprintf("%#x", entry)
	}
	// Under the key's lock: clear a stale entry (Force, or one without
	// build.json) and temporaries of publishers that died.
	if err := os.RemoveAll(out); err != nil {
		return err
	}
	if err := cache.RemoveStale(out); err != nil {
		return err
	}
	return cache.Publish(out, func(tmp string) error {
		for _, c := range []struct{ from, to string }{
			{vmlinux, VmlinuxName},
			{bz, BzImageName},
			{filepath.Join(b.buildDir, ".config"), ConfigName},
			{b.log.Name(), LogName},
		} {
			// The log is still open for writing, so it is always copied.
			link := cache.LinkOrCopy
			if filepath.Base(c.from) == LogName {
				link = cache.CopyFile
			}
			if err := link(c.from, filepath.Join(tmp, c.to)); err != nil {
				return err
			}
		}
		for name, size := range map[string]*int64{VmlinuxName: &info.VmlinuxBytes, BzImageName: &info.BzImageBytes} {
			fi, err := os.Stat(filepath.Join(tmp, name))
			if err != nil {
				return err
			}
			*size = fi.Size()
		}
		data, err := json.MarshalIndent(info, "", "  ")
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(tmp, InfoName), append(data, '\n'), 0o644)
	})
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9.+~_-]`)

// sanitize makes a package version usable as a path element.
func sanitize(v string) string { return unsafeChars.ReplaceAllString(v, "_") }

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// tailBuf keeps the last lines of make's output, for the failure report.
type tailBuf struct {
	buf  [40]string
	n    int
	full bool
}

func (t *tailBuf) add(s string) {
	t.buf[t.n] = s
	t.n = (t.n + 1) % len(t.buf)
	if t.n == 0 {
		t.full = true
	}
}

func (t *tailBuf) lines() []string {
	if !t.full {
		return append([]string(nil), t.buf[:t.n]...)
	}
	return append(append([]string(nil), t.buf[t.n:]...), t.buf[:t.n]...)
}
