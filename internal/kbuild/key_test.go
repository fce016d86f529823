package kbuild

import (
	"bytes"
	"encoding/binary"
	"regexp"
	"testing"
	"time"
)

func TestKey(t *testing.T) {
	k := Key([]byte("CONFIG_PVH=y\n"), "6.1.192-3")
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(k) {
		t.Fatalf("key %q is not hex sha256", k)
	}
	if k != Key([]byte("CONFIG_PVH=y\n"), "6.1.192-3") {
		t.Fatal("key is not deterministic")
	}
	if ShortKey(k) != k[:16] {
		t.Fatalf("ShortKey = %q", ShortKey(k))
	}
	for _, other := range []string{
		Key([]byte("CONFIG_PVH=y\n"), "6.1.192-4"),   // source version
		Key([]byte("# CONFIG_PVH=y\n"), "6.1.192-3"), // fragment bytes
		// Length prefixes keep the boundary between inputs significant.
		Key([]byte("3CONFIG_PVH=y\n"), "6.1.192-"),
	} {
		if other == k {
			t.Errorf("distinct inputs share key %s", k)
		}
	}
}

func TestSanitize(t *testing.T) {
	if got := sanitize("6.1.192-3+deb12u1~bpo"); got != "6.1.192-3+deb12u1~bpo" {
		t.Errorf("sanitize kept %q", got)
	}
	if got := sanitize("1:2/../x y"); got != "1_2_.._x_y" {
		t.Errorf("sanitize = %q", got)
	}
}

func note(name string, typ uint32, desc []byte) []byte {
	var b bytes.Buffer
	n := append([]byte(name), 0)
	binary.Write(&b, binary.LittleEndian, [3]uint32{uint32(len(n)), uint32(len(desc)), typ})
	b.Write(n)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	b.Write(desc)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	return b.Bytes()
}

func TestFindPVHNote(t *testing.T) {
	le := binary.LittleEndian
	entry := make([]byte, 8)
	le.PutUint64(entry, 0x1000680)
	notes := append(note("Linux", 6, []byte("6.1")), note("Xen", 1, []byte("xen-3.0"))...)
	notes = append(notes, note("Xen", xenElfnotePhys32Entry, entry)...)
	got, ok := findPVHNote(notes, le)
	if !ok || got != 0x1000680 {
		t.Fatalf("findPVHNote = %#x, %v", got, ok)
	}
	if _, ok := findPVHNote(notes[:len(notes)-4], le); ok {
		t.Fatal("found a note in a truncated segment")
	}
	if _, ok := findPVHNote(note("Xen", 1, []byte("x")), le); ok {
		t.Fatal("found PVH entry without the note")
	}
	// Huge sizes in a corrupt header must not panic or allocate.
	bad := make([]byte, 12)
	le.PutUint32(bad, 0xffffffff)
	le.PutUint32(bad[4:], 0xfffffff0)
	if _, ok := findPVHNote(bad, le); ok {
		t.Fatal("corrupt note accepted")
	}
}

func TestProgress(t *testing.T) {
	p := &progress{start: time.Now()}
	for _, l := range []string{
		"  CC      kernel/fork.o",
		"  AS      arch/x86/entry/entry_64.o",
		"  AR      kernel/built-in.a",
		"  HOSTCC  scripts/kallsyms",
		"make[1]: Entering directory '/x'",
		"fs/ext4/inode.c:12: warning: unused variable",
		"  CC      fs/ext4/inode.o",
	} {
		p.feed(l)
	}
	n, last, _ := p.snapshot()
	if n != 3 || last != "CC fs/ext4/inode.o" {
		t.Fatalf("objects %d last %q, want 3, CC fs/ext4/inode.o", n, last)
	}
	if l := p.line(1000); !regexp.MustCompile(`^compiling: 3/~1000 objects, \S+ elapsed, last: CC fs/ext4/inode.o$`).MatchString(l) {
		t.Fatalf("progress line %q", l)
	}
}

func TestTailBuf(t *testing.T) {
	var tb tailBuf
	for i := 0; i < 45; i++ {
		tb.add(string(rune('a' + i%26)))
	}
	l := tb.lines()
	if len(l) != 40 || l[0] != "f" || l[39] != "s" {
		t.Fatalf("tail = %v", l)
	}
}
