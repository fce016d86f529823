package virtio_test

import (
	"testing"

	"github.com/huskvm/husk/internal/virtio"
	"github.com/huskvm/husk/internal/virtio/virtiotest"
)

// FuzzDescriptorChain feeds guest-controlled descriptor tables and available
// rings to the queue. Invariants: no panic, termination, and every chain
// returned is bounded by the queue size and MaxChainBytes with its readable
// segments first.
func FuzzDescriptorChain(f *testing.F) {
	for _, n := range []int{1, 2, 3, 16} {
		f.Add(virtiotest.ValidChain(n))
	}
	loop := virtiotest.ValidChain(2)
	loop[2+16+14] = 0 // descriptor 1's next -> 0, with NEXT set below
	loop[2+16+12] |= virtiotest.DescNext
	f.Add(loop)
	ind := virtiotest.ValidChain(1)
	ind[2+12] = virtiotest.DescIndirect // descriptor 0 -> indirect table at the data area
	f.Add(ind)
	f.Add([]byte{5, 3})
	f.Fuzz(func(t *testing.T, raw []byte) {
		q, _ := virtiotest.QueueFromBytes(t, raw)
		for range 4 * int(q.Size()) {
			c, err := q.Pop()
			if err != nil {
				if virtio.IsFatal(err) {
					return
				}
				continue
			}
			if c == nil {
				break
			}
			if c.Len() > virtio.MaxChainBytes {
				t.Fatalf("unbounded chain: %d bytes", c.Len())
			}
			segs := c.Segments()
			if len(segs) > int(q.Size()) {
				t.Fatalf("chain of %d segments in a queue of %d", len(segs), q.Size())
			}
			seenW := false
			for _, s := range segs {
				if s.Writable {
					seenW = true
				} else if seenW {
					t.Fatal("readable segment after a writable one")
				}
			}
			w := c.Writable()
			w.Zero(w.Len())
			if err := q.AddUsed(c.Head, uint32(c.WritableLen())); err != nil {
				t.Fatal(err)
			}
		}
		q.NeedsInterrupt()
		q.EnableNotification()
	})
}
