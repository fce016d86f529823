package main

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// Modes selected by husk.mode= on the kernel command line.
const (
	ModeReboot = "reboot" // default: report, sync, reboot
	ModePanic  = "panic"  // report, then kill PID 1 so the kernel panics
	ModeUname  = "uname"  // print only `uname -r`, then reboot
	ModeHang   = "hang"   // report, then sleep forever (watchdog tests)
)

// Params are the husk.* parameters of the kernel command line.
type Params struct {
	Token string // husk.token=
	Mode  string // husk.mode=, ModeReboot if absent or empty
	// UnknownMode is the husk.mode value if it named no mode (Mode is then
	// ModeReboot).
	UnknownMode string
}

// ParseCmdline extracts Params from /proc/cmdline. Words are split the way
// the kernel splits them (kernel/params.c next_arg): on white space outside
// double quotes; a value's surrounding quotes are removed, so
// husk.token="a b" yields "a b". A later occurrence of a parameter wins.
func ParseCmdline(cmdline string) Params {
	p := Params{Mode: ModeReboot}
	for _, w := range splitCmdline(cmdline) {
		key, val, ok := splitParam(w)
		if !ok {
			continue
		}
		switch key {
		case "husk.token":
			p.Token = val
		case "husk.mode":
			switch val {
			case "", ModeReboot, ModePanic, ModeUname, ModeHang:
				p.Mode, p.UnknownMode = val, ""
				if val == "" {
					p.Mode = ModeReboot
				}
			default:
				p.Mode, p.UnknownMode = ModeReboot, val
			}
		}
	}
	return p
}

// isSpace is the kernel's isspace() over ASCII.
func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

// splitCmdline splits a command line into words: white space separates words
// except inside double quotes; quote characters are kept for splitParam.
func splitCmdline(s string) []string {
	var words []string
	for i := 0; i < len(s); {
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		if i == len(s) {
			break
		}
		start, inQuote := i, false
		for ; i < len(s); i++ {
			if isSpace(s[i]) && !inQuote {
				break
			}
			if s[i] == '"' {
				inQuote = !inQuote
			}
		}
		words = append(words, s[start:i])
	}
	return words
}

// splitParam splits one word into key and value at the first '=' and strips
// quotes as the kernel does: a leading quote on the word, a leading quote on
// the value, and then one trailing quote. ok is false if there is no '='.
func splitParam(w string) (key, val string, ok bool) {
	quoted := false
	if strings.HasPrefix(w, `"`) {
		w, quoted = w[1:], true
	}
	key, val, ok = strings.Cut(w, "=")
	if !ok {
		return "", "", false
	}
	if strings.HasPrefix(val, `"`) {
		val, quoted = val[1:], true
	}
	if quoted {
		val = strings.TrimSuffix(val, `"`)
	}
	return key, val, true
}

// MemTotalKB returns the MemTotal field of /proc/meminfo, in kB.
func MemTotalKB(meminfo []byte) (uint64, error) {
	sc := bufio.NewScanner(bytes.NewReader(meminfo))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "MemTotal:" {
			if len(f) >= 3 && f[2] != "kB" {
				return 0, fmt.Errorf("MemTotal in unexpected unit %q", f[2])
			}
			return strconv.ParseUint(f[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("no MemTotal line")
}

// CountCPUList counts the CPUs of a kernel CPU list such as "0-3,5"
// (/sys/devices/system/cpu/online).
func CountCPUList(list string) (int, error) {
	list = strings.TrimSpace(list)
	if list == "" {
		return 0, nil
	}
	n := 0
	for _, part := range strings.Split(list, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.ParseUint(lo, 10, 16)
		if err != nil {
			return 0, fmt.Errorf("cpu list %q: %w", list, err)
		}
		b := a
		if isRange {
			if b, err = strconv.ParseUint(hi, 10, 16); err != nil {
				return 0, fmt.Errorf("cpu list %q: %w", list, err)
			}
		}
		if b < a {
			return 0, fmt.Errorf("cpu list %q: descending range %q", list, part)
		}
		n += int(b-a) + 1
	}
	return n, nil
}

// Report is what init found out about the guest.
type Report struct {
	Uname       string // uname -r
	Token       string
	NProc       int
	MemTotalKB  uint64
	Clocksource string
	Errors      []string // problems gathering the above, one per line
}

// Lines renders the report in the format the e2e tests parse. Errors come
// before the final HUSK_INIT_DONE marker as HUSK_ERROR= lines.
func (r Report) Lines() string {
	var b strings.Builder
	fmt.Fprintf(&b, "HUSK_UNAME=%s\n", oneLine(r.Uname))
	fmt.Fprintf(&b, "HUSK_TOKEN=%s\n", oneLine(r.Token))
	fmt.Fprintf(&b, "HUSK_NPROC=%d\n", r.NProc)
	fmt.Fprintf(&b, "HUSK_MEMTOTAL_KB=%d\n", r.MemTotalKB)
	fmt.Fprintf(&b, "HUSK_CLOCKSOURCE=%s\n", oneLine(r.Clocksource))
	for _, e := range r.Errors {
		fmt.Fprintf(&b, "HUSK_ERROR=%s\n", oneLine(e))
	}
	b.WriteString("HUSK_INIT_DONE\n")
	return b.String()
}

// oneLine keeps a value on its line: a command-line value can hold any byte
// except NUL, including CR and LF inside quotes.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' {
			return ' '
		}
		return r
	}, s)
}
