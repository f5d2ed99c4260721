package resilience

import (
	"fmt"
	"math"
	"sync/atomic"
	"time"
)

// BudgetConfig bounds the retries of one cluster, as Linkerd's retry budget
// (and Finagle's RetryBudget before it): over a sliding Window, retries may
// be at most Ratio times the requests plus MinRetriesPerSecond * Window.
// The ratio keeps retries from multiplying the load of a failing upstream
// (with 0.2, an outage adds at most 20% to the traffic it gets); the floor
// lets a cluster with little traffic still retry.
type BudgetConfig struct {
	// Ratio is retries allowed per request, in [0, 1000].
	Ratio float64
	// MinRetriesPerSecond is the floor, in retries per second, >= 0.
	MinRetriesPerSecond float64
	// Window is the span requests and retries are counted over, at least
	// 10 ms, at most 24 h.
	Window time.Duration
}

// DefaultBudgetConfig is Linkerd's default budget: 20% of requests, at
// least 10 retries a second, over 10 seconds.
func DefaultBudgetConfig() BudgetConfig {
	return BudgetConfig{Ratio: 0.2, MinRetriesPerSecond: 10, Window: 10 * time.Second}
}

// Validate reports the first field out of range.
func (c BudgetConfig) Validate() error {
	switch {
	case !(c.Ratio >= 0 && c.Ratio <= 1000): // also refuses NaN
		return fmt.Errorf("retry budget: ratio %v: must be in [0, 1000]", c.Ratio)
	case !(c.MinRetriesPerSecond >= 0 && c.MinRetriesPerSecond <= math.MaxInt32):
		return fmt.Errorf("retry budget: minRetriesPerSecond %v: must be in [0, %d]", c.MinRetriesPerSecond, math.MaxInt32)
	case c.Window < budgetBuckets*time.Millisecond || c.Window > 24*time.Hour:
		return fmt.Errorf("retry budget: window %v: must be in [%v, 24h]", c.Window, budgetBuckets*time.Millisecond)
	}
	return nil
}

// budgetBuckets is how many slices the window is cut into. The window then
// slides in steps of Window/budgetBuckets: the counts cover between
// (budgetBuckets-1)/budgetBuckets of the window and the whole of it.
const budgetBuckets = 10

// Budget counts the requests and retries of one cluster over a sliding
// window and hands out retry permissions. It is safe for concurrent use and
// lock-free: Request is one compare-and-swap on the current bucket, TryRetry
// reads the 2*budgetBuckets bucket words and adds to one. Neither allocates.
type Budget struct {
	start time.Time // monotonic origin of bucket epochs
	width int64     // nanoseconds per bucket
	ratio float64
	floor float64 // MinRetriesPerSecond * Window in seconds

	// Each word packs a bucket's epoch (high 32 bits: elapsed time in
	// bucket widths, wrapping) and its count (low 32 bits), so that moving
	// a bucket to a new epoch and counting in it is one atomic operation:
	// no count is lost or attributed to the wrong epoch when a bucket is
	// reused.
	requests [budgetBuckets]atomic.Uint64
	retries  [budgetBuckets]atomic.Uint64
}

// NewBudget returns an empty budget for cfg, or cfg's validation error.
func NewBudget(cfg BudgetConfig) (*Budget, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Budget{
		start: time.Now(),
		width: int64(cfg.Window / budgetBuckets),
		ratio: cfg.Ratio,
		floor: cfg.MinRetriesPerSecond * cfg.Window.Seconds(),
	}, nil
}

// epoch is the current bucket epoch. Wrapping at 2^32 only matters for a
// bucket left untouched for exactly a multiple of 2^32 widths (136 years
// of 1 s buckets).
func (b *Budget) epoch() uint32 {
	return uint32(int64(time.Since(b.start)) / b.width)
}

// Request records one request (not a retry) to the cluster.
func (b *Budget) Request() {
	e := b.epoch()
	add(&b.requests[e%budgetBuckets], e)
}

// TryRetry takes a retry from the budget: true if the retries of the window,
// this one included, stay within Ratio * requests + floor; false (and
// nothing recorded) otherwise. The retry is recorded before the check, so
// concurrent callers never overshoot the budget together.
func (b *Budget) TryRetry() bool {
	e := b.epoch()
	w := &b.retries[e%budgetBuckets]
	add(w, e)
	if float64(sum(&b.retries, e)) <= b.ratio*float64(sum(&b.requests, e))+b.floor {
		return true
	}
	sub(w, e)
	return false
}

// Window returns the requests and retries counted in the current window,
// for metrics.
func (b *Budget) Window() (requests, retries uint64) {
	e := b.epoch()
	return sum(&b.requests, e), sum(&b.retries, e)
}

func add(w *atomic.Uint64, e uint32) {
	for {
		old := w.Load()
		next := uint64(e)<<32 | 1
		if uint32(old>>32) == e {
			next = old + 1
		}
		if w.CompareAndSwap(old, next) {
			return
		}
	}
}

// sub undoes add unless the bucket has moved to another epoch since (its
// count then no longer matters).
func sub(w *atomic.Uint64, e uint32) {
	for {
		old := w.Load()
		if uint32(old>>32) != e || uint32(old) == 0 || w.CompareAndSwap(old, old-1) {
			return
		}
	}
}

func sum(ws *[budgetBuckets]atomic.Uint64, e uint32) uint64 {
	var n uint64
	for i := range ws {
		v := ws[i].Load()
		// Buckets of the last budgetBuckets epochs; the subtraction wraps,
		// so epochs ahead of e (a concurrent caller's clock read later)
		// are excluded along with stale ones.
		if e-uint32(v>>32) < budgetBuckets {
			n += uint64(uint32(v))
		}
	}
	return n
}
