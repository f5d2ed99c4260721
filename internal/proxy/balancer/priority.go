package balancer

import (
	"math/rand/v2"
	"slices"
	"sync/atomic"

	"verge.dev/verge/internal/proxy/config"
)

// overprovisioning is Envoy's default overprovisioning factor, 1.4, in
// percent: a level keeps all its traffic while at least 1/1.4 ≈ 71.4% of
// its endpoints are healthy.
const overprovisioning = 140

// Priority balances over locality priority levels (config.Endpoint.Priority:
// 0 the caller's zone, 1 its region, 2 the rest), one child balancer of the
// cluster's policy per level present, and splits traffic between levels as
// Envoy's priority load does:
//
//	health(L)  = min(100, 140 × available(L) / endpoints(L))   // percent, floored
//	total      = min(100, Σ health(L))
//	load(L)    = min(100 - Σ_{K<L} load(K), health(L) × 100 / total)
//
// and any rounding remainder goes to the first level with health > 0.
// "Available" means neither ejected (see Endpoint.SetEjected) nor marked
// overloaded (Endpoint.MarkOverloaded): an overloaded endpoint is treated
// as Envoy treats a degraded one, kept out of its level's healthy share,
// so that a zone whose endpoints refuse work for want of capacity spills
// to the next level as a zone of unhealthy ones does. The data path only
// ever receives endpoints the control plane reports healthy. So level 0
// takes everything while at least ~71.4% of it is available, spills the
// shortfall to level 1, then 2; when few endpoints are available anywhere
// the loads are scaled up to sum to 100. When every endpoint of every
// level is out, traffic goes to level 0 and its child picks among all of
// them (panic mode). Within a level, the child skips endpoints that are
// out. With a single level, overload marks are ignored (see
// MarkOverloaded).
//
// Pick reads the per-level counts (atomics kept exact under the owner's
// lock) and computes the loads on the fly: no lock, no allocation, a few
// integer operations per level; a level with an overload mark due to
// lapse is swept first (Endpoint.MarkOverloaded). Use New to make one.
type Priority struct {
	policy config.LBPolicy
	opts   Options
	own    owner
	state  atomic.Pointer[prioState]
}

// prioState is the immutable set of levels, in increasing priority, and
// every endpoint in the order Update received them.
type prioState struct {
	levels []level
	all    []*Endpoint
}

type level struct {
	priority uint32
	b        child
	hp       HashPicker // b as a HashPicker; nil when b is not hash-based
	h        *health
}

// Update replaces the endpoint set, keeping the *Endpoint and state of every
// address that stays, even when its priority changes, and the child
// balancer of every level that stays.
func (p *Priority) Update(in []config.Endpoint) {
	p.own.mu.Lock()
	defer p.own.mu.Unlock()
	old := p.state.Load()
	var oldEps []*Endpoint
	oldChildren := map[uint32]child{}
	if old != nil {
		oldEps = old.all
		for _, l := range old.levels {
			oldChildren[l.priority] = l.b
		}
	}
	eps, weights, prios := p.own.resolveLocked(oldEps, in)
	order := make([]int, len(eps))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmpUint32(prios[a], prios[b]) })
	st := &prioState{all: eps}
	levels := 0
	for i := range order {
		if i == 0 || prios[order[i]] != prios[order[i-1]] {
			levels++
		}
	}
	for start := 0; start < len(order); {
		pr := prios[order[start]]
		end := start
		var les []*Endpoint
		var lws []uint32
		for ; end < len(order) && prios[order[end]] == pr; end++ {
			les = append(les, eps[order[end]])
			lws = append(lws, weights[order[end]])
		}
		start = end
		h := p.own.assignLocked(les, levels > 1)
		c, ok := oldChildren[pr]
		if !ok {
			c = newChild(p.policy, p.opts)
		}
		c.install(les, lws, h)
		hp, _ := c.(HashPicker)
		st.levels = append(st.levels, level{priority: pr, b: c, hp: hp, h: h})
	}
	p.state.Store(st)
}

func cmpUint32(a, b uint32) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Endpoints returns every endpoint of every level, in the order Update got
// them; the slice must not be modified.
func (p *Priority) Endpoints() []*Endpoint {
	if st := p.state.Load(); st != nil {
		return st.all
	}
	return nil
}

// Pick chooses a level by the priority loads and returns its child's pick,
// or nil when there is no endpoint.
func (p *Priority) Pick() *Endpoint {
	st := p.state.Load()
	if st == nil || len(st.levels) == 0 {
		return nil
	}
	if len(st.levels) == 1 {
		return st.levels[0].b.Pick()
	}
	st.sweep()
	return st.levels[st.choose(rand.Uint64N(100))].b.Pick()
}

// sweep clears lapsed overload marks of every level (health.sweep).
func (st *prioState) sweep() {
	for i := range st.levels {
		st.levels[i].h.sweep()
	}
}

// PickHash chooses a level by hash (as Envoy does, so a key keeps its level
// while the loads stay) and returns the child's PickHash, or its plain Pick
// when the policy is not hash-based.
func (p *Priority) PickHash(hash uint64) *Endpoint {
	st := p.state.Load()
	if st == nil || len(st.levels) == 0 {
		return nil
	}
	l := &st.levels[0]
	if len(st.levels) > 1 {
		st.sweep()
		l = &st.levels[st.choose(hash%100)]
	}
	if l.hp != nil {
		return l.hp.PickHash(hash)
	}
	return l.b.Pick()
}

// percent is the level's health as Envoy computes it: available share
// times the overprovisioning factor, capped at 100.
func (h *health) percent() uint64 {
	if h.total == 0 {
		return 0
	}
	healthy := max(h.total-h.down(), 0)
	return min(100, overprovisioning*uint64(healthy)/uint64(h.total))
}

// choose returns the index of the level that the roll r in [0, 100) falls
// in.
func (st *prioState) choose(r uint64) int {
	var total uint64
	for i := range st.levels {
		total += st.levels[i].h.percent()
	}
	total = min(total, 100)
	if total == 0 {
		return 0
	}
	remaining := uint64(100)
	first := -1
	for i := range st.levels {
		hp := st.levels[i].h.percent()
		if hp > 0 && first < 0 {
			first = i
		}
		load := min(remaining, hp*100/total)
		remaining -= load
		if r < load {
			return i
		}
		r -= load
	}
	if first >= 0 {
		return first
	}
	// A concurrent SetEjected or mark changed the health between the
	// passes.
	return 0
}

// LevelLoad is one priority level's state, for the admin endpoint and tests.
type LevelLoad struct {
	Priority  uint32
	Endpoints int
	Ejected   int
	// Overloaded counts the endpoints whose overload mark has not lapsed
	// (whether or not also ejected).
	Overloaded int
	// Percent is the share of picks the level receives now.
	Percent uint32
}

// Loads returns each level's load in increasing priority. It allocates;
// not for the request path.
func (p *Priority) Loads() []LevelLoad {
	st := p.state.Load()
	if st == nil || len(st.levels) == 0 {
		return nil
	}
	if len(st.levels) > 1 {
		st.sweep()
	}
	out := make([]LevelLoad, len(st.levels))
	for i, l := range st.levels {
		out[i] = LevelLoad{Priority: l.priority, Endpoints: int(l.h.total), Ejected: int(l.h.ejected.Load())}
		for _, e := range l.h.eps {
			if e.Overloaded() {
				out[i].Overloaded++
			}
		}
	}
	if len(out) == 1 {
		out[0].Percent = 100
		return out
	}
	// Count the rolls each level gets: exact, and the same code as Pick.
	for r := range uint64(100) {
		out[st.choose(r)].Percent++
	}
	return out
}
