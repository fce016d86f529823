package main

import (
	"math"
	"slices"
)

// summary describes a sample.
type summary struct {
	N                          int
	Min, P10, Median, P90, Max float64
	Mean                       float64
}

// summarize returns the sample's summary; percentiles are nearest-rank,
// the median of an even-sized sample the mean of the middle two.
func summarize(xs []float64) summary {
	if len(xs) == 0 {
		return summary{}
	}
	s := slices.Sorted(slices.Values(xs))
	n := len(s)
	med := s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	var sum float64
	for _, x := range s {
		sum += x
	}
	return summary{N: n, Min: s[0], P10: nearestRank(s, 0.1), Median: med,
		P90: nearestRank(s, 0.9), Max: s[n-1], Mean: sum / float64(n)}
}

// nearestRank is the smallest value of the sorted sample s with at least a
// fraction p of s at or below it.
func nearestRank(s []float64, p float64) float64 {
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}
