package main

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// debugExitPort is the iobase of QEMU's isa-debug-exit device
// (-device isa-debug-exit,iobase=0xf4,iosize=0x04).
const debugExitPort = 0xf4

// outb executes OUT DX, AL (outb_amd64.s). The calling thread needs
// permission for port (ioperm).
func outb(port uint16, val uint8)

// debugExit writes code to the isa-debug-exit port, which makes QEMU exit
// with status (code<<1)|1. The cloud kernel has no /dev/port, so this takes
// the port with ioperm(2) and writes it directly. I/O permissions are per
// thread: the goroutine stays locked to its thread from ioperm to OUT.
// It returns only if QEMU did not stop (no such device).
func debugExit(code byte) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := unix.Ioperm(debugExitPort, 4, 1); err != nil {
		return err
	}
	outb(debugExitPort, code)
	return nil
}
