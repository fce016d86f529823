package boot

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/huskvm/husk/internal/guestmem"
)

// Offsets into struct boot_params and its embedded setup_header
// (arch/x86/include/uapi/asm/bootparam.h, Documentation/arch/x86/boot.rst).
const (
	bpExtRamdiskImage = 0x0c0
	bpExtRamdiskSize  = 0x0c4
	bpExtCmdLinePtr   = 0x0c8
	bpE820Entries     = 0x1e8
	hdrSetupSects     = 0x1f1
	hdrJump           = 0x200 // 2-byte jump; byte 0x201 is the header length past 0x202
	hdrMagic          = 0x202 // "HdrS"
	hdrVersion        = 0x206
	hdrTypeOfLoader   = 0x210
	hdrLoadflags      = 0x211
	hdrRamdiskImage   = 0x218
	hdrRamdiskSize    = 0x21c
	hdrCmdLinePtr     = 0x228
	hdrInitrdAddrMax  = 0x22c
	hdrXLoadflags     = 0x236
	hdrCmdlineSize    = 0x238
	bpE820Table       = 0x2d0
	e820EntrySize     = 20

	// minBootVersion is protocol 2.12, the first with xloadflags.
	minBootVersion = 0x020c
	loadedHigh     = 0x01
	xlfKernel64    = 0x01
	// entry64Offset is the 64-bit entry point's offset into the
	// protected-mode kernel (startup_64).
	entry64Offset = 0x200
	// setupHeaderRead is how much of the image's start is parsed; the setup
	// header ends well before it.
	setupHeaderRead = 0x280
)

// bzHeader is what the loader needs from a bzImage's setup header.
type bzHeader struct {
	raw         [setupHeaderRead]byte
	hdrEnd      int    // end of the setup header within raw
	kernelOff   uint64 // file offset of the protected-mode kernel
	cmdlineSize uint64
	initrdMax   uint64
}

func parseBzImage(r interface {
	ReadAt([]byte, int64) (int, error)
}, size int64) (*bzHeader, error) {
	h := &bzHeader{}
	if size < setupHeaderRead {
		return nil, ErrUnknownFormat
	}
	if _, err := r.ReadAt(h.raw[:], 0); err != nil {
		return nil, fmt.Errorf("read setup header: %w", truncated(err))
	}
	le := binary.LittleEndian
	if string(h.raw[hdrMagic:hdrMagic+4]) != "HdrS" || le.Uint16(h.raw[0x1fe:]) != 0xaa55 {
		return nil, ErrUnknownFormat
	}
	if v := le.Uint16(h.raw[hdrVersion:]); v < minBootVersion {
		return nil, fmt.Errorf("bzImage boot protocol %d.%02d is older than 2.12", v>>8, v&0xff)
	}
	if h.raw[hdrXLoadflags]&xlfKernel64 == 0 {
		return nil, errors.New("bzImage has no 64-bit entry point (XLF_KERNEL_64)")
	}
	h.hdrEnd = hdrJump + 2 + int(h.raw[hdrJump+1])
	if h.hdrEnd <= hdrCmdlineSize+4 || h.hdrEnd > setupHeaderRead {
		return nil, fmt.Errorf("bzImage setup header length %d is out of range", h.hdrEnd-hdrSetupSects)
	}
	sects := uint64(h.raw[hdrSetupSects])
	if sects == 0 {
		sects = 4
	}
	h.kernelOff = (sects + 1) * 512
	if h.kernelOff+entry64Offset >= uint64(size) {
		return nil, errors.New("bzImage is truncated: no protected-mode kernel")
	}
	h.cmdlineSize = uint64(le.Uint32(h.raw[hdrCmdlineSize:]))
	h.initrdMax = uint64(le.Uint32(h.raw[hdrInitrdAddrMax:]))
	return h, nil
}

func loadBzImage(mem *guestmem.Memory, p Params, size int64) (*Image, error) {
	h, err := parseBzImage(p.Kernel, size)
	if err != nil {
		return nil, err
	}
	kernelSize := uint64(size) - h.kernelOff
	if !ramContains(p.MemMap, p.HighMemStart, kernelSize) {
		return nil, fmt.Errorf("protected-mode kernel of %d bytes does not fit in RAM at %#x", kernelSize, p.HighMemStart)
	}
	if err := mem.LoadFile(p.Kernel, int64(h.kernelOff), p.HighMemStart, kernelSize); err != nil {
		return nil, fmt.Errorf("load protected-mode kernel: %w", err)
	}
	end := p.HighMemStart + kernelSize
	if err := writeCmdline(mem, p, h.cmdlineSize+1); err != nil {
		return nil, err
	}
	initrdAddr, initrdSize, err := loadInitrd(mem, p, end, h.initrdMax+1)
	if err != nil {
		return nil, err
	}
	zp := make([]byte, guestmem.PageSize)
	copy(zp[hdrSetupSects:h.hdrEnd], h.raw[hdrSetupSects:h.hdrEnd])
	le := binary.LittleEndian
	zp[hdrTypeOfLoader] = 0xff // undefined boot loader
	zp[hdrLoadflags] |= loadedHigh
	le.PutUint32(zp[hdrCmdLinePtr:], uint32(p.CmdlineAddr))
	le.PutUint32(zp[bpExtCmdLinePtr:], uint32(p.CmdlineAddr>>32))
	le.PutUint32(zp[hdrRamdiskImage:], uint32(initrdAddr))
	le.PutUint32(zp[bpExtRamdiskImage:], uint32(initrdAddr>>32))
	le.PutUint32(zp[hdrRamdiskSize:], uint32(initrdSize))
	le.PutUint32(zp[bpExtRamdiskSize:], uint32(initrdSize>>32))
	zp[bpE820Entries] = byte(len(p.MemMap))
	for i, e := range p.MemMap {
		o := bpE820Table + i*e820EntrySize
		le.PutUint64(zp[o:], e.Addr)
		le.PutUint64(zp[o+8:], e.Size)
		le.PutUint32(zp[o+16:], e.Type)
	}
	if _, err := mem.WriteAt(zp, int64(p.ZeroPageAddr)); err != nil {
		return nil, fmt.Errorf("write boot_params: %w", err)
	}
	return &Image{Protocol: Linux64, Entry: p.HighMemStart + entry64Offset, BootStruct: p.ZeroPageAddr,
		KernelEnd: end, InitrdAddr: initrdAddr, InitrdSize: initrdSize}, nil
}
