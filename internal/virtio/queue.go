package virtio

import (
	"encoding/binary"
	"sync/atomic"

	"github.com/huskvm/husk/internal/guestmem"
)

// Split virtqueue layout (virtio 1.2 §2.7) for a queue of size N, all
// fields little-endian:
//
//	descriptor table, align 16, N × 16 bytes, driver-written
//	   0  le64 addr
//	   8  le32 len
//	  12  le16 flags        NEXT 1, WRITE 2, INDIRECT 4
//	  14  le16 next
//	available ring, align 2, 6 + 2N bytes, driver-written
//	   0  le16 flags        NO_INTERRUPT 1
//	   2  le16 idx
//	   4  le16 ring[N]      chain heads
//	4+2N  le16 used_event   (VIRTIO_F_EVENT_IDX)
//	used ring, align 4, 6 + 8N bytes, device-written
//	   0  le16 flags        NO_NOTIFY 1
//	   2  le16 idx
//	   4  {le32 id; le32 len} ring[N]
//	4+8N  le16 avail_event  (VIRTIO_F_EVENT_IDX)
const (
	descSize = 16

	descFNext     = 1
	descFWrite    = 2
	descFIndirect = 4

	availFNoInterrupt = 1
	usedFNoNotify     = 1
)

const (
	// MaxQueueSize is the largest split queue size (§2.7: 32768).
	MaxQueueSize = 32768
	// MaxChainBytes caps the total length of one chain's buffers. Buffers
	// may overlap, so the sum says nothing about real memory; devices bound
	// their own work further (rng serves at most 64 KiB per request). Block
	// advertises seg_max × size_max below this cap.
	MaxChainBytes = 64 << 20
)

// QueueConfig is what the driver told the transport about one queue.
type QueueConfig struct {
	Index     uint16 // queue index, for errors
	Size      uint16 // negotiated size: a power of two, 1..MaxQueueSize
	DescTable uint64 // guest address of the descriptor table
	AvailRing uint64 // guest address of the available (driver) ring
	UsedRing  uint64 // guest address of the used (device) ring
	EventIdx  bool   // VIRTIO_F_EVENT_IDX was negotiated
	Indirect  bool   // VIRTIO_F_INDIRECT_DESC was negotiated
}

// Queue is the device side of one split virtqueue.
//
// A Queue is owned by its device's worker goroutine: its methods are not safe
// for concurrent use. The ring memory it holds aliases guest RAM that the
// driver writes concurrently; every value read from it is checked before use.
// Pop and AddUsed do not allocate.
type Queue struct {
	cfg   QueueConfig
	mem   *guestmem.Memory
	desc  []byte // descriptor table, 16 × size bytes
	avail []byte // available ring, 6 + 2 × size bytes
	used  []byte // used ring, 6 + 8 × size bytes
	mask  uint16 // size - 1

	nextAvail  uint16 // next available ring slot to consume
	availCache uint16 // the available index last read from the ring
	nextUsed   uint16 // next used ring slot to fill, also the published idx
	signalled  uint16 // used idx when NeedsInterrupt last ran
	broken     *Error // the fatal error that stopped the queue, if any

	fenceWord uint32 // target of the locked RMW in fence

	chain Chain     // the chain Pop returns, reused
	segs  []Segment // its segments; cap is the queue size
}

// NewQueue checks cfg against guest memory and returns a queue positioned at
// the start of its rings (§2.7: size a power of two; rings aligned and
// inside RAM).
func NewQueue(mem *guestmem.Memory, cfg QueueConfig) (*Queue, error) {
	q := &Queue{cfg: cfg, mem: mem}
	bad := func(k ErrorKind, v uint64, err error) *Error {
		return &Error{Kind: k, Queue: cfg.Index, Value: v, Err: err}
	}
	n := uint64(cfg.Size)
	if n == 0 || n > MaxQueueSize || n&(n-1) != 0 {
		return nil, bad(ErrQueueSize, n, nil)
	}
	for _, r := range []struct {
		addr, align, size uint64
		dst               *[]byte
	}{
		{cfg.DescTable, 16, descSize * n, &q.desc},
		{cfg.AvailRing, 2, 6 + 2*n, &q.avail},
		{cfg.UsedRing, 4, 6 + 8*n, &q.used},
	} {
		if r.addr%r.align != 0 {
			return nil, bad(ErrRingAlignment, r.addr, nil)
		}
		b, err := mem.Slice(r.addr, r.size)
		if err != nil {
			return nil, bad(ErrRingAddress, r.addr, err)
		}
		*r.dst = b
	}
	q.mask = cfg.Size - 1
	q.segs = make([]Segment, 0, cfg.Size)
	return q, nil
}

// Config returns the configuration the queue was built from.
func (q *Queue) Config() QueueConfig { return q.cfg }

// Size returns the queue size.
func (q *Queue) Size() uint16 { return q.cfg.Size }

// Broken returns the fatal error that stopped the queue, or nil.
func (q *Queue) Broken() error {
	if q.broken == nil {
		return nil
	}
	return q.broken
}

// fence is a full memory barrier between the device's ring accesses and the
// driver's (the virtio_mb of §2.7.7.2 and §2.7.10). A locked read-modify-write
// orders every earlier load and store before every later one on x86, and the
// Go compiler does not move memory accesses across an atomic operation.
func (q *Queue) fence() { atomic.AddUint32(&q.fenceWord, 1) }

func (q *Queue) fail(e *Error) *Error {
	q.broken = e
	return e
}

// pending reads the driver's available index and returns how many chains are
// waiting. An index more than the queue size ahead breaks the queue.
func (q *Queue) pending() (uint16, error) {
	idx := binary.LittleEndian.Uint16(q.avail[2:])
	n := idx - q.nextAvail
	if n > q.cfg.Size {
		return 0, q.fail(&Error{Kind: ErrInvalidAvailIdx, Queue: q.cfg.Index, Index: uint32(q.nextAvail), Value: uint64(idx)})
	}
	q.availCache = idx
	return n, nil
}

// Pop takes the next available chain (§2.7.13). It returns:
//
//   - (nil, nil) when the driver has made nothing new available;
//   - (c, nil) for a valid chain, which stays valid until the next Pop;
//   - (nil, err) with a non-fatal *Error for a malformed chain. Side effect:
//     Pop has already returned its head to the used ring with length 0, so
//     the driver gets it back; the device logs and carries on;
//   - (nil, err) with a fatal *Error when the rings are corrupt. The queue is
//     broken and every later call returns the same error; the device should
//     ask for a reset (Interrupt.NeedsReset).
func (q *Queue) Pop() (*Chain, error) {
	if q.broken != nil {
		return nil, q.broken
	}
	if q.nextAvail == q.availCache {
		n, err := q.pending()
		if err != nil || n == 0 {
			return nil, err
		}
		q.fence() // read the ring entries after the index that published them
	}
	head := binary.LittleEndian.Uint16(q.avail[4+2*uint32(q.nextAvail&q.mask):])
	q.nextAvail++
	if head >= q.cfg.Size {
		return nil, q.fail(&Error{Kind: ErrHeadOutOfRange, Queue: q.cfg.Index, Head: head, Index: uint32(head), Value: uint64(head)})
	}
	if err := q.walk(head); err != nil {
		if uerr := q.AddUsed(head, 0); uerr != nil {
			return nil, uerr
		}
		return nil, err
	}
	return &q.chain, nil
}

// walk resolves the chain starting at head into q.chain, checking every rule
// of §2.7.5 on the way. It stops at the first violation.
func (q *Queue) walk(head uint16) error {
	c := &q.chain
	*c = Chain{Head: head}
	segs := q.segs[:0]
	bad := func(k ErrorKind, idx uint32, v uint64, err error) error {
		return &Error{Kind: k, Queue: q.cfg.Index, Head: head, Index: idx, Value: v, Err: err}
	}
	table := q.desc
	n := uint32(q.cfg.Size) // entries in the current table
	idx := uint32(head)
	steps := uint32(0) // descriptors visited in the current table
	indirect := false
	var total uint64
	for {
		if idx >= n {
			return bad(ErrDescIndexOutOfRange, idx, uint64(n), nil)
		}
		if steps++; steps > n {
			return bad(ErrChainLoop, idx, uint64(steps), nil)
		}
		d := table[descSize*idx : descSize*idx+descSize]
		addr := binary.LittleEndian.Uint64(d[0:])
		length := binary.LittleEndian.Uint32(d[8:])
		flags := binary.LittleEndian.Uint16(d[12:])
		next := binary.LittleEndian.Uint16(d[14:])

		if flags&descFIndirect != 0 {
			// §2.7.5.3: the descriptor names a table that holds the rest
			// of the chain. Its WRITE flag is ignored.
			switch {
			case indirect:
				return bad(ErrIndirectInIndirect, idx, uint64(flags), nil)
			case !q.cfg.Indirect:
				return bad(ErrIndirectNotNegotiated, idx, uint64(flags), nil)
			case flags&descFNext != 0:
				return bad(ErrIndirectWithNext, idx, uint64(flags), nil)
			case length == 0 || length%descSize != 0:
				return bad(ErrIndirectLength, idx, uint64(length), nil)
			case length/descSize > uint32(q.cfg.Size):
				return bad(ErrIndirectTooLarge, idx, uint64(length), nil)
			}
			t, err := q.mem.Slice(addr, uint64(length))
			if err != nil {
				return bad(ErrDescAddress, idx, addr, err)
			}
			table, n, idx, steps, indirect = t, length/descSize, 0, 0, true
			continue
		}

		writable := flags&descFWrite != 0
		if !writable && len(segs) > c.nRead {
			return bad(ErrReadableAfterWritable, idx, uint64(flags), nil)
		}
		if len(segs) == cap(segs) {
			return bad(ErrChainTooLong, idx, uint64(len(segs)+1), nil)
		}
		if total += uint64(length); total > MaxChainBytes {
			return bad(ErrChainTooBig, idx, total, nil)
		}
		buf, err := q.mem.Slice(addr, uint64(length))
		if err != nil {
			return bad(ErrDescAddress, idx, addr, err)
		}
		segs = append(segs, Segment{Addr: addr, Buf: buf, Writable: writable})
		if writable {
			c.writeLen += int(length)
		} else {
			c.nRead++
			c.readLen += int(length)
		}
		if flags&descFNext == 0 {
			break
		}
		idx = uint32(next)
	}
	c.segs = segs
	return nil
}

// AddUsed returns a chain to the driver with the number of bytes the device
// wrote into it (§2.7.8), publishing the new used index. It does not notify
// the driver; call NeedsInterrupt after a batch.
func (q *Queue) AddUsed(head uint16, written uint32) error {
	if q.broken != nil {
		return q.broken
	}
	if head >= q.cfg.Size {
		return &Error{Kind: ErrUsedHead, Queue: q.cfg.Index, Value: uint64(head)}
	}
	e := q.used[4+8*uint32(q.nextUsed&q.mask):]
	binary.LittleEndian.PutUint32(e[0:], uint32(head))
	binary.LittleEndian.PutUint32(e[4:], written)
	q.nextUsed++
	q.fence() // the element is visible before the index that publishes it
	binary.LittleEndian.PutUint16(q.used[2:], q.nextUsed)
	return nil
}

// NeedsInterrupt reports whether the driver wants a used buffer notification
// for the chains added since the previous call (§2.7.7.2 and, with
// VIRTIO_F_EVENT_IDX, §2.7.10's vring_need_event on used_event).
func (q *Queue) NeedsInterrupt() bool {
	if q.broken != nil {
		return false
	}
	q.fence() // publish used idx before reading the driver's suppression state
	newIdx, old := q.nextUsed, q.signalled
	q.signalled = newIdx
	if newIdx == old {
		return false
	}
	if q.cfg.EventIdx {
		event := binary.LittleEndian.Uint16(q.avail[4+2*uint32(q.cfg.Size):])
		return newIdx-event-1 < newIdx-old
	}
	return binary.LittleEndian.Uint16(q.avail[0:])&availFNoInterrupt == 0
}

// DisableNotification asks the driver not to notify the device while it
// works through the queue. With VIRTIO_F_EVENT_IDX nothing needs writing:
// avail_event stays behind the driver, which then does not kick (§2.7.10).
func (q *Queue) DisableNotification() {
	if q.broken == nil && !q.cfg.EventIdx {
		binary.LittleEndian.PutUint16(q.used[0:], usedFNoNotify)
	}
}

// EnableNotification asks the driver to notify the device about the next
// chain it makes available, then re-reads the available index to close the
// race with a driver that added one meanwhile (§2.7.10). It returns true if
// chains are waiting, in which case the device should keep popping.
func (q *Queue) EnableNotification() (bool, error) {
	if q.broken != nil {
		return false, q.broken
	}
	if q.cfg.EventIdx {
		binary.LittleEndian.PutUint16(q.used[4+8*uint32(q.cfg.Size):], q.nextAvail)
	} else {
		binary.LittleEndian.PutUint16(q.used[0:], 0)
	}
	q.fence() // the driver must see avail_event before we look at avail idx
	n, err := q.pending()
	return n > 0, err
}
