package main

import (
	"math"
	"slices"
)

// summary describes a sample: its size, extremes, median and 90th
// percentile (nearest rank).
type summary struct {
	N                      int
	Min, Median, P90, Max  float64
	P10, Q1, Q3, Mean, Std float64
}

func summarize(xs []float64) summary {
	if len(xs) == 0 {
		return summary{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	var sum float64
	for _, x := range s {
		sum += x
	}
	mean := sum / float64(len(s))
	var ss float64
	for _, x := range s {
		ss += (x - mean) * (x - mean)
	}
	std := 0.0
	if len(s) > 1 {
		std = math.Sqrt(ss / float64(len(s)-1))
	}
	return summary{
		N: len(s), Min: s[0], Max: s[len(s)-1], Median: median(s),
		P10: rank(s, 0.10), Q1: rank(s, 0.25), Q3: rank(s, 0.75), P90: rank(s, 0.90),
		Mean: mean, Std: std,
	}
}

// median of a sorted, non-empty sample: the mean of the middle two when the
// size is even.
func median(s []float64) float64 {
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// rank is the nearest-rank percentile p (0 < p <= 1) of a sorted, non-empty
// sample: the smallest value with at least p of the sample at or below it.
func rank(s []float64, p float64) float64 {
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}
