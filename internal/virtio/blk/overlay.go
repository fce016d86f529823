package blk

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// Overlay is a copy-on-write disk: a read-only base image, shared by every
// VM of a template, under a per-VM sparse overlay file (format in
// overlay_format.go). Creating an overlay copies nothing; a VM's writes go to
// its overlay and never reach the base.
//
// The map knows three states per block: from the base, written (data in the
// overlay) and zeroed. Discard and write-zeroes mark blocks zeroed, so they
// read back as zeros and never as base data. A write that covers part of a
// block not yet in the overlay copies the rest of the block from the base
// (or zeros) first.
//
// Durability: Flush makes the written data durable (fdatasync), then writes
// the changed map chunks and makes them durable (fdatasync again), so a map
// entry never points at data that a crash could lose. After a crash or kill
// -9, OpenOverlay sees everything up to the last completed Flush.
//
// Methods are safe for concurrent use; mu serialises them.
type Overlay struct {
	f    *os.File // the overlay file: header, map, data
	base *os.File // the base image, opened read-only
	hdr  header

	mu       sync.Mutex // guards the fields below and the file contents
	states   []byte     // packed 2-bit block states, the concatenated chunk payloads
	dirty    []bool     // per chunk: states changed since the last Flush
	nDirty   int        // number of dirty chunks
	cur      []uint8    // per chunk: the slot (0 or 1) holding its newest copy
	gen      uint64     // the newest generation on disk
	unsynced bool       // data written since the last Flush
	err      error      // sticky: a failed fdatasync poisons the overlay
	scratch  []byte     // one block, for read-modify-write
	zeros    []byte     // one block of zeros
	page     []byte     // one map page, for Flush
}

var _ Backend = (*Overlay)(nil)

// OverlayOptions configures CreateOverlay.
type OverlayOptions struct {
	// BlockSize is the copy-on-write granularity; 0 means DefaultBlockSize.
	BlockSize int
	// Size is the virtual disk size; 0 means the base size rounded up to a
	// sector. Base bytes past Size are not visible; disk bytes past the
	// base read as zeros.
	Size int64
}

// CreateOverlay creates an empty overlay over the base image at basePath.
// It writes one header page and sizes the file sparsely, so it costs the
// same for any base. The file appears atomically (written under a temporary
// name, synced, renamed) and path must not exist.
func CreateOverlay(path, basePath string, opt OverlayOptions) error {
	baseSize, err := imageSize(basePath)
	if err != nil {
		return fmt.Errorf("create overlay: %w", err)
	}
	h := header{blockSize: int64(opt.BlockSize), size: opt.Size, baseSize: baseSize}
	if h.blockSize == 0 {
		h.blockSize = DefaultBlockSize
	}
	if h.size == 0 {
		h.size = (h.baseSize + SectorSize - 1) / SectorSize * SectorSize
	}
	if err := h.validate(); err != nil {
		return fmt.Errorf("create overlay %s: %w", path, err)
	}
	h.layout()
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("create overlay %s: %w", path, os.ErrExist)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("create overlay: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	err = func() error {
		defer tmp.Close()
		if _, err := tmp.WriteAt(h.marshal(), 0); err != nil {
			return err
		}
		if err := tmp.Truncate(h.dataOff + h.blocks()*h.blockSize); err != nil {
			return err
		}
		return tmp.Sync()
	}()
	if err != nil {
		return fmt.Errorf("create overlay %s: %w", path, err)
	}
	if err := os.Link(tmp.Name(), path); err != nil { // fails if path exists
		return fmt.Errorf("create overlay %s: %w", path, err)
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

// OpenOverlay opens the overlay at path over the base image at basePath,
// which must have the size recorded at creation.
func OpenOverlay(path, basePath string) (_ *Overlay, err error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open overlay: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	hb := make([]byte, pageSize)
	if _, err := io.ReadFull(io.NewSectionReader(f, 0, pageSize), hb); err != nil {
		return nil, fmt.Errorf("read overlay header %s: %w", path, err)
	}
	h, err := unmarshalHeader(hb)
	if err != nil {
		return nil, fmt.Errorf("open overlay %s: %w", path, err)
	}
	if st, err := f.Stat(); err != nil {
		return nil, err
	} else if st.Size() < h.dataOff+h.blocks()*h.blockSize {
		return nil, fmt.Errorf("open overlay %s: %w: file truncated to %d bytes", path, ErrOverlayCorrupt, st.Size())
	}
	base, err := os.Open(basePath)
	if err != nil {
		return nil, fmt.Errorf("open overlay base: %w", err)
	}
	defer func() {
		if err != nil {
			base.Close()
		}
	}()
	if n, err := base.Seek(0, io.SeekEnd); err != nil {
		return nil, err
	} else if n != h.baseSize {
		return nil, fmt.Errorf("open overlay %s: base %s is %d bytes, overlay was made for %d", path, basePath, n, h.baseSize)
	}
	o := &Overlay{
		f: f, base: base, hdr: h,
		states:  make([]byte, h.chunks*slotPayload),
		dirty:   make([]bool, h.chunks),
		cur:     make([]uint8, h.chunks),
		scratch: make([]byte, h.blockSize),
		zeros:   make([]byte, h.blockSize),
		page:    make([]byte, pageSize),
	}
	if err := o.loadMap(); err != nil {
		return nil, fmt.Errorf("open overlay %s: %w", path, err)
	}
	return o, nil
}

// loadMap reads every chunk's two slots and keeps the newest valid one.
func (o *Overlay) loadMap() error {
	pair := make([]byte, 2*pageSize)
	for c := range o.hdr.chunks {
		if _, err := o.f.ReadAt(pair, slotOffset(c, 0)); err != nil {
			return fmt.Errorf("read map chunk %d: %w", c, err)
		}
		best, bestGen, found := uint8(0), uint64(0), false
		for s := range uint8(2) {
			gen, ok := decodeSlot(pair[int(s)*pageSize:(int(s)+1)*pageSize], c)
			if ok && (!found || gen > bestGen) {
				best, bestGen, found = s, gen, true
			}
		}
		if !found {
			return fmt.Errorf("%w: both copies of map chunk %d are damaged", ErrOverlayCorrupt, c)
		}
		payload := pair[int(best)*pageSize+slotHeader : (int(best)+1)*pageSize]
		for i, b := range payload {
			if b&(b>>1)&0x55 != 0 { // some 2-bit field holds 3
				return fmt.Errorf("%w: chunk %d byte %d holds state 3", ErrOverlayCorrupt, c, i)
			}
		}
		copy(o.states[c*slotPayload:], payload)
		o.cur[c] = best
		o.gen = max(o.gen, bestGen)
	}
	// Blocks past the end of the disk (the last chunk's tail) stay "base".
	for b := o.hdr.blocks(); b < o.hdr.chunks*blocksPerChunk; b++ {
		if o.state(b) != stateBase {
			return fmt.Errorf("%w: state %d for block %d past the end", ErrOverlayCorrupt, o.state(b), b)
		}
	}
	return nil
}

// Size returns the virtual disk size.
func (o *Overlay) Size() int64 { return o.hdr.size }

// BlockSize returns the copy-on-write block size.
func (o *Overlay) BlockSize() int { return int(o.hdr.blockSize) }

func (o *Overlay) state(b int64) byte { return o.states[b>>2] >> (2 * (b & 3)) & 3 }

func (o *Overlay) setState(b int64, s byte) {
	i, sh := b>>2, 2*(b&3)
	v := o.states[i]&^(3<<sh) | s<<sh
	if v == o.states[i] {
		return
	}
	o.states[i] = v
	if c := b / blocksPerChunk; !o.dirty[c] {
		o.dirty[c] = true
		o.nDirty++
	}
}

func (o *Overlay) check(off, n int64) error {
	if off < 0 || n < 0 || off > o.hdr.size || n > o.hdr.size-off {
		return fmt.Errorf("overlay access %d+%d outside %d bytes", off, n, o.hdr.size)
	}
	return nil
}

// ReadAt reads the disk: each run of blocks in one state from the base, the
// overlay or as zeros.
func (o *Overlay) ReadAt(p []byte, off int64) (int, error) {
	if err := o.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	bs := o.hdr.blockSize
	for done := int64(0); done < int64(len(p)); {
		pos := off + done
		b := pos / bs
		s := o.state(b)
		n := bs - pos%bs
		for nb := b + 1; n < int64(len(p))-done && nb < o.hdr.blocks() && o.state(nb) == s; nb++ {
			n += bs
		}
		n = min(n, int64(len(p))-done)
		q := p[done : done+n]
		switch s {
		case stateBase:
			if err := o.readBase(q, pos); err != nil {
				return int(done), err
			}
		case stateData:
			if err := readFull(o.f, q, o.hdr.dataOff+pos); err != nil {
				return int(done), err
			}
		default:
			clear(q)
		}
		done += n
	}
	return len(p), nil
}

// readBase reads base bytes at off; bytes past the base's end are zeros.
func (o *Overlay) readBase(p []byte, off int64) error {
	n := max(0, min(int64(len(p)), o.hdr.baseSize-off))
	clear(p[n:])
	return readFull(o.base, p[:n], off)
}

func readFull(f *os.File, p []byte, off int64) error {
	if len(p) == 0 {
		return nil
	}
	if _, err := f.ReadAt(p, off); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("read %s at %d: %w", f.Name(), off, err)
	}
	return nil
}

// WriteAt writes the disk. Whole blocks go straight to the overlay; a
// partial block not yet in the overlay is completed from the base (or zeros)
// first.
func (o *Overlay) WriteAt(p []byte, off int64) (int, error) {
	if err := o.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.err != nil {
		return 0, o.err
	}
	return o.writeLocked(p, off)
}

// Preconditions: o.mu is held; the range is inside the disk.
func (o *Overlay) writeLocked(p []byte, off int64) (int, error) {
	o.unsynced = true
	bs := o.hdr.blockSize
	for done := int64(0); done < int64(len(p)); {
		pos := off + done
		b, bo := pos/bs, pos%bs
		if bo == 0 && int64(len(p))-done >= bs {
			k := (int64(len(p)) - done) / bs
			if _, err := o.f.WriteAt(p[done:done+k*bs], o.hdr.dataOff+pos); err != nil {
				return int(done), fmt.Errorf("write overlay: %w", err)
			}
			for i := range k {
				o.setState(b+i, stateData)
			}
			done += k * bs
			continue
		}
		n := min(bs-bo, int64(len(p))-done)
		if o.state(b) == stateData {
			if _, err := o.f.WriteAt(p[done:done+n], o.hdr.dataOff+pos); err != nil {
				return int(done), fmt.Errorf("write overlay: %w", err)
			}
		} else {
			if o.state(b) == stateBase {
				if err := o.readBase(o.scratch, b*bs); err != nil {
					return int(done), err
				}
			} else {
				clear(o.scratch)
			}
			copy(o.scratch[bo:], p[done:done+n])
			if _, err := o.f.WriteAt(o.scratch, o.hdr.dataOff+b*bs); err != nil {
				return int(done), fmt.Errorf("write overlay: %w", err)
			}
			o.setState(b, stateData)
		}
		done += n
	}
	return len(p), nil
}

// Discard makes the range read as zeros (never as base data) and frees the
// overlay blocks it covers.
func (o *Overlay) Discard(off, n int64) error { return o.WriteZeroes(off, n, true) }

// WriteZeroes makes the range read as zeros: whole blocks become zeroed in
// the map and their overlay space is punched out; partial blocks at the ends
// are written with zeros.
func (o *Overlay) WriteZeroes(off, n int64, _ bool) error {
	if err := o.check(off, n); err != nil {
		return err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.err != nil {
		return o.err
	}
	bs := o.hdr.blockSize
	end := off + n
	first := (off + bs - 1) / bs // first whole block
	last := end / bs             // one past the last whole block
	if first >= last {           // no whole block: one or two partial pieces
		return o.zeroPartial(off, end)
	}
	if err := o.zeroPartial(off, first*bs); err != nil {
		return err
	}
	if err := o.zeroPartial(last*bs, end); err != nil {
		return err
	}
	for b := first; b < last; b++ {
		o.setState(b, stateZero)
	}
	// Reclaim the space; the map, not the hole, is what makes it read as
	// zeros, so a file system without hole punching is fine.
	_ = unix.Fallocate(int(o.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE,
		o.hdr.dataOff+first*bs, (last-first)*bs)
	return nil
}

// zeroPartial zeroes [from, to), which lies within blocks not wholly
// covered by the request.
//
// Preconditions: o.mu is held.
func (o *Overlay) zeroPartial(from, to int64) error {
	bs := o.hdr.blockSize
	for from < to {
		n := min(to-from, bs-from%bs)
		if o.state(from/bs) != stateZero {
			if _, err := o.writeLocked(o.zeros[:n], from); err != nil {
				return err
			}
		}
		from += n
	}
	return nil
}

// Flush makes all completed writes durable: fdatasync the data, then write
// each changed map chunk to its spare slot under a new generation, then
// fdatasync again. A failed fdatasync poisons the overlay: the page cache may
// have dropped the data, so later writes and flushes fail too.
func (o *Overlay) Flush() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.flushLocked()
}

func (o *Overlay) flushLocked() error {
	if o.err != nil {
		return o.err
	}
	if !o.unsynced && o.nDirty == 0 {
		return nil
	}
	if err := unix.Fdatasync(int(o.f.Fd())); err != nil {
		o.err = fmt.Errorf("fdatasync overlay %s: %w", o.f.Name(), err)
		return o.err
	}
	o.unsynced = false
	if o.nDirty == 0 {
		return nil
	}
	o.gen++
	for c, d := range o.dirty {
		if !d {
			continue
		}
		slot := 1 - o.cur[c]
		encodeSlot(o.page, o.gen, int64(c), o.states[c*slotPayload:(c+1)*slotPayload])
		if _, err := o.f.WriteAt(o.page, slotOffset(int64(c), slot)); err != nil {
			return fmt.Errorf("write overlay map chunk %d: %w", c, err)
		}
		o.cur[c] = slot
		o.dirty[c] = false
		o.nDirty--
	}
	if err := unix.Fdatasync(int(o.f.Fd())); err != nil {
		o.err = fmt.Errorf("fdatasync overlay map %s: %w", o.f.Name(), err)
		return o.err
	}
	return nil
}

// BlockCounts returns how many blocks are in each state.
func (o *Overlay) BlockCounts() (base, data, zero int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for b := range o.hdr.blocks() {
		switch o.state(b) {
		case stateData:
			data++
		case stateZero:
			zero++
		default:
			base++
		}
	}
	return base, data, zero
}

// Close flushes and closes both files.
func (o *Overlay) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	err := o.flushLocked()
	return errors.Join(err, o.f.Close(), o.base.Close())
}

// imageSize is the size of a disk image: a file or a block device (whose
// stat size is 0, while seeking to its end gives its size).
func imageSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return f.Seek(0, io.SeekEnd)
}
