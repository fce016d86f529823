package virtio_test

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/huskvm/husk/internal/virtio"
)

// TestQueueStateRoundTrip saves a queue in mid-stream, encodes and decodes
// the state, restores it and checks the restored queue carries on where the
// original stopped.
func TestQueueStateRoundTrip(t *testing.T) {
	r := newRig(t, allFeat)
	for range 5 {
		r.g.AddChain(buf(0, 8, false), buf(1, 8, true))
	}
	for range 3 {
		c, err := r.q.Pop()
		if err != nil {
			t.Fatal(err)
		}
		r.q.AddUsed(c.Head, 1)
	}
	r.q.NeedsInterrupt()
	s := r.q.State()
	raw, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var back virtio.QueueState
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s, back) {
		t.Fatalf("decoded %+v, want %+v", back, s)
	}
	if s.NextAvail != 3 || s.NextUsed != 3 || s.SignalledUsed != 3 || s.Broken != 0 {
		t.Fatalf("state %+v", s)
	}
	q2, err := virtio.RestoreQueue(r.mem, back)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(q2.State(), s) {
		t.Fatalf("restored state %+v, want %+v", q2.State(), s)
	}
	for i := range 2 {
		c, err := q2.Pop()
		if err != nil || c == nil {
			t.Fatalf("restored pop %d: %v %v", i, c, err)
		}
		q2.AddUsed(c.Head, 1)
	}
	if c, err := q2.Pop(); c != nil || err != nil {
		t.Fatal("restored queue popped a sixth chain")
	}
	if r.g.UsedIdx() != 5 {
		t.Fatalf("used idx %d, want 5", r.g.UsedIdx())
	}

	t.Run("broken stays broken", func(t *testing.T) {
		r := newRig(t, allFeat)
		r.g.SetAvailIdx(1000)
		r.q.Pop()
		s := r.q.State()
		if s.Broken != virtio.ErrInvalidAvailIdx {
			t.Fatalf("Broken = %v", s.Broken)
		}
		q2, err := virtio.RestoreQueue(r.mem, s)
		if err != nil {
			t.Fatal(err)
		}
		if q2.Broken() == nil {
			t.Fatal("restored queue not broken")
		}
	})
	t.Run("bad state rejected", func(t *testing.T) {
		bad := s
		bad.Size = 5
		if _, err := virtio.RestoreQueue(r.mem, bad); err == nil {
			t.Fatal("accepted size 5")
		}
	})
}
