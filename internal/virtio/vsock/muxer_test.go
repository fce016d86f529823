package vsock

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const guestCID = 3

// fakeGuest plays the guest driver against a Muxer.
type fakeGuest struct {
	t    *testing.T
	m    *Muxer
	wake chan struct{}
	buf  []byte
	path string
}

func newGuest(t *testing.T, bufAlloc uint32, maxConns int) *fakeGuest {
	g := &fakeGuest{t: t, wake: make(chan struct{}, 1), buf: make([]byte, HeaderSize+4096)}
	g.path = filepath.Join(t.TempDir(), "v.sock")
	m, err := NewMuxer(Config{GuestCID: guestCID, Path: g.path, BufAlloc: bufAlloc, MaxConns: maxConns,
		Wake: func() {
			select {
			case g.wake <- struct{}{}:
			default:
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	g.m = m
	t.Cleanup(func() { m.Close() })
	return g
}

// poll returns the next packet for the guest, if there is one.
func (g *fakeGuest) poll() (Header, []byte, bool) {
	n := g.m.NextToGuest(g.buf)
	if n == 0 {
		return Header{}, nil, false
	}
	h, err := ParseHeader(g.buf[:n])
	if err != nil {
		g.t.Fatal(err)
	}
	return h, append([]byte(nil), g.buf[HeaderSize:n]...), true
}

// recv returns the next packet for the guest.
func (g *fakeGuest) recv() (Header, []byte) {
	g.t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		if h, p, ok := g.poll(); ok {
			return h, p
		}
		select {
		case <-g.wake:
		case <-deadline:
			conns, ctrl, ready := g.m.Inspect()
			g.t.Fatalf("no packet for the guest; %d control packets and %d connections ready; %+v", ctrl, ready, conns)
		}
	}
}

func (g *fakeGuest) send(op uint16, local, peer uint32, flags uint32, fwd uint32, payload []byte) {
	g.m.FromGuest(Header{SrcCID: guestCID, DstCID: HostCID, SrcPort: peer, DstPort: local, Len: uint32(len(payload)),
		Type: typeStream, Op: op, Flags: flags, BufAlloc: 64 << 10, FwdCnt: fwd}, payload)
}

// hostConnect connects from the host to guest port and answers for the guest.
func (g *fakeGuest) hostConnect(port uint32) (net.Conn, uint32) {
	g.t.Helper()
	c, err := net.Dial("unix", g.path)
	if err != nil {
		g.t.Fatal(err)
	}
	fmt.Fprintf(c, "CONNECT %d\n", port)
	h, _ := g.recv()
	if h.Op != opRequest || h.DstPort != port || h.DstCID != guestCID || h.SrcCID != HostCID {
		g.t.Fatalf("want REQUEST to %d, got %+v", port, h)
	}
	g.send(opResponse, h.SrcPort, port, 0, 0, nil)
	line, err := bufio.NewReader(io.LimitReader(c, 32)).ReadString('\n')
	if err != nil || line != fmt.Sprintf("OK %d\n", h.SrcPort) {
		g.t.Fatalf("host got %q, %v", line, err)
	}
	return c, h.SrcPort
}

func TestHostInitiatedRoundTripAndClose(t *testing.T) {
	g := newGuest(t, 0, 0)
	c, local := g.hostConnect(1234)
	defer c.Close()
	c.Write([]byte("ping"))
	h, p := g.recv()
	if h.Op != opRW || string(p) != "ping" {
		t.Fatalf("guest got %+v %q", h, p)
	}
	g.send(opRW, local, 1234, 0, 4, []byte("pong"))
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "pong" {
		t.Fatalf("host got %q %v", got, err)
	}
	conns, ctrl, ready := g.m.Inspect()
	want := ConnView{HostPort: local, GuestPort: 1234, State: "established", RxCnt: 4, TxCnt: 4, PeerAlloc: 64 << 10, PeerFwd: 4}
	if len(conns) != 1 || ctrl != 0 || ready != 0 {
		t.Fatalf("Inspect: %+v, %d control packets, %d ready", conns, ctrl, ready)
	}
	conns[0].FwdCnt, conns[0].FwdSent = 0, 0 // the writer counts them after the host could read
	if conns[0] != want {
		t.Fatalf("Inspect: %+v, want %+v", conns[0], want)
	}
	// Host closes: the guest hears SHUTDOWN(SEND); the guest closes: RST.
	c.Close()
	if h, _ := g.recv(); h.Op != opShutdown || h.Flags != shutdownSend {
		t.Fatalf("want SHUTDOWN(SEND), got %+v", h)
	}
	g.send(opShutdown, local, 1234, shutdownSend|shutdownRcv, 4, nil)
	if h, _ := g.recv(); h.Op != opRst {
		t.Fatalf("want RST, got %+v", h)
	}
	if n := g.m.Conns(); n != 0 {
		t.Fatalf("%d connections left", n)
	}
}

func TestGuestInitiated(t *testing.T) {
	g := newGuest(t, 0, 0)
	l, err := net.Listen("unix", g.path+"_5000")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	g.send(opRequest, 5000, 777, 0, 0, nil)
	if h, _ := g.recv(); h.Op != opResponse || h.SrcPort != 5000 || h.DstPort != 777 {
		t.Fatalf("want RESPONSE, got %+v", h)
	}
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The guest's credit came with its REQUEST: host bytes flow before the
	// guest sends anything else.
	c.Write([]byte("first"))
	if h, p := g.recv(); h.Op != opRW || string(p) != "first" {
		t.Fatalf("guest got %+v %q", h, p)
	}
	g.send(opRW, 5000, 777, 0, 0, []byte("hello host"))
	got := make([]byte, 10)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "hello host" {
		t.Fatalf("host got %q %v", got, err)
	}
	// The guest half-closes: the host reads EOF after the data, and can still write.
	g.send(opShutdown, 5000, 777, shutdownSend, 0, nil)
	if n, err := c.Read(got); n != 0 || err != io.EOF {
		t.Fatalf("host read %d, %v; want EOF", n, err)
	}
	c.Write([]byte("bye"))
	if h, p := g.recv(); h.Op != opRW || string(p) != "bye" {
		t.Fatalf("guest got %+v %q", h, p)
	}
	// Nobody listens on 5001: RST.
	g.send(opRequest, 5001, 778, 0, 0, nil)
	if h, _ := g.recv(); h.Op != opRst || h.SrcPort != 5001 {
		t.Fatalf("want RST, got %+v", h)
	}
}

func TestCreditOverrunResets(t *testing.T) {
	g := newGuest(t, 8, 0)
	c, local := g.hostConnect(9)
	defer c.Close()
	g.send(opRW, local, 9, 0, 0, []byte("0123456789")) // 10 bytes against a grant of 8
	if h, _ := g.recv(); h.Op != opRst {
		t.Fatalf("want RST, got %+v", h)
	}
	if n, _ := c.Read(make([]byte, 16)); n != 0 {
		t.Fatal("host received bytes beyond the credit")
	}
}

func TestConnectionCap(t *testing.T) {
	g := newGuest(t, 0, 4)
	l, err := net.Listen("unix", g.path+"_80")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	resp, rst := 0, 0
	for i := uint32(0); i < 20; i++ {
		g.send(opRequest, 80, 1000+i, 0, 0, nil)
	}
	for resp+rst < 20 {
		switch h, _ := g.recv(); h.Op {
		case opResponse:
			resp++
		case opRst:
			rst++
		}
	}
	if resp != 4 || g.m.Conns() != 4 {
		t.Fatalf("%d accepted, %d live; want 4", resp, g.m.Conns())
	}
}

func TestUnknownAndMalformedPackets(t *testing.T) {
	g := newGuest(t, 0, 0)
	g.send(opRW, 1, 2, 0, 0, []byte("x")) // no such connection
	if h, _ := g.recv(); h.Op != opRst {
		t.Fatalf("want RST, got %+v", h)
	}
	// Wrong CIDs and lying lengths are dropped without an answer.
	g.m.FromGuest(Header{SrcCID: 99, DstCID: HostCID, Type: typeStream, Op: opRequest}, nil)
	g.m.FromGuest(Header{SrcCID: guestCID, DstCID: HostCID, Type: typeStream, Op: opRW, Len: 5}, []byte("x"))
	if n := g.m.NextToGuest(g.buf); n != 0 {
		t.Fatal("answered a malformed packet")
	}
	if _, err := net.Dial("unix", g.path); err != nil {
		t.Fatal(err)
	}
	c, _ := net.Dial("unix", g.path)
	c.Write([]byte(strings.Repeat("x", 100)))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, _ := c.Read(make([]byte, 8)); n != 0 {
		t.Fatal("a garbage CONNECT line got an answer")
	}
}

// TestBulkBothWays moves 8 MiB each way with the guest honouring and
// returning credit, and checks both streams byte for byte.
func TestBulkBothWays(t *testing.T) {
	const size = 8 << 20
	g := newGuest(t, 0, 0)
	c, local := g.hostConnect(4000)
	defer c.Close()
	up, down := make([]byte, size), make([]byte, size)
	rand.Read(up)
	rand.Read(down)

	hostGot := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(c)
		hostGot <- b
	}()
	go func() {
		c.Write(down)
		c.(*net.UnixConn).CloseWrite()
	}()
	var guestGot []byte
	sent, fwd, fwdTold := 0, uint32(0), uint32(0)
	hostAlloc, hostFwd := uint32(0), uint32(0) // the host's credit, from its headers
	for done := false; !done; {
		// Interleave: one guest packet out, within the credit the host gave,
		// then one packet in.
		if n := min(4096, size-sent); n > 0 && uint32(sent)-hostFwd+uint32(n) <= hostAlloc {
			g.send(opRW, local, 4000, 0, fwd, up[sent:sent+n])
			sent += n
			if sent == size {
				g.send(opShutdown, local, 4000, shutdownSend, fwd, nil)
			}
		}
		h, p, ok := g.poll()
		if !ok {
			if sent < size && uint32(sent)-hostFwd+4096 <= hostAlloc {
				continue // nothing to receive yet, but we can send
			}
			h, p = g.recv()
		}
		hostAlloc, hostFwd = h.BufAlloc, h.FwdCnt
		switch h.Op {
		case opRW:
			guestGot = append(guestGot, p...)
			fwd += uint32(len(p))
			if fwd-fwdTold >= 16<<10 { // as a driver does once it has room again
				g.send(opCreditUpdate, local, 4000, 0, fwd, nil)
				fwdTold = fwd
			}
		case opShutdown:
			g.send(opCreditUpdate, local, 4000, 0, fwd, nil)
		case opRst:
			done = true
		case opCreditUpdate:
		default:
			t.Fatalf("unexpected %+v", h)
		}
	}
	if !bytes.Equal(guestGot, down) {
		t.Fatalf("guest got %d bytes, sha %x; want %d, sha %x", len(guestGot), sha256.Sum256(guestGot), size, sha256.Sum256(down))
	}
	if b := <-hostGot; !bytes.Equal(b, up) {
		t.Fatalf("host got %d bytes; want %d", len(b), size)
	}
}

// TestOneCreditUpdateAtATime: while the guest does not take its RX
// buffers, the host's writes past a quarter of the buffer queue one
// CREDIT_UPDATE, not one per write, and it leaves with the freshest count.
func TestOneCreditUpdateAtATime(t *testing.T) {
	g := newGuest(t, 0, 0)
	c, local := g.hostConnect(4001)
	defer c.Close()
	const pkt, total = 4096, DefaultBufAlloc
	done := make(chan error)
	go func() {
		_, err := io.ReadFull(c, make([]byte, total))
		done <- err
	}()
	for sent := 0; sent < total; sent += pkt {
		g.send(opRW, local, 4001, 0, 0, make([]byte, pkt))
		time.Sleep(100 * time.Microsecond) // let the writer write packets one by one
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		if conns, _, _ := g.m.Inspect(); len(conns) == 1 && conns[0].FwdCnt == total {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("writer never counted every byte written")
		}
	}
	var updates []uint32
	for h, _, ok := g.poll(); ok; h, _, ok = g.poll() {
		if h.Op != opCreditUpdate {
			t.Fatalf("unexpected %+v", h)
		}
		updates = append(updates, h.FwdCnt)
	}
	if len(updates) != 1 || updates[0] != total {
		t.Fatalf("credit updates with fwd_cnt %v; want one with %d", updates, total)
	}
}

func FuzzVsockHeader(f *testing.F) {
	var seed [HeaderSize]byte
	(&Header{SrcCID: 3, DstCID: 2, SrcPort: 1, DstPort: 2, Len: 4, Type: 1, Op: opRW}).Put(seed[:])
	f.Add(seed[:])
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHeader(b)
		if err != nil {
			return
		}
		if h.Len > MaxPayload {
			t.Fatalf("length %d passed the cap", h.Len)
		}
		var out [HeaderSize]byte
		h.Put(out[:])
		if !bytes.Equal(out[:], b[:HeaderSize]) {
			t.Fatal("header does not round-trip")
		}
	})
}
