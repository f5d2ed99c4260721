package proxy

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"verge.dev/verge/internal/proxy/balancer"
	"verge.dev/verge/internal/proxy/config"
	"verge.dev/verge/internal/proxy/resilience"
)

// guardOf returns the guard the proxy's latest state holds for cluster.
func guardOf(t testing.TB, p *Proxy, cluster string) (*clusterGuard, balancer.Balancer) {
	t.Helper()
	cl := p.state.Load().clusters[cluster]
	if cl == nil {
		t.Fatalf("cluster %q not in state", cluster)
	}
	return cl.guard, cl.bal
}

// endpointOf returns bal's endpoint at addr.
func endpointOf(t testing.TB, bal balancer.Balancer, addr string) *balancer.Endpoint {
	t.Helper()
	for _, ep := range bal.Endpoints() {
		if ep.Address == addr {
			return ep
		}
	}
	t.Fatalf("no endpoint %s", addr)
	return nil
}

func withTraffic(c *config.Cluster, tr *config.ClusterTraffic) *config.Cluster {
	c.Traffic = tr
	return c
}

func TestGuardNilIsNoProtection(t *testing.T) {
	var g *clusterGuard
	if !g.admit() || !g.tryRetry() || !g.admitConn() {
		t.Fatal("nil guard refused")
	}
	g.done()
	g.retryDone()
	g.connDone()
	g.observe("x", resilience.ResultLocalFailure)

	p := New(Config{}, slog.New(slog.DiscardHandler))
	p.Update(snapshot(nil, nil, mkCluster("c", config.UpstreamHTTP1, config.LBRoundRobin, "127.0.0.1:1")))
	if g, _ := guardOf(t, p, "c"); g != nil {
		t.Errorf("cluster without traffic settings has guard %p, want none", g)
	}
}

func TestGuardBreakerAdmit(t *testing.T) {
	p := New(Config{}, slog.New(slog.DiscardHandler))
	p.Update(snapshot(nil, nil, withTraffic(mkCluster("c", config.UpstreamHTTP1, config.LBRoundRobin, "127.0.0.1:1"),
		&config.ClusterTraffic{CircuitBreaker: &config.CircuitBreaker{MaxRequests: 3, MaxRetries: 1}})))
	g, _ := guardOf(t, p, "c")

	// Ten concurrent requests, each holding its slot until all tried.
	var admitted atomic.Int32
	var wg sync.WaitGroup
	hold := make(chan struct{})
	for range 10 {
		wg.Go(func() {
			if g.admit() {
				admitted.Add(1)
				<-hold
				g.done()
			}
		})
	}
	waitFor(t, "admissions", func() bool {
		return admitted.Load()+int32(metricValue(t, p.guardMetrics.overflow.WithLabelValues("c", "requests"))) == 10
	})
	close(hold)
	wg.Wait()
	if got := admitted.Load(); got != 3 {
		t.Errorf("admitted %d concurrent requests, want 3 (max requests)", got)
	}
	if got := metricValue(t, p.guardMetrics.overflow.WithLabelValues("c", "requests")); got != 7 {
		t.Errorf("overflow{kind=requests} = %v, want 7", got)
	}
	if !g.admit() {
		t.Error("breaker still open after every request ended")
	}
	g.done()

	// Retries: one at a time.
	if !g.tryRetry() {
		t.Fatal("first retry refused")
	}
	if g.tryRetry() {
		t.Error("second concurrent retry admitted with max retries 1")
	}
	g.retryDone()
	if !g.tryRetry() {
		t.Error("retry refused after the first ended")
	}
	g.retryDone()

	// Settings change in place: same guard, new limit, slots in use kept.
	p.Update(snapshot(nil, nil, withTraffic(mkCluster("c", config.UpstreamHTTP1, config.LBRoundRobin, "127.0.0.1:1"),
		&config.ClusterTraffic{CircuitBreaker: &config.CircuitBreaker{MaxRequests: 1}})))
	if g2, _ := guardOf(t, p, "c"); g2 != g {
		t.Fatal("guard replaced on a settings change, want it reconfigured")
	}
	if !g.admit() {
		t.Fatal("first request refused")
	}
	if g.admit() {
		t.Error("second request admitted with max requests lowered to 1")
	}
	g.done()
}

func TestGuardRetryBudget(t *testing.T) {
	p := New(Config{}, slog.New(slog.DiscardHandler))
	p.Update(snapshot(nil, nil, withTraffic(mkCluster("c", config.UpstreamHTTP1, config.LBRoundRobin, "127.0.0.1:1"),
		&config.ClusterTraffic{RetryBudget: &config.RetryBudget{Percent: 20}})))
	g, _ := guardOf(t, p, "c")
	for range 10 {
		if !g.admit() {
			t.Fatal("request refused without a breaker")
		}
		g.done()
	}
	retries := 0
	for range 10 {
		if g.tryRetry() {
			retries++
			g.retryDone()
		}
	}
	if retries != 2 {
		t.Errorf("%d retries allowed after 10 requests at 20%%, want 2", retries)
	}
	if got := metricValue(t, p.guardMetrics.budgetExhausted.WithLabelValues("c")); got != 8 {
		t.Errorf("retry_budget_exhausted = %v, want 8", got)
	}
}

func TestGuardOutlierEjection(t *testing.T) {
	good := startBackend(t, "good", nil)
	var failing atomic.Bool
	failing.Store(true)
	bad := startBackend(t, "bad", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			http.Error(w, "broken", http.StatusInternalServerError)
			return
		}
		_, _ = io.WriteString(w, "bad recovered")
	}))
	rt := &config.RouteTable{Name: "rt", VirtualHosts: []*config.VirtualHost{{Name: "any", Domains: []string{"*"},
		Routes: []*config.Route{{Name: "all", Match: config.RouteMatch{Prefix: "/"}, Clusters: toCluster("c")}}}}}
	tp := startProxy(t, Config{}, snapshot([]*config.Listener{httpListener1("http", "rt")}, []*config.RouteTable{rt},
		withTraffic(mkCluster("c", config.UpstreamHTTP1, config.LBRoundRobin, good.addr, bad.addr),
			&config.ClusterTraffic{Outlier: &config.OutlierDetection{
				Consecutive5xx: 3, Interval: 20 * time.Millisecond, BaseEjectionTime: 300 * time.Millisecond, MaxEjectionPercent: 50,
			}})))
	g, bal := guardOf(t, tp.Proxy, "c")
	badEP := endpointOf(t, bal, bad.addr)

	// The request path reports each attempt; drive it as it does, with
	// the statuses the backends really answer.
	client := h1Client(t)
	attempt := func() {
		ep := bal.Pick()
		resp, err := client.Get("http://" + ep.Address + "/")
		if err != nil {
			g.report(ep, 0, resilience.FailureConnect, 0)
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		g.report(ep, resp.StatusCode, resilience.FailureNone, time.Millisecond)
	}
	for i := 0; i < 100 && !badEP.Ejected(); i++ {
		attempt()
	}
	if !badEP.Ejected() {
		t.Fatal("endpoint answering 500 not ejected after 100 attempts")
	}
	if got := metricValue(t, tp.guardMetrics.ejections.WithLabelValues("c", "outlier")); got != 1 {
		t.Errorf("ejections{reason=outlier} = %v, want 1", got)
	}
	if got := metricValue(t, tp.guardMetrics.ejected.WithLabelValues("c")); got != 1 {
		t.Errorf("ejected_endpoints = %v, want 1", got)
	}
	// While ejected, traffic through the proxy reaches the good backend
	// only (whatever the request path reports). The ejection may end
	// meanwhile; then stop looking.
	base := "http://" + tp.addr(t, "http")
	for range 10 {
		r := mustDo(t, client, "GET", base+"/", nil)
		if !badEP.Ejected() {
			break
		}
		if r.status != http.StatusOK {
			t.Fatalf("request while the failing endpoint is ejected: status %d, body %q", r.status, r.body)
		}
	}
	failing.Store(false)
	waitFor(t, "ejection to end after the base ejection time", func() bool { return !badEP.Ejected() })
	if got := metricValue(t, tp.guardMetrics.ejected.WithLabelValues("c")); got != 0 {
		t.Errorf("ejected_endpoints after the sweep = %v, want 0", got)
	}
	waitFor(t, "recovered backend to get traffic", func() bool {
		r := mustDo(t, client, "GET", base+"/", nil)
		return r.body == "bad recovered"
	})
}

func TestGuardHealthCheck(t *testing.T) {
	var aBad, bBad atomic.Bool
	serve := func(name string, bad *atomic.Bool) *backend {
		return startBackend(t, name, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/healthz" && bad.Load() {
				http.Error(w, "draining", http.StatusServiceUnavailable)
				return
			}
			_, _ = io.WriteString(w, name)
		}))
	}
	a, b := serve("a", &aBad), serve("b", &bBad)
	rt := &config.RouteTable{Name: "rt", VirtualHosts: []*config.VirtualHost{{Name: "any", Domains: []string{"*"},
		Routes: []*config.Route{{Name: "all", Match: config.RouteMatch{Prefix: "/app"}, Clusters: toCluster("c")}}}}}
	tp := startProxy(t, Config{}, snapshot([]*config.Listener{httpListener1("http", "rt")}, []*config.RouteTable{rt},
		withTraffic(mkCluster("c", config.UpstreamHTTP1, config.LBRoundRobin, a.addr, b.addr),
			&config.ClusterTraffic{HealthCheck: &config.HealthCheck{
				Interval: 20 * time.Millisecond, Timeout: 2 * time.Second, HealthyThreshold: 2, UnhealthyThreshold: 2,
				HTTP: true, HTTPPath: "/healthz",
			}})))
	_, bal := guardOf(t, tp.Proxy, "c")
	aEP, bEP := endpointOf(t, bal, a.addr), endpointOf(t, bal, b.addr)
	waitFor(t, "both endpoints healthy", func() bool { return !aEP.Ejected() && !bEP.Ejected() })

	bBad.Store(true)
	waitFor(t, "endpoint b out of rotation", bEP.Ejected)
	client := h1Client(t)
	base := "http://" + tp.addr(t, "http")
	for i := range 6 {
		if r := mustDo(t, client, "GET", base+"/app", nil); r.body != "a" {
			t.Fatalf("request %d with b unhealthy answered by %q, want a", i, r.body)
		}
	}
	if got := metricValue(t, tp.guardMetrics.ejections.WithLabelValues("c", "health")); got != 1 {
		t.Errorf("ejections{reason=health} = %v, want 1", got)
	}

	// The admin dump says why b is out.
	rec := httptest.NewRecorder()
	tp.AdminHandler(AdminSources{}).ServeHTTP(rec, httptest.NewRequest("GET", "/config_dump", nil))
	var dump struct {
		Clusters []clusterStatus `json:"clusters"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &dump); err != nil {
		t.Fatal(err)
	}
	if len(dump.Clusters) != 1 || len(dump.Clusters[0].Ejected) != 1 || dump.Clusters[0].Ejected[0] != (ejectedStatus{Address: b.addr, Unhealthy: true}) {
		t.Errorf("config_dump clusters = %+v, want c with %s ejected as unhealthy", dump.Clusters, b.addr)
	}

	bBad.Store(false)
	waitFor(t, "endpoint b back in rotation", func() bool { return !bEP.Ejected() })
	waitFor(t, "b answering again", func() bool { return mustDo(t, client, "GET", base+"/app", nil).body == "b" })

	// Health checking turned off: whatever it said no longer counts.
	bBad.Store(true)
	waitFor(t, "endpoint b out of rotation again", bEP.Ejected)
	tp.Update(snapshot([]*config.Listener{httpListener1("http", "rt")}, []*config.RouteTable{rt},
		withTraffic(mkCluster("c", config.UpstreamHTTP1, config.LBRoundRobin, a.addr, b.addr), &config.ClusterTraffic{})))
	if bEP.Ejected() {
		t.Error("endpoint b still ejected after its health check was removed")
	}
}

func TestGuardLifecycle(t *testing.T) {
	e1, e2 := "127.0.0.1:1", "127.0.0.1:2"
	outlier := &config.ClusterTraffic{Outlier: &config.OutlierDetection{
		Consecutive5xx: 1, Interval: time.Hour, BaseEjectionTime: time.Hour, MaxEjectionPercent: 50,
	}}
	tp := startProxy(t, Config{}, snapshot(nil, nil, withTraffic(mkCluster("c", config.UpstreamHTTP1, config.LBRoundRobin, e1, e2), outlier)))
	g, bal := guardOf(t, tp.Proxy, "c")
	ep2 := bal.Pick() // keep the in-flight count honest
	g.report(ep2, 500, resilience.FailureNone, 0)
	ejected := ep2.Address

	// A new policy makes a new balancer; the ejection follows the address.
	tp.Update(snapshot(nil, nil, withTraffic(mkCluster("c", config.UpstreamHTTP1, config.LBLeastRequest, e1, e2), outlier)))
	g2, bal2 := guardOf(t, tp.Proxy, "c")
	if g2 != g {
		t.Fatal("guard replaced on a policy change")
	}
	if bal2 == bal {
		t.Fatal("balancer kept across a policy change")
	}
	if !endpointOf(t, bal2, ejected).Ejected() {
		t.Errorf("endpoint %s not ejected in the new balancer", ejected)
	}
	// A larger ring makes a new balancer too.
	ring := *outlier
	ring.RingHashMinSize = 4096
	tp.Update(snapshot(nil, nil, withTraffic(mkCluster("c", config.UpstreamHTTP1, config.LBLeastRequest, e1, e2), &ring)))
	if _, bal3 := guardOf(t, tp.Proxy, "c"); bal3 == bal2 || !endpointOf(t, bal3, ejected).Ejected() {
		t.Errorf("ring size change: new balancer %v, ejection carried %v; want both", bal3 != bal2, endpointOf(t, bal3, ejected).Ejected())
	}

	// The cluster goes: the guard stops and its series go.
	tp.Update(snapshot(nil, nil))
	waitFor(t, "guard stopped", func() bool {
		tp.updateMu.Lock()
		defer tp.updateMu.Unlock()
		return g.stopped
	})
	if g.det.Load() != nil {
		t.Error("stopped guard still has a detector")
	}
	if n := countSeries(t, tp.Proxy, "verge_proxy_cluster_ejected_endpoints"); n != 0 {
		t.Errorf("%d ejected_endpoints series after the cluster left, want 0", n)
	}
}

// countSeries counts the exported series of the named metric family.
func countSeries(t testing.TB, p *Proxy, name string) int {
	t.Helper()
	mfs, err := p.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return len(mf.GetMetric())
		}
	}
	return 0
}

// TestGuardUpdateWithoutRun checks that a proxy never run starts nothing:
// goleak (TestMain) fails the package otherwise.
func TestGuardUpdateWithoutRun(t *testing.T) {
	p := New(Config{}, slog.New(slog.DiscardHandler))
	p.Update(snapshot(nil, nil, withTraffic(mkCluster("c", config.UpstreamHTTP1, config.LBRoundRobin, "127.0.0.1:1"),
		&config.ClusterTraffic{
			Outlier:     &config.OutlierDetection{Consecutive5xx: 1, Interval: time.Millisecond, BaseEjectionTime: time.Millisecond},
			HealthCheck: &config.HealthCheck{Interval: time.Millisecond, Timeout: time.Second, HealthyThreshold: 1, UnhealthyThreshold: 1, TCP: true},
		})))
	_, bal := guardOf(t, p, "c")
	if endpointOf(t, bal, "127.0.0.1:1").Ejected() {
		t.Error("endpoint ejected by a health check that never ran")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// Run with an ended context starts and stops at once.
	if err := p.Run(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestGuardBreakerOverflowHTTP drives the breaker through the proxy's
// HTTP/1.1 and net/http paths: with max requests 2 and two requests held
// by the backend, the third is answered 503 without reaching it.
func TestGuardBreakerOverflowHTTP(t *testing.T) {
	for _, tc := range []struct {
		name  string
		proto config.UpstreamProtocol
	}{{"h1 fast path", config.UpstreamHTTP1}, {"net/http", config.UpstreamHTTP2}} {
		t.Run(tc.name, func(t *testing.T) {
			release := make(chan struct{})
			var inFlight atomic.Int32
			slow := startBackend(t, "slow", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				inFlight.Add(1)
				defer inFlight.Add(-1)
				select {
				case <-release:
				case <-r.Context().Done():
				}
				_, _ = io.WriteString(w, "done")
			}))
			rt := &config.RouteTable{Name: "rt", VirtualHosts: []*config.VirtualHost{{Name: "any", Domains: []string{"*"},
				Routes: []*config.Route{{Name: "all", Match: config.RouteMatch{Prefix: "/"}, Clusters: toCluster("c")}}}}}
			tp := startProxy(t, Config{}, snapshot([]*config.Listener{httpListener1("http", "rt")}, []*config.RouteTable{rt},
				withTraffic(mkCluster("c", tc.proto, config.LBRoundRobin, slow.addr),
					&config.ClusterTraffic{CircuitBreaker: &config.CircuitBreaker{MaxRequests: 2}})))
			base := "http://" + tp.addr(t, "http")
			client := h1Client(t)

			var wg sync.WaitGroup
			results := make(chan result, 2)
			for range 2 {
				wg.Go(func() { results <- mustDo(t, client, "GET", base+"/held", nil) })
			}
			waitFor(t, "two requests at the backend", func() bool { return inFlight.Load() == 2 })
			if r := mustDo(t, client, "GET", base+"/over", nil); r.status != http.StatusServiceUnavailable {
				t.Errorf("third concurrent request: status %d, want 503", r.status)
			}
			close(release)
			wg.Wait()
			close(results)
			for r := range results {
				if r.status != http.StatusOK {
					t.Errorf("held request: status %d, want 200", r.status)
				}
			}
			if got := slow.hits.Load(); got != 2 {
				t.Errorf("backend saw %d requests, want 2 (the overflow never sent)", got)
			}
			if got := metricValue(t, tp.guardMetrics.overflow.WithLabelValues("c", "requests")); got != 1 {
				t.Errorf("overflow{kind=requests} = %v, want 1", got)
			}
			if r := mustDo(t, client, "GET", base+"/after", nil); r.status != http.StatusOK {
				t.Errorf("request after the held ones ended: status %d, want 200", r.status)
			}
		})
	}
}

// TestGuardHealthCheckMTLS checks an endpoint behind a peer proxy: the
// probe crosses the mutual TLS hop (offering http/1.1, served by the
// peer's net/http path) and reaches the application's health path.
func TestGuardHealthCheckMTLS(t *testing.T) {
	_, in, out := meshIdentities(t)
	var bad atomic.Bool
	app := startBackend(t, "app", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" && bad.Load() {
			http.Error(w, "draining", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "app")
	}))
	o := meshOpts{appAddr: app.addr, in: in, out: out, peerIDs: []string{"spiffe://verge.local/ns/default/sa/backend"}}
	m := startMesh(t, o)
	s := outboundSnapshot(o, m.inAddr)
	s.Clusters["svc"].Traffic = &config.ClusterTraffic{HealthCheck: &config.HealthCheck{
		Interval: 20 * time.Millisecond, Timeout: 2 * time.Second, HealthyThreshold: 1, UnhealthyThreshold: 1,
		HTTP: true, HTTPPath: "/healthz",
	}}
	m.out.Update(s)
	_, bal := guardOf(t, m.out.Proxy, "svc")
	ep := endpointOf(t, bal, m.inAddr)
	waitFor(t, "peer endpoint healthy over mutual TLS", func() bool { return !ep.Ejected() })
	bad.Store(true)
	waitFor(t, "peer endpoint unhealthy", ep.Ejected)
	bad.Store(false)
	waitFor(t, "peer endpoint healthy again", func() bool { return !ep.Ejected() })
	if got := metricValue(t, m.in.metrics.tlsHandshakes.WithLabelValues("inbound", "")); got < 1 {
		t.Errorf("inbound handshakes without ALPN (the probes' HTTP/1.1) = %v, want at least 1", got)
	}
}

// BenchmarkGuardRequest is the guard's per-request work on a cluster with
// every protection: admit, pick, report, done. It must not allocate.
func BenchmarkGuardRequest(b *testing.B) {
	p := New(Config{}, slog.New(slog.DiscardHandler))
	p.Update(snapshot(nil, nil, withTraffic(mkCluster("c", config.UpstreamHTTP1, config.LBRoundRobin, "127.0.0.1:1", "127.0.0.1:2"),
		&config.ClusterTraffic{
			CircuitBreaker: &config.CircuitBreaker{MaxRequests: 1 << 20},
			RetryBudget:    &config.RetryBudget{Percent: 20, MinRetriesPerSecond: 10},
			Outlier:        &config.OutlierDetection{Consecutive5xx: 5, Interval: time.Second, BaseEjectionTime: time.Second, MaxEjectionPercent: 10},
		})))
	g, bal := guardOf(b, p, "c")
	b.ReportAllocs()
	for b.Loop() {
		if !g.admit() {
			b.Fatal("refused")
		}
		ep := bal.Pick()
		g.report(ep, http.StatusOK, resilience.FailureNone, time.Millisecond)
		g.done()
	}
}

// TestGuardHTTP1MaxConnections: each HTTP/1.1 request holds an upstream
// connection of its own, so max connections caps concurrent requests
// there; one past it waits as a pending request (at most max pending, the
// rest overflow at once) and goes ahead when a connection frees; HTTP/2
// clusters are not capped so. A protocol change starts a new guard, so
// slots taken under one protocol are never released against the other's.
func TestGuardHTTP1MaxConnections(t *testing.T) {
	p := New(Config{}, slog.New(slog.DiscardHandler))
	cb := &config.ClusterTraffic{CircuitBreaker: &config.CircuitBreaker{MaxConnections: 2, MaxPendingRequests: 1, MaxRequests: 100}}
	p.Update(snapshot(nil, nil, withTraffic(mkCluster("c", config.UpstreamHTTP1, config.LBRoundRobin, "127.0.0.1:1"), cb)))
	g, _ := guardOf(t, p, "c")
	for i := range 2 {
		if !g.admit() {
			t.Fatalf("request %d refused", i)
		}
	}
	pending := make(chan bool, 1)
	go func() { pending <- g.admit() }()
	waitFor(t, "a pending request", func() bool { return g.breaker.InUse(resilience.PendingRequests) == 1 })
	if g.admit() {
		t.Error("request admitted with the connections and the pending queue full")
	}
	if got := metricValue(t, p.guardMetrics.overflow.WithLabelValues("c", "pending_requests")); got != 1 {
		t.Errorf("overflow{kind=pending_requests} = %v, want 1", got)
	}
	g.done()
	select {
	case ok := <-pending:
		if !ok {
			t.Error("pending request refused after a connection freed")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("pending request still waiting after a connection freed")
	}
	g.done()
	g.done()

	p.Update(snapshot(nil, nil, withTraffic(mkCluster("c", config.UpstreamHTTP2, config.LBRoundRobin, "127.0.0.1:1"), cb)))
	g2, _ := guardOf(t, p, "c")
	if g2 == g {
		t.Fatal("guard kept across a protocol change")
	}
	for i := range 5 {
		if !g2.admit() {
			t.Fatalf("HTTP/2 request %d refused by max connections", i)
		}
	}
}

// TestReportMarksOverload: an attempt answered 503 marks its endpoint
// overloaded, with or without a guard, and the priority split moves to
// the next level; other answers and failures without a response do not.
func TestReportMarksOverload(t *testing.T) {
	bal := balancer.New(config.LBRoundRobin, []config.Endpoint{
		{Address: "10.0.0.1:80", Weight: 1, Priority: 0},
		{Address: "10.0.1.1:80", Weight: 1, Priority: 1},
	}).(*balancer.Priority)
	near := bal.Endpoints()[0]
	var g *clusterGuard
	for _, status := range []int{200, 500, 502, 0} {
		ep := bal.Pick()
		g.report(ep, status, resilience.FailureNone, time.Millisecond)
		if near.Overloaded() {
			t.Fatalf("answer %d marked the endpoint overloaded", status)
		}
	}
	ep := bal.Pick()
	if ep != near {
		t.Fatalf("picked %s with level 0 available", ep.Address)
	}
	g.report(ep, http.StatusServiceUnavailable, resilience.FailureNone, time.Millisecond)
	if !near.Overloaded() {
		t.Fatal("a 503 did not mark the endpoint overloaded")
	}
	if loads := bal.Loads(); loads[0].Percent != 0 || loads[1].Percent != 100 {
		t.Errorf("loads with level 0 overloaded: %+v, want everything at level 1", loads)
	}
}
