package virtiotest

import (
	"encoding/binary"
	"testing"

	"github.com/huskvm/husk/internal/guestmem"
	"github.com/huskvm/husk/internal/virtio"
)

// Layout of the guest memory QueueFromBytes builds.
const (
	// FuzzMemSize is the guest RAM of a fuzzed queue (64 KiB at GPA 0).
	FuzzMemSize = 64 << 10
	// FuzzRingBase is where the guest-controlled bytes go: the descriptor
	// table, then the available ring, then whatever follows.
	FuzzRingBase = 0x1000
	// FuzzUsedRing is the used ring (device-written; not from the input).
	FuzzUsedRing = 0xe000
	// FuzzDataBase is a spare area for buffers of seed chains.
	FuzzDataBase = 0x8000
)

// QueueFromBytes builds a queue whose guest-controlled memory comes from
// raw: raw[0]%6 is log2 of the queue size (1..32), raw[1] bit 0 turns on
// EVENT_IDX and bit 1 INDIRECT_DESC, and raw[2:] is copied to FuzzRingBase,
// so it supplies the descriptor table, the available ring and any indirect
// tables and buffers a descriptor points into.
func QueueFromBytes(tb testing.TB, raw []byte) (*virtio.Queue, *guestmem.Memory) {
	tb.Helper()
	mem := NewMemory(tb, FuzzMemSize)
	var size uint16 = 1
	var features uint64
	if len(raw) > 0 {
		size = 1 << (raw[0] % 6)
	}
	if len(raw) > 1 {
		if raw[1]&1 != 0 {
			features |= virtio.FeatureEventIdx
		}
		if raw[1]&2 != 0 {
			features |= virtio.FeatureIndirectDesc
		}
	}
	if len(raw) > 2 {
		body := raw[2:]
		if max := FuzzUsedRing - FuzzRingBase; len(body) > max {
			body = body[:max]
		}
		must(mem.WriteAt(body, FuzzRingBase))
	}
	n := uint64(size)
	q, err := virtio.NewQueue(mem, virtio.QueueConfig{
		Size: size, DescTable: FuzzRingBase, AvailRing: FuzzRingBase + 16*n, UsedRing: FuzzUsedRing,
		EventIdx: features&virtio.FeatureEventIdx != 0, Indirect: features&virtio.FeatureIndirectDesc != 0,
	})
	if err != nil {
		tb.Fatal(err)
	}
	return q, mem
}

// ValidChain returns QueueFromBytes input for a 16-entry queue with
// INDIRECT_DESC holding one available chain of n descriptors (1..16): the
// first half device-readable, the rest device-writable, each 64 bytes in
// the data area.
func ValidChain(n int) []byte {
	const size = 16
	n = max(1, min(n, size))
	raw := make([]byte, 2+16*size+6+2*size)
	raw[0], raw[1] = 4, 2 // size 16, indirect
	for i := range n {
		d := raw[2+16*i:]
		binary.LittleEndian.PutUint64(d[0:], FuzzDataBase+64*uint64(i))
		binary.LittleEndian.PutUint32(d[8:], 64)
		var flags uint16
		if i >= n/2 && n > 1 {
			flags |= DescWrite
		}
		if i < n-1 {
			flags |= DescNext
		}
		binary.LittleEndian.PutUint16(d[12:], flags)
		binary.LittleEndian.PutUint16(d[14:], uint16(i+1))
	}
	avail := raw[2+16*size:]
	binary.LittleEndian.PutUint16(avail[2:], 1) // idx 1, ring[0] = head 0
	return raw
}
