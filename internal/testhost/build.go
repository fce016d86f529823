package testhost

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// ModulePath is the Go module this package belongs to; GoBuild runs in its
// source tree.
const ModulePath = "github.com/huskvm/husk"

// SourceRoot returns the root of the husk source tree: the first directory
// at or above the working directory whose go.mod declares ModulePath, else
// the tree this package was compiled from.
func SourceRoot() (string, error) {
	if wd, err := os.Getwd(); err == nil {
		if d, ok := findModuleRoot(wd); ok {
			return d, nil
		}
	}
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		if d, ok := findModuleRoot(filepath.Dir(file)); ok {
			return d, nil
		}
	}
	return "", fmt.Errorf("cannot find the source tree of %s: run from inside it", ModulePath)
}

func findModuleRoot(dir string) (string, bool) {
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil {
			for _, l := range strings.Split(string(b), "\n") {
				if f := strings.Fields(l); len(f) == 2 && f[0] == "module" && strings.Trim(f[1], `"`) == ModulePath {
					return dir, true
				}
			}
		}
		up := filepath.Dir(dir)
		if up == dir {
			return "", false
		}
		dir = up
	}
}

// goTool returns the go command: the one of the running toolchain if
// present, else "go" from PATH.
func goTool() string {
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); runtime.GOROOT() != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "go"
}

// GoBuild builds pkg (an import path, or a path relative to the source
// root such as "./test/hostinit") into the static linux/amd64 executable
// out: CGO_ENABLED=0, -trimpath, -ldflags='-s -w'. With test set it builds
// the package's test binary (go test -c), as RunGoTest runs it. Packages
// under testdata directories build too when named by path. ldflags are
// added to the linker flags.
func GoBuild(ctx context.Context, out, pkg string, test bool, ldflags ...string) error {
	root, err := SourceRoot()
	if err != nil {
		return err
	}
	out, err = filepath.Abs(out)
	if err != nil {
		return err
	}
	args := []string{"build"}
	if test {
		args = []string{"test", "-c"}
	}
	args = append(args, "-trimpath", "-ldflags="+strings.Join(append([]string{"-s", "-w"}, ldflags...), " "), "-o", out, pkg)
	cmd := exec.CommandContext(ctx, goTool(), args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			err = errors.Join(err, ctxErr)
		}
		return fmt.Errorf("go %s %s: %w\n%s", args[0], pkg, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return nil
}
