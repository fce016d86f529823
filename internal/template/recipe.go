package template

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Recipe is a template recipe as written in guest/templates/<name>.json.
// Unknown fields are errors, so a typo never silently changes an image.
type Recipe struct {
	// Name names the template: the cache directory and the file system
	// label (first 16 bytes). Lower-case letters, digits, '.', '_', '-'.
	Name string `json:"name"`
	// Suite is the Debian suite (default "bookworm").
	Suite string `json:"suite,omitempty"`
	// Variant is mmdebstrap's --variant (default "minbase").
	Variant string `json:"variant,omitempty"`
	// Mirrors are mmdebstrap MIRROR arguments: a URL or a one-line
	// "deb ..." entry. Empty means mmdebstrap's default, which for a stable
	// release name is deb.debian.org plus its -updates and -security suites.
	Mirrors []string `json:"mirrors,omitempty"`
	// Packages are installed on top of the variant (with their hard
	// dependencies). Order does not matter.
	Packages []string `json:"packages,omitempty"`
	// Recommends installs Recommends of the packages too (mmdebstrap does not
	// by default).
	Recommends bool `json:"recommends,omitempty"`
	// PathExclude and PathInclude are dpkg --path-exclude/--path-include
	// globs (e.g. "/usr/share/doc/*"). They stay in force in the image, so
	// packages installed later in a sandbox are filtered alike.
	PathExclude []string `json:"path_exclude,omitempty"`
	PathInclude []string `json:"path_include,omitempty"`
	// Users are created with useradd, in order.
	Users []User `json:"users,omitempty"`
	// Files are added after the users exist, in order.
	Files []File `json:"files,omitempty"`
	// Hostname is written to /etc/hostname and /etc/hosts (default: Name).
	Hostname string `json:"hostname,omitempty"`
	// Size is the image size policy.
	Size Size `json:"size"`
	// Journal keeps the ext4 journal (default off; see docs/templates.md).
	Journal bool `json:"journal,omitempty"`
	// Customize are shell commands run as root inside the chroot
	// (`chroot ROOT /bin/sh -c CMD`) after users and files, in order.
	Customize []string `json:"customize,omitempty"`
	// Extra declares files the caller supplies at build time (Options.Extra),
	// such as the guest agent. Their content is not part of the recipe: the
	// image with them is derived from the cached base image and keyed by
	// their content hashes.
	Extra []ExtraSlot `json:"extra,omitempty"`
	// Expect are paths that must exist in the finished image.
	Expect []string `json:"expect,omitempty"`

	sources map[string]string // image path -> resolved Source file (Load)
}

// User is an account to create.
type User struct {
	Name   string   `json:"name"`
	UID    int      `json:"uid"`
	GID    int      `json:"gid,omitempty"`   // default: UID (a group named like the user is created)
	Home   string   `json:"home,omitempty"`  // default: /home/<name>
	Shell  string   `json:"shell,omitempty"` // default: /bin/bash
	Groups []string `json:"groups,omitempty"`
}

// File is one file, directory or symlink to put into the image.
type File struct {
	Path string `json:"path"`
	// Type is "file" (default), "dir" or "symlink".
	Type string `json:"type,omitempty"`
	// Source is a file relative to the recipe's directory; it must stay
	// inside that directory. Exactly one of Source and Content for a file.
	Source string `json:"source,omitempty"`
	// Content is the file's inline content.
	Content *string `json:"content,omitempty"`
	// Target is a symlink's target.
	Target string `json:"target,omitempty"`
	// Mode is octal ("0644"); default 0644 for files, 0755 for directories.
	Mode string `json:"mode,omitempty"`
	// Owner is "user:group", "user" or numeric "uid:gid"; default root.
	Owner string `json:"owner,omitempty"`
	// SHA256 is filled in for Source files by Load (the key hashes
	// contents, not source paths). A recipe must not set it.
	SHA256 string `json:"sha256,omitempty"`
}

// Size is the image size policy: either free space to leave on top of the
// content, or a fixed size.
type Size struct {
	FreeMiB    int64 `json:"free_mib,omitempty"`    // default 256 unless FixedMiB is set
	FixedMiB   int64 `json:"fixed_mib,omitempty"`   // exact image size; the content must fit
	FreeInodes int64 `json:"free_inodes,omitempty"` // default: one per 8 KiB of free space, at least 16384
}

// ExtraSlot declares a file that Options.Extra supplies.
type ExtraSlot struct {
	Path     string `json:"path"`
	Mode     string `json:"mode,omitempty"`  // default: 0755 if the host file is executable, else 0644
	Owner    string `json:"owner,omitempty"` // numeric "uid:gid"; default 0:0
	Required bool   `json:"required,omitempty"`
}

// Limits on recipes. Recipes come from the repository today, but they are
// parsed as hostile input: a bad one gets an error, never a huge build.
const (
	MaxRecipeBytes   = 1 << 20
	MaxPackages      = 1000
	MaxFiles         = 1000
	MaxUsers         = 64
	MaxCustomize     = 64
	MaxCommandBytes  = 16 << 10
	MaxInlineBytes   = 1 << 20
	MaxSourceBytes   = 256 << 20
	MaxImageMiB      = 64 << 10 // 64 GiB
	MaxFreeInodes    = 16 << 20
	MaxMirrors       = 16
	MaxPathGlobs     = 64
	MaxExpect        = 256
	MaxExtra         = 64
	DefaultFreeMiB   = 256
	DefaultSuite     = "bookworm"
	DefaultVariant   = "minbase"
	defaultUserShell = "/bin/bash"
)

var (
	nameRe     = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,31}$`)
	suiteRe    = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)
	packageRe  = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]{0,99}(:[a-z0-9-]{1,16})?$`)
	userRe     = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
	hostnameRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	// A path component: no spaces, quotes or shell/debugfs metacharacters.
	componentRe = regexp.MustCompile(`^[A-Za-z0-9._+@=,:~-]+$`)
	globRe      = regexp.MustCompile(`^/[A-Za-z0-9._+@=,:~*?/\[\]-]*$`)
	mirrorURLRe = regexp.MustCompile(`^https?://[A-Za-z0-9._~:/?#@!$&'()*+,;=%-]+$`)
)

var variants = map[string]bool{
	"extract": false, "custom": false, // no dpkg/apt to configure users: refused
	"essential": true, "apt": true, "required": true, "minbase": true, "buildd": true,
	"important": true, "debootstrap": true, "standard": true,
}

// Forbidden image prefixes: during the customize stage these are the host's
// /proc, /sys and /dev mounted into the chroot, so writing below them would
// write to the host.
var forbiddenPrefixes = []string{"/proc", "/sys", "/dev", "/run"}

// Load reads, validates and normalizes the recipe at path, and hashes the
// Source files (relative to the recipe's directory) into File.SHA256.
func Load(file string) (*Recipe, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("recipe: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxRecipeBytes+1))
	if err != nil {
		return nil, fmt.Errorf("recipe %s: %w", file, err)
	}
	if len(data) > MaxRecipeBytes {
		return nil, fmt.Errorf("recipe %s: larger than %d bytes", file, MaxRecipeBytes)
	}
	r, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("recipe %s: %w", file, err)
	}
	if err := r.hashSources(filepath.Dir(file)); err != nil {
		return nil, fmt.Errorf("recipe %s: %w", file, err)
	}
	return r, nil
}

// Parse decodes, validates and normalizes a recipe. Source files are not
// read (see Load).
func Parse(data []byte) (*Recipe, error) {
	if len(data) > MaxRecipeBytes {
		return nil, fmt.Errorf("larger than %d bytes", MaxRecipeBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var r Recipe
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("parse: trailing data after the recipe object")
	}
	if err := r.normalize(); err != nil {
		return nil, err
	}
	return &r, nil
}

// normalize validates r and fills in defaults, so that equal recipes
// compare (and hash) equal.
func (r *Recipe) normalize() error {
	if !nameRe.MatchString(r.Name) {
		return fmt.Errorf("name %q: want 1-32 of [a-z0-9._-], starting with a letter or digit", r.Name)
	}
	if r.Suite == "" {
		r.Suite = DefaultSuite
	}
	if !suiteRe.MatchString(r.Suite) {
		return fmt.Errorf("suite %q: not a Debian suite name", r.Suite)
	}
	if r.Variant == "" {
		r.Variant = DefaultVariant
	}
	if !variants[r.Variant] {
		return fmt.Errorf("variant %q: want one of essential, apt, required, minbase, buildd, important, debootstrap, standard", r.Variant)
	}
	if len(r.Mirrors) > MaxMirrors {
		return fmt.Errorf("mirrors: more than %d", MaxMirrors)
	}
	for _, m := range r.Mirrors {
		if err := checkMirror(m); err != nil {
			return err
		}
	}
	if len(r.Packages) > MaxPackages {
		return fmt.Errorf("packages: more than %d", MaxPackages)
	}
	for _, p := range r.Packages {
		if !packageRe.MatchString(p) {
			return fmt.Errorf("package %q: not a Debian package name", p)
		}
	}
	r.Packages = sortedUnique(r.Packages)
	for _, g := range [][]string{r.PathExclude, r.PathInclude} {
		if len(g) > MaxPathGlobs {
			return fmt.Errorf("path_exclude/path_include: more than %d globs", MaxPathGlobs)
		}
		for _, p := range g {
			if !globRe.MatchString(p) || len(p) > 256 || strings.Contains(p, "/../") || strings.HasSuffix(p, "/..") {
				return fmt.Errorf("dpkg path glob %q: want an absolute glob of [A-Za-z0-9._+@=,:~*?/[]-]", p)
			}
		}
	}
	if err := r.normalizeUsers(); err != nil {
		return err
	}
	if err := r.normalizeFiles(); err != nil {
		return err
	}
	if r.Hostname == "" {
		r.Hostname = strings.NewReplacer(".", "-", "_", "-").Replace(r.Name)
		r.Hostname = strings.Trim(r.Hostname, "-")
	}
	if !hostnameRe.MatchString(r.Hostname) {
		return fmt.Errorf("hostname %q: want an RFC 1123 label of [a-z0-9-]", r.Hostname)
	}
	if err := r.Size.normalize(); err != nil {
		return err
	}
	if len(r.Customize) > MaxCustomize {
		return fmt.Errorf("customize: more than %d commands", MaxCustomize)
	}
	for i, c := range r.Customize {
		if strings.TrimSpace(c) == "" {
			return fmt.Errorf("customize[%d]: empty command", i)
		}
		if len(c) > MaxCommandBytes {
			return fmt.Errorf("customize[%d]: longer than %d bytes", i, MaxCommandBytes)
		}
		if strings.ContainsRune(c, 0) {
			return fmt.Errorf("customize[%d]: contains a NUL byte", i)
		}
	}
	if err := r.normalizeExtra(); err != nil {
		return err
	}
	if len(r.Expect) > MaxExpect {
		return fmt.Errorf("expect: more than %d paths", MaxExpect)
	}
	for _, p := range r.Expect {
		if err := checkImagePath(p); err != nil {
			return fmt.Errorf("expect: %w", err)
		}
	}
	return nil
}

func checkMirror(m string) error {
	if len(m) > 512 || strings.ContainsAny(m, "\x00\r\n") {
		return fmt.Errorf("mirror %q: too long or not one line", m)
	}
	if strings.HasPrefix(m, "deb ") {
		f := strings.Fields(m)
		if len(f) < 3 {
			return fmt.Errorf("mirror %q: want \"deb [options] URI SUITE [COMPONENT...]\"", m)
		}
		return nil
	}
	if !mirrorURLRe.MatchString(m) {
		return fmt.Errorf("mirror %q: want an http(s) URL or a one-line \"deb ...\" entry", m)
	}
	return nil
}

func (r *Recipe) normalizeUsers() error {
	if len(r.Users) > MaxUsers {
		return fmt.Errorf("users: more than %d", MaxUsers)
	}
	names := map[string]bool{}
	uids := map[int]bool{}
	for i := range r.Users {
		u := &r.Users[i]
		if !userRe.MatchString(u.Name) || u.Name == "root" {
			return fmt.Errorf("user %q: want a login name of [a-z0-9_-], not root", u.Name)
		}
		if names[u.Name] {
			return fmt.Errorf("user %q: declared twice", u.Name)
		}
		names[u.Name] = true
		// 0 is root; 65534 is nobody; above 60000 are Debian's reserved ranges.
		if u.UID < 1 || u.UID > 59999 {
			return fmt.Errorf("user %s: uid %d: want 1..59999", u.Name, u.UID)
		}
		if uids[u.UID] {
			return fmt.Errorf("user %s: uid %d used twice", u.Name, u.UID)
		}
		uids[u.UID] = true
		if u.GID == 0 {
			u.GID = u.UID
		}
		if u.GID < 1 || u.GID > 59999 {
			return fmt.Errorf("user %s: gid %d: want 1..59999", u.Name, u.GID)
		}
		if u.Home == "" {
			u.Home = "/home/" + u.Name
		}
		if err := checkImagePath(u.Home); err != nil {
			return fmt.Errorf("user %s: home: %w", u.Name, err)
		}
		if u.Shell == "" {
			u.Shell = defaultUserShell
		}
		if err := checkPathSyntax(u.Shell); err != nil {
			return fmt.Errorf("user %s: shell: %w", u.Name, err)
		}
		if len(u.Groups) > 32 {
			return fmt.Errorf("user %s: more than 32 groups", u.Name)
		}
		for _, g := range u.Groups {
			if !userRe.MatchString(g) {
				return fmt.Errorf("user %s: group %q: not a group name", u.Name, g)
			}
		}
		u.Groups = sortedUnique(u.Groups)
	}
	return nil
}

func (r *Recipe) normalizeFiles() error {
	if len(r.Files) > MaxFiles {
		return fmt.Errorf("files: more than %d", MaxFiles)
	}
	seen := map[string]bool{}
	var inline int
	for i := range r.Files {
		f := &r.Files[i]
		if err := checkImagePath(f.Path); err != nil {
			return fmt.Errorf("files[%d]: %w", i, err)
		}
		if seen[f.Path] {
			return fmt.Errorf("files[%d]: %s listed twice", i, f.Path)
		}
		seen[f.Path] = true
		if f.SHA256 != "" {
			return fmt.Errorf("files[%d] %s: sha256 is computed, not given", i, f.Path)
		}
		if f.Type == "" {
			f.Type = "file"
		}
		var defMode uint64
		switch f.Type {
		case "file":
			if (f.Source == "") == (f.Content == nil) {
				return fmt.Errorf("files[%d] %s: want exactly one of source and content", i, f.Path)
			}
			if f.Target != "" {
				return fmt.Errorf("files[%d] %s: target is for symlinks", i, f.Path)
			}
			if f.Content != nil {
				inline += len(*f.Content)
				if len(*f.Content) > MaxInlineBytes || inline > 8*MaxInlineBytes {
					return fmt.Errorf("files[%d] %s: inline content too large (max %d bytes each, %d in all)", i, f.Path, MaxInlineBytes, 8*MaxInlineBytes)
				}
			}
			if f.Source != "" {
				if err := checkSource(f.Source); err != nil {
					return fmt.Errorf("files[%d] %s: %w", i, f.Path, err)
				}
			}
			defMode = 0o644
		case "dir":
			if f.Source != "" || f.Content != nil || f.Target != "" {
				return fmt.Errorf("files[%d] %s: a dir takes no source, content or target", i, f.Path)
			}
			defMode = 0o755
		case "symlink":
			if f.Source != "" || f.Content != nil || f.Mode != "" {
				return fmt.Errorf("files[%d] %s: a symlink takes only target (and owner)", i, f.Path)
			}
			if f.Target == "" || len(f.Target) > 1024 || strings.ContainsAny(f.Target, "\x00\n") {
				return fmt.Errorf("files[%d] %s: bad symlink target %q", i, f.Path, f.Target)
			}
		default:
			return fmt.Errorf("files[%d] %s: type %q: want file, dir or symlink", i, f.Path, f.Type)
		}
		if f.Type != "symlink" {
			m, err := parseMode(f.Mode, defMode)
			if err != nil {
				return fmt.Errorf("files[%d] %s: %w", i, f.Path, err)
			}
			f.Mode = formatMode(m)
		}
		if f.Owner == "" {
			f.Owner = "0:0"
		}
		if err := checkOwner(f.Owner, false); err != nil {
			return fmt.Errorf("files[%d] %s: %w", i, f.Path, err)
		}
	}
	return nil
}

func (r *Recipe) normalizeExtra() error {
	if len(r.Extra) > MaxExtra {
		return fmt.Errorf("extra: more than %d", MaxExtra)
	}
	seen := map[string]bool{}
	for i := range r.Extra {
		x := &r.Extra[i]
		if err := checkImagePath(x.Path); err != nil {
			return fmt.Errorf("extra[%d]: %w", i, err)
		}
		if seen[x.Path] {
			return fmt.Errorf("extra[%d]: %s declared twice", i, x.Path)
		}
		seen[x.Path] = true
		if x.Mode != "" {
			m, err := parseMode(x.Mode, 0)
			if err != nil {
				return fmt.Errorf("extra[%d] %s: %w", i, x.Path, err)
			}
			x.Mode = formatMode(m)
		}
		if x.Owner == "" {
			x.Owner = "0:0"
		}
		if err := checkOwner(x.Owner, true); err != nil {
			return fmt.Errorf("extra[%d] %s: %w", i, x.Path, err)
		}
	}
	return nil
}

func (s *Size) normalize() error {
	switch {
	case s.FixedMiB < 0 || s.FreeMiB < 0 || s.FreeInodes < 0:
		return errors.New("size: negative value")
	case s.FixedMiB > 0 && s.FreeMiB > 0:
		return errors.New("size: give free_mib or fixed_mib, not both")
	case s.FixedMiB > MaxImageMiB || s.FreeMiB > MaxImageMiB:
		return fmt.Errorf("size: larger than %d MiB", MaxImageMiB)
	case s.FreeInodes > MaxFreeInodes:
		return fmt.Errorf("size: free_inodes larger than %d", MaxFreeInodes)
	case s.FixedMiB > 0 && s.FixedMiB < 16:
		return errors.New("size: fixed_mib below 16")
	}
	if s.FixedMiB == 0 && s.FreeMiB == 0 {
		s.FreeMiB = DefaultFreeMiB
	}
	return nil
}

// checkPathSyntax accepts a clean absolute path of plain components.
func checkPathSyntax(p string) error {
	if len(p) == 0 || len(p) > 1024 {
		return fmt.Errorf("path %q: empty or too long", p)
	}
	if !strings.HasPrefix(p, "/") || p == "/" {
		return fmt.Errorf("path %q: want an absolute path below /", p)
	}
	if path.Clean(p) != p {
		return fmt.Errorf("path %q: not clean (no //, trailing / or . and .. components)", p)
	}
	for _, c := range strings.Split(p[1:], "/") {
		if c == "." || c == ".." || !componentRe.MatchString(c) || len(c) > 255 {
			return fmt.Errorf("path %q: component %q: want [A-Za-z0-9._+@=,:~-], not . or ..", p, c)
		}
	}
	return nil
}

// checkImagePath is checkPathSyntax plus: not below the chroot's mounts.
func checkImagePath(p string) error {
	if err := checkPathSyntax(p); err != nil {
		return err
	}
	for _, pre := range forbiddenPrefixes {
		if p == pre || strings.HasPrefix(p, pre+"/") {
			return fmt.Errorf("path %q: %s is mounted from the host while the image is built", p, pre)
		}
	}
	return nil
}

// checkSource accepts a relative path that stays inside the recipe's
// directory (symlinks are checked when the file is read).
func checkSource(s string) error {
	if len(s) > 1024 || strings.ContainsRune(s, 0) {
		return fmt.Errorf("source %q: too long", s)
	}
	if filepath.IsAbs(s) || !filepath.IsLocal(s) {
		return fmt.Errorf("source %q: want a path relative to the recipe's directory, without ..", s)
	}
	return nil
}

func parseMode(s string, def uint64) (uint64, error) {
	if s == "" {
		return def, nil
	}
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || m > 0o7777 || len(s) > 5 {
		return 0, fmt.Errorf("mode %q: want octal 0000..07777", s)
	}
	return m, nil
}

func formatMode(m uint64) string { return fmt.Sprintf("%04o", m) }

// checkOwner accepts "user", "user:group" or "uid:gid"; numericOnly
// demands the last form.
func checkOwner(s string, numericOnly bool) error {
	u, g, hasGroup := strings.Cut(s, ":")
	if numericOnly && !hasGroup {
		return fmt.Errorf("owner %q: want numeric uid:gid", s)
	}
	parts := []string{u}
	if hasGroup {
		parts = append(parts, g)
	}
	for _, p := range parts {
		if n, err := strconv.ParseUint(p, 10, 32); err == nil {
			if n > 65535 {
				return fmt.Errorf("owner %q: id above 65535", s)
			}
			continue
		}
		if numericOnly {
			return fmt.Errorf("owner %q: want numeric uid:gid", s)
		}
		if !userRe.MatchString(p) {
			return fmt.Errorf("owner %q: want user[:group] names or numeric uid:gid", s)
		}
	}
	return nil
}

// hashSources resolves every Source file below dir, refusing anything that
// leaves dir (through .. or a symlink) or is not a regular file, and
// records its SHA-256.
func (r *Recipe) hashSources(dir string) error {
	r.sources = map[string]string{}
	var base string
	for i := range r.Files {
		f := &r.Files[i]
		if f.Source == "" {
			continue
		}
		if base == "" {
			var err error
			if base, err = filepath.Abs(dir); err == nil {
				base, err = filepath.EvalSymlinks(base)
			}
			if err != nil {
				return fmt.Errorf("recipe directory: %w", err)
			}
		}
		real, err := filepath.EvalSymlinks(filepath.Join(base, f.Source))
		if err != nil {
			return fmt.Errorf("files[%d] %s: source: %w", i, f.Path, err)
		}
		if rel, err := filepath.Rel(base, real); err != nil || !filepath.IsLocal(rel) {
			return fmt.Errorf("files[%d] %s: source %q resolves to %s, outside %s", i, f.Path, f.Source, real, base)
		}
		sum, _, err := hashFile(real, MaxSourceBytes)
		if err != nil {
			return fmt.Errorf("files[%d] %s: source: %w", i, f.Path, err)
		}
		f.SHA256 = sum
		r.sources[f.Path] = real
	}
	return nil
}

func sortedUnique(in []string) []string {
	if len(in) == 0 {
		return nil
	}
	out := append([]string(nil), in...)
	sort.Strings(out)
	j := 0
	for i := range out {
		if i == 0 || out[i] != out[j-1] {
			out[j] = out[i]
			j++
		}
	}
	return out[:j]
}
