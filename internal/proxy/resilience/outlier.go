package resilience

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Result is what one attempt tells outlier detection about its endpoint.
type Result uint8

const (
	// ResultSuccess: any response that is not a 5xx. It resets the
	// endpoint's consecutive-error counts.
	ResultSuccess Result = iota
	// Result5xx: a 5xx response other than 502, 503, 504.
	Result5xx
	// ResultGatewayError: 502, 503 or 504.
	ResultGatewayError
	// ResultLocalFailure: no response (connect failure, reset, per-try
	// timeout). Envoy (without split_external_local_origin_errors) counts
	// it both as a 5xx and as a gateway failure.
	ResultLocalFailure
	// ResultIgnore: nothing to learn about the endpoint (a local
	// circuit-breaker overflow, a request the client cancelled). Report
	// ignores it.
	ResultIgnore
)

// ResultOf classifies an attempt from its HTTP status (0 if none) and
// failure, as ShouldRetry takes them.
func ResultOf(status int, failure Failure) Result {
	switch failure {
	case FailureNone:
	case FailureOverflow:
		return ResultIgnore
	default:
		return ResultLocalFailure
	}
	switch {
	case status == 502 || status == 503 || status == 504:
		return ResultGatewayError
	case status >= 500 && status <= 599:
		return Result5xx
	}
	return ResultSuccess
}

// Ejector is the endpoint whose ejection the Detector decides: the
// balancer's endpoint, which stops being picked while ejected. SetEjected
// is called with the Detector's lock held, so that an endpoint's calls
// arrive in order: it must not block for long or call back into the
// Detector. It may take a short lock of its own (balancer.Endpoint takes
// its balancer's); the lock order is then Detector, then that lock, so
// Detector methods must not be called while holding it.
type Ejector interface{ SetEjected(bool) }

// DetectorConfig holds Envoy's consecutive-error outlier detection settings
// for one cluster (OutlierDetection in the cluster proto; success-rate and
// failure-percentage detection are not implemented).
type DetectorConfig struct {
	// Consecutive5xx ejects an endpoint after this many 5xx or local
	// failures in a row; 0 disables it.
	Consecutive5xx uint32
	// ConsecutiveGatewayFailure ejects after this many 502/503/504 or local
	// failures in a row; 0 disables it.
	ConsecutiveGatewayFailure uint32
	// Interval is the time between sweeps that return ejected endpoints.
	Interval time.Duration
	// BaseEjectionTime is the ejection time of a first ejection; the n-th
	// consecutive ejection lasts n times as long.
	BaseEjectionTime time.Duration
	// MaxEjectionTime caps the ejection time (Envoy uses the larger of it
	// and BaseEjectionTime).
	MaxEjectionTime time.Duration
	// MaxEjectionPercent is the share of the cluster's endpoints that may
	// be ejected at once, 0-100; one endpoint may always be ejected when
	// none is (see Detector).
	MaxEjectionPercent int
}

// DefaultDetectorConfig returns Envoy's defaults. ConsecutiveGatewayFailure
// is 0 because Envoy's enforcing_consecutive_gateway_failure defaults to
// 0%: gateway failures are detected but never eject unless enabled.
func DefaultDetectorConfig() DetectorConfig {
	return DetectorConfig{
		Consecutive5xx:     5,
		Interval:           10 * time.Second,
		BaseEjectionTime:   30 * time.Second,
		MaxEjectionTime:    300 * time.Second,
		MaxEjectionPercent: 10,
	}
}

// Validate reports the first field out of range.
func (c DetectorConfig) Validate() error {
	switch {
	case c.Interval < time.Millisecond:
		return fmt.Errorf("outlier detection: interval %v: must be at least 1ms", c.Interval)
	case c.BaseEjectionTime < time.Millisecond:
		return fmt.Errorf("outlier detection: baseEjectionTime %v: must be at least 1ms", c.BaseEjectionTime)
	case c.MaxEjectionTime < 0:
		return fmt.Errorf("outlier detection: maxEjectionTime %v: must not be negative", c.MaxEjectionTime)
	case c.MaxEjectionPercent < 0 || c.MaxEjectionPercent > 100:
		return fmt.Errorf("outlier detection: maxEjectionPercent %d: must be in [0, 100]", c.MaxEjectionPercent)
	}
	return nil
}

// host is one endpoint's detection state. The counters and the ejected
// flag are read and written on the request path; the rest only under
// Detector.mu.
type host struct {
	consec5xx atomic.Uint32
	consecGW  atomic.Uint32
	ejected   atomic.Bool

	ejector Ejector
	// multiplier is Envoy's ejection-time multiplier: incremented by
	// each ejection, decremented by each sweep that finds the endpoint
	// in service.
	multiplier int64
	ejectedAt  time.Time
	removed    bool // Update dropped it; a late Report must not eject it
}

// Detector is passive outlier detection for one cluster, after Envoy's
// consecutive 5xx and consecutive gateway failure detectors.
//
// Report, on the request path, counts an endpoint's consecutive errors with
// atomics (no lock, no allocation); the attempt that reaches a threshold
// ejects the endpoint under the Detector's lock. An ejection lasts
// BaseEjectionTime times the endpoint's multiplier (capped at
// MaxEjectionTime); the multiplier grows with each ejection and shrinks by
// one at each sweep that finds the endpoint back in service, so an endpoint
// that keeps failing stays out longer and longer. Sweep, every Interval in
// Run, returns endpoints whose time is up.
//
// Ejection respects max_ejection_percent as Envoy documents it ("Defaults
// to 10% but will eject at least one host regardless of the value",
// OutlierDetection.max_ejection_percent): an endpoint is ejected if the
// ejected share, it included, stays within MaxEjectionPercent, or if no
// endpoint is ejected at all. gRPC's outlier detection allows the same one
// extra ejection to match Envoy.
type Detector struct {
	cfg      DetectorConfig
	hosts    atomic.Pointer[map[string]*host] // replaced whole by Update
	ejecting atomic.Uint64                    // ejections since creation

	mu      sync.Mutex // guards ejection state; never held by Report's counting
	ejected int        // endpoints ejected now, among those of the last Update
}

// NewDetector returns a detector with no endpoints, or cfg's validation
// error.
func NewDetector(cfg DetectorConfig) (*Detector, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.MaxEjectionTime = max(cfg.MaxEjectionTime, cfg.BaseEjectionTime)
	d := &Detector{cfg: cfg}
	d.hosts.Store(&map[string]*host{})
	return d, nil
}

// Update sets the cluster's endpoints, keyed by address, each with the
// Ejector that receives its ejections (nil for none). Endpoints that stay
// keep their counts and ejection; an ejected one whose Ejector changed has
// SetEjected(true) called on the new one. Removed endpoints are forgotten
// without SetEjected(false). The map is not retained.
func (d *Detector) Update(eps map[string]Ejector) {
	d.mu.Lock()
	defer d.mu.Unlock()
	old := *d.hosts.Load()
	next := make(map[string]*host, len(eps))
	for addr, ej := range eps {
		h := old[addr]
		if h == nil {
			h = &host{}
		} else if h.ejected.Load() && ej != nil && ej != h.ejector {
			ej.SetEjected(true)
		}
		h.ejector = ej
		next[addr] = h
	}
	for addr, h := range old {
		if _, ok := next[addr]; !ok {
			h.removed = true
			if h.ejected.Load() {
				d.ejected--
			}
		}
	}
	d.hosts.Store(&next)
}

// Report records the result of one attempt to the endpoint at addr. Safe
// for concurrent use; addresses not in the last Update and results of
// ejected endpoints (requests still in flight when it was ejected) are
// ignored.
func (d *Detector) Report(addr string, r Result) {
	h := (*d.hosts.Load())[addr]
	if h == nil || r == ResultIgnore || h.ejected.Load() {
		return
	}
	switch r {
	case ResultSuccess:
		// Loads first: a healthy endpoint's counters stay zero, and not
		// writing them keeps their cache line shared between cores.
		if h.consec5xx.Load() != 0 {
			h.consec5xx.Store(0)
		}
		if h.consecGW.Load() != 0 {
			h.consecGW.Store(0)
		}
	case Result5xx:
		if h.consecGW.Load() != 0 {
			h.consecGW.Store(0)
		}
		d.count(h, &h.consec5xx, d.cfg.Consecutive5xx)
	default: // gateway error or local failure: both detectors count it
		d.count(h, &h.consecGW, d.cfg.ConsecutiveGatewayFailure)
		d.count(h, &h.consec5xx, d.cfg.Consecutive5xx)
	}
}

// count adds one error to c and ejects h when the threshold is reached.
// The compare-and-swap lets exactly one of several concurrent reports that
// reach the threshold act on it.
func (d *Detector) count(h *host, c *atomic.Uint32, threshold uint32) {
	if threshold == 0 {
		return
	}
	if n := c.Add(1); n >= threshold && c.CompareAndSwap(n, 0) {
		d.eject(h)
	}
}

func (d *Detector) eject(h *host) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if h.removed || h.ejected.Load() {
		return
	}
	n := len(*d.hosts.Load())
	if d.ejected > 0 && (d.ejected+1)*100 > d.cfg.MaxEjectionPercent*n {
		return
	}
	d.ejected++
	h.multiplier++
	h.ejectedAt = time.Now()
	h.consec5xx.Store(0)
	h.consecGW.Store(0)
	h.ejected.Store(true)
	d.ejecting.Add(1)
	if h.ejector != nil {
		h.ejector.SetEjected(true)
	}
}

// ejectionTimeLocked is how long h's current ejection lasts.
func (d *Detector) ejectionTimeLocked(h *host) time.Duration {
	limit := d.cfg.MaxEjectionTime
	// Past limit/base the product exceeds limit (and might overflow).
	if h.multiplier > int64(limit/d.cfg.BaseEjectionTime) {
		return limit
	}
	return d.cfg.BaseEjectionTime * time.Duration(h.multiplier)
}

// Sweep returns to service the endpoints whose ejection time is up and
// decrements the multiplier of those in service. Run calls it every
// Interval; tests may call it directly.
func (d *Detector) Sweep() {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	for _, h := range *d.hosts.Load() {
		switch {
		case !h.ejected.Load():
			if h.multiplier > 0 {
				h.multiplier--
			}
		case now.Sub(h.ejectedAt) >= d.ejectionTimeLocked(h):
			d.ejected--
			h.consec5xx.Store(0)
			h.consecGW.Store(0)
			h.ejected.Store(false)
			if h.ejector != nil {
				h.ejector.SetEjected(false)
			}
		}
	}
}

// Run sweeps every Interval until ctx ends, then returns nil.
func (d *Detector) Run(ctx context.Context) error {
	t := time.NewTicker(d.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			d.Sweep()
		}
	}
}

// Ejected reports whether the endpoint at addr is ejected now.
func (d *Detector) Ejected(addr string) bool {
	h := (*d.hosts.Load())[addr]
	return h != nil && h.ejected.Load()
}

// Stats returns, for metrics, how many endpoints the detector holds, how
// many are ejected now and how many ejections it made since it was created.
func (d *Detector) Stats() (endpoints, ejected int, ejectionsTotal uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(*d.hosts.Load()), d.ejected, d.ejecting.Load()
}
