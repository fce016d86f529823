package testhost

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/huskvm/husk/internal/cache"
)

// Disk images built from directories are kept in the cache; the newest
// keepDiskImages survive pruning, and none younger than an hour is pruned.
const keepDiskImages = 8

// diskImage returns the raw image to attach for d: Path itself if it is a
// regular file, else an ext4 image of the directory, built with
// mkfs.ext4 -d and cached by a hash of the directory's contents.
func diskImage(ctx context.Context, d Disk, progress io.Writer) (string, error) {
	path, err := filepath.Abs(d.Path)
	if err != nil {
		return "", err
	}
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("disk %s: %w", d.Name, err)
	}
	switch {
	case st.Mode().IsRegular():
		return path, nil
	case !st.IsDir():
		return "", fmt.Errorf("disk %s: %s is neither a directory nor a regular file", d.Name, path)
	}
	sum, files, dataBlocks, err := hashDir(path)
	if err != nil {
		return "", fmt.Errorf("disk %s: %w", d.Name, err)
	}
	dir, err := cache.Dir("testhost", "disks")
	if err != nil {
		return "", err
	}
	final := filepath.Join(dir, sum+".ext4")
	if _, err := os.Stat(final); err == nil {
		now := time.Now()
		os.Chtimes(final, now, now)
		return final, nil
	}
	// One lock for all image builds: they are short, and per-image lock
	// files would outlive pruned images.
	release, err := cache.Lock(filepath.Join(dir, ".lock"))
	if err != nil {
		return "", err
	}
	defer release()
	if _, err := os.Stat(final); err == nil {
		return final, nil
	}
	fmt.Fprintf(progress, "building ext4 image of %s\n", path)
	err = cache.PublishFile(final, 0o644, func(f *os.File) error {
		return mkfsDir(ctx, f, path, files, dataBlocks)
	})
	if err != nil {
		return "", fmt.Errorf("disk %s: %w", d.Name, err)
	}
	pruneFiles(dir, "*.ext4", keepDiskImages, time.Hour)
	return final, nil
}

// hashDir hashes a directory tree: every entry's relative path, type,
// permissions and, for files, contents, and for symlinks, target. It also
// counts entries and 4 KiB data blocks, to size the image.
func hashDir(root string) (sum string, entries, blocks int64, err error) {
	h := sha256.New()
	fmt.Fprintf(h, "husk-testhost-disk-1\n")
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		entries++
		fmt.Fprintf(h, "%q %v %d\n", rel, info.Mode(), info.Size())
		switch {
		case info.Mode().IsRegular():
			blocks += (info.Size() + 4095) / 4096
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			if _, err := io.Copy(h, f); err != nil {
				return err
			}
		case info.Mode()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "-> %q\n", t)
			blocks++
		case info.IsDir():
			blocks++
		}
		return nil
	})
	return hex.EncodeToString(h.Sum(nil)[:16]), entries, blocks, err
}

// mkfsDir fills f with an ext4 file system holding the contents of dir.
// The size estimate allows for metadata; if mkfs.ext4 still runs out of
// space the image is doubled, up to three times.
func mkfsDir(ctx context.Context, f *os.File, dir string, entries, dataBlocks int64) error {
	inodes := entries + 64
	// data + 5% (extent blocks, directories) + inode tables (256 B each)
	// + 8 MiB for group descriptors, bitmaps and slack.
	blocks := dataBlocks + dataBlocks/20 + inodes/16 + 2048
	var out []byte
	for try := 0; try < 4; try++ {
		if err := f.Truncate(0); err != nil {
			return err
		}
		if err := f.Truncate(blocks * 4096); err != nil {
			return err
		}
		cmd := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-m", "0",
			"-N", strconv.FormatInt(inodes, 10), "-O", "^has_journal,^resize_inode",
			"-E", "root_owner=0:0,nodiscard", "-d", dir, f.Name(), strconv.FormatInt(blocks, 10))
		var err error
		if out, err = cmd.CombinedOutput(); err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		blocks *= 2
	}
	return fmt.Errorf("mkfs.ext4 -d %s: %s", dir, out)
}
