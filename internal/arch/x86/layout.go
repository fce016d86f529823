// Package x86 holds the x86-64 machine definition of a husk VM: the guest
// physical memory layout, the GDT and identity page tables, the MP table that
// announces CPUs and IOAPIC pins to a guest without ACPI, the CPUID the guest
// sees, and the register state it boots in.
package x86

import (
	"fmt"

	"github.com/huskvm/husk/internal/boot"
	"github.com/huskvm/husk/internal/guestmem"
)

// Guest physical memory layout. Everything below 1 MiB that the boot path
// writes sits in conventional RAM below the EBDA; the MMIO hole under 4 GiB
// holds virtio-mmio devices, the IOAPIC, the LAPIC and the two pages KVM needs
// for the TSS and the identity map on Intel.
const (
	// GDTAddr is where the boot GDT lives (4 entries, 8 bytes each).
	GDTAddr = 0x500
	// StartInfoAddr holds the PVH hvm_start_info, its module list and memory map.
	StartInfoAddr = 0x6000
	// ZeroPageAddr holds struct boot_params for the 64-bit boot protocol.
	ZeroPageAddr = 0x7000
	// PML4Addr is the first of the identity page-table pages: PML4, PDPT and
	// four page directories mapping the low 4 GiB with 2 MiB pages.
	PML4Addr = 0x9000
	// PDPTAddr is the page-directory-pointer table.
	PDPTAddr = 0xa000
	// PDAddr is the first of four page directories.
	PDAddr = 0xb000
	// CmdlineAddr is where the kernel command line is written.
	CmdlineAddr = 0x20000
	// CmdlineMax caps the command line, including its NUL terminator.
	CmdlineMax = 4096
	// EBDAStart begins the reserved area at the top of conventional memory;
	// the MP floating pointer and configuration table live here.
	EBDAStart = 0x9fc00
	// MPTableAddr is the MP floating pointer structure ("_MP_").
	MPTableAddr = EBDAStart
	// VGAStart to HighMemStart is the legacy VGA/ROM hole, reserved in e820.
	VGAStart = 0xa0000
	// BIOSROMStart is reserved as the BIOS area the kernel may scan.
	BIOSROMStart = 0xf0000
	// HighMemStart is 1 MiB: RAM resumes here; bzImage kernels load here.
	HighMemStart = 0x100000

	// MMIOHoleStart is where guest RAM below 4 GiB stops (3 GiB).
	MMIOHoleStart = 0xc000_0000
	// VirtioMMIOBase is the first virtio-mmio device window.
	VirtioMMIOBase = 0xd000_0000
	// VirtioMMIOSize is the size of one virtio-mmio device window.
	VirtioMMIOSize = 0x1000
	// IOAPICAddr is the IOAPIC's MMIO base.
	IOAPICAddr = 0xfec0_0000
	// LAPICAddr is the local APIC's MMIO base.
	LAPICAddr = 0xfee0_0000
	// IdentityMapAddr is the page KVM uses for its real-mode identity map (Intel).
	IdentityMapAddr = 0xfffb_c000
	// TSSAddr is the three pages KVM uses for the real-mode TSS (Intel).
	TSSAddr = 0xfffb_d000
	// HighRAMStart is where RAM above the hole continues (4 GiB).
	HighRAMStart = 0x1_0000_0000

	// IOAPICPins is the number of IOAPIC input pins KVM's in-kernel IOAPIC has.
	IOAPICPins = 24
	// SerialIRQ is COM1's ISA interrupt.
	SerialIRQ = 4
	// VirtioIRQBase to VirtioIRQLast is the fixed range of IRQs for
	// virtio-mmio devices, one per device.
	VirtioIRQBase = 5
	// VirtioIRQLast is the last IRQ for virtio-mmio devices.
	VirtioIRQLast = 23

	// MaxVCPUs is the most vCPUs a VM may have (the guest kernel's NR_CPUS).
	MaxVCPUs = 32
)

// RAMRanges returns the guest RAM regions for memBytes of RAM: from 0 up to
// the MMIO hole, and the rest from 4 GiB.
func RAMRanges(memBytes uint64) ([]guestmem.Range, error) {
	if memBytes < 16<<20 || memBytes%guestmem.PageSize != 0 {
		return nil, fmt.Errorf("guest memory of %d bytes: need a multiple of 4 KiB, at least 16 MiB", memBytes)
	}
	if memBytes <= MMIOHoleStart {
		return []guestmem.Range{{GPA: 0, Size: memBytes}}, nil
	}
	return []guestmem.Range{
		{GPA: 0, Size: MMIOHoleStart},
		{GPA: HighRAMStart, Size: memBytes - MMIOHoleStart},
	}, nil
}

// MemoryMap returns the e820-style map the guest is told about: conventional
// memory up to the EBDA, the EBDA, VGA and BIOS holes reserved, RAM from 1 MiB
// to the end of the first region, and any region above 4 GiB.
func MemoryMap(ram []guestmem.Range) []boot.MemEntry {
	m := []boot.MemEntry{
		{Addr: 0, Size: EBDAStart, Type: boot.E820RAM},
		{Addr: EBDAStart, Size: VGAStart - EBDAStart, Type: boot.E820Reserved},
		{Addr: BIOSROMStart, Size: HighMemStart - BIOSROMStart, Type: boot.E820Reserved},
	}
	for _, r := range ram {
		start := max(r.GPA, HighMemStart)
		if r.End() > start {
			m = append(m, boot.MemEntry{Addr: start, Size: r.End() - start, Type: boot.E820RAM})
		}
	}
	return m
}
