package rng_test

import (
	"bytes"
	"encoding/json"
	"sync/atomic"
	"testing"
	"time"

	"github.com/huskvm/husk/internal/virtio"
	"github.com/huskvm/husk/internal/virtio/rng"
	vt "github.com/huskvm/husk/internal/virtio/virtiotest"
)

type irq struct{ used, reset atomic.Int64 }

func (i *irq) UsedBuffer()    { i.used.Add(1) }
func (i *irq) ConfigChanged() {}
func (i *irq) NeedsReset()    { i.reset.Add(1) }

func waitUsed(t *testing.T, g *vt.GuestQueue) (uint16, uint32) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Microsecond) {
		if id, n, ok := g.PopUsed(); ok {
			return id, n
		}
	}
	t.Fatal("no used buffer")
	return 0, 0
}

func TestServesEntropy(t *testing.T) {
	mem := vt.NewMemory(t, 4<<20)
	d, err := rng.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Type() != virtio.DeviceEntropy {
		t.Fatal(d.Type())
	}
	acked := d.AckFeatures(d.Features())
	g := vt.NewGuestQueue(mem, 0x1000, 16)
	q, err := virtio.NewQueue(mem, g.Config(0, acked))
	if err != nil {
		t.Fatal(err)
	}
	i := &irq{}
	if err := d.Activate(mem, []*virtio.Queue{q}, i); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		bufs []vt.Buf
		want uint32
	}{
		{"one buffer", []vt.Buf{{Addr: 0x100000, Len: 64, Write: true}}, 64},
		{"readable ignored", []vt.Buf{{Addr: 0x100000, Len: 8}, {Addr: 0x200000, Len: 32, Write: true}}, 32},
		{"readable only", []vt.Buf{{Addr: 0x100000, Len: 8}}, 0},
		{"capped", []vt.Buf{{Addr: 0x100000, Len: 1 << 20, Write: true}, {Addr: 0x100000, Len: 1 << 20, Write: true}}, rng.MaxBytesPerRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem.WriteAt(make([]byte, 128), 0x200000)
			head := g.AddChain(tc.bufs...)
			d.Doorbell().Ring()
			if id, n := waitUsed(t, g); id != head || n != tc.want {
				t.Fatalf("used %d/%d, want %d/%d", id, n, head, tc.want)
			}
		})
	}
	if got, _ := mem.Slice(0x100000, 64); bytes.Equal(got, make([]byte, 64)) {
		t.Fatal("no entropy")
	}
	if d.BytesServed() != 64+32+rng.MaxBytesPerRequest || d.Requests() != 4 {
		t.Fatalf("served %d in %d requests", d.BytesServed(), d.Requests())
	}
	if i.used.Load() == 0 {
		t.Fatal("no interrupt")
	}
	cfg := []byte{1, 2, 3}
	d.ReadConfig(0, cfg)
	if !bytes.Equal(cfg, []byte{0, 0, 0}) {
		t.Fatal("config space not empty")
	}
}

func TestStateRoundTrip(t *testing.T) {
	d, err := rng.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	raw, _ := json.Marshal(rng.State{BytesServed: 123, Requests: 4})
	var s rng.State
	json.Unmarshal(raw, &s)
	d2, err := rng.Restore(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if d2.Save() != (rng.State{BytesServed: 123, Requests: 4}) {
		t.Fatalf("restored %+v", d2.Save())
	}
}
