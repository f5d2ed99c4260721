package proxy

import (
	"slices"
	"strings"

	"verge.dev/verge/internal/proxy/balancer"
	"verge.dev/verge/internal/proxy/resilience"
)

// clusterStatus is one cluster's live balancing and protection state, as
// the admin config dump shows it.
type clusterStatus struct {
	Name string `json:"name"`
	// Priorities are the locality levels and their current share of
	// picks.
	Priorities []priorityStatus `json:"priorities,omitempty"`
	// Ejected are the endpoints out of rotation and why.
	Ejected []ejectedStatus `json:"ejected,omitempty"`
	// Overloaded are the endpoints marked overloaded now (they answered
	// 503 within the hold; see noteStatus), which counts only where the
	// cluster has several priority levels.
	Overloaded []string `json:"overloaded,omitempty"`
	// Breaker, RetryBudget and Outlier are set for clusters with traffic
	// settings.
	Breaker     map[string]breakerStatus `json:"breaker,omitempty"`
	RetryBudget *budgetStatus            `json:"retryBudget,omitempty"`
	Outlier     *outlierStatus           `json:"outlier,omitempty"`
	HealthCheck bool                     `json:"healthCheck,omitempty"`
}

type priorityStatus struct {
	Priority   uint32 `json:"priority"`
	Endpoints  int    `json:"endpoints"`
	Ejected    int    `json:"ejected"`
	Overloaded int    `json:"overloaded,omitempty"`
	Percent    uint32 `json:"percent"`
}

type ejectedStatus struct {
	Address   string `json:"address"`
	Outlier   bool   `json:"outlier,omitempty"`
	Unhealthy bool   `json:"unhealthy,omitempty"`
}

type breakerStatus struct {
	InUse     int64  `json:"inUse"`
	Remaining int64  `json:"remaining"`
	Overflows uint64 `json:"overflows"`
}

type budgetStatus struct {
	Requests uint64 `json:"requests"`
	Retries  uint64 `json:"retries"`
}

type outlierStatus struct {
	Endpoints      int    `json:"endpoints"`
	Ejected        int    `json:"ejected"`
	EjectionsTotal uint64 `json:"ejectionsTotal"`
}

// clusterStatuses reports every cluster of the published state, sorted by
// name. It allocates and takes the guards' locks: for the admin endpoint,
// never the request path.
func (p *Proxy) clusterStatuses() []clusterStatus {
	st := p.state.Load()
	if st == nil {
		return nil
	}
	out := make([]clusterStatus, 0, len(st.clusters))
	for name, cl := range st.clusters {
		cs := clusterStatus{Name: name}
		if pr, ok := cl.bal.(*balancer.Priority); ok {
			for _, l := range pr.Loads() {
				cs.Priorities = append(cs.Priorities, priorityStatus(l))
			}
		}
		g := cl.guard
		for _, ep := range cl.bal.Endpoints() {
			if ep.Ejected() {
				cs.Ejected = append(cs.Ejected, g.ejectedStatus(ep.Address))
			}
			if ep.Overloaded() {
				cs.Overloaded = append(cs.Overloaded, ep.Address)
			}
		}
		if g != nil {
			cs.Breaker = map[string]breakerStatus{}
			for r := resilience.Connections; r <= resilience.Retries; r++ {
				cs.Breaker[r.String()] = breakerStatus{InUse: g.breaker.InUse(r), Remaining: g.breaker.Remaining(r), Overflows: g.breaker.Overflows(r)}
			}
			if b := g.budget.Load(); b != nil {
				req, ret := b.Window()
				cs.RetryBudget = &budgetStatus{Requests: req, Retries: ret}
			}
			if d := g.det.Load(); d != nil {
				n, ej, total := d.Stats()
				cs.Outlier = &outlierStatus{Endpoints: n, Ejected: ej, EjectionsTotal: total}
			}
			cs.HealthCheck = cl.cfg.Traffic != nil && cl.cfg.Traffic.HealthCheck != nil
		}
		out = append(out, cs)
	}
	slices.SortFunc(out, func(a, b clusterStatus) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// ejectedStatus says why the endpoint at addr is out of rotation; with no
// guard, neither reason is known.
func (g *clusterGuard) ejectedStatus(addr string) ejectedStatus {
	s := ejectedStatus{Address: addr}
	if g == nil {
		return s
	}
	g.mu.Lock()
	ge := g.eps[addr]
	g.mu.Unlock()
	if ge != nil {
		ge.mu.Lock()
		s.Outlier, s.Unhealthy = ge.outlier, ge.unhealthy
		ge.mu.Unlock()
	}
	return s
}
