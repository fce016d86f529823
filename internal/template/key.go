package template

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
)

// RecipeVersion names the build steps (mmdebstrap invocation, customize
// script, mkfs options, extra-file injection). Bump it whenever they change
// so that images built the old way are not reused.
const RecipeVersion = "husk-template-recipe-1"

// Canonical is the recipe as hashed for the key and stored as recipe.json:
// normalized (defaults filled in, packages sorted and deduplicated) and
// with Source files represented by their SHA-256 rather than their path.
func (r *Recipe) Canonical() []byte {
	c := *r
	c.Files = append([]File(nil), r.Files...)
	for i := range c.Files {
		c.Files[i].Source = ""
	}
	data, err := json.MarshalIndent(&c, "", "  ")
	if err != nil { // only plain types: cannot happen
		panic(err)
	}
	return append(data, '\n')
}

// Key derives the cache key of the base image (without extra files): the
// hex SHA-256 of RecipeVersion and the canonical recipe, length-prefixed.
// Only a recipe from Load is fully keyed: Load hashes the Source files.
// The Debian archive's state is not part of it: a cached image keeps the
// package versions of the day it was built (use -force to refresh).
func (r *Recipe) Key() string {
	// The extra slots shape only the derived images (whose key covers the
	// resolved mode and owner of each extra file), not the base.
	c := *r
	c.Extra = nil
	return hashParts([]byte(RecipeVersion), []byte("base"), c.Canonical())
}

// Extra is one caller-supplied file, resolved against the recipe's slots.
type Extra struct {
	Path   string `json:"path"`   // in the image
	Source string `json:"-"`      // on the host
	Mode   string `json:"mode"`   // octal
	UID    int    `json:"uid"`    //
	GID    int    `json:"gid"`    //
	SHA256 string `json:"sha256"` // of the content
	Bytes  int64  `json:"bytes"`
}

// ExtraKey derives the key of the image holding extras on top of the base
// image baseKey. extras must be sorted by Path (ResolveExtra does that).
func ExtraKey(baseKey string, extras []Extra) string {
	parts := [][]byte{[]byte(RecipeVersion), []byte("extra"), []byte(baseKey)}
	for _, x := range extras {
		parts = append(parts, fmt.Appendf(nil, "%s %s %d:%d %s", x.Path, x.Mode, x.UID, x.GID, x.SHA256))
	}
	return hashParts(parts...)
}

// ShortKey is the directory name of an image: the first 16 hex digits.
func ShortKey(key string) string {
	if len(key) < 16 {
		return key
	}
	return key[:16]
}

func hashParts(parts ...[]byte) string {
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%d:", len(p))
		h.Write(p)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// ResolveExtra matches the caller's extra files (image path -> host path)
// with the recipe's slots, hashes their contents and returns them sorted by
// image path. A required slot without a file is an error; a file without a
// slot is allowed and gets owner 0:0 and mode 0755 if the host file has any
// execute bit, else 0644.
func (r *Recipe) ResolveExtra(files map[string]string) ([]Extra, error) {
	slots := map[string]ExtraSlot{}
	for _, s := range r.Extra {
		slots[s.Path] = s
		if _, ok := files[s.Path]; s.Required && !ok {
			return nil, fmt.Errorf("recipe %s needs the extra file %s (Options.Extra / -extra)", r.Name, s.Path)
		}
	}
	if len(files) > MaxExtra {
		return nil, fmt.Errorf("extra: more than %d files", MaxExtra)
	}
	var out []Extra
	for p, src := range files {
		if err := checkImagePath(p); err != nil {
			return nil, fmt.Errorf("extra: %w", err)
		}
		for _, f := range r.Files {
			if f.Path == p {
				return nil, fmt.Errorf("extra %s: the recipe's files already set it", p)
			}
		}
		sum, fi, err := hashFile(src, MaxSourceBytes)
		if err != nil {
			return nil, fmt.Errorf("extra %s: %w", p, err)
		}
		x := Extra{Path: p, Source: src, SHA256: sum, Bytes: fi.Size()}
		slot, ok := slots[p]
		switch {
		case ok && slot.Mode != "":
			x.Mode = slot.Mode
		case fi.Mode().Perm()&0o111 != 0:
			x.Mode = "0755"
		default:
			x.Mode = "0644"
		}
		owner := "0:0"
		if ok {
			owner = slot.Owner
		}
		if _, err := fmt.Sscanf(owner, "%d:%d", &x.UID, &x.GID); err != nil {
			return nil, fmt.Errorf("extra %s: owner %q: %w", p, owner, err)
		}
		out = append(out, x)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// hashFile returns the SHA-256 of the regular file at path, refusing
// anything else or anything above max bytes.
func hashFile(path string, max int64) (string, os.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", nil, err
	}
	if !fi.Mode().IsRegular() {
		return "", nil, fmt.Errorf("%s: not a regular file", path)
	}
	if fi.Size() > max {
		return "", nil, fmt.Errorf("%s: larger than %d bytes", path, max)
	}
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(f, max+1))
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", path, err)
	}
	if n > max {
		return "", nil, fmt.Errorf("%s: larger than %d bytes", path, max)
	}
	return hex.EncodeToString(h.Sum(nil)), fi, nil
}
