package template

import (
	"bufio"
	"context"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/huskvm/husk/internal/cache"
)

const blockSize = 4096

// treeSize is what mkfs.ext4 -d has to store for a tree.
type treeSize struct {
	files int64 // inodes (hard links counted once)
	bytes int64 // data, in whole 4 KiB blocks
}

// measureTree walks root without following symlinks.
func measureTree(root string) (treeSize, error) {
	var t treeSize
	type ino struct{ dev, ino uint64 }
	seen := map[ino]bool{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if ok {
			k := ino{uint64(st.Dev), st.Ino}
			if seen[k] {
				return nil
			}
			seen[k] = true
		}
		t.files++
		switch {
		case fi.Mode().IsRegular(), fi.IsDir():
			t.bytes += max(blocks(fi.Size()), blockSize)
		case fi.Mode()&fs.ModeSymlink != 0:
			if fi.Size() >= 60 { // shorter targets live in the inode
				t.bytes += blockSize
			}
		}
		return nil
	})
	return t, err
}

func blocks(n int64) int64 { return (n + blockSize - 1) / blockSize * blockSize }

// imageGeometry turns the size policy and the tree into an image size and
// an inode count. The estimate of ext4's overhead errs on the large side:
// inode tables (256 B per inode), 3% for extent blocks, bitmaps, group
// descriptors and reserved GDT blocks, 8 MiB of slack, and the journal if any.
func imageGeometry(s Size, journal bool, t treeSize) (sizeBytes, inodes int64, err error) {
	freeInodes := func(freeBytes int64) int64 {
		if s.FreeInodes > 0 {
			return s.FreeInodes
		}
		return max(16384, freeBytes/8192)
	}
	overhead := func(inodes int64) int64 {
		o := t.bytes*3/100 + inodes*256 + 8<<20
		if journal {
			o += 64 << 20
		}
		return o
	}
	if s.FixedMiB > 0 {
		sizeBytes = s.FixedMiB << 20
		inodes = t.files + freeInodes(max(sizeBytes-t.bytes, 0))
		if need := t.bytes + overhead(inodes); need > sizeBytes {
			return 0, 0, fmt.Errorf("content needs about %s but size.fixed_mib is %d", mib(need), s.FixedMiB)
		}
		return sizeBytes, inodes, nil
	}
	free := s.FreeMiB << 20
	inodes = t.files + freeInodes(free)
	sizeBytes = t.bytes + overhead(inodes) + free
	sizeBytes = (sizeBytes + 1<<20 - 1) &^ (1<<20 - 1)
	if sizeBytes > MaxImageMiB<<20 {
		return 0, 0, fmt.Errorf("image would be %s, above the %d MiB limit", mib(sizeBytes), MaxImageMiB)
	}
	return sizeBytes, inodes, nil
}

// mkfs packs root into a new ext4 image at img.
func (b *builder) mkfs(ctx context.Context, root, img, key string, t treeSize, log *os.File) error {
	size, inodes, err := imageGeometry(b.r.Size, b.r.Journal, t)
	if err != nil {
		return err
	}
	uuid := uuidFromKey(key)
	features := "^has_journal"
	if b.r.Journal {
		features = "has_journal"
	}
	label := b.r.Name
	if len(label) > 16 {
		label = label[:16]
	}
	args := []string{"-q", "-F", "-t", "ext4", "-b", strconv.Itoa(blockSize), "-I", "256", "-m", "0",
		"-N", strconv.FormatInt(inodes, 10), "-L", label, "-U", uuid, "-O", features,
		"-E", "root_owner=0:0,hash_seed=" + uuid,
		"-d", root, img, strconv.FormatInt(size/blockSize, 10)}
	fmt.Fprintf(log, "+ mkfs.ext4 %s\n", strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, "mkfs.ext4", args...)
	out, err := cmd.CombinedOutput()
	log.Write(out)
	if err != nil {
		return fmt.Errorf("mkfs.ext4 (%s, %d inodes): %w: %s", mib(size), inodes, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// uuidFromKey makes the file system UUID (and htree hash seed) a function
// of the key, so that rebuilding a recipe does not change them.
func uuidFromKey(key string) string {
	var u [16]byte
	hex.Decode(u[:], []byte((key + strings.Repeat("0", 32))[:32]))
	u[6] = u[6]&0x0f | 0x40 // version 4
	u[8] = u[8]&0x3f | 0x80 // RFC 4122 variant
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// fillImageInfo records the image's sizes and free space from dumpe2fs.
func fillImageInfo(ctx context.Context, img string, info *Info) error {
	fi, err := os.Stat(img)
	if err != nil {
		return err
	}
	info.ImageBytes = fi.Size()
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		info.ImageAllocatedBytes = st.Blocks * 512
	}
	sb, err := superblock(ctx, img)
	if err != nil {
		return err
	}
	info.FreeBytes = sb["Free blocks"] * sb["Block size"]
	info.Inodes = sb["Inode count"]
	info.FreeInodes = sb["Free inodes"]
	return nil
}

// superblock returns the numeric fields of dumpe2fs -h.
func superblock(ctx context.Context, img string) (map[string]int64, error) {
	out, err := exec.CommandContext(ctx, "dumpe2fs", "-h", img).Output()
	if err != nil {
		return nil, fmt.Errorf("dumpe2fs %s: %w", img, err)
	}
	m := map[string]int64{}
	for _, l := range strings.Split(string(out), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
			m[strings.TrimSpace(k)] = n
		}
	}
	for _, k := range []string{"Block size", "Block count", "Free blocks", "Inode count", "Free inodes"} {
		if _, ok := m[k]; !ok {
			return nil, fmt.Errorf("dumpe2fs %s: no %q", img, k)
		}
	}
	return m, nil
}

// mountsUnder lists the mount points (of this mount namespace) at or below
// dir, deepest first.
func mountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out, sc.Err()
}

// unescapeMountinfo undoes the octal escapes (\040 for space, ...) of
// /proc/self/mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ensureUnmounted detaches anything mounted at or below dir and fails if
// something stays: deleting a tree through a bind mount of /dev or /proc
// would delete the host's.
func ensureUnmounted(dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	mps, err := mountsUnder(dir)
	if err != nil || len(mps) == 0 {
		return err
	}
	for _, mp := range mps {
		unix.Unmount(mp, unix.MNT_DETACH)
	}
	if mps, err = mountsUnder(dir); err != nil {
		return err
	}
	if len(mps) > 0 {
		return fmt.Errorf("still mounted below %s, not deleting it: %s", dir, strings.Join(mps, ", "))
	}
	return nil
}

// removeTree deletes a bootstrap tree once nothing is mounted in it.
func removeTree(dir string) error {
	if !cache.Exists(dir) {
		return nil
	}
	if err := ensureUnmounted(dir); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}

// ScratchDir holds bootstrap trees while they are built: on disk (not a
// tmpfs /tmp), world-traversable for apt's _apt user (unlike /root/.cache).
var ScratchDir = "/var/tmp/husk-rootfs"

// rootDir is the bootstrap tree of the entry final for this process.
func rootDir(final string) string {
	return filepath.Join(ScratchDir, fmt.Sprintf("%s-%s.root-%d", filepath.Base(filepath.Dir(final)), filepath.Base(final), os.Getpid()))
}

// rootGlob matches the bootstrap trees of final of every process.
func rootGlob(final string) string {
	return globEscape(filepath.Join(ScratchDir, fmt.Sprintf("%s-%s.root-", filepath.Base(filepath.Dir(final)), filepath.Base(final)))) + "*"
}

// removeStale deletes what dead builders of final left: publish
// temporaries, work directories and bootstrap trees. Call it under the
// key's lock.
func removeStale(final string) error {
	works, err := filepath.Glob(globEscape(final) + ".work-*")
	if err != nil {
		return err
	}
	roots, err := filepath.Glob(rootGlob(final))
	if err != nil {
		return err
	}
	for _, w := range append(works, roots...) {
		if err := removeTree(w); err != nil {
			return err
		}
	}
	return cache.RemoveStale(final)
}

func globEscape(s string) string {
	var b strings.Builder
	for _, c := range s {
		if strings.ContainsRune(`*?[\`, c) {
			b.WriteByte('\\')
		}
		b.WriteRune(c)
	}
	return b.String()
}
