package boot

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/huskvm/husk/internal/guestmem"
)

// ELF64 constants (System V gABI).
const (
	elfHeaderSize = 64
	elfPhdrSize   = 56
	ptLoad        = 1
	ptNote        = 4
	// maxPhdrs caps the program headers read; vmlinux has about five.
	maxPhdrs = 64
	// maxNoteBytes caps one PT_NOTE segment read into memory.
	maxNoteBytes = 64 << 10
	// xenElfnotePhys32Entry is XEN_ELFNOTE_PHYS32_ENTRY in a "Xen" note.
	xenElfnotePhys32Entry = 18
)

// hvm_start_info, version 1.
const (
	startInfoMagic   = 0x336ec578
	startInfoVersion = 1
	startInfoSize    = 56
	modlistEntrySize = 32
	memmapEntrySize  = 24
)

// elfSegment is one PT_LOAD program header.
type elfSegment struct {
	offset, paddr, filesz, memsz uint64
}

// parseELF reads the ELF64 header and program headers and returns the PVH
// entry point and the loadable segments.
func parseELF(r interface {
	ReadAt([]byte, int64) (int, error)
}, size int64) (entry uint64, segs []elfSegment, err error) {
	var eh [elfHeaderSize]byte
	if _, err := r.ReadAt(eh[:], 0); err != nil {
		return 0, nil, fmt.Errorf("read ELF header: %w", truncated(err))
	}
	le := binary.LittleEndian
	switch {
	case eh[4] != 2:
		return 0, nil, errors.New("not a 64-bit ELF")
	case eh[5] != 1:
		return 0, nil, errors.New("not a little-endian ELF")
	case le.Uint16(eh[18:]) != 62:
		return 0, nil, fmt.Errorf("ELF machine %d is not x86-64", le.Uint16(eh[18:]))
	}
	phoff, phentsize, phnum := le.Uint64(eh[32:]), le.Uint16(eh[54:]), le.Uint16(eh[56:])
	if phentsize != elfPhdrSize {
		return 0, nil, fmt.Errorf("ELF program header size %d, want %d", phentsize, elfPhdrSize)
	}
	if phnum == 0 || phnum > maxPhdrs {
		return 0, nil, fmt.Errorf("ELF has %d program headers (want 1..%d)", phnum, maxPhdrs)
	}
	if phoff > uint64(size) || uint64(phnum)*elfPhdrSize > uint64(size)-phoff {
		return 0, nil, errors.New("ELF program headers run past the end of the file")
	}
	ph := make([]byte, int(phnum)*elfPhdrSize)
	if _, err := r.ReadAt(ph, int64(phoff)); err != nil {
		return 0, nil, fmt.Errorf("read ELF program headers: %w", truncated(err))
	}
	found := false
	for i := 0; i < int(phnum); i++ {
		h := ph[i*elfPhdrSize:]
		typ, off, paddr := le.Uint32(h[0:]), le.Uint64(h[8:]), le.Uint64(h[24:])
		filesz, memsz := le.Uint64(h[32:]), le.Uint64(h[40:])
		if off > uint64(size) || filesz > uint64(size)-off {
			return 0, nil, fmt.Errorf("ELF segment %d runs past the end of the file", i)
		}
		switch typ {
		case ptLoad:
			if filesz > memsz {
				return 0, nil, fmt.Errorf("ELF segment %d: file size %#x exceeds memory size %#x", i, filesz, memsz)
			}
			segs = append(segs, elfSegment{offset: off, paddr: paddr, filesz: filesz, memsz: memsz})
		case ptNote:
			if found || filesz > maxNoteBytes {
				continue
			}
			note := make([]byte, filesz)
			if _, err := r.ReadAt(note, int64(off)); err != nil {
				return 0, nil, fmt.Errorf("read ELF note segment %d: %w", i, truncated(err))
			}
			entry, found = pvhEntry(note)
		}
	}
	if !found {
		return 0, nil, errors.New("ELF kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); build it with CONFIG_PVH=y")
	}
	if len(segs) == 0 {
		return 0, nil, errors.New("ELF kernel has no loadable segments")
	}
	for i, a := range segs {
		if a.paddr+a.memsz < a.paddr {
			return 0, nil, fmt.Errorf("ELF segment at %#x wraps", a.paddr)
		}
		for _, b := range segs[:i] {
			if a.paddr < b.paddr+b.memsz && b.paddr < a.paddr+a.memsz {
				return 0, nil, fmt.Errorf("ELF segments at %#x and %#x overlap", b.paddr, a.paddr)
			}
		}
	}
	return entry, segs, nil
}

// pvhEntry scans a note segment for the "Xen" note of type
// XEN_ELFNOTE_PHYS32_ENTRY and returns its value. Each note is namesz,
// descsz, type (4 bytes each), then the name and the descriptor, each padded
// to 4 bytes.
func pvhEntry(b []byte) (uint64, bool) {
	le := binary.LittleEndian
	for len(b) >= 12 {
		namesz, descsz, typ := uint64(le.Uint32(b)), uint64(le.Uint32(b[4:])), le.Uint32(b[8:])
		b = b[12:]
		nameEnd := (namesz + 3) &^ 3
		if nameEnd > uint64(len(b)) {
			return 0, false
		}
		name := b[:namesz]
		b = b[nameEnd:]
		descEnd := (descsz + 3) &^ 3
		if descEnd > uint64(len(b)) {
			return 0, false
		}
		desc := b[:descsz]
		b = b[descEnd:]
		if typ == xenElfnotePhys32Entry && string(name) == "Xen\x00" {
			switch descsz {
			case 4:
				return uint64(le.Uint32(desc)), true
			case 8:
				return le.Uint64(desc), true
			}
		}
	}
	return 0, false
}

func loadPVH(mem *guestmem.Memory, p Params, size int64) (*Image, error) {
	entry, segs, err := parseELF(p.Kernel, size)
	if err != nil {
		return nil, err
	}
	var end uint64
	for _, s := range segs {
		if !ramContains(p.MemMap, s.paddr, s.memsz) {
			return nil, fmt.Errorf("ELF segment %#x+%#x is not inside guest RAM", s.paddr, s.memsz)
		}
		if err := mem.LoadFile(p.Kernel, int64(s.offset), s.paddr, s.filesz); err != nil {
			return nil, fmt.Errorf("load ELF segment at %#x: %w", s.paddr, err)
		}
		end = max(end, s.paddr+s.memsz)
	}
	inside := false
	for _, s := range segs {
		inside = inside || entry >= s.paddr && entry-s.paddr < s.filesz
	}
	if entry >= 1<<32 || !inside {
		return nil, fmt.Errorf("PVH entry %#x is not a 32-bit address inside the loaded kernel", entry)
	}
	if err := writeCmdline(mem, p, p.CmdlineMax); err != nil {
		return nil, err
	}
	initrdAddr, initrdSize, err := loadInitrd(mem, p, end, 1<<32)
	if err != nil {
		return nil, err
	}
	if err := writeStartInfo(mem, p, initrdAddr, initrdSize); err != nil {
		return nil, err
	}
	return &Image{Protocol: PVH, Entry: entry, BootStruct: p.StartInfoAddr, KernelEnd: end,
		InitrdAddr: initrdAddr, InitrdSize: initrdSize}, nil
}

// writeStartInfo writes hvm_start_info at p.StartInfoAddr, followed by the
// module list (the initrd, if any) and the memory map, all in one page.
//
//	+0    hvm_start_info (56 bytes)
//	+64   hvm_modlist_entry (32 bytes): paddr, size, cmdline_paddr, reserved
//	+128  hvm_memmap_table_entry[] (24 bytes each): addr, size, type, reserved
func writeStartInfo(mem *guestmem.Memory, p Params, initrdAddr, initrdSize uint64) error {
	const modOff, mapOff = 64, 128
	if mapOff+len(p.MemMap)*memmapEntrySize > guestmem.PageSize {
		return fmt.Errorf("memory map of %d entries does not fit the start_info page", len(p.MemMap))
	}
	b := make([]byte, mapOff+len(p.MemMap)*memmapEntrySize)
	le := binary.LittleEndian
	le.PutUint32(b[0:], startInfoMagic)
	le.PutUint32(b[4:], startInfoVersion)
	if initrdSize > 0 {
		le.PutUint32(b[12:], 1) // nr_modules
		le.PutUint64(b[16:], p.StartInfoAddr+modOff)
		le.PutUint64(b[modOff:], initrdAddr)
		le.PutUint64(b[modOff+8:], initrdSize)
	}
	le.PutUint64(b[24:], p.CmdlineAddr)
	le.PutUint64(b[40:], p.StartInfoAddr+mapOff)
	le.PutUint32(b[48:], uint32(len(p.MemMap)))
	for i, e := range p.MemMap {
		o := mapOff + i*memmapEntrySize
		le.PutUint64(b[o:], e.Addr)
		le.PutUint64(b[o+8:], e.Size)
		le.PutUint32(b[o+16:], e.Type)
	}
	if _, err := mem.WriteAt(b, int64(p.StartInfoAddr)); err != nil {
		return fmt.Errorf("write start_info: %w", err)
	}
	return nil
}
