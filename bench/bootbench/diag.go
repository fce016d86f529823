//go:build linux

package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// diagnoseHang describes a hung VMM process for triage: each thread's
// state, CPU time and kernel stack, twice a second apart, and KVM's
// per-VM statistics from debugfs (mounted if need be) over that second. A
// vCPU thread sleeping in kvm_vcpu_block with no exits is a halted guest
// waiting for an interrupt that does not come; one burning CPU time with
// exits climbing is a guest that spins.
func diagnoseHang(pid int) string {
	var b strings.Builder
	stats0, statsErr := kvmStats(pid)
	threads0 := threadStates(pid)
	time.Sleep(time.Second)
	stats1, _ := kvmStats(pid)
	threads1 := threadStates(pid)
	fmt.Fprintf(&b, "threads (state, utime+stime ticks a second apart, kernel stack):\n")
	for _, tid := range sortedKeys(threads1) {
		t0, t1 := threads0[tid], threads1[tid]
		fmt.Fprintf(&b, "  %d %s %s ticks %d -> %d\n", tid, t1.comm, t1.state, t0.ticks, t1.ticks)
		for _, f := range t1.stack {
			fmt.Fprintf(&b, "      %s\n", f)
		}
	}
	if len(stats1) == 0 {
		fmt.Fprintf(&b, "kvm debugfs statistics: not available (%v)\n", statsErr)
		return b.String()
	}
	fmt.Fprintf(&b, "kvm debugfs statistics (value, change over a second):\n")
	for _, k := range sortedKeys(stats1) {
		if stats1[k] == 0 {
			continue
		}
		fmt.Fprintf(&b, "  %-40s %12d %+d\n", k, stats1[k], stats1[k]-stats0[k])
	}
	return b.String()
}

type threadState struct {
	comm, state string
	ticks       uint64
	stack       []string
}

func threadStates(pid int) map[int]threadState {
	out := map[int]threadState{}
	dir := fmt.Sprintf("/proc/%d/task", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return out
	}
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var t threadState
		if stat, err := os.ReadFile(filepath.Join(dir, e.Name(), "stat")); err == nil {
			if i, j := bytes.IndexByte(stat, '('), bytes.LastIndexByte(stat, ')'); i >= 0 && j > i {
				t.comm = string(stat[i+1 : j])
				f := strings.Fields(string(stat[j+1:]))
				if len(f) > 12 {
					t.state = f[0]
					ut, _ := strconv.ParseUint(f[11], 10, 64)
					st, _ := strconv.ParseUint(f[12], 10, 64)
					t.ticks = ut + st
				}
			}
		}
		if stack, err := os.ReadFile(filepath.Join(dir, e.Name(), "stack")); err == nil {
			lines := strings.Split(strings.TrimSpace(string(stack)), "\n")
			t.stack = lines[:min(len(lines), 8)]
		}
		out[tid] = t
	}
	return out
}

// kvmStats reads the statistics files of the VM(s) of pid in KVM's debugfs
// directory (/sys/kernel/debug/kvm/<tid>-<fd>/), mounting debugfs first
// if it is not there.
func kvmStats(pid int) (map[string]int64, error) {
	const debugfs = "/sys/kernel/debug"
	if _, err := os.Stat(debugfs + "/kvm"); err != nil {
		if err := unix.Mount("debugfs", debugfs, "debugfs", 0, ""); err != nil {
			return nil, fmt.Errorf("mount debugfs: %w", err)
		}
	}
	out := map[string]int64{}
	// The directory is named after the thread that created the VM.
	var dirs []string
	for tid := range threadStates(pid) {
		d, _ := filepath.Glob(fmt.Sprintf("%s/kvm/%d-*", debugfs, tid))
		dirs = append(dirs, d...)
	}
	if len(dirs) == 0 {
		ents, _ := os.ReadDir(debugfs + "/kvm")
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		return nil, fmt.Errorf("no %s/kvm/<thread of %d>-* among %v", debugfs, pid, names)
	}
	for _, d := range dirs {
		filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			if err != nil || e.IsDir() {
				return nil
			}
			v, err := os.ReadFile(p)
			if err != nil {
				return nil
			}
			n, err := strconv.ParseInt(strings.TrimSpace(string(v)), 10, 64)
			if err != nil {
				return nil
			}
			rel, _ := filepath.Rel(d, p)
			out[rel] += n
			return nil
		})
	}
	return out, nil
}

func sortedKeys[K string | int, V any](m map[K]V) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
