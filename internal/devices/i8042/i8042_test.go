package i8042

import "testing"

func TestResetAndProbe(t *testing.T) {
	resets := 0
	c := New(func() { resets++ })
	b := []byte{0xaa}
	c.Read(commandOffset, b)
	if b[0] != statusOBF {
		t.Fatalf("status %#x", b[0])
	}
	c.Read(0, b)
	if b[0] != 0 {
		t.Fatalf("data %#x", b[0])
	}
	c.Write(0, []byte{cmdReset}) // data port: not a reset
	c.Write(commandOffset, []byte{0xd1})
	c.Write(commandOffset, nil)
	if resets != 0 {
		t.Fatal("reset on a non-reset write")
	}
	c.Write(commandOffset, []byte{cmdReset})
	if resets != 1 {
		t.Fatalf("resets = %d", resets)
	}
}
