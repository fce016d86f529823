// Package wire is the protocol between the test host's PID 1 (test/hostinit)
// and the host side (internal/testhost): the framing of the binary-clean
// control channel, the JSON payloads of its control frames, and the
// parameters passed on the test host's kernel command line.
//
// It is imported by both sides and depends on the standard library only, so
// hostinit stays small.
//
// # Channel
//
// The channel is a virtio-serial port named "husk.ctl" (PortName). On the
// host it is a Unix socket that QEMU connects to; in the test host it is the
// /dev/vportNpM character device whose sysfs name is "husk.ctl". The console
// (ttyS0) is separate and carries only kernel and hostinit log lines.
//
// Every message is one frame:
//
//	 0      1      2      3      4      5 ...
//	+------+------+------+------+------+----------------------+
//	| type |    payload length (uint32, big endian)  | payload ... |
//	+------+------+------+------+------+----------------------+
//
// The length counts payload bytes only and is at most MaxPayload; a reader
// rejects longer frames and unknown types before allocating anything, so a
// hostile peer can make it allocate at most MaxPayload bytes per frame.
//
// A session, in order:
//
//	guest → host  Hello   HelloMsg (JSON), once init is ready (or Fail instead)
//	host  → guest Start   StartMsg (binary): the command to run
//	host  → guest Stdin*  data; an empty Stdin frame is end of input
//	host  → guest Signal* 4 bytes: a signal for the command, int32 big endian
//	guest → host  Stdout*, Stderr*  data, interleaved with Stdin
//	guest → host  Exit    4 bytes: the command's status, int32 big endian
//	host  → guest Ack     empty; the host has everything, the guest powers off
//
// Log frames (guest → host, text) and Beat frames (guest → host, empty, every
// BeatInterval from the moment the channel is open) may come at any time;
// a test host that has gone quiet for many beats has hung. Fail (guest → host,
// text) reports that hostinit could not set up the test host and ends the
// session. Exit is authoritative for the status: the isa-debug-exit port
// write that follows it only stops QEMU quickly.
package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// PortName is the virtio-serial port name of the channel.
const PortName = "husk.ctl"

// Type is a frame type.
type Type byte

// Frame types. The values are part of the protocol.
const (
	Hello  Type = 'H' // guest → host: HelloMsg (JSON); the test host is ready
	Start  Type = 'S' // host → guest: StartMsg (binary); run this command
	Stdin  Type = 'i' // host → guest: stdin bytes; empty payload = EOF
	Stdout Type = 'o' // guest → host: stdout bytes
	Stderr Type = 'e' // guest → host: stderr bytes
	Exit   Type = 'x' // guest → host: int32 big-endian exit status
	Ack    Type = 'a' // host → guest: exit received; power off now
	Log    Type = 'l' // guest → host: a hostinit diagnostic line
	Fail   Type = 'f' // guest → host: hostinit failed; payload says why
	Signal Type = 'k' // host → guest: int32 big-endian signal for the command
	Beat   Type = 'b' // guest → host: empty, every BeatInterval; hostinit lives
)

// BeatInterval is how often hostinit sends a Beat frame. The host side
// takes a test host that sends nothing for many intervals as hung.
const BeatInterval = 10 * time.Second

func (t Type) String() string {
	switch t {
	case Hello:
		return "Hello"
	case Start:
		return "Start"
	case Stdin:
		return "Stdin"
	case Stdout:
		return "Stdout"
	case Stderr:
		return "Stderr"
	case Exit:
		return "Exit"
	case Ack:
		return "Ack"
	case Log:
		return "Log"
	case Fail:
		return "Fail"
	case Signal:
		return "Signal"
	case Beat:
		return "Beat"
	}
	return fmt.Sprintf("Type(%#02x)", byte(t))
}

// Known reports whether t is a frame type of this protocol.
func (t Type) Known() bool {
	switch t {
	case Hello, Start, Stdin, Stdout, Stderr, Exit, Ack, Log, Fail, Signal, Beat:
		return true
	}
	return false
}

const (
	// HeaderSize is the size of a frame header.
	HeaderSize = 5
	// MaxPayload caps a frame's payload. Data is sent in chunks of at most
	// ChunkSize; only Start may approach the cap (a large environment).
	MaxPayload = 1 << 20
	// ChunkSize is the largest data payload a Writer sends in one frame.
	ChunkSize = 32 << 10
)

// Errors a Reader returns for malformed input.
var (
	ErrUnknownType = errors.New("wire: unknown frame type")
	ErrTooLong     = errors.New("wire: frame payload too long")
	ErrBadInt32    = errors.New("wire: exit or signal payload is not 4 bytes")
)

// Frame is one decoded frame. Payload is only valid until the next
// ReadFrame on the same Reader.
type Frame struct {
	Type    Type
	Payload []byte
}

// Reader decodes frames from a byte stream. It never allocates more than
// MaxPayload bytes for a payload, whatever the peer sends.
type Reader struct {
	r   *bufio.Reader
	hdr [HeaderSize]byte
	buf []byte
}

// NewReader returns a Reader of the frames in r.
func NewReader(r io.Reader) *Reader {
	return &Reader{r: bufio.NewReaderSize(r, 64<<10)}
}

// ReadFrame returns the next frame. At a clean end of stream (between
// frames) it returns io.EOF; a stream cut inside a frame gives
// io.ErrUnexpectedEOF.
func (r *Reader) ReadFrame() (Frame, error) {
	if _, err := io.ReadFull(r.r, r.hdr[:1]); err != nil {
		return Frame{}, err
	}
	if _, err := io.ReadFull(r.r, r.hdr[1:]); err != nil {
		return Frame{}, noEOF(err)
	}
	t := Type(r.hdr[0])
	if !t.Known() {
		return Frame{}, fmt.Errorf("%w %#02x", ErrUnknownType, byte(t))
	}
	n := binary.BigEndian.Uint32(r.hdr[1:])
	if n > MaxPayload {
		return Frame{}, fmt.Errorf("%w: %s frame of %d bytes (max %d)", ErrTooLong, t, n, MaxPayload)
	}
	if cap(r.buf) < int(n) {
		r.buf = make([]byte, n)
	}
	p := r.buf[:n]
	if _, err := io.ReadFull(r.r, p); err != nil {
		return Frame{}, noEOF(err)
	}
	return Frame{Type: t, Payload: p}, nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// AppendFrame appends the encoding of one frame to b.
// Precondition: len(payload) <= MaxPayload.
func AppendFrame(b []byte, t Type, payload []byte) []byte {
	b = append(b, byte(t))
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}

// Writer encodes frames to a stream. It is safe for concurrent use; each
// frame is written with one Write call.
type Writer struct {
	mu  sync.Mutex // serialises frames on w and guards buf
	w   io.Writer
	buf []byte
}

// NewWriter returns a Writer that writes frames to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// WriteFrame writes one frame.
func (w *Writer) WriteFrame(t Type, payload []byte) error {
	if len(payload) > MaxPayload {
		return fmt.Errorf("%w: %s frame of %d bytes (max %d)", ErrTooLong, t, len(payload), MaxPayload)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = AppendFrame(w.buf[:0], t, payload)
	_, err := w.w.Write(w.buf)
	return err
}

// WriteData writes p as frames of type t, each at most ChunkSize bytes.
// An empty p writes nothing (for Stdin, use WriteFrame(Stdin, nil) for EOF).
func (w *Writer) WriteData(t Type, p []byte) error {
	for len(p) > 0 {
		n := min(len(p), ChunkSize)
		if err := w.WriteFrame(t, p[:n]); err != nil {
			return err
		}
		p = p[n:]
	}
	return nil
}

// Stream returns an io.Writer whose bytes become frames of type t.
func (w *Writer) Stream(t Type) io.Writer { return streamWriter{w, t} }

type streamWriter struct {
	w *Writer
	t Type
}

func (s streamWriter) Write(p []byte) (int, error) {
	if err := s.w.WriteData(s.t, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// EncodeInt32 is the payload of an Exit or Signal frame.
func EncodeInt32(status int) []byte {
	return binary.BigEndian.AppendUint32(nil, uint32(int32(status)))
}

// DecodeInt32 decodes the payload of an Exit or Signal frame.
func DecodeInt32(p []byte) (int, error) {
	if len(p) != 4 {
		return 0, ErrBadInt32
	}
	return int(int32(binary.BigEndian.Uint32(p))), nil
}
