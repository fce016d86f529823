package wire

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// HelloMsg is the JSON payload of a Hello frame.
type HelloMsg struct {
	// UptimeNS is the test host's CLOCK_BOOTTIME when hostinit was ready:
	// kernel boot plus hostinit setup.
	UptimeNS int64 `json:"uptime_ns"`
	// InitNS is the CLOCK_BOOTTIME at which hostinit started running.
	InitNS int64 `json:"init_ns"`
	// Kernel is the test host's kernel release (uname -r).
	Kernel string `json:"kernel"`
	// Modules lists the modules hostinit loaded, in load order.
	Modules []string `json:"modules"`
	// KVM reports whether /dev/kvm exists.
	KVM bool `json:"kvm"`
}

// StartMsg is the payload of a Start frame: the command hostinit runs.
// It is binary rather than JSON so that arguments and environment may hold
// any bytes but NUL (which execve cannot pass anyway):
//
//	uint32 BE  len(Args)   then each argument, NUL-terminated
//	uint32 BE  len(Env)    then each KEY=VALUE entry, NUL-terminated
//	Dir, NUL-terminated
type StartMsg struct {
	Args []string // Args[0] is a path, or a name looked up in PATH
	Env  []string // added to hostinit's defaults (PATH, HOME, TMPDIR)
	Dir  string   // working directory; default /tmp
}

// Validate checks a StartMsg.
func (s *StartMsg) Validate() error {
	if len(s.Args) == 0 || s.Args[0] == "" {
		return fmt.Errorf("wire: start: empty command")
	}
	for _, a := range s.Args {
		if strings.IndexByte(a, 0) >= 0 {
			return fmt.Errorf("wire: start: argument contains NUL")
		}
	}
	for _, e := range s.Env {
		if strings.IndexByte(e, 0) >= 0 || !strings.Contains(e, "=") {
			return fmt.Errorf("wire: start: bad environment entry %q", e)
		}
	}
	if strings.IndexByte(s.Dir, 0) >= 0 {
		return fmt.Errorf("wire: start: directory contains NUL")
	}
	return nil
}

// MarshalBinary encodes s as a Start payload.
func (s *StartMsg) MarshalBinary() ([]byte, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	var b []byte
	for _, list := range [][]string{s.Args, s.Env} {
		b = binary.BigEndian.AppendUint32(b, uint32(len(list)))
		for _, v := range list {
			b = append(append(b, v...), 0)
		}
	}
	b = append(append(b, s.Dir...), 0)
	if len(b) > MaxPayload {
		return nil, fmt.Errorf("%w: command of %d bytes (max %d)", ErrTooLong, len(b), MaxPayload)
	}
	return b, nil
}

// ErrBadStart is returned for a malformed Start payload.
var ErrBadStart = errors.New("wire: malformed start payload")

// UnmarshalBinary decodes a Start payload and validates it.
func (s *StartMsg) UnmarshalBinary(p []byte) error {
	var lists [2][]string
	for i := range lists {
		if len(p) < 4 {
			return ErrBadStart
		}
		n := binary.BigEndian.Uint32(p)
		p = p[4:]
		if uint64(n) > uint64(len(p)) { // each entry takes at least its NUL
			return ErrBadStart
		}
		lists[i] = make([]string, 0, n)
		for range n {
			j := bytes.IndexByte(p, 0)
			if j < 0 {
				return ErrBadStart
			}
			lists[i] = append(lists[i], string(p[:j]))
			p = p[j+1:]
		}
	}
	j := bytes.IndexByte(p, 0)
	if len(p) == 0 || j != len(p)-1 {
		return ErrBadStart
	}
	*s = StartMsg{Args: lists[0], Env: lists[1], Dir: string(p[:j])}
	if len(s.Env) == 0 {
		s.Env = nil
	}
	return s.Validate()
}

// Encode marshals v as JSON for a control frame (Hello).
func Encode(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	if len(b) > MaxPayload {
		return nil, fmt.Errorf("%w: %d bytes of JSON (max %d)", ErrTooLong, len(b), MaxPayload)
	}
	return b, nil
}

// MaxDiskName is the longest disk name: names travel as virtio-blk serial
// numbers, which hold 20 bytes (VIRTIO_BLK_ID_BYTES).
const MaxDiskName = 20

// MaxDisks caps the number of artifact disks.
const MaxDisks = 16

// ValidDiskName reports whether name can name an artifact disk: 1 to 20
// characters from [A-Za-z0-9._-], not "." or "..".
func ValidDiskName(name string) bool {
	if name == "" || len(name) > MaxDiskName || name == "." || name == ".." {
		return false
	}
	for _, c := range []byte(name) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// BootConfig is what hostinit needs before the channel is up. It travels on
// the kernel command line as space-separated husk.* parameters:
//
//	husk.disks=bin,data   artifact disk names, in attachment order; each disk's
//	                      virtio-blk serial is its name, which is how hostinit
//	                      finds it (not by /dev/vdX order)
//	husk.scratch=1024     size of the tmpfs at /tmp, MiB
//	husk.debug=1          hostinit logs each step on the console
type BootConfig struct {
	Disks      []string
	ScratchMiB int
	Debug      bool
}

// Validate checks the names and sizes.
func (c BootConfig) Validate() error {
	if len(c.Disks) > MaxDisks {
		return fmt.Errorf("wire: %d disks (max %d)", len(c.Disks), MaxDisks)
	}
	seen := map[string]bool{}
	for _, d := range c.Disks {
		if !ValidDiskName(d) {
			return fmt.Errorf("wire: bad disk name %q: want 1-%d characters of [A-Za-z0-9._-]", d, MaxDiskName)
		}
		if seen[d] {
			return fmt.Errorf("wire: duplicate disk name %q", d)
		}
		seen[d] = true
	}
	if c.ScratchMiB < 0 || c.ScratchMiB > 1<<20 {
		return fmt.Errorf("wire: scratch size %d MiB out of range", c.ScratchMiB)
	}
	return nil
}

// Cmdline encodes c as kernel command-line parameters.
func (c BootConfig) Cmdline() string {
	var p []string
	if len(c.Disks) > 0 {
		p = append(p, "husk.disks="+strings.Join(c.Disks, ","))
	}
	if c.ScratchMiB > 0 {
		p = append(p, "husk.scratch="+strconv.Itoa(c.ScratchMiB))
	}
	if c.Debug {
		p = append(p, "husk.debug=1")
	}
	return strings.Join(p, " ")
}

// ParseCmdline extracts the husk.* parameters from a kernel command line
// (the contents of /proc/cmdline) and validates them. Other parameters are
// ignored.
func ParseCmdline(cmdline string) (BootConfig, error) {
	var c BootConfig
	for _, f := range strings.Fields(cmdline) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "husk.disks":
			if v != "" {
				c.Disks = strings.Split(v, ",")
			}
		case "husk.scratch":
			n, err := strconv.Atoi(v)
			if err != nil {
				return BootConfig{}, fmt.Errorf("wire: husk.scratch=%q: %w", v, err)
			}
			c.ScratchMiB = n
		case "husk.debug":
			c.Debug = v == "1" || v == "true"
		}
	}
	if err := c.Validate(); err != nil {
		return BootConfig{}, err
	}
	return c, nil
}
