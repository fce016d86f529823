package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/huskvm/husk/internal/testhost"
)

// fakeHosts replaces testhost.Run for a test: each call runs the next of
// steps (the last one repeats) and is counted.
func fakeHosts(t *testing.T, steps ...func(context.Context, testhost.Spec) (int, error)) *atomic.Int32 {
	t.Helper()
	var calls atomic.Int32
	old := hostRun
	hostRun = func(ctx context.Context, s testhost.Spec) (int, error) {
		n := int(calls.Add(1))
		return steps[min(n, len(steps))-1](ctx, s)
	}
	t.Cleanup(func() { hostRun = old })
	return &calls
}

var errDied = fmt.Errorf("testhost: %w: hung, it sent nothing for 2m0s\n--- test host console ---\n...", testhost.ErrHostDied)

func dies(context.Context, testhost.Spec) (int, error) { return -1, errDied }

// TestRunStagedRetries: a test host that dies before anything of the run
// reached the user, or came from them, is replaced, at most hostAttempts
// times in all; one that dies after is not, nor is any other failure.
func TestRunStagedRetries(t *testing.T) {
	cmd := []string{"python3", "-c", "print(6*7)"}
	var args [][]string
	exits := func(ctx context.Context, s testhost.Spec) (int, error) {
		args = append(args, s.Args)
		return 7, nil
	}
	prints := func(ctx context.Context, s testhost.Spec) (int, error) {
		s.Stdout.Write([]byte("partial output\n"))
		return -1, errDied
	}
	readsSignal := func(ctx context.Context, s testhost.Spec) (int, error) {
		<-s.Signals
		return -1, errDied
	}
	for _, tc := range []struct {
		name   string
		steps  []func(context.Context, testhost.Spec) (int, error)
		stdin  bool
		signal bool
		calls  int
		code   int // when no error
	}{
		{name: "died twice", steps: []func(context.Context, testhost.Spec) (int, error){dies, dies, exits}, calls: 3, code: 7},
		{name: "died always", steps: []func(context.Context, testhost.Spec) (int, error){dies}, calls: hostAttempts},
		{name: "died after output", steps: []func(context.Context, testhost.Spec) (int, error){prints, exits}, calls: 1},
		{name: "died with stdin", steps: []func(context.Context, testhost.Spec) (int, error){dies, exits}, stdin: true, calls: 1},
		{name: "died after a signal", steps: []func(context.Context, testhost.Spec) (int, error){readsSignal, exits}, signal: true, calls: 1},
		{name: "other failure", steps: []func(context.Context, testhost.Spec) (int, error){
			func(context.Context, testhost.Spec) (int, error) {
				return -1, errors.New("testhost: start qemu: no such file")
			}, exits}, calls: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args = nil
			calls := fakeHosts(t, tc.steps...)
			sigs := make(chan os.Signal, 8)
			if tc.signal {
				sigs <- syscall.SIGINT
			}
			o := &runOptions{cpus: 2, mem: 512, user: "root", stdin: tc.stdin}
			code, err := runStaged(t.Context(), o, cmd, t.TempDir(), sigs)
			if int(calls.Load()) != tc.calls {
				t.Errorf("%d test hosts, want %d", calls.Load(), tc.calls)
			}
			if tc.code != 0 {
				if err != nil || code != tc.code {
					t.Fatalf("got %d, %v; want %d", code, err, tc.code)
				}
				if len(args) != 1 || !slices.Equal(args[0][len(args[0])-len(cmd):], cmd) {
					t.Errorf("inner command line %q", args)
				}
				return
			}
			if err == nil {
				t.Fatalf("got %d and no error", code)
			}
		})
	}
}

// TestRunStagedTimeout: a fresh test host gets what is left of --timeout,
// and the run ends at --timeout across test hosts with exit status 124.
func TestRunStagedTimeout(t *testing.T) {
	var timeouts []string
	record := func(s testhost.Spec) {
		i := slices.Index(s.Args, "--timeout")
		if i < 0 {
			t.Errorf("no --timeout in %q", s.Args)
			return
		}
		timeouts = append(timeouts, s.Args[i+1])
	}
	fakeHosts(t,
		func(ctx context.Context, s testhost.Spec) (int, error) {
			record(s)
			time.Sleep(1200 * time.Millisecond)
			return -1, errDied
		},
		func(ctx context.Context, s testhost.Spec) (int, error) {
			record(s)
			<-ctx.Done()
			return -1, context.Cause(ctx)
		})
	o := &runOptions{cpus: 1, mem: 256, user: "root", timeout: 4 * time.Second}
	ctx, cancel := context.WithTimeoutCause(t.Context(), o.timeout, errTimedOut)
	defer cancel()
	code, err := runStaged(ctx, o, []string{"sleep", "60"}, t.TempDir(), make(chan os.Signal, 8))
	if err != nil || code != exitTimeout {
		t.Fatalf("got %d, %v; want %d", code, err, exitTimeout)
	}
	if len(timeouts) != 2 || timeouts[0] != "4s" || !strings.HasSuffix(timeouts[1], "s") || timeouts[1] == "4s" {
		t.Errorf("inner --timeout %q, want 4s and then what was left", timeouts)
	}
}

// TestRunHereBootRetries: a guest that powers off before its agent answers
// is booted again, at most bootAttempts times; a husk-vmm that fails is not.
func TestRunHereBootRetries(t *testing.T) {
	for _, tc := range []struct {
		name  string
		exit  int
		boots int
	}{
		{"guest reset", 0, bootAttempts},
		{"husk-vmm failed", 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			count := filepath.Join(dir, "boots")
			vmm := filepath.Join(dir, "fake-vmm")
			script := fmt.Sprintf("#!/bin/sh\necho boot >> %s\necho 'level=WARN msg=guest_triple_fault rip=0xfff0' >&2\nexit %d\n", count, tc.exit)
			if err := os.WriteFile(vmm, []byte(script), 0o755); err != nil {
				t.Fatal(err)
			}
			o := &runOptions{cpus: 1, mem: 64, user: "root", vmm: vmm, kernel: "k", rootfs: "r"}
			code, err := runHere(t.Context(), o, []string{"true"}, make(chan os.Signal, 8))
			if err == nil || !strings.HasPrefix(err.Error(), "boot: ") {
				t.Fatalf("got %d, %v; want a boot error", code, err)
			}
			b, _ := os.ReadFile(count)
			if n := strings.Count(string(b), "boot"); n != tc.boots {
				t.Errorf("%d boots, want %d", n, tc.boots)
			}
			if tc.exit == 0 && !strings.Contains(err.Error(), "guest_triple_fault") {
				t.Errorf("the last boot's failure is not in the error: %v", err)
			}
		})
	}
}
