// Package boot loads a Linux kernel, its command line and initrd into guest
// memory and writes the structure the kernel reads at entry. Two protocols:
//
//   - PVH: an ELF vmlinux with a XEN_ELFNOTE_PHYS32_ENTRY note, entered in
//     32-bit protected mode with RBX pointing at struct hvm_start_info
//     (xen/include/public/arch-x86/hvm/start_info.h, version 1).
//   - The 64-bit boot protocol: a bzImage whose protected-mode part is entered
//     at its 64-bit entry point with RSI pointing at struct boot_params, the
//     "zero page" (Documentation/arch/x86/boot.rst).
//
// Images are hostile input: every header field is range-checked before it is
// used, a malformed or truncated image returns an error, and kernel bytes go
// from the file straight into guest memory, never through the Go heap.
package boot

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/huskvm/husk/internal/guestmem"
)

// Protocol is the way a kernel is entered.
type Protocol int

const (
	// PVH enters an ELF vmlinux in 32-bit protected mode (RBX = start_info).
	PVH Protocol = iota + 1
	// Linux64 enters a bzImage at its 64-bit entry point (RSI = boot_params).
	Linux64
)

func (p Protocol) String() string {
	switch p {
	case PVH:
		return "pvh"
	case Linux64:
		return "bzimage"
	}
	return fmt.Sprintf("Protocol(%d)", int(p))
}

// E820 memory types.
const (
	E820RAM      = 1
	E820Reserved = 2
)

// MemEntry is one entry of the memory map handed to the kernel.
type MemEntry struct {
	Addr, Size uint64
	Type       uint32
}

// MaxMemEntries caps the memory map (the zero page has room for 128).
const MaxMemEntries = 128

// Params says what to load and where the loader may put its structures.
type Params struct {
	Kernel  *os.File
	Initrd  *os.File // optional
	Cmdline string
	// MemMap is the guest's memory map; RAM entries bound where the kernel and
	// initrd may go.
	MemMap []MemEntry
	// CmdlineAddr and CmdlineMax place the NUL-terminated command line.
	CmdlineAddr, CmdlineMax uint64
	// StartInfoAddr (PVH) and ZeroPageAddr (bzImage) place the boot structure;
	// each needs one page.
	StartInfoAddr, ZeroPageAddr uint64
	// HighMemStart is where a bzImage's protected-mode kernel goes (1 MiB).
	HighMemStart uint64
	// InitrdMax is the end of the RAM the initrd may occupy (below 4 GiB).
	InitrdMax uint64
}

// Image is a loaded kernel, ready to be entered.
type Image struct {
	Protocol Protocol
	// Entry is the guest physical address to start at.
	Entry uint64
	// BootStruct is the guest physical address of start_info or boot_params.
	BootStruct uint64
	// KernelEnd is the first byte after the loaded kernel.
	KernelEnd uint64
	// InitrdAddr and InitrdSize locate the initrd; zero when there is none.
	InitrdAddr, InitrdSize uint64
}

// ErrUnknownFormat is returned for a kernel that is neither ELF nor bzImage.
var ErrUnknownFormat = errors.New("kernel is neither an ELF vmlinux nor a bzImage")

// Load loads the kernel and initrd into mem and writes the boot structure.
// mem must be freshly zeroed, as guestmem.New returns it.
func Load(mem *guestmem.Memory, p Params) (*Image, error) {
	if p.Kernel == nil {
		return nil, errors.New("no kernel")
	}
	st, err := p.Kernel.Stat()
	if err != nil {
		return nil, err
	}
	if len(p.MemMap) == 0 || len(p.MemMap) > MaxMemEntries {
		return nil, fmt.Errorf("memory map of %d entries (want 1..%d)", len(p.MemMap), MaxMemEntries)
	}
	var magic [4]byte
	if _, err := p.Kernel.ReadAt(magic[:], 0); err != nil {
		return nil, fmt.Errorf("read kernel %s: %w", p.Kernel.Name(), truncated(err))
	}
	var img *Image
	if string(magic[:]) == "\x7fELF" {
		img, err = loadPVH(mem, p, st.Size())
	} else {
		img, err = loadBzImage(mem, p, st.Size())
	}
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", p.Kernel.Name(), err)
	}
	return img, nil
}

// ramContains reports whether [addr, addr+n) lies inside one RAM entry.
func ramContains(mm []MemEntry, addr, n uint64) bool {
	for _, e := range mm {
		if e.Type == E820RAM && addr >= e.Addr && addr-e.Addr <= e.Size && n <= e.Size-(addr-e.Addr) {
			return true
		}
	}
	return false
}

// writeCmdline writes the NUL-terminated command line at p.CmdlineAddr.
func writeCmdline(mem *guestmem.Memory, p Params, limit uint64) error {
	n := uint64(len(p.Cmdline)) + 1
	if n > limit || n > p.CmdlineMax {
		return fmt.Errorf("command line of %d bytes exceeds the limit of %d", n-1, min(limit, p.CmdlineMax)-1)
	}
	for i := 0; i < len(p.Cmdline); i++ {
		if p.Cmdline[i] == 0 {
			return errors.New("command line contains a NUL byte")
		}
	}
	if _, err := mem.WriteAt(append([]byte(p.Cmdline), 0), int64(p.CmdlineAddr)); err != nil {
		return fmt.Errorf("write command line: %w", err)
	}
	return nil
}

// loadInitrd places the initrd at the highest page-aligned address below
// limit that is above kernelEnd and inside RAM.
func loadInitrd(mem *guestmem.Memory, p Params, kernelEnd, limit uint64) (addr, size uint64, err error) {
	if p.Initrd == nil {
		return 0, 0, nil
	}
	st, err := p.Initrd.Stat()
	if err != nil {
		return 0, 0, err
	}
	size = uint64(st.Size())
	if size == 0 {
		return 0, 0, fmt.Errorf("initrd %s is empty", p.Initrd.Name())
	}
	limit = min(limit, p.InitrdMax)
	if size > limit {
		return 0, 0, fmt.Errorf("initrd %s of %d bytes does not fit below %#x", p.Initrd.Name(), size, limit)
	}
	addr = (limit - size) &^ (guestmem.PageSize - 1)
	if addr < kernelEnd || !ramContains(p.MemMap, addr, size) {
		return 0, 0, fmt.Errorf("initrd %s of %d bytes does not fit in RAM between the kernel's end %#x and %#x", p.Initrd.Name(), size, kernelEnd, limit)
	}
	if err := mem.LoadFile(p.Initrd, 0, addr, size); err != nil {
		return 0, 0, fmt.Errorf("load initrd: %w", err)
	}
	return addr, size, nil
}

func truncated(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
