package blk

import (
	"encoding/binary"
	"errors"

	"github.com/huskvm/husk/internal/virtio"
)

// A virtio-blk request (virtio 1.2 §5.2.6) is one descriptor chain:
//
//	device-readable  struct virtio_blk_outhdr (16 bytes)
//	                   0  le32 type
//	                   4  le32 reserved (ioprio)
//	                   8  le64 sector (512-byte units)
//	                 payload for OUT (data), DISCARD and WRITE_ZEROES
//	                   (segments of 16 bytes:
//	                     0 le64 sector, 8 le32 num_sectors, 12 le32 flags)
//	device-writable  payload for IN (data) and GET_ID (20-byte serial)
//	                 u8 status (the last writable byte)
//
// The split between header and payload need not follow descriptor
// boundaries, so the parser reads through cursors, not descriptors.

// Request types (§5.2.6).
const (
	TypeIn          = 0
	TypeOut         = 1
	TypeFlush       = 4
	TypeGetID       = 8
	TypeGetLifetime = 10
	TypeDiscard     = 11
	TypeWriteZeroes = 13
	TypeSecureErase = 14
)

// Request status values (§5.2.6).
const (
	StatusOK     = 0
	StatusIOErr  = 1
	StatusUnsupp = 2
)

const (
	// SectorSize is the unit of sector numbers and capacity.
	SectorSize = 512
	// IDBytes is the length of the GET_ID answer (VIRTIO_BLK_ID_BYTES).
	IDBytes = 20
	// headerSize is sizeof(struct virtio_blk_outhdr).
	headerSize = 16
	// segmentSize is sizeof(struct virtio_blk_discard_write_zeroes).
	segmentSize = 16
	// flagUnmap is VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP.
	flagUnmap = 1
)

// Parse errors. errNoStatus leaves nowhere to report a status: the chain is
// returned with nothing written. errShortHeader is answered with IOERR.
var (
	errNoStatus    = errors.New("virtio-blk request has no device-writable status byte")
	errShortHeader = errors.New("virtio-blk request header shorter than 16 bytes")
)

// request is one parsed request. Data and Status alias guest memory.
type request struct {
	Type   uint32
	Sector uint64
	// Data is the payload: device-readable for OUT, DISCARD and
	// WRITE_ZEROES, device-writable (excluding the status byte) for IN and
	// GET_ID, empty otherwise.
	Data virtio.Cursor
	// Status covers the last writable byte.
	Status virtio.Cursor
}

// parseRequest splits a chain into header, payload and status. On
// errShortHeader the returned request has a valid Status.
func parseRequest(c *virtio.Chain) (request, error) {
	var r request
	w := c.Writable()
	if w.Len() < 1 {
		return r, errNoStatus
	}
	r.Status = w
	r.Status.Skip(w.Len() - 1)
	out := w.Limit(w.Len() - 1)

	in := c.Readable()
	var h [headerSize]byte
	if n, _ := in.Read(h[:]); n < headerSize {
		return r, errShortHeader
	}
	r.Type = binary.LittleEndian.Uint32(h[0:])
	r.Sector = binary.LittleEndian.Uint64(h[8:])
	switch r.Type {
	case TypeIn, TypeGetID:
		r.Data = out
	case TypeOut, TypeDiscard, TypeWriteZeroes, TypeSecureErase:
		r.Data = in
	}
	return r, nil
}

// segment is one range of a DISCARD or WRITE_ZEROES request.
type segment struct {
	Sector uint64
	Num    uint32
	Flags  uint32
}

// readSegment decodes the next range from a DISCARD or WRITE_ZEROES payload.
func readSegment(c *virtio.Cursor) (segment, bool) {
	var b [segmentSize]byte
	if n, _ := c.Read(b[:]); n < segmentSize {
		return segment{}, false
	}
	return segment{
		Sector: binary.LittleEndian.Uint64(b[0:]),
		Num:    binary.LittleEndian.Uint32(b[8:]),
		Flags:  binary.LittleEndian.Uint32(b[12:]),
	}, true
}
