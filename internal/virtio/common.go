package virtio

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/huskvm/husk/internal/guestmem"
)

// MaxQueues caps the queues of one device.
const MaxQueues = 64

// Activation is one period of a device being live: from DRIVER_OK to the
// next reset. The worker receives it in its process function; the queues
// belong to the worker.
type Activation struct {
	Mem       *guestmem.Memory
	Queues    []*Queue
	Interrupt Interrupt

	stopped atomic.Bool // set by Reset or Fail; the worker drops the queues
	failed  atomic.Bool // Fail has run
}

// Stopped reports whether the activation has ended. A worker checks it
// between chains and gives up the batch when it is set.
func (a *Activation) Stopped() bool { return a.stopped.Load() }

// Fail ends the activation after a fatal queue error: the device sets
// DEVICE_NEEDS_RESET (once) and stops processing until the driver resets it.
func (a *Activation) Fail() {
	if a.failed.CompareAndSwap(false, true) {
		a.Interrupt.NeedsReset()
	}
	a.stopped.Store(true)
}

// Common is the plumbing shared by every virtio device, meant to be
// embedded: offered and acked features (unrequested bits masked, as
// cloud-hypervisor's ack_features does), the queue sizes, the doorbell, the
// current activation and the worker goroutine.
//
// Activate and Reset publish and retract the activation with an atomic
// pointer, so they never wait for the worker. The worker holds procMu while
// it processes a batch; Pause, SaveCommon and RestoreCommon take it to wait
// for the worker to be idle.
type Common struct {
	features   uint64    // offered; set by Init
	queueSizes []uint16  // maximum size per queue; set by Init
	bell       *Doorbell // wakes the worker; set by Init

	acked atomic.Uint64
	act   atomic.Pointer[Activation] // nil when not activated

	procMu sync.Mutex    // held by the worker while processing; guards paused
	paused bool          // the worker skips processing while set
	done   chan struct{} // closed when the worker exits; nil before Start
}

// Init sets the device's offered features and queue sizes and creates the
// doorbell. features may include TransportFeatures bits but no other bit in
// the reserved range 24-49; FeatureVersion1 is always added.
func (c *Common) Init(features uint64, queueSizes []uint16) error {
	if extra := features & reservedFeatures &^ TransportFeatures; extra != 0 {
		return fmt.Errorf("virtio device offers reserved feature bits %#x", extra)
	}
	if len(queueSizes) == 0 || len(queueSizes) > MaxQueues {
		return fmt.Errorf("virtio device with %d queues (want 1..%d)", len(queueSizes), MaxQueues)
	}
	for i, n := range queueSizes {
		if n == 0 || n > MaxQueueSize || n&(n-1) != 0 {
			return fmt.Errorf("virtio queue %d: maximum size %d is not a power of two up to %d", i, n, MaxQueueSize)
		}
	}
	bell, err := NewDoorbell()
	if err != nil {
		return err
	}
	c.features = features | FeatureVersion1
	c.queueSizes = append([]uint16(nil), queueSizes...)
	c.bell = bell
	return nil
}

// Features returns the offered feature bits.
func (c *Common) Features() uint64 { return c.features }

// AckFeatures records driver & Features() and returns it: bits the device
// did not offer are dropped.
func (c *Common) AckFeatures(driver uint64) uint64 {
	a := driver & c.features
	c.acked.Store(a)
	return a
}

// AckedFeatures returns the features the driver accepted.
func (c *Common) AckedFeatures() uint64 { return c.acked.Load() }

// QueueMaxSizes returns each queue's maximum size.
func (c *Common) QueueMaxSizes() []uint16 { return c.queueSizes }

// Doorbell returns the worker's doorbell.
func (c *Common) Doorbell() *Doorbell { return c.bell }

// Active returns the current activation, or nil.
func (c *Common) Active() *Activation { return c.act.Load() }

// Activate publishes the queues to the worker and wakes it. Every queue must
// be present and no larger than its maximum.
func (c *Common) Activate(mem *guestmem.Memory, queues []*Queue, irq Interrupt) error {
	if mem == nil || irq == nil {
		return errors.New("virtio activate: nil memory or interrupt")
	}
	if len(queues) != len(c.queueSizes) {
		return fmt.Errorf("virtio activate: %d queues, device has %d", len(queues), len(c.queueSizes))
	}
	for i, q := range queues {
		if q == nil {
			return fmt.Errorf("virtio activate: queue %d not ready", i)
		}
		if q.Size() > c.queueSizes[i] {
			return fmt.Errorf("virtio activate: queue %d size %d above maximum %d", i, q.Size(), c.queueSizes[i])
		}
	}
	a := &Activation{Mem: mem, Queues: queues, Interrupt: irq}
	if !c.act.CompareAndSwap(nil, a) {
		return errors.New("virtio activate: device already active")
	}
	c.bell.Ring()
	return nil
}

// Reset retracts the activation and forgets the acked features. It does not
// wait: a worker in the middle of a batch notices Stopped and drops it.
func (c *Common) Reset() {
	if old := c.act.Swap(nil); old != nil {
		old.stopped.Store(true)
	}
	c.acked.Store(0)
}

// Start runs process on a new worker goroutine each time the doorbell rings
// while the device is active, not stopped and not paused. process is called
// with the worker lock held.
func (c *Common) Start(process func(a *Activation)) {
	c.done = make(chan struct{})
	go c.run(process)
}

func (c *Common) run(process func(a *Activation)) {
	defer close(c.done)
	for {
		if err := c.bell.Wait(); err != nil {
			return // closed
		}
		c.procMu.Lock()
		if a := c.act.Load(); a != nil && !c.paused && !a.Stopped() {
			process(a)
		}
		c.procMu.Unlock()
	}
}

// Pause waits for the worker to finish its batch and keeps it from starting
// another until Resume.
func (c *Common) Pause() {
	c.procMu.Lock()
	c.paused = true
	c.procMu.Unlock()
}

// Resume lets the worker run again and wakes it to look for work that
// arrived meanwhile.
func (c *Common) Resume() {
	c.procMu.Lock()
	c.paused = false
	c.procMu.Unlock()
	c.bell.Ring()
}

// Close closes the doorbell and waits for the worker to exit.
func (c *Common) Close() error {
	if c.bell == nil {
		return nil
	}
	err := c.bell.Close()
	if c.done != nil {
		<-c.done
	}
	return err
}
