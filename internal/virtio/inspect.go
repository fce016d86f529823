package virtio

import "encoding/binary"

// QueueView is a queue's state as a person debugging a stuck device needs
// it: the device's own positions and, read live from guest memory, the
// driver's side of the rings.
type QueueView struct {
	QueueState
	AvailFlags uint16 // the driver's NO_INTERRUPT hint
	AvailIdx   uint16 // chains the driver has made available
	UsedEvent  uint16 // with EVENT_IDX: interrupt once used idx passes it
	UsedFlags  uint16 // our NO_NOTIFY hint
	UsedIdx    uint16 // chains we have returned, as the driver sees it
	AvailEvent uint16 // with EVENT_IDX: the driver kicks once avail idx passes it
}

// view returns q's state and its rings' indices. The ring fields are plain
// reads of memory the driver writes concurrently: a snapshot for a person,
// not input to any decision.
func (q *Queue) view() QueueView {
	n := uint32(q.cfg.Size)
	return QueueView{
		QueueState: q.State(),
		AvailFlags: binary.LittleEndian.Uint16(q.avail[0:]),
		AvailIdx:   binary.LittleEndian.Uint16(q.avail[2:]),
		UsedEvent:  binary.LittleEndian.Uint16(q.avail[4+2*n:]),
		UsedFlags:  binary.LittleEndian.Uint16(q.used[0:]),
		UsedIdx:    binary.LittleEndian.Uint16(q.used[2:]),
		AvailEvent: binary.LittleEndian.Uint16(q.used[4+8*n:]),
	}
}

// Inspect returns the state of the device's queues, or nil when it is not
// activated. It waits for the worker to finish its current batch, so the
// device's positions are consistent with each other.
func (c *Common) Inspect() []QueueView {
	c.procMu.Lock()
	defer c.procMu.Unlock()
	a := c.act.Load()
	if a == nil {
		return nil
	}
	v := make([]QueueView, len(a.Queues))
	for i, q := range a.Queues {
		v[i] = q.view()
	}
	return v
}
