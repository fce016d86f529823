// Package cache locates husk's build cache on the host and publishes build
// outputs into it atomically.
//
// The cache root is $HUSK_CACHE, else $XDG_CACHE_HOME/husk, else
// $HOME/.cache/husk. Everything below the root is owned by the tool that
// creates it (kernel builds under "kernel", initrds under "initrd", and so on);
// entries are immutable once published, so readers never lock.
package cache

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Root returns the cache root without creating it.
func Root() (string, error) {
	if d := os.Getenv("HUSK_CACHE"); d != "" {
		return filepath.Abs(d)
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "husk"), nil
	}
	home := os.Getenv("HOME")
	if home == "" {
		h, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("cache root: neither HUSK_CACHE, XDG_CACHE_HOME nor HOME is set: %w", err)
		}
		home = h
	}
	return filepath.Join(home, ".cache", "husk"), nil
}

// Dir returns the directory sub (path elements joined) below the cache root,
// creating it and its parents.
func Dir(sub ...string) (string, error) {
	root, err := Root()
	if err != nil {
		return "", err
	}
	d := filepath.Join(append([]string{root}, sub...)...)
	if err := os.MkdirAll(d, 0o755); err != nil {
		return "", fmt.Errorf("create cache dir: %w", err)
	}
	return d, nil
}

// Exists reports whether path names an existing file or directory.
func Exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// TempName returns the name Publish and PublishFile build into before the
// rename: "<final>.tmp-<pid>".
func TempName(final string) string {
	return fmt.Sprintf("%s.tmp-%d", final, os.Getpid())
}

// Publish creates the directory final atomically: fill populates a fresh
// temporary directory next to it (TempName), which is then renamed to final.
// On error the temporary directory is removed and final is untouched.
//
// If final already exists when the rename happens (another process published
// the same entry first) the new copy is discarded and Publish returns nil:
// entries are keyed by content, so both copies are equivalent.
func Publish(final string, fill func(tmp string) error) error {
	tmp := TempName(final)
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("publish %s: remove stale %s: %w", final, tmp, err)
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return fmt.Errorf("publish %s: %w", final, err)
	}
	if err := fill(tmp); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	if err := os.Rename(tmp, final); err != nil {
		os.RemoveAll(tmp)
		if Exists(final) {
			return nil
		}
		return fmt.Errorf("publish %s: %w", final, err)
	}
	return nil
}

// PublishFile writes the regular file final atomically: fill writes a
// temporary file next to it (TempName), which is synced, closed and renamed
// over final. On error the temporary file is removed.
func PublishFile(final string, perm os.FileMode, fill func(f *os.File) error) (err error) {
	tmp := TempName(final)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return fmt.Errorf("publish %s: %w", final, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err = fill(f); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("publish %s: sync: %w", final, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("publish %s: close: %w", final, err)
	}
	if err = os.Rename(tmp, final); err != nil {
		return fmt.Errorf("publish %s: %w", final, err)
	}
	return nil
}

// RemoveStale deletes temporary copies of final left by publishers that died
// ("<final>.tmp-*"). Call it only while holding the entry's lock, when no
// other publisher of final can be running.
func RemoveStale(final string) error {
	matches, err := filepath.Glob(globEscape(final) + ".tmp-*")
	if err != nil {
		return err
	}
	for _, m := range matches {
		if err := os.RemoveAll(m); err != nil {
			return fmt.Errorf("remove stale %s: %w", m, err)
		}
	}
	return nil
}

// globEscape quotes the metacharacters of filepath.Match in s.
func globEscape(s string) string {
	var b []byte
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '*', '?', '[', '\\':
			b = append(b, '\\')
		}
		b = append(b, s[i])
	}
	return string(b)
}

// ErrLocked is returned by TryLock when another process holds the lock.
var ErrLocked = errors.New("cache entry is locked by another process")
