// Package balancer owns the proxy's endpoint pickers: which upstream endpoint
// of a cluster receives the next request. That covers the algorithms (round
// robin, least request, ring hash, Maglev, peak EWMA), locality priorities
// with Envoy's spill-over (of unhealthy and of overloaded endpoints), the
// per-endpoint live state they read (in-flight count, ejection flag,
// overload mark, latency estimate) and the hash of request keys for
// session affinity. It does no I/O and decides nothing about health or
// load: the proxy feeds it endpoint sets, calls Pick on the request path and
// reports ends of requests; the outlier detector and health checker set the
// ejection flag, and the proxy marks an endpoint overloaded when it answers
// that it is (MarkOverloaded).
//
// A Balancer publishes immutable tables through atomic pointers, so Pick
// never takes a lock and never allocates; Update builds new tables and
// carries over the *Endpoint of every address that stays, which keeps its
// in-flight counter, ejection flag and latency estimate across configuration
// changes.
package balancer

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

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
	ejected  atomic.Bool
	// own is the balancer that made the endpoint; it never changes. Nil
	// only for an Endpoint made outside this package.
	own *owner
	// level counts the ejected endpoints of the priority level e is in;
	// guarded by own.mu, nil once e has left the balancer.
	level *health
	rtt   rttEstimate
	// overloaded is the overload mark (MarkOverloaded), changed under
	// own.mu; overUntil is the owner's nanotime at which it lapses.
	overloaded atomic.Bool
	overUntil  atomic.Int64
}

// InFlight is the number of requests picked for this endpoint and not yet
// reported Done.
func (e *Endpoint) InFlight() int64 { return e.inFlight.Load() }

// Done ends one request that Pick started on this endpoint. Call it exactly
// once per successful Pick (or DoneRTT instead), from any goroutine.
func (e *Endpoint) Done() { e.inFlight.Add(-1) }

// DoneRTT ends one request like Done and records rtt, the time from sending
// the request to its response (or its failure), as a latency sample for
// PeakEWMA. Call it instead of Done, not besides it.
func (e *Endpoint) DoneRTT(rtt time.Duration) {
	e.inFlight.Add(-1)
	e.observe(rtt)
}

// SetEjected marks the endpoint ejected (true) or back in service (false).
// Every balancer skips ejected endpoints while its priority level has any
// other; when all endpoints of the level are ejected it picks among them all
// (Envoy's panic mode) rather than fail. Safe from any goroutine; it takes a
// lock shared with Update, never one on the pick path.
func (e *Endpoint) SetEjected(ejected bool) {
	if e.own != nil {
		e.own.mu.Lock()
		defer e.own.mu.Unlock()
	}
	if e.ejected.Load() == ejected {
		return
	}
	wasOut := e.outLocked()
	e.ejected.Store(ejected)
	if e.level == nil {
		return
	}
	if ejected {
		e.level.ejected.Add(1)
	} else {
		e.level.ejected.Add(-1)
	}
	e.level.countOut(wasOut, e.outLocked())
}

// Ejected reports whether the endpoint is ejected (see SetEjected).
func (e *Endpoint) Ejected() bool { return e.ejected.Load() }

// MarkOverloaded records that the endpoint said it is overloaded (the
// proxy calls it when an endpoint answers 503) and keeps it so for hold
// from now; a later mark extends it. While marked, in a balancer with
// more than one priority level, the endpoint counts as unavailable for its
// level's share of traffic (which spills to the next level as it would
// for an ejected endpoint) and its level's picks pass it over while the
// level has any other usable endpoint. With a single level the mark
// changes nothing: spreading load within a level is the policy's job
// (least request, peak EWMA), and ejecting a failing endpoint outlier
// detection's.
//
// The mark lapses by itself: the next pick after hold clears it, so the
// endpoint takes traffic again and is marked anew if it still refuses.
// Safe from any goroutine; an endpoint already marked costs two atomic
// operations, a new mark takes the lock shared with Update.
func (e *Endpoint) MarkOverloaded(hold time.Duration) {
	until := e.own.nanotime() + int64(hold)
	// Racing with a sweep that read the old deadline, this extension may
	// be cleared with it: the endpoint then gets one more try early.
	e.overUntil.Store(until)
	if e.overloaded.Load() {
		return
	}
	if e.own != nil {
		e.own.mu.Lock()
		defer e.own.mu.Unlock()
	}
	if e.overloaded.Load() {
		return
	}
	wasOut := e.outLocked()
	e.overloaded.Store(true)
	if h := e.level; h != nil {
		h.overloaded.Add(1)
		h.countOut(wasOut, true)
		if next := h.nextExpiry.Load(); next == 0 || until < next {
			h.nextExpiry.Store(until)
		}
	}
}

// Overloaded reports whether the endpoint carries an overload mark that
// has not lapsed (see MarkOverloaded).
func (e *Endpoint) Overloaded() bool {
	return e.overloaded.Load() && e.overUntil.Load() > e.own.nanotime()
}

// outLocked reports whether the endpoint is ejected or marked overloaded.
// Callers hold the owner's lock (or own the endpoint alone).
func (e *Endpoint) outLocked() bool { return e.ejected.Load() || e.overloaded.Load() }

// Balancer picks endpoints for one cluster.
//
// Pick is called concurrently on the request path and never blocks; it
// returns nil when the cluster has no endpoint. A non-nil result has had its
// in-flight count incremented and the caller must call Done (or DoneRTT) on
// it. Update may be called concurrently with Pick, but Updates must not run
// concurrently with each other.
type Balancer interface {
	Pick() *Endpoint
	Update(eps []config.Endpoint)
	// Endpoints returns the current endpoints; the slice must not be modified.
	Endpoints() []*Endpoint
}

// HashPicker picks by a hash of the request (a header, cookie or source
// address run through HashString) so that equal hashes reach the same
// endpoint while the endpoint set stays, and few of them move when it
// changes. Same contract as Pick otherwise. RingHash and Maglev implement it,
// and so does every balancer New returns: for a policy that is not
// hash-based PickHash ignores the hash.
type HashPicker interface {
	PickHash(hash uint64) *Endpoint
}

// Options tune a balancer beyond its policy; the zero value is the default.
type Options struct {
	// RingHashMinSize is RingHash's minimum number of ring entries
	// (0: DefaultRingMinSize). Larger rings spread keys more evenly.
	RingHashMinSize uint64
}

// New returns the balancer for policy (round robin for unknown values),
// holding eps. See NewWithOptions.
func New(policy config.LBPolicy, eps []config.Endpoint) Balancer {
	return NewWithOptions(policy, eps, Options{})
}

// NewWithOptions returns a *Priority: one balancer of policy per distinct
// config.Endpoint.Priority, traffic spilling from level to level as Envoy's
// does. With a single level (the common case) it adds one atomic load and
// one call to each pick. It is a *Priority even then, because a later Update
// may bring endpoints of other levels and the proxy keeps the balancer it
// made.
func NewWithOptions(policy config.LBPolicy, eps []config.Endpoint, opts Options) Balancer {
	p := &Priority{policy: policy, opts: opts}
	p.Update(eps)
	return p
}

// newChild returns the flat balancer of policy for one priority level.
func newChild(policy config.LBPolicy, opts Options) child {
	switch policy {
	case config.LBLeastRequest:
		return &LeastRequest{}
	case config.LBRingHash:
		return &RingHash{MinSize: opts.RingHashMinSize}
	case config.LBMaglev:
		return &Maglev{}
	case config.LBPeakEWMA:
		return &PeakEWMA{}
	default:
		return &RoundRobin{}
	}
}

// child is a flat balancer that Priority drives: install publishes a new
// table for the given endpoints, which the caller (holding their owner's
// lock) has already resolved and assigned to h.
type child interface {
	Balancer
	install(eps []*Endpoint, weights []uint32, h *health)
}

// owner is the state an Endpoint shares with the balancer that made it.
type owner struct {
	// mu serializes Update and SetEjected, so the per-level ejected counts
	// are exact; Pick never takes it.
	mu sync.Mutex
	// now, when set, replaces the monotonic clock (tests); tau, when
	// positive, replaces DefaultDecay.
	now func() int64
	tau time.Duration
}

var clockBase = time.Now()

// nanotime is the owner's monotonic clock in nanoseconds.
func (o *owner) nanotime() int64 {
	if o != nil && o.now != nil {
		return o.now()
	}
	return int64(time.Since(clockBase))
}

// health is the live ejection and overload count of one priority level's
// endpoints. Its counts change under the endpoints' owner lock.
type health struct {
	ejected atomic.Int64
	// overloaded counts the level's overload marks, lapsed or not, and
	// out its endpoints that are ejected or marked (either or both).
	overloaded atomic.Int64
	out        atomic.Int64
	// nextExpiry is the owner's nanotime at or after which some mark may
	// have lapsed (0: no mark); sweep clears them then.
	nextExpiry atomic.Int64
	total      int64
	// aware says overload marks count (the balancer has several
	// priority levels); fixed before the health is published.
	aware bool
	eps   []*Endpoint
	own   *owner
}

// countOut applies an endpoint's change from wasOut to isOut (see
// Endpoint.outLocked). Callers hold the owner's lock.
func (h *health) countOut(wasOut, isOut bool) {
	switch {
	case isOut && !wasOut:
		h.out.Add(1)
	case wasOut && !isOut:
		h.out.Add(-1)
	}
}

// down is the number of the level's endpoints that take no picks while
// others do: ejected ones, and overloaded ones when marks count.
func (h *health) down() int64 {
	if h.aware {
		return h.out.Load()
	}
	return h.ejected.Load()
}

// sweep clears the overload marks that have lapsed once the earliest is
// due. It is called on the pick path of a balancer with several levels:
// without a mark it is one atomic load, and it never waits for the lock
// (a busy lock leaves the sweep to a later pick).
func (h *health) sweep() {
	if h.overloaded.Load() == 0 {
		return
	}
	now := h.own.nanotime()
	if next := h.nextExpiry.Load(); next == 0 || now < next {
		return
	}
	if h.own == nil || !h.own.mu.TryLock() {
		return
	}
	defer h.own.mu.Unlock()
	var next int64
	for _, e := range h.eps {
		// An endpoint of this table that an Update moved to another
		// level is counted there, not here.
		if e.level != h || !e.overloaded.Load() {
			continue
		}
		if until := e.overUntil.Load(); until > now {
			if next == 0 || until < next {
				next = until
			}
			continue
		}
		e.overloaded.Store(false)
		h.overloaded.Add(-1)
		h.countOut(true, e.ejected.Load())
	}
	h.nextExpiry.Store(next)
}

// resolveLocked maps in to endpoints, reusing those of old by address
// (duplicates after the first are dropped); weights (at least 1) and
// priorities come back index by index. Callers hold o.mu.
func (o *owner) resolveLocked(old []*Endpoint, in []config.Endpoint) (eps []*Endpoint, weights, prios []uint32) {
	byAddr := make(map[string]*Endpoint, len(old))
	for _, e := range old {
		byAddr[e.Address] = e
	}
	eps = make([]*Endpoint, 0, len(in))
	weights = make([]uint32, 0, len(in))
	prios = make([]uint32, 0, len(in))
	seen := make(map[string]bool, len(in))
	for _, ce := range in {
		if seen[ce.Address] {
			continue
		}
		seen[ce.Address] = true
		e, ok := byAddr[ce.Address]
		if !ok {
			e = &Endpoint{Address: ce.Address, own: o}
		}
		eps = append(eps, e)
		weights = append(weights, max(ce.Weight, 1))
		prios = append(prios, ce.Priority)
	}
	// Endpoints that left stop counting anywhere; those that stay are
	// reassigned by the caller through assignLocked.
	for _, e := range old {
		e.level = nil
	}
	return eps, weights, prios
}

// assignLocked returns a health of o counting eps and points each
// endpoint at it; aware says whether overload marks count (see
// health.aware). Callers hold o.mu.
func (o *owner) assignLocked(eps []*Endpoint, aware bool) *health {
	h := &health{total: int64(len(eps)), aware: aware, eps: eps, own: o}
	for _, e := range eps {
		e.level = h
		if e.ejected.Load() {
			h.ejected.Add(1)
		}
		if e.overloaded.Load() {
			h.overloaded.Add(1)
			if until := e.overUntil.Load(); h.nextExpiry.Load() == 0 || until < h.nextExpiry.Load() {
				h.nextExpiry.Store(until)
			}
		}
		if e.outLocked() {
			h.out.Add(1)
		}
	}
	return h
}

// table is an immutable endpoint set. weights[i] (at least 1) belongs to
// eps[i]; weights live here rather than in Endpoint so that a weight change
// keeps the endpoint's identity and state. schedule holds indexes into eps,
// each endpoint appearing in proportion to its weight, interleaved smoothly;
// it is nil when all weights are equal (the uniform fast path). The hash
// pickers keep their own structures beside it.
type table struct {
	eps      []*Endpoint
	weights  []uint32
	schedule []uint32
	health   *health
}

func newTable(eps []*Endpoint, weights []uint32, h *health) *table {
	if h == nil {
		h = &health{total: int64(len(eps)), eps: eps}
	}
	return &table{eps: eps, weights: weights, schedule: buildSchedule(weights), health: h}
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

// panicking reports whether every endpoint is out (ejected, or overloaded
// where that counts), in which case picks ignore both (Envoy's panic mode:
// a likely-bad endpoint beats none).
func (t *table) panicking() bool { return t.health.down() >= int64(len(t.eps)) }

// out reports whether eps[i] is out of rotation: ejected, or marked
// overloaded where marks count.
func (t *table) out(i uint32) bool {
	e := t.eps[i]
	return e.ejected.Load() || (t.health.aware && e.overloaded.Load())
}

// usable reports whether eps[i] may take a pick.
func (t *table) usable(i uint32) bool { return !t.out(i) || t.panicking() }

// sample returns a random index into eps, weighted.
func (t *table) sample() uint32 { return t.index(rand.Uint64N(t.size())) }

// healthyIndex returns a random usable index, weighted, for a pick whose
// first choice was ejected. A few samples find one unless most endpoints
// are ejected; then a scan from a random start does, ignoring weights.
func (t *table) healthyIndex() uint32 {
	for range 4 {
		if i := t.sample(); t.usable(i) {
			return i
		}
	}
	n := uint32(len(t.eps))
	start := rand.Uint32N(n)
	for k := range n {
		if i := (start + k) % n; !t.out(i) {
			return i
		}
	}
	return start // all out meanwhile: panic mode
}

// endpoints is the shared Update logic of the flat balancers.
type endpoints struct {
	own   owner
	table atomic.Pointer[table]
}

// update resolves in against the current table and hands the result to
// install.
func (s *endpoints) update(in []config.Endpoint, install func([]*Endpoint, []uint32, *health)) {
	s.own.mu.Lock()
	defer s.own.mu.Unlock()
	var old []*Endpoint
	if t := s.table.Load(); t != nil {
		old = t.eps
	}
	eps, weights, _ := s.own.resolveLocked(old, in)
	install(eps, weights, s.own.assignLocked(eps, false))
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
// counter, so concurrent Picks never contend on a lock. Ejected endpoints
// are passed over.
type RoundRobin struct {
	endpoints
	next atomic.Uint64
}

// Update replaces the endpoint set, keeping the state of endpoints that stay.
func (b *RoundRobin) Update(eps []config.Endpoint) { b.update(eps, b.install) }

func (b *RoundRobin) install(eps []*Endpoint, weights []uint32, h *health) {
	b.table.Store(newTable(eps, weights, h))
}

// Pick returns the next usable endpoint, or nil when there is none.
func (b *RoundRobin) Pick() *Endpoint {
	t := b.table.Load()
	if t == nil || len(t.eps) == 0 {
		return nil
	}
	// Passing over a few ejected endpoints keeps the rotation's order;
	// beyond that a random healthy one bounds the cost.
	i := t.index((b.next.Add(1) - 1) % t.size())
	for tries := 0; !t.usable(i); tries++ {
		if tries == 8 {
			i = t.healthyIndex()
			break
		}
		i = t.index((b.next.Add(1) - 1) % t.size())
	}
	e := t.eps[i]
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
func (b *LeastRequest) Update(eps []config.Endpoint) { b.update(eps, b.install) }

func (b *LeastRequest) install(eps []*Endpoint, weights []uint32, h *health) {
	b.table.Store(newTable(eps, weights, h))
}

// Pick returns the less loaded of two random usable endpoints, or nil when
// there is none.
func (b *LeastRequest) Pick() *Endpoint {
	t := b.table.Load()
	if t == nil || len(t.eps) == 0 {
		return nil
	}
	var i uint32
	if len(t.eps) > 1 {
		var j uint32
		i, j = t.two()
		// Compare in-flight/weight without dividing.
		if t.eps[j].inFlight.Load()*int64(t.weights[i]) < t.eps[i].inFlight.Load()*int64(t.weights[j]) {
			i = j
		}
	}
	e := t.eps[i]
	e.inFlight.Add(1)
	return e
}

// two returns two usable candidate indexes for a power-of-two-choices pick
// (len(eps) > 1).
func (t *table) two() (i, j uint32) {
	if n := uint64(len(t.eps)); t.schedule == nil {
		// Uniform: two distinct endpoints compete.
		i = uint32(rand.Uint64N(n))
		j = uint32(rand.Uint64N(n - 1))
		if j >= i {
			j++
		}
	} else {
		// Weighted: sample from the schedule, where each endpoint appears
		// in proportion to its weight.
		i, j = t.sample(), t.sample()
	}
	if !t.usable(i) {
		i = t.healthyIndex()
	}
	if !t.usable(j) {
		j = t.healthyIndex()
	}
	return i, j
}
