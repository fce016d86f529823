package virtio

import "github.com/huskvm/husk/internal/guestmem"

// QueueState is the serialisable state of one activated queue: the driver's
// configuration and the device's position in the rings. Field order is the
// wire format.
type QueueState struct {
	Index     uint16
	Size      uint16
	DescTable uint64
	AvailRing uint64
	UsedRing  uint64
	EventIdx  bool
	Indirect  bool
	// NextAvail is the next available ring slot the device will consume.
	NextAvail uint16
	// NextUsed is the next used ring slot, and the published used idx.
	NextUsed uint16
	// SignalledUsed is the used idx at the last interrupt decision.
	SignalledUsed uint16
	// Broken is the kind of fatal error that stopped the queue, 0 if none;
	// a restored queue stays broken.
	Broken ErrorKind
}

// State returns the queue's state.
//
// Preconditions: the worker that owns q is paused (Common.Pause).
func (q *Queue) State() QueueState {
	return QueueState{
		Index: q.cfg.Index, Size: q.cfg.Size,
		DescTable: q.cfg.DescTable, AvailRing: q.cfg.AvailRing, UsedRing: q.cfg.UsedRing,
		EventIdx: q.cfg.EventIdx, Indirect: q.cfg.Indirect,
		NextAvail: q.nextAvail, NextUsed: q.nextUsed, SignalledUsed: q.signalled,
		Broken: q.brokenKind(),
	}
}

func (q *Queue) brokenKind() ErrorKind {
	if q.broken == nil {
		return 0
	}
	return q.broken.Kind
}

// RestoreQueue rebuilds a queue from s, checking it against mem as NewQueue
// does. The cached available index is derived, not saved: it is rebuilt
// from NextAvail and re-read from the ring on the first Pop.
func RestoreQueue(mem *guestmem.Memory, s QueueState) (*Queue, error) {
	q, err := NewQueue(mem, QueueConfig{
		Index: s.Index, Size: s.Size,
		DescTable: s.DescTable, AvailRing: s.AvailRing, UsedRing: s.UsedRing,
		EventIdx: s.EventIdx, Indirect: s.Indirect,
	})
	if err != nil {
		return nil, err
	}
	q.nextAvail, q.availCache = s.NextAvail, s.NextAvail
	q.nextUsed, q.signalled = s.NextUsed, s.SignalledUsed
	if s.Broken != 0 {
		q.broken = &Error{Kind: s.Broken, Queue: s.Index, Index: uint32(s.NextAvail)}
	}
	return q, nil
}
