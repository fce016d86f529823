// Package vsock implements virtio-vsock (virtio 1.2 §5.10) in user space: the
// guest's stream sockets to CID 2 become Unix-socket connections on the host,
// with Firecracker's convention:
//
//   - host → guest: connect to the VM's socket and write "CONNECT <port>\n";
//     once the guest accepts, the VMM answers "OK <host port>\n" and the
//     connection carries the stream.
//   - guest → host port P: the VMM connects to "<socket>_P".
//
// Every packet header is guest-written and hostile: lengths are capped,
// credit is enforced (host-side buffering never exceeds what we granted), and
// a misbehaving connection is reset rather than trusted.
package vsock

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Packet header, little-endian (virtio 1.2 §5.10.6, struct virtio_vsock_hdr):
//
//	0  src_cid   u64     24 len      u32     32 flags     u32
//	8  dst_cid   u64     28 type     u16     36 buf_alloc u32
//	16 src_port  u32     30 op       u16     40 fwd_cnt   u32
//	20 dst_port  u32
//
// The payload (len bytes) follows the header in the same descriptor chain.
const HeaderSize = 44

// Socket types and operations.
const (
	typeStream = 1

	opRequest       = 1
	opResponse      = 2
	opRst           = 3
	opShutdown      = 4
	opRW            = 5
	opCreditUpdate  = 6
	opCreditRequest = 7

	// Shutdown flags: the sender will receive (RCV) or send (SEND) no more.
	shutdownRcv  = 1
	shutdownSend = 2
)

// HostCID is the well-known address of the host.
const HostCID = 2

// MaxPayload caps one packet's payload, guest or host: Linux's guest driver
// never sends more than 64 KiB in one packet.
const MaxPayload = 64 << 10

// Header is a decoded packet header.
type Header struct {
	SrcCID, DstCID   uint64
	SrcPort, DstPort uint32
	Len              uint32
	Type, Op         uint16
	Flags            uint32
	BufAlloc         uint32
	FwdCnt           uint32
}

// Errors a guest packet can earn.
var (
	ErrShortHeader = errors.New("vsock: packet shorter than its header")
	ErrBadLength   = errors.New("vsock: payload length exceeds the packet or the cap")
)

// ParseHeader decodes a header from b, which must hold at least HeaderSize
// bytes. It checks the length field against MaxPayload only; the caller
// checks it against the bytes actually present.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, ErrShortHeader
	}
	le := binary.LittleEndian
	h := Header{
		SrcCID: le.Uint64(b[0:]), DstCID: le.Uint64(b[8:]),
		SrcPort: le.Uint32(b[16:]), DstPort: le.Uint32(b[20:]),
		Len: le.Uint32(b[24:]), Type: le.Uint16(b[28:]), Op: le.Uint16(b[30:]),
		Flags: le.Uint32(b[32:]), BufAlloc: le.Uint32(b[36:]), FwdCnt: le.Uint32(b[40:]),
	}
	if h.Len > MaxPayload {
		return Header{}, fmt.Errorf("%w: %d bytes", ErrBadLength, h.Len)
	}
	return h, nil
}

// Put encodes h into b[:HeaderSize].
func (h *Header) Put(b []byte) {
	le := binary.LittleEndian
	le.PutUint64(b[0:], h.SrcCID)
	le.PutUint64(b[8:], h.DstCID)
	le.PutUint32(b[16:], h.SrcPort)
	le.PutUint32(b[20:], h.DstPort)
	le.PutUint32(b[24:], h.Len)
	le.PutUint16(b[28:], h.Type)
	le.PutUint16(b[30:], h.Op)
	le.PutUint32(b[32:], h.Flags)
	le.PutUint32(b[36:], h.BufAlloc)
	le.PutUint32(b[40:], h.FwdCnt)
}
