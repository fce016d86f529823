//go:build linux

package main

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"time"
)

// chunkReader returns its chunks one Read at a time.
type chunkReader struct{ chunks []string }

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.chunks[0])
	r.chunks = r.chunks[1:]
	return n, nil
}

func TestWatchMarker(t *testing.T) {
	for _, tc := range []struct {
		name   string
		chunks []string
		marks  int
	}{
		{"split over reads", []string{"HUSK_NPROC=2\r\nHUSK_IN", "IT_", "DONE\r\n", "HUSK_INIT_DONE\n", "after\n"}, 1},
		{"no newline yet", []string{"HUSK_INIT_DON", "E"}, 0},
		{"absent", []string{"Kernel panic\n"}, 0},
	} {
		var keep bytes.Buffer
		mark := make(chan time.Time, 2)
		watchMarker(&chunkReader{chunks: tc.chunks}, &keep, mark)
		if len(mark) != tc.marks {
			t.Errorf("%s: %d marks, want %d", tc.name, len(mark), tc.marks)
		}
		if want := strings.Join(tc.chunks, ""); keep.String() != want {
			t.Errorf("%s: kept %q, want %q", tc.name, keep.String(), want)
		}
	}
}

func TestWatchFirstByte(t *testing.T) {
	var keep bytes.Buffer
	mark := make(chan time.Time, 2)
	watchFirstByte(&chunkReader{chunks: []string{"h", "i\n"}}, &keep, mark)
	if len(mark) != 1 || keep.String() != "hi\n" {
		t.Errorf("%d marks, kept %q; want 1 and %q", len(mark), keep.String(), "hi\n")
	}
	watchFirstByte(&chunkReader{}, &keep, mark)
	if len(mark) != 1 {
		t.Error("marked an empty output")
	}
}

func TestSummarize(t *testing.T) {
	s := summarize([]float64{5, 1, 4, 2, 3, 6, 7, 8, 9, 10})
	want := summary{N: 10, Min: 1, P10: 1, Median: 5.5, P90: 9, Max: 10, Mean: 5.5}
	if s != want {
		t.Errorf("summarize = %+v, want %+v", s, want)
	}
	if s := summarize([]float64{3, 1, 2}); s.Median != 2 || s.P10 != 1 || s.P90 != 3 {
		t.Errorf("odd sample: %+v", s)
	}
	if s := summarize(nil); s != (summary{}) {
		t.Errorf("empty sample: %+v", s)
	}
}
