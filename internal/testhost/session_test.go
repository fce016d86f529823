package testhost

import (
	"bytes"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/huskvm/husk/internal/testhost/wire"
)

// runSession plays guest frames (raw bytes) against the host side of the
// channel and returns the finished session and the frames the host sent.
func runSession(t *testing.T, guest []byte, stdin io.Reader) (*session, []wire.Frame) {
	t.Helper()
	host, g := net.Pipe()
	var stdout, stderr bytes.Buffer
	spec := &Spec{Args: []string{"/x"}, Stdin: stdin, Stdout: &stdout, Stderr: &stderr}
	spec.setDefaults()
	s := &session{spec: spec, stats: new(Stats), console: &tailWriter{w: io.Discard}, qemuStart: time.Now()}
	done := make(chan struct{})
	go func() { s.serve(host); host.Close(); close(done) }()

	var got []wire.Frame
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		r := wire.NewReader(g)
		for {
			f, err := r.ReadFrame()
			if err != nil {
				return
			}
			got = append(got, wire.Frame{Type: f.Type, Payload: bytes.Clone(f.Payload)})
		}
	}()
	g.Write(guest) // may fail once the host has given up
	select {
	case <-done:
	case <-time.After(time.Second):
		g.Close() // the guest hangs up: the session must end
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("session did not finish after the guest hung up")
		}
	}
	g.Close()
	<-readDone
	return s, got
}

func TestSessionNormal(t *testing.T) {
	var in []byte
	in = wire.AppendFrame(in, wire.Log, []byte("hello \x1b[2J"))
	in = wire.AppendFrame(in, wire.Beat, nil)
	in = wire.AppendFrame(in, wire.Hello, []byte(`{"uptime_ns":2000000000,"kvm":true,"kernel":"6.1"}`))
	in = wire.AppendFrame(in, wire.Stdout, []byte("o\x00"))
	in = wire.AppendFrame(in, wire.Stderr, []byte("e\xff"))
	in = wire.AppendFrame(in, wire.Beat, nil)
	in = wire.AppendFrame(in, wire.Exit, wire.EncodeInt32(7))
	in = wire.AppendFrame(in, wire.Stdout, []byte("after exit: ignored"))
	s, sent := runSession(t, in, strings.NewReader("input"))
	if s.err != nil || !s.exited || s.status != 7 {
		t.Fatalf("err %v exited %v status %d", s.err, s.exited, s.status)
	}
	if got := s.spec.Stdout.(*bytes.Buffer).String(); got != "o\x00" {
		t.Errorf("stdout %q", got)
	}
	if got := s.spec.Stderr.(*bytes.Buffer).String(); got != "e\xff" {
		t.Errorf("stderr %q", got)
	}
	if !s.stats.KVM || s.stats.GuestReady != 2*time.Second || s.stats.Kernel != "6.1" {
		t.Errorf("stats %+v", s.stats)
	}
	var types []wire.Type
	for _, f := range sent {
		types = append(types, f.Type)
	}
	if len(sent) == 0 || sent[0].Type != wire.Start || sent[len(sent)-1].Type != wire.Ack {
		t.Errorf("host sent %v, want Start ... Ack", types)
	}
	var st wire.StartMsg
	if err := st.UnmarshalBinary(sent[0].Payload); err != nil || st.Args[0] != "/x" {
		t.Errorf("start %+v %v", st, err)
	}
}

func TestSessionHostileGuest(t *testing.T) {
	hello := wire.AppendFrame(nil, wire.Hello, []byte(`{}`))
	for _, tc := range []struct {
		name  string
		in    []byte
		error string
	}{
		{"eof", nil, "EOF"},
		{"stdout before hello", wire.AppendFrame(nil, wire.Stdout, []byte("x")), "before Hello"},
		{"exit before hello", wire.AppendFrame(nil, wire.Exit, wire.EncodeInt32(0)), "before Hello"},
		{"two hellos", append(hello, hello...), "second Hello"},
		{"bad hello", wire.AppendFrame(nil, wire.Hello, []byte(`{`)), "bad Hello"},
		{"bad exit", wire.AppendFrame(hello, wire.Exit, []byte{1}), "payload is not 4 bytes"},
		{"host frame from guest", wire.AppendFrame(hello, wire.Start, nil), "unexpected Start"},
		{"unknown type", append(hello, 'Z', 0, 0, 0, 0), "unknown frame type"},
		{"huge frame", append(hello, 'o', 0x7f, 0xff, 0xff, 0xff), "too long"},
		{"cut frame", append(hello, 'o', 0, 0, 1, 0, 'x'), "unexpected EOF"},
		{"beat with payload", wire.AppendFrame(hello, wire.Beat, []byte("x")), "Beat frame with 1 bytes"},
		{"fail", wire.AppendFrame(nil, wire.Fail, []byte("mount: \x00boom")), `setup failed: mount: \x00boom`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := runSession(t, tc.in, nil)
			if s.exited || s.err == nil || !strings.Contains(s.err.Error(), tc.error) {
				t.Fatalf("exited %v, err %v; want an error containing %q", s.exited, s.err, tc.error)
			}
		})
	}
}

// TestSessionSignals: a signal given while the command runs reaches the
// test host as a Signal frame carrying its number.
func TestSessionSignals(t *testing.T) {
	host, g := net.Pipe()
	defer g.Close()
	sigs := make(chan os.Signal, 1)
	sigs <- syscall.SIGINT
	spec := &Spec{Args: []string{"/x"}, Stdout: io.Discard, Stderr: io.Discard, Signals: sigs}
	spec.setDefaults()
	s := &session{spec: spec, stats: new(Stats), console: &tailWriter{w: io.Discard}, qemuStart: time.Now()}
	done := make(chan struct{})
	go func() { s.serve(host); host.Close(); close(done) }()

	g.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := g.Write(wire.AppendFrame(nil, wire.Hello, []byte(`{}`))); err != nil {
		t.Fatal(err)
	}
	r := wire.NewReader(g)
	for {
		f, err := r.ReadFrame()
		if err != nil {
			t.Fatalf("no Signal frame: %v", err)
		}
		if f.Type != wire.Signal {
			continue
		}
		if n, err := wire.DecodeInt32(f.Payload); err != nil || n != int(syscall.SIGINT) {
			t.Fatalf("signal frame %x: %d %v", f.Payload, n, err)
		}
		break
	}
	go io.Copy(io.Discard, g) // the Ack
	if _, err := g.Write(wire.AppendFrame(nil, wire.Exit, wire.EncodeInt32(130))); err != nil {
		t.Fatal(err)
	}
	<-done
	if !s.exited || s.status != 130 {
		t.Fatalf("exited %v status %d err %v", s.exited, s.status, s.err)
	}
}
