package bench

import (
	"math"
	"slices"
	"time"
)

// Stat summarises one metric over the runs of a scenario: the median is
// what the tables show, min and max how much the machine let it wander.
type Stat struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	N      int     `json:"n"`
}

// summarize ignores NaNs (a metric a failed run could not produce).
func summarize(xs []float64) Stat {
	var v []float64
	for _, x := range xs {
		if !math.IsNaN(x) {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return Stat{Median: math.NaN(), Min: math.NaN(), Max: math.NaN()}
	}
	slices.Sort(v)
	return Stat{Median: percentileSorted(v, 50), Min: v[0], Max: v[len(v)-1], N: len(v)}
}

// percentileSorted is the nearest-rank percentile on sorted values, with
// the median of an even count taken as the mean of the middle two.
func percentileSorted(v []float64, p float64) float64 {
	n := len(v)
	if n == 0 {
		return math.NaN()
	}
	if p == 50 {
		if n%2 == 1 {
			return v[n/2]
		}
		return (v[n/2-1] + v[n/2]) / 2
	}
	rank := int(math.Ceil(p / 100 * float64(n)))
	return v[min(max(rank, 1), n)-1]
}

// latencyStats returns p50, p99, mean and max in milliseconds.
func latencyStats(ds []time.Duration) (p50, p99, mean, maxMS float64) {
	if len(ds) == 0 {
		return math.NaN(), math.NaN(), math.NaN(), math.NaN()
	}
	v := make([]float64, len(ds))
	var sum float64
	for i, d := range ds {
		v[i] = float64(d) / float64(time.Millisecond)
		sum += v[i]
	}
	slices.Sort(v)
	return percentileSorted(v, 50), percentileSorted(v, 99), sum / float64(len(v)), v[len(v)-1]
}

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

const (
	mib = 1 << 20
	gib = 1 << 30
)
