package wire

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	frames := []Frame{
		{Hello, []byte(`{"uptime_ns":1}`)},
		{Stdin, all},
		{Stdin, nil},
		{Stdout, bytes.Repeat([]byte{0}, ChunkSize)},
		{Stderr, []byte("\xff\xfe")},
		{Exit, EncodeInt32(-1)},
		{Ack, nil},
		{Log, []byte("x")},
		{Fail, []byte("y")},
		{Beat, nil},
		{Start, bytes.Repeat([]byte("a"), MaxPayload)},
	}
	var buf bytes.Buffer
	w := NewWriter(&buf)
	for _, f := range frames {
		if err := w.WriteFrame(f.Type, f.Payload); err != nil {
			t.Fatal(err)
		}
	}
	r := NewReader(&buf)
	for i, want := range frames {
		got, err := r.ReadFrame()
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if got.Type != want.Type || !bytes.Equal(got.Payload, want.Payload) {
			t.Fatalf("frame %d: got %s len %d, want %s len %d", i, got.Type, len(got.Payload), want.Type, len(want.Payload))
		}
	}
	if _, err := r.ReadFrame(); err != io.EOF {
		t.Fatalf("at end: %v, want io.EOF", err)
	}
}

func TestFrameErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"unknown type", []byte{'Z', 0, 0, 0, 0}, ErrUnknownType},
		{"too long", []byte{'o', 0, 0x10, 0, 1}, ErrTooLong},
		{"huge", []byte{'o', 0xff, 0xff, 0xff, 0xff}, ErrTooLong},
		{"cut header", []byte{'o', 0, 0}, io.ErrUnexpectedEOF},
		{"cut payload", []byte{'o', 0, 0, 0, 4, 'a'}, io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewReader(bytes.NewReader(tc.in)).ReadFrame()
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	if err := NewWriter(io.Discard).WriteFrame(Start, make([]byte, MaxPayload+1)); !errors.Is(err, ErrTooLong) {
		t.Fatalf("oversized write: %v", err)
	}
}

func TestWriteDataChunks(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	data := bytes.Repeat([]byte{7}, 2*ChunkSize+5)
	if _, err := w.Stream(Stdout).Write(data); err != nil {
		t.Fatal(err)
	}
	r := NewReader(&buf)
	var got []byte
	n := 0
	for {
		f, err := r.ReadFrame()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if f.Type != Stdout || len(f.Payload) > ChunkSize {
			t.Fatalf("frame %s of %d bytes", f.Type, len(f.Payload))
		}
		got = append(got, f.Payload...)
		n++
	}
	if n != 3 || !bytes.Equal(got, data) {
		t.Fatalf("%d frames, %d bytes", n, len(got))
	}
}

func TestExitPayload(t *testing.T) {
	for _, s := range []int{0, 1, 7, 255, 137, -1} {
		got, err := DecodeInt32(EncodeInt32(s))
		if err != nil || got != s {
			t.Fatalf("%d: got %d, %v", s, got, err)
		}
	}
	if _, err := DecodeInt32([]byte{1, 2, 3}); !errors.Is(err, ErrBadInt32) {
		t.Fatalf("short exit: %v", err)
	}
}

func FuzzFrame(f *testing.F) {
	f.Add(AppendFrame(AppendFrame(nil, Stdout, []byte("hi")), Exit, EncodeInt32(3)))
	f.Add([]byte{'o', 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{'Z'})
	f.Add(AppendFrame(nil, Hello, []byte(`{"kvm":true}`)))
	f.Add(AppendFrame(AppendFrame(nil, Beat, nil), Beat, []byte("x")))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := NewReader(bytes.NewReader(in))
		var re []byte
		for {
			fr, err := r.ReadFrame()
			if err != nil {
				break
			}
			if len(fr.Payload) > MaxPayload || !fr.Type.Known() {
				t.Fatalf("accepted %s frame of %d bytes", fr.Type, len(fr.Payload))
			}
			if fr.Type == Exit {
				_, _ = DecodeInt32(fr.Payload)
			}
			re = AppendFrame(re, fr.Type, fr.Payload)
		}
		// Every accepted frame re-encodes to the bytes it came from.
		if !bytes.HasPrefix(in, re) {
			t.Fatalf("re-encoding is not a prefix of the input")
		}
	})
}

func TestCmdlineRoundTrip(t *testing.T) {
	for _, c := range []BootConfig{
		{},
		{Disks: []string{"bin"}, ScratchMiB: 1024},
		{Disks: []string{"a", "b.c", "D_-9", strings.Repeat("x", 20)}, ScratchMiB: 1, Debug: true},
	} {
		line := "console=ttyS0 quiet " + c.Cmdline() + " panic=-1"
		got, err := ParseCmdline(line)
		if err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		if len(c.Disks) == 0 {
			c.Disks = nil
		}
		if !reflect.DeepEqual(got, c) {
			t.Fatalf("%q: got %+v, want %+v", line, got, c)
		}
	}
}

func TestCmdlineRejects(t *testing.T) {
	for _, line := range []string{
		"husk.disks=a,a",
		"husk.disks=a,,b",
		"husk.disks=..",
		"husk.disks=" + strings.Repeat("x", 21),
		"husk.disks=a/b",
		"husk.scratch=x",
		"husk.scratch=-1",
	} {
		if c, err := ParseCmdline(line); err == nil {
			t.Errorf("%q: accepted as %+v", line, c)
		}
	}
}

func TestStartRoundTrip(t *testing.T) {
	for _, m := range []StartMsg{
		{Args: []string{"/bin/x"}},
		{Args: []string{"/bin/x", "", "\xff\xfe", "a b"}, Env: []string{"A=", "B=\x01\xff"}, Dir: "/tmp/\xff"},
	} {
		b, err := m.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var got StartMsg
		if err := got.UnmarshalBinary(b); err != nil {
			t.Fatalf("%+v: %v", m, err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Fatalf("got %+v, want %+v", got, m)
		}
	}
	for _, bad := range [][]byte{
		nil,
		{0, 0, 0, 1, 'x'},                           // unterminated argument
		{0, 0, 0, 0, 0, 0, 0, 0, 0},                 // no command
		{0xff, 0xff, 0xff, 0xff, 0},                 // huge count
		{0, 0, 0, 1, 'x', 0, 0, 0, 0, 0, 'd'},       // unterminated dir
		{0, 0, 0, 1, 'x', 0, 0, 0, 0, 0, 0, 0},      // trailing bytes
		{0, 0, 0, 1, 'x', 0, 0, 0, 0, 1, 'E', 0, 0}, // env without '='
	} {
		var m StartMsg
		if err := m.UnmarshalBinary(bad); err == nil {
			t.Errorf("% x accepted as %+v", bad, m)
		}
	}
}

func FuzzStart(f *testing.F) {
	good, _ := (&StartMsg{Args: []string{"/x", "y"}, Env: []string{"A=b"}, Dir: "/tmp"}).MarshalBinary()
	f.Add(good)
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, in []byte) {
		var m StartMsg
		if m.UnmarshalBinary(in) != nil {
			return
		}
		out, err := m.MarshalBinary()
		if err != nil {
			t.Fatalf("decoded %+v does not re-encode: %v", m, err)
		}
		if !bytes.Equal(in, out) {
			t.Fatalf("re-encoding differs")
		}
	})
}

func TestStartValidate(t *testing.T) {
	good := StartMsg{Args: []string{"/bin/x", ""}, Env: []string{"A=", "B=c=d"}}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, s := range []StartMsg{
		{},
		{Args: []string{""}},
		{Args: []string{"a\x00"}},
		{Args: []string{"a"}, Env: []string{"NOEQUALS"}},
	} {
		if err := s.Validate(); err == nil {
			t.Errorf("%+v accepted", s)
		}
	}
}
