package net

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

// hdr builds header bytes: flags, gso_type, then hdr_len, gso_size,
// csum_start, csum_offset, num_buffers.
func hdr(flags, gso uint8, fields ...uint16) []byte {
	b := make([]byte, HeaderSize)
	b[0], b[1] = flags, gso
	for i, v := range fields {
		binary.LittleEndian.PutUint16(b[2+2*i:], v)
	}
	return b
}

// txOffloads are the transmit offloads a Linux driver accepts.
const txOffloads = FeatureCsum | FeatureHostTSO4 | FeatureHostTSO6

func TestParseHeader(t *testing.T) {
	const nc = hdrFNeedsCsum
	for _, tc := range []struct {
		name     string
		b        []byte
		frameLen int
		acked    uint64
		want     error
		norm     Header // the normalised header, when accepted
	}{
		{"zero header", hdr(0, 0), 60, 0, nil, Header{}},
		{"smallest frame", hdr(0, 0), EthHeaderLen, 0, nil, Header{}},
		{"largest frame", hdr(0, 0), MaxFrameLen, 0, nil, Header{}},
		{"meaningless fields zeroed", hdr(0, 0, 1, 2, 3, 4, 5), 1514, txOffloads, nil, Header{}},
		{"longer buffer", append(hdr(0, 0), 1, 2, 3), 60, 0, nil, Header{}},
		{"checksum", hdr(nc, 0, 9, 9, 34, 16, 7), 60, FeatureCsum, nil, Header{Flags: nc, CsumStart: 34, CsumOffset: 16}},
		{"checksum at the very end", hdr(nc, 0, 0, 0, 50, 8), 60, FeatureCsum, nil, Header{Flags: nc, CsumStart: 50, CsumOffset: 8}},
		{"tso4", hdr(nc, gsoTCPv4, 66, 1448, 34, 16), 65000, txOffloads, nil,
			Header{Flags: nc, GSOType: gsoTCPv4, HdrLen: 66, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}},
		{"tso6", hdr(nc, gsoTCPv6, 86, 1428, 54, 16), 65000, FeatureCsum | FeatureHostTSO6, nil,
			Header{Flags: nc, GSOType: gsoTCPv6, HdrLen: 86, GSOSize: 1428, CsumStart: 54, CsumOffset: 16}},

		{"empty", nil, 60, txOffloads, ErrShortHeader, Header{}},
		{"short", make([]byte, HeaderSize-1), 60, txOffloads, ErrShortHeader, Header{}},
		{"runt frame", hdr(0, 0), EthHeaderLen - 1, 0, ErrFrameLength, Header{}},
		{"no frame", hdr(0, 0), 0, 0, ErrFrameLength, Header{}},
		{"negative frame", hdr(0, 0), -1, 0, ErrFrameLength, Header{}},
		{"oversized frame", hdr(0, 0), MaxFrameLen + 1, txOffloads, ErrFrameLength, Header{}},
		{"unknown flag", hdr(8, 0), 60, txOffloads, ErrHeaderFlags, Header{}},
		{"unknown gso type", hdr(0, 2), 60, txOffloads, ErrHeaderFlags, Header{}},
		{"unknown gso type with ecn", hdr(0, 0x86), 60, txOffloads, ErrHeaderFlags, Header{}},
		{"checksum not negotiated", hdr(nc, 0, 0, 0, 34, 16), 60, FeatureHostTSO4, ErrOffload, Header{}},
		{"data valid from the driver", hdr(hdrFDataValid, 0), 60, txOffloads, ErrOffload, Header{}},
		{"rsc info from the driver", hdr(hdrFRSCInfo, 0), 60, txOffloads, ErrOffload, Header{}},
		{"tso4 not negotiated", hdr(nc, gsoTCPv4, 66, 1448, 34, 16), 65000, FeatureCsum | FeatureHostTSO6, ErrOffload, Header{}},
		{"tso6 not negotiated", hdr(nc, gsoTCPv6, 86, 1428, 54, 16), 65000, FeatureCsum | FeatureHostTSO4, ErrOffload, Header{}},
		{"tso without csum negotiated", hdr(nc, gsoTCPv4, 66, 1448, 34, 16), 65000, FeatureHostTSO4, ErrOffload, Header{}},
		{"tso without NEEDS_CSUM", hdr(0, gsoTCPv4, 66, 1448), 65000, txOffloads, ErrOffload, Header{}},
		{"udp segmentation", hdr(nc, gsoUDP, 42, 1472, 34, 6), 65000, txOffloads, ErrOffload, Header{}},
		{"udp l4 segmentation", hdr(nc, gsoUDPL4, 42, 1472, 34, 6), 65000, txOffloads, ErrOffload, Header{}},
		{"ecn", hdr(nc, gsoTCPv4|gsoECN, 66, 1448, 34, 16), 65000, txOffloads, ErrOffload, Header{}},
		{"checksum past the frame", hdr(nc, 0, 0, 0, 50, 9), 60, FeatureCsum, ErrOffloadArgs, Header{}},
		{"checksum far past the frame", hdr(nc, 0, 0, 0, 0xffff, 0xffff), MaxFrameLen, FeatureCsum, ErrOffloadArgs, Header{}},
		{"gso_size zero", hdr(nc, gsoTCPv4, 66, 0, 34, 16), 65000, txOffloads, ErrOffloadArgs, Header{}},
		{"hdr_len past the frame", hdr(nc, gsoTCPv4, 1000, 1448, 34, 16), 999, txOffloads, ErrOffloadArgs, Header{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := ParseHeader(tc.b, tc.frameLen, tc.acked)
			if !errors.Is(err, tc.want) {
				t.Fatalf("ParseHeader = %+v, %v; want %v", h, err, tc.want)
			}
			if h != tc.norm {
				t.Fatalf("ParseHeader = %+v, want %+v", h, tc.norm)
			}
		})
	}
}

func TestHeaderPut(t *testing.T) {
	h := Header{Flags: 1, GSOType: 4, HdrLen: 0x0102, GSOSize: 0x0304, CsumStart: 0x0506, CsumOffset: 0x0708, NumBuffers: 0x090a}
	var b [HeaderSize]byte
	h.Put(b[:])
	if want := []byte{1, 4, 2, 1, 4, 3, 6, 5, 8, 7, 0x0a, 9}; !bytes.Equal(b[:], want) {
		t.Fatalf("Put = % x, want % x", b, want)
	}
}

func TestPrepareRX(t *testing.T) {
	const nc, dv = hdrFNeedsCsum, hdrFDataValid
	rxAll := FeatureGuestCsum | FeatureGuestTSO4 | FeatureGuestTSO6
	for _, tc := range []struct {
		name      string
		b         []byte
		acked     uint64
		ok        bool
		wantFlags byte
	}{
		{"plain", hdr(0, 0, 0, 0, 0, 0, 0xbeef), 0, true, 0},
		{"data valid cleared without GUEST_CSUM", hdr(dv, 0), 0, true, 0},
		{"data valid kept", hdr(dv, 0), FeatureGuestCsum, true, dv},
		{"partial checksum", hdr(nc, 0, 0, 0, 34, 16), FeatureGuestCsum, true, nc},
		{"tso4", hdr(nc, gsoTCPv4, 66, 1448, 34, 16), rxAll, true, nc},
		{"tso6", hdr(nc, gsoTCPv6, 86, 1428, 54, 16), FeatureGuestCsum | FeatureGuestTSO6, true, nc},
		{"partial checksum without GUEST_CSUM", hdr(nc, 0, 0, 0, 34, 16), FeatureGuestTSO4, false, 0},
		{"tso4 not accepted", hdr(nc, gsoTCPv4, 66, 1448, 34, 16), FeatureGuestCsum | FeatureGuestTSO6, false, 0},
		{"tso without GUEST_CSUM", hdr(nc, gsoTCPv4, 66, 1448, 34, 16), FeatureGuestTSO4, false, 0},
		{"udp", hdr(nc, gsoUDP, 42, 1472, 34, 6), rxAll, false, 0},
		{"ecn", hdr(nc, gsoTCPv4|gsoECN, 66, 1448, 34, 16), rxAll, false, 0},
		{"rsc info", hdr(hdrFRSCInfo, 0), rxAll, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := append([]byte(nil), tc.b...)
			err := prepareRX(b, tc.acked)
			if (err == nil) != tc.ok {
				t.Fatalf("prepareRX = %v, want ok %v", err, tc.ok)
			}
			if !tc.ok {
				return
			}
			if b[0] != tc.wantFlags || binary.LittleEndian.Uint16(b[10:]) != 1 || !bytes.Equal(b[1:10], tc.b[1:10]) {
				t.Fatalf("prepared % x from % x", b, tc.b)
			}
		})
	}
}

// FuzzNetHeader feeds guest-written header bytes with any frame length and
// feature set: the parser must not panic, must accept only what the
// features allow with every offset inside the frame, and its normalised
// header must parse back to itself. The same bytes as a received header
// exercise prepareRX.
func FuzzNetHeader(f *testing.F) {
	f.Add(hdr(0, 0), 1514, uint64(0))
	f.Add(hdr(0, 0, 1, 2, 3, 4, 5), EthHeaderLen, txOffloads)
	f.Add(hdr(hdrFNeedsCsum, gsoTCPv4, 66, 1448, 34, 16), 65000, txOffloads)
	f.Add(hdr(hdrFNeedsCsum, gsoTCPv6|gsoECN, 86, 1428, 54, 16), 65000, ^uint64(0))
	f.Add(hdr(hdrFNeedsCsum, 0, 0, 0, 0xffff, 0xffff), 60, FeatureCsum)
	f.Add(hdr(0xff, 0xff), MaxFrameLen+1, ^uint64(0))
	f.Add([]byte{0, 0, 0}, 60, uint64(0))
	f.Fuzz(func(t *testing.T, b []byte, frameLen int, acked uint64) {
		if len(b) >= HeaderSize {
			rx := append([]byte(nil), b[:HeaderSize]...)
			if prepareRX(rx, acked) == nil && binary.LittleEndian.Uint16(rx[10:]) != 1 {
				t.Fatalf("prepareRX left num_buffers % x", rx[10:])
			}
		}
		h, err := ParseHeader(b, frameLen, acked)
		if err != nil {
			if h != (Header{}) {
				t.Fatalf("error %v with header %+v", err, h)
			}
			return
		}
		if len(b) < HeaderSize || frameLen < EthHeaderLen || frameLen > MaxFrameLen {
			t.Fatalf("accepted %d header bytes for a %d-byte frame", len(b), frameLen)
		}
		if h.Flags&^hdrFNeedsCsum != 0 || h.NumBuffers != 0 {
			t.Fatalf("accepted %+v", h)
		}
		if h.Flags != 0 && (acked&FeatureCsum == 0 || int(h.CsumStart)+int(h.CsumOffset)+2 > frameLen) {
			t.Fatalf("accepted checksum offload %+v for a %d-byte frame, features %#x", h, frameLen, acked)
		}
		switch h.GSOType {
		case gsoNone:
		case gsoTCPv4, gsoTCPv6:
			if h.Flags == 0 || h.GSOSize == 0 || int(h.HdrLen) > frameLen || acked&(FeatureHostTSO4|FeatureHostTSO6) == 0 {
				t.Fatalf("accepted segmentation %+v for a %d-byte frame, features %#x", h, frameLen, acked)
			}
		default:
			t.Fatalf("accepted gso_type %#x", h.GSOType)
		}
		var out [HeaderSize]byte
		h.Put(out[:])
		if again, err := ParseHeader(out[:], frameLen, acked); err != nil || again != h {
			t.Fatalf("normalised %+v parses as %+v, %v", h, again, err)
		}
	})
}
