package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/huskvm/husk/internal/cache"
	"github.com/huskvm/husk/internal/devenv"
)

func init() { commands["initrd"] = initrdCmd }

// initrdCmd builds test/guestinit into a cached newc archive and prints the
// archive's path as the last line of stdout.
func initrdCmd(args []string) error {
	fs := flag.NewFlagSet("husk-dev initrd", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: husk-dev initrd [-o path] [-gzip]

Builds test/guestinit (static, CGO_ENABLED=0) and packs it as /init of a newc
cpio archive (dev/, proc/, sys/, dev/console 5:1, init), cached under
$HUSK_CACHE/initrd/<hash of the binary>/. The last line of stdout is the
archive's path (the -o path if given).

`)
		fs.PrintDefaults()
	}
	out := fs.String("o", "", "also write the archive to this path")
	gz := fs.Bool("gzip", false, "gzip the archive (the kernel has RD_GZIP)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	build := devenv.TestInitrd
	if *gz {
		build = devenv.GzipTestInitrd
	}
	path, err := build(context.Background(), os.Stderr)
	if err != nil {
		return err
	}
	if *out != "" {
		err := cache.PublishFile(*out, 0o644, func(f *os.File) error {
			in, err := os.Open(path)
			if err != nil {
				return err
			}
			defer in.Close()
			_, err = io.Copy(f, in)
			return err
		})
		if err != nil {
			return err
		}
		path = *out
	}
	fmt.Println(path)
	return nil
}
