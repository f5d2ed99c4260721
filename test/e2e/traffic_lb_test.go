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

const lbBackendService = `apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: backend}
spec:
  selector: {app: backend}
  ports: [{port: 80, targetPort: 8080}]
`

const affinityPolicy = `apiVersion: verge.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: backend-affinity}
spec:
  targetRef: {kind: Service, name: backend}
  loadBalancer:
    policy: %s
    consistentHash: {header: x-user}
`

// TestRingHashAffinity and TestMaglevAffinity: requests hashed by header
// stick to one endpoint per key across a thousand requests, and when one of
// four endpoints leaves only its keys move (plus a small tolerance).
func TestRingHashAffinity(t *testing.T) { testAffinity(t, "RingHash", config.LBRingHash) }

func TestMaglevAffinity(t *testing.T) { testAffinity(t, "Maglev", config.LBMaglev) }

func testAffinity(t *testing.T, policy string, want config.LBPolicy) {
	t.Parallel()
	c := startCP(t, "")
	c.apply(t, lbBackendService)
	c.apply(t, fmt.Sprintf(affinityPolicy, policy))
	var apps []*app
	var proxies []*proxy
	for i := range 4 {
		a := startApp(t, fmt.Sprintf("b%d", i))
		apps = append(apps, a)
		proxies = append(proxies, startWorkload(t, c, a, "app=backend"))
	}
	client, fe := startClient(t, c, "app=client", "backend:80=10001")
	waitAllReady(t, append(proxies, client)...)
	base := "http://" + fe.addr(10001)
	hc := &http.Client{Timeout: 20 * time.Second}
	const cluster = "backend.default.mesh:80"
	endpoints := func(n int) func(d *dumpSnap) error {
		return func(d *dumpSnap) error {
			if err := d.hasRoute("a hash policy", func(tr *config.RouteTraffic) bool { return len(tr.Hash) > 0 }); err != nil {
				return err
			}
			return d.cluster(cluster, func(lb config.LBPolicy, eps []config.Endpoint, _ *config.ClusterTraffic) error {
				if lb != want || len(eps) != n {
					return fmt.Errorf("lb %d with %d endpoints, want %d with %d", lb, len(eps), want, n)
				}
				return nil
			})
		}
	}
	waitConfig(t, client, policy+" over 4 endpoints", endpoints(4))

	const nKeys, rounds = 100, 10
	owner := map[string]string{}
	eventually(t, 30*time.Second, func() error {
		// The whole thousand again on a mismatch: an answer before the
		// proxy compiled the policy would not say anything.
		clear(owner)
		for r := range rounds {
			for k := range nKeys {
				key := fmt.Sprintf("user-%d", k)
				code, body, err := get(hc, base+"/", "x-user", key)
				if err != nil || code != 200 {
					return fmt.Errorf("GET with x-user %s: %d %q %v", key, code, body, err)
				}
				got := servedBy(body)
				if prev, ok := owner[key]; ok && prev != got {
					return fmt.Errorf("round %d: key %s went to %s, earlier to %s", r, key, got, prev)
				}
				owner[key] = got
			}
		}
		return nil
	})
	perEndpoint := map[string]int{}
	for _, e := range owner {
		perEndpoint[e]++
	}
	t.Logf("%d keys × %d rounds, each key on one endpoint; keys per endpoint: %v", nKeys, rounds, perEndpoint)
	if len(perEndpoint) < 3 {
		t.Errorf("100 keys hashed onto only %d of 4 endpoints: %v", len(perEndpoint), perEndpoint)
	}

	// b0's proxy goes away: the endpoint leaves the client's cluster.
	gone := apps[0].name
	proxies[0].kill()
	waitConfig(t, client, policy+" over the 3 remaining endpoints", endpoints(3))
	moved, stayers := 0, 0
	for k := range nKeys {
		key := fmt.Sprintf("user-%d", k)
		code, body, err := get(hc, base+"/", "x-user", key)
		if err != nil || code != 200 {
			t.Fatalf("GET with x-user %s after removal: %d %q %v", key, code, body, err)
		}
		if owner[key] == gone {
			continue
		}
		stayers++
		if servedBy(body) != owner[key] {
			moved++
		}
	}
	// Ring hash moves none of the other keys; Maglev a few.
	tolerance := max(3, stayers/20)
	t.Logf("after removing %s: %d of %d keys of the remaining endpoints moved (tolerance %d)", gone, moved, stayers, tolerance)
	if moved > tolerance {
		t.Errorf("%d of %d keys not on the removed endpoint moved, want at most %d", moved, stayers, tolerance)
	}
}

// TestPeakEWMA: three backends, one slow on purpose (200 ms); within
// seconds the slow one gets under 10% of the requests.
func TestPeakEWMA(t *testing.T) {
	t.Parallel()
	c := startCP(t, "")
	c.apply(t, lbBackendService)
	c.apply(t, `apiVersion: verge.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: backend-ewma}
spec:
  targetRef: {kind: Service, name: backend}
  loadBalancer: {policy: PeakEWMA}
`)
	fast1, fast2, slow := startApp(t, "fast1"), startApp(t, "fast2"), startApp(t, "slow")
	slow.delay.Store(int64(200 * time.Millisecond))
	pa, pb, ps := startWorkload(t, c, fast1, "app=backend"), startWorkload(t, c, fast2, "app=backend"), startWorkload(t, c, slow, "app=backend")
	client, fe := startClient(t, c, "app=client", "backend:80=10001")
	waitAllReady(t, pa, pb, ps, client)
	base := "http://" + fe.addr(10001)
	waitConfig(t, client, "PeakEWMA over 3 endpoints", func(d *dumpSnap) error {
		return d.cluster("backend.default.mesh:80", func(lb config.LBPolicy, eps []config.Endpoint, _ *config.ClusterTraffic) error {
			if lb != config.LBPeakEWMA || len(eps) != 3 {
				return fmt.Errorf("lb %d with %d endpoints, want %d with 3", lb, len(eps), config.LBPeakEWMA)
			}
			return nil
		})
	})

	// Windows of 100 requests from 4 workers; round robin would give the
	// slow endpoint a third of each.
	hc := &http.Client{Timeout: 20 * time.Second}
	start := time.Now()
	window := 0
	eventually(t, 40*time.Second, func() error {
		window++
		counts, err := spread(hc, base+"/", 4, 100)
		if err != nil {
			return err
		}
		share := float64(counts["slow"]) / 100
		t.Logf("window %d at %s: %v", window, time.Since(start).Round(100*time.Millisecond), counts)
		if share >= 0.10 {
			return fmt.Errorf("slow endpoint got %.0f%% of a window: %v", 100*share, counts)
		}
		return nil
	})
}

// spread sends n GETs to url from workers goroutines and counts the
// answers by app; any failure is an error.
func spread(hc *http.Client, url string, workers, n int) (map[string]int, error) {
	var (
		mu     sync.Mutex
		counts = map[string]int{}
		sent   atomic.Int64
		first  error
		wg     sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			for sent.Add(1) <= int64(n) {
				code, body, err := get(hc, url)
				mu.Lock()
				if (err != nil || code != 200) && first == nil {
					first = fmt.Errorf("GET %s: %d %q %v", url, code, body, err)
				}
				counts[servedBy(body)]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return counts, first
}

// TestLocality: a caller in zone a reaches only the endpoint in zone a
// while it is healthy; when its active health check fails, traffic spills
// over to zone b, and comes back when it recovers.
func TestLocality(t *testing.T) {
	t.Parallel()
	c := startCP(t, "")
	c.apply(t, lbBackendService)
	c.apply(t, backendHealthCheck)
	near, far := startApp(t, "near"), startApp(t, "far")
	pn := startWorkload(t, c, near, "app=backend,zone=a,region=r1")
	pf := startWorkload(t, c, far, "app=backend,zone=b,region=r1")
	client, fe := startClient(t, c, "app=client,zone=a,region=r1", "backend:80=10001")
	waitAllReady(t, pn, pf, client)
	base := "http://" + fe.addr(10001)
	hc := &http.Client{Timeout: 20 * time.Second}
	waitConfig(t, client, "endpoints with locality priorities 0 (zone a) and 1 (zone b)", func(d *dumpSnap) error {
		return d.cluster("backend.default.mesh:80", func(_ config.LBPolicy, eps []config.Endpoint, tr *config.ClusterTraffic) error {
			prio := map[string]uint32{}
			for _, e := range eps {
				prio[e.Zone] = e.Priority
			}
			if len(eps) != 2 || prio["a"] != 0 || prio["b"] != 1 {
				return fmt.Errorf("endpoints %+v, want zone a at priority 0 and zone b at 1", eps)
			}
			if tr == nil || tr.HealthCheck == nil {
				return fmt.Errorf("no health check")
			}
			return nil
		})
	})
	only := func(want string, n int) func() error {
		return func() error {
			counts, err := spread(hc, base+"/", 1, n)
			if err != nil {
				return err
			}
			if counts[want] != n {
				return fmt.Errorf("answers %v, want all %d from %s", counts, n, want)
			}
			return nil
		}
	}
	eventually(t, 20*time.Second, only("near", 50))
	t.Logf("zone a serves everything while healthy")

	near.sick.Store(true)
	eventually(t, 30*time.Second, only("far", 30))
	t.Logf("zone a unhealthy: traffic spilled over to zone b")

	near.sick.Store(false)
	eventually(t, 30*time.Second, only("near", 30))
}
