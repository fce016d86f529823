package testhost

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// bootDeadline bounds one test host run in these tests. A boot takes
// 2–5 s on an idle 2-core machine and about twice that on a busy one.
const bootDeadline = 3 * time.Minute

// helperDisk builds testdata/helper into a fresh directory's bin/ and
// returns it as the artifact disk "bin".
func helperDisk(t *testing.T) Disk {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if err := GoBuild(ctx, filepath.Join(dir, "bin", "helper"), "./internal/testhost/testdata/helper", false); err != nil {
		t.Fatal(err)
	}
	return Disk{Name: "bin", Path: dir}
}

// runTestHost runs the Spec that spec returns, and runs a fresh one again
// in a fresh test host if the first test host died on its own (ErrHostDied;
// its kernel faulting or hanging under TCG's nested SVM, docs/testhost.md):
// that says nothing about what these tests check.
func runTestHost(t *testing.T, spec func() Spec) (int, error) {
	t.Helper()
	for try := 1; ; try++ {
		ctx, cancel := context.WithTimeout(t.Context(), bootDeadline)
		code, err := Run(ctx, spec())
		cancel()
		if !errors.Is(err, ErrHostDied) || try == 2 {
			return code, err
		}
		t.Logf("RERUN: %v\nrunning it again in a fresh test host (docs/testhost.md)", err)
	}
}

func logStats(t *testing.T, st *Stats) {
	t.Helper()
	t.Logf("prepare %v, boot %v (hostinit started at %v, ready at %v guest time), command %v, shutdown %v, total %v",
		st.Prepare.Round(time.Millisecond), st.Boot.Round(time.Millisecond), st.GuestInit.Round(time.Millisecond),
		st.GuestReady.Round(time.Millisecond), st.Command.Round(time.Millisecond), st.Shutdown.Round(time.Millisecond),
		st.Total.Round(time.Millisecond))
}

func TestTestHostRunsCommand(t *testing.T) {
	RequireQEMU(t)
	disk := helperDisk(t)

	t.Run("streams", func(t *testing.T) {
		// Every byte value, over several chunks: stdin → stdout unchanged,
		// stderr separate, exit status 7.
		in := bytes.Repeat(func() []byte {
			b := make([]byte, 256)
			for i := range b {
				b[i] = byte(i)
			}
			return b
		}(), 400) // 100 KiB, > 3 chunks
		var stdout, stderr, console bytes.Buffer
		var st Stats
		code, err := runTestHost(t, func() Spec {
			stdout.Reset()
			stderr.Reset()
			console.Reset()
			return Spec{
				Disks:   []Disk{disk},
				Args:    []string{"/artifacts/bin/bin/helper", "cat", "err:to stderr\x01\xff", "out:END", "exit:7"},
				Stdin:   bytes.NewReader(in),
				Stdout:  &stdout,
				Stderr:  &stderr,
				Console: &console,
				Stats:   &st,
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		logStats(t, &st)
		if code != 7 {
			t.Errorf("exit status %d, want 7; stderr %q", code, stderr.String())
		}
		if want := append(in, "END"...); !bytes.Equal(stdout.Bytes(), want) {
			t.Errorf("stdout: %d bytes, want %d (stdin + END); first difference at %d",
				stdout.Len(), len(want), firstDiff(stdout.Bytes(), want))
		}
		if got := stderr.String(); got != "to stderr\x01\xff" {
			t.Errorf("stderr %q", got)
		}
		if bytes.Contains(console.Bytes(), []byte("END")) || bytes.Contains(console.Bytes(), []byte("to stderr")) {
			t.Errorf("command output leaked onto the console:\n%s", console.String())
		}
		if !st.KVM {
			t.Errorf("no /dev/kvm in the test host")
		}
	})

	t.Run("kvm-env-dir-raw", func(t *testing.T) {
		raw := filepath.Join(t.TempDir(), "raw.img")
		rawData := bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, 1024)
		if err := os.WriteFile(raw, rawData, 0o644); err != nil {
			t.Fatal(err)
		}
		var stdout, stderr bytes.Buffer
		var st Stats
		code, err := runTestHost(t, func() Spec {
			stdout.Reset()
			stderr.Reset()
			return Spec{
				Disks:  []Disk{disk, {Name: "raw", Path: raw}},
				Args:   []string{"helper", "env", "kvm", "ls:/artifacts", "head:/artifacts/raw"}, // looked up in PATH
				Env:    []string{"FOO=bar baz", "PATH=/artifacts/bin/bin"},
				Dir:    "/artifacts/bin",
				Stdout: &stdout,
				Stderr: &stderr,
				Stats:  &st,
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		logStats(t, &st)
		out := stdout.String()
		if code != 0 {
			t.Fatalf("exit status %d; stdout %q stderr %q", code, out, stderr.String())
		}
		for _, want := range []string{"wd=/artifacts/bin\n", "FOO=bar baz\n", "PATH=/artifacts/bin/bin\n", "HOME=/tmp\n", "kvm ok: [io port 0x10 value 42 hlt]", "\nbin\nraw\n",
			"head=deadbeefdeadbeefdeadbeefdeadbeef\n"} {
			if !strings.Contains(out, want) {
				t.Errorf("stdout lacks %q:\n%s", want, out)
			}
		}
		t.Logf("modules: %v", st.Modules)
	})

	t.Run("not-found", func(t *testing.T) {
		var stderr bytes.Buffer
		code, err := runTestHost(t, func() Spec {
			stderr.Reset()
			return Spec{Args: []string{"nosuchcommand"}, Stderr: &stderr}
		})
		if err != nil {
			t.Fatal(err)
		}
		if code != 127 || !strings.Contains(stderr.String(), "not found") {
			t.Errorf("exit status %d, stderr %q; want 127, not found", code, stderr.String())
		}
	})

	t.Run("qemu-fails", func(t *testing.T) {
		start := time.Now()
		code, err := Run(t.Context(), Spec{Args: []string{"/x"}, ExtraQEMUArgs: []string{"-no-such-option"}, Timeout: time.Minute})
		if err == nil || code != -1 || !strings.Contains(err.Error(), "exited before connecting") || !strings.Contains(err.Error(), "no-such-option") {
			t.Fatalf("got %d, %v", code, err)
		}
		if time.Since(start) > 20*time.Second {
			t.Errorf("took %v", time.Since(start))
		}
	})

	t.Run("hung", func(t *testing.T) {
		// The test host beats while the command sleeps, so it outlives
		// the silence limit; frozen (QEMU stopped), it is taken for
		// dead well before the timeout, and QEMU is gone after.
		tmp := t.TempDir()
		t.Setenv("TMPDIR", tmp)
		const limit = 12 * time.Second
		up := make(chan struct{})
		var once sync.Once
		stdout := writerFunc(func(p []byte) (int, error) {
			once.Do(func() { close(up) })
			return len(p), nil
		})
		type result struct {
			code int
			err  error
		}
		done := make(chan result, 1)
		go func() {
			code, err := Run(t.Context(), Spec{
				Disks:     []Disk{disk},
				Args:      []string{"/artifacts/bin/bin/helper", "out:up", "sleep:1h"},
				Stdout:    stdout,
				Timeout:   bootDeadline,
				hangAfter: limit,
			})
			done <- result{code, err}
		}()
		select {
		case <-up:
		case r := <-done:
			t.Fatalf("ended before its command wrote: %d, %v", r.code, r.err)
		}
		select {
		case r := <-done:
			t.Fatalf("a beating test host ended after %v: %d, %v", 2*limit, r.code, r.err)
		case <-time.After(2 * limit):
		}
		pids := processesMentioning(tmp)
		if len(pids) != 1 {
			t.Fatalf("processes with %s in their command line: %v, want QEMU alone", tmp, pids)
		}
		pid, _ := strconv.Atoi(pids[0])
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		stopped := time.Now()
		r := <-done
		if !errors.Is(r.err, ErrHostDied) || !strings.Contains(r.err.Error(), "sent nothing") || r.code != -1 {
			t.Fatalf("got %d, %v; want -1 and ErrHostDied for silence", r.code, r.err)
		}
		t.Logf("taken for hung %v after QEMU stopped", time.Since(stopped).Round(time.Millisecond))
		if pids := processesMentioning(tmp); len(pids) > 0 {
			t.Errorf("processes still running with %s in their command line: %v", tmp, pids)
		}
	})

	t.Run("timeout", func(t *testing.T) {
		tmp := t.TempDir()
		t.Setenv("TMPDIR", tmp) // Run's socket directory goes here
		const timeout = 20 * time.Second
		start := time.Now()
		code, err := Run(t.Context(), Spec{
			Disks:   []Disk{disk},
			Args:    []string{"/artifacts/bin/bin/helper", "sleep:1h"},
			Timeout: timeout,
		})
		elapsed := time.Since(start)
		if !errors.Is(err, ErrTimeout) || code != -1 {
			t.Fatalf("got %d, %v; want -1 and ErrTimeout", code, err)
		}
		if elapsed > timeout+15*time.Second {
			t.Errorf("Run returned %v after the %v timeout", elapsed-timeout, timeout)
		}
		if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
			t.Errorf("left behind in TMPDIR: %v", ents)
		}
		if pids := processesMentioning(tmp); len(pids) > 0 {
			t.Errorf("processes still running with %s in their command line: %v", tmp, pids)
		}
	})
}

func TestRunGoTest(t *testing.T) {
	RequireQEMU(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if err := GoBuild(ctx, filepath.Join(dir, "innertest.test"), "./internal/testhost/testdata/innertest", true); err != nil {
		t.Fatal(err)
	}
	RunGoTest(t, Spec{
		Disks:   []Disk{{Name: "tests", Path: dir}},
		Args:    []string{"/artifacts/tests/innertest.test"},
		Timeout: bootDeadline,
	})
}

// processesMentioning lists the pids whose command line contains s.
func processesMentioning(s string) []string {
	var pids []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(b, []byte(s)) {
			pids = append(pids, e.Name())
		}
	}
	return pids
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
