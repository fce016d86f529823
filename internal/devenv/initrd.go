package devenv

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/huskvm/husk/internal/cache"
	"github.com/huskvm/husk/internal/cpio"
	"github.com/huskvm/husk/internal/testhost"
)

// initrdRecipe names the archive layout below; bump it when that changes.
const initrdRecipe = "husk-test-initrd-1"

// TestInitrd builds test/guestinit and packs it as /init of a newc archive
// in the cache (uncompressed: under emulation gzip did not boot faster),
// returning the archive's path.
func TestInitrd(ctx context.Context, progress io.Writer) (string, error) {
	return testInitrd(ctx, progress, false)
}

func testInitrd(ctx context.Context, progress io.Writer, gz bool) (string, error) {
	if progress == nil {
		progress = io.Discard
	}
	root, err := testhost.SourceRoot()
	if err != nil {
		return "", err
	}
	bin, err := buildGuestInit(ctx, root)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s gzip=%v\n", initrdRecipe, gz)
	h.Write(bin)
	key := hex.EncodeToString(h.Sum(nil))[:16]
	dir, err := cache.Dir("initrd")
	if err != nil {
		return "", err
	}
	name := "initrd.cpio"
	if gz {
		name += ".gz"
	}
	entry := filepath.Join(dir, key)
	path := filepath.Join(entry, name)
	if cache.Exists(path) {
		return path, nil
	}
	err = cache.Publish(entry, func(tmp string) error {
		return cache.PublishFile(filepath.Join(tmp, name), 0o644, func(f *os.File) error {
			return writeInitrd(f, bin, gz)
		})
	})
	if err != nil {
		return "", err
	}
	fmt.Fprintf(progress, "initrd: built %s (init %d bytes)\n", key, len(bin))
	return path, nil
}

// GzipTestInitrd is TestInitrd with the archive gzipped.
func GzipTestInitrd(ctx context.Context, progress io.Writer) (string, error) {
	return testInitrd(ctx, progress, true)
}

// buildGuestInit compiles test/guestinit as a static, stripped, reproducible
// binary and returns its bytes.
func buildGuestInit(ctx context.Context, root string) ([]byte, error) {
	tmp, err := os.MkdirTemp("", "husk-guestinit-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "init")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false",
		"-ldflags=-s -w", "-o", bin, "./test/guestinit")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("go build ./test/guestinit: %w\n%s", err, strings.TrimSpace(stderr.String()))
	}
	return os.ReadFile(bin)
}

// writeInitrd writes the newc archive holding init, optionally gzipped.
func writeInitrd(w io.Writer, init []byte, gz bool) error {
	var zw *gzip.Writer
	if gz {
		zw = gzip.NewWriter(w)
		w = zw
	}
	a := cpio.NewWriter(w)
	for _, d := range []struct {
		name string
		perm uint32
	}{{"dev", 0o755}, {"proc", 0o555}, {"sys", 0o555}} {
		if err := a.Dir(d.name, d.perm); err != nil {
			return err
		}
	}
	// The kernel opens /dev/console for init's stdio before devtmpfs is
	// mounted, so the node must be in the archive.
	if err := a.CharDev("dev/console", 0o600, 5, 1); err != nil {
		return err
	}
	if err := a.File("init", 0o755, init); err != nil {
		return err
	}
	if err := a.Close(); err != nil {
		return err
	}
	if zw != nil {
		return zw.Close()
	}
	return nil
}
