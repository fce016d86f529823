// Package blk is virtio-blk (virtio 1.2 §5.2): a disk backed by a raw image
// (Raw) or by a copy-on-write overlay over a shared read-only base image
// (Overlay), read-only or read-write, with FLUSH, GET_ID, DISCARD and
// WRITE_ZEROES.
//
// Every request field is guest-written: the parser (request.go) checks the
// chain's shape, and the device checks sectors against the capacity, lengths
// against the sector size and the advertised limits, and flags against what
// it supports, before touching the backend. A bad request fails with IOERR
// or UNSUPP; it never reaches the backend.
//
// Threading: the transport calls the virtio.Device methods on vCPU
// goroutines; requests run on the device's worker goroutine (see package
// virtio), one at a time, reading and writing guest memory in place.
package blk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"sync/atomic"

	"github.com/huskvm/husk/internal/virtio"
)

// Feature bits (§5.2.3).
const (
	FeatureSizeMax     = 1 << 1
	FeatureSegMax      = 1 << 2
	FeatureRO          = 1 << 5
	FeatureBlkSize     = 1 << 6
	FeatureFlush       = 1 << 9
	FeatureTopology    = 1 << 10
	FeatureDiscard     = 1 << 13
	FeatureWriteZeroes = 1 << 14
)

// Limits the device advertises (and enforces).
const (
	// QueueSize is the request queue's maximum size.
	QueueSize = 256
	// SegMax is the most data segments per request: a chain is header +
	// SegMax + status = QueueSize descriptors.
	SegMax = QueueSize - 2
	// SizeMax is the largest data segment. SegMax × SizeMax stays below
	// virtio.MaxChainBytes, so no legal request hits the queue's cap.
	SizeMax = 256 << 10
	// MaxDiscardSectors bounds one DISCARD or WRITE_ZEROES range (2 GiB).
	MaxDiscardSectors = 1 << 22
	// MaxDiscardSegments bounds the ranges of one DISCARD or WRITE_ZEROES.
	MaxDiscardSegments = 16
	// ioChunk bounds one backend call, or one buffer of a vectored call.
	ioChunk = 1 << 20
)

// Config space offsets (struct virtio_blk_config, §5.2.4).
const (
	cfgCapacity              = 0  // le64, sectors
	cfgSizeMax               = 8  // le32
	cfgSegMax                = 12 // le32
	cfgBlkSize               = 20 // le32
	cfgPhysicalBlockExp      = 24 // u8
	cfgMinIOSize             = 26 // le16, logical blocks
	cfgNumQueues             = 34 // le16
	cfgMaxDiscardSectors     = 36 // le32
	cfgMaxDiscardSeg         = 40 // le32
	cfgDiscardAlignment      = 44 // le32, sectors
	cfgMaxWriteZeroesSectors = 48 // le32
	cfgMaxWriteZeroesSeg     = 52 // le32
	cfgWriteZeroesMayUnmap   = 56 // u8
	configSize               = 60
)

// Config describes a disk.
type Config struct {
	// ReadOnly offers VIRTIO_BLK_F_RO and fails every write.
	ReadOnly bool
	// Serial is the GET_ID answer, at most 20 bytes.
	Serial string
}

// blockSizer is implemented by backends with an allocation granularity
// (Overlay); the device advertises it as the physical block size so the
// guest aligns its writes and discards to it.
type blockSizer interface{ BlockSize() int }

// Device is a virtio-blk device.
type Device struct {
	virtio.Common
	cfg      Config
	backend  Backend
	vio      vectorIO // backend, if it moves a whole request with one call
	capacity uint64   // sectors
	config   [configSize]byte
	log      *slog.Logger
	vec      [][]byte // a request's buffers for vio; the worker's only

	// Counters, readable from any goroutine.
	readBytes, writeBytes, flushes, errorsCount atomic.Uint64

	badChain, ioErr virtio.LogLimit
}

var _ virtio.Device = (*Device)(nil)

// New creates a virtio-blk device over backend and starts its worker. The
// device owns the backend and closes it in Close. log may be nil.
func New(backend Backend, cfg Config, log *slog.Logger) (*Device, error) {
	if backend == nil {
		return nil, errors.New("virtio-blk: nil backend")
	}
	if len(cfg.Serial) > IDBytes {
		return nil, fmt.Errorf("virtio-blk: serial %q longer than %d bytes", cfg.Serial, IDBytes)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Device{cfg: cfg, backend: backend, capacity: uint64(backend.Size()) / SectorSize, log: log.With("device", "blk")}
	d.vio, _ = backend.(vectorIO)
	features := uint64(virtio.FeatureIndirectDesc | virtio.FeatureEventIdx |
		FeatureSizeMax | FeatureSegMax | FeatureBlkSize | FeatureFlush | FeatureTopology)
	if cfg.ReadOnly {
		features |= FeatureRO
	} else {
		features |= FeatureDiscard | FeatureWriteZeroes
	}
	c := d.config[:]
	le := binary.LittleEndian
	le.PutUint64(c[cfgCapacity:], d.capacity)
	le.PutUint32(c[cfgSizeMax:], SizeMax)
	le.PutUint32(c[cfgSegMax:], SegMax)
	le.PutUint32(c[cfgBlkSize:], SectorSize)
	granule := uint32(1) // in sectors
	if bsz, ok := backend.(blockSizer); ok && bsz.BlockSize() > SectorSize {
		granule = uint32(bsz.BlockSize() / SectorSize)
	}
	c[cfgPhysicalBlockExp] = byte(bits.TrailingZeros32(granule))
	le.PutUint16(c[cfgMinIOSize:], uint16(granule))
	le.PutUint16(c[cfgNumQueues:], 1)
	le.PutUint32(c[cfgMaxDiscardSectors:], MaxDiscardSectors)
	le.PutUint32(c[cfgMaxDiscardSeg:], MaxDiscardSegments)
	le.PutUint32(c[cfgDiscardAlignment:], granule)
	le.PutUint32(c[cfgMaxWriteZeroesSectors:], MaxDiscardSectors)
	le.PutUint32(c[cfgMaxWriteZeroesSeg:], MaxDiscardSegments)
	c[cfgWriteZeroesMayUnmap] = 1
	if err := d.Init(features, []uint16{QueueSize}); err != nil {
		return nil, err
	}
	d.Start(d.process)
	return d, nil
}

// Type returns virtio.DeviceBlock.
func (d *Device) Type() virtio.DeviceType { return virtio.DeviceBlock }

// ReadConfig reads struct virtio_blk_config.
func (d *Device) ReadConfig(offset uint64, data []byte) { virtio.ConfigRead(d.config[:], offset, data) }

// WriteConfig ignores the write: the only writable field, writeback, needs
// VIRTIO_BLK_F_CONFIG_WCE, which is not offered.
func (d *Device) WriteConfig(offset uint64, data []byte) {}

// Capacity returns the disk size in sectors.
func (d *Device) Capacity() uint64 { return d.capacity }

// Stats returns bytes read and written, flushes, and failed requests.
func (d *Device) Stats() (readBytes, writeBytes, flushes, failed uint64) {
	return d.readBytes.Load(), d.writeBytes.Load(), d.flushes.Load(), d.errorsCount.Load()
}

// Close stops the worker, then flushes and closes the backend.
func (d *Device) Close() error {
	return errors.Join(d.Common.Close(), d.backend.Close())
}

func (d *Device) process(a *virtio.Activation) { a.Drain(a.Queues[0], d) }

// BadChain logs a malformed chain.
func (d *Device) BadChain(_ *virtio.Queue, err error) {
	if dropped, ok := d.badChain.Allow(); ok {
		d.log.Warn("virtio_bad_chain", "err", err, "dropped", dropped)
	}
}

// HandleChain serves one request and returns the bytes written to the
// guest: the data of IN or GET_ID plus the status byte.
func (d *Device) HandleChain(_ *virtio.Queue, c *virtio.Chain) uint32 {
	req, err := parseRequest(c)
	if errors.Is(err, errNoStatus) {
		d.BadChain(nil, err)
		return 0
	}
	var status byte
	var written int
	if err != nil {
		status = StatusIOErr
		d.fail(err)
	} else {
		status, written = d.execute(&req)
	}
	st := [1]byte{status}
	req.Status.Write(st[:])
	return uint32(written) + 1
}

func (d *Device) fail(err error) {
	d.errorsCount.Add(1)
	if dropped, ok := d.ioErr.Allow(); ok {
		d.log.Warn("virtio_blk_request_failed", "err", err, "dropped", dropped)
	}
}

// execute runs a parsed request and returns its status and the data bytes
// written to the guest.
func (d *Device) execute(r *request) (byte, int) {
	acked := d.AckedFeatures()
	switch r.Type {
	case TypeIn, TypeOut:
		n := r.Data.Len()
		if n%SectorSize != 0 {
			d.fail(fmt.Errorf("request type %d: data length %d not a multiple of %d", r.Type, n, SectorSize))
			return StatusIOErr, 0
		}
		if !d.inBounds(r.Sector, uint64(n/SectorSize)) {
			d.fail(fmt.Errorf("request type %d: sectors %d+%d past capacity %d", r.Type, r.Sector, n/SectorSize, d.capacity))
			return StatusIOErr, 0
		}
		if r.Type == TypeIn {
			return d.read(r)
		}
		if d.cfg.ReadOnly {
			d.fail(errors.New("write to a read-only disk"))
			return StatusIOErr, 0
		}
		return d.write(r), 0
	case TypeFlush:
		d.flushes.Add(1)
		if err := d.backend.Flush(); err != nil {
			d.fail(err)
			return StatusIOErr, 0
		}
		return StatusOK, 0
	case TypeGetID:
		var id [IDBytes]byte
		copy(id[:], d.cfg.Serial)
		n, _ := r.Data.Write(id[:min(IDBytes, r.Data.Len())])
		return StatusOK, n
	case TypeDiscard, TypeWriteZeroes:
		want := uint64(FeatureDiscard)
		if r.Type == TypeWriteZeroes {
			want = FeatureWriteZeroes
		}
		if acked&want == 0 {
			return StatusUnsupp, 0
		}
		if d.cfg.ReadOnly {
			return StatusIOErr, 0
		}
		return d.zero(r), 0
	}
	return StatusUnsupp, 0
}

func (d *Device) inBounds(sector, count uint64) bool {
	return sector <= d.capacity && count <= d.capacity-sector
}

// gather collects a request's buffers (guest memory) into d.vec.
func (d *Device) gather(c *virtio.Cursor) [][]byte {
	d.vec = d.vec[:0]
	for p := c.Next(ioChunk); p != nil; p = c.Next(ioChunk) {
		d.vec = append(d.vec, p)
	}
	return d.vec
}

// release drops the request's buffers from d.vec: they alias guest memory,
// which may be unmapped while the device lives on.
func (d *Device) release() { clear(d.vec) }

// read copies disk sectors straight into the guest's buffers: with one
// backend call for the whole request where the backend can, else one per
// buffer.
func (d *Device) read(r *request) (byte, int) {
	off := int64(r.Sector * SectorSize)
	if d.vio != nil {
		defer d.release()
		n, err := d.vio.ReadVecAt(d.gather(&r.Data), off)
		if err != nil {
			d.fail(err)
			return StatusIOErr, n
		}
		d.readBytes.Add(uint64(n))
		return StatusOK, n
	}
	n := 0
	for p := r.Data.Next(ioChunk); p != nil; p = r.Data.Next(ioChunk) {
		if _, err := d.backend.ReadAt(p, off); err != nil {
			d.fail(err)
			return StatusIOErr, n
		}
		off += int64(len(p))
		n += len(p)
	}
	d.readBytes.Add(uint64(n))
	return StatusOK, n
}

// write copies the guest's buffers to disk, with one backend call where
// the backend can.
func (d *Device) write(r *request) byte {
	off := int64(r.Sector * SectorSize)
	if d.vio != nil {
		defer d.release()
		n, err := d.vio.WriteVecAt(d.gather(&r.Data), off)
		d.writeBytes.Add(uint64(n))
		if err != nil {
			d.fail(err)
			return StatusIOErr
		}
		return StatusOK
	}
	for p := r.Data.Next(ioChunk); p != nil; p = r.Data.Next(ioChunk) {
		if _, err := d.backend.WriteAt(p, off); err != nil {
			d.fail(err)
			return StatusIOErr
		}
		off += int64(len(p))
		d.writeBytes.Add(uint64(len(p)))
	}
	return StatusOK
}

// zero runs DISCARD or WRITE_ZEROES (§5.2.6.2): every range is checked
// before any is applied.
func (d *Device) zero(r *request) byte {
	n := r.Data.Len()
	if n == 0 || n%segmentSize != 0 || n/segmentSize > MaxDiscardSegments {
		d.fail(fmt.Errorf("request type %d: payload of %d bytes", r.Type, n))
		return StatusIOErr
	}
	var segs [MaxDiscardSegments]segment
	count := n / segmentSize
	for i := range count {
		s, _ := readSegment(&r.Data)
		allowed := uint32(0)
		if r.Type == TypeWriteZeroes {
			allowed = flagUnmap
		}
		if s.Flags&^allowed != 0 {
			return StatusUnsupp // unknown flags, or unmap on DISCARD
		}
		if s.Num > MaxDiscardSectors || !d.inBounds(s.Sector, uint64(s.Num)) {
			d.fail(fmt.Errorf("request type %d: range %d+%d past capacity %d or limit", r.Type, s.Sector, s.Num, d.capacity))
			return StatusIOErr
		}
		segs[i] = s
	}
	for _, s := range segs[:count] {
		off, length := int64(s.Sector*SectorSize), int64(s.Num)*SectorSize
		var err error
		if r.Type == TypeDiscard {
			err = d.backend.Discard(off, length)
		} else {
			err = d.backend.WriteZeroes(off, length, s.Flags&flagUnmap != 0)
		}
		if err != nil {
			d.fail(err)
			return StatusIOErr
		}
	}
	return StatusOK
}
