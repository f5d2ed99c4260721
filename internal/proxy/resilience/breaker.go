package resilience

import (
	"fmt"
	"sync/atomic"
)

// Resource is one of the quantities a Breaker limits.
type Resource uint8

// The resources of Envoy's circuit-breaker thresholds.
const (
	// Connections open to the cluster's endpoints.
	Connections Resource = iota
	// PendingRequests waiting for a connection (queued in a pool).
	PendingRequests
	// Requests outstanding to the cluster.
	Requests
	// Retries outstanding to the cluster (a retry holds it from the
	// moment it is decided until its attempt ends).
	Retries

	numResources
)

var resourceNames = [numResources]string{"connections", "pending_requests", "requests", "retries"}

// String is the resource's name as metrics label it.
func (r Resource) String() string {
	if r < numResources {
		return resourceNames[r]
	}
	return fmt.Sprintf("Resource(%d)", uint8(r))
}

// BreakerConfig holds Envoy's circuit-breaker thresholds for one cluster
// (default priority). A zero field takes Envoy's default.
type BreakerConfig struct {
	MaxConnections     int64 // default 1024
	MaxPendingRequests int64 // default 1024
	MaxRequests        int64 // default 1024
	MaxRetries         int64 // default 3
}

// Envoy's default thresholds.
const (
	DefaultMaxConnections     = 1024
	DefaultMaxPendingRequests = 1024
	DefaultMaxRequests        = 1024
	DefaultMaxRetries         = 3
)

// Validate reports the first negative threshold.
func (c BreakerConfig) Validate() error {
	for i, v := range c.limits() {
		if v < 0 {
			return fmt.Errorf("circuit breaker: max %s %d: must not be negative", Resource(i), v)
		}
	}
	return nil
}

func (c BreakerConfig) limits() [numResources]int64 {
	return [numResources]int64{c.MaxConnections, c.MaxPendingRequests, c.MaxRequests, c.MaxRetries}
}

var defaultLimits = [numResources]int64{DefaultMaxConnections, DefaultMaxPendingRequests, DefaultMaxRequests, DefaultMaxRetries}

// counter sits alone on a cache line: the proxy's goroutines hit the
// request and connection counters of a busy cluster at the same time.
type counter struct {
	inUse    atomic.Int64
	limit    atomic.Int64
	overflow atomic.Uint64
	_        [64 - 24]byte
}

// Breaker is the circuit breaker of one upstream cluster: a counter and a
// limit per Resource. When a counter is at its limit the breaker is open
// for that resource and TryAcquire fails at once; the proxy then answers
// 503 with response flag "UO" (upstream overflow) instead of queueing.
//
// All methods are safe for concurrent use, lock-free and allocation-free.
type Breaker struct {
	c [numResources]counter
}

// NewBreaker returns a closed breaker with cfg's thresholds, or cfg's
// validation error.
func NewBreaker(cfg BreakerConfig) (*Breaker, error) {
	b := &Breaker{}
	if err := b.SetConfig(cfg); err != nil {
		return nil, err
	}
	return b, nil
}

// SetConfig changes the thresholds in place, keeping what is in use: a
// lowered limit refuses new acquisitions until enough are released.
func (b *Breaker) SetConfig(cfg BreakerConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	for i, v := range cfg.limits() {
		if v == 0 {
			v = defaultLimits[i]
		}
		b.c[i].limit.Store(v)
	}
	return nil
}

// TryAcquire takes one unit of r: true if r was below its limit, and the
// caller must Release(r) exactly once when done; false if the breaker is
// open for r (counted as an overflow).
func (b *Breaker) TryAcquire(r Resource) bool {
	c := &b.c[r]
	// Add first, check after: concurrent callers at the limit cannot both
	// pass, and at most a transient excess is undone.
	if c.inUse.Add(1) <= c.limit.Load() {
		return true
	}
	c.inUse.Add(-1)
	c.overflow.Add(1)
	return false
}

// Release returns one unit of r taken by a successful TryAcquire.
func (b *Breaker) Release(r Resource) { b.c[r].inUse.Add(-1) }

// Open reports whether r is at its limit (Envoy's cx_open, rq_pending_open,
// rq_open and rq_retry_open gauges).
func (b *Breaker) Open(r Resource) bool {
	c := &b.c[r]
	return c.inUse.Load() >= c.limit.Load()
}

// Remaining is how many more units of r can be acquired now (Envoy's
// remaining_* gauges), never negative.
func (b *Breaker) Remaining(r Resource) int64 {
	c := &b.c[r]
	return max(c.limit.Load()-c.inUse.Load(), 0)
}

// InUse is how many units of r are held now.
func (b *Breaker) InUse(r Resource) int64 { return max(b.c[r].inUse.Load(), 0) }

// Overflows is how many TryAcquire calls for r failed since the breaker was
// made (Envoy's upstream_cx_overflow, upstream_rq_pending_overflow,
// upstream_rq_retry_overflow; requests overflow as upstream_rq_pending_overflow
// in Envoy, separated here).
func (b *Breaker) Overflows(r Resource) uint64 { return b.c[r].overflow.Load() }
