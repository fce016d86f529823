package serial

import (
	"bytes"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func rd(u *UART, off uint64) uint8 {
	b := []byte{0xee}
	u.Read(off, b)
	return b[0]
}

func wr(u *UART, off uint64, v uint8) { u.Write(off, []byte{v}) }

func TestOutputAndTHRInterrupt(t *testing.T) {
	var out bytes.Buffer
	var irqs atomic.Int32
	u := New(&out, func() { irqs.Add(1) })
	wr(u, regData, 'a')
	if irqs.Load() != 0 {
		t.Fatal("interrupt while THRI disabled")
	}
	wr(u, regIER, ierTHRI)
	if irqs.Load() != 1 || rd(u, regIIR) != iirTHRI {
		t.Fatal("enabling THRI must raise the THR-empty interrupt at once")
	}
	if rd(u, regIIR) != iirNone {
		t.Fatal("reading IIR must acknowledge THR empty")
	}
	wr(u, regData, 'b')
	if irqs.Load() != 2 || rd(u, regIIR) != iirTHRI {
		t.Fatal("a transmitted byte must raise THR empty again")
	}
	if out.String() != "ab" {
		t.Fatalf("output %q", out.String())
	}
	if rd(u, regLSR) != lsrTHRE|lsrTEMT {
		t.Fatalf("LSR %#x", rd(u, regLSR))
	}
	if wr(u, regIER, 0xff); rd(u, regIER) != 0x0f {
		t.Fatal("IER must keep only its low 4 bits")
	}
}

func TestLoopbackProbe(t *testing.T) {
	var out bytes.Buffer
	u := New(&out, func() {})
	wr(u, regMCR, mcrLoop|mcrOUT2|mcrRTS) // 0x1a, as Linux's probe writes
	if got := rd(u, regMSR) & 0xf0; got != 0x90 {
		t.Fatalf("loopback MSR %#x, want 0x90", got)
	}
	wr(u, regData, 'x')
	if out.Len() != 0 || rd(u, regLSR)&lsrDR == 0 || rd(u, regData) != 'x' {
		t.Fatal("loopback byte did not come back")
	}
	wr(u, regMCR, 0)
	if got := rd(u, regMSR); got != msrDCD|msrDSR|msrCTS {
		t.Fatalf("MSR %#x", got)
	}
}

func TestDivisorLatch(t *testing.T) {
	u := New(io.Discard, func() {})
	wr(u, regLCR, lcrDLAB|3)
	wr(u, regData, 1)
	wr(u, regIER, 2)
	if rd(u, regData) != 1 || rd(u, regIER) != 2 {
		t.Fatal("divisor latch does not read back")
	}
	wr(u, regLCR, 3)
	if rd(u, regIER) != 0 {
		t.Fatal("IER changed by a DLM write")
	}
	wr(u, regScratch, 0x5a)
	if rd(u, regScratch) != 0x5a {
		t.Fatal("scratch")
	}
}

func TestInput(t *testing.T) {
	var irqs atomic.Int32
	u := New(io.Discard, func() { irqs.Add(1) })
	defer u.Close()
	wr(u, regIER, ierRDI)
	msg := strings.Repeat("0123456789", 20) // more than rxCap: the reader must wait for room
	u.Start(strings.NewReader(msg))
	var got []byte
	deadline := time.Now().Add(5 * time.Second)
	for len(got) < len(msg) && time.Now().Before(deadline) {
		if rd(u, regLSR)&lsrDR == 0 {
			time.Sleep(time.Millisecond)
			continue
		}
		if rd(u, regIIR) != iirRDI {
			t.Fatal("IIR does not report received data")
		}
		got = append(got, rd(u, regData))
	}
	if string(got) != msg {
		t.Fatalf("received %q", got)
	}
	if irqs.Load() == 0 {
		t.Fatal("no data-ready interrupt")
	}
}
