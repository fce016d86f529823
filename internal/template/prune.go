package template

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/huskvm/husk/internal/cache"
)

// Derived images (a template plus extra files, such as the guest agent) are
// made anew whenever an extra changes, which during development is every
// agent build; each costs the template's allocated size. The cache keeps the
// keepDerived most recently used ones per template and drops older ones,
// but never one used within minDerivedAge (a run may be about to open it)
// nor one whose lock is held. A VM that has the image open keeps it alive
// after removal.
const (
	keepDerived   = 4
	minDerivedAge = time.Hour
)

// touch records that the entry at dir was used.
func touch(dir string) {
	now := time.Now()
	os.Chtimes(dir, now, now)
}

// pruneDerived removes derived entries of the template cache directory dir
// beyond the keep most recently used, if unused for minAge. It returns what
// it removed.
func pruneDerived(dir string, keep int, minAge time.Duration) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	type entry struct {
		path string
		used time.Time
	}
	var derived []entry
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		info, err := ReadInfo(p)
		if err != nil || info.BaseKey == "" {
			continue // a base image, or not a published entry
		}
		fi, err := os.Stat(p)
		if err != nil {
			continue
		}
		derived = append(derived, entry{p, fi.ModTime()})
	}
	sort.Slice(derived, func(i, j int) bool { return derived[i].used.After(derived[j].used) })
	var removed []string
	var errs []error
	for i, d := range derived {
		if i < keep || time.Since(d.used) < minAge {
			continue
		}
		release, err := cache.TryLock(d.path + ".lock")
		if err != nil {
			continue // being built or checked right now
		}
		if err := os.RemoveAll(d.path); err != nil {
			errs = append(errs, err)
		} else {
			removed = append(removed, d.path)
		}
		release()
	}
	return removed, errors.Join(errs...)
}
