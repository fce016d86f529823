package virtio

// ChainHandler serves request/response queues, where every chain is
// complete when handled (block, rng). Devices whose chains wait for host
// events (vsock and net receive queues) run their own loops over Pop.
type ChainHandler interface {
	// HandleChain serves one chain and returns the number of bytes it
	// wrote into the chain's writable part.
	HandleChain(q *Queue, c *Chain) uint32
	// BadChain is told about a malformed chain that Pop has already
	// returned to the driver; it should log it, rate-limited.
	BadChain(q *Queue, err error)
}

// Drain serves q until it is empty with notifications re-enabled (the
// driver's next kick wakes the worker), or the activation stops. It raises a
// used buffer notification when the driver wants one (§2.7.7.2) and fails
// the activation on a fatal queue error (DEVICE_NEEDS_RESET). Drain itself
// does not allocate.
func (a *Activation) Drain(q *Queue, h ChainHandler) {
	for !a.Stopped() {
		q.DisableNotification()
		for !a.Stopped() {
			c, err := q.Pop()
			if err != nil {
				h.BadChain(q, err)
				if IsFatal(err) {
					a.Fail()
					return
				}
				continue
			}
			if c == nil {
				break
			}
			if err := q.AddUsed(c.Head, h.HandleChain(q, c)); err != nil {
				h.BadChain(q, err)
				a.Fail()
				return
			}
		}
		if q.NeedsInterrupt() {
			a.Interrupt.UsedBuffer()
		}
		more, err := q.EnableNotification()
		if err != nil {
			h.BadChain(q, err)
			a.Fail()
			return
		}
		if !more {
			return
		}
	}
}

// IsFatal reports whether err, from a Queue method, leaves the queue
// unusable until the driver resets the device. Errors that are not an *Error
// count as fatal.
func IsFatal(err error) bool {
	e, ok := err.(*Error)
	return !ok || e.Fatal()
}
