// Package balancer owns the proxy's endpoint pickers: which upstream endpoint
// of a cluster receives the next request, and the per-endpoint in-flight
// accounting that least-request balancing and metrics read. It does no I/O;
// the proxy feeds it endpoint sets and calls Pick on the request path.
//
// A Balancer publishes an immutable endpoint table through an atomic pointer,
// so Pick never takes a lock; Update builds a new table and carries over the
// *Endpoint of every address that stays, which keeps its in-flight counter
// across configuration changes.
package balancer

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"

	"verge.dev/verge/internal/proxy/config"
)

// maxSchedule caps the expanded weighted schedule. Weights whose reduced sum
// exceeds it are scaled down proportionally (each endpoint keeps at least one
// slot), trading exact ratios for bounded memory.
const maxSchedule = 4096

// Endpoint is one upstream address and its live state. The same *Endpoint is
// kept for an address across Updates for as long as the address stays.
type Endpoint struct {
	Address  string
	inFlight atomic.Int64
}

// InFlight is the number of requests picked for this endpoint and not yet
// reported Done.
func (e *Endpoint) InFlight() int64 { return e.inFlight.Load() }

// Done ends one request that Pick started on this endpoint. Call it exactly
// once per successful Pick, from any goroutine.
func (e *Endpoint) Done() { e.inFlight.Add(-1) }

// Balancer picks endpoints for one cluster.
//
// Pick is called concurrently on the request path and never blocks; it
// returns nil when the cluster has no endpoint. A non-nil result has had its
// in-flight count incremented and the caller must call Done on it. Update may
// be called concurrently with Pick, but Updates must not run concurrently with
// each other.
type Balancer interface {
	Pick() *Endpoint
	Update(eps []config.Endpoint)
	// Endpoints returns the current endpoints; the slice must not be modified.
	Endpoints() []*Endpoint
}

// New returns the balancer for policy (round robin for unknown values),
// holding eps.
func New(policy config.LBPolicy, eps []config.Endpoint) Balancer {
	var b Balancer
	switch policy {
	case config.LBLeastRequest:
		b = &LeastRequest{}
	default:
		b = &RoundRobin{}
	}
	b.Update(eps)
	return b
}

// table is an immutable endpoint set. weights[i] (at least 1) belongs to
// eps[i]; weights live here rather than in Endpoint so that a weight change
// keeps the endpoint's identity and counter. schedule holds indexes into eps,
// each endpoint appearing in proportion to its weight, interleaved smoothly;
// it is nil when all weights are equal (the uniform fast path).
type table struct {
	eps      []*Endpoint
	weights  []uint32
	schedule []uint32
}

func (t *table) size() uint64 {
	if t.schedule != nil {
		return uint64(len(t.schedule))
	}
	return uint64(len(t.eps))
}

// index maps a position in [0, size()) to an index into eps.
func (t *table) index(i uint64) uint32 {
	if t.schedule != nil {
		return t.schedule[i]
	}
	return uint32(i)
}

// endpoints is the shared Update logic: it reuses the *Endpoint of every
// address in old and builds the new table.
type endpoints struct {
	mu    sync.Mutex // serializes Update; never held by Pick
	table atomic.Pointer[table]
}

func (s *endpoints) update(in []config.Endpoint) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := map[string]*Endpoint{}
	if t := s.table.Load(); t != nil {
		for _, e := range t.eps {
			old[e.Address] = e
		}
	}
	t := &table{eps: make([]*Endpoint, 0, len(in)), weights: make([]uint32, 0, len(in))}
	seen := make(map[string]bool, len(in))
	for _, ce := range in {
		if seen[ce.Address] {
			continue
		}
		seen[ce.Address] = true
		e, ok := old[ce.Address]
		if !ok {
			e = &Endpoint{Address: ce.Address}
		}
		t.eps = append(t.eps, e)
		t.weights = append(t.weights, max(ce.Weight, 1))
	}
	t.schedule = buildSchedule(t.weights)
	s.table.Store(t)
}

func (s *endpoints) Endpoints() []*Endpoint {
	if t := s.table.Load(); t != nil {
		return t.eps
	}
	return nil
}

// buildSchedule returns nil when every weight is equal, otherwise a smooth
// weighted round-robin order (as nginx's) of endpoint indexes.
func buildSchedule(in []uint32) []uint32 {
	if len(in) < 2 {
		return nil
	}
	g := uint64(0)
	equal := true
	for _, w := range in {
		g = gcd(g, uint64(w))
		if w != in[0] {
			equal = false
		}
	}
	if equal {
		return nil
	}
	weights := make([]int64, len(in))
	var sum int64
	for i, w := range in {
		weights[i] = int64(uint64(w) / g)
		sum += weights[i]
	}
	if sum > maxSchedule {
		scaled := int64(0)
		for i := range weights {
			weights[i] = max(weights[i]*maxSchedule/sum, 1)
			scaled += weights[i]
		}
		sum = scaled
	}
	sched := make([]uint32, 0, sum)
	current := make([]int64, len(in))
	for range sum {
		best := 0
		for i := range current {
			current[i] += weights[i]
			if current[i] > current[best] {
				best = i
			}
		}
		current[best] -= sum
		sched = append(sched, uint32(best))
	}
	return sched
}

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// RoundRobin cycles through the endpoints in weighted order with one atomic
// counter, so concurrent Picks never contend on a lock.
type RoundRobin struct {
	endpoints
	next atomic.Uint64
}

// Update replaces the endpoint set, keeping the state of endpoints that stay.
func (b *RoundRobin) Update(eps []config.Endpoint) { b.update(eps) }

// Pick returns the next endpoint, or nil when there is none.
func (b *RoundRobin) Pick() *Endpoint {
	t := b.table.Load()
	if t == nil || len(t.eps) == 0 {
		return nil
	}
	e := t.eps[t.index((b.next.Add(1)-1)%t.size())]
	e.inFlight.Add(1)
	return e
}

// LeastRequest samples two endpoints at random (weighted) and picks the one
// with fewer in-flight requests per unit of weight: the power of two choices,
// as Envoy's and Linkerd's least-request balancers do. It avoids the herd
// behaviour of a global minimum without any shared lock.
type LeastRequest struct {
	endpoints
}

// Update replaces the endpoint set, keeping the state of endpoints that stay.
func (b *LeastRequest) Update(eps []config.Endpoint) { b.update(eps) }

// Pick returns the less loaded of two random endpoints, or nil when there is
// none.
func (b *LeastRequest) Pick() *Endpoint {
	t := b.table.Load()
	if t == nil || len(t.eps) == 0 {
		return nil
	}
	var i, j uint32
	if n := uint64(len(t.eps)); n > 1 {
		if t.schedule == nil {
			// Uniform: two distinct endpoints compete.
			i = uint32(rand.Uint64N(n))
			j = uint32(rand.Uint64N(n - 1))
			if j >= i {
				j++
			}
		} else {
			// Weighted: sample from the schedule, where each endpoint
			// appears in proportion to its weight.
			i = t.index(rand.Uint64N(t.size()))
			j = t.index(rand.Uint64N(t.size()))
		}
		// Compare in-flight/weight without dividing.
		if t.eps[j].inFlight.Load()*int64(t.weights[i]) < t.eps[i].inFlight.Load()*int64(t.weights[j]) {
			i = j
		}
	}
	e := t.eps[i]
	e.inFlight.Add(1)
	return e
}
