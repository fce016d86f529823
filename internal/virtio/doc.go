// Package virtio implements the device side of virtio 1.2 split virtqueues
// and the plumbing every husk virtio device shares: feature negotiation, the
// Device and Interrupt interfaces, the embeddable Common, and the plain
// QueueState and CommonState that snapshots carry.
//
// # Trust
//
// Everything in a virtqueue is written by the guest and is hostile: ring
// indices, descriptor indices, lengths, addresses and flags. Every guest
// address goes through guestmem's bounds checks; every index is checked
// against the queue or indirect table size; chain walks are capped by the
// queue size (which also catches loops) and by MaxChainBytes. Misuse is
// reported as an *Error whose Kind names the case (ErrInvalidAvailIdx,
// ErrChainLoop, ErrIndirectInIndirect, ...), never as a panic.
//
// Two severities: a malformed chain (bad descriptor index, loop, bad
// indirect table, buffer outside RAM, ...) costs only that chain: Pop
// returns it to the driver with length 0 and the queue carries on. A Fatal
// error means the rings themselves are unusable (an available index that
// jumps more than the queue size, a head past the table): the device sets
// DEVICE_NEEDS_RESET with a configuration change interrupt (§2.1.2) and
// stops using the queue until the driver resets it (Activation.Fail, which
// Activation.Drain calls).
//
// # Threading
//
// A device has three kinds of caller:
//
//   - The transport (package mmio) calls Features, AckFeatures, ReadConfig,
//     WriteConfig, Activate and Reset on vCPU goroutines. These must not
//     block: Activate and Reset only publish or retract an *Activation with
//     an atomic store and ring the doorbell.
//   - One worker goroutine per device (Common.Start) owns the queues of the
//     current activation. It sleeps on the device's Doorbell, an eventfd that
//     KVM signals directly on a guest QueueNotify write (KVM_IOEVENTFD), and
//     processes every queue when woken. Queue methods are not safe for
//     concurrent use; only the worker calls them.
//   - The VMM calls Pause, Resume, SaveCommon, RestoreCommon and Close from
//     its own goroutine; these may block until the worker finishes the batch
//     it is processing.
//
// Interrupts go the other way: the worker calls Interrupt.UsedBuffer, which
// the transport turns into an InterruptStatus bit and an irqfd write.
//
// Close every device (which stops its worker) before unmapping guest memory:
// a worker may be reading or writing guest RAM until Close returns.
//
// # Writing a device
//
// Embed Common, call Init with the offered features and queue sizes, and
// Start with a process function; implement Type, ReadConfig, WriteConfig and
// Close. A request/response device implements ChainHandler and processes
// with Activation.Drain, which pops every chain, suppresses and re-enables
// notifications (EVENT_IDX aware) and raises the interrupt when the driver
// wants one, without allocating. Persistent device state goes in a plain
// State type in state.go; the generic state (CommonState, QueueState) is
// saved by the transport.
//
// # Memory ordering
//
// The guest driver runs concurrently on other CPUs. Ring accesses follow
// the barriers the spec requires (§2.7.7, §2.7.10, §2.7.13): a full fence
// (a locked read-modify-write) separates publishing the
// used index from reading used_event, and writing avail_event from
// re-reading the available index.
package virtio
