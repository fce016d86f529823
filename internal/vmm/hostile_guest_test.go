package vmm

import (
	"fmt"
	"strings"

	"github.com/huskvm/husk/internal/virtio"
	"github.com/huskvm/husk/internal/virtio/virtiotest"
)

// A hostile guest for KVM-level tests of the virtio devices: a tiny
// interpreter, hand-assembled for the 32-bit protected mode (flat segments,
// paging off) that PVH enters, runs a script of fixed-size ops placed in
// guest memory next to it. The test builds the script, and the rings and
// buffers the script points the devices at, in Go; the guest only pokes
// memory and registers, waits, prints what it reads on COM1, and finally
// resets through the i8042, which ends vm.Run cleanly.
//
// Guest memory, all inside the one PT_LOAD segment pvhKernel makes:
//
//	imageBase               the interpreter, then its hex digit table
//	imageBase+scriptOffset  the script: ops of opSize bytes
//	imageBase+dataOffset    rings and buffers the script uses
//
// An op is five little-endian words: op, a, b, c, d.
//
//	0            reset the VM (so does any unknown op); the zeroed op after
//	             the last one ends every script
//	opWrite (1)  [a] = b
//	opPrint (2)  print [a] & b as eight hex digits and a newline
//	opWait  (3)  spin until [a] & b == c or d ticks (2^24 TSC cycles) have
//	             passed; print "!" then (a device that never answered)
//	opPutc  (4)  print the byte a
//
// a is a guest-physical address: RAM or a virtio-mmio register, whose access
// exits to the VMM. All accesses are 32 bits wide, as virtio-mmio requires.
const (
	imageBase    = 0x100_0000 // where pvhKernel loads and enters the image
	scriptOffset = 0x1000
	dataOffset   = 0x8000
	imageSize    = 0x4_0000
	opSize       = 20

	opWrite = 1
	opPrint = 2
	opWait  = 3
	opPutc  = 4
)

// waitTicks bounds an opWait: 256 ticks of 2^24 TSC cycles are 2^32 cycles,
// one to four seconds at the TSC rates of x86 hosts. Time, not an iteration
// count, since a spin iteration takes nanoseconds on hardware KVM and
// microseconds where /dev/kvm is emulated. Only a device that never answers
// waits this long.
const waitTicks = 256

// x86 instruction bytes of the interpreter's short jumps.
const (
	jmpShort = 0xeb
	jbShort  = 0x72
	jeShort  = 0x74
	loopECX  = 0xe2
)

// asm collects machine code and resolves short jumps to labels.
type asm struct {
	b      []byte
	labels map[string]int
	jumps  map[int]string // offset of a rel8 byte → its target label
}

func (a *asm) emit(b ...byte)    { a.b = append(a.b, b...) }
func (a *asm) label(name string) { a.labels[name] = len(a.b) }
func (a *asm) imm32(v uint32)    { a.b = le.AppendUint32(a.b, v) }

// jump emits a two-byte short jump (opcode, rel8) to label.
func (a *asm) jump(opcode byte, label string) {
	a.emit(opcode, 0)
	a.jumps[len(a.b)-1] = label
}

// link patches the jumps; a target out of rel8 range is a bug in the
// interpreter, not in the code under test.
func (a *asm) link() []byte {
	for at, l := range a.jumps {
		to, ok := a.labels[l]
		rel := to - (at + 1)
		if !ok || rel < -128 || rel > 127 {
			panic(fmt.Sprintf("interpreter: short jump to %q at %#x out of range", l, at))
		}
		a.b[at] = byte(int8(rel))
	}
	return a.b
}

// interpreter returns the script interpreter, to be loaded at imageBase.
// Registers: esi walks the script; dx holds the COM1 port (rdtsc clobbers
// it, so opWait restores it); eax, ebx, ecx, edi take op, a, b, c; ebp is
// scratch. There is no stack.
func interpreter() []byte {
	a := &asm{labels: map[string]int{}, jumps: map[int]string{}}
	a.emit(0xbe) // mov esi, script
	a.imm32(imageBase + scriptOffset)
	a.emit(0x66, 0xba, 0xf8, 0x03) // mov dx, 0x3f8

	a.label("next")
	a.emit(0x8b, 0x06)         // mov eax, [esi]      op
	a.emit(0x8b, 0x5e, 0x04)   // mov ebx, [esi+4]    a
	a.emit(0x8b, 0x4e, 0x08)   // mov ecx, [esi+8]    b
	a.emit(0x8b, 0x7e, 0x0c)   // mov edi, [esi+12]   c
	a.emit(0x83, 0xc6, opSize) // add esi, opSize
	for _, op := range []struct {
		code  byte
		label string
	}{{opWrite, "write"}, {opPrint, "print"}, {opWait, "wait"}, {opPutc, "putc"}} {
		a.emit(0x83, 0xf8, op.code) // cmp eax, op
		a.jump(jeShort, op.label)
	}
	// 0, or anything unknown: ask the i8042 for a reset.
	a.emit(0xb0, 0xfe, 0xe6, 0x64, 0xf4) // mov al, 0xfe; out 0x64, al; hlt

	a.label("write")
	a.emit(0x89, 0x0b) // mov [ebx], ecx
	a.jump(jmpShort, "next")

	a.label("putc")
	a.emit(0x89, 0xd8) // mov eax, ebx
	a.emit(0xee)       // out dx, al
	a.jump(jmpShort, "next")

	a.label("print")
	a.emit(0x8b, 0x2b)       // mov ebp, [ebx]
	a.emit(0x21, 0xcd)       // and ebp, ecx
	a.emit(0xb9, 8, 0, 0, 0) // mov ecx, 8
	a.label("digit")
	a.emit(0xc1, 0xc5, 0x04) // rol ebp, 4: the next nibble to the bottom
	a.emit(0x89, 0xe8)       // mov eax, ebp
	a.emit(0x83, 0xe0, 0x0f) // and eax, 0xf
	a.emit(0x8a, 0x80)       // mov al, [eax+hex table]
	hexAt := len(a.b)
	a.imm32(0)   // the table's address, known once the code is
	a.emit(0xee) // out dx, al
	a.jump(loopECX, "digit")
	a.emit(0xb0, '\n', 0xee) // mov al, '\n'; out dx, al
	a.jump(jmpShort, "next")

	a.label("wait")
	a.emit(0x0f, 0x31)             // rdtsc
	a.emit(0x0f, 0xac, 0xd0, 0x18) // shrd eax, edx, 24: eax = TSC / 2^24
	a.emit(0x89, 0xc5)             // mov ebp, eax: the start
	a.label("spin")
	a.emit(0x8b, 0x03) // mov eax, [ebx]
	a.emit(0x21, 0xc8) // and eax, ecx
	a.emit(0x39, 0xf8) // cmp eax, edi
	a.jump(jeShort, "waited")
	a.emit(0x0f, 0x31)             // rdtsc
	a.emit(0x0f, 0xac, 0xd0, 0x18) // shrd eax, edx, 24
	a.emit(0x29, 0xe8)             // sub eax, ebp: ticks elapsed
	a.emit(0x3b, 0x46, 0xfc)       // cmp eax, [esi-4]: d, the limit
	a.jump(jbShort, "spin")
	a.emit(0x66, 0xba, 0xf8, 0x03)            // mov dx, 0x3f8
	a.emit(0xb0, '!', 0xee, 0xb0, '\n', 0xee) // the device never answered
	a.jump(jmpShort, "next")
	a.label("waited")
	a.emit(0x66, 0xba, 0xf8, 0x03) // mov dx, 0x3f8
	a.jump(jmpShort, "next")

	code := a.link()
	le.PutUint32(code[hexAt:], imageBase+uint32(len(code)))
	return append(code, "0123456789abcdef"...)
}

// guest builds one hostile guest: the image (interpreter, script, rings and
// buffers) and the console output the script must produce.
type guest struct {
	img  []byte
	ops  int      // ops in the script so far
	data uint64   // next free guest address for rings and buffers
	want []string // the console lines the script prints, in order
}

func newGuest() *guest {
	g := &guest{img: make([]byte, imageSize), data: imageBase + dataOffset}
	code := interpreter()
	if len(code) > scriptOffset {
		panic("interpreter overlaps its script")
	}
	copy(g.img, code)
	return g
}

// op appends one op to the script.
func (g *guest) op(code, a, b, c, d uint32) {
	off := scriptOffset + g.ops*opSize
	if off+2*opSize > dataOffset { // keep a zeroed op after the last one
		panic("hostile script too long")
	}
	for i, w := range []uint32{code, a, b, c, d} {
		le.PutUint32(g.img[off+4*i:], w)
	}
	g.ops++
}

// write makes the guest store v at addr (RAM or a register).
func (g *guest) write(addr uint64, v uint32) { g.op(opWrite, addr32(addr), v, 0, 0) }

// check makes the guest print label, then [addr] & mask, which must be want.
func (g *guest) check(label string, addr uint64, mask, want uint32) {
	for i := 0; i < len(label); i++ {
		g.op(opPutc, uint32(label[i]), 0, 0, 0)
	}
	g.op(opPutc, '=', 0, 0, 0)
	g.op(opPrint, addr32(addr), mask, 0, 0)
	g.want = append(g.want, fmt.Sprintf("%s=%08x", label, want))
}

// waitFor makes the guest spin until [addr] & mask == v.
func (g *guest) waitFor(addr uint64, mask, v uint32) {
	g.op(opWait, addr32(addr), mask, v, waitTicks)
}

// console is what the script must print.
func (g *guest) console() string { return strings.Join(g.want, "\n") + "\n" }

// image returns the PVH kernel holding the interpreter and the script.
func (g *guest) image() []byte { return pvhKernel(g.img) }

// addr32 checks that a guest address fits the interpreter's 32-bit ops.
func addr32(a uint64) uint32 {
	if a > 0xffff_ffff {
		panic(fmt.Sprintf("guest address %#x beyond 4 GiB", a))
	}
	return uint32(a)
}

// alloc returns n zeroed bytes of the image's data area, aligned to align.
func (g *guest) alloc(n, align uint64) uint64 {
	a := (g.data + align - 1) &^ (align - 1)
	g.data = a + n
	if g.data > imageBase+imageSize {
		panic("hostile guest data area exhausted")
	}
	return a
}

// put16, put32 and put64 write into the image at guest address addr.
func (g *guest) put16(addr uint64, v uint16) { le.PutUint16(g.img[addr-imageBase:], v) }
func (g *guest) put32(addr uint64, v uint32) { le.PutUint32(g.img[addr-imageBase:], v) }
func (g *guest) put64(addr uint64, v uint64) { le.PutUint64(g.img[addr-imageBase:], v) }

// buffer returns a fresh n-byte buffer filled with fill.
func (g *guest) buffer(n int, fill byte) uint64 {
	a := g.alloc(uint64(n), 16)
	for i := range n {
		g.img[a-imageBase+uint64(i)] = fill
	}
	return a
}

// Descriptor flags (virtio 1.2 §2.7.5).
const (
	fNext     = 1
	fWrite    = 2
	fIndirect = 4
)

// vring is a split virtqueue the guest drives (virtio 1.2 §2.7): the Go side
// lays out its descriptors and available ring entries in the image; the
// script publishes them by writing the available index.
type vring struct {
	size               uint16
	desc, avail, used  uint64
	published, usedIdx uint16 // available index published, used index expected
}

// ring allocates a queue of size entries with empty rings.
func (g *guest) ring(size uint16) *vring {
	n := uint64(size)
	return &vring{
		size:  size,
		desc:  g.alloc(16*n, 16),
		avail: g.alloc(6+2*n, 2),
		used:  g.alloc(6+8*n, 4),
	}
}

// table allocates a descriptor table of n entries outside any ring, for
// indirect descriptors.
func (g *guest) table(n int) uint64 { return g.alloc(16*uint64(n), 16) }

// desc fills descriptor i of the table at table.
func (g *guest) desc(table uint64, i int, addr uint64, length uint32, flags, next uint16) {
	d := table + 16*uint64(i)
	g.put64(d, addr)
	g.put32(d+8, length)
	g.put16(d+12, flags)
	g.put16(d+14, next)
}

// publish makes the chains at heads available: it lays out the ring entries
// and has the guest write the new index. It does not notify the device.
func (g *guest) publish(r *vring, heads ...uint16) {
	for _, h := range heads {
		g.put16(r.avail+4+2*uint64(r.published%r.size), h)
		r.published++
	}
	g.write(r.avail, uint32(r.published)<<16) // flags 0, idx
}

// usedIdxAddr and usedElem are the addresses of the used index and of used
// ring element i (virtio 1.2 §2.7.8).
func (r *vring) usedIdxAddr() uint64      { return r.used + 2 }
func (r *vring) usedElem(i uint16) uint64 { return r.used + 4 + 8*uint64(i%r.size) }

// waitUsed makes the guest wait for the device to return n more chains,
// then checks the used index and the length written into the last one.
func (g *guest) waitUsed(label string, r *vring, n uint16, lastLen uint32) {
	r.usedIdx += n
	g.waitFor(r.usedIdxAddr(), 0xffff, uint32(r.usedIdx))
	g.check(label+".used", r.usedIdxAddr(), 0xffff, uint32(r.usedIdx))
	g.check(label+".len", r.usedElem(r.usedIdx-1)+4, 0xffffffff, lastLen)
}

// mmioDev is a virtio-mmio device window in guest-physical memory.
type mmioDev struct {
	name string
	id   virtio.DeviceType
	base uint64
}

func (d mmioDev) reg(off uint64) uint64 { return d.base + off }

// queueRegs is what the driver tells the device about one queue; the
// hostile cases set any of it to anything.
type queueRegs struct {
	num               uint32
	desc, avail, used uint64
}

func regsOf(r *vring) queueRegs {
	return queueRegs{num: uint32(r.size), desc: r.desc, avail: r.avail, used: r.used}
}

// start has the guest initialise d as a driver does (virtio 1.2 §3.1.1 over
// virtio-mmio §4.2.3): reset, ACKNOWLEDGE, DRIVER, features (feat0 in the
// low word, VERSION_1 in the high one), FEATURES_OK, the queues, DRIVER_OK.
func (g *guest) start(d mmioDev, feat0 uint32, queues ...queueRegs) {
	g.write(d.reg(virtiotest.RegStatus), 0)
	g.write(d.reg(virtiotest.RegStatus), virtio.StatusAcknowledge)
	g.write(d.reg(virtiotest.RegStatus), virtio.StatusAcknowledge|virtio.StatusDriver)
	g.write(d.reg(virtiotest.RegDriverFeaturesSel), 1)
	g.write(d.reg(virtiotest.RegDriverFeatures), uint32(virtio.FeatureVersion1>>32))
	g.write(d.reg(virtiotest.RegDriverFeaturesSel), 0)
	g.write(d.reg(virtiotest.RegDriverFeatures), feat0)
	g.write(d.reg(virtiotest.RegStatus), statusFeaturesOK)
	for i, q := range queues {
		g.write(d.reg(virtiotest.RegQueueSel), uint32(i))
		g.write(d.reg(virtiotest.RegQueueNum), q.num)
		for _, r := range []struct {
			low uint64
			v   uint64
		}{{virtiotest.RegQueueDescLow, q.desc}, {virtiotest.RegQueueDriverLow, q.avail}, {virtiotest.RegQueueDeviceLow, q.used}} {
			g.write(d.reg(r.low), uint32(r.v))
			g.write(d.reg(r.low+4), uint32(r.v>>32))
		}
		g.write(d.reg(virtiotest.RegQueueReady), 1)
	}
	g.write(d.reg(virtiotest.RegStatus), statusLive)
}

// Device status values the script writes and expects (virtio 1.2 §2.1).
const (
	statusFeaturesOK = virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK
	statusLive       = statusFeaturesOK | virtio.StatusDriverOK
	statusBroken     = statusLive | virtio.StatusNeedsReset
)

// notify has the guest ring queue q's doorbell.
func (g *guest) notify(d mmioDev, q uint32) { g.write(d.reg(virtiotest.RegQueueNotify), q) }

// checkStatus has the guest print d's status, which must be want.
func (g *guest) checkStatus(d mmioDev, want uint32) {
	g.check(d.name+".status", d.reg(virtiotest.RegStatus), 0xffffffff, want)
}

// waitNeedsReset has the guest wait for d to set DEVICE_NEEDS_RESET.
func (g *guest) waitNeedsReset(d mmioDev) {
	g.waitFor(d.reg(virtiotest.RegStatus), virtio.StatusNeedsReset, virtio.StatusNeedsReset)
}
