package x86

import "encoding/binary"

// Identity page tables for the 64-bit boot protocol, which enters the kernel
// in long mode: one PML4 entry, a PDPT with four entries and four page
// directories of 2 MiB pages map guest addresses 0–4 GiB to themselves.
const (
	ptePresent  = 1 << 0
	pteWritable = 1 << 1
	pteHuge     = 1 << 7
	identityPDs = 4
)

// PageTables returns the bytes to write at PML4Addr: PML4, PDPT and the page
// directories, one 4 KiB page each, in that order.
func PageTables() []byte {
	b := make([]byte, (2+identityPDs)*4096)
	le := binary.LittleEndian
	le.PutUint64(b[0:], PDPTAddr|ptePresent|pteWritable)
	for i := 0; i < identityPDs; i++ {
		le.PutUint64(b[4096+i*8:], uint64(PDAddr+i*4096)|ptePresent|pteWritable)
		pd := b[(2+i)*4096:]
		for j := 0; j < 512; j++ {
			addr := uint64(i)<<30 | uint64(j)<<21
			le.PutUint64(pd[j*8:], addr|ptePresent|pteWritable|pteHuge)
		}
	}
	return b
}
