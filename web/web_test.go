package web

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var testNow = time.Date(2025, 3, 14, 15, 9, 26, 0, time.UTC)

// newTestServer serves the dashboard on loopback with the clock fixed at
// testNow, so that answers are reproducible.
func newTestServer(t *testing.T, src Source, tel Telemetry) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(handlerAt(src, tel, func() time.Time { return testNow }))
	t.Cleanup(srv.Close)
	return srv
}

func get(t *testing.T, srv *httptest.Server, method, path string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, body
}

func getJSON[T any](t *testing.T, srv *httptest.Server, path string) T {
	t.Helper()
	code, hdr, body := get(t, srv, http.MethodGet, path)
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, code, body)
	}
	if ct := hdr.Get("Content-Type"); ct != "application/json" {
		t.Errorf("GET %s: Content-Type %q", path, ct)
	}
	var v T
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("GET %s: %v\n%s", path, err, body)
	}
	return v
}

func TestTopologyAPI(t *testing.T) {
	src, tel := smallMesh(testNow)
	srv := newTestServer(t, src, tel)
	got := getJSON[TopologyResponse](t, srv, APIPath+"topology?window=5m")

	if got.WindowSeconds != 300 || !got.Generated.Equal(testNow) {
		t.Errorf("window %v generated %v", got.WindowSeconds, got.Generated)
	}
	if diff := cmp.Diff(Summary{Services: 10, Workloads: 18, Unhealthy: 1, Proxies: 19, Connected: 18, NACKs: 1}, got.Summary); diff != "" {
		t.Errorf("summary (-want +got):\n%s", diff)
	}
	health := map[string]string{}
	registered := map[string]bool{}
	for _, n := range got.Nodes {
		health[n.ID] = n.Health
		registered[n.ID] = n.Registered
	}
	if diff := cmp.Diff(map[string]string{
		"unknown": HealthIdle, "frontend.shop": HealthGood, "catalog.shop": HealthGood, "checkout.shop": HealthGood,
		"cart.shop": HealthGood, "payments.shop": HealthWarn, "shipping.shop": HealthBad, "recommendations.shop": HealthGood,
		"users.identity": HealthGood, "postgres.data": HealthGood, "legacy-batch.shop": HealthIdle,
	}, health); diff != "" {
		t.Errorf("node health (-want +got):\n%s", diff)
	}
	if registered["unknown"] || !registered["legacy-batch.shop"] {
		t.Errorf("registered: %v", registered)
	}

	// The two zone pairs of frontend → catalog are one edge, cross-zone.
	i := slices.IndexFunc(got.Edges, func(e GraphEdge) bool { return e.Source == "frontend.shop" && e.Destination == "catalog.shop" })
	if i < 0 {
		t.Fatalf("no frontend → catalog edge in %+v", got.Edges)
	}
	e := got.Edges[i]
	if e.RequestRate != 180 || !e.CrossZone || e.CrossZoneRate != 30 || e.P99 != 0.05 || e.Health != HealthGood ||
		!slices.Equal(e.Zones, []string{"eu-west-1a→eu-west-1a", "eu-west-1a→eu-west-1b"}) {
		t.Errorf("merged edge: %+v", e)
	}
	if len(got.Edges) != 12 {
		t.Errorf("%d edges, want 12 (13 zone pairs)", len(got.Edges))
	}
	checkLayout(t, got)
}

// checkLayout checks that nodes sit inside the canvas, apart, and that
// calls go left to right unless they close a cycle.
func checkLayout(t *testing.T, got TopologyResponse) {
	t.Helper()
	at := map[[2]float64]string{}
	byID := map[string]GraphNode{}
	for _, n := range got.Nodes {
		if n.X < 0 || n.Y < 0 || n.X > got.Width || n.Y > got.Height {
			t.Errorf("node %s at (%v,%v) outside %vx%v", n.ID, n.X, n.Y, got.Width, got.Height)
		}
		p := [2]float64{n.X, n.Y}
		if other, ok := at[p]; ok {
			t.Errorf("nodes %s and %s both at %v", n.ID, other, p)
		}
		at[p] = n.ID
		byID[n.ID] = n
	}
	back := 0
	for _, e := range got.Edges {
		if byID[e.Source].Layer >= byID[e.Destination].Layer {
			back++
		}
		if byID[e.Source].Layer < 0 || byID[e.Destination].Layer < 0 {
			t.Errorf("edge %s → %s touches the idle grid", e.Source, e.Destination)
		}
	}
	if back > max(1, len(got.Edges)/20) {
		t.Errorf("%d of %d edges point backwards", back, len(got.Edges))
	}
}

func TestTopologyLarge(t *testing.T) {
	src, tel := largeMesh(testNow, 500, 2)
	srv := newTestServer(t, src, tel)
	got := getJSON[TopologyResponse](t, srv, APIPath+"topology")
	if len(got.Nodes) != 500 {
		t.Fatalf("%d nodes, want 500", len(got.Nodes))
	}
	checkLayout(t, got)
	// Screen-shaped: a wrap of tall layers keeps it from being a ribbon.
	if r := got.Width / got.Height; r < 0.8 || r > 4 {
		t.Errorf("canvas %vx%v", got.Width, got.Height)
	}
	again := getJSON[TopologyResponse](t, srv, APIPath+"topology")
	if diff := cmp.Diff(got.Nodes, again.Nodes); diff != "" {
		t.Errorf("layout is not deterministic:\n%s", diff)
	}
}

func TestLayoutCyclesAndChains(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edges [][2]string
		nodes int
	}{
		{name: "cycle", edges: [][2]string{{"a.x", "b.x"}, {"b.x", "c.x"}, {"c.x", "a.x"}}, nodes: 3},
		{name: "self", edges: [][2]string{{"a.x", "a.x"}}, nodes: 1},
		{name: "long chain", edges: chain(5000), nodes: 5001},
		{name: "empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seen := map[string]bool{}
			var nodes []GraphNode
			var edges []GraphEdge
			for _, e := range tc.edges {
				for _, id := range e {
					if !seen[id] {
						seen[id] = true
						nodes = append(nodes, GraphNode{ID: id})
					}
				}
				edges = append(edges, GraphEdge{Source: e[0], Destination: e[1]})
			}
			w, h := layout(nodes, edges)
			if len(nodes) != tc.nodes || w <= 0 || h <= 0 {
				t.Errorf("%d nodes, canvas %vx%v", len(nodes), w, h)
			}
			checkLayout(t, TopologyResponse{Width: w, Height: h, Nodes: nodes, Edges: edges})
		})
	}
}

func chain(n int) [][2]string {
	var out [][2]string
	for i := range n {
		out = append(out, [2]string{fmt.Sprintf("n%d.x", i), fmt.Sprintf("n%d.x", i+1)})
	}
	return out
}

func TestServiceAPI(t *testing.T) {
	src, tel := smallMesh(testNow)
	srv := newTestServer(t, src, tel)
	got := getJSON[ServiceResponse](t, srv, APIPath+"services/checkout.shop?window=1h&step=30s")

	if diff := cmp.Diff([]seriesCall{{"checkout.shop", time.Hour, 30 * time.Second}}, tel.calls, cmp.AllowUnexported(seriesCall{})); diff != "" {
		t.Errorf("Series calls (-want +got):\n%s", diff)
	}
	if !got.Registered || got.Name != "checkout" || got.Namespace != "shop" || got.Endpoints != 2 || got.StepSeconds != 30 || len(got.Series.Points) != 120 {
		t.Errorf("service: %+v", got)
	}
	if got.Health != HealthGood || got.RequestRate != 25 {
		t.Errorf("golden: %+v %s", got.Golden, got.Health)
	}
	if diff := cmp.Diff([]Port{{Name: "http", Port: 80, TargetPort: 8080, Protocol: "HTTP"}}, got.Ports); diff != "" {
		t.Errorf("ports (-want +got):\n%s", diff)
	}
	ids := func(es []GraphEdge, dst bool) []string {
		var out []string
		for _, e := range es {
			out = append(out, map[bool]string{true: e.Destination, false: e.Source}[dst])
		}
		return out
	}
	if diff := cmp.Diff([]string{"frontend.shop"}, ids(got.Inbound, false)); diff != "" {
		t.Errorf("inbound (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"cart.shop", "payments.shop", "shipping.shop"}, ids(got.Outbound, true)); diff != "" {
		t.Errorf("outbound (-want +got):\n%s", diff)
	}
	var wls []string
	for _, w := range got.Workloads {
		wls = append(wls, w.Name)
		if w.Certificate == nil || w.Certificate.SPIFFEID != "spiffe://verge.local/ns/shop/sa/checkout" || w.Certificates != 1 {
			t.Errorf("workload %s certificate %+v (%d)", w.Name, w.Certificate, w.Certificates)
		}
		if w.Process == nil || w.Process.Workload != "shop/"+w.Name || w.Zone != "eu-west-1a" || w.ServiceAccount != "checkout" {
			t.Errorf("workload %s: process %+v zone %q sa %q", w.Name, w.Process, w.Zone, w.ServiceAccount)
		}
		if w.Proxy == nil || len(w.Proxy.Types) != 5 || w.Proxy.Types[0].Type != "CDS" || !w.Proxy.Types[0].InSync {
			t.Errorf("workload %s proxy %+v", w.Name, w.Proxy)
		}
	}
	if diff := cmp.Diff([]string{"checkout-0", "checkout-1"}, wls); diff != "" {
		t.Errorf("workloads (-want +got):\n%s", diff)
	}
	var pols []string
	for _, p := range got.Policies {
		pols = append(pols, p.Kind+"/"+p.Name)
	}
	if diff := cmp.Diff([]string{"HTTPRoute/checkout-canary", "MeshTLS/strict"}, pols); diff != "" {
		t.Errorf("policies (-want +got):\n%s", diff)
	}
	// The fake answers with the failures checkout served and made.
	if len(got.Errors) != 3 {
		t.Errorf("errors of checkout: %+v", got.Errors)
	}

	// Shipping: its fault injection (targeting port 80) applies, and its
	// failures are listed.
	ship := getJSON[ServiceResponse](t, srv, APIPath+"services/shipping.shop")
	if len(ship.Errors) != 1 || ship.Errors[0].Status != 503 || ship.Health != HealthBad {
		t.Errorf("shipping: health %s errors %+v", ship.Health, ship.Errors)
	}
	if !slices.ContainsFunc(ship.Policies, func(p Policy) bool { return p.Kind == "FaultInjection" }) {
		t.Errorf("shipping policies: %+v", ship.Policies)
	}
	if ship.StepSeconds != 10 || len(ship.Series.Points) != 90 {
		t.Errorf("default window: step %v, %d points", ship.StepSeconds, len(ship.Series.Points))
	}

	// A name only traffic mentions is served, without registry data.
	unk := getJSON[ServiceResponse](t, srv, APIPath+"services/ghost.shop")
	if unk.Registered || unk.Health != HealthIdle || len(unk.Workloads) != 0 {
		t.Errorf("ghost: %+v", unk)
	}
}

func TestWorkloadsAPI(t *testing.T) {
	src, tel := smallMesh(testNow)
	srv := newTestServer(t, src, tel)
	got := getJSON[WorkloadsResponse](t, srv, APIPath+"workloads")
	if len(got.Workloads) != 18 || got.CertificatesError != "" {
		t.Fatalf("%d workloads, certificates error %q", len(got.Workloads), got.CertificatesError)
	}
	if diff := cmp.Diff([]string{"grpc-client-7"}, func() (ids []string) {
		for _, p := range got.Proxyless {
			ids = append(ids, p.ID)
		}
		return ids
	}()); diff != "" {
		t.Errorf("proxyless (-want +got):\n%s", diff)
	}
	i := slices.IndexFunc(got.Workloads, func(w WorkloadRow) bool { return w.Name == "catalog-0" })
	w := got.Workloads[i]
	if w.Proxy == nil || !w.Proxy.NACK {
		t.Fatalf("catalog-0 proxy: %+v", w.Proxy)
	}
	lds := w.Proxy.Types[slices.IndexFunc(w.Proxy.Types, func(ts TypeState) bool { return ts.Type == "LDS" })]
	if lds.InSync || lds.Acked != "77aa01de" || lds.Sent != "9f3a2b1c" || !strings.Contains(lds.NACK, "redis_proxy") {
		t.Errorf("LDS: %+v", lds)
	}
	if !slices.Equal(w.Services, []string{"catalog.shop"}) || w.Health != "healthy" {
		t.Errorf("catalog-0: %+v", w)
	}

	// A failing certificate log leaves certificates out and says why.
	src.certErr = errors.New("store unavailable")
	got = getJSON[WorkloadsResponse](t, srv, APIPath+"workloads")
	if got.CertificatesError != "read certificate log: store unavailable" || got.Workloads[0].Certificate != nil {
		t.Errorf("with failing log: %q %+v", got.CertificatesError, got.Workloads[0].Certificate)
	}
}

func TestPoliciesAPI(t *testing.T) {
	src, tel := smallMesh(testNow)
	srv := newTestServer(t, src, tel)
	got := getJSON[PoliciesResponse](t, srv, APIPath+"policies")
	type row struct {
		Kind, Name, Scope, Summary string
		Targets, Backends          []string
	}
	var rows []row
	for _, p := range got.Policies {
		rows = append(rows, row{p.Kind, p.Namespace + "/" + p.Name, p.Scope, p.Summary, p.Targets, p.Backends})
		if p.Spec == nil || p.Created.IsZero() {
			t.Errorf("%s/%s lacks spec or creation time", p.Kind, p.Name)
		}
	}
	want := []row{
		{"HTTPRoute", "shop/checkout-canary", ScopeService, "1 rule, 1 match", []string{"checkout.shop"}, []string{"checkout.shop:80 ×90", "checkout-v2.shop:80 ×10"}},
		{"DestinationPolicy", "shop/payments-resilience", ScopeService, "load balancer LeastRequest, retry", []string{"payments.shop"}, nil},
		{"FaultInjection", "shop/shipping-chaos", ScopeService, "abort 503 to 20%", []string{"shipping.shop:80"}, nil},
		{"MeshTLS", "verge-system/strict", ScopeMesh, "STRICT", nil, nil},
		{"AuthorizationPolicy", "shop/payments-callers", ScopeService, "ALLOW, 1 rule", []string{"payments.shop"}, nil},
	}
	if diff := cmp.Diff(want, rows); diff != "" {
		t.Errorf("policies (-want +got):\n%s", diff)
	}
	if !got.Ready {
		t.Error("not ready")
	}
	src.meshOK = false
	if got := getJSON[PoliciesResponse](t, srv, APIPath+"policies"); got.Ready {
		t.Error("ready before the registry listed")
	}
}

func TestErrorsAPI(t *testing.T) {
	src, tel := smallMesh(testNow)
	srv := newTestServer(t, src, tel)
	all := getJSON[ErrorsResponse](t, srv, APIPath+"errors")
	if len(all.Errors) != len(tel.errs) || len(all.Errors) == 0 {
		t.Errorf("%d errors, want %d", len(all.Errors), len(tel.errs))
	}
	one := getJSON[ErrorsResponse](t, srv, APIPath+"errors?service=payments.shop&limit=1")
	if len(one.Errors) != 1 || one.Errors[0].Destination != "payments.shop" {
		t.Errorf("payments errors: %+v", one.Errors)
	}
	if diff := cmp.Diff([]string{"", "payments.shop"}, tel.errArg); diff != "" {
		t.Errorf("Errors calls (-want +got):\n%s", diff)
	}
}

func TestBadRequests(t *testing.T) {
	src, tel := smallMesh(testNow)
	srv := newTestServer(t, src, tel)
	for _, tc := range []struct {
		name, method, path string
		code               int
		want               string
	}{
		{"window not a duration", "GET", APIPath + "topology?window=soon", 400, `window "soon": not a duration`},
		{"window too long", "GET", APIPath + "topology?window=48h", 400, "window 48h0m0s: must be from 1s to 24h0m0s"},
		{"step too small", "GET", APIPath + "services/cart.shop?window=1h&step=1s", 400, "more than 720 points"},
		{"step above window", "GET", APIPath + "services/cart.shop?window=1m&step=5m", 400, "step 5m0s: must be from 1s to 1m0s"},
		{"service without namespace", "GET", APIPath + "services/cart", 400, `service "cart": want NAME.NAMESPACE`},
		{"limit", "GET", APIPath + "errors?limit=0", 400, `limit "0": want an integer from 1 to 500`},
		{"post", "POST", APIPath + "topology", 405, ""},
		{"post page", "POST", "/", 405, ""},
		{"unknown API", "GET", APIPath + "nope", 404, ""},
		{"other path", "GET", "/nope", 404, ""},
		{"missing asset", "GET", StaticPath + "nope.js", 404, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, hdr, body := get(t, srv, tc.method, tc.path)
			if code != tc.code || !strings.Contains(string(body), tc.want) {
				t.Errorf("%s %s: %d %q, want %d containing %q", tc.method, tc.path, code, body, tc.code, tc.want)
			}
			if code == 405 && !strings.Contains(hdr.Get("Allow"), "GET") {
				t.Errorf("Allow: %q", hdr.Get("Allow"))
			}
		})
	}
}

func TestPageAndAssets(t *testing.T) {
	src, tel := smallMesh(testNow)
	srv := newTestServer(t, src, tel)
	for _, tc := range []struct {
		path, method, ctype string
		want                []string
	}{
		{"/", "GET", "text/html; charset=utf-8", []string{
			`<script src="/dashboard/static/app.js" defer></script>`, `href="/dashboard/static/app.css"`, `id="main"`,
			// The plain summary for clients without JavaScript.
			"<li>checkout.shop.mesh: 2/2 endpoints healthy</li>", "<li>shop/cart-0 10.0.0.8, proxy disconnected</li>",
			"<li>catalog-0.shop connected, rejected: listener inbound:8080: filter chain 0: unsupported filter envoy.filters.network.redis_proxy</li>",
			"<li>grpc-client-7 connected</li>",
		}},
		{"/", "HEAD", "text/html; charset=utf-8", nil},
		{StaticPath + "app.js", "GET", "text/javascript; charset=utf-8", []string{"'use strict'", "/dashboard/api/"}},
		{StaticPath + "app.css", "GET", "text/css; charset=utf-8", []string{"--good:"}},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			code, hdr, body := get(t, srv, tc.method, tc.path)
			if code != 200 || hdr.Get("Content-Type") != tc.ctype {
				t.Fatalf("%d %q", code, hdr.Get("Content-Type"))
			}
			if csp := hdr.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
				t.Errorf("CSP %q", csp)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(body), w) {
					t.Errorf("lacks %q", w)
				}
			}
			// Nothing may come from another origin: the dashboard works
			// without internet access.
			for _, bad := range []string{"http://", "https://", "//cdn"} {
				if strings.Contains(string(body), bad) && !strings.Contains(string(body), "http://www.w3.org/2000/svg") {
					t.Errorf("references %q", bad)
				}
			}
		})
	}
}

func TestNoTelemetry(t *testing.T) {
	src, _ := smallMesh(testNow)
	srv := newTestServer(t, src, nil)
	topo := getJSON[TopologyResponse](t, srv, APIPath+"topology")
	if len(topo.Nodes) != 10 || len(topo.Edges) != 0 {
		t.Errorf("%d nodes %d edges", len(topo.Nodes), len(topo.Edges))
	}
	for _, n := range topo.Nodes {
		if n.Health != HealthIdle || n.Layer != -1 {
			t.Errorf("node %+v", n)
		}
	}
	svc := getJSON[ServiceResponse](t, srv, APIPath+"services/cart.shop")
	if svc.Series.Service != "cart.shop" || len(svc.Series.Points) != 0 || svc.Errors != nil {
		t.Errorf("service without telemetry: %+v", svc)
	}
	getJSON[ErrorsResponse](t, srv, APIPath+"errors")
	getJSON[WorkloadsResponse](t, srv, APIPath+"workloads")
}

// BenchmarkTopology500 measures the topology API at the size: 500
// services and 5,000 workloads.
func BenchmarkTopology500(b *testing.B) {
	src, tel := largeMesh(testNow, 500, 10)
	h := handlerAt(src, tel, time.Now)
	req := httptest.NewRequest(http.MethodGet, APIPath+"topology", nil)
	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 200 {
			b.Fatal(rec.Code)
		}
	}
}
