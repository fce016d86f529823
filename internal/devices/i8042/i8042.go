// Package i8042 emulates just enough of the PC keyboard controller for a
// Linux guest to probe it quickly and to reset the machine through it: a
// write of the pulse-reset command (0xfe) to the command port ends the VM.
package i8042

// The controller occupies ports Base (data, reads as 0) to Base+4
// (command/status).
const (
	Base = 0x60
	Size = 5

	commandOffset = 4
)

const (
	cmdReset = 0xfe
	// statusOBF (output buffer full, nothing else) makes the guest's probe
	// give up at once, and its reset path does not wait on the input buffer.
	statusOBF = 0x01
)

// Controller is the reset-only i8042.
type Controller struct {
	reset func()
}

// New returns a controller that calls reset when the guest asks for a CPU
// reset.
func New(reset func()) *Controller { return &Controller{reset: reset} }

// Read handles a guest read at offset from Base.
func (c *Controller) Read(offset uint64, data []byte) {
	for i := range data {
		data[i] = 0
	}
	if offset == commandOffset && len(data) > 0 {
		data[0] = statusOBF
	}
}

// Write handles a guest write at offset from Base.
func (c *Controller) Write(offset uint64, data []byte) {
	if offset == commandOffset && len(data) > 0 && data[0] == cmdReset {
		c.reset()
	}
}
