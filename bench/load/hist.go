package load

import (
	"math"
	"math/bits"
	"time"
)

// The histogram is log-linear, like HdrHistogram with two significant
// digits: every power-of-two range of nanoseconds is split into subBuckets
// linear buckets, so a recorded value is off by less than 1/subBuckets
// (0.8%) whatever its size, and memory is fixed (35 KiB) however many
// values are recorded. A sorted sample would be exact but grows with the
// run; HdrHistogram itself is not a dependency we want for one type.
const (
	subBits    = 7
	subBuckets = 1 << subBits
	// maxValue caps recorded values at about 36 minutes; larger values are
	// counted in the last bucket.
	maxValue = 1<<41 - 1
	nBuckets = (41-subBits)*subBuckets + subBuckets
)

// Histogram records latencies. The zero value is ready to use. It is not
// safe for concurrent use: each load connection owns one and Run merges them.
type Histogram struct {
	counts   [nBuckets]uint64
	total    uint64
	min, max time.Duration
	sum      time.Duration
}

func bucketOf(v uint64) int {
	if v < subBuckets {
		return int(v)
	}
	e := bits.Len64(v) - subBits - 1 // v>>e is in [subBuckets, 2*subBuckets)
	return (e+1)*subBuckets + int(v>>e) - subBuckets
}

// bucketRange returns the lowest value of bucket i and its width.
func bucketRange(i int) (low, width uint64) {
	if i < subBuckets {
		return uint64(i), 1
	}
	e := i/subBuckets - 1
	return uint64(i%subBuckets+subBuckets) << e, 1 << e
}

// Record adds one latency. Negative values count as zero.
func (h *Histogram) Record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	v := uint64(d)
	if v > maxValue {
		v = maxValue
	}
	h.counts[bucketOf(v)]++
	if h.total == 0 || d < h.min {
		h.min = d
	}
	if d > h.max {
		h.max = d
	}
	h.total++
	h.sum += d
}

// Merge adds every value recorded in o to h.
func (h *Histogram) Merge(o *Histogram) {
	if o.total == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.total == 0 || o.min < h.min {
		h.min = o.min
	}
	h.max = max(h.max, o.max)
	h.total += o.total
	h.sum += o.sum
}

// Count is the number of recorded values.
func (h *Histogram) Count() uint64 { return h.total }

// Min and Max are the exact extremes; zero when nothing was recorded.
func (h *Histogram) Min() time.Duration { return h.min }
func (h *Histogram) Max() time.Duration { return h.max }

// Mean is the exact mean; zero when nothing was recorded.
func (h *Histogram) Mean() time.Duration {
	if h.total == 0 {
		return 0
	}
	return h.sum / time.Duration(h.total)
}

// Quantile returns the value below which a fraction q (0 to 1) of the
// recorded values fall: the middle of the bucket holding that rank, clamped
// to the exact min and max. Zero when nothing was recorded.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.total)))
	rank = max(1, min(rank, h.total))
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			low, width := bucketRange(i)
			d := time.Duration(low + width/2)
			return max(h.min, min(d, h.max))
		}
	}
	return h.max
}
