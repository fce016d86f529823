package vsock

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Defaults for a Muxer.
const (
	// DefaultBufAlloc is the receive buffer we grant the guest per connection:
	// the most guest-to-host bytes we hold for one connection at a time.
	DefaultBufAlloc = 256 << 10
	// DefaultMaxConns caps a VM's connections, pending ones included; the
	// host buffers at most MaxConns × BufAlloc bytes in all.
	DefaultMaxConns = 128
	// connectTimeout bounds the host's CONNECT line, our dial of <socket>_P
	// and the guest's answer to a REQUEST.
	connectTimeout = 5 * time.Second
	// maxConnectLine caps the "CONNECT <port>\n" line.
	maxConnectLine = 32
	// firstHostPort is where the local ports of host-initiated connections start.
	firstHostPort = 1 << 30
)

// connState is where a connection is in its life.
type connState int

const (
	stateConnecting connState = iota // waiting for the guest's RESPONSE (host-initiated) or our dial (guest-initiated)
	stateEstablished
	stateClosed
)

type connKey struct{ local, peer uint32 } // local: the host's port; peer: the guest's

// conn is one stream between a guest port and a host Unix socket. Its fields
// are guarded by the Muxer's mu.
type conn struct {
	key   connKey
	state connState
	sock  *net.UnixConn
	cond  *sync.Cond // signalled on any change the reader or writer waits for

	// guest -> host
	txbuf     []byte // received from the guest, not yet written to sock
	rxCnt     uint32 // bytes received from the guest
	fwdCnt    uint32 // of those, bytes written to sock
	fwdSent   uint32 // fwdCnt last reported to the guest
	creditQd  bool   // a CREDIT_UPDATE for c waits in the Muxer's ctrl
	guestShut uint32 // shutdown flags the guest sent

	// host -> guest
	rxbuf       []byte // read from sock, not yet sent to the guest
	txCnt       uint32 // bytes sent to the guest
	peerAlloc   uint32 // the guest's buf_alloc
	peerFwd     uint32 // the guest's fwd_cnt
	flushed     bool   // the guest shut SEND and everything it sent reached sock
	hostEOF     bool   // sock returned EOF: send SHUTDOWN(SEND) once rxbuf is empty
	sentShut    bool
	queued      bool      // on the Muxer's ready list
	established chan bool // host-initiated: the guest's answer
}

// credit is how many bytes the guest can take now.
func (c *conn) credit() uint32 {
	inFlight := c.txCnt - c.peerFwd
	if inFlight >= c.peerAlloc {
		return 0
	}
	return c.peerAlloc - inFlight
}

// Muxer is the host side of one VM's vsock device: it turns guest packets into
// Unix-socket traffic and back. FromGuest and NextToGuest run on the device
// goroutine; the Muxer's own goroutines (listener, per-connection reader and
// writer) call wake when there is something for the guest.
type Muxer struct {
	guestCID uint64
	path     string
	log      *slog.Logger
	bufAlloc uint32
	maxConns int
	wake     func()
	listener *net.UnixListener

	mu       sync.Mutex // guards everything below and every conn's fields
	conns    map[connKey]*conn
	ctrl     []Header // control packets for the guest, oldest first
	ready    []*conn  // connections with data or a shutdown for the guest
	nextPort uint32
	closed   bool
}

// Config configures a Muxer.
type Config struct {
	GuestCID uint64
	// Path is the host Unix socket: host-initiated connections arrive here and
	// guest connections to port P go to Path_P.
	Path     string
	BufAlloc uint32 // DefaultBufAlloc if zero
	MaxConns int    // DefaultMaxConns if zero
	Log      *slog.Logger
	// Wake tells the device that NextToGuest has something; it must not block.
	Wake func()
}

// NewMuxer listens on cfg.Path and returns the muxer.
func NewMuxer(cfg Config) (*Muxer, error) {
	if cfg.GuestCID < 3 || cfg.GuestCID > 0xffffffff {
		return nil, fmt.Errorf("vsock guest CID %d out of range 3..2^32-1", cfg.GuestCID)
	}
	m := &Muxer{
		guestCID: cfg.GuestCID, path: cfg.Path, log: cfg.Log, bufAlloc: cfg.BufAlloc,
		maxConns: cfg.MaxConns, wake: cfg.Wake, conns: map[connKey]*conn{}, nextPort: firstHostPort,
	}
	if m.bufAlloc == 0 {
		m.bufAlloc = DefaultBufAlloc
	}
	if m.maxConns == 0 {
		m.maxConns = DefaultMaxConns
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: cfg.Path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("vsock: listen: %w", err)
	}
	m.listener = l
	go m.accept()
	return m, nil
}

// Close stops listening and closes every connection.
func (m *Muxer) Close() error {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.dropAll()
	return m.listener.Close()
}

// dropAll closes every connection and forgets queued packets, as after a
// device reset.
func (m *Muxer) dropAll() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range m.conns {
		m.drop(c)
	}
	m.ctrl, m.ready = nil, nil
}

// pending reports whether NextToGuest may have a packet.
func (m *Muxer) pending() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.ctrl) > 0 || len(m.ready) > 0
}

// Conns returns the number of open or pending connections.
func (m *Muxer) Conns() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.conns)
}

// ConnView is one connection's state, for debugging a stalled stream.
type ConnView struct {
	HostPort, GuestPort uint32
	State               string
	// Guest to host: bytes received, written to the socket, and the
	// written count last reported to the guest; bytes waiting to be
	// written; the guest's shutdown flags.
	RxCnt, FwdCnt, FwdSent uint32
	Pending                int
	GuestShut              uint32
	// Host to guest: bytes sent, the guest's buffer and written count
	// (its credit is BufAlloc - (TxCnt - PeerFwd)), bytes read from the
	// socket and not yet sent.
	TxCnt, PeerAlloc, PeerFwd uint32
	Unsent                    int
	HostEOF, SentShut, Queued bool
}

// Inspect returns every connection's state and the number of control
// packets and ready connections waiting for the guest's RX buffers.
func (m *Muxer) Inspect() (conns []ConnView, ctrl, ready int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range m.conns {
		conns = append(conns, ConnView{
			HostPort: c.key.local, GuestPort: c.key.peer, State: [...]string{"connecting", "established", "closed"}[c.state],
			RxCnt: c.rxCnt, FwdCnt: c.fwdCnt, FwdSent: c.fwdSent, Pending: len(c.txbuf), GuestShut: c.guestShut,
			TxCnt: c.txCnt, PeerAlloc: c.peerAlloc, PeerFwd: c.peerFwd, Unsent: len(c.rxbuf),
			HostEOF: c.hostEOF, SentShut: c.sentShut, Queued: c.queued,
		})
	}
	return conns, len(m.ctrl), len(m.ready)
}

// accept takes host-initiated connections.
func (m *Muxer) accept() {
	for {
		s, err := m.listener.AcceptUnix()
		if err != nil {
			return
		}
		go m.hostConnect(s)
	}
}

// hostConnect reads "CONNECT <port>\n", asks the guest, and answers
// "OK <local port>\n" once the guest accepted.
func (m *Muxer) hostConnect(s *net.UnixConn) {
	s.SetReadDeadline(time.Now().Add(connectTimeout))
	line, err := readLine(s, maxConnectLine)
	port, ok := parseConnect(line)
	if err != nil || !ok {
		s.Close()
		return
	}
	s.SetReadDeadline(time.Time{})
	m.mu.Lock()
	if m.closed || len(m.conns) >= m.maxConns {
		m.mu.Unlock()
		s.Close()
		return
	}
	local := m.allocPort(port)
	c := m.newConn(connKey{local: local, peer: port}, s)
	c.established = make(chan bool, 1)
	m.queueCtrl(c, opRequest, 0)
	m.mu.Unlock()

	select {
	case ok = <-c.established:
	case <-time.After(connectTimeout):
		ok = false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !ok || c.state != stateEstablished {
		if c.state != stateClosed {
			m.reset(c)
		}
		return
	}
	if _, err := fmt.Fprintf(s, "OK %d\n", local); err != nil {
		m.reset(c)
		return
	}
	m.start(c)
}

// parseConnect parses "CONNECT <port>\n".
func parseConnect(line string) (uint32, bool) {
	rest, ok := strings.CutPrefix(strings.TrimRight(line, "\n"), "CONNECT ")
	if !ok {
		return 0, false
	}
	p, err := strconv.ParseUint(rest, 10, 32)
	return uint32(p), err == nil
}

// allocPort returns a local port unused with peer port.
// Preconditions: m.mu held.
func (m *Muxer) allocPort(peer uint32) uint32 {
	for {
		p := m.nextPort
		m.nextPort++
		if m.nextPort == 0 {
			m.nextPort = firstHostPort
		}
		if _, used := m.conns[connKey{p, peer}]; !used {
			return p
		}
	}
}

// newConn registers a connection. Preconditions: m.mu held.
func (m *Muxer) newConn(k connKey, s *net.UnixConn) *conn {
	c := &conn{key: k, sock: s, cond: sync.NewCond(&m.mu)}
	m.conns[k] = c
	return c
}

// start runs the connection's reader and writer. Preconditions: m.mu held.
func (m *Muxer) start(c *conn) {
	c.state = stateEstablished
	go m.reader(c)
	go m.writer(c)
}

// FromGuest handles one packet the guest sent on its TX queue. payload may
// alias guest memory; it is copied if kept.
func (m *Muxer) FromGuest(h Header, payload []byte) {
	if h.SrcCID != m.guestCID || h.DstCID != HostCID || int(h.Len) != len(payload) {
		m.log.Debug("vsock_bad_packet", "src_cid", h.SrcCID, "dst_cid", h.DstCID, "len", h.Len)
		return
	}
	k := connKey{local: h.DstPort, peer: h.SrcPort}
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.conns[k]
	if h.Type != typeStream {
		m.rstFor(k)
		return
	}
	if c == nil {
		if h.Op == opRequest {
			m.guestConnect(k, h)
		} else if h.Op != opRst {
			m.rstFor(k)
		}
		return
	}
	c.peerAlloc, c.peerFwd = h.BufAlloc, h.FwdCnt
	switch h.Op {
	case opResponse:
		if c.state == stateConnecting && c.established != nil {
			c.state = stateEstablished
			c.established <- true
		}
	case opRW:
		if c.state != stateEstablished || c.guestShut&shutdownSend != 0 {
			m.reset(c)
			return
		}
		// The guest may have at most bufAlloc bytes with us that we have not
		// written to the host; more breaks the credit it was given.
		if h.Len > m.bufAlloc-(c.rxCnt-c.fwdCnt) {
			m.log.Debug("vsock_credit_overrun", "port", k.local)
			m.reset(c)
			return
		}
		c.txbuf = append(c.txbuf, payload...)
		c.rxCnt += h.Len
		c.cond.Broadcast()
	case opShutdown:
		c.guestShut |= h.Flags & (shutdownRcv | shutdownSend)
		c.cond.Broadcast()
		m.maybeFinish(c)
	case opRst:
		if c.established != nil && c.state == stateConnecting {
			c.established <- false
		}
		m.drop(c)
	case opCreditRequest:
		m.queueCredit(c)
	case opCreditUpdate:
		c.cond.Broadcast() // the reader may have credit again
		m.markReady(c)
	case opRequest:
		m.reset(c) // a second REQUEST on a live connection
	}
}

// guestConnect dials <path>_<port> for the guest REQUEST h, whose header
// also carries the guest's first credit. Preconditions: m.mu held.
func (m *Muxer) guestConnect(k connKey, h Header) {
	if m.closed || len(m.conns) >= m.maxConns {
		m.rstFor(k)
		return
	}
	c := m.newConn(k, nil)
	c.peerAlloc, c.peerFwd = h.BufAlloc, h.FwdCnt
	go func() {
		d := net.Dialer{Timeout: connectTimeout}
		s, err := d.Dial("unix", fmt.Sprintf("%s_%d", m.path, k.local))
		m.mu.Lock()
		defer m.mu.Unlock()
		if c.state == stateClosed {
			if err == nil {
				s.Close()
			}
			return
		}
		if err != nil {
			m.reset(c)
			return
		}
		c.sock = s.(*net.UnixConn)
		m.queueCtrl(c, opResponse, 0)
		m.start(c)
	}()
}

// writer copies the guest's bytes to the host socket, returns credit, and
// carries the guest's shutdown to the host once everything is written.
func (m *Muxer) writer(c *conn) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for {
		for len(c.txbuf) == 0 && c.guestShut&shutdownSend == 0 && c.state == stateEstablished {
			c.cond.Wait()
		}
		if c.state != stateEstablished {
			return
		}
		if len(c.txbuf) == 0 { // the guest sends no more and all it sent is written
			c.sock.CloseWrite()
			c.flushed = true
			m.maybeFinish(c)
			return
		}
		data := c.txbuf
		c.txbuf = nil
		sock := c.sock
		m.mu.Unlock()
		_, err := sock.Write(data)
		m.mu.Lock()
		if err != nil {
			if c.state == stateEstablished {
				m.reset(c)
			}
			return
		}
		c.fwdCnt += uint32(len(data))
		if c.fwdCnt-c.fwdSent >= m.bufAlloc/4 {
			m.queueCredit(c)
		}
	}
}

// readChunk is the most one read from a host socket takes.
const readChunk = 64 << 10

// reader copies host bytes to the guest as the guest's credit allows, and
// reports EOF as SHUTDOWN(SEND) once everything before it was delivered.
func (m *Muxer) reader(c *conn) {
	buf := make([]byte, readChunk)
	m.mu.Lock()
	defer m.mu.Unlock()
	for {
		for c.state == stateEstablished && (len(c.rxbuf) > 0 || c.credit() == 0 || c.guestShut&shutdownRcv != 0) {
			c.cond.Wait()
		}
		if c.state != stateEstablished {
			return
		}
		n := min(int(c.credit()), len(buf))
		sock := c.sock
		m.mu.Unlock()
		n, err := sock.Read(buf[:n])
		m.mu.Lock()
		if c.state != stateEstablished {
			return
		}
		if n > 0 {
			c.rxbuf = buf[:n]
			m.markReady(c)
		}
		if err != nil {
			c.hostEOF = true
			m.markReady(c)
			return
		}
	}
}

// NextToGuest writes the next packet for the guest into buf (header, then
// payload up to len(buf)-HeaderSize bytes) and returns its length, or 0 when
// there is nothing to send.
func (m *Muxer) NextToGuest(buf []byte) int {
	if len(buf) < HeaderSize {
		return 0
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.ctrl) > 0 {
		h := m.ctrl[0]
		m.ctrl = m.ctrl[1:]
		if c := m.conns[connKey{h.SrcPort, h.DstPort}]; c != nil {
			h.FwdCnt = c.fwdCnt // the freshest credit we can give
			c.fwdSent = c.fwdCnt
			if h.Op == opCreditUpdate {
				c.creditQd = false
			}
		}
		h.Put(buf)
		return HeaderSize
	}
	for len(m.ready) > 0 {
		c := m.ready[0]
		m.ready = m.ready[1:]
		c.queued = false
		if c.state != stateEstablished {
			continue
		}
		if len(c.rxbuf) > 0 {
			n := min(len(c.rxbuf), len(buf)-HeaderSize, int(c.credit()))
			if n == 0 {
				continue // no credit: a CREDIT_UPDATE re-queues it
			}
			h := m.header(c, opRW, 0)
			c.fwdSent = c.fwdCnt
			h.Len = uint32(n)
			h.Put(buf)
			copy(buf[HeaderSize:], c.rxbuf[:n])
			c.rxbuf = c.rxbuf[n:]
			c.txCnt += uint32(n)
			if len(c.rxbuf) > 0 {
				m.markReady(c)
			} else {
				c.cond.Broadcast()
			}
			return HeaderSize + n
		}
		if c.hostEOF && !c.sentShut {
			c.sentShut = true
			h := m.header(c, opShutdown, shutdownSend)
			c.fwdSent = c.fwdCnt
			h.Put(buf)
			m.maybeFinish(c)
			return HeaderSize
		}
	}
	return 0
}

// header returns a header from us to the guest on c. Its FwdCnt is
// refreshed when the packet leaves (NextToGuest), which is also when the
// guest learns it. Preconditions: m.mu held.
func (m *Muxer) header(c *conn, op uint16, flags uint32) Header {
	return Header{
		SrcCID: HostCID, DstCID: m.guestCID, SrcPort: c.key.local, DstPort: c.key.peer,
		Type: typeStream, Op: op, Flags: flags, BufAlloc: m.bufAlloc, FwdCnt: c.fwdCnt,
	}
}

// queueCtrl queues a control packet on c. Preconditions: m.mu held.
func (m *Muxer) queueCtrl(c *conn, op uint16, flags uint32) {
	m.pushCtrl(m.header(c, op, flags))
}

// queueCredit queues a CREDIT_UPDATE on c unless one is already waiting:
// it carries the freshest count when it leaves. Preconditions: m.mu held.
func (m *Muxer) queueCredit(c *conn) {
	if !c.creditQd {
		c.creditQd = m.pushCtrl(m.header(c, opCreditUpdate, 0))
	}
}

// rstFor queues a RST for a connection we do not track. Preconditions: m.mu held.
func (m *Muxer) rstFor(k connKey) {
	m.pushCtrl(Header{SrcCID: HostCID, DstCID: m.guestCID, SrcPort: k.local, DstPort: k.peer,
		Type: typeStream, Op: opRst, BufAlloc: m.bufAlloc})
}

// maxCtrl caps queued control packets: a guest that floods requests without
// giving RX buffers loses answers instead of growing our memory.
const maxCtrl = 4096

// pushCtrl queues h for the guest and reports whether it did.
// Preconditions: m.mu held.
func (m *Muxer) pushCtrl(h Header) bool {
	if len(m.ctrl) >= maxCtrl {
		m.log.Debug("vsock_ctrl_queue_full", "op", h.Op, "port", h.SrcPort)
		return false
	}
	m.ctrl = append(m.ctrl, h)
	m.wake()
	return true
}

// markReady puts c on the ready list. Preconditions: m.mu held.
func (m *Muxer) markReady(c *conn) {
	if !c.queued {
		c.queued = true
		m.ready = append(m.ready, c)
		m.wake()
	}
}

// maybeFinish closes c once both directions are done: the guest's bytes all
// reached the host and the guest will receive no more (it shut RCV, or we
// delivered the host's EOF). The RST tells the guest its close completed.
// Preconditions: m.mu held.
func (m *Muxer) maybeFinish(c *conn) {
	if c.state == stateEstablished && c.flushed && (c.guestShut&shutdownRcv != 0 || c.sentShut) {
		m.reset(c)
	}
}

// reset closes c and tells the guest with RST. Preconditions: m.mu held.
func (m *Muxer) reset(c *conn) {
	m.rstFor(c.key)
	m.drop(c)
}

// drop closes c without telling the guest. Preconditions: m.mu held.
func (m *Muxer) drop(c *conn) {
	if c.state == stateClosed {
		return
	}
	c.state = stateClosed
	if c.sock != nil {
		c.sock.Close()
	}
	c.txbuf, c.rxbuf = nil, nil
	delete(m.conns, c.key)
	c.cond.Broadcast()
}

// readLine reads up to and including '\n', one byte at a time so that
// nothing after the line is consumed, failing past max bytes.
func readLine(r io.Reader, max int) (string, error) {
	var b []byte
	var c [1]byte
	for len(b) < max {
		if _, err := io.ReadFull(r, c[:]); err != nil {
			return "", err
		}
		b = append(b, c[0])
		if c[0] == '\n' {
			return string(b), nil
		}
	}
	return "", errLineTooLong
}

var errLineTooLong = errors.New("vsock: CONNECT line too long")
