package virtio

import "fmt"

// ErrorKind names one way a driver can misuse a virtqueue. Each kind is also
// an error, so callers can test for a case with errors.Is(err, ErrChainLoop).
type ErrorKind uint8

// Guest misuse cases (virtio 1.2 §2.7). The doc line of each is its message.
const (
	// ErrInvalidAvailIdx: the available index moved more than the queue size
	// past the device's position (§2.7.6). Fatal.
	ErrInvalidAvailIdx ErrorKind = iota + 1
	// ErrHeadOutOfRange: an available ring entry names a descriptor past the
	// end of the descriptor table. Fatal: the head cannot even be returned.
	ErrHeadOutOfRange
	// ErrDescIndexOutOfRange: a descriptor's next field points past the end
	// of its table.
	ErrDescIndexOutOfRange
	// ErrChainLoop: a chain visits more descriptors than its table holds, so
	// it revisits one.
	ErrChainLoop
	// ErrChainTooLong: a chain (direct plus indirect) has more buffers than
	// the queue size (§2.7.5.3.1).
	ErrChainTooLong
	// ErrChainTooBig: the buffers of a chain add up to more than
	// MaxChainBytes.
	ErrChainTooBig
	// ErrIndirectNotNegotiated: VIRTQ_DESC_F_INDIRECT without
	// VIRTIO_F_INDIRECT_DESC.
	ErrIndirectNotNegotiated
	// ErrIndirectInIndirect: an indirect table contains an indirect
	// descriptor (§2.7.5.3.1).
	ErrIndirectInIndirect
	// ErrIndirectWithNext: a descriptor has both INDIRECT and NEXT set.
	ErrIndirectWithNext
	// ErrIndirectLength: an indirect table length is zero or not a multiple
	// of 16.
	ErrIndirectLength
	// ErrIndirectTooLarge: an indirect table has more entries than the queue
	// size.
	ErrIndirectTooLarge
	// ErrReadableAfterWritable: a device-readable descriptor follows a
	// device-writable one (§2.7.4.2).
	ErrReadableAfterWritable
	// ErrDescAddress: a buffer or indirect table is not inside guest RAM.
	ErrDescAddress
	// ErrQueueSize: the queue size is zero, not a power of two, or above the
	// maximum (§2.7).
	ErrQueueSize
	// ErrRingAlignment: a ring address breaks the alignment of §2.7
	// (descriptor table 16, available ring 2, used ring 4).
	ErrRingAlignment
	// ErrRingAddress: a ring does not lie inside guest RAM.
	ErrRingAddress
	// ErrUsedHead: the device returned a head index past the queue size (a
	// device bug, not guest misuse).
	ErrUsedHead
)

var kindText = [...]string{
	ErrInvalidAvailIdx:       "invalid available index",
	ErrHeadOutOfRange:        "chain head out of range",
	ErrDescIndexOutOfRange:   "descriptor index out of range",
	ErrChainLoop:             "descriptor chain loops",
	ErrChainTooLong:          "descriptor chain longer than the queue size",
	ErrChainTooBig:           "descriptor chain buffers exceed the byte limit",
	ErrIndirectNotNegotiated: "indirect descriptor without VIRTIO_F_INDIRECT_DESC",
	ErrIndirectInIndirect:    "indirect descriptor inside an indirect table",
	ErrIndirectWithNext:      "indirect descriptor with NEXT set",
	ErrIndirectLength:        "indirect table length not a positive multiple of 16",
	ErrIndirectTooLarge:      "indirect table larger than the queue size",
	ErrReadableAfterWritable: "device-readable descriptor after a device-writable one",
	ErrDescAddress:           "descriptor buffer outside guest memory",
	ErrQueueSize:             "invalid queue size",
	ErrRingAlignment:         "misaligned ring address",
	ErrRingAddress:           "ring outside guest memory",
	ErrUsedHead:              "used head out of range",
}

func (k ErrorKind) Error() string {
	if int(k) < len(kindText) && kindText[k] != "" {
		return kindText[k]
	}
	return fmt.Sprintf("virtqueue error %d", uint8(k))
}

// Fatal reports whether the kind leaves the queue unusable until a reset.
func (k ErrorKind) Fatal() bool {
	switch k {
	case ErrInvalidAvailIdx, ErrHeadOutOfRange:
		return true
	}
	return false
}

// Error reports a guest misuse of a virtqueue (the Go twin of Firecracker's
// InvalidAvailIdx and rust-vmm's virtio-queue Error).
type Error struct {
	Kind  ErrorKind
	Queue uint16 // queue index
	Head  uint16 // chain head, for chain errors
	Index uint32 // the descriptor or ring slot involved
	Value uint64 // the offending value: an index, length or address
	Err   error  // the underlying cause, e.g. a *guestmem.RangeError
}

func (e *Error) Error() string {
	s := fmt.Sprintf("virtqueue %d: %s", e.Queue, e.Kind.Error())
	switch e.Kind {
	case ErrInvalidAvailIdx:
		s += fmt.Sprintf(": avail idx %d, device at %d", e.Value, e.Index)
	case ErrQueueSize:
		s += fmt.Sprintf(": %d", e.Value)
	case ErrRingAlignment, ErrRingAddress:
		s += fmt.Sprintf(": %#x", e.Value)
	case ErrUsedHead:
		s += fmt.Sprintf(": %d", e.Value)
	default:
		s += fmt.Sprintf(" (head %d, descriptor %d, value %#x)", e.Head, e.Index, e.Value)
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the underlying cause.
func (e *Error) Unwrap() error { return e.Err }

// Is makes errors.Is(err, kind) match an *Error of that kind.
func (e *Error) Is(target error) bool {
	k, ok := target.(ErrorKind)
	return ok && k == e.Kind
}

// Fatal reports whether the queue is unusable until the driver resets the
// device.
func (e *Error) Fatal() bool { return e.Kind.Fatal() }
