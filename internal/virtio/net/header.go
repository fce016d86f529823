package net

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Every frame on either queue starts with a virtio_net_hdr (virtio 1.2
// §5.1.6), 12 bytes with VIRTIO_F_VERSION_1, little-endian:
//
//	 0  u8    flags        NEEDS_CSUM 1, DATA_VALID 2, RSC_INFO 4
//	 1  u8    gso_type     NONE 0, TCPV4 1, UDP 3, TCPV6 4, UDP_L4 5; | ECN 0x80
//	 2  le16  hdr_len      GSO: bytes of headers to repeat per segment
//	 4  le16  gso_size     GSO: payload bytes per segment
//	 6  le16  csum_start   NEEDS_CSUM: where checksumming starts
//	 8  le16  csum_offset  NEEDS_CSUM: where the checksum goes, after csum_start
//	10  le16  num_buffers  receive only; 1 without VIRTIO_NET_F_MRG_RXBUF
//
// The Ethernet frame follows in the same chain. The TAP (IFF_VNET_HDR with
// a 12-byte header) uses the same layout, so a checked header passes
// between the queues and the TAP unchanged.
const HeaderSize = 12

// Header flag bits and GSO types (virtio 1.2 §5.1.6).
const (
	hdrFNeedsCsum = 1
	hdrFDataValid = 2
	hdrFRSCInfo   = 4

	gsoNone  = 0
	gsoTCPv4 = 1
	gsoUDP   = 3
	gsoTCPv6 = 4
	gsoUDPL4 = 5
	gsoECN   = 0x80
)

const (
	// EthHeaderLen is the shortest frame: destination, source, EtherType.
	EthHeaderLen = 14
	// MaxFrameLen caps a frame either way, header not included: a TSO
	// frame (at most 64 KiB, the kernel's GSO limit) or a frame at the
	// largest MTU a TAP takes (65535), plus the Ethernet header and one
	// 802.1Q tag. No guest-written length is trusted beyond it, and it
	// bounds the receive buffer.
	MaxFrameLen = 65535 + EthHeaderLen + 4
)

// Header is a decoded virtio_net_hdr.
type Header struct {
	Flags      uint8
	GSOType    uint8
	HdrLen     uint16
	GSOSize    uint16
	CsumStart  uint16
	CsumOffset uint16
	NumBuffers uint16
}

// Errors a transmitted frame can earn. Each costs only that frame.
var (
	ErrShortHeader = errors.New("virtio-net: chain shorter than the virtio_net_hdr")
	ErrFrameLength = errors.New("virtio-net: frame length out of range")
	ErrHeaderFlags = errors.New("virtio-net: unknown header flags or GSO type")
	ErrOffload     = errors.New("virtio-net: offload not negotiated")
	ErrOffloadArgs = errors.New("virtio-net: offload fields outside the frame")
)

// ParseHeader decodes the header b of a transmitted frame of frameLen bytes
// (the chain's readable bytes after the header) and checks both against
// the features the driver accepted (acked):
//
//   - the frame is EthHeaderLen..MaxFrameLen bytes;
//   - flags and gso_type hold known values; DATA_VALID and RSC_INFO are
//     for received frames only;
//   - NEEDS_CSUM needs VIRTIO_NET_F_CSUM, and the checksum it asks for lies
//     inside the frame;
//   - TCP segmentation needs HOST_TSO4 or HOST_TSO6 and CSUM, comes with
//     NEEDS_CSUM (the segments' checksums are computed anyway), a non-zero
//     gso_size and an hdr_len inside the frame; UDP segmentation and ECN
//     are not offered.
//
// The returned header is normalised: fields that the flags and gso_type
// give no meaning are zero. It is what goes to the TAP, never the guest's
// bytes, which the guest may have changed since.
func ParseHeader(b []byte, frameLen int, acked uint64) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("%w: %d bytes", ErrShortHeader, len(b))
	}
	if frameLen < EthHeaderLen || frameLen > MaxFrameLen {
		return Header{}, fmt.Errorf("%w: %d bytes, want %d..%d", ErrFrameLength, frameLen, EthHeaderLen, MaxFrameLen)
	}
	le := binary.LittleEndian
	h := Header{
		Flags: b[0], GSOType: b[1],
		HdrLen: le.Uint16(b[2:]), GSOSize: le.Uint16(b[4:]),
		CsumStart: le.Uint16(b[6:]), CsumOffset: le.Uint16(b[8:]),
	}
	if h.Flags&^(hdrFNeedsCsum|hdrFDataValid|hdrFRSCInfo) != 0 {
		return Header{}, fmt.Errorf("%w: flags %#x", ErrHeaderFlags, h.Flags)
	}
	switch h.GSOType &^ gsoECN {
	case gsoNone, gsoTCPv4, gsoUDP, gsoTCPv6, gsoUDPL4:
	default:
		return Header{}, fmt.Errorf("%w: gso_type %#x", ErrHeaderFlags, h.GSOType)
	}
	if h.Flags&^hdrFNeedsCsum != 0 {
		return Header{}, fmt.Errorf("%w: flags %#x on a transmitted frame", ErrOffload, h.Flags)
	}
	if h.Flags&hdrFNeedsCsum != 0 {
		if acked&FeatureCsum == 0 {
			return Header{}, fmt.Errorf("%w: NEEDS_CSUM without VIRTIO_NET_F_CSUM", ErrOffload)
		}
		if end := int(h.CsumStart) + int(h.CsumOffset) + 2; end > frameLen {
			return Header{}, fmt.Errorf("%w: checksum at %d+%d in a %d-byte frame", ErrOffloadArgs, h.CsumStart, h.CsumOffset, frameLen)
		}
	} else {
		h.CsumStart, h.CsumOffset = 0, 0
	}
	switch h.GSOType {
	case gsoNone:
		h.HdrLen, h.GSOSize = 0, 0
	case gsoTCPv4, gsoTCPv6:
		need := FeatureHostTSO4
		if h.GSOType == gsoTCPv6 {
			need = FeatureHostTSO6
		}
		if acked&need == 0 || acked&FeatureCsum == 0 || h.Flags&hdrFNeedsCsum == 0 {
			return Header{}, fmt.Errorf("%w: gso_type %#x with flags %#x", ErrOffload, h.GSOType, h.Flags)
		}
		if h.GSOSize == 0 || int(h.HdrLen) > frameLen {
			return Header{}, fmt.Errorf("%w: gso_size %d, hdr_len %d in a %d-byte frame", ErrOffloadArgs, h.GSOSize, h.HdrLen, frameLen)
		}
	default:
		return Header{}, fmt.Errorf("%w: gso_type %#x", ErrOffload, h.GSOType)
	}
	return h, nil
}

// Put encodes h into b[:HeaderSize].
func (h *Header) Put(b []byte) {
	le := binary.LittleEndian
	b[0], b[1] = h.Flags, h.GSOType
	le.PutUint16(b[2:], h.HdrLen)
	le.PutUint16(b[4:], h.GSOSize)
	le.PutUint16(b[6:], h.CsumStart)
	le.PutUint16(b[8:], h.CsumOffset)
	le.PutUint16(b[10:], h.NumBuffers)
}

// prepareRX readies the header the backend wrote at b[:HeaderSize] for a
// driver that accepted acked: num_buffers becomes 1 (§5.1.6.4: without
// VIRTIO_NET_F_MRG_RXBUF), and without GUEST_CSUM the flags are cleared
// (DATA_VALID needs it, §5.1.6.3.1). It refuses a frame that needs an
// offload the driver did not accept. The backend only sends those if its
// offloads were set for an earlier driver (a frame queued across a reset),
// or if it is not a TAP at all.
func prepareRX(b []byte, acked uint64) error {
	flags, gso := b[0], b[1]
	csum := acked&FeatureGuestCsum != 0
	if flags&^(hdrFNeedsCsum|hdrFDataValid) != 0 || (flags&hdrFNeedsCsum != 0 && !csum) {
		return fmt.Errorf("%w: received flags %#x", ErrOffload, flags)
	}
	switch {
	case gso == gsoNone:
	case gso == gsoTCPv4 && csum && acked&FeatureGuestTSO4 != 0:
	case gso == gsoTCPv6 && csum && acked&FeatureGuestTSO6 != 0:
	default:
		return fmt.Errorf("%w: received gso_type %#x", ErrOffload, gso)
	}
	if !csum {
		b[0] = 0
	}
	binary.LittleEndian.PutUint16(b[10:], 1)
	return nil
}
