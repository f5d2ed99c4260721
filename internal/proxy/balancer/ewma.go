package balancer

import (
	"math"
	"sync"
	"sync/atomic"
	"time"

	"verge.dev/verge/internal/proxy/config"
)

// DefaultDecay is PeakEWMA's time constant (Linkerd's default): how long an
// endpoint takes to live down a latency peak once its responses are fast.
const DefaultDecay = 10 * time.Second

// DefaultRTT is the latency PeakEWMA assumes for an endpoint without
// samples. It is low on purpose: a new endpoint should be tried, and its
// first response replaces the guess (a sample above the estimate is taken
// as is).
const DefaultRTT = time.Millisecond

// rttEstimate is an endpoint's peak-sensitive moving average of latency.
// Writers serialize on mu; Pick reads the two atomics without it, and a
// reader seeing the value of one sample with the stamp of the next is
// harmless (the cost is off by one sample's decay).
type rttEstimate struct {
	mu    sync.Mutex
	est   atomic.Uint64 // math.Float64bits of nanoseconds; 0 = no sample yet
	stamp atomic.Int64  // owner's nanotime of the last sample
}

// observe records one latency sample: a sample above the estimate replaces
// it (the peak), any other pulls it toward the sample by 1-exp(-elapsed/tau),
// so a burst of fast responses does not erase a slow one at once.
func (e *Endpoint) observe(rtt time.Duration) {
	x := float64(max(rtt, 1))
	now := e.own.nanotime()
	tau := e.decay()
	r := &e.rtt
	r.mu.Lock()
	defer r.mu.Unlock()
	old := math.Float64frombits(r.est.Load())
	est := x
	if old != 0 && x < old {
		d := decay(float64(max(now-r.stamp.Load(), 0)) / tau)
		est = old*d + x*(1-d)
	}
	r.est.Store(math.Float64bits(est))
	r.stamp.Store(now)
}

// RTT returns the endpoint's latency estimate decayed to now, as PeakEWMA
// weighs it, and false when it has no sample yet. For metrics and tests.
func (e *Endpoint) RTT() (time.Duration, bool) {
	est, ok := e.rttAt(e.own.nanotime(), e.decay())
	return time.Duration(est), ok
}

func (e *Endpoint) decay() float64 {
	if e.own != nil && e.own.tau > 0 {
		return float64(e.own.tau)
	}
	return float64(DefaultDecay)
}

// rttAt is the estimate seen at now: like Linkerd's (tower's PeakEwma) it
// also decays toward zero while no response arrives, so an endpoint that
// lost every comparison after a slow spell is tried again within a few tau
// instead of never.
func (e *Endpoint) rttAt(now int64, tau float64) (float64, bool) {
	est := math.Float64frombits(e.rtt.est.Load())
	if est == 0 {
		return float64(DefaultRTT), false
	}
	if elapsed := now - e.rtt.stamp.Load(); elapsed > 0 {
		est *= decay(float64(elapsed) / tau)
	}
	return est, true
}

// decay is exp(-x) for x ≥ 0. Samples on a busy endpoint arrive a tiny
// fraction of tau apart, where four terms of the series are exact to 1e-9
// and cost a fraction of math.Exp.
func decay(x float64) float64 {
	if x < 1.0/64 {
		return 1 - x*(1-x*(0.5-x/6))
	}
	return math.Exp(-x)
}

// PeakEWMA is Linkerd's latency-aware balancer: each endpoint's cost is its
// peak-sensitive moving average of latency (fed by DoneRTT) times its
// in-flight requests plus one, and a pick compares two endpoints sampled at
// random in proportion to weight and takes the cheaper (power of two
// choices). A slow endpoint's first slow response makes it expensive at
// once; it gets traffic back as its estimate decays. Endpoints ended with
// Done alone keep their estimate unchanged.
type PeakEWMA struct {
	endpoints
}

// Update replaces the endpoint set, keeping the state (including latency
// estimates) of endpoints that stay.
func (b *PeakEWMA) Update(eps []config.Endpoint) { b.update(eps, b.install) }

func (b *PeakEWMA) install(eps []*Endpoint, weights []uint32, h *health) {
	b.table.Store(newTable(eps, weights, h))
}

// Pick returns the cheaper of two random usable endpoints, or nil when there
// is none.
func (b *PeakEWMA) Pick() *Endpoint {
	t := b.table.Load()
	if t == nil || len(t.eps) == 0 {
		return nil
	}
	var i uint32
	if len(t.eps) > 1 {
		var j uint32
		i, j = t.two()
		if i != j && t.eps[j].cheaper(t.eps[i]) {
			i = j
		}
	}
	e := t.eps[i]
	e.inFlight.Add(1)
	return e
}

// cheaper reports whether e costs less than o now, cost being the
// estimate decayed to now times in-flight requests plus one. Both decay
// from their last sample with the same tau, so when both have samples the
// comparison needs neither the clock nor two exponentials:
//
//	est_e·(n_e+1)·exp(-(now-s_e)/τ) < est_o·(n_o+1)·exp(-(now-s_o)/τ)
//	⇔ est_e·(n_e+1)·exp(-(s_o-s_e)/τ) < est_o·(n_o+1)
func (e *Endpoint) cheaper(o *Endpoint) bool {
	ee := math.Float64frombits(e.rtt.est.Load())
	eo := math.Float64frombits(o.rtt.est.Load())
	ce := ee * float64(e.inFlight.Load()+1)
	co := eo * float64(o.inFlight.Load()+1)
	if ee == 0 || eo == 0 {
		// One without samples costs DefaultRTT, undecayed: read the clock.
		now, tau := e.own.nanotime(), e.decay()
		ee, _ = e.rttAt(now, tau)
		eo, _ = o.rttAt(now, tau)
		return ee*float64(e.inFlight.Load()+1) < eo*float64(o.inFlight.Load()+1)
	}
	gap := float64(o.rtt.stamp.Load()-e.rtt.stamp.Load()) / e.decay()
	if gap >= 0 {
		return ce*decay(gap) < co
	}
	return ce < co*decay(-gap)
}
