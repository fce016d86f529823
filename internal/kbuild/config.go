package kbuild

import (
	"bufio"
	"bytes"
	"fmt"
	"regexp"
	"strings"
)

// Option is one assignment of a Kconfig fragment or .config: Name is the full
// symbol ("CONFIG_PVH"), Value its value as written ("y", "32", "\"-husk\"");
// a "# CONFIG_X is not set" line has Value "n".
type Option struct {
	Name  string
	Value string
	Line  int // 1-based line in the file it came from
}

// String renders o as a .config line.
func (o Option) String() string {
	if o.Value == "n" {
		return "# " + o.Name + " is not set"
	}
	return o.Name + "=" + o.Value
}

var (
	setRe   = regexp.MustCompile(`^(CONFIG_[A-Za-z0-9_]+)=(.*)$`)
	unsetRe = regexp.MustCompile(`^# (CONFIG_[A-Za-z0-9_]+) is not set$`)
	// nearMiss catches lines meant as options that the two forms above would
	// silently skip, e.g. "CONFIG_X = y", "CONFIG_X", "#CONFIG_X is not set".
	nearMiss = regexp.MustCompile(`^CONFIG_|^#\s*CONFIG_[A-Za-z0-9_]+\s+is\s+not\s+set`)
	numberRe = regexp.MustCompile(`^-?[0-9]+$|^0x[0-9a-fA-F]+$`)
)

// ParseFragment parses a config fragment: "CONFIG_X=value" and
// "# CONFIG_X is not set" lines are options, blank lines and other "#" lines
// are comments. Anything else, a malformed value, or a symbol given twice is
// an error (a second, conflicting assignment would make the intent ambiguous).
func ParseFragment(data []byte) ([]Option, error) {
	var opts []Option
	seen := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		o, ok := parseLine(line)
		switch {
		case ok:
		case line == "":
			continue
		case nearMiss.MatchString(line):
			return nil, fmt.Errorf("line %d: malformed option %q (want CONFIG_X=value or # CONFIG_X is not set)", n, line)
		case strings.HasPrefix(line, "#"):
			continue
		default:
			return nil, fmt.Errorf("line %d: not an option or comment: %q", n, line)
		}
		if err := checkValue(o.Value); err != nil {
			return nil, fmt.Errorf("line %d: %s: %w", n, o.Name, err)
		}
		if prev, dup := seen[o.Name]; dup {
			return nil, fmt.Errorf("line %d: %s already set on line %d", n, o.Name, prev)
		}
		seen[o.Name] = n
		o.Line = n
		opts = append(opts, o)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(opts) == 0 {
		return nil, fmt.Errorf("fragment sets no options")
	}
	return opts, nil
}

func parseLine(line string) (Option, bool) {
	if m := setRe.FindStringSubmatch(line); m != nil {
		return Option{Name: m[1], Value: m[2]}, true
	}
	if m := unsetRe.FindStringSubmatch(line); m != nil {
		return Option{Name: m[1], Value: "n"}, true
	}
	return Option{}, false
}

// checkValue accepts the value forms Kconfig writes: tristate letters,
// decimal or hex integers, and double-quoted strings.
func checkValue(v string) error {
	switch {
	case v == "y" || v == "n" || v == "m":
		return nil
	case len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"':
		body := v[1 : len(v)-1]
		for i := 0; i < len(body); i++ {
			if body[i] == '\\' {
				i++ // escaped character
				continue
			}
			if body[i] == '"' {
				return fmt.Errorf("unescaped quote in string value %s", v)
			}
		}
		return nil
	case numberRe.MatchString(v):
		return nil
	}
	return fmt.Errorf("bad value %q (want y, n, m, a number or a quoted string)", v)
}

// ParseConfig reads a resolved .config into symbol → value. Symbols written
// as "is not set" map to "n"; symbols absent from the file are also off.
func ParseConfig(data []byte) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		if o, ok := parseLine(strings.TrimSpace(line)); ok {
			m[o.Name] = o.Value
		}
	}
	return m
}

// Merge returns base (a .config, e.g. from tinyconfig) with every symbol the
// fragment sets removed from its body and the fragment's assignments appended,
// ready for `make olddefconfig`.
func Merge(base []byte, frag []Option) []byte {
	set := make(map[string]bool, len(frag))
	for _, o := range frag {
		set[o.Name] = true
	}
	var b bytes.Buffer
	for _, line := range strings.SplitAfter(string(base), "\n") {
		if o, ok := parseLine(strings.TrimSpace(line)); ok && set[o.Name] {
			continue
		}
		b.WriteString(line)
	}
	if b.Len() > 0 && !bytes.HasSuffix(b.Bytes(), []byte("\n")) {
		b.WriteByte('\n')
	}
	b.WriteString("# --- husk fragment ---\n")
	for _, o := range frag {
		b.WriteString(o.String())
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// Mismatch is a fragment option whose value did not survive olddefconfig.
type Mismatch struct {
	Option
	Got string // resolved value; "n" when unset or absent
}

func (m Mismatch) String() string {
	return fmt.Sprintf("%s: want %s, got %s (fragment line %d)", m.Name, m.Value, m.Got, m.Line)
}

// Dropped compares the fragment against a resolved .config and returns every
// option that did not end up as asked, in fragment order. Kconfig drops an
// option silently when its dependencies are unmet, when a select forces it on,
// or when the symbol does not exist in this kernel version.
func Dropped(frag []Option, resolved map[string]string) []Mismatch {
	var out []Mismatch
	for _, o := range frag {
		got, ok := resolved[o.Name]
		if !ok {
			got = "n"
		}
		if got != o.Value {
			out = append(out, Mismatch{Option: o, Got: got})
		}
	}
	return out
}

// DroppedError reports the options olddefconfig did not honour.
type DroppedError struct {
	Mismatches []Mismatch
	Config     string // path of the resolved .config, if known
}

func (e *DroppedError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d fragment option(s) did not survive olddefconfig (unmet dependency, forced by a select, or unknown symbol):", len(e.Mismatches))
	for _, m := range e.Mismatches {
		b.WriteString("\n  ")
		b.WriteString(m.String())
	}
	if e.Config != "" {
		b.WriteString("\nresolved config: " + e.Config)
	}
	return b.String()
}
