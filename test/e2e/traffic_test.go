package e2e

import (
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"verge.dev/verge/internal/proxy/config"
)

// This file holds the helpers of the traffic-management tests (issue 5)
// and the routing features of HTTPRoute filters and FaultInjection; the
// balancing, resilience and admission tests are in traffic_lb_test.go,
// traffic_resilience_test.go and traffic_limits_test.go.

// app is a test application on its own loopback host, port 8080. It
// answers "NAME METHOD PATH", echoes each request header as a response
// header "Echo-NAME", counts its hits, and can be told to be slow, to
// fail, or to fail its health check (/healthz, which is not counted).
type app struct {
	name string
	host host

	hits      atomic.Int64
	delay     atomic.Int64 // nanoseconds to wait before answering
	status    atomic.Int64 // non-zero: answer every request with this status
	failEvery atomic.Int64 // n > 0: answer every nth request with 503
	sick      atomic.Bool  // /healthz answers 503
	probes    atomic.Int64 // /healthz requests
}

func startApp(t *testing.T, name string) *app {
	t.Helper()
	a := &app{name: name, host: newHost()}
	serveHTTP(t, a.host.addr(8080), a)
	return a
}

// serveHTTP serves h over HTTP/1.1 and h2c on addr until the test ends.
func serveHTTP(t *testing.T, addr string, h http.Handler) {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: h}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })
}

func (a *app) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/healthz" {
		a.probes.Add(1)
		if a.sick.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		return
	}
	n := a.hits.Add(1)
	if d := a.delay.Load(); d > 0 {
		select {
		case <-time.After(time.Duration(d)):
		case <-r.Context().Done():
			return
		}
	}
	for k, vs := range r.Header {
		for _, v := range vs {
			w.Header().Add("Echo-"+k, v)
		}
	}
	w.Header().Set("X-Served-By", a.name)
	code := http.StatusOK
	if s := a.status.Load(); s != 0 {
		code = int(s)
	} else if e := a.failEvery.Load(); e > 0 && n%e == 0 {
		code = http.StatusServiceUnavailable
	}
	w.WriteHeader(code)
	fmt.Fprintf(w, "%s %s %s", a.name, r.Method, r.URL.Path)
}

// startWorkload starts the proxy in front of a, inbound 8080=15006, as a
// workload with the given labels. It does not wait for readiness.
func startWorkload(t *testing.T, c *cp, a *app, labels string) *proxy {
	t.Helper()
	return startProxy(t, c, proxyOpts{name: a.name, labels: labels, host: a.host, inbound: []string{"8080=15006"}})
}

// startClient starts a caller's proxy on a host of its own with outbound
// listeners ("SVC:PORT=LOCAL") and returns it with its host.
func startClient(t *testing.T, c *cp, labels string, outbound ...string) (*proxy, host) {
	t.Helper()
	h := newHost()
	return startProxy(t, c, proxyOpts{name: "client", labels: labels, host: h, outbound: outbound}), h
}

func waitAllReady(t *testing.T, ps ...*proxy) {
	t.Helper()
	for _, p := range ps {
		p.waitReady(t)
	}
}

// dumpSnap is the part of a proxy's /config_dump the traffic tests read.
type dumpSnap struct {
	Listeners []struct {
		Name    string
		Traffic *config.ListenerTraffic
	}
	Routes map[string]*struct {
		VirtualHosts []struct {
			Routes []struct {
				Name    string
				Traffic *config.RouteTraffic
			}
		}
	}
	Clusters map[string]*struct {
		LB        config.LBPolicy
		Endpoints []config.Endpoint
		Traffic   *config.ClusterTraffic
	}
	// Bound are the listeners' bound addresses, by name.
	Bound map[string]string
}

func readDump(p *proxy) (*dumpSnap, error) {
	resp, err := http.Get(p.admin + "/config_dump")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var d struct {
		Snapshot  *dumpSnap `json:"snapshot"`
		Listeners []struct {
			Name  string `json:"name"`
			Bound string `json:"bound"`
		} `json:"listeners"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil {
		return nil, fmt.Errorf("decode /config_dump: %w", err)
	}
	if d.Snapshot == nil {
		return nil, fmt.Errorf("/config_dump: no snapshot yet")
	}
	d.Snapshot.Bound = map[string]string{}
	for _, l := range d.Listeners {
		d.Snapshot.Bound[l.Name] = l.Bound
	}
	return d.Snapshot, nil
}

// waitConfig waits until p's configuration satisfies check: the control
// plane's part is done, so a later failure is the data path's.
func waitConfig(t *testing.T, p *proxy, what string, check func(d *dumpSnap) error) {
	t.Helper()
	eventually(t, 30*time.Second, func() error {
		d, err := readDump(p)
		if err != nil {
			return err
		}
		if err := check(d); err != nil {
			return fmt.Errorf("%s not in %s's config yet: %w", what, p.name, err)
		}
		return nil
	})
}

// routeTraffic returns the traffic of the first route, in any of d's route
// tables, whose traffic satisfies want.
func (d *dumpSnap) routeTraffic(want func(*config.RouteTraffic) bool) *config.RouteTraffic {
	for _, rt := range d.Routes {
		for _, vh := range rt.VirtualHosts {
			for _, r := range vh.Routes {
				if r.Traffic != nil && want(r.Traffic) {
					return r.Traffic
				}
			}
		}
	}
	return nil
}

// hasRoute reports whether any of d's routes has traffic with want.
func (d *dumpSnap) hasRoute(what string, want func(*config.RouteTraffic) bool) error {
	if d.routeTraffic(want) == nil {
		return fmt.Errorf("no route with %s", what)
	}
	return nil
}

// cluster checks the cluster name of d with check.
func (d *dumpSnap) cluster(name string, check func(lb config.LBPolicy, eps []config.Endpoint, tr *config.ClusterTraffic) error) error {
	c, ok := d.Clusters[name]
	if !ok {
		return fmt.Errorf("no cluster %s", name)
	}
	return check(c.LB, c.Endpoints, c.Traffic)
}

// percentile is the p-th (0-1) percentile of ds, nearest rank.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// binomialBounds is mean ± k standard deviations of Binomial(n, p): the
// range a fair count falls outside of with negligible probability (k=5:
// about 6e-7 on each side).
func binomialBounds(n int, p, k float64) (lo, hi int) {
	mean := float64(n) * p
	sd := math.Sqrt(float64(n) * p * (1 - p))
	return int(math.Floor(mean - k*sd)), int(math.Ceil(mean + k*sd))
}

// servedBy is the name of the app that answered (its first body word).
func servedBy(body string) string {
	if f := strings.Fields(body); len(f) > 0 {
		return f[0]
	}
	return ""
}

const routeMesh = `apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: web-v1}
spec:
  selector: {app: web, version: v1}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: web-v2}
spec:
  selector: {app: web, version: v2}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: shadow}
spec:
  selector: {app: shadow}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - name: headers
    matches: [{path: {type: PathPrefix, value: /hdr}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-added, value: "yes"}]
        remove: [x-drop]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        add: [{name: x-resp, value: r}]
    backendRefs: [{name: web-v1, port: 80}]
  - name: rewrite
    matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
    backendRefs: [{name: web-v1, port: 80}]
  - name: redirect
    matches: [{path: {type: PathPrefix, value: /moved}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /elsewhere}, statusCode: 301}
  - name: mirror
    matches: [{path: {type: PathPrefix, value: /mirror}}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: shadow, port: 80}}
    backendRefs: [{name: web-v1, port: 80}]
  - name: abort
    matches: [{path: {type: PathPrefix, value: /abort}}]
    backendRefs: [{name: web-v1, port: 80}]
  - name: delay
    matches: [{path: {type: PathPrefix, value: /delay}}]
    backendRefs: [{name: web-v1, port: 80}]
  - name: split
    backendRefs:
    - {name: web-v1, port: 80, weight: 80}
    - {name: web-v2, port: 80, weight: 20}
---
apiVersion: verge.dev/v1alpha1
kind: FaultInjection
metadata: {name: abort-half}
spec:
  targetRef: {kind: Service, name: web}
  routes: [abort]
  abort: {httpStatus: 503, percent: "50"}
---
apiVersion: verge.dev/v1alpha1
kind: FaultInjection
metadata: {name: delay-tagged}
spec:
  targetRef: {kind: Service, name: web}
  routes: [delay]
  headers: {x-fault: delay}
  delay: {duration: 100ms, percent: "100"}
`

// TestRouteTraffic checks the HTTPRoute filters and FaultInjection end to
// end, one subtest per feature on one fixture (a control plane and four
// proxies are the expensive part): weighted split, header modifiers, URL
// rewrite, redirect, mirroring, fault abort and delay.
func TestRouteTraffic(t *testing.T) {
	t.Parallel()
	c := startCP(t, "")
	v1, v2, shadow := startApp(t, "v1"), startApp(t, "v2"), startApp(t, "shadow")
	shadow.delay.Store(int64(time.Second))
	c.apply(t, routeMesh)
	p1 := startWorkload(t, c, v1, "app=web,version=v1")
	p2 := startWorkload(t, c, v2, "app=web,version=v2")
	ps := startWorkload(t, c, shadow, "app=shadow")
	client, fe := startClient(t, c, "app=client", "web:80=10001")
	waitAllReady(t, p1, p2, ps, client)
	base := "http://" + fe.addr(10001)
	hc := &http.Client{Timeout: 20 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

	const table = "web.default.mesh:80"
	waitConfig(t, client, "route table "+table+" with the 7 rules and their faults", func(d *dumpSnap) error {
		rt := d.Routes[table]
		if rt == nil {
			return fmt.Errorf("no route table %s", table)
		}
		n := 0
		for _, vh := range rt.VirtualHosts {
			n += len(vh.Routes)
		}
		if n < 7 {
			return fmt.Errorf("%d routes, want 7", n)
		}
		return d.hasRoute("faults", func(tr *config.RouteTraffic) bool { return len(tr.Faults) > 0 })
	})
	// Every backend answers through the route before measuring.
	eventually(t, 30*time.Second, func() error {
		seen := map[string]bool{}
		for range 40 {
			code, body, err := get(hc, base+"/x")
			if err != nil || code != 200 {
				return fmt.Errorf("GET /x: %d %q %v", code, body, err)
			}
			seen[servedBy(body)] = true
		}
		if !seen["v1"] || !seen["v2"] {
			return fmt.Errorf("split not served by both versions yet: %v", seen)
		}
		return nil
	})

	t.Run("weighted split 80/20", func(t *testing.T) {
		const n = 2000
		got := countVersions(t, hc, base+"/split", n)
		// Binomial(2000, 0.2): mean 400, sd 17.9; ±5 sd is [310, 490].
		lo, hi := binomialBounds(n, 0.2, 5)
		t.Logf("split over %d requests: %v (v2 bounds [%d, %d])", n, got, lo, hi)
		if v2 := got["v2"]; v2 < lo || v2 > hi || got["v1"]+v2 != n {
			t.Errorf("split over %d requests = %v, want v2 within [%d, %d]", n, got, lo, hi)
		}
	})

	t.Run("header modifiers", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, base+"/hdr/a", nil)
		req.Header.Set("X-Drop", "gone")
		req.Header.Set("X-Added", "no")
		req.Header.Set("X-Kept", "kept")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		h := resp.Header
		if resp.StatusCode != 200 || h.Get("X-Served-By") != "v1" {
			t.Fatalf("GET /hdr/a: %s served by %q, want 200 from v1", resp.Status, h.Get("X-Served-By"))
		}
		if got := h.Values("Echo-X-Added"); len(got) != 1 || got[0] != "yes" {
			t.Errorf("app saw x-added %q, want exactly [yes] (set replaces)", got)
		}
		if got := h.Values("Echo-X-Drop"); len(got) != 0 {
			t.Errorf("app saw x-drop %q, want it removed", got)
		}
		if got := h.Get("Echo-X-Kept"); got != "kept" {
			t.Errorf("app saw x-kept %q, want it untouched", got)
		}
		if got := h.Get("X-Resp"); got != "r" {
			t.Errorf("response x-resp %q, want r", got)
		}
	})

	t.Run("URL rewrite prefix", func(t *testing.T) {
		code, body, err := get(hc, base+"/old/thing?q=1")
		if err != nil || code != 200 {
			t.Fatalf("GET /old/thing: %d %q %v", code, body, err)
		}
		if want := "v1 GET /new/thing"; body != want {
			t.Errorf("app answered %q, want %q (prefix /old rewritten to /new)", body, want)
		}
	})

	t.Run("redirect", func(t *testing.T) {
		before := v1.hits.Load() + v2.hits.Load()
		resp, err := hc.Get(base + "/moved/x")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMovedPermanently {
			t.Fatalf("GET /moved/x: %s, want 301", resp.Status)
		}
		loc, err := url.Parse(resp.Header.Get("Location"))
		if err != nil || loc.Path != "/elsewhere" {
			t.Errorf("Location %q, want a URL with path /elsewhere", resp.Header.Get("Location"))
		}
		if after := v1.hits.Load() + v2.hits.Load(); after != before {
			t.Errorf("a redirect reached a backend (%d hits)", after-before)
		}
	})

	t.Run("mirror to a slow shadow", func(t *testing.T) {
		const n = 20
		before := shadow.hits.Load()
		var lat []time.Duration
		for range n {
			start := time.Now()
			code, body, err := get(hc, base+"/mirror")
			lat = append(lat, time.Since(start))
			if err != nil || code != 200 || servedBy(body) != "v1" {
				t.Fatalf("GET /mirror: %d %q %v", code, body, err)
			}
		}
		p50 := percentile(lat, 0.5)
		t.Logf("caller latency with a 1 s shadow: p50 %s, max %s", p50, percentile(lat, 1))
		// The shadow takes 1 s per request; a caller that waited for it
		// would see at least that. Half of it is a gross violation.
		if p50 >= 500*time.Millisecond {
			t.Errorf("caller p50 %s with a 1 s mirror, want far below 1 s", p50)
		}
		eventually(t, 20*time.Second, func() error {
			if got := shadow.hits.Load() - before; got < n/2 {
				return fmt.Errorf("shadow received %d of %d copies", got, n)
			}
			return nil
		})
		t.Logf("shadow received %d of %d copies", shadow.hits.Load()-before, n)
	})

	t.Run("fault abort 50%", func(t *testing.T) {
		const n = 1000
		aborted := 0
		for range n {
			code, body, err := get(hc, base+"/abort")
			switch {
			case err != nil:
				t.Fatalf("GET /abort: %v", err)
			case code == http.StatusServiceUnavailable:
				aborted++
			case code != 200:
				t.Fatalf("GET /abort: %d %q, want 200 or 503", code, body)
			}
		}
		// Binomial(1000, 0.5): mean 500, sd 15.8; ±5 sd is [420, 580].
		lo, hi := binomialBounds(n, 0.5, 5)
		t.Logf("aborted %d of %d (bounds [%d, %d])", aborted, n, lo, hi)
		if aborted < lo || aborted > hi {
			t.Errorf("aborted %d of %d, want within [%d, %d]", aborted, n, lo, hi)
		}
	})

	t.Run("fault delay on header", func(t *testing.T) {
		var tagged, plain []time.Duration
		for range 5 {
			start := time.Now()
			code, body, err := get(hc, base+"/delay", "x-fault", "delay")
			tagged = append(tagged, time.Since(start))
			if err != nil || code != 200 {
				t.Fatalf("GET /delay with x-fault: %d %q %v", code, body, err)
			}
			start = time.Now()
			code, body, err = get(hc, base+"/delay")
			plain = append(plain, time.Since(start))
			if err != nil || code != 200 {
				t.Fatalf("GET /delay: %d %q %v", code, body, err)
			}
		}
		t.Logf("with x-fault: min %s; without: min %s", percentile(tagged, 0), percentile(plain, 0))
		// A lower bound only: a delay of 100 ms cannot answer sooner.
		if m := percentile(tagged, 0); m < 95*time.Millisecond {
			t.Errorf("fastest request with x-fault: delay took %s, want at least 100ms", m)
		}
		if m := percentile(plain, 0); m >= 100*time.Millisecond {
			t.Errorf("every request without x-fault took at least %s: the delay does not honour its header match", m)
		}
	})
}
