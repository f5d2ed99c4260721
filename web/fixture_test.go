package web

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"verge.dev/verge/api/v1alpha1"
	"verge.dev/verge/internal/registry"
	"verge.dev/verge/internal/telemetry"
	"verge.dev/verge/internal/xds"
	"verge.dev/verge/internal/xds/translate"
)

// fakeSource and fakeTelemetry serve fixed state to the handler; the
// browser test uses the same fixtures as the JSON tests.
type fakeSource struct {
	svcs    []registry.ServiceStatus
	wls     []registry.WorkloadStatus
	proxies []xds.ProxyStatus
	mesh    translate.Mesh
	meshOK  bool
	certs   []Certificate
	certErr error
}

func (f *fakeSource) Status() ([]registry.ServiceStatus, []registry.WorkloadStatus) {
	return f.svcs, f.wls
}
func (f *fakeSource) ProxyStatus() []xds.ProxyStatus { return f.proxies }
func (f *fakeSource) Mesh() (translate.Mesh, bool)   { return f.mesh, f.meshOK }
func (f *fakeSource) Certificates(context.Context) ([]Certificate, error) {
	return append([]Certificate(nil), f.certs...), f.certErr
}

type seriesCall struct {
	service      string
	window, step time.Duration
}

type fakeTelemetry struct {
	topo   telemetry.Topology
	errs   []telemetry.TapEvent
	procs  []telemetry.ProxyProcess
	mu     sync.Mutex
	calls  []seriesCall
	errArg []string
}

func (f *fakeTelemetry) Topology(window time.Duration, now time.Time) telemetry.Topology {
	t := f.topo
	t.Window, t.Generated = window, now
	return t
}

// Series makes a smooth, deterministic curve per service, with a burst of
// failures in the middle so the charts have something to show.
func (f *fakeTelemetry) Series(service string, window, step time.Duration, now time.Time) telemetry.Series {
	f.mu.Lock()
	f.calls = append(f.calls, seriesCall{service, window, step})
	f.mu.Unlock()
	s := telemetry.Series{Service: service, Step: step}
	n := int(window / step)
	for i := range n {
		x := float64(i) / float64(max(n, 1))
		rate := 40 + 15*math.Sin(x*2*math.Pi*2) + 5*math.Sin(x*37)
		req := uint64(rate * step.Seconds())
		var fail uint64
		if i > n/2 && i < n/2+n/10 {
			fail = req / 20
		}
		p := telemetry.Point{Time: now.Add(-time.Duration(n-1-i) * step)}
		p.Requests, p.Failures, p.RequestRate = req, fail, rate
		p.SuccessRate = 1 - float64(fail)/float64(max(req, 1))
		p.P50 = 0.004 + 0.001*math.Sin(x*9)
		p.P99 = 0.030 + 0.010*math.Sin(x*5) + float64(fail)*0.0005
		s.Points = append(s.Points, p)
	}
	return s
}

func (f *fakeTelemetry) Errors(service string, limit int) []telemetry.TapEvent {
	f.mu.Lock()
	f.errArg = append(f.errArg, service)
	f.mu.Unlock()
	var out []telemetry.TapEvent
	for _, e := range f.errs {
		if (service == "" || e.Destination == service || e.Source == service) && len(out) < limit {
			out = append(out, e)
		}
	}
	return out
}

func (f *fakeTelemetry) Processes() []telemetry.ProxyProcess { return f.procs }

// fixtureService and fixtureEdge describe a mesh to generate.
type fixtureService struct {
	name, ns, zone string
	workloads      int
}

type fixtureEdge struct {
	src, dst      string // NAME.NS
	rate, success float64
	p50, p99      float64
	srcZ, dstZ    string
}

func ptr[T any](v T) *T { return &v }

// build turns services and edges into a source and a telemetry.
func build(now time.Time, svcs []fixtureService, edges []fixtureEdge) (*fakeSource, *fakeTelemetry) {
	src := &fakeSource{meshOK: true}
	tel := &fakeTelemetry{}
	created := metav1.NewTime(now.Add(-3 * time.Hour))
	addr := 0
	for si, s := range svcs {
		svc := &v1alpha1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: s.name, Namespace: s.ns, CreationTimestamp: created},
			Spec: v1alpha1.ServiceSpec{
				Ports:    []v1alpha1.ServicePort{{Name: "http", Port: 80, TargetPort: 8080, Protocol: v1alpha1.ProtocolHTTP}},
				Selector: map[string]string{"app": s.name},
			},
		}
		src.mesh.Services = append(src.mesh.Services, svc)
		st := registry.ServiceStatus{Namespace: s.ns, Name: s.name, Ports: svc.Spec.Ports, Endpoints: s.workloads, Healthy: s.workloads}
		for i := range s.workloads {
			addr++
			name := fmt.Sprintf("%s-%d", s.name, i)
			wl := &v1alpha1.Workload{
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: s.ns, Labels: map[string]string{"app": s.name, "zone": s.zone}},
				Spec:       v1alpha1.WorkloadSpec{Address: fmt.Sprintf("10.%d.%d.%d", addr>>16&255, addr>>8&255, addr&255), ServiceAccount: s.name, Proxy: &v1alpha1.WorkloadProxy{}},
			}
			src.mesh.Workloads = append(src.mesh.Workloads, wl)
			health := translate.HealthHealthy
			connected := true
			// Every seventh service has one unhealthy, disconnected workload.
			if si%7 == 3 && i == 0 {
				health, connected = translate.HealthUnhealthy, false
				st.Healthy--
			}
			src.wls = append(src.wls, registry.WorkloadStatus{Namespace: s.ns, Name: name, Address: wl.Spec.Address, Health: health, Proxied: true, ProxyConnected: connected})
			ps := xds.ProxyStatus{ID: name + "." + s.ns, Namespace: s.ns, Workload: name, Connected: connected, ConnectedAt: now.Add(-42 * time.Minute), Types: map[string]xds.TypeStatus{}}
			for _, u := range []string{resource.ClusterType, resource.EndpointType, resource.ListenerType, resource.RouteType, resource.SecretType} {
				v := fmt.Sprintf("%x", uint32(si*977+len(u)*131))
				ps.Types[u] = xds.TypeStatus{SentVersion: v, AckedVersion: v, UpdatedAt: now.Add(-time.Minute)}
			}
			if si == 1 && i == 0 {
				ps.Types[resource.ListenerType] = xds.TypeStatus{SentVersion: "9f3a2b1c", AckedVersion: "77aa01de", NACK: "listener inbound:8080: filter chain 0: unsupported filter envoy.filters.network.redis_proxy", UpdatedAt: now.Add(-20 * time.Second)}
			}
			src.proxies = append(src.proxies, ps)
			tel.procs = append(tel.procs, telemetry.ProxyProcess{
				Proxy: ps.ID, Workload: s.ns + "/" + name, Service: s.name + "." + s.ns, Zone: s.zone,
				Process:    telemetry.ProcessStats{CPUSeconds: 12.5 + float64(si), RSSBytes: uint64(11+si%5) << 20, Goroutines: 40 + si%9},
				CPUPercent: 1.5 + float64(si%10)*0.7, LastReport: now.Add(-2 * time.Second),
			})
		}
		src.svcs = append(src.svcs, st)
		src.certs = append(src.certs, Certificate{
			Serial: fmt.Sprintf("%x", 0x5eed0000+si), SPIFFEID: "spiffe://verge.local/ns/" + s.ns + "/sa/" + s.name,
			IssuedAt: now.Add(-6 * time.Hour), ExpiresAt: now.Add(18 * time.Hour),
		})
	}
	src.proxies = append(src.proxies, xds.ProxyStatus{ID: "grpc-client-7", Connected: true, ConnectedAt: now.Add(-5 * time.Minute), Types: map[string]xds.TypeStatus{
		resource.ListenerType: {SentVersion: "aa", AckedVersion: "aa"},
	}})

	nodes := map[string]*telemetry.Node{}
	var nodeOrder []string
	for _, e := range edges {
		req := uint64(e.rate * 60)
		fail := uint64(math.Round(float64(req) * (1 - e.success)))
		g := telemetry.Golden{Requests: req, Failures: fail, RequestRate: e.rate, SuccessRate: 1 - float64(fail)/float64(max(req, 1)), P50: e.p50, P99: e.p99}
		tel.topo.Edges = append(tel.topo.Edges, telemetry.Edge{
			Source: e.src, Destination: e.dst, SourceZone: e.srcZ, DestinationZone: e.dstZ,
			CrossZone: e.srcZ != "" && e.dstZ != "" && e.srcZ != e.dstZ, Protocol: "http", Golden: g,
		})
		n := nodes[e.dst]
		if n == nil {
			n = &telemetry.Node{Service: e.dst}
			nodes[e.dst] = n
			nodeOrder = append(nodeOrder, e.dst)
		}
		n.Requests += g.Requests
		n.Failures += g.Failures
		n.RequestRate += g.RequestRate
		n.P50, n.P99 = max(n.P50, g.P50), max(n.P99, g.P99)
		if fail > 0 {
			tel.errs = append(tel.errs, telemetry.TapEvent{
				Time: now.Add(-time.Duration(len(tel.errs)) * 7 * time.Second), Proxy: e.src + "-0", Direction: telemetry.Outbound, Protocol: "http",
				Source: e.src, Destination: e.dst, Method: "POST", Authority: e.dst + ".mesh", Path: "/api/v1/orders",
				Status: 503, GRPCStatus: -1, Duration: 1200 * time.Millisecond, TraceID: "4bf92f3577b34da6a3ce929d0e0e4736", Flags: "UF",
			})
		}
	}
	for _, id := range nodeOrder {
		n := nodes[id]
		n.SuccessRate = 1 - float64(n.Failures)/float64(max(n.Requests, 1))
		tel.topo.Nodes = append(tel.topo.Nodes, *n)
	}
	return src, tel
}

// smallMesh is a shop of ten services: one degraded (payments), one failing
// (shipping), one idle (legacy-batch), a cross-zone call, a caller without
// a proxy ("unknown") and every kind of policy.
func smallMesh(now time.Time) (*fakeSource, *fakeTelemetry) {
	svcs := []fixtureService{
		{"frontend", "shop", "eu-west-1a", 3},
		{"catalog", "shop", "eu-west-1b", 2},
		{"checkout", "shop", "eu-west-1a", 2},
		{"cart", "shop", "eu-west-1a", 2},
		{"payments", "shop", "eu-west-1a", 2},
		{"shipping", "shop", "eu-west-1a", 1},
		{"recommendations", "shop", "eu-west-1a", 2},
		{"users", "identity", "eu-west-1a", 2},
		{"postgres", "data", "eu-west-1a", 1},
		{"legacy-batch", "shop", "eu-west-1a", 1},
	}
	edges := []fixtureEdge{
		{"unknown", "frontend.shop", 220, 0.999, 0.012, 0.09, "", "eu-west-1a"},
		{"frontend.shop", "catalog.shop", 150, 0.9995, 0.004, 0.03, "eu-west-1a", "eu-west-1a"},
		{"frontend.shop", "catalog.shop", 30, 0.999, 0.006, 0.05, "eu-west-1a", "eu-west-1b"},
		{"frontend.shop", "checkout.shop", 25, 0.995, 0.02, 0.14, "eu-west-1a", "eu-west-1a"},
		{"frontend.shop", "recommendations.shop", 60, 1, 0.008, 0.04, "eu-west-1a", "eu-west-1a"},
		{"frontend.shop", "users.identity", 90, 0.9999, 0.002, 0.01, "eu-west-1a", "eu-west-1a"},
		{"checkout.shop", "cart.shop", 25, 1, 0.003, 0.02, "eu-west-1a", "eu-west-1a"},
		{"checkout.shop", "payments.shop", 12, 0.97, 0.08, 0.6, "eu-west-1a", "eu-west-1a"},
		{"checkout.shop", "shipping.shop", 10, 0.8, 0.05, 1.8, "eu-west-1a", "eu-west-1a"},
		{"cart.shop", "postgres.data", 40, 1, 0.001, 0.006, "eu-west-1a", "eu-west-1a"},
		{"users.identity", "postgres.data", 35, 1, 0.001, 0.004, "eu-west-1a", "eu-west-1a"},
		{"payments.shop", "postgres.data", 12, 1, 0.002, 0.008, "eu-west-1a", "eu-west-1a"},
		{"recommendations.shop", "catalog.shop", 20, 1, 0.003, 0.02, "eu-west-1a", "eu-west-1b"},
	}
	src, tel := build(now, svcs, edges)
	created := metav1.NewTime(now.Add(-26 * time.Hour))
	src.mesh.HTTPRoutes = []*v1alpha1.HTTPRoute{{
		ObjectMeta: metav1.ObjectMeta{Name: "checkout-canary", Namespace: "shop", CreationTimestamp: created},
		Spec: gatewayv1.HTTPRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{{Group: ptr(gatewayv1.Group("")), Kind: ptr(gatewayv1.Kind("Service")), Name: "checkout"}}},
			Rules: []gatewayv1.HTTPRouteRule{{
				BackendRefs: []gatewayv1.HTTPBackendRef{
					{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{Name: "checkout", Port: ptr(gatewayv1.PortNumber(80))}, Weight: ptr(int32(90))}},
					{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{Name: "checkout-v2", Port: ptr(gatewayv1.PortNumber(80))}, Weight: ptr(int32(10))}},
				},
			}},
		},
	}}
	src.mesh.DestinationPolicies = []*v1alpha1.DestinationPolicy{{
		ObjectMeta: metav1.ObjectMeta{Name: "payments-resilience", Namespace: "shop", CreationTimestamp: created},
		Spec: v1alpha1.DestinationPolicySpec{
			TargetRef:    v1alpha1.PolicyTargetReference{Kind: "Service", Name: "payments"},
			LoadBalancer: &v1alpha1.LoadBalancer{Policy: "LeastRequest"},
			Retry:        &v1alpha1.RetryPolicy{},
		},
	}}
	src.mesh.FaultInjections = []*v1alpha1.FaultInjection{{
		ObjectMeta: metav1.ObjectMeta{Name: "shipping-chaos", Namespace: "shop", CreationTimestamp: created},
		Spec: v1alpha1.FaultInjectionSpec{
			TargetRef: v1alpha1.PolicyTargetReference{Name: "shipping", Port: 80},
			Abort:     &v1alpha1.FaultAbort{HTTPStatus: 503, Percent: "20"},
		},
	}}
	src.mesh.MeshTLSes = []*v1alpha1.MeshTLS{{
		ObjectMeta: metav1.ObjectMeta{Name: "strict", Namespace: v1alpha1.MeshNamespace, CreationTimestamp: created},
		Spec:       v1alpha1.MeshTLSSpec{Mode: v1alpha1.MeshTLSStrict},
	}}
	src.mesh.AuthorizationPolicies = []*v1alpha1.AuthorizationPolicy{{
		ObjectMeta: metav1.ObjectMeta{Name: "payments-callers", Namespace: "shop", CreationTimestamp: created},
		Spec:       v1alpha1.AuthorizationPolicySpec{Service: "payments", Action: v1alpha1.AuthorizationAllow, Rules: []v1alpha1.AuthorizationRule{{Name: "checkout"}}},
	}}
	return src, tel
}

// largeMesh has n services in five namespaces with wls workloads each, in
// six tiers (gateways, frontends, business, core, data, infrastructure)
// as real call graphs are: each service calls up to three services of the
// next tiers, a few call back, and one in ten receives no traffic.
func largeMesh(now time.Time, n, wls int) (*fakeSource, *fakeTelemetry) {
	rng := rand.New(rand.NewPCG(6, 500))
	var svcs []fixtureService
	id := func(i int) string { return fmt.Sprintf("svc-%03d.ns-%d", i, i%5) }
	for i := range n {
		svcs = append(svcs, fixtureService{fmt.Sprintf("svc-%03d", i), fmt.Sprintf("ns-%d", i%5), fmt.Sprintf("zone-%d", i%3), wls})
	}
	// Tier boundaries as shares of n.
	bounds := []int{0, n * 2 / 100, n * 10 / 100, n * 40 / 100, n * 70 / 100, n * 90 / 100, n}
	tier := func(i int) int {
		for t := 1; t < len(bounds); t++ {
			if i < bounds[t] {
				return t - 1
			}
		}
		return len(bounds) - 2
	}
	idle := func(i int) bool { return i%10 == 9 && tier(i) > 0 }
	var edges []fixtureEdge
	for i := range n {
		ti := tier(i)
		if idle(i) || ti == len(bounds)-2 {
			continue
		}
		for range 1 + rng.IntN(3) {
			next := min(ti+1+rng.IntN(2), len(bounds)-2)
			j := bounds[next] + rng.IntN(bounds[next+1]-bounds[next])
			if idle(j) {
				continue
			}
			success := 1.0
			switch rng.IntN(25) {
			case 0:
				success = 0.9
			case 1:
				success = 0.97
			}
			edges = append(edges, fixtureEdge{id(i), id(j), 1 + rng.Float64()*300, success, 0.002 + rng.Float64()*0.01, 0.02 + rng.Float64()*0.2, fmt.Sprintf("zone-%d", i%3), fmt.Sprintf("zone-%d", j%3)})
		}
		if i%97 == 50 && ti > 1 {
			j := bounds[ti-1] + i%(bounds[ti]-bounds[ti-1])
			if !idle(j) {
				edges = append(edges, fixtureEdge{id(i), id(j), 5, 1, 0.003, 0.02, "", ""})
			}
		}
	}
	return build(now, svcs, edges)
}
