package e2e

import (
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"verge.dev/verge/internal/proxy/config"
)

const retryMesh = `apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: flaky}
spec:
  selector: {app: flaky}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: down}
spec:
  selector: {app: down}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: verge.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: flaky-retry}
spec:
  targetRef: {kind: Service, name: flaky}
  retry:
    attempts: 2
    retryOn: [5xx]
    budget: {percent: 100, minRetriesPerSecond: 10}
---
apiVersion: verge.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: down-retry}
spec:
  targetRef: {kind: Service, name: down}
  retry:
    attempts: 2
    retryOn: [5xx]
    budget: {percent: 20, minRetriesPerSecond: 5}
`

// TestRetries: a server failing every other request with 503 looks healthy
// to clients with retries (attempts 2, retryOn 5xx), and when a server
// fails every request the retry budget (20% plus 5 per second) caps the
// extra load instead of tripling it.
func TestRetries(t *testing.T) {
	t.Parallel()
	c := startCP(t, "")
	flaky, down := startApp(t, "flaky"), startApp(t, "down")
	flaky.failEvery.Store(2)
	down.status.Store(http.StatusServiceUnavailable)
	c.apply(t, retryMesh)
	pf, pd := startWorkload(t, c, flaky, "app=flaky"), startWorkload(t, c, down, "app=down")
	client, fe := startClient(t, c, "app=client", "flaky:80=10001", "down:80=10002")
	waitAllReady(t, pf, pd, client)
	hc := &http.Client{Timeout: 20 * time.Second}
	waitConfig(t, client, "retry policies and budgets of flaky and down", func(d *dumpSnap) error {
		if err := d.hasRoute("a 5xx retry", func(tr *config.RouteTraffic) bool { return tr.Retry != nil && tr.Retry.Attempts == 2 }); err != nil {
			return err
		}
		for _, cl := range []string{"flaky.default.mesh:80", "down.default.mesh:80"} {
			if err := d.cluster(cl, func(_ config.LBPolicy, _ []config.Endpoint, tr *config.ClusterTraffic) error {
				if tr == nil || tr.RetryBudget == nil {
					return fmt.Errorf("cluster %s has no retry budget", cl)
				}
				return nil
			}); err != nil {
				return err
			}
		}
		return nil
	})

	t.Run("flaky server recovered", func(t *testing.T) {
		url := "http://" + fe.addr(10001) + "/"
		const n = 200
		before := flaky.hits.Load()
		ok := 0
		var firstErr string
		for range n {
			code, body, err := get(hc, url)
			if err == nil && code == 200 {
				ok++
			} else if firstErr == "" {
				firstErr = fmt.Sprintf("%d %q %v", code, body, err)
			}
		}
		hits := flaky.hits.Load() - before
		t.Logf("%d of %d succeeded; the server saw %d tries (every other one failing)", ok, n, hits)
		// Every failure is followed by a success on the same (only)
		// endpoint, so two attempts always suffice.
		if ok < n*99/100 {
			t.Errorf("%d of %d requests succeeded with retries, want ~100%% (first failure: %s)", ok, n, firstErr)
		}
		if hits <= n {
			t.Errorf("the server saw %d tries for %d requests: nothing was retried", hits, n)
		}
	})

	t.Run("budget caps an outage", func(t *testing.T) {
		url := "http://" + fe.addr(10002) + "/"
		const n = 300
		before := down.hits.Load()
		start := time.Now()
		for range n {
			code, body, err := get(hc, url)
			if err != nil || code != http.StatusServiceUnavailable {
				t.Fatalf("GET down: %d %q %v, want the server's 503", code, body, err)
			}
		}
		d := time.Since(start)
		hits := down.hits.Load() - before
		// Budget (Linkerd's, over a 10 s window): retries ≤ 20% of the
		// requests plus 5 per second of the window, so a run shorter than
		// the window may use its whole reserve of 5 × 10; one extra second
		// and 5% of n for the window's edges.
		limit := int64(float64(n)*1.2 + 5*max(d.Seconds()+1, 10) + 0.05*n)
		t.Logf("%d requests in %s: the server saw %d tries (limit %d; without a budget %d)", n, d.Round(time.Millisecond), hits, limit, 3*n)
		if hits > limit {
			t.Errorf("retry budget: the failing server saw %d tries for %d requests in %s, want at most %d", hits, n, d.Round(time.Millisecond), limit)
		}
		if hits < n {
			t.Errorf("the server saw %d tries for %d requests", hits, n)
		}
	})
}

// TestCircuitBreaker: with maxRequests 2, ten concurrent requests to a
// server that holds them get two through and 503 at once for the rest;
// once the load is gone requests succeed again.
func TestCircuitBreaker(t *testing.T) {
	t.Parallel()
	c := startCP(t, "")
	c.apply(t, lbBackendService)
	c.apply(t, `apiVersion: verge.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: backend-breaker}
spec:
  targetRef: {kind: Service, name: backend}
  circuitBreaker: {maxRequests: 2}
`)
	bh := newHost()
	srv := startHoldServer(t, bh.addr(8080), "held")
	pb := startProxy(t, c, proxyOpts{name: "held", labels: "app=backend", host: bh, inbound: []string{"8080=15006"}})
	client, fe := startClient(t, c, "app=client", "backend:80=10001")
	waitAllReady(t, pb, client)
	base := "http://" + fe.addr(10001)
	hc := &http.Client{Timeout: 60 * time.Second}
	waitConfig(t, client, "circuit breaker", func(d *dumpSnap) error {
		return d.cluster("backend.default.mesh:80", func(_ config.LBPolicy, _ []config.Endpoint, tr *config.ClusterTraffic) error {
			if tr == nil || tr.CircuitBreaker == nil || tr.CircuitBreaker.MaxRequests != 2 {
				return fmt.Errorf("traffic %+v, want a breaker with maxRequests 2", tr)
			}
			return nil
		})
	})
	eventually(t, 20*time.Second, func() error {
		code, body, err := get(hc, base+"/")
		if err != nil || code != 200 {
			return fmt.Errorf("GET /: %d %q %v", code, body, err)
		}
		return nil
	})

	const clients = 10
	var (
		wg                    sync.WaitGroup
		ok, refused, otherErr atomic.Int64
	)
	for range clients {
		wg.Go(func() {
			code, _, err := get(hc, base+"/hold")
			switch {
			case err == nil && code == 200:
				ok.Add(1)
			case err == nil && code == http.StatusServiceUnavailable:
				refused.Add(1)
			default:
				otherErr.Add(1)
			}
		})
	}
	// Decided without any timing: the refused requests come back while
	// the admitted ones are still held at the server.
	eventually(t, 20*time.Second, func() error {
		held, r := srv.held(), refused.Load()
		if held+int(r)+int(otherErr.Load()) < clients {
			return fmt.Errorf("%d held at the server, %d refused, %d other of %d", held, r, otherErr.Load(), clients)
		}
		return nil
	})
	held := srv.held()
	t.Logf("breaker open: %d held at the server, %d refused with 503, %d other", held, refused.Load(), otherErr.Load())
	if held > 2 || refused.Load() == 0 || otherErr.Load() != 0 {
		t.Errorf("maxRequests 2 with %d concurrent requests: %d reached the server, %d refused with 503, %d failed otherwise; want ≤2, the rest 503",
			clients, held, refused.Load(), otherErr.Load())
	}
	srv.release()
	wg.Wait()

	// The load is gone: the breaker closes.
	eventually(t, 20*time.Second, func() error {
		for range 10 {
			code, body, err := get(hc, base+"/")
			if err != nil || code != 200 {
				return fmt.Errorf("GET / after the load: %d %q %v", code, body, err)
			}
		}
		return nil
	})
}

// TestOutlierDetection: one of three endpoints answers 500; it is ejected
// (gets no more traffic), and after baseEjectionTime, healthy again, it
// comes back.
func TestOutlierDetection(t *testing.T) {
	t.Parallel()
	c := startCP(t, "")
	c.apply(t, lbBackendService)
	c.apply(t, `apiVersion: verge.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: backend-outlier}
spec:
  targetRef: {kind: Service, name: backend}
  outlierDetection:
    consecutive5xx: 3
    interval: 1s
    baseEjectionTime: 2s
    maxEjectionPercent: 50
`)
	a, b, bad := startApp(t, "a"), startApp(t, "b"), startApp(t, "bad")
	bad.status.Store(http.StatusInternalServerError)
	pa, pb, px := startWorkload(t, c, a, "app=backend"), startWorkload(t, c, b, "app=backend"), startWorkload(t, c, bad, "app=backend")
	client, fe := startClient(t, c, "app=client", "backend:80=10001")
	waitAllReady(t, pa, pb, px, client)
	base := "http://" + fe.addr(10001)
	hc := &http.Client{Timeout: 20 * time.Second}
	waitConfig(t, client, "outlier detection over 3 endpoints", func(d *dumpSnap) error {
		return d.cluster("backend.default.mesh:80", func(_ config.LBPolicy, eps []config.Endpoint, tr *config.ClusterTraffic) error {
			if tr == nil || tr.Outlier == nil || len(eps) != 3 {
				return fmt.Errorf("%d endpoints, traffic %+v; want 3 with outlier detection", len(eps), tr)
			}
			return nil
		})
	})

	// Ejected: a window of 30 requests in which bad gets none.
	start := time.Now()
	eventually(t, 30*time.Second, func() error {
		before := bad.hits.Load()
		for range 30 {
			get(hc, base+"/")
		}
		if n := bad.hits.Load() - before; n > 0 {
			return fmt.Errorf("the failing endpoint still got %d of 30 requests", n)
		}
		return nil
	})
	t.Logf("failing endpoint ejected after %s (%d hits)", time.Since(start).Round(100*time.Millisecond), bad.hits.Load())

	// Healthy again: back after the ejection time.
	bad.status.Store(0)
	start = time.Now()
	eventually(t, 30*time.Second, func() error {
		counts, err := spread(hc, base+"/", 1, 30)
		if counts["bad"] == 0 {
			return fmt.Errorf("recovered endpoint not back yet: %v (%v)", counts, err)
		}
		return nil
	})
	t.Logf("recovered endpoint back after %s", time.Since(start).Round(100*time.Millisecond))
}

// backendHealthCheck probes the backend service's endpoints every second
// over HTTP: out after two failures, back after one success.
const backendHealthCheck = `apiVersion: verge.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: backend-hc}
spec:
  targetRef: {kind: Service, name: backend}
  healthCheck:
    http: {path: /healthz}
    interval: 1s
    timeout: 500ms
    healthyThreshold: 1
    unhealthyThreshold: 2
`

// TestActiveHealthCheck: an HTTP health check takes an endpoint whose
// /healthz fails out of rotation, though it still answers requests, and
// brings it back when /healthz passes again.
func TestActiveHealthCheck(t *testing.T) {
	t.Parallel()
	c := startCP(t, "")
	c.apply(t, lbBackendService)
	c.apply(t, backendHealthCheck)
	a, b := startApp(t, "a"), startApp(t, "b")
	pa, pb := startWorkload(t, c, a, "app=backend"), startWorkload(t, c, b, "app=backend")
	client, fe := startClient(t, c, "app=client", "backend:80=10001")
	waitAllReady(t, pa, pb, client)
	base := "http://" + fe.addr(10001)
	hc := &http.Client{Timeout: 20 * time.Second}
	waitConfig(t, client, "HTTP health check", func(d *dumpSnap) error {
		return d.cluster("backend.default.mesh:80", func(_ config.LBPolicy, eps []config.Endpoint, tr *config.ClusterTraffic) error {
			if tr == nil || tr.HealthCheck == nil || !tr.HealthCheck.HTTP || len(eps) != 2 {
				return fmt.Errorf("%d endpoints, traffic %+v; want 2 with an HTTP health check", len(eps), tr)
			}
			return nil
		})
	})
	both := func() error {
		counts, err := spread(hc, base+"/", 1, 20)
		if err != nil || counts["a"] == 0 || counts["b"] == 0 {
			return fmt.Errorf("answers %v (%v), want both", counts, err)
		}
		return nil
	}
	eventually(t, 20*time.Second, both)

	eventually(t, 20*time.Second, func() error {
		if a.probes.Load() == 0 || b.probes.Load() == 0 {
			return fmt.Errorf("health probes: a %d, b %d; want both probed", a.probes.Load(), b.probes.Load())
		}
		return nil
	})
	b.sick.Store(true)
	probesBefore := b.probes.Load()
	start := time.Now()
	eventually(t, 30*time.Second, func() error {
		counts, err := spread(hc, base+"/", 1, 20)
		if err != nil || counts["a"] != 20 {
			return fmt.Errorf("answers %v (%v), want all from a", counts, err)
		}
		return nil
	})
	t.Logf("unhealthy endpoint out after %s and %d failed probes", time.Since(start).Round(100*time.Millisecond), b.probes.Load()-probesBefore)

	b.sick.Store(false)
	eventually(t, 30*time.Second, both)
}
