package virtio

import (
	"fmt"

	"github.com/huskvm/husk/internal/guestmem"
)

// CommonState is the serialisable generic state of a virtio device. Field
// order is the wire format. The activation's memory and interrupt are not
// state: they are passed to RestoreCommon.
type CommonState struct {
	AckedFeatures uint64
	// Activated says the driver had set DRIVER_OK and not reset since.
	Activated bool
	// Failed says the activation ended with DEVICE_NEEDS_RESET.
	Failed bool
	// Queues holds one entry per queue when Activated.
	Queues []QueueState
}

// SaveCommon returns the device's generic state. It waits for the worker to
// finish its batch; for a consistent snapshot, Pause first.
func (c *Common) SaveCommon() CommonState {
	c.procMu.Lock()
	defer c.procMu.Unlock()
	s := CommonState{AckedFeatures: c.acked.Load()}
	a := c.act.Load()
	if a == nil {
		return s
	}
	s.Activated, s.Failed = true, a.failed.Load()
	for _, q := range a.Queues {
		s.Queues = append(s.Queues, q.State())
	}
	return s
}

// RestoreCommon replaces the device's generic state with s. If s is
// activated, the queues are rebuilt against mem and the worker is woken to
// pick up where the saved device stopped; irq is the restored transport's
// interrupt.
func (c *Common) RestoreCommon(s CommonState, mem *guestmem.Memory, irq Interrupt) error {
	if extra := s.AckedFeatures &^ c.features; extra != 0 {
		return fmt.Errorf("restore virtio state: acked features %#x not offered", extra)
	}
	var a *Activation
	if s.Activated {
		if len(s.Queues) != len(c.queueSizes) {
			return fmt.Errorf("restore virtio state: %d queues, device has %d", len(s.Queues), len(c.queueSizes))
		}
		if mem == nil || irq == nil {
			return fmt.Errorf("restore virtio state: active device needs memory and an interrupt")
		}
		qs := make([]*Queue, len(s.Queues))
		for i, qs0 := range s.Queues {
			if qs0.Size > c.queueSizes[i] {
				return fmt.Errorf("restore virtio state: queue %d size %d above maximum %d", i, qs0.Size, c.queueSizes[i])
			}
			q, err := RestoreQueue(mem, qs0)
			if err != nil {
				return fmt.Errorf("restore virtio queue %d: %w", i, err)
			}
			qs[i] = q
		}
		a = &Activation{Mem: mem, Queues: qs, Interrupt: irq}
		if s.Failed {
			a.failed.Store(true)
			a.stopped.Store(true)
		}
	}
	c.procMu.Lock()
	c.acked.Store(s.AckedFeatures)
	if old := c.act.Swap(a); old != nil {
		old.stopped.Store(true)
	}
	c.procMu.Unlock()
	c.bell.Ring()
	return nil
}
