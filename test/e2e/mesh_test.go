package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const backendMesh = `apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: backend}
spec:
  selector: {app: backend}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: backend-v1}
spec:
  selector: {app: backend, version: v1}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: backend-v2}
spec:
  selector: {app: backend, version: v2}
  ports: [{port: 80, targetPort: 8080}]
`

const backendRoute = `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: backend}
spec:
  parentRefs: [{group: "", kind: Service, name: backend, port: 80}]
  rules:
  - matches: [{headers: [{name: x-version, value: v2}]}]
    backendRefs: [{name: backend-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /only-v1}, method: GET}]
    backendRefs: [{name: backend-v1, port: 80}]
  - backendRefs:
    - {name: backend-v1, port: 80, weight: %d}
    - {name: backend-v2, port: 80, weight: %d}
`

// meshFixture is a control plane, two backend versions behind their proxies
// and a client-side proxy with an outbound port for the backend.
type meshFixture struct {
	cp         *cp
	b1, b2, fe host
	p1, p2, pf *proxy
	url        string // the backend through the client proxy's outbound port
}

func newMeshFixture(t *testing.T) *meshFixture {
	t.Helper()
	f := &meshFixture{cp: startCP(t, ""), b1: newHost(), b2: newHost(), fe: newHost()}
	httpServer(t, f.b1.addr(8080), "v1")
	httpServer(t, f.b2.addr(8080), "v2")
	f.cp.apply(t, backendMesh)
	f.p1 = startProxy(t, f.cp, proxyOpts{name: "backend-v1-0", labels: "app=backend,version=v1", host: f.b1, inbound: []string{"8080=15006"}})
	f.p2 = startProxy(t, f.cp, proxyOpts{name: "backend-v2-0", labels: "app=backend,version=v2", host: f.b2, inbound: []string{"8080=15006"}})
	f.pf = startProxy(t, f.cp, proxyOpts{name: "frontend-0", labels: "app=frontend", host: f.fe, outbound: []string{"backend:80=10001"}})
	for _, p := range []*proxy{f.p1, f.p2, f.pf} {
		p.waitReady(t)
	}
	f.url = "http://" + f.fe.addr(10001)
	return f
}

// countVersions sends n requests and counts answers by backend name.
func countVersions(t *testing.T, c *http.Client, url string, n int, hdr ...string) map[string]int {
	t.Helper()
	counts := map[string]int{}
	for range n {
		code, body, err := get(c, url, hdr...)
		if err != nil || code != http.StatusOK {
			t.Fatalf("GET %s: %d %q %v", url, code, body, err)
		}
		counts[strings.Fields(body)[0]]++
	}
	return counts
}

func TestHTTPRoutingAndWeightedSplit(t *testing.T) {
	t.Parallel()
	f := newMeshFixture(t)
	c := &http.Client{Timeout: 10 * time.Second}

	// Without a route, the backend service balances over both versions.
	eventually(t, 20*time.Second, func() error {
		counts := map[string]int{}
		for range 20 {
			code, body, err := get(c, f.url+"/")
			if err != nil || code != 200 {
				return fmt.Errorf("%d %q %v", code, body, err)
			}
			counts[strings.Fields(body)[0]]++
		}
		if counts["v1"] == 0 || counts["v2"] == 0 {
			return fmt.Errorf("not balanced over both versions yet: %v", counts)
		}
		return nil
	})

	f.cp.apply(t, fmt.Sprintf(backendRoute, 90, 10))
	// Wait for the route to arrive: the matches only exist with it.
	waitRoute(t, c, f.url)

	t.Run("header match", func(t *testing.T) {
		if got := countVersions(t, c, f.url+"/x", 50, "x-version", "v2"); got["v2"] != 50 {
			t.Errorf("x-version: v2 went to %v, want all v2", got)
		}
	})
	t.Run("path and method match", func(t *testing.T) {
		if got := countVersions(t, c, f.url+"/only-v1/a", 50); got["v1"] != 50 {
			t.Errorf("/only-v1 went to %v, want all v1", got)
		}
		// A POST does not match the GET-only rule and falls to the split.
		resp, err := c.Post(f.url+"/only-v1/a", "text/plain", strings.NewReader("x"))
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("POST: %v %v", resp, err)
		}
		resp.Body.Close()
	})
	t.Run("90/10 split", func(t *testing.T) {
		const n = 2000
		got := countVersions(t, c, f.url+"/split", n)
		// Binomial(n=2000, p=0.1): mean 200, sd 13.4; accept ±5 sd.
		if v2 := got["v2"]; v2 < 133 || v2 > 267 || got["v1"]+v2 != n {
			t.Errorf("split over %d requests = %v, want v2 within 200±67", n, got)
		}
	})
	t.Run("proxy-status", func(t *testing.T) {
		out, code := f.cp.verge(t, "", "proxy-status")
		if code != 0 {
			t.Fatalf("proxy-status: exit %d: %s", code, out)
		}
		for _, name := range []string{"backend-v1-0", "backend-v2-0", "frontend-0"} {
			if !strings.Contains(out, name) {
				t.Errorf("proxy-status does not list %s:\n%s", name, out)
			}
		}
	})
}

// TestConfigHotUpdateNoFailedRequests changes the route's weights back and
// forth while a steady stream of requests flows, and requires every request
// to succeed.
func TestConfigHotUpdateNoFailedRequests(t *testing.T) {
	t.Parallel()
	f := newMeshFixture(t)
	c := &http.Client{Timeout: 10 * time.Second}
	f.cp.apply(t, fmt.Sprintf(backendRoute, 50, 50))
	waitRoute(t, c, f.url)

	var (
		ok, failed atomic.Int64
		firstErr   atomic.Value
		wg         sync.WaitGroup
		stop       = make(chan struct{})
	)
	for range 4 {
		wg.Go(func() {
			for i := 0; i < 100000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				code, body, err := get(c, f.url+"/hot")
				if err != nil || code != 200 {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("%d %q %v", code, body, err))
					continue
				}
				ok.Add(1)
			}
		})
	}
	for i := range 10 {
		w := 10 + 80*(i%2)
		f.cp.apply(t, fmt.Sprintf(backendRoute, w, 100-w))
		time.Sleep(300 * time.Millisecond) // pacing of the updates, not synchronisation
	}
	close(stop)
	wg.Wait()
	if failed.Load() != 0 || ok.Load() == 0 {
		t.Fatalf("during 10 route updates: %d ok, %d failed (first: %v)", ok.Load(), failed.Load(), firstErr.Load())
	}
	t.Logf("%d requests, none failed, across 10 route updates", ok.Load())
}

// waitRoute waits until the backend route's matches are in effect: 20
// requests in a row with the header go to v2, and 20 to /only-v1 go to v1.
func waitRoute(t *testing.T, c *http.Client, url string) {
	t.Helper()
	eventually(t, 20*time.Second, func() error {
		// Twenty in a row each: round robin over both versions, which is
		// what runs before the route arrives, cannot pass this by chance.
		for range 20 {
			if _, body, _ := get(c, url+"/", "x-version", "v2"); !strings.HasPrefix(body, "v2") {
				return fmt.Errorf("header match not in effect: %q", body)
			}
		}
		for range 20 {
			if _, body, _ := get(c, url+"/only-v1"); !strings.HasPrefix(body, "v1") {
				return fmt.Errorf("path match not in effect: %q", body)
			}
		}
		return nil
	})
}
