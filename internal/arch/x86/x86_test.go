package x86

import (
	"encoding/binary"
	"testing"

	"github.com/huskvm/husk/internal/boot"
	"github.com/huskvm/husk/internal/kvm"
)

func sum(b []byte) (s byte) {
	for _, c := range b {
		s += c
	}
	return s
}

func TestMPTable(t *testing.T) {
	for _, n := range []int{1, 2, 4, MaxVCPUs} {
		b, err := MPTable(n)
		if err != nil {
			t.Fatal(err)
		}
		le := binary.LittleEndian
		if string(b[:4]) != "_MP_" || sum(b[:16]) != 0 {
			t.Fatalf("n=%d: floating pointer bad or checksum %d", n, sum(b[:16]))
		}
		if le.Uint32(b[4:]) != MPTableAddr+16 {
			t.Fatalf("n=%d: pointer %#x", n, le.Uint32(b[4:]))
		}
		h := b[16:]
		if string(h[:4]) != "PCMP" || int(le.Uint16(h[4:])) != len(h) || sum(h) != 0 {
			t.Fatalf("n=%d: header bad, length %d of %d, checksum %d", n, le.Uint16(h[4:]), len(h), sum(h))
		}
		if got, want := int(le.Uint16(h[34:])), n+2+IOAPICPins+2; got != want {
			t.Fatalf("n=%d: %d entries, want %d", n, got, want)
		}
		// Walk the entries: n processors (first is the BSP), then every IOAPIC pin.
		e := h[mpHeaderSize:]
		cpus, pins := 0, map[byte]bool{}
		for len(e) > 0 {
			switch e[0] {
			case mpEntryProcessor:
				if e[1] != byte(cpus) || (e[3]&mpCPUBootstrap != 0) != (cpus == 0) {
					t.Fatalf("n=%d: processor entry %d: % x", n, cpus, e[:4])
				}
				cpus++
				e = e[mpProcessorSize:]
			case mpEntryIOInt:
				if e[5] != e[7] || e[6] != IOAPICID(n) {
					t.Fatalf("n=%d: ISA IRQ %d routed to pin %d of IOAPIC %d", n, e[5], e[7], e[6])
				}
				pins[e[7]] = true
				e = e[mpEntrySize:]
			default:
				e = e[mpEntrySize:]
			}
		}
		if cpus != n || len(pins) != IOAPICPins {
			t.Fatalf("n=%d: %d processors, %d pins", n, cpus, len(pins))
		}
		if MPTableAddr+len(b) > VGAStart {
			t.Fatalf("n=%d: table overruns the EBDA", n)
		}
	}
	if _, err := MPTable(0); err == nil {
		t.Fatal("0 vCPUs accepted")
	}
	if _, err := MPTable(MaxVCPUs + 1); err == nil {
		t.Fatal("too many vCPUs accepted")
	}
}

func TestPageTablesIdentityMap(t *testing.T) {
	b := PageTables()
	le := binary.LittleEndian
	// Walk the tables for a few addresses as the MMU would.
	for _, va := range []uint64{0, 0x1234567, 0x40000000, 0xfee00000, 0xffffffff} {
		pml4e := le.Uint64(b[(va>>39&511)*8:])
		pdpt := pml4e &^ 0xfff
		pdpte := le.Uint64(b[pdpt-PML4Addr+(va>>30&511)*8:])
		pd := pdpte &^ 0xfff
		pde := le.Uint64(b[pd-PML4Addr+(va>>21&511)*8:])
		if pml4e&1 == 0 || pdpte&1 == 0 || pde&pteHuge == 0 {
			t.Fatalf("%#x: not mapped", va)
		}
		if pa := pde&^0x1fffff | va&0x1fffff; pa != va {
			t.Fatalf("%#x maps to %#x", va, pa)
		}
	}
	if PML4Addr+len(b) > CmdlineAddr {
		t.Fatal("page tables overlap the command line")
	}
}

func TestBootSregs(t *testing.T) {
	var s kvm.Sregs
	BootSregs(&s, false)
	if s.CS.Selector != selCode32 || s.CS.DB != 1 || s.CS.L != 0 || s.CS.Limit != 0xffffffff || s.CS.Type != 0xb {
		t.Fatalf("PVH CS %+v", s.CS)
	}
	if s.CR0 != cr0PE|cr0ET || s.EFER != 0 || s.CR4 != 0 {
		t.Fatal("PVH must start in protected mode without paging")
	}
	if s.TR.S != 0 || s.TR.Type != 0xb || s.TR.Limit != 0x67 {
		t.Fatalf("TR %+v", s.TR)
	}
	BootSregs(&s, true)
	if s.CS.Selector != 0x10 || s.CS.L != 1 || s.CS.DB != 0 || s.DS.Selector != 0x18 {
		t.Fatalf("64-bit CS %+v DS %+v", s.CS, s.DS)
	}
	if s.CR3 != PML4Addr || s.EFER != eferLME|eferLMA || s.CR0&cr0PG == 0 || s.CR4&cr4PAE == 0 {
		t.Fatal("64-bit boot needs paging and long mode")
	}
	if r := BootRegs(0x1000000, 0x6000, false); r.RBX != 0x6000 || r.RIP != 0x1000000 || r.RFLAGS != 2 {
		t.Fatalf("PVH regs %+v", r)
	}
	if r := BootRegs(0x100200, 0x7000, true); r.RSI != 0x7000 || r.RBX != 0 {
		t.Fatalf("64-bit regs %+v", r)
	}
}

func TestFilterCPUID(t *testing.T) {
	in := []kvm.CPUIDEntry{
		{Function: 1, EBX: 0xff0800, ECX: cpuidVMX, EDX: 0},
		{Function: 0xb, Index: 0}, {Function: 0xb, Index: 1},
		{Function: 0x80000001, ECX: cpuidSVM},
		{Function: 0x40000000, EAX: 0x40000001},
	}
	out := FilterCPUID(in, CPUIDOptions{VCPUs: 4, ID: 3, TSCDeadline: true})
	l1 := out[0]
	if l1.ECX&cpuidHypervisor == 0 || l1.ECX&cpuidTSCDeadline == 0 || l1.ECX&cpuidVMX != 0 {
		t.Fatalf("leaf 1 ECX %#x", l1.ECX)
	}
	if l1.EBX>>24 != 3 || l1.EBX>>16&0xff != 4 || l1.EBX&0xffff != 0x0800 || l1.EDX&cpuidHTT == 0 {
		t.Fatalf("leaf 1 EBX %#x EDX %#x", l1.EBX, l1.EDX)
	}
	if out[1].EDX != 3 || out[2].EBX != 4 || out[2].EAX != 2 || out[2].ECX>>8 != leafCoreLevel {
		t.Fatalf("leaf 0xb %+v %+v", out[1], out[2])
	}
	if out[3].ECX&cpuidSVM != 0 {
		t.Fatal("SVM not masked")
	}
	if out[4] != in[4] {
		t.Fatal("KVM leaf changed")
	}
	if out := FilterCPUID(in, CPUIDOptions{VCPUs: 1, Nested: true}); out[0].ECX&cpuidVMX == 0 || out[3].ECX&cpuidSVM == 0 {
		t.Fatal("nested bits masked although asked for")
	}
}

func TestMemoryLayout(t *testing.T) {
	small, err := RAMRanges(128 << 20)
	if err != nil || len(small) != 1 || small[0].Size != 128<<20 {
		t.Fatalf("128 MiB: %v %v", small, err)
	}
	big, err := RAMRanges(4096 << 20)
	if err != nil || len(big) != 2 || big[0].End() != MMIOHoleStart || big[1].GPA != HighRAMStart || big[0].Size+big[1].Size != 4096<<20 {
		t.Fatalf("4 GiB: %v %v", big, err)
	}
	mm := MemoryMap(big)
	var ram uint64
	for i, e := range mm {
		if e.Type == boot.E820RAM {
			ram += e.Size
		}
		if i > 0 && e.Addr < mm[i-1].Addr+mm[i-1].Size {
			t.Fatalf("memory map entries overlap: %+v", mm)
		}
		if e.Addr < IOAPICAddr && e.Addr+e.Size > MMIOHoleStart && e.Addr < HighRAMStart {
			t.Fatalf("entry %+v covers the MMIO hole", e)
		}
	}
	if want := uint64(4096<<20) - (HighMemStart - EBDAStart); ram != want {
		t.Fatalf("RAM in map %#x, want %#x", ram, want)
	}
	if _, err := RAMRanges(1 << 20); err == nil {
		t.Fatal("1 MiB accepted")
	}
	if _, err := RAMRanges(128<<20 + 1); err == nil {
		t.Fatal("unaligned size accepted")
	}
}
