package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/huskvm/husk/internal/envd/filesystem"
)

// File metadata (PROTOCOL.md §3.5): X-Metadata-<key> headers on upload are
// kept as user.e2b.<key> extended attributes and come back in EntryInfo.
const (
	xattrPrefix     = "user.e2b."
	maxMetaKey      = 246  // XATTR_NAME_MAX minus the prefix
	maxMetaTotal    = 4096 // keys (with prefix) plus values, per file
	maxXattrListLen = 64 << 10
)

// entryInfo describes the file at path (not following a final symlink).
// name is what EntryInfo.name says; fi is path's Lstat.
func (s *Server) entryInfo(path string, fi fs.FileInfo) *filesystem.EntryInfo {
	e := &filesystem.EntryInfo{
		Name:         fi.Name(),
		Path:         path,
		Size:         fi.Size(),
		Mode:         uint32(fi.Mode().Perm()),
		Permissions:  fi.Mode().String(),
		ModifiedTime: timestamppb.New(fi.ModTime()),
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		e.Type = filesystem.FileType_FILE_TYPE_SYMLINK
		if t, err := os.Readlink(path); err == nil {
			e.SymlinkTarget = &t
		}
	case fi.IsDir():
		e.Type = filesystem.FileType_FILE_TYPE_DIRECTORY
	default:
		e.Type = filesystem.FileType_FILE_TYPE_FILE
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		e.Owner, e.Group = s.users.Names(st.Uid, st.Gid)
	}
	if m := readMetadata(path); len(m) > 0 {
		e.Metadata = m
	}
	return e
}

// statEntry is entryInfo for a path that may not exist.
func (s *Server) statEntry(path string) (*filesystem.EntryInfo, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	e := s.entryInfo(path, fi)
	if path == "/" {
		e.Name = "/"
	}
	return e, nil
}

// readMetadata returns path's user.e2b.* attributes; errors (no support on
// this filesystem, a symlink) mean none.
func readMetadata(path string) map[string]string {
	names, err := listXattrs(func(b []byte) (int, error) { return unix.Llistxattr(path, b) })
	if err != nil {
		return nil
	}
	var m map[string]string
	for _, n := range names {
		key, ok := strings.CutPrefix(n, xattrPrefix)
		if !ok {
			continue
		}
		buf := make([]byte, 4096)
		sz, err := unix.Lgetxattr(path, n, buf)
		if err != nil {
			continue
		}
		if m == nil {
			m = map[string]string{}
		}
		m[key] = string(buf[:sz])
	}
	return m
}

// listXattrs calls list with a growing buffer and splits the NUL-separated
// names.
func listXattrs(list func([]byte) (int, error)) ([]string, error) {
	size := 1024
	for {
		buf := make([]byte, size)
		n, err := list(buf)
		if errors.Is(err, unix.ERANGE) && size < maxXattrListLen {
			size *= 4
			continue
		}
		if err != nil {
			return nil, err
		}
		var out []string
		for _, b := range bytes.Split(buf[:n], []byte{0}) {
			if len(b) > 0 {
				out = append(out, string(b))
			}
		}
		return out, nil
	}
}

// errMetadata is a malformed X-Metadata-* header.
var errMetadata = errors.New("invalid metadata")

// parseMetadata collects X-Metadata-<key> headers: keys lowercased, first
// value wins, printable ASCII only, size-capped.
func parseMetadata(h map[string][]string) (map[string]string, error) {
	var m map[string]string
	total := 0
	for name, vals := range h {
		lower := strings.ToLower(name)
		key, ok := strings.CutPrefix(lower, "x-metadata-")
		if !ok || len(vals) == 0 {
			continue
		}
		if key == "" {
			return nil, fmt.Errorf("%w: empty key in header %s", errMetadata, name)
		}
		if len(key) > maxMetaKey {
			return nil, fmt.Errorf("%w: key %.32q… longer than %d bytes", errMetadata, key, maxMetaKey)
		}
		v := vals[0]
		if !printableASCII(key) || !printableASCII(v) {
			return nil, fmt.Errorf("%w: key and value of %s must be printable ASCII", errMetadata, name)
		}
		if m == nil {
			m = map[string]string{}
		}
		if _, dup := m[key]; dup {
			continue
		}
		m[key] = v
		total += len(xattrPrefix) + len(key) + len(v)
		if total > maxMetaTotal {
			return nil, fmt.Errorf("%w: more than %d bytes in all", errMetadata, maxMetaTotal)
		}
	}
	return m, nil
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// errNoXattr means the filesystem cannot store file metadata.
var errNoXattr = errors.New("file metadata is not supported on this filesystem")

// replaceMetadata makes f's user.e2b.* attributes exactly m.
func replaceMetadata(f *os.File, m map[string]string) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var oerr error
	cerr := rc.Control(func(fd uintptr) {
		names, err := listXattrs(func(b []byte) (int, error) { return unix.Flistxattr(int(fd), b) })
		if err != nil {
			if len(m) == 0 && (errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP)) {
				return
			}
			oerr = fmt.Errorf("list xattrs: %w", err)
			return
		}
		for _, n := range names {
			key, ok := strings.CutPrefix(n, xattrPrefix)
			if !ok {
				continue
			}
			if _, keep := m[key]; keep {
				continue
			}
			if err := unix.Fremovexattr(int(fd), n); err != nil && !errors.Is(err, unix.ENODATA) {
				oerr = fmt.Errorf("remove xattr %s: %w", n, err)
				return
			}
		}
		for k, v := range m {
			if err := unix.Fsetxattr(int(fd), xattrPrefix+k, []byte(v), 0); err != nil {
				if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP) {
					oerr = errNoXattr
				} else {
					oerr = fmt.Errorf("set xattr %s: %w", xattrPrefix+k, err)
				}
				return
			}
		}
	})
	if cerr != nil {
		return cerr
	}
	return oerr
}

// baseName is the EntryInfo name of path.
func baseName(path string) string {
	if path == "/" {
		return "/"
	}
	return filepath.Base(path)
}
