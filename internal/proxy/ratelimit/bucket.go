package ratelimit

import (
	"fmt"
	"math"
	"sync/atomic"
	"time"
)

// maxRate bounds Rate: one token then costs at least a nanosecond of the
// bucket's clock, the resolution of its state.
const maxRate = 1e9

// BucketConfig configures a token bucket. The caller does not touch it
// after passing it to a constructor.
type BucketConfig struct {
	// Rate is the refill rate in tokens per second, in (0, 1e9]; for a
	// byte limit a token is a byte, so the cap is 1 GB/s (8 Gbit/s).
	Rate float64
	// Burst is the bucket's capacity in tokens, at least 1. A new bucket
	// is full.
	Burst int
	// Now is the clock; nil means time.Now. Tests inject a fake one.
	Now func() time.Time
}

func (c BucketConfig) validate() error {
	switch {
	case math.IsNaN(c.Rate) || c.Rate <= 0 || c.Rate > maxRate:
		return fmt.Errorf("rate: invalid value %v: must be in (0, %g] tokens per second", c.Rate, maxRate)
	case c.Burst < 1:
		return fmt.Errorf("burst: invalid value %d: must be at least 1", c.Burst)
	}
	return nil
}

// params are the immutable numbers of a bucket, shared by every bucket of
// a Keyed limiter.
type params struct {
	// nsPerToken is the emission interval: the time one token takes to
	// refill, in nanoseconds (fractional for high rates).
	nsPerToken float64
	// tolerance is how far the theoretical arrival time may run ahead of
	// the clock: Burst tokens' worth of time.
	tolerance int64
	burst     int
	now       func() time.Time
	base      time.Time
}

func newParams(c BucketConfig) params {
	p := params{nsPerToken: 1e9 / c.Rate, burst: c.Burst, now: c.Now}
	if p.now == nil {
		p.now = time.Now
	}
	p.base = p.now()
	p.tolerance = p.cost(c.Burst)
	return p
}

// cost is the refill time of n tokens, at least a nanosecond so that a
// take always moves the state.
func (p *params) cost(n int) int64 {
	return max(1, int64(math.Ceil(float64(n)*p.nsPerToken)))
}

// clock is the time since the bucket was made, in nanoseconds. time.Time's
// monotonic reading keeps it steady when the wall clock jumps.
func (p *params) clock() int64 { return int64(p.now().Sub(p.base)) }

// state is a bucket's only mutable field: the generic cell rate algorithm
// (GCRA) form of a token bucket keeps one number, the theoretical arrival
// time (TAT) at which the bucket would be empty of debt, so it updates
// with a single compare-and-swap instead of a lock. Tokens available at
// time now are (now + tolerance - tat) / nsPerToken, capped at Burst.
type state struct {
	tat atomic.Int64
}

// take takes n tokens if they are all available and otherwise returns the
// time until they will be.
func (s *state) take(p *params, now int64, n int) (bool, time.Duration) {
	c := p.cost(n)
	for {
		tat := s.tat.Load()
		next := max(tat, now) + c
		if wait := next - p.tolerance - now; wait > 0 {
			return false, time.Duration(wait)
		}
		if s.tat.CompareAndSwap(tat, next) {
			return true, 0
		}
	}
}

// reserve takes n tokens whether or not they are available, running into
// debt, and returns how long the caller must wait before using them.
func (s *state) reserve(p *params, now int64, n int) time.Duration {
	c := p.cost(n)
	for {
		tat := s.tat.Load()
		next := max(tat, now) + c
		if s.tat.CompareAndSwap(tat, next) {
			return time.Duration(max(0, next-p.tolerance-now))
		}
	}
}

// full reports whether the bucket holds Burst tokens, so that dropping it
// and starting a new (full) one loses nothing.
func (s *state) full(now int64) bool { return s.tat.Load() <= now }

// Bucket is a token bucket safe for concurrent use without a lock.
type Bucket struct {
	p params
	s state
}

// NewBucket returns a full bucket. Errors name the field and the reason.
func NewBucket(c BucketConfig) (*Bucket, error) {
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("token bucket: %w", err)
	}
	return &Bucket{p: newParams(c)}, nil
}

// Allow takes one token. When none is left it returns false and the time
// until the next token, for a retry-after header (see RetryAfterSeconds).
func (b *Bucket) Allow() (ok bool, retryAfter time.Duration) {
	return b.s.take(&b.p, b.p.clock(), 1)
}

// AllowN is Allow for n tokens at once: all or none.
func (b *Bucket) AllowN(n int) (ok bool, retryAfter time.Duration) {
	return b.s.take(&b.p, b.p.clock(), n)
}

// Reserve takes n tokens, going into debt when they are not there, and
// returns how long the caller must wait before using them; callers that
// share the bucket are served in the order they reserved. A caller that
// gives up after reserving does not give its tokens back: the debt is at
// most one reservation per waiting caller. Byte limits use it through Copy.
func (b *Bucket) Reserve(n int) time.Duration {
	return b.s.reserve(&b.p, b.p.clock(), n)
}

// RetryAfterSeconds rounds a wait up to whole seconds, at least 1, for the
// retry-after header (RFC 9110 10.2.3 allows only whole seconds).
func RetryAfterSeconds(wait time.Duration) int64 {
	return max(1, int64((wait+time.Second-1)/time.Second))
}
