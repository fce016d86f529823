package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/huskvm/husk/internal/template"
	"github.com/huskvm/husk/internal/testhost"
)

func init() { commands["rootfs"] = rootfsCmd }

// extraFlags collects repeated -extra IMAGE_PATH=HOST_FILE flags.
type extraFlags map[string]string

func (e extraFlags) String() string { return fmt.Sprint(map[string]string(e)) }

func (e extraFlags) Set(v string) error {
	dst, src, ok := strings.Cut(v, "=")
	if !ok || dst == "" || src == "" {
		return fmt.Errorf("want IMAGE_PATH=HOST_FILE, got %q", v)
	}
	if _, dup := e[dst]; dup {
		return fmt.Errorf("%s given twice", dst)
	}
	e[dst] = src
	return nil
}

// rootfsCmd builds (or finds in the cache) a template's root file system
// image and prints its path as the last line of stdout.
func rootfsCmd(args []string) error {
	fs := flag.NewFlagSet("husk-dev rootfs", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: husk-dev rootfs [flags] <name | recipe.json>

Builds the ext4 root file system of a template recipe (guest/templates/<name>.json
of this repository, or the given recipe file) with mmdebstrap and mkfs.ext4, caching
it under $HUSK_CACHE/templates/<name>/<key16>/ (else $XDG_CACHE_HOME/husk, else
~/.cache/husk). Needs root. Progress goes to stderr; the last line of stdout is the
image's path. A second run with the same recipe (and extra files) is instant.
See docs/templates.md.

`)
		fs.PrintDefaults()
	}
	extra := extraFlags{}
	force := fs.Bool("force", false, "rebuild even if the image is cached")
	fs.Var(extra, "extra", "add a host file to the image as `IMAGE_PATH=HOST_FILE` (repeatable); its content hash joins the key")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errors.New("want exactly one template name or recipe file")
	}
	recipe := fs.Arg(0)
	if !strings.HasSuffix(recipe, ".json") && !strings.ContainsRune(recipe, '/') {
		root, err := testhost.SourceRoot()
		if err != nil {
			return err
		}
		recipe = template.RecipePath(root, recipe)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := template.Build(ctx, template.Options{
		Recipe:   recipe,
		Extra:    extra,
		Force:    *force,
		Progress: os.Stderr,
	})
	if err != nil {
		return err
	}
	if res.Cached {
		fmt.Fprintf(os.Stderr, "rootfs %s: cached (%s, built %s in %.0fs, %.0f MiB)\n", res.Info.Name,
			template.ShortKey(res.Key), res.Info.BuiltAt.Local().Format("2006-01-02 15:04"), res.Info.TotalSeconds,
			float64(res.Info.ImageBytes)/(1<<20))
	}
	fmt.Println(res.Image)
	return nil
}
