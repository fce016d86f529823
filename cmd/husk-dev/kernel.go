package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/huskvm/husk/internal/devenv"
	"github.com/huskvm/husk/internal/kbuild"
	"github.com/huskvm/husk/internal/testhost"
)

func init() { commands["kernel"] = kernelCmd }

// kernelCmd builds (or finds in the cache) the guest kernel and prints its
// output directory as the last line of stdout.
func kernelCmd(args []string) error {
	fs := flag.NewFlagSet("husk-dev kernel", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: husk-dev kernel [flags]

Builds the husk guest kernel from Debian's linux-source-6.1 with the config
fragment guest/kernel/husk.config, caching it under $HUSK_CACHE (else
$XDG_CACHE_HOME/husk, else ~/.cache/husk). Progress goes to stderr; the last
line of stdout is the output directory, holding vmlinux, bzImage, config,
build.json and build.log. With -check, only configures and verifies the
fragment, and prints the build directory holding the resolved .config.

`)
		fs.PrintDefaults()
	}
	var (
		fragment  = fs.String("config", "", "config fragment (default: guest/kernel/husk.config of this repository)")
		jobs      = fs.Int("j", 0, "parallel make jobs (default: number of CPUs)")
		force     = fs.Bool("force", false, "rebuild even if the kernel is cached")
		keep      = fs.Bool("keep-build", false, "keep the object tree after a successful build")
		checkOnly = fs.Bool("check", false, "configure and verify the fragment only; do not compile")
	)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *fragment == "" {
		root, err := testhost.SourceRoot()
		if err != nil {
			return err
		}
		*fragment = filepath.Join(root, devenv.KernelFragment)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := kbuild.Build(ctx, kbuild.Options{
		Fragment:  *fragment,
		Jobs:      *jobs,
		Force:     *force,
		KeepBuild: *keep,
		CheckOnly: *checkOnly,
		Progress:  os.Stderr,
	})
	if err != nil {
		return err
	}
	if res.Cached {
		fmt.Fprintf(os.Stderr, "kernel: cached (%s, built %s in %.0fs)\n",
			kbuild.ShortKey(res.Key), res.Info.BuiltAt.Local().Format("2006-01-02 15:04"), res.Info.BuildSeconds)
	}
	fmt.Println(res.Dir)
	return nil
}
