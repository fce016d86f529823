package blk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// On-disk layout of a copy-on-write overlay file. All integers are
// little-endian; the file is sparse, so an overlay costs only the blocks the
// VM wrote plus the map pages it flushed.
//
//	offset               size          contents
//	0                    4096          header
//	4096                 2 × C × 4096  map: chunk c in slots 2c (A) and 2c+1 (B)
//	D                    N × bs        data: block i at D + i × bs
//
//	where N = ceil(size / bs) blocks, C = ceil(N / 16320) chunks and
//	D = 4096 × (1 + 2C) rounded up to bs.
//
// Header (written once, at creation):
//
//	0   [8]byte  magic "HUSKCOW\x00"
//	8   le32     format version (1)
//	12  le32     block size bs: a power of two, 512 to 1 MiB
//	16  le64     virtual disk size in bytes, a multiple of 512
//	24  le64     base image size in bytes; Open refuses a base of another size
//	32  le64     number of map chunks C
//	40  le64     data offset D
//	48  le32     CRC-32C of bytes 0 to 47
//
// Map slot (one page):
//
//	0   le64     generation; 0 means never written, and then the whole
//	             page is zero (every block of the chunk comes from the base)
//	8   le32     chunk index c
//	12  le32     CRC-32C of bytes 0 to 11 and 16 to 4095
//	16  [4080]   block states, 2 bits each: block c × 16320 + j is at byte
//	             j / 4, bits 2 × (j % 4): 0 base, 1 data (in this file),
//	             2 zero (reads as zeros, never as base data)
//
// A flush writes each changed chunk to the slot that does not hold its
// newest copy, under a generation one above any on disk, and only after the
// data those states point to is durable. A crash mid-flush tears at most the
// slot being written; its CRC then fails and Open falls back to the chunk's
// other slot, the state of the previous flush.
const (
	overlayMagic   = "HUSKCOW\x00"
	overlayVersion = 1

	pageSize        = 4096
	headerLen       = 52 // bytes of the header that are used
	slotHeader      = 16
	slotPayload     = pageSize - slotHeader // 4080
	blocksPerChunk  = slotPayload * 4       // 16320
	minBlockSize    = 512
	maxBlockSize    = 1 << 20
	maxOverlayBlock = 1 << 28 // caps the in-memory map at 64 MiB

	// DefaultBlockSize is the overlay's copy-on-write granularity.
	DefaultBlockSize = 4096
)

// Block states.
const (
	stateBase = 0 // read from the base image
	stateData = 1 // read from the overlay's data area
	stateZero = 2 // reads as zeros
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrOverlayCorrupt reports an overlay file that fails its checks.
var ErrOverlayCorrupt = errors.New("overlay file corrupt")

// header is the decoded overlay header.
type header struct {
	blockSize int64
	size      int64 // virtual disk size
	baseSize  int64
	chunks    int64
	dataOff   int64
}

func (h *header) blocks() int64 { return (h.size + h.blockSize - 1) / h.blockSize }

// layout fills chunks and dataOff from blockSize and size.
func (h *header) layout() {
	h.chunks = (h.blocks() + blocksPerChunk - 1) / blocksPerChunk
	d := pageSize * (1 + 2*h.chunks)
	h.dataOff = (d + h.blockSize - 1) / h.blockSize * h.blockSize
}

// validate checks the fields that layout does not derive.
func (h *header) validate() error {
	bs := h.blockSize
	switch {
	case bs < minBlockSize || bs > maxBlockSize || bs&(bs-1) != 0:
		return fmt.Errorf("overlay block size %d: want a power of two from %d to %d", bs, minBlockSize, maxBlockSize)
	case h.size <= 0 || h.size%SectorSize != 0:
		return fmt.Errorf("overlay size %d: want a positive multiple of %d", h.size, SectorSize)
	case h.blocks() > maxOverlayBlock:
		return fmt.Errorf("overlay of %d blocks exceeds %d", h.blocks(), maxOverlayBlock)
	case h.baseSize < 0:
		return fmt.Errorf("base size %d", h.baseSize)
	}
	return nil
}

func (h *header) marshal() []byte {
	b := make([]byte, pageSize)
	copy(b, overlayMagic)
	binary.LittleEndian.PutUint32(b[8:], overlayVersion)
	binary.LittleEndian.PutUint32(b[12:], uint32(h.blockSize))
	binary.LittleEndian.PutUint64(b[16:], uint64(h.size))
	binary.LittleEndian.PutUint64(b[24:], uint64(h.baseSize))
	binary.LittleEndian.PutUint64(b[32:], uint64(h.chunks))
	binary.LittleEndian.PutUint64(b[40:], uint64(h.dataOff))
	binary.LittleEndian.PutUint32(b[48:], crc32.Checksum(b[:48], castagnoli))
	return b
}

func unmarshalHeader(b []byte) (header, error) {
	if len(b) < headerLen || string(b[:8]) != overlayMagic {
		return header{}, fmt.Errorf("%w: bad magic", ErrOverlayCorrupt)
	}
	if crc32.Checksum(b[:48], castagnoli) != binary.LittleEndian.Uint32(b[48:]) {
		return header{}, fmt.Errorf("%w: header checksum mismatch", ErrOverlayCorrupt)
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != overlayVersion {
		return header{}, fmt.Errorf("overlay format version %d, want %d", v, overlayVersion)
	}
	h := header{
		blockSize: int64(binary.LittleEndian.Uint32(b[12:])),
		size:      int64(binary.LittleEndian.Uint64(b[16:])),
		baseSize:  int64(binary.LittleEndian.Uint64(b[24:])),
	}
	if err := h.validate(); err != nil {
		return header{}, fmt.Errorf("%w: %v", ErrOverlayCorrupt, err)
	}
	want := h
	want.layout()
	if int64(binary.LittleEndian.Uint64(b[32:])) != want.chunks || int64(binary.LittleEndian.Uint64(b[40:])) != want.dataOff {
		return header{}, fmt.Errorf("%w: layout fields disagree with size and block size", ErrOverlayCorrupt)
	}
	return want, nil
}

// slotOffset returns the file offset of chunk c's slot s (0 or 1).
func slotOffset(c int64, s uint8) int64 { return pageSize * (1 + 2*c + int64(s)) }

// encodeSlot fills page with chunk c's payload under generation gen.
func encodeSlot(page []byte, gen uint64, c int64, payload []byte) {
	binary.LittleEndian.PutUint64(page[0:], gen)
	binary.LittleEndian.PutUint32(page[8:], uint32(c))
	clear(page[slotHeader:])
	copy(page[slotHeader:], payload)
	binary.LittleEndian.PutUint32(page[12:], slotCRC(page))
}

func slotCRC(page []byte) uint32 {
	crc := crc32.Update(0, castagnoli, page[:12])
	return crc32.Update(crc, castagnoli, page[slotHeader:])
}

// decodeSlot reports whether page is a valid copy of chunk c and its
// generation. An all-zero page is a valid, never-written slot of generation 0.
func decodeSlot(page []byte, c int64) (gen uint64, ok bool) {
	gen = binary.LittleEndian.Uint64(page[0:])
	if gen == 0 {
		for _, b := range page {
			if b != 0 {
				return 0, false
			}
		}
		return 0, true
	}
	if binary.LittleEndian.Uint32(page[8:]) != uint32(c) || binary.LittleEndian.Uint32(page[12:]) != slotCRC(page) {
		return 0, false
	}
	return gen, true
}
