package kbuild

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"io"
)

// xenElfnotePhys32Entry is XEN_ELFNOTE_PHYS32_ENTRY (include/xen/interface/elfnote.h):
// the note, owned by "Xen", whose descriptor is the 32-bit physical PVH entry point.
const xenElfnotePhys32Entry = 18

// PVHEntry returns the PVH entry point recorded in an ELF vmlinux, or an error
// if the image has no such note (the kernel was built without CONFIG_PVH, or
// the note was stripped).
func PVHEntry(r io.ReaderAt) (uint64, error) {
	f, err := elf.NewFile(r)
	if err != nil {
		return 0, fmt.Errorf("read ELF: %w", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		// Notes are small; cap what we read in case of a corrupt header.
		if p.Filesz > 1<<20 {
			return 0, fmt.Errorf("PT_NOTE segment of %d bytes is implausibly large", p.Filesz)
		}
		data := make([]byte, p.Filesz)
		if _, err := p.ReadAt(data, 0); err != nil {
			return 0, fmt.Errorf("read PT_NOTE: %w", err)
		}
		if entry, ok := findPVHNote(data, f.ByteOrder); ok {
			return entry, nil
		}
	}
	return 0, fmt.Errorf("no Xen PHYS32_ENTRY (PVH) ELF note")
}

// findPVHNote walks ELF note records: namesz, descsz, type (4 bytes each),
// then the name and the descriptor, each padded to 4 bytes.
func findPVHNote(b []byte, bo binary.ByteOrder) (uint64, bool) {
	pad := func(n uint32) uint64 { return (uint64(n) + 3) &^ 3 }
	for len(b) >= 12 {
		namesz, descsz, typ := bo.Uint32(b), bo.Uint32(b[4:]), bo.Uint32(b[8:])
		b = b[12:]
		nlen, dlen := pad(namesz), pad(descsz)
		if nlen > uint64(len(b)) || dlen > uint64(len(b))-nlen {
			return 0, false
		}
		name := bytes.TrimRight(b[:namesz], "\x00")
		desc := b[nlen : nlen+uint64(descsz)]
		if string(name) == "Xen" && typ == xenElfnotePhys32Entry {
			switch len(desc) {
			case 4:
				return uint64(bo.Uint32(desc)), true
			case 8:
				return bo.Uint64(desc), true
			}
		}
		b = b[nlen+dlen:]
	}
	return 0, false
}
