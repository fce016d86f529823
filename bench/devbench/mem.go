//go:build linux

package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// vmmMemory is what a VMM has resident, from /proc/PID/smaps, which walks
// the page tables (exact, unlike VmRSS on kernels that batch RSS counting).
type vmmMemory struct {
	rss   int64 // bytes resident in all mappings
	image int64 // bytes resident in mappings of the data image
}

// readMemory reads the memory of process pid; image is the data disk's
// path.
func readMemory(pid int, image string) (vmmMemory, error) {
	smaps, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return vmmMemory{}, err
	}
	if p, err := filepath.EvalSymlinks(image); err == nil {
		image = p
	}
	return parseSmaps(smaps, image)
}

// parseSmaps sums the Rss lines of smaps, in all and in the mappings of
// image.
func parseSmaps(smaps []byte, image string) (vmmMemory, error) {
	var m vmmMemory
	inImage := false
	sc := bufio.NewScanner(bytes.NewReader(smaps))
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if !strings.HasSuffix(fields[0], ":") { // a mapping's header: range perms offset dev inode [path]
			inImage = len(fields) >= 6 && strings.Join(fields[5:], " ") == image
			continue
		}
		if fields[0] != "Rss:" || len(fields) != 3 || fields[2] != "kB" {
			continue
		}
		kb, err := strconv.ParseInt(fields[1], 10, 64)
		if err != nil {
			return vmmMemory{}, fmt.Errorf("smaps: %q: %w", line, err)
		}
		m.rss += kb << 10
		if inImage {
			m.image += kb << 10
		}
	}
	return m, sc.Err()
}

const (
	// memEvery is the interval of memory samples during a blk read.
	memEvery = 250 * time.Millisecond
	// memIdle is how long after a blk read the VMM's memory is sampled
	// once more: long enough for husk's raw backend to drop its mapping of
	// the image (blk.mapIdle, 50 ms), shorter than the pause before the
	// next measurement.
	memIdle = 200 * time.Millisecond
)

// memSamples are a VMM's memory during and after a blk read.
type memSamples struct {
	peak vmmMemory // the most of each figure over the samples during the read
	n    int       // samples during the read
	idle vmmMemory // memIdle after the read
}

// memSampler samples a VMM's memory every memEvery until finish.
type memSampler struct {
	pid   int
	image string
	stop  chan struct{}
	done  chan struct{}
	s     memSamples // written by the sampling goroutine until done is closed
	err   error
}

// startSampling starts sampling process pid's memory.
func startSampling(pid int, image string) *memSampler {
	m := &memSampler{pid: pid, image: image, stop: make(chan struct{}), done: make(chan struct{})}
	go m.run()
	return m
}

func (m *memSampler) run() {
	defer close(m.done)
	t := time.NewTicker(memEvery)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
		x, err := readMemory(m.pid, m.image)
		if err != nil {
			m.err = err
			return
		}
		m.s.peak.rss, m.s.peak.image = max(m.s.peak.rss, x.rss), max(m.s.peak.image, x.image)
		m.s.n++
	}
}

// finish stops the sampling, waits memIdle and takes the sample after.
func (m *memSampler) finish() (memSamples, error) {
	close(m.stop)
	<-m.done
	if m.err != nil {
		return m.s, m.err
	}
	time.Sleep(memIdle)
	var err error
	m.s.idle, err = readMemory(m.pid, m.image)
	return m.s, err
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }
