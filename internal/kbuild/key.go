package kbuild

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os/exec"
	"strings"
)

// RecipeVersion names the build steps (tinyconfig, merge, olddefconfig, the
// make targets and flags, what is copied out). Bump it whenever they change
// so that cached kernels built the old way are not reused.
const RecipeVersion = "husk-kernel-recipe-1"

// SourcePackage is the Debian package whose tarball is built.
const SourcePackage = "linux-source-6.1"

// DefaultTarball is where SourcePackage installs the kernel source.
const DefaultTarball = "/usr/src/linux-source-6.1.tar.xz"

// Key derives the cache key of a kernel build: the hex SHA-256 of the recipe
// version, the source package version and the fragment bytes, each
// length-prefixed so that no two inputs encode alike.
func Key(fragment []byte, sourceVersion string) string {
	h := sha256.New()
	for _, part := range [][]byte{[]byte(RecipeVersion), []byte(sourceVersion), fragment} {
		fmt.Fprintf(h, "%d:", len(part))
		h.Write(part)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// ShortKey is the directory name of a build: the first 16 hex digits of key.
func ShortKey(key string) string {
	if len(key) < 16 {
		return key
	}
	return key[:16]
}

// SourceVersion asks dpkg for the installed version of SourcePackage
// (e.g. "6.1.192-3").
func SourceVersion(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "dpkg-query", "-W", "-f=${Version}", SourcePackage).Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok && len(ee.Stderr) > 0 {
			return "", fmt.Errorf("dpkg-query %s: %s", SourcePackage, strings.TrimSpace(string(ee.Stderr)))
		}
		return "", fmt.Errorf("dpkg-query %s: %w (is %s installed?)", SourcePackage, err, SourcePackage)
	}
	v := strings.TrimSpace(string(out))
	if v == "" {
		return "", fmt.Errorf("dpkg-query %s: empty version (is it installed?)", SourcePackage)
	}
	return v, nil
}
