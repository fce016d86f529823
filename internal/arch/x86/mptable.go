package x86

import (
	"encoding/binary"
	"fmt"
)

// MP table (Intel MultiProcessor Specification 1.4, chapter 4): how a guest
// without ACPI learns its CPUs, its IOAPIC and how ISA interrupts are wired.
// Without it a multi-vCPU guest silently boots with one CPU.
//
//	MPTableAddr       floating pointer "_MP_" (16 bytes) -> configuration table
//	MPTableAddr+16    configuration table header "PCMP" (44 bytes), then entries:
//	                  processor (20 bytes each), bus, IOAPIC, I/O interrupt per
//	                  IOAPIC pin, two local interrupts (8 bytes each)
//
// Every structure's bytes sum to zero modulo 256.
const (
	mpFloatingSize   = 16
	mpHeaderSize     = 44
	mpProcessorSize  = 20
	mpEntrySize      = 8
	mpSpecRev        = 4
	mpLAPICVersion   = 0x14
	mpIOAPICVersion  = 0x11
	mpCPUEnabled     = 1
	mpCPUBootstrap   = 2
	mpIntINT         = 0
	mpIntNMI         = 1
	mpIntExtINT      = 3
	mpBusISA         = 0
	mpAllLAPICs      = 0xff
	mpEntryProcessor = 0
	mpEntryBus       = 1
	mpEntryIOAPIC    = 2
	mpEntryIOInt     = 3
	mpEntryLocalInt  = 4
)

// MPTableSize returns the bytes the MP table for n vCPUs occupies.
func MPTableSize(n int) int {
	return mpFloatingSize + mpHeaderSize + n*mpProcessorSize + (3+IOAPICPins+1)*mpEntrySize
}

// IOAPICID returns the IOAPIC's id for a VM of n vCPUs: after every APIC id.
func IOAPICID(n int) uint8 { return uint8(n) }

// MPTable returns the MP floating pointer and configuration table for n vCPUs
// with APIC ids 0..n-1, to be written at MPTableAddr. Each IOAPIC pin i is
// listed as ISA IRQ i, which is how KVM's in-kernel IOAPIC routes them.
func MPTable(n int) ([]byte, error) {
	if n < 1 || n > MaxVCPUs {
		return nil, fmt.Errorf("MP table for %d vCPUs (want 1..%d)", n, MaxVCPUs)
	}
	size := MPTableSize(n)
	if MPTableAddr+size > VGAStart {
		return nil, fmt.Errorf("MP table of %d bytes does not fit below %#x", size, VGAStart)
	}
	b := make([]byte, size)
	le := binary.LittleEndian

	fp := b[:mpFloatingSize]
	copy(fp, "_MP_")
	le.PutUint32(fp[4:], MPTableAddr+mpFloatingSize)
	fp[8] = 1 // length in 16-byte units
	fp[9] = mpSpecRev

	h := b[mpFloatingSize:]
	copy(h, "PCMP")
	le.PutUint16(h[4:], uint16(size-mpFloatingSize))
	h[6] = mpSpecRev
	copy(h[8:], "HUSK    ")
	copy(h[16:], "HUSK MICROVM")
	entries := 0
	le.PutUint32(h[36:], LAPICAddr)

	e := h[mpHeaderSize:]
	ioapic := IOAPICID(n)
	for i := 0; i < n; i++ {
		e[0] = mpEntryProcessor
		e[1] = uint8(i)
		e[2] = mpLAPICVersion
		e[3] = mpCPUEnabled
		if i == 0 {
			e[3] |= mpCPUBootstrap
		}
		le.PutUint32(e[4:], 0x600) // CPU signature: family 6
		le.PutUint32(e[8:], 0x201) // features: FPU, APIC
		e = e[mpProcessorSize:]
		entries++
	}
	e[0], e[1] = mpEntryBus, mpBusISA
	copy(e[2:8], "ISA   ")
	e = e[mpEntrySize:]
	e[0], e[1], e[2], e[3] = mpEntryIOAPIC, ioapic, mpIOAPICVersion, 1
	le.PutUint32(e[4:], IOAPICAddr)
	e = e[mpEntrySize:]
	entries += 2
	for pin := 0; pin < IOAPICPins; pin++ {
		// flags 0: polarity and trigger conform to the bus (ISA: edge, high).
		e[0], e[1], e[4], e[5], e[6], e[7] = mpEntryIOInt, mpIntINT, mpBusISA, uint8(pin), ioapic, uint8(pin)
		e = e[mpEntrySize:]
		entries++
	}
	e[0], e[1], e[4], e[5], e[6], e[7] = mpEntryLocalInt, mpIntExtINT, mpBusISA, 0, mpAllLAPICs, 0
	e = e[mpEntrySize:]
	e[0], e[1], e[4], e[5], e[6], e[7] = mpEntryLocalInt, mpIntNMI, mpBusISA, 0, mpAllLAPICs, 1
	entries += 2
	le.PutUint16(h[34:], uint16(entries))

	h[7] = checksum(h[:size-mpFloatingSize])
	fp[10] = checksum(fp)
	return b, nil
}

// checksum returns the byte that makes b sum to zero, given that its
// checksum byte is currently zero.
func checksum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return -s
}
