package main

import "slices"

// summary describes a sample by its size, extremes and median.
type summary struct {
	N                int
	Min, Median, Max float64
}

func summarize(xs []float64) summary {
	if len(xs) == 0 {
		return summary{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	med := s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return summary{N: n, Min: s[0], Median: med, Max: s[n-1]}
}

// harmonic is the harmonic mean of positive rates: for equal amounts moved
// at each rate one after the other, the overall rate.
func harmonic(rates ...float64) float64 {
	var inv float64
	for _, r := range rates {
		if r <= 0 {
			return 0
		}
		inv += 1 / r
	}
	return float64(len(rates)) / inv
}

func mean(xs []float64) float64 {
	var sum float64
	for _, x := range xs {
		sum += x
	}
	return sum / float64(len(xs))
}
