package blk

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/huskvm/husk/internal/virtio"
	vt "github.com/huskvm/husk/internal/virtio/virtiotest"
)

// Fuzz input for FuzzBlkRequest: a chain of guest buffers.
//
//	0       n: number of descriptors (1 + raw[0]%6)
//	1       bit i: descriptor i is device-writable
//	2       bit 0: read-only device
//	3..     n × le16 descriptor lengths (mod 8193)
//	rest    the bytes of the buffers, in order (header, payload, ...)
func encodeChain(ro bool, bufs ...[]byte) []byte {
	return encodeChainW(ro, 0, bufs...)
}

func encodeChainW(ro bool, writeMask byte, bufs ...[]byte) []byte {
	raw := []byte{byte(len(bufs) - 1), writeMask, 0}
	if ro {
		raw[2] = 1
	}
	for _, b := range bufs {
		raw = binary.LittleEndian.AppendUint16(raw, uint16(len(b)))
	}
	for _, b := range bufs {
		raw = append(raw, b...)
	}
	return raw
}

// FuzzBlkRequest feeds guest-built requests to the device over an in-memory
// disk that fails on any out-of-range access. Invariants: no panic, the used
// length never exceeds the writable bytes, and the backend is never asked
// for a range outside the disk. Requests to the read-write device are also
// served by two devices over Raw image files, one reading from its mapping
// of the image (OpenRaw's default) and one with preadv (both write with
// pwritev): each must write the same bytes into the guest and leave the
// same disk.
func FuzzBlkRequest(f *testing.F) {
	st := []byte{0xee}
	w := func(n int) []byte { return make([]byte, n) }
	for _, seed := range [][]byte{
		encodeChainW(false, 0b110, reqHeader(TypeIn, 2), w(1024), st),
		encodeChainW(false, 0b100, reqHeader(TypeOut, 5), pattern(512, 1), st),
		encodeChainW(true, 0b100, reqHeader(TypeOut, 5), pattern(512, 1), st),
		encodeChainW(false, 0b10, reqHeader(TypeFlush, 0), st),
		encodeChainW(false, 0b110, reqHeader(TypeGetID, 0), w(20), st),
		encodeChainW(false, 0b100, reqHeader(TypeDiscard, 0), ranges(segment{1, 8, 0}, segment{20, 3, 0}), st),
		encodeChainW(false, 0b100, reqHeader(TypeWriteZeroes, 0), ranges(segment{100, 8, flagUnmap}), st),
		encodeChainW(false, 0b10, reqHeader(TypeIn, 1<<62), st),
		encodeChain(false, reqHeader(TypeIn, 0)),
	} {
		f.Add(seed)
	}
	mem := vt.NewMemory(f, 1<<20)
	devs := [2]*Device{}
	disks := [2]*memBackend{}
	for i := range devs {
		disks[i] = &memBackend{tb: f, b: make([]byte, 128<<10)}
		d, err := New(disks[i], Config{ReadOnly: i == 1, Serial: "fuzz"}, nil)
		if err != nil {
			f.Fatal(err)
		}
		d.AckFeatures(d.Features())
		devs[i] = d
	}
	var rawImgs, rawDevs = make([]*Raw, len(readPaths)), make([]*Device, len(readPaths))
	for i, p := range readPaths {
		rawImgs[i] = openRawPath(f, writeFile(f, "fuzz.img", make([]byte, 128<<10)), false, p.mapped)
		d, err := New(rawImgs[i], Config{Serial: "fuzz"}, nil)
		if err != nil {
			f.Fatal(err)
		}
		d.AckFeatures(d.Features())
		rawDevs[i] = d
	}
	f.Cleanup(func() {
		for _, d := range append(devs[:], rawDevs...) {
			d.Close()
		}
	})
	f.Fuzz(func(t *testing.T, raw []byte) {
		if len(raw) < 3 {
			return
		}
		n := 1 + int(raw[0]%6)
		if len(raw) < 3+2*n {
			return
		}
		disks[0].tb, disks[1].tb = t, t
		d := devs[raw[2]&1]
		body := raw[3+2*n:]
		g := vt.NewGuestQueue(mem, 0x1000, 16)
		var bufs []vt.Buf
		addr := uint64(0x10000)
		for i := range n {
			l := uint32(binary.LittleEndian.Uint16(raw[3+2*i:])) % 8193
			k := min(int(l), len(body))
			mem.WriteAt(body[:k], int64(addr))
			body = body[k:]
			bufs = append(bufs, vt.Buf{Addr: addr, Len: l, Write: raw[1]>>i&1 != 0})
			addr += uint64(l)
		}
		g.AddChain(bufs...)
		q, err := virtio.NewQueue(mem, g.Config(0, d.AckedFeatures()))
		if err != nil {
			t.Fatal(err)
		}
		c, err := q.Pop()
		if err != nil || c == nil {
			return // a malformed chain never reaches the device
		}
		before := writableBytes(c)
		used := d.HandleChain(q, c)
		if int(used) > c.WritableLen() {
			t.Fatalf("used %d > writable %d", used, c.WritableLen())
		}
		if d != devs[0] {
			return
		}
		after := writableBytes(c)
		for i, rd := range rawDevs {
			w := c.Writable()
			w.Write(before) // the guest's buffers as the first device found them
			if rawUsed := rd.HandleChain(q, c); rawUsed != used || !bytes.Equal(writableBytes(c), after) {
				t.Fatalf("Raw device (%s): used %d, guest bytes equal %v; in-memory device: used %d",
					readPaths[i].name, rawUsed, bytes.Equal(writableBytes(c), after), used)
			}
			disk := make([]byte, len(disks[0].b))
			if _, err := rawImgs[i].ReadAt(disk, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(disk, disks[0].b) {
				t.Fatalf("the Raw image (%s) and the in-memory disk differ", readPaths[i].name)
			}
		}
	})
}

// writableBytes copies the device-writable bytes of c.
func writableBytes(c *virtio.Chain) []byte {
	w := c.Writable()
	b := make([]byte, w.Len())
	w.Read(b)
	return b
}

func TestParseRequest(t *testing.T) {
	mem := vt.NewMemory(t, 1<<20)
	for _, tc := range []struct {
		name     string
		bufs     [][]byte
		mask     byte
		wantErr  error
		typ      uint32
		sector   uint64
		dataLen  int
		statusAt int // which buffer holds the status byte
	}{
		{"in", [][]byte{reqHeader(TypeIn, 7), make([]byte, 1024), {0}}, 0b110, nil, TypeIn, 7, 1024, 2},
		{"out", [][]byte{reqHeader(TypeOut, 9), make([]byte, 512), {0}}, 0b100, nil, TypeOut, 9, 512, 2},
		{"in with status in data buffer", [][]byte{reqHeader(TypeIn, 1), make([]byte, 513)}, 0b10, nil, TypeIn, 1, 512, 1},
		{"header and data in one buffer", [][]byte{append(reqHeader(TypeOut, 2), make([]byte, 512)...), {0}}, 0b10, nil, TypeOut, 2, 512, 1},
		{"flush", [][]byte{reqHeader(TypeFlush, 0), {0}}, 0b10, nil, TypeFlush, 0, 0, 1},
		{"no status", [][]byte{reqHeader(TypeIn, 0)}, 0, errNoStatus, 0, 0, 0, 0},
		{"short header", [][]byte{make([]byte, 15), {0}}, 0b10, errShortHeader, 0, 0, 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := vt.NewGuestQueue(mem, 0x1000, 16)
			var bufs []vt.Buf
			addr := uint64(0x10000)
			for i, b := range tc.bufs {
				mem.WriteAt(b, int64(addr))
				bufs = append(bufs, vt.Buf{Addr: addr, Len: uint32(len(b)), Write: tc.mask>>i&1 != 0})
				addr += uint64(len(b)) + 64
			}
			g.AddChain(bufs...)
			q, _ := virtio.NewQueue(mem, g.Config(0, 0))
			c, err := q.Pop()
			if err != nil {
				t.Fatal(err)
			}
			r, err := parseRequest(c)
			if err != tc.wantErr {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			if err == errNoStatus {
				return
			}
			if r.Status.Len() != 1 {
				t.Fatalf("status cursor of %d bytes", r.Status.Len())
			}
			r.Status.Write([]byte{0x5a})
			st := bufs[tc.statusAt]
			if got, _ := mem.Slice(st.Addr+uint64(st.Len)-1, 1); got[0] != 0x5a {
				t.Fatal("status not at the last writable byte")
			}
			if err != nil {
				return
			}
			if r.Type != tc.typ || r.Sector != tc.sector || r.Data.Len() != tc.dataLen {
				t.Fatalf("parsed %d %d %d", r.Type, r.Sector, r.Data.Len())
			}
		})
	}
}
