package mmio_test

import (
	"encoding/binary"
	"testing"

	"github.com/huskvm/husk/internal/virtio/mmio"
	vt "github.com/huskvm/husk/internal/virtio/virtiotest"
)

// Fuzz input: a sequence of 8-byte operations.
//
//	0     kind: bit 0 write (else read); bits 1-2 width 1, 2, 4 or 8 bytes;
//	      bit 7 instead writes value to guest memory at DriverRingBase+offset
//	1..2  le16 offset (up to 0xffff: past the window too)
//	3..6  le32 value
//	7     unused
const opSize = 8

// recorder is a Bus that records a driver's accesses as fuzz operations.
type recorder struct {
	t   *mmio.Transport
	ops []byte
}

func (r *recorder) record(write bool, off uint64, data []byte) {
	var op [opSize]byte
	w := map[int]byte{1: 0, 2: 1, 4: 2, 8: 3}[len(data)]
	op[0] = w << 1
	if write {
		op[0] |= 1
	}
	binary.LittleEndian.PutUint16(op[1:], uint16(off))
	if len(data) >= 4 {
		copy(op[3:7], data[:4])
	} else {
		copy(op[3:], data)
	}
	r.ops = append(r.ops, op[:]...)
}

func (r *recorder) Read(off uint64, data []byte)  { r.record(false, off, data); r.t.Read(off, data) }
func (r *recorder) Write(off uint64, data []byte) { r.record(true, off, data); r.t.Write(off, data) }

// FuzzMMIORegisters drives a transport with an rng device through random
// register accesses and ring corruption. Invariant: no panic, no hang.
func FuzzMMIORegisters(f *testing.F) {
	// Seed: the full Linux-style initialisation, then a kick.
	r := newRig(f)
	rec := &recorder{t: r.t}
	r.drv.Bus = rec
	if err := r.drv.Setup(features, 16); err != nil {
		f.Fatal(err)
	}
	r.drv.Kick(0)
	f.Add(rec.ops)
	f.Add([]byte{0x05, 0x70, 0, 0, 0, 0, 0, 0}) // status write of 0
	f.Add([]byte{0x00, 0xff, 0x0f, 0, 0, 0, 0, 0, 0x07, 0x00, 0x01, 1, 2, 3, 4, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		r := newRig(t)
		var data [8]byte
		for len(ops) >= opSize {
			op := ops[:opSize]
			ops = ops[opSize:]
			off := uint64(binary.LittleEndian.Uint16(op[1:]))
			if op[0]&0x80 != 0 {
				r.mem.WriteAt(op[3:7], int64(vt.DriverRingBase+off))
				continue
			}
			n := 1 << ((op[0] >> 1) & 3)
			copy(data[:], op[3:7])
			if op[0]&1 != 0 {
				r.t.Write(off, data[:n])
			} else {
				r.t.Read(off, data[:n])
			}
		}
	})
}
