// Package serial emulates the 8250/16450 UART a Linux guest uses as its
// console (COM1): transmitted bytes go to an io.Writer, received bytes come
// from an io.Reader, and the THR-empty and data-ready interrupts are raised
// through a callback.
//
// Threading: Read and Write run on vCPU goroutines; the input goroutine
// started by Start feeds received bytes. A mutex guards the register file.
// Output is written while the mutex is held, in order; a slow writer slows
// the guest's console, never loses bytes.
package serial

import (
	"io"
	"sync"
)

// Register offsets from the port base.
const (
	regData    = 0 // RBR (read) / THR (write); DLL when DLAB is set
	regIER     = 1 // interrupt enable; DLM when DLAB is set
	regIIR     = 2 // interrupt identification (read) / FCR (write)
	regLCR     = 3
	regMCR     = 4
	regLSR     = 5
	regMSR     = 6
	regScratch = 7

	// Size is the number of I/O ports a UART occupies.
	Size = 8
)

// Register bits.
const (
	ierRDI  = 0x01 // received data available
	ierTHRI = 0x02 // transmit holding register empty

	iirNone = 0x01
	iirTHRI = 0x02
	iirRDI  = 0x04

	lcrDLAB = 0x80

	mcrDTR  = 0x01
	mcrRTS  = 0x02
	mcrOUT1 = 0x04
	mcrOUT2 = 0x08
	mcrLoop = 0x10

	lsrDR   = 0x01
	lsrTHRE = 0x20
	lsrTEMT = 0x40

	msrCTS = 0x10
	msrDSR = 0x20
	msrRI  = 0x40
	msrDCD = 0x80

	// rxCap bounds bytes queued towards the guest; the input goroutine waits
	// while the queue is full.
	rxCap = 64
)

// UART is one 8250 serial port.
type UART struct {
	out     io.Writer
	trigger func() // raises the UART's interrupt line (an edge)

	mu sync.Mutex // guards the fields below
	// room is signalled when the guest drains rx.
	room        *sync.Cond
	rx          []byte
	ier         uint8
	lcr         uint8
	mcr         uint8
	scratch     uint8
	dll, dlm    uint8
	thriPending bool
	closed      bool
}

// New returns a UART writing the guest's output to out and raising its
// interrupt through trigger.
func New(out io.Writer, trigger func()) *UART {
	u := &UART{out: out, trigger: trigger, dll: 12, mcr: mcrOUT2}
	u.room = sync.NewCond(&u.mu)
	return u
}

// Start copies in to the guest until in ends or Close is called. It runs on
// its own goroutine.
func (u *UART) Start(in io.Reader) {
	go func() {
		buf := make([]byte, rxCap)
		for {
			n, err := in.Read(buf)
			if n > 0 && !u.enqueue(buf[:n]) {
				return
			}
			if err != nil {
				return
			}
		}
	}()
}

// Close stops input delivery.
func (u *UART) Close() {
	u.mu.Lock()
	u.closed = true
	u.room.Broadcast()
	u.mu.Unlock()
}

func (u *UART) enqueue(b []byte) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	for len(b) > 0 {
		for len(u.rx) >= rxCap && !u.closed {
			u.room.Wait()
		}
		if u.closed {
			return false
		}
		n := min(len(b), rxCap-len(u.rx))
		u.rx = append(u.rx, b[:n]...)
		b = b[n:]
		if u.ier&ierRDI != 0 {
			u.trigger()
		}
	}
	return true
}

// Read handles a guest read of the register at offset.
func (u *UART) Read(offset uint64, data []byte) {
	if len(data) == 0 {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	var v uint8
	switch offset {
	case regData:
		if u.lcr&lcrDLAB != 0 {
			v = u.dll
		} else if len(u.rx) > 0 {
			v = u.rx[0]
			u.rx = u.rx[1:]
			if len(u.rx) == 0 {
				u.rx = u.rx[:0:0]
			}
			u.room.Signal()
		}
	case regIER:
		if u.lcr&lcrDLAB != 0 {
			v = u.dlm
		} else {
			v = u.ier
		}
	case regIIR:
		switch {
		case u.ier&ierRDI != 0 && len(u.rx) > 0:
			v = iirRDI
		case u.thriPending:
			v = iirTHRI
			u.thriPending = false // reading IIR acknowledges THR empty
		default:
			v = iirNone
		}
	case regLCR:
		v = u.lcr
	case regMCR:
		v = u.mcr
	case regLSR:
		v = lsrTHRE | lsrTEMT
		if len(u.rx) > 0 {
			v |= lsrDR
		}
	case regMSR:
		if u.mcr&mcrLoop != 0 {
			if u.mcr&mcrDTR != 0 {
				v |= msrDSR
			}
			if u.mcr&mcrRTS != 0 {
				v |= msrCTS
			}
			if u.mcr&mcrOUT1 != 0 {
				v |= msrRI
			}
			if u.mcr&mcrOUT2 != 0 {
				v |= msrDCD
			}
		} else {
			v = msrDCD | msrDSR | msrCTS
		}
	case regScratch:
		v = u.scratch
	}
	data[0] = v
	for i := 1; i < len(data); i++ {
		data[i] = 0
	}
}

// Write handles a guest write of the register at offset.
func (u *UART) Write(offset uint64, data []byte) {
	if len(data) == 0 {
		return
	}
	v := data[0]
	u.mu.Lock()
	defer u.mu.Unlock()
	switch offset {
	case regData:
		if u.lcr&lcrDLAB != 0 {
			u.dll = v
			return
		}
		if u.mcr&mcrLoop != 0 {
			if len(u.rx) < rxCap {
				u.rx = append(u.rx, v)
			}
			if u.ier&ierRDI != 0 {
				u.trigger()
			}
		} else {
			u.out.Write([]byte{v}) // a console that fails to write drops output, never stops the guest
		}
		// The byte left at once: THR is empty again.
		if u.ier&ierTHRI != 0 {
			u.thriPending = true
			u.trigger()
		}
	case regIER:
		if u.lcr&lcrDLAB != 0 {
			u.dlm = v
			return
		}
		was := u.ier
		u.ier = v & 0x0f
		if u.ier&ierTHRI != 0 && was&ierTHRI == 0 {
			u.thriPending = true // THR is always empty: enabling THRI fires at once
			u.trigger()
		}
		if u.ier&ierRDI != 0 && len(u.rx) > 0 {
			u.trigger()
		}
	case regLCR:
		u.lcr = v
	case regMCR:
		u.mcr = v & 0x1f
	case regScratch:
		u.scratch = v
	}
}
