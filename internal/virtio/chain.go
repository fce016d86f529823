package virtio

import "io"

// Segment is one descriptor's buffer, resolved to the guest memory that
// backs it. Buf aliases guest RAM: the guest may change it at any time, so a
// device copies what it parses before validating it.
type Segment struct {
	Addr     uint64 // guest physical address
	Buf      []byte // len(Buf) is the descriptor length
	Writable bool   // device-writable (VIRTQ_DESC_F_WRITE)
}

// Chain is a validated descriptor chain (virtio 1.2 §2.7.5): its
// device-readable segments, then its device-writable ones. A Chain returned
// by Queue.Pop lives in the queue and is valid until the next Pop; the
// device hands Head back with Queue.AddUsed.
type Chain struct {
	Head     uint16
	segs     []Segment // readable segments first, then writable
	nRead    int       // number of readable segments
	readLen  int
	writeLen int
}

// Segments returns all segments, readable ones first.
func (c *Chain) Segments() []Segment { return c.segs }

// ReadableLen returns the total bytes the device may read.
func (c *Chain) ReadableLen() int { return c.readLen }

// WritableLen returns the total bytes the device may write.
func (c *Chain) WritableLen() int { return c.writeLen }

// Len returns the total bytes of all segments.
func (c *Chain) Len() int { return c.readLen + c.writeLen }

// Readable returns a cursor over the device-readable bytes.
func (c *Chain) Readable() Cursor { return Cursor{segs: c.segs[:c.nRead], n: c.readLen} }

// Writable returns a cursor over the device-writable bytes.
func (c *Chain) Writable() Cursor { return Cursor{segs: c.segs[c.nRead:], n: c.writeLen} }

// Cursor walks a run of segments as one byte stream without copying or
// allocating. The zero Cursor is empty.
type Cursor struct {
	segs []Segment // segs[0] is the current segment
	off  int       // offset into segs[0].Buf
	n    int       // bytes left; may stop short of the segments' end (Limit)
}

// Len returns the bytes left.
func (c *Cursor) Len() int { return c.n }

// Next returns the next contiguous piece of at most max bytes and advances
// past it; it returns nil at the end. The piece aliases guest memory, so a
// device can read a file straight into it.
func (c *Cursor) Next(max int) []byte {
	for c.n > 0 && max > 0 {
		b := c.segs[0].Buf[c.off:]
		if len(b) == 0 {
			c.segs, c.off = c.segs[1:], 0
			continue
		}
		k := min(len(b), max, c.n)
		c.off += k
		c.n -= k
		return b[:k]
	}
	return nil
}

// Skip advances up to n bytes and returns how many it skipped.
func (c *Cursor) Skip(n int) int {
	done := 0
	for done < n {
		b := c.Next(n - done)
		if b == nil {
			break
		}
		done += len(b)
	}
	return done
}

// Limit returns a cursor over the first n bytes of c (all of c if it is
// shorter); c itself does not move.
func (c *Cursor) Limit(n int) Cursor {
	d := *c
	d.n = max(0, min(n, c.n))
	return d
}

// Read copies guest bytes into p. It returns io.EOF at the end.
func (c *Cursor) Read(p []byte) (int, error) {
	if c.n == 0 && len(p) > 0 {
		return 0, io.EOF
	}
	done := 0
	for done < len(p) {
		b := c.Next(len(p) - done)
		if b == nil {
			break
		}
		done += copy(p[done:], b)
	}
	return done, nil
}

// Write copies p into guest memory. It returns io.ErrShortWrite when the
// cursor runs out first.
func (c *Cursor) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		b := c.Next(len(p) - done)
		if b == nil {
			return done, io.ErrShortWrite
		}
		done += copy(b, p[done:])
	}
	return done, nil
}

// Zero writes n zero bytes (fewer if the cursor is shorter) and returns how
// many it wrote.
func (c *Cursor) Zero(n int) int {
	done := 0
	for done < n {
		b := c.Next(n - done)
		if b == nil {
			break
		}
		clear(b)
		done += len(b)
	}
	return done
}
