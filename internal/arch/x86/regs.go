package x86

import (
	"encoding/binary"

	"github.com/huskvm/husk/internal/kvm"
)

// Boot GDT selectors. The 64-bit boot protocol requires flat code at 0x10 and
// flat data at 0x18 (Documentation/arch/x86/boot.rst); PVH enters through
// 32-bit flat code at 0x08.
const (
	selCode32 = 0x08
	selCode64 = 0x10
	selData   = 0x18
	selTSS    = 0x20
	gdtLen    = 5
)

// Control-register and EFER bits.
const (
	cr0PE   = 1 << 0
	cr0ET   = 1 << 4
	cr0PG   = 1 << 31
	cr4PAE  = 1 << 5
	eferLME = 1 << 8
	eferLMA = 1 << 10
)

// gdt is the boot GDT: null, 32-bit code, 64-bit code, data, TSS.
var gdt = [gdtLen]uint64{
	0,
	0x00cf9b000000ffff, // 32-bit code: base 0, limit 4 GiB, present, exec/read, accessed
	0x00af9b000000ffff, // 64-bit code: as above with L set and D clear
	0x00cf93000000ffff, // data: base 0, limit 4 GiB, read/write, accessed
	0x00008b0000000067, // 32-bit TSS (busy), base 0, limit 0x67
}

// GDT returns the boot GDT's bytes, to be written at GDTAddr.
func GDT() []byte {
	b := make([]byte, 8*gdtLen)
	for i, d := range gdt {
		binary.LittleEndian.PutUint64(b[i*8:], d)
	}
	return b
}

// segment decodes GDT descriptor sel into KVM's segment form.
func segment(sel uint16) kvm.Segment {
	d := gdt[sel>>3]
	limit := uint32(d&0xffff | (d>>48&0xf)<<16)
	g := uint8(d >> 55 & 1)
	if g == 1 {
		limit = limit<<12 | 0xfff
	}
	return kvm.Segment{
		Base:     d>>16&0xffffff | (d>>56&0xff)<<24,
		Limit:    limit,
		Selector: sel,
		Type:     uint8(d >> 40 & 0xf),
		S:        uint8(d >> 44 & 1),
		DPL:      uint8(d >> 45 & 3),
		Present:  uint8(d >> 47 & 1),
		AVL:      uint8(d >> 52 & 1),
		L:        uint8(d >> 53 & 1),
		DB:       uint8(d >> 54 & 1),
		G:        g,
	}
}

// BootSregs sets the segment and control registers a kernel is entered
// with: 32-bit flat protected mode without paging for PVH, long mode on the
// identity page tables for the 64-bit boot protocol.
func BootSregs(s *kvm.Sregs, longMode bool) {
	code := segment(selCode32)
	if longMode {
		code = segment(selCode64)
	}
	data := segment(selData)
	s.CS = code
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.TR = segment(selTSS)
	s.GDT = kvm.DTable{Base: GDTAddr, Limit: 8*gdtLen - 1}
	s.IDT = kvm.DTable{}
	s.CR0 = cr0PE | cr0ET
	s.CR4, s.EFER = 0, 0
	if longMode {
		s.CR0 |= cr0PG
		s.CR3 = PML4Addr
		s.CR4 = cr4PAE
		s.EFER = eferLME | eferLMA
	}
}

// BootRegs returns the general registers a kernel is entered with: RIP at the
// entry point, RFLAGS with only its reserved bit, and the boot structure in
// RBX (PVH) or RSI (64-bit boot protocol).
func BootRegs(entry, bootStruct uint64, longMode bool) kvm.Regs {
	r := kvm.Regs{RIP: entry, RFLAGS: 2}
	if longMode {
		r.RSI = bootStruct
	} else {
		r.RBX = bootStruct
	}
	return r
}

// BootFPU returns the x87/SSE state Linux expects at entry: FCW 0x37f
// (all exceptions masked), MXCSR 0x1f80.
func BootFPU() kvm.FPU {
	return kvm.FPU{FCW: 0x37f, MXCSR: 0x1f80}
}
