package boot

import (
	"bytes"
	"encoding/binary"
	"os"
	"strings"
	"testing"

	"github.com/huskvm/husk/internal/guestmem"
	"golang.org/x/sys/unix"
)

const testMem = 64 << 20

var le = binary.LittleEndian

// testELF builds a minimal x86-64 ELF with one PT_LOAD of code at paddr and a
// PT_NOTE holding the PVH entry note.
func testELF(paddr, entry uint64, code []byte, bss uint64) []byte {
	note := make([]byte, 12+4+8)
	le.PutUint32(note[0:], 4)  // namesz "Xen\0"
	le.PutUint32(note[4:], 8)  // descsz
	le.PutUint32(note[8:], 18) // XEN_ELFNOTE_PHYS32_ENTRY
	copy(note[12:], "Xen\x00")
	le.PutUint64(note[16:], entry)
	const phoff = 64
	noteOff := uint64(phoff + 2*elfPhdrSize)
	codeOff := uint64(0x1000)
	b := make([]byte, codeOff+uint64(len(code)))
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = 2, 1, 1
	le.PutUint16(b[16:], 2)  // ET_EXEC
	le.PutUint16(b[18:], 62) // EM_X86_64
	le.PutUint64(b[32:], phoff)
	le.PutUint16(b[52:], 64)
	le.PutUint16(b[54:], elfPhdrSize)
	le.PutUint16(b[56:], 2)
	ph := b[phoff:]
	le.PutUint32(ph[0:], ptLoad)
	le.PutUint64(ph[8:], codeOff)
	le.PutUint64(ph[16:], paddr)
	le.PutUint64(ph[24:], paddr)
	le.PutUint64(ph[32:], uint64(len(code)))
	le.PutUint64(ph[40:], uint64(len(code))+bss)
	ph = ph[elfPhdrSize:]
	le.PutUint32(ph[0:], ptNote)
	le.PutUint64(ph[8:], noteOff)
	le.PutUint64(ph[32:], uint64(len(note)))
	copy(b[noteOff:], note)
	copy(b[codeOff:], code)
	return b
}

// testBzImage builds a minimal bzImage: a setup header and a protected-mode
// part of n bytes.
func testBzImage(setupSects byte, n int) []byte {
	b := make([]byte, (int(setupSects)+1)*512+n)
	b[hdrSetupSects] = setupSects
	le.PutUint16(b[0x1fe:], 0xaa55)
	b[hdrJump] = 0xeb
	b[hdrJump+1] = 0x6a // header ends at 0x26c
	copy(b[hdrMagic:], "HdrS")
	le.PutUint16(b[hdrVersion:], 0x020f)
	le.PutUint32(b[hdrInitrdAddrMax:], 0x7fffffff)
	b[hdrXLoadflags] = xlfKernel64
	le.PutUint32(b[hdrCmdlineSize:], 2047)
	for i := (int(setupSects) + 1) * 512; i < len(b); i++ {
		b[i] = byte(i)
	}
	return b
}

func memFile(t testing.TB, data []byte) *os.File {
	t.Helper()
	fd, err := unix.MemfdCreate("image", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "image")
	t.Cleanup(func() { f.Close() })
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	return f
}

func params(kernel, initrd *os.File, cmdline string) Params {
	return Params{
		Kernel: kernel, Initrd: initrd, Cmdline: cmdline,
		MemMap: []MemEntry{
			{0, 0x9fc00, E820RAM}, {0x9fc00, 0x400, E820Reserved},
			{0xf0000, 0x10000, E820Reserved}, {0x100000, testMem - 0x100000, E820RAM},
		},
		CmdlineAddr: 0x20000, CmdlineMax: 4096,
		StartInfoAddr: 0x6000, ZeroPageAddr: 0x7000,
		HighMemStart: 0x100000, InitrdMax: testMem,
	}
}

func newMem(t testing.TB) *guestmem.Memory {
	m, err := guestmem.New([]guestmem.Range{{GPA: 0, Size: testMem}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func TestLoadPVH(t *testing.T) {
	code := []byte("\xf4 kernel text")
	mem := newMem(t)
	initrd := bytes.Repeat([]byte("initrd"), 1000)
	img, err := Load(mem, params(memFile(t, testELF(0x1000000, 0x1000000, code, 4096)), memFile(t, initrd), "console=ttyS0"))
	if err != nil {
		t.Fatal(err)
	}
	if img.Protocol != PVH || img.Entry != 0x1000000 || img.BootStruct != 0x6000 || img.KernelEnd != 0x1000000+uint64(len(code))+4096 {
		t.Fatalf("image %+v", img)
	}
	got, _ := mem.Slice(0x1000000, uint64(len(code)))
	if !bytes.Equal(got, code) {
		t.Fatalf("kernel bytes %q", got)
	}
	si, _ := mem.Slice(0x6000, 256)
	if le.Uint32(si) != startInfoMagic || le.Uint32(si[4:]) != 1 || le.Uint32(si[12:]) != 1 {
		t.Fatalf("start_info header % x", si[:16])
	}
	if le.Uint64(si[24:]) != 0x20000 || le.Uint32(si[48:]) != 4 || le.Uint64(si[40:]) != 0x6000+128 {
		t.Fatal("start_info cmdline or memmap fields wrong")
	}
	if mod := si[64:]; le.Uint64(mod) != img.InitrdAddr || le.Uint64(mod[8:]) != uint64(len(initrd)) {
		t.Fatal("module list does not point at the initrd")
	}
	if img.InitrdAddr%4096 != 0 || img.InitrdAddr+img.InitrdSize > testMem {
		t.Fatalf("initrd at %#x", img.InitrdAddr)
	}
	rd, _ := mem.Slice(img.InitrdAddr, img.InitrdSize)
	if !bytes.Equal(rd, initrd) {
		t.Fatal("initrd bytes differ")
	}
	cl, _ := mem.Slice(0x20000, 14)
	if string(cl) != "console=ttyS0\x00" {
		t.Fatalf("cmdline %q", cl)
	}
}

func TestLoadBzImage(t *testing.T) {
	mem := newMem(t)
	img, err := Load(mem, params(memFile(t, testBzImage(3, 8192)), nil, "quiet"))
	if err != nil {
		t.Fatal(err)
	}
	if img.Protocol != Linux64 || img.Entry != 0x100200 || img.BootStruct != 0x7000 || img.InitrdSize != 0 {
		t.Fatalf("image %+v", img)
	}
	zp, _ := mem.Slice(0x7000, 4096)
	if string(zp[hdrMagic:hdrMagic+4]) != "HdrS" || zp[hdrTypeOfLoader] != 0xff || zp[hdrLoadflags]&loadedHigh == 0 {
		t.Fatal("setup header not copied or not patched")
	}
	if le.Uint32(zp[hdrCmdLinePtr:]) != 0x20000 || zp[bpE820Entries] != 4 {
		t.Fatal("cmdline pointer or e820 count wrong")
	}
	if e := zp[bpE820Table+3*e820EntrySize:]; le.Uint64(e) != 0x100000 || le.Uint32(e[16:]) != E820RAM {
		t.Fatal("e820 entry 3 wrong")
	}
	pm, _ := mem.Slice(0x100000, 4)
	if !bytes.Equal(pm, []byte{0, 1, 2, 3}) { // (3+1)*512 = 2048 = 0x800, byte(i) of 0x800.. is 0
		t.Fatalf("protected-mode kernel bytes % x", pm)
	}
}

func TestLoadRejects(t *testing.T) {
	elf := testELF(0x1000000, 0x1000000, []byte{0xf4}, 0)
	noNote := append([]byte(nil), elf...)
	le.PutUint32(noNote[64+elfPhdrSize+0:], 0) // PT_NOTE -> PT_NULL
	outside := testELF(testMem-1, testMem-1, []byte{1, 2}, 0)
	oldBz := testBzImage(3, 8192)
	le.PutUint16(oldBz[hdrVersion:], 0x0206)
	no64 := testBzImage(3, 8192)
	no64[hdrXLoadflags] = 0
	for _, tc := range []struct {
		name, want string
		kernel     []byte
		cmdline    string
	}{
		{"empty", "unexpected EOF", nil, ""},
		{"garbage", "neither", bytes.Repeat([]byte{0x55}, 4096), ""},
		{"truncated ELF", "", elf[:100], ""},
		{"no PVH note", "PVH entry note", noNote, ""},
		{"segment outside RAM", "not inside guest RAM", outside, ""},
		{"old bzImage", "older than 2.12", oldBz, ""},
		{"no 64-bit entry", "XLF_KERNEL_64", no64, ""},
		{"truncated bzImage", "truncated", testBzImage(3, 0x100)[:4*512+0x100], ""},
		{"long cmdline", "command line", testBzImage(3, 8192), strings.Repeat("x", 3000)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(newMem(t), params(memFile(t, tc.kernel), nil, tc.cmdline))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestInitrdTooBig(t *testing.T) {
	p := params(memFile(t, testELF(0x1000000, 0x1000000, []byte{0xf4}, 0)), memFile(t, make([]byte, 1<<20)), "")
	p.InitrdMax = 0x1000000 + 1<<19 // below the kernel's end plus the initrd
	if _, err := Load(newMem(t), p); err == nil || !strings.Contains(err.Error(), "initrd") {
		t.Fatalf("err = %v", err)
	}
}

// fuzzLoader feeds arbitrary kernel images to one loader: it must return an
// error or an image inside guest RAM, never panic.
func fuzzLoader(f *testing.F, load func(*guestmem.Memory, Params, int64) (*Image, error), seeds ...[]byte) {
	for _, s := range seeds {
		f.Add(s)
	}
	fd, err := unix.MemfdCreate("fuzz", unix.MFD_CLOEXEC)
	if err != nil {
		f.Fatal(err)
	}
	file := os.NewFile(uintptr(fd), "fuzz")
	defer file.Close()
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := file.Truncate(0); err != nil {
			t.Fatal(err)
		}
		if _, err := file.WriteAt(data, 0); err != nil {
			t.Fatal(err)
		}
		// Fresh memory each time: a loaded segment may be mapped from the file,
		// which the next iteration truncates.
		mem, err := guestmem.New([]guestmem.Range{{GPA: 0, Size: testMem}})
		if err != nil {
			t.Fatal(err)
		}
		defer mem.Close()
		img, err := load(mem, params(file, nil, "console=ttyS0"), int64(len(data)))
		if err != nil {
			return
		}
		if img.KernelEnd > testMem || img.Entry >= testMem {
			t.Fatalf("image outside RAM: %+v", img)
		}
	})
}

func FuzzLoadPVH(f *testing.F) {
	fuzzLoader(f, loadPVH, testELF(0x1000000, 0x1000000, []byte{0xf4}, 100), testELF(0x200000, 0x200010, make([]byte, 5000), 0))
}

func FuzzLoadBzImage(f *testing.F) {
	fuzzLoader(f, loadBzImage, testBzImage(3, 4096), testBzImage(0, 600))
}
