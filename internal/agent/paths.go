package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// maxPathLen is PATH_MAX: no request path may be longer.
const maxPathLen = 4096

// errBadPath is an empty, over-long or NUL-carrying path.
var errBadPath = errors.New("invalid path")

// resolvePath turns a request path into an absolute, clean one: "~" and "~/"
// expand to home, and relative paths are taken from home (PROTOCOL.md §3.2).
// Symlinks are not resolved.
func resolvePath(p, home string) (string, error) {
	if p == "" {
		return "", fmt.Errorf("%w: path is empty", errBadPath)
	}
	if len(p) > maxPathLen {
		return "", fmt.Errorf("%w: path longer than %d bytes", errBadPath, maxPathLen)
	}
	if strings.IndexByte(p, 0) >= 0 {
		return "", fmt.Errorf("%w: path contains a NUL byte", errBadPath)
	}
	switch {
	case p == "~":
		p = home
	case strings.HasPrefix(p, "~/"):
		p = filepath.Join(home, p[2:])
	case !filepath.IsAbs(p):
		p = filepath.Join(home, p)
	}
	if !filepath.IsAbs(p) {
		// home itself was relative (a broken passwd entry).
		p = "/" + p
	}
	return filepath.Clean(p), nil
}

// mkdirAllOwned creates dir and any missing parents, giving each directory it
// creates to uid:gid. It fails if an existing component is not a directory.
func mkdirAllOwned(dir string, uid, gid uint32) error {
	fi, err := os.Stat(dir)
	if err == nil {
		if !fi.IsDir() {
			return &os.PathError{Op: "mkdir", Path: dir, Err: syscall.ENOTDIR}
		}
		return nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if parent := filepath.Dir(dir); parent != dir {
		if err := mkdirAllOwned(parent, uid, gid); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		if errors.Is(err, os.ErrExist) {
			if fi, serr := os.Stat(dir); serr == nil && fi.IsDir() {
				return nil // raced with another creator
			}
		}
		return err
	}
	return chownIfRoot(dir, uid, gid)
}

// chownIfRoot gives path to uid:gid when the agent runs as root; as any other
// user it can only own files itself, so there is nothing to do.
func chownIfRoot(path string, uid, gid uint32) error {
	if os.Geteuid() != 0 {
		return nil
	}
	return os.Lchown(path, int(uid), int(gid))
}
