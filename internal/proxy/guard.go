package proxy

import (
	"context"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"verge.dev/verge/internal/proxy/balancer"
	"verge.dev/verge/internal/proxy/config"
	"verge.dev/verge/internal/proxy/healthcheck"
	"verge.dev/verge/internal/proxy/resilience"
)

// clusterGuard is one cluster's runtime protection, built from
// config.ClusterTraffic and kept across snapshots while the cluster keeps
// its name: the circuit breaker, the retry budget, outlier detection and
// active health checks (which eject endpoints from the balancer). A nil
// *clusterGuard protects nothing, and every method is safe on it, so the
// request path calls them unconditionally.
//
// The request path calls, per request: admit before the first attempt
// (false: answer 503 with response flag UO, nothing sent upstream), then
// for each attempt pick an endpoint and report its outcome, tryRetry
// before each retry (false: stop retrying), and done once at the end.
// The TCP path calls admitConn/connDone around a proxied connection and
// observe with the outcome of its connect.
//
// An endpoint is out of the balancer's rotation while outlier detection
// or its health check says so (guardEndpoint keeps both flags). Settings
// changes apply in place: the breaker's limits change under requests in
// flight; a new retry budget, detector or health checker replaces the old
// one (a replaced detector forgets its ejections, a replaced checker
// probes every endpoint anew).
//
// Lifecycle: compileLocked creates, reconfigures and retires guards under
// Proxy.updateMu; Run starts their goroutines (the detector's sweep, the
// health checks) with start and shutdown stops them, so a guard runs
// nothing outside Run.
type clusterGuard struct {
	name string
	log  *slog.Logger

	// Read on the request path. breaker is set at creation and never
	// replaced (a cluster without limits gets unlimited ones), so that
	// admit and done always meet the same counters.
	breaker *resilience.Breaker
	// http1 says each request holds an upstream connection of its own
	// (HTTP/1.1), so admit also takes a connection slot: the h1 pool opens
	// a connection per concurrent request, so maxConnections caps
	// concurrent requests there, and a request past it waits as one of at
	// most maxPendingRequests pending ones (waitConnection), as in Envoy.
	http1  atomic.Bool
	budget atomic.Pointer[resilience.Budget]
	det    atomic.Pointer[detector]

	overflow        [resilience.Retries + 1]prometheus.Counter
	budgetExhausted prometheus.Counter
	ejectOutlier    prometheus.Counter
	ejectHealth     prometheus.Counter
	ejectedGauge    prometheus.Gauge
	// ejected counts the endpoints out of rotation now, for the admin dump.
	ejected atomic.Int64

	// changed wakes run when the detector (and its sweep interval)
	// changed; it holds at most one token.
	changed chan struct{}

	// tls and tlsAddrs are the cluster's current mutual TLS upstream and
	// TLS endpoints, read by the health checks' dial.
	tls      atomic.Pointer[tlsUpstream]
	tlsAddrs atomic.Pointer[map[string]struct{}]

	// mu guards eps. It is taken by health-check callbacks, so nothing
	// that waits for those (Checker.Update, Close) runs while it is held.
	mu  sync.Mutex
	eps map[string]*guardEndpoint

	// Owned by Proxy.updateMu. configured is false until the first
	// reconfigureLocked.
	configured bool
	settings   config.ClusterTraffic
	checker    *healthcheck.Checker
	addrs      []string
	started    bool
	stopped    bool
	cancel     context.CancelFunc
	wg         sync.WaitGroup
}

// detector is an outlier detector with the interval its sweep runs at.
type detector struct {
	*resilience.Detector
	interval time.Duration
}

// unlimited is the breaker limit of a cluster whose policy sets none:
// Istio users expect no cap then, unlike Envoy's 1024 (and 3 retries).
const unlimited = math.MaxInt32

// newClusterGuard builds a guard for a cluster with traffic settings; it
// is not running until start.
func (p *Proxy) newClusterGuard(name string, t *config.ClusterTraffic) *clusterGuard {
	m := p.guardMetrics
	g := &clusterGuard{
		name:            name,
		log:             p.log.With("cluster", name),
		budgetExhausted: m.budgetExhausted.WithLabelValues(name),
		ejectOutlier:    m.ejections.WithLabelValues(name, "outlier"),
		ejectHealth:     m.ejections.WithLabelValues(name, "health"),
		ejectedGauge:    m.ejected.WithLabelValues(name),
		changed:         make(chan struct{}, 1),
		eps:             map[string]*guardEndpoint{},
	}
	for r := resilience.Connections; r <= resilience.Retries; r++ {
		g.overflow[r] = m.overflow.WithLabelValues(name, r.String())
	}
	// Unlimited limits are valid, so this cannot fail.
	g.breaker, _ = resilience.NewBreaker(breakerConfig(nil))
	return g
}

// breakerConfig maps a cluster's circuit breaker; nil means no limits.
func breakerConfig(cb *config.CircuitBreaker) resilience.BreakerConfig {
	if cb == nil {
		return resilience.BreakerConfig{MaxConnections: unlimited, MaxPendingRequests: unlimited, MaxRequests: unlimited, MaxRetries: unlimited}
	}
	return resilience.BreakerConfig{
		MaxConnections:     int64(cb.MaxConnections),
		MaxPendingRequests: int64(cb.MaxPendingRequests),
		MaxRequests:        int64(cb.MaxRequests),
		MaxRetries:         int64(cb.MaxRetries),
	}
}

// budgetWindow is the span a retry budget counts over (docs/xds-traffic.md:
// budget_percent of requests over 10 s).
const budgetWindow = 10 * time.Second

func detectorConfig(o *config.OutlierDetection) resilience.DetectorConfig {
	c := resilience.DefaultDetectorConfig()
	c.Consecutive5xx = uint32(max(o.Consecutive5xx, 0))
	c.ConsecutiveGatewayFailure = uint32(max(o.ConsecutiveGatewayErrors, 0))
	if o.Interval > 0 {
		c.Interval = o.Interval
	}
	if o.BaseEjectionTime > 0 {
		c.BaseEjectionTime = o.BaseEjectionTime
	}
	c.MaxEjectionPercent = o.MaxEjectionPercent
	return c
}

func healthConfig(h *config.HealthCheck) healthcheck.Config {
	c := healthcheck.Config{
		Interval: h.Interval,
		Timeout:  h.Timeout,
		// Envoy's interval_jitter defaults to none; a tenth of the
		// interval keeps a cluster's probes from moving in lockstep.
		Jitter:             h.Interval / 10,
		HealthyThreshold:   uint32(max(h.HealthyThreshold, 0)),
		UnhealthyThreshold: uint32(max(h.UnhealthyThreshold, 0)),
	}
	switch {
	case h.HTTP:
		c.HTTP = &healthcheck.HTTPCheck{Path: h.HTTPPath}
	case h.GRPC:
		c.GRPC = &healthcheck.GRPCCheck{Service: h.GRPCService}
	case h.TCP:
		c.TCP = &healthcheck.TCPCheck{Send: h.TCPSend, Expect: h.TCPExpect}
	}
	return c
}

// reconfigureLocked applies t and the cluster's current endpoints (bal's,
// reached with mutual TLS through tlsUp when in tlsAddrs). Called by
// compileLocked for every snapshot, t non-nil.
func (g *clusterGuard) reconfigureLocked(t *config.ClusterTraffic, bal balancer.Balancer, tlsUp *tlsUpstream, tlsAddrs map[string]struct{}) {
	g.tls.Store(tlsUp)
	g.tlsAddrs.Store(&tlsAddrs)
	old, first := g.settings, !g.configured
	g.settings, g.configured = *t, true

	if first || !equalPtr(old.CircuitBreaker, t.CircuitBreaker) {
		if err := g.breaker.SetConfig(breakerConfig(t.CircuitBreaker)); err != nil {
			g.log.Warn("circuit breaker not applied", "error", err)
		}
	}
	if first || !equalPtr(old.RetryBudget, t.RetryBudget) {
		var b *resilience.Budget
		if rb := t.RetryBudget; rb != nil {
			var err error
			b, err = resilience.NewBudget(resilience.BudgetConfig{
				Ratio: rb.Percent / 100, MinRetriesPerSecond: float64(rb.MinRetriesPerSecond), Window: budgetWindow,
			})
			if err != nil {
				g.log.Warn("retry budget not applied", "error", err)
			}
		}
		g.budget.Store(b)
	}
	if g.stopped {
		// After shutdown: limits still apply to stray requests, but
		// nothing may start checks or ejections that no one ends.
		return
	}

	// Endpoints: bind every address to its balancer endpoint (a new
	// balancer has new ones) before detector and checker may act on it.
	eps := bal.Endpoints()
	addrs := make([]string, 0, len(eps))
	g.mu.Lock()
	for _, ep := range eps {
		switch ge := g.eps[ep.Address]; {
		case ge == nil:
			g.eps[ep.Address] = &guardEndpoint{g: g, ep: ep}
		case ge.ep != ep:
			ge.rebind(ep)
		}
		addrs = append(addrs, ep.Address)
	}
	g.mu.Unlock()
	// Sorted and unique: the checker and the removal below want a set.
	slices.Sort(addrs)
	addrs = slices.Compact(addrs)

	if first || !equalPtr(old.Outlier, t.Outlier) {
		g.replaceDetector(t.Outlier)
	}
	if d := g.det.Load(); d != nil {
		d.Update(g.ejectors(d.Detector, addrs))
	}

	if first || !equalHealth(old.HealthCheck, t.HealthCheck) {
		g.replaceCheckerLocked(t.HealthCheck)
	}
	g.addrs = addrs
	if g.checker != nil && g.started {
		g.checkLocked(addrs)
	}

	// Addresses that left: the checker no longer reports them (its
	// Update has returned), the detector forgot them.
	g.mu.Lock()
	for a, ge := range g.eps {
		if _, ok := slices.BinarySearch(addrs, a); !ok {
			ge.forget()
			delete(g.eps, a)
		}
	}
	g.mu.Unlock()
}

// replaceDetector installs a new detector for o (none when nil). The old
// one's ejections end: its endpoints return to rotation unless their
// health check keeps them out.
func (g *clusterGuard) replaceDetector(o *config.OutlierDetection) {
	var next *detector
	if o != nil {
		cfg := detectorConfig(o)
		d, err := resilience.NewDetector(cfg)
		if err != nil {
			g.log.Warn("outlier detection not applied", "error", err)
		} else {
			next = &detector{Detector: d, interval: cfg.Interval}
		}
	}
	g.det.Store(next)
	// After the Store, a late ejection by the old detector is refused by
	// guardEndpoint, so this pass leaves no stale flag behind.
	g.mu.Lock()
	for _, ge := range g.eps {
		ge.set(&ge.outlier, false, nil)
	}
	g.mu.Unlock()
	select {
	case g.changed <- struct{}{}:
	default:
	}
}

// ejectors maps addrs to the endpoints' ejectors for detector d.
func (g *clusterGuard) ejectors(d *resilience.Detector, addrs []string) map[string]resilience.Ejector {
	m := make(map[string]resilience.Ejector, len(addrs))
	g.mu.Lock()
	for _, a := range addrs {
		m[a] = outlierEjector{ge: g.eps[a], d: d}
	}
	g.mu.Unlock()
	return m
}

// replaceCheckerLocked stops the current health checker and builds one
// for h (none when nil); endpoints leave the old checker's verdicts
// behind.
func (g *clusterGuard) replaceCheckerLocked(h *config.HealthCheck) {
	if g.checker != nil {
		g.checker.Close()
		g.checker = nil
	}
	g.mu.Lock()
	for _, ge := range g.eps {
		ge.checked = false
		ge.set(&ge.unhealthy, false, nil)
	}
	g.mu.Unlock()
	if h == nil {
		return
	}
	c, err := healthcheck.New(healthConfig(h), healthcheck.Options{
		Dial:     g.dialCheck(h),
		OnChange: g.onHealth,
		Logger:   g.log,
	})
	if err != nil {
		g.log.Warn("health check not applied", "error", err)
		return
	}
	g.checker = c
}

// checkLocked hands addrs to the running checker. An address new to it
// starts out of rotation, as Envoy's hosts do under active health
// checking, until its first probe passes; when every endpoint of a
// priority level is out, the balancer still uses them all (panic mode).
func (g *clusterGuard) checkLocked(addrs []string) {
	g.mu.Lock()
	for _, a := range addrs {
		if ge := g.eps[a]; ge != nil && !ge.checked {
			ge.checked = true
			ge.set(&ge.unhealthy, true, nil)
		}
	}
	g.mu.Unlock()
	g.checker.Update(addrs)
}

// onHealth applies a health checker's transition.
func (g *clusterGuard) onHealth(addr string, healthy bool) {
	g.mu.Lock()
	ge := g.eps[addr]
	g.mu.Unlock()
	if ge != nil {
		ge.set(&ge.unhealthy, !healthy, g.ejectHealth)
	}
}

// start runs the guard's goroutines until ctx ends or stop. Called by
// Run under Proxy.updateMu; a second call, or one after stop, does
// nothing.
func (g *clusterGuard) start(ctx context.Context) {
	if g.started || g.stopped {
		return
	}
	g.started = true
	rctx, cancel := context.WithCancel(ctx)
	g.cancel = cancel
	g.wg.Go(func() { g.run(rctx) })
	if g.checker != nil {
		g.checkLocked(g.addrs)
	}
}

// run sweeps the current detector at its interval until ctx ends.
func (g *clusterGuard) run(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	arm := func() *detector {
		d := g.det.Load()
		if d == nil {
			t.Stop()
		} else {
			t.Reset(d.interval)
		}
		return d
	}
	d := arm()
	for {
		select {
		case <-ctx.Done():
			return
		case <-g.changed:
			d = arm()
		case <-t.C:
			if d != nil {
				d.Sweep()
			}
			d = arm()
		}
	}
}

// stop ends the guard's goroutines and health checks and returns every
// endpoint it ejected to rotation; afterwards the guard still admits
// requests (those in flight on an old state) but ejects nothing. Whoever
// takes the guard out of Proxy.pools sets stopped under updateMu (so that
// Run does not start it) and then calls stop once, with or without the
// lock: it waits for the health checks to end.
func (g *clusterGuard) stop() {
	if g.cancel != nil {
		g.cancel()
	}
	g.wg.Wait()
	if g.checker != nil {
		g.checker.Close()
	}
	g.detach()
}

// detach returns the endpoints the guard ejected to rotation and makes
// its detector and health callbacks change nothing from now on. It does
// not block, so compileLocked calls it when a cluster that stays loses
// its guard: a guard built in a later snapshot may eject the same
// endpoints before stop runs, and must not see its verdicts undone.
func (g *clusterGuard) detach() {
	g.det.Store(nil)
	g.mu.Lock()
	for a, ge := range g.eps {
		ge.forget()
		delete(g.eps, a)
	}
	g.mu.Unlock()
}

// admit takes a request slot of the breaker and counts the request in the
// retry budget; false means the breaker is open.
func (g *clusterGuard) admit() bool {
	if g == nil {
		return true
	}
	if b := g.budget.Load(); b != nil {
		b.Request()
	}
	if !g.breaker.TryAcquire(resilience.Requests) {
		g.overflow[resilience.Requests].Inc()
		return false
	}
	if g.http1.Load() && !g.breaker.TryAcquire(resilience.Connections) && !g.waitConnection() {
		g.breaker.Release(resilience.Requests)
		return false
	}
	return true
}

// pendingWait bounds how long a pending HTTP/1.1 request waits for one of
// the cluster's connections (Envoy bounds it with the request's timeouts;
// admit has none, and a request that cannot get a connection in this time
// is better refused than left hanging).
const pendingWait = 2 * time.Second

// waitConnection is Envoy's pending queue for an HTTP/1.1 cluster at its
// connection limit: with a pending slot free, the request waits for a
// connection slot; without one, it overflows at once. It polls with a
// growing pause rather than keeping a wait list, since waits only happen
// when the limits bind, and the pause stays far below a request's time.
// It reports whether the request got a connection slot; on false the
// overflow is counted.
func (g *clusterGuard) waitConnection() bool {
	if !g.breaker.TryAcquire(resilience.PendingRequests) {
		g.overflow[resilience.PendingRequests].Inc()
		return false
	}
	defer g.breaker.Release(resilience.PendingRequests)
	deadline := time.Now().Add(pendingWait)
	pause := 100 * time.Microsecond
	for {
		time.Sleep(pause)
		if g.breaker.TryAcquire(resilience.Connections) {
			return true
		}
		if time.Now().After(deadline) {
			g.overflow[resilience.Connections].Inc()
			return false
		}
		pause = min(2*pause, 5*time.Millisecond)
	}
}

// done gives back the slots admit took. http1 does not change while a
// request is in flight: a cluster's protocol change replaces its pool.
func (g *clusterGuard) done() {
	if g != nil {
		g.breaker.Release(resilience.Requests)
		if g.http1.Load() {
			g.breaker.Release(resilience.Connections)
		}
	}
}

// tryRetry takes a retry from the breaker's retry cap and the budget;
// false means no retry may be sent now.
func (g *clusterGuard) tryRetry() bool {
	if g == nil {
		return true
	}
	if !g.breaker.TryAcquire(resilience.Retries) {
		g.overflow[resilience.Retries].Inc()
		return false
	}
	if b := g.budget.Load(); b != nil && !b.TryRetry() {
		g.breaker.Release(resilience.Retries)
		g.budgetExhausted.Inc()
		return false
	}
	return true
}

// retryDone gives back the breaker's retry slot tryRetry took.
func (g *clusterGuard) retryDone() {
	if g != nil {
		g.breaker.Release(resilience.Retries)
	}
}

// overloadHold is how long an endpoint that answered 503 counts as
// overloaded for locality spill-over (balancer.Endpoint.MarkOverloaded).
// Long enough that a zone refusing work sheds its share for a while
// rather than get every other request; short enough that traffic comes
// back within about a second of the load dropping. The endpoint gets a
// request again when it lapses and is marked anew if it still refuses.
const overloadHold = time.Second

// noteStatus marks ep overloaded when an attempt on it was answered 503
// Service Unavailable, which HTTP defines as "temporarily overloaded or
// down for maintenance": the answer of a peer proxy's shedder (inbound
// overload), of its circuit breaker, and of a server refusing work. Every
// path that ends an attempt with the upstream's status calls it (report
// does), whether or not the cluster has a guard: locality spill-over is
// the balancer's, not a policy's.
func noteStatus(ep *balancer.Endpoint, status int) {
	if status == http.StatusServiceUnavailable {
		ep.MarkOverloaded(overloadHold)
	}
}

// report feeds an attempt's outcome on ep to outlier detection, to
// locality spill-over (noteStatus) and, with rtt > 0, to latency-aware
// balancing; it ends ep's in-flight count like ep.Done. status is 0 when
// no response head arrived. g may be nil.
func (g *clusterGuard) report(ep *balancer.Endpoint, status int, failure resilience.Failure, rtt time.Duration) {
	noteStatus(ep, status)
	if g != nil {
		if d := g.det.Load(); d != nil {
			d.Report(ep.Address, resilience.ResultOf(status, failure))
		}
	}
	ep.DoneRTT(rtt)
}

// observe feeds outlier detection one result for the endpoint at addr
// without ending a request: the TCP path's connect outcome, its endpoint
// staying in use for the connection's life.
func (g *clusterGuard) observe(addr string, r resilience.Result) {
	if g == nil {
		return
	}
	if d := g.det.Load(); d != nil {
		d.Report(addr, r)
	}
}

// admitConn takes a connection slot of the breaker; false means the
// cluster is at its connection limit.
func (g *clusterGuard) admitConn() bool {
	if g == nil {
		return true
	}
	if !g.breaker.TryAcquire(resilience.Connections) {
		g.overflow[resilience.Connections].Inc()
		return false
	}
	return true
}

// connDone gives back the slot admitConn took.
func (g *clusterGuard) connDone() {
	if g != nil {
		g.breaker.Release(resilience.Connections)
	}
}

// guardEndpoint is one endpoint of a guarded cluster: the two reasons it
// may be out of rotation and the balancer endpoint that carries the
// verdict. The lock order is Detector, guardEndpoint.mu, balancer.
type guardEndpoint struct {
	g  *clusterGuard
	mu sync.Mutex
	ep *balancer.Endpoint
	// outlier: ejected by outlier detection; unhealthy: by its health
	// check; gone: the endpoint left the cluster (or the guard stopped)
	// and nothing may change it any more.
	outlier, unhealthy, gone bool
	// checked is set once the endpoint was handed to the health checker
	// (guarded by clusterGuard.mu).
	checked bool
}

// set changes one flag and applies the combination to the balancer;
// counter, when not nil, counts an ejection.
func (e *guardEndpoint) set(flag *bool, v bool, counter prometheus.Counter) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.gone || *flag == v {
		return
	}
	was := e.outlier || e.unhealthy
	*flag = v
	if v && counter != nil {
		counter.Inc()
	}
	if now := e.outlier || e.unhealthy; now != was {
		e.ep.SetEjected(now)
		if now {
			e.g.ejected.Add(1)
			e.g.ejectedGauge.Inc()
		} else {
			e.g.ejected.Add(-1)
			e.g.ejectedGauge.Dec()
		}
	}
}

// rebind moves the endpoint's verdict to ep, the same address in a new
// balancer.
func (e *guardEndpoint) rebind(ep *balancer.Endpoint) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ep == ep {
		return
	}
	e.ep = ep
	if e.outlier || e.unhealthy {
		ep.SetEjected(true)
	}
}

// forget ends the endpoint's part in the guard: back in rotation (if its
// balancer still has it) and out of the counts.
func (e *guardEndpoint) forget() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.gone {
		return
	}
	e.gone = true
	if e.outlier || e.unhealthy {
		e.ep.SetEjected(false)
		e.g.ejected.Add(-1)
		e.g.ejectedGauge.Dec()
	}
}

// outlierEjector is a guardEndpoint as one detector's Ejector: once that
// detector is replaced its late calls (a report in flight on the old
// one) change nothing.
type outlierEjector struct {
	ge *guardEndpoint
	d  *resilience.Detector
}

func (o outlierEjector) SetEjected(ejected bool) {
	if cur := o.ge.g.det.Load(); cur == nil || cur.Detector != o.d {
		return
	}
	o.ge.set(&o.ge.outlier, ejected, o.ge.g.ejectOutlier)
}

func equalPtr[T comparable](a, b *T) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

func equalHealth(a, b *config.HealthCheck) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Interval == b.Interval && a.Timeout == b.Timeout &&
		a.HealthyThreshold == b.HealthyThreshold && a.UnhealthyThreshold == b.UnhealthyThreshold &&
		a.HTTP == b.HTTP && a.HTTPPath == b.HTTPPath && a.GRPC == b.GRPC && a.GRPCService == b.GRPCService &&
		a.TCP == b.TCP && string(a.TCPSend) == string(b.TCPSend) && string(a.TCPExpect) == string(b.TCPExpect)
}

// guardMetrics are the series of cluster protection (breaker overflows,
// retries refused by the budget, ejections, endpoints out of rotation).
type guardMetrics struct {
	overflow        *prometheus.CounterVec
	budgetExhausted *prometheus.CounterVec
	ejections       *prometheus.CounterVec
	ejected         *prometheus.GaugeVec
}

func newGuardMetrics(reg interface{ MustRegister(...prometheus.Collector) }) *guardMetrics {
	m := &guardMetrics{
		overflow: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verge_proxy_cluster_overflow_total",
			Help: "Requests, retries and TCP connections refused by the cluster's circuit breaker, by kind (connections, requests, retries; pending is not limited yet).",
		}, []string{"cluster", "kind"}),
		budgetExhausted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verge_proxy_cluster_retry_budget_exhausted_total",
			Help: "Retries not sent because the cluster's retry budget was spent.",
		}, []string{"cluster"}),
		ejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verge_proxy_cluster_ejections_total",
			Help: "Endpoints taken out of rotation, by reason (outlier: passive outlier detection; health: failed active health checks).",
		}, []string{"cluster", "reason"}),
		ejected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "verge_proxy_cluster_ejected_endpoints",
			Help: "Endpoints of the cluster out of rotation now, for either reason.",
		}, []string{"cluster"}),
	}
	reg.MustRegister(m.overflow, m.budgetExhausted, m.ejections, m.ejected)
	return m
}

// deleteCluster drops the cluster's series once it left the configuration.
func (m *guardMetrics) deleteCluster(name string) {
	l := prometheus.Labels{"cluster": name}
	m.overflow.DeletePartialMatch(l)
	m.budgetExhausted.DeletePartialMatch(l)
	m.ejections.DeletePartialMatch(l)
	m.ejected.DeletePartialMatch(l)
}
