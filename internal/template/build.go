// Package template builds guest root file systems from template recipes and
// caches them outside the repository.
//
// A recipe (guest/templates/<name>.json, see Recipe) names a Debian suite and
// variant, packages, users, files, a hostname, a size policy and optional
// commands. Build runs mmdebstrap into a scratch directory, applies users,
// files and commands from a customize hook inside the chroot, and packs the
// tree with mkfs.ext4 -d into an image checked with e2fsck. Files that change
// often (the guest agent) are not part of the recipe: callers pass them as
// Options.Extra, and Build derives an image holding them from the cached base
// image with debugfs, keyed by their content hashes, in about a second.
//
// Cache layout below the cache root (see internal/cache):
//
//	templates/<name>/<key16>/rootfs.ext4   the image (read-only, 0444)
//	templates/<name>/<key16>/recipe.json   the canonical recipe that was hashed
//	templates/<name>/<key16>/build.json    Info: timings, sizes, tool versions
//	templates/<name>/<key16>/build.log     mmdebstrap and mkfs output
//	templates/<name>/<key16>.lock          flock held while building that key
//	templates/<name>/<key16>.work-<pid>/   scratch (scripts, log, image being built); kept after a failure
//	/var/tmp/husk-rootfs/<name>-<key16>.root-<pid>/  the bootstrap tree, removed after mkfs
//
// Building needs root: mmdebstrap runs in root mode, in a private mount
// namespace so that nothing it mounts can outlive it.
package template

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/huskvm/husk/internal/cache"
)

// Options configures Build.
type Options struct {
	// Recipe is the path of the recipe file (required).
	Recipe string
	// Extra maps image paths to host files to add on top of the recipe's
	// image (see Recipe.Extra). Their contents are hashed into the key.
	Extra map[string]string
	// Progress receives stage lines and periodic progress; nil discards.
	Progress io.Writer
	// ProgressEvery is the period of progress lines while bootstrapping; 5s if zero.
	ProgressEvery time.Duration
	// Force rebuilds even when the image is cached (the base too, when
	// Extra is set).
	Force bool
}

// Result describes a published (or cached) image.
type Result struct {
	Image  string // .../rootfs.ext4
	Dir    string // the cache entry holding Image, recipe.json, build.json
	Key    string
	Cached bool // true if nothing had to be built
	Info   *Info
}

// Info is the content of build.json.
type Info struct {
	Name     string `json:"name"`
	Key      string `json:"key"`
	BaseKey  string `json:"base_key,omitempty"` // set on images with extra files
	Recipe   string `json:"recipe"`             // RecipeVersion
	Suite    string `json:"suite"`
	Variant  string `json:"variant"`
	Packages int    `json:"installed_packages"` // dpkg packages in the image

	Mmdebstrap string `json:"mmdebstrap"`
	E2fsprogs  string `json:"e2fsprogs"`
	Journal    bool   `json:"journal"`

	BootstrapSeconds float64 `json:"bootstrap_seconds,omitempty"` // mmdebstrap incl. customize
	BootstrapStages  []Stage `json:"bootstrap_stages,omitempty"`
	MkfsSeconds      float64 `json:"mkfs_seconds,omitempty"`
	ExtraSeconds     float64 `json:"extra_seconds,omitempty"` // deriving from the base image
	VerifySeconds    float64 `json:"verify_seconds"`
	TotalSeconds     float64 `json:"total_seconds"`

	TreeFiles           int64 `json:"tree_files,omitempty"`
	TreeBytes           int64 `json:"tree_bytes,omitempty"` // data as mkfs will store it (4 KiB blocks)
	ImageBytes          int64 `json:"image_bytes"`          // apparent size of rootfs.ext4
	ImageAllocatedBytes int64 `json:"image_allocated_bytes"`
	FreeBytes           int64 `json:"free_bytes"`
	Inodes              int64 `json:"inodes"`
	FreeInodes          int64 `json:"free_inodes"`

	Extra   []Extra   `json:"extra,omitempty"`
	BuiltAt time.Time `json:"built_at"`
}

// RecipesDir holds the repository's recipes, relative to the source root.
const RecipesDir = "guest/templates"

// RecipePath is the recipe file of the template name in the source tree at root.
func RecipePath(root, name string) string {
	return filepath.Join(root, RecipesDir, name+".json")
}

// Names inside a cache entry.
const (
	ImageName  = "rootfs.ext4"
	RecipeName = "recipe.json"
	InfoName   = "build.json"
	LogName    = "build.log"
)

// Build returns the cached image for o.Recipe (plus o.Extra), building it
// first if needed.
func Build(ctx context.Context, o Options) (*Result, error) {
	if o.Recipe == "" {
		return nil, errors.New("template: no recipe given")
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.ProgressEvery <= 0 {
		o.ProgressEvery = 5 * time.Second
	}
	r, err := Load(o.Recipe)
	if err != nil {
		return nil, err
	}
	extras, err := r.ResolveExtra(o.Extra)
	if err != nil {
		return nil, err
	}
	dir, err := cache.Dir("templates", r.Name)
	if err != nil {
		return nil, err
	}
	b := &builder{o: o, r: r, dir: dir}
	if len(extras) == 0 {
		return b.base(ctx, o.Force)
	}
	return b.derive(ctx, extras)
}

type builder struct {
	o      Options
	r      *Recipe
	dir    string  // templates/<name>
	stages []Stage // of the last bootstrap
}

func (b *builder) logf(format string, args ...any) {
	fmt.Fprintf(b.o.Progress, "rootfs "+b.r.Name+": "+format+"\n", args...)
}

// cached returns the published entry for key, or nil.
func cached(final, key string) *Result {
	info, err := ReadInfo(final)
	if err != nil || info.Key != key || !cache.Exists(filepath.Join(final, ImageName)) {
		return nil
	}
	return &Result{Image: filepath.Join(final, ImageName), Dir: final, Key: key, Cached: true, Info: info}
}

// ReadInfo reads build.json from a published entry.
func ReadInfo(dir string) (*Info, error) {
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

// lockEntry takes the key's lock, saying so if another build holds it, and
// reports the entry if it was published while waiting.
func (b *builder) lockEntry(final, key string, force bool) (release func(), done *Result, err error) {
	release, err = cache.TryLock(final + ".lock")
	if errors.Is(err, cache.ErrLocked) {
		b.logf("waiting for another build of %s", ShortKey(key))
		release, err = cache.Lock(final + ".lock")
	}
	if err != nil {
		return nil, nil, err
	}
	if !force {
		if res := cached(final, key); res != nil {
			release()
			return nil, res, nil
		}
	}
	// Under the lock no other publisher of this key runs: clear what dead
	// ones left.
	if err := removeStale(final); err != nil {
		release()
		return nil, nil, err
	}
	return release, nil, nil
}

// base builds (or finds) the image of the recipe alone.
func (b *builder) base(ctx context.Context, force bool) (*Result, error) {
	key := b.r.Key()
	short := ShortKey(key)
	final := filepath.Join(b.dir, short)
	if !force {
		if res := cached(final, key); res != nil {
			return res, nil
		}
	}
	if err := checkTools(); err != nil {
		return nil, err
	}
	release, done, err := b.lockEntry(final, key, force)
	if err != nil || done != nil {
		return done, err
	}
	defer release()

	start := time.Now()
	work := fmt.Sprintf("%s.work-%d", final, os.Getpid())
	if err := os.MkdirAll(work, 0o755); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(work, LogName))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	root := rootDir(final)
	ok := false
	defer func() {
		// The tree is large and holds device nodes: never keep it.
		if err := removeTree(root); err != nil {
			b.logf("warning: %v", err)
		}
		if ok {
			os.RemoveAll(work)
		} else {
			os.Remove(filepath.Join(work, ImageName))
			b.logf("build failed; log and scripts kept in %s", work)
		}
	}()

	info := &Info{Name: b.r.Name, Key: key, Recipe: RecipeVersion, Suite: b.r.Suite, Variant: b.r.Variant, Journal: b.r.Journal}
	info.Mmdebstrap, info.E2fsprogs = toolVersions(ctx)
	b.logf("building %s: mmdebstrap %s/%s, %d packages, %d users, %d files, %d commands",
		short, b.r.Suite, b.r.Variant, len(b.r.Packages), len(b.r.Users), len(b.r.Files), len(b.r.Customize))

	t := time.Now()
	if err := b.bootstrap(ctx, work, root, logf); err != nil {
		return nil, err
	}
	info.BootstrapSeconds = seconds(time.Since(t))
	info.BootstrapStages = b.stages
	tree, err := measureTree(root)
	if err != nil {
		return nil, err
	}
	info.TreeFiles, info.TreeBytes = tree.files, tree.bytes
	info.Packages = countPackages(root)
	b.logf("bootstrapped in %s: %d packages, %d files, %s", round(time.Since(t)), info.Packages, tree.files, mib(tree.bytes))

	t = time.Now()
	img := filepath.Join(work, ImageName)
	if err := b.mkfs(ctx, root, img, key, tree, logf); err != nil {
		return nil, err
	}
	info.MkfsSeconds = seconds(time.Since(t))
	if err := removeTree(root); err != nil {
		return nil, err
	}

	t = time.Now()
	if err := verifyImage(ctx, img, b.r, nil); err != nil {
		return nil, fmt.Errorf("verify %s: %w", img, err)
	}
	info.VerifySeconds = seconds(time.Since(t))
	if err := fillImageInfo(ctx, img, info); err != nil {
		return nil, err
	}
	b.logf("mkfs.ext4 in %s: %s image (%s allocated, %s and %d inodes free); e2fsck clean, %d checks ok",
		round(time.Duration(info.MkfsSeconds*float64(time.Second))), mib(info.ImageBytes), mib(info.ImageAllocatedBytes),
		mib(info.FreeBytes), info.FreeInodes, len(checksFor(b.r, nil)))

	info.TotalSeconds = seconds(time.Since(start))
	info.BuiltAt = time.Now().UTC().Round(time.Second)
	if err := publish(final, img, logf.Name(), b.r, info); err != nil {
		return nil, err
	}
	ok = true
	b.logf("built %s in %s", short, round(time.Since(start)))
	return &Result{Image: filepath.Join(final, ImageName), Dir: final, Key: key, Info: info}, nil
}

// publish moves img into a fresh entry next to the recipe, build.json and
// the log, and renames the entry into place, replacing the old entry (Force,
// or one without build.json). Call it under the key's lock.
func publish(final, img, log string, r *Recipe, info *Info) error {
	if err := os.RemoveAll(final); err != nil {
		return err
	}
	return cache.Publish(final, func(tmp string) error {
		if err := os.Chmod(img, 0o444); err != nil {
			return err
		}
		if err := os.Rename(img, filepath.Join(tmp, ImageName)); err != nil {
			return err
		}
		if err := copyFile(log, filepath.Join(tmp, LogName), 0o644); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(tmp, RecipeName), r.Canonical(), 0o644); err != nil {
			return err
		}
		data, err := json.MarshalIndent(info, "", "  ")
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(tmp, InfoName), append(data, '\n'), 0o644)
	})
}

// bootstrap runs mmdebstrap into root with the customize script.
func (b *builder) bootstrap(ctx context.Context, work, root string, logf *os.File) error {
	script, err := b.writeCustomize(work)
	if err != nil {
		return err
	}
	// The tree's parent must be traversable by apt's unprivileged _apt
	// user, or apt downloads as root ("Download is performed unsandboxed").
	if err := os.MkdirAll(filepath.Dir(root), 0o755); err != nil {
		return err
	}
	args := []string{"--mode=root", "--format=directory", "--verbose", "--variant=" + b.r.Variant}
	if len(b.r.Packages) > 0 {
		args = append(args, "--include="+strings.Join(b.r.Packages, ","))
	}
	if b.r.Recommends {
		args = append(args, `--aptopt=Apt::Install-Recommends "true"`)
	}
	for _, g := range b.r.PathExclude {
		args = append(args, "--dpkgopt=path-exclude="+g)
	}
	for _, g := range b.r.PathInclude {
		args = append(args, "--dpkgopt=path-include="+g)
	}
	args = append(args, "--customize-hook=sh "+shq(script)+` "$1"`)
	// mmdebstrap's own eatmydata hooks: dpkg skips its fsyncs (the tree is
	// packed into an image afterwards, durability is moot) and the wrapper
	// is removed again at the end of the customize stage, after our hook.
	// Measured here: 69 s instead of 77-87 s for minimal on a loaded host.
	if cache.Exists(eatmydataHooks) {
		args = append(args, "--hook-directory="+eatmydataHooks)
	}
	args = append(args, b.r.Suite, root)
	args = append(args, b.r.Mirrors...)
	fmt.Fprintf(logf, "+ mmdebstrap %s\n", strings.Join(args, " "))

	cmd := exec.CommandContext(ctx, "mmdebstrap", args...)
	cmd.Dir = work
	cmd.Env = append(os.Environ(), "LC_ALL=C.UTF-8", "DEBIAN_FRONTEND=noninteractive")
	// A private mount namespace: whatever mmdebstrap mounts in the chroot
	// (proc, sys, dev) vanishes with it, even if it is killed, and never
	// shows in ours, where the tree is deleted. Its own process group, so
	// that cancelling stops apt and dpkg too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Unshareflags: syscall.CLONE_NEWNS}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 20 * time.Second

	p := &progress{start: time.Now()}
	stop := b.ticker(func() { b.logf("%s", p.line()) })
	err = runLogged(cmd, logf, p.feed)
	stop()
	b.stages = p.finish()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		fmt.Fprintf(b.o.Progress, "rootfs %s: mmdebstrap failed; last lines of %s:\n%s\n", b.r.Name, logf.Name(), strings.Join(p.tail(), "\n"))
		return fmt.Errorf("mmdebstrap: %w (full log: %s)", err, logf.Name())
	}
	// mmdebstrap has unmounted, and its namespace is gone; check ours anyway
	// before anything walks or deletes the tree.
	return ensureUnmounted(root)
}

// eatmydataHooks is the hook directory mmdebstrap ships for running dpkg
// under eatmydata.
const eatmydataHooks = "/usr/share/mmdebstrap/hooks/eatmydata"

// ticker calls f every ProgressEvery until the returned stop is called.
func (b *builder) ticker(f func()) (stop func()) {
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
				f()
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// runLogged runs cmd with stdout and stderr copied line by line to log,
// each line prefixed with the seconds since the start, and to feed.
func runLogged(cmd *exec.Cmd, log io.Writer, feed func(string)) error {
	start := time.Now()
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	pw.Close()
	sc := bufio.NewScanner(pr)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		fmt.Fprintf(log, "[%7.2f] %s\n", time.Since(start).Seconds(), sc.Text())
		if feed != nil {
			feed(sc.Text())
		}
	}
	pr.Close()
	return cmd.Wait()
}

// progress digests mmdebstrap's output: its "I: ..." stage lines and the
// count of packages dpkg has set up.
type progress struct {
	start time.Time

	mu     sync.Mutex
	stage  string
	since  time.Time // start of stage
	stages []Stage   // finished stages
	setup  int
	lines  []string // last few lines, for a failure report
}

// Stage is one of mmdebstrap's "I:" steps and how long it took.
type Stage struct {
	Stage   string  `json:"stage"`
	Seconds float64 `json:"seconds"`
}

func (p *progress) feed(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case strings.HasPrefix(line, "I: "):
		p.endStage()
		p.stage, p.since = strings.TrimPrefix(line, "I: "), time.Now()
	case strings.HasPrefix(line, "Setting up "):
		p.setup++
	}
	p.lines = append(p.lines, line)
	if len(p.lines) > 40 {
		p.lines = p.lines[len(p.lines)-40:]
	}
}

func (p *progress) endStage() {
	if p.stage != "" {
		p.stages = append(p.stages, Stage{p.stage, seconds(time.Since(p.since))})
	}
}

// finish closes the last stage and returns all of them.
func (p *progress) finish() []Stage {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.endStage()
	p.stage = ""
	return p.stages
}

func (p *progress) line() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	stage := p.stage
	if stage == "" {
		stage = "starting"
	}
	set := ""
	if p.setup > 0 {
		set = fmt.Sprintf(", %d packages set up", p.setup)
	}
	return fmt.Sprintf("mmdebstrap: %s elapsed%s, %s", time.Since(p.start).Round(time.Second), set, stage)
}

func (p *progress) tail() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lines...)
}

// checkTools reports the first missing host tool, with the package to install.
func checkTools() error {
	if os.Geteuid() != 0 {
		return errors.New("building a template needs root (mmdebstrap --mode=root, chroot, file ownership in the image)")
	}
	for _, t := range []struct{ bin, pkg string }{
		{"mmdebstrap", "mmdebstrap"}, {"mkfs.ext4", "e2fsprogs"}, {"e2fsck", "e2fsprogs"},
		{"debugfs", "e2fsprogs"}, {"dumpe2fs", "e2fsprogs"}, {"resize2fs", "e2fsprogs"},
	} {
		if _, err := exec.LookPath(t.bin); err != nil {
			return fmt.Errorf("%s not found: apt-get install %s", t.bin, t.pkg)
		}
	}
	return nil
}

// toolVersions returns the versions of mmdebstrap and e2fsprogs, for build.json.
func toolVersions(ctx context.Context) (mmdebstrap, e2fsprogs string) {
	out, _ := exec.CommandContext(ctx, "mmdebstrap", "--version").Output()
	mmdebstrap = strings.TrimSpace(string(out))
	out, _ = exec.CommandContext(ctx, "mke2fs", "-V").CombinedOutput()
	e2fsprogs, _, _ = strings.Cut(strings.TrimSpace(string(out)), "\n")
	return mmdebstrap, e2fsprogs
}

// countPackages counts installed packages in the tree's dpkg status file.
func countPackages(root string) int {
	data, err := os.ReadFile(filepath.Join(root, "var/lib/dpkg/status"))
	if err != nil {
		return 0
	}
	return strings.Count(string(data), "\nStatus: install ok installed")
}

func copyFile(from, to string, perm os.FileMode) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", from, err)
	}
	return out.Close()
}

func seconds(d time.Duration) float64 { return d.Round(10 * time.Millisecond).Seconds() }

func round(d time.Duration) time.Duration {
	if d < 10*time.Second {
		return d.Round(10 * time.Millisecond)
	}
	return d.Round(100 * time.Millisecond)
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// shq quotes s for sh.
func shq(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
