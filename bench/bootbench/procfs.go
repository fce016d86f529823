//go:build linux

package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// vma is one mapping of /proc/PID/smaps with the fields the bench uses.
type vma struct {
	Start, End uint64
	Perms      string
	Path       string // "" for anonymous memory; "[heap]", "[stack]", a file...
	RSS        uint64 // bytes
	Anon       uint64 // bytes (Anonymous:)
	AnonHuge   uint64 // bytes (AnonHugePages:)
}

func (v vma) Size() uint64 { return v.End - v.Start }

var smapsHeader = regexp.MustCompile(`^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+ *(.*)$`)

// parseSmaps reads /proc/PID/smaps.
func parseSmaps(r io.Reader) ([]vma, error) {
	var out []vma
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if m := smapsHeader.FindStringSubmatch(line); m != nil {
			start, err1 := strconv.ParseUint(m[1], 16, 64)
			end, err2 := strconv.ParseUint(m[2], 16, 64)
			if err1 != nil || err2 != nil || end < start {
				return nil, fmt.Errorf("smaps: bad range in %q", line)
			}
			out = append(out, vma{Start: start, End: end, Perms: m[3], Path: m[4]})
			continue
		}
		key, val, ok := strings.Cut(line, ":")
		if !ok || len(out) == 0 {
			continue
		}
		var dst *uint64
		switch key {
		case "Rss":
			dst = &out[len(out)-1].RSS
		case "Anonymous":
			dst = &out[len(out)-1].Anon
		case "AnonHugePages":
			dst = &out[len(out)-1].AnonHuge
		default:
			continue
		}
		kb, err := parseKB(val)
		if err != nil {
			return nil, fmt.Errorf("smaps: %s: %w", key, err)
		}
		*dst = kb << 10
	}
	return out, sc.Err()
}

// parseKB parses " 1234 kB".
func parseKB(s string) (uint64, error) {
	f := strings.Fields(s)
	if len(f) != 2 || f[1] != "kB" {
		return 0, fmt.Errorf("unexpected value %q", s)
	}
	return strconv.ParseUint(f[0], 10, 64)
}

// statusKB returns the named "kB" fields of /proc/PID/status, in bytes.
func statusKB(status []byte, names ...string) (map[string]uint64, error) {
	out := map[string]uint64{}
	for _, line := range strings.Split(string(status), "\n") {
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		for _, n := range names {
			if key == n {
				kb, err := parseKB(val)
				if err != nil {
					return nil, fmt.Errorf("status %s: %w", key, err)
				}
				out[n] = kb << 10
			}
		}
	}
	for _, n := range names {
		if _, ok := out[n]; !ok {
			return nil, fmt.Errorf("status: no %s", n)
		}
	}
	return out, nil
}

// addrRange is a span of host virtual addresses, [Start, End).
type addrRange struct{ Start, End uint64 }

// guestRAMLine matches husk-vmm's debug record of a guest RAM slot.
var guestRAMLine = regexp.MustCompile(`msg=guest_ram .*\bsize=(\d+) host_addr=(\d+)`)

// huskGuestRAM finds the guest RAM mappings husk-vmm logged on stderr.
func huskGuestRAM(stderr []byte) []addrRange {
	var out []addrRange
	for _, line := range bytes.Split(stderr, []byte("\n")) {
		m := guestRAMLine.FindSubmatch(line)
		if m == nil {
			continue
		}
		size, err1 := strconv.ParseUint(string(m[1]), 10, 64)
		addr, err2 := strconv.ParseUint(string(m[2]), 10, 64)
		if err1 == nil && err2 == nil && size > 0 {
			out = append(out, addrRange{addr, addr + size})
		}
	}
	return out
}

// logMarkRE matches a husk-vmm debug record's time and message.
var logMarkRE = regexp.MustCompile(`(?m)^time=(\S+) level=\S+ msg=(\S+)`)

// logTime returns the time of husk-vmm's first log record with message msg
// (slog's text format, millisecond resolution).
func logTime(stderr []byte, msg string) (time.Time, bool) {
	for _, m := range logMarkRE.FindAllSubmatch(stderr, -1) {
		if string(m[2]) != msg {
			continue
		}
		t, err := time.Parse(time.RFC3339Nano, string(m[1]))
		return t, err == nil
	}
	return time.Time{}, false
}

// qemuGuestRAM finds QEMU's guest RAM: the anonymous mapping of at least
// size bytes. QEMU maps each RAM block on its own (qemu_ram_mmap), so with
// one block below 4 GiB there is exactly one; a second candidate is an
// error rather than a guess.
func qemuGuestRAM(vmas []vma, size uint64) ([]addrRange, error) {
	var cands []vma
	for _, v := range vmas {
		if v.Path == "" && v.Size() >= size && strings.HasPrefix(v.Perms, "rw") {
			cands = append(cands, v)
		}
	}
	if len(cands) != 1 {
		return nil, fmt.Errorf("found %d anonymous rw mappings of >= %d MiB, want 1", len(cands), size>>20)
	}
	return []addrRange{{cands[0].Start, cands[0].End}}, nil
}

// guestRSS sums the resident bytes of the mappings inside rs. A mapping
// that lies only partly inside is counted page by page through
// /proc/PID/pagemap (pagemap is nil in tests that have none).
func guestRSS(vmas []vma, rs []addrRange, pagemap io.ReaderAt) (total uint64, inside []vma, err error) {
	for _, v := range vmas {
		for _, r := range rs {
			lo, hi := max(v.Start, r.Start), min(v.End, r.End)
			if lo >= hi {
				continue
			}
			inside = append(inside, v)
			if lo == v.Start && hi == v.End {
				total += v.RSS
				continue
			}
			if pagemap == nil {
				return 0, nil, fmt.Errorf("mapping %#x-%#x is only partly guest RAM", v.Start, v.End)
			}
			n, err := presentPages(pagemap, lo, hi)
			if err != nil {
				return 0, nil, err
			}
			total += n * pageSize
		}
	}
	return total, inside, nil
}

const pageSize = 4096

// presentPages counts the present pages of [lo, hi) in a pagemap file:
// one little-endian uint64 per page, bit 63 = present.
func presentPages(pagemap io.ReaderAt, lo, hi uint64) (uint64, error) {
	var n uint64
	buf := make([]byte, 8*512)
	for a := lo &^ (pageSize - 1); a < hi; {
		pages := min((hi-a+pageSize-1)/pageSize, uint64(len(buf)/8))
		b := buf[:pages*8]
		if _, err := pagemap.ReadAt(b, int64(a/pageSize*8)); err != nil {
			return 0, fmt.Errorf("pagemap: %w", err)
		}
		for i := 0; i < len(b); i += 8 {
			if binary.LittleEndian.Uint64(b[i:])&(1<<63) != 0 {
				n++
			}
		}
		a += pages * pageSize
	}
	return n, nil
}

// memSample is what the bench reads of a VMM process at the init marker.
type memSample struct {
	HWM, RSS               uint64 // VmHWM, VmRSS
	Smaps                  uint64 // Σ Rss of every mapping in smaps
	RSSAnon, RSSFile       uint64
	Guest                  uint64 // resident bytes of guest RAM mappings
	GuestAnon, GuestHuge   uint64 // of which anonymous, and in huge pages
	VMAs                   []vma  // every mapping, for -detail
	GuestRanges            []addrRange
	Threads                int
	MinorFaults, MajFaults uint64
}

// Peak is the VMM's peak RSS at the marker: VmHWM, or the sum of smaps Rss
// when that is higher. The kernel (6.1, SPLIT_RSS_COUNTING) batches each
// thread's RSS counter updates and folds them into the process's counters
// only every 64 page faults of that thread, so VmRSS and VmHWM can lag the
// page tables by a few MiB (fault-around maps up to 16 pages per fault);
// smaps walks the page tables and is exact for the present.
func (m memSample) Peak() uint64 { return max(m.HWM, m.Smaps) }

// Overhead is the VMM's own memory: peak RSS less resident guest RAM.
func (m memSample) Overhead() int64 { return int64(m.Peak()) - int64(m.Guest) }

// sampleMem reads /proc/PID/{status,smaps,stat}; findRAM picks the guest
// RAM out of the mappings.
func sampleMem(pid int, findRAM func([]vma) ([]addrRange, error)) (memSample, error) {
	var s memSample
	proc := fmt.Sprintf("/proc/%d/", pid)
	status, err := os.ReadFile(proc + "status")
	if err != nil {
		return s, err
	}
	kb, err := statusKB(status, "VmHWM", "VmRSS", "RssAnon", "RssFile")
	if err != nil {
		return s, err
	}
	s.HWM, s.RSS, s.RSSAnon, s.RSSFile = kb["VmHWM"], kb["VmRSS"], kb["RssAnon"], kb["RssFile"]
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			s.Threads, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	if stat, err := os.ReadFile(proc + "stat"); err == nil {
		// Fields after the command name "(...)": state is field 3; minflt 10, majflt 12.
		if i := bytes.LastIndexByte(stat, ')'); i > 0 {
			f := strings.Fields(string(stat[i+1:]))
			if len(f) > 9 {
				s.MinorFaults, _ = strconv.ParseUint(f[7], 10, 64)
				s.MajFaults, _ = strconv.ParseUint(f[9], 10, 64)
			}
		}
	}
	sm, err := os.Open(proc + "smaps")
	if err != nil {
		return s, err
	}
	s.VMAs, err = parseSmaps(sm)
	sm.Close()
	if err != nil {
		return s, err
	}
	for _, v := range s.VMAs {
		s.Smaps += v.RSS
	}
	if s.GuestRanges, err = findRAM(s.VMAs); err != nil {
		return s, err
	}
	if len(s.GuestRanges) == 0 {
		return s, fmt.Errorf("guest RAM not found")
	}
	pm, err := os.Open(proc + "pagemap")
	if err != nil {
		return s, err
	}
	defer pm.Close()
	var inside []vma
	if s.Guest, inside, err = guestRSS(s.VMAs, s.GuestRanges, pm); err != nil {
		return s, err
	}
	for _, v := range inside {
		s.GuestAnon += v.Anon
		s.GuestHuge += v.AnonHuge
	}
	return s, nil
}
