package xds

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"verge.dev/verge/api/v1alpha1"
	"verge.dev/verge/internal/xds/translate"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const waitFor = 10 * time.Second

var protoUnmarshal = proto.UnmarshalOptions{}

// validator is what protoc-gen-validate generates on every xDS message.
type validator interface{ Validate() error }

func service(name string, port, target int32) *v1alpha1.Service {
	return &v1alpha1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: v1alpha1.ServiceSpec{
			Ports:    []v1alpha1.ServicePort{{Name: "http", Port: port, Protocol: v1alpha1.ProtocolHTTP, TargetPort: target}},
			Selector: map[string]string{"app": name},
		},
	}
}

func backend(name, app, addr string, port int32) *v1alpha1.Workload {
	return &v1alpha1.Workload{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, Labels: map[string]string{"app": app}},
		Spec:       v1alpha1.WorkloadSpec{Address: addr, ServiceAccount: "default", Ports: []v1alpha1.WorkloadPort{{Port: port}}},
	}
}

func client(name, upstream string, port, local int32) *v1alpha1.Workload {
	return &v1alpha1.Workload{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, Labels: map[string]string{"app": name}},
		Spec: v1alpha1.WorkloadSpec{
			Address:        "127.0.0.1",
			ServiceAccount: "default",
			Proxy:          &v1alpha1.WorkloadProxy{AppAddress: "127.0.0.1"},
			Upstreams:      []v1alpha1.Upstream{{Service: upstream, Port: port, LocalPort: local, LocalAddress: "127.0.0.1"}},
		},
	}
}

// observer records ConnectionObserver calls.
type observer struct {
	mu    sync.Mutex
	conns map[string]int
}

func (o *observer) ProxyConnected(ns, name string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.conns[ns+"/"+name]++
}

func (o *observer) ProxyDisconnected(ns, name string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.conns[ns+"/"+name]--
}

func (o *observer) get(key string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.conns[key]
}

type harness struct {
	srv    *Server
	meshes chan translate.Mesh
	obs    *observer
	conn   *grpc.ClientConn
}

func start(t *testing.T) *harness {
	t.Helper()
	h := &harness{meshes: make(chan translate.Mesh), obs: &observer{conns: map[string]int{}}}
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	h.srv = New(Config{Meshes: h.meshes, Observer: h.obs}, logger)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.srv.Run(ctx, lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	h.conn = conn
	t.Cleanup(func() {
		conn.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return h
}

// send hands the server a mesh; the unbuffered channel returns once the
// server's loop took it, and the loop applies it before taking the next.
func (h *harness) send(t *testing.T, m translate.Mesh) {
	t.Helper()
	select {
	case h.meshes <- m:
	case <-time.After(waitFor):
		t.Fatal("server did not take the mesh")
	}
}

// adsClient is a minimal ADS client: it tracks, per type, the last response.
type adsClient struct {
	t      *testing.T
	stream discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node   *corev3.Node
	resps  chan *discovery.DiscoveryResponse
	cancel context.CancelFunc
	done   chan struct{}
}

func (h *harness) dial(t *testing.T, id, workload string) *adsClient {
	t.Helper()
	node := &corev3.Node{Id: id}
	if workload != "" {
		md, err := structpb.NewStruct(map[string]any{MetadataWorkload: workload})
		if err != nil {
			t.Fatal(err)
		}
		node.Metadata = md
	}
	ctx, cancel := context.WithCancel(t.Context())
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(h.conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &adsClient{t: t, stream: stream, node: node, resps: make(chan *discovery.DiscoveryResponse, 32), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for {
			r, err := stream.Recv()
			if err != nil {
				return
			}
			select {
			case c.resps <- r:
			case <-ctx.Done():
				return
			}
		}
	}()
	t.Cleanup(c.close)
	return c
}

func (c *adsClient) close() {
	c.cancel()
	<-c.done
}

func (c *adsClient) request(typeURL, version, nonce string, names []string, nack string) {
	c.t.Helper()
	req := &discovery.DiscoveryRequest{Node: c.node, TypeUrl: typeURL, VersionInfo: version, ResponseNonce: nonce, ResourceNames: names}
	if nack != "" {
		req.ErrorDetail = &rpcstatus.Status{Code: 3, Message: nack}
	}
	if err := c.stream.Send(req); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

func (c *adsClient) recv() *discovery.DiscoveryResponse {
	c.t.Helper()
	select {
	case r := <-c.resps:
		for _, a := range r.GetResources() {
			m, err := anypb.UnmarshalNew(a, protoUnmarshal)
			if err != nil {
				c.t.Fatalf("unmarshal %s: %v", a.GetTypeUrl(), err)
			}
			if err := m.(validator).Validate(); err != nil {
				c.t.Errorf("resource %s fails Validate: %v", a.GetTypeUrl(), err)
			}
		}
		return r
	case <-time.After(waitFor):
		c.t.Fatalf("node %s: no response", c.node.GetId())
		return nil
	}
}

func (c *adsClient) ack(r *discovery.DiscoveryResponse, names []string) {
	c.t.Helper()
	c.request(r.GetTypeUrl(), r.GetVersionInfo(), r.GetNonce(), names, "")
}

// sync subscribes to every type the way Envoy does (CDS, then EDS for the
// clusters; LDS, then RDS for the listeners), ACKs everything and returns
// the last response per type and the names subscribed per type.
func (c *adsClient) sync() (map[string]*discovery.DiscoveryResponse, map[string][]string) {
	c.t.Helper()
	last := map[string]*discovery.DiscoveryResponse{}
	names := map[string][]string{}
	c.request(resource.ClusterType, "", "", nil, "")
	c.request(resource.ListenerType, "", "", nil, "")
	for range 2 {
		r := c.recv()
		last[r.GetTypeUrl()] = r
		c.ack(r, nil)
		refs := references(c.t, r)
		for typ, set := range refs {
			for n := range set {
				names[typ] = append(names[typ], n)
			}
		}
	}
	for _, typ := range []string{resource.EndpointType, resource.RouteType} {
		slices.Sort(names[typ])
		c.request(typ, "", "", names[typ], "")
	}
	for range 2 {
		r := c.recv()
		last[r.GetTypeUrl()] = r
		c.ack(r, names[r.GetTypeUrl()])
	}
	return last, names
}

func references(t *testing.T, r *discovery.DiscoveryResponse) map[string]map[string]bool {
	t.Helper()
	items := map[string]types.ResourceWithTTL{}
	for _, a := range r.GetResources() {
		m, err := anypb.UnmarshalNew(a, protoUnmarshal)
		if err != nil {
			t.Fatal(err)
		}
		res := m.(types.Resource)
		items[cache.GetResourceName(res)] = types.ResourceWithTTL{Resource: res}
	}
	return cache.GetResourceReferences(items)
}

func endpointAddrs(t *testing.T, r *discovery.DiscoveryResponse) []string {
	t.Helper()
	var out []string
	for _, a := range r.GetResources() {
		cla := &endpointv3.ClusterLoadAssignment{}
		if err := a.UnmarshalTo(cla); err != nil {
			t.Fatal(err)
		}
		for _, le := range cla.GetEndpoints() {
			for _, lb := range le.GetLbEndpoints() {
				out = append(out, lb.GetEndpoint().GetAddress().GetSocketAddress().GetAddress())
			}
		}
	}
	slices.Sort(out)
	return out
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func baseMesh() translate.Mesh {
	return translate.Mesh{
		Services: []*v1alpha1.Service{service("a", 80, 8080), service("b", 90, 9090)},
		Workloads: []*v1alpha1.Workload{
			backend("a-1", "a", "10.0.0.1", 8080),
			backend("b-1", "b", "10.0.1.1", 9090),
			client("c1", "a", 80, 15001),
			client("c2", "b", 90, 15002),
		},
	}
}

// TestPushOnlyToAffected checks that a change reaches every proxy that uses
// what changed, and only those.
func TestPushOnlyToAffected(t *testing.T) {
	h := start(t)
	h.send(t, baseMesh())

	c1 := h.dial(t, "c1.default", "default/c1")
	c2 := h.dial(t, "c2.default", "default/c2")
	last1, _ := c1.sync()
	last2, _ := c2.sync()

	if got, want := endpointAddrs(t, last1[resource.EndpointType]), []string{"10.0.0.1"}; !cmp.Equal(got, want) {
		t.Errorf("c1 endpoints = %v, want %v", got, want)
	}
	if got, want := endpointAddrs(t, last2[resource.EndpointType]), []string{"10.0.1.1"}; !cmp.Equal(got, want) {
		t.Errorf("c2 endpoints = %v, want %v", got, want)
	}
	if n := len(last1[resource.ListenerType].GetResources()); n != 1 {
		t.Errorf("c1 got %d listeners, want 1", n)
	}

	// Service a gains an endpoint: only c1 (which calls a) must hear of it.
	m := baseMesh()
	m.Workloads = append(m.Workloads, backend("a-2", "a", "10.0.0.2", 8080))
	h.send(t, m)
	r := c1.recv()
	if r.GetTypeUrl() != resource.EndpointType {
		t.Fatalf("c1 got a push of %s, want only EDS", r.GetTypeUrl())
	}
	if got, want := endpointAddrs(t, r), []string{"10.0.0.1", "10.0.0.2"}; !cmp.Equal(got, want) {
		t.Errorf("c1 endpoints after change = %v, want %v", got, want)
	}
	c1.ack(r, []string{"a.default.mesh:80"})

	// Then service b gains one. Meshes are applied in order and a stream's
	// responses arrive in order, so if the first change had reached c2, that
	// push would come before this one.
	m.Workloads = append(m.Workloads, backend("b-2", "b", "10.0.1.2", 9090))
	h.send(t, m)
	r = c2.recv()
	if r.GetTypeUrl() != resource.EndpointType {
		t.Fatalf("c2 got a push of %s, want only EDS", r.GetTypeUrl())
	}
	if got, want := endpointAddrs(t, r), []string{"10.0.1.1", "10.0.1.2"}; !cmp.Equal(got, want) {
		t.Errorf("c2 endpoints = %v, want %v (a push for the first change reached it)", got, want)
	}
	// c1 must not have heard of the second change either: ACK, then apply a
	// change for c1 and check its next push is that one.
	c2.ack(r, []string{"b.default.mesh:90"})
	m.Workloads = append(m.Workloads, backend("a-3", "a", "10.0.0.3", 8080))
	h.send(t, m)
	r = c1.recv()
	if got, want := endpointAddrs(t, r), []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"}; !cmp.Equal(got, want) {
		t.Errorf("c1 endpoints = %v, want %v", got, want)
	}
}

func TestProxyStatusAndNACK(t *testing.T) {
	h := start(t)
	h.send(t, baseMesh())
	c1 := h.dial(t, "c1.default", "default/c1")
	last, _ := c1.sync()

	waitUntil(t, "proxy connected", func() bool { return h.obs.get("default/c1") == 1 })
	waitUntil(t, "listener ACK in status", func() bool {
		st := h.srv.ProxyStatus()
		return len(st) == 1 && st[0].Types[resource.ListenerType].AckedVersion == last[resource.ListenerType].GetVersionInfo()
	})
	st := h.srv.ProxyStatus()[0]
	if st.ID != "c1.default" || st.Namespace != "default" || st.Workload != "c1" || !st.Connected {
		t.Errorf("status = %+v", st)
	}
	for typ, r := range last {
		ts := st.Types[typ]
		if ts.SentVersion != r.GetVersionInfo() || ts.NACK != "" {
			t.Errorf("%s status = %+v, want sent %q", typ, ts, r.GetVersionInfo())
		}
	}

	// The client rejects the next EDS push.
	m := baseMesh()
	m.Workloads = append(m.Workloads, backend("a-2", "a", "10.0.0.2", 8080))
	h.send(t, m)
	r := c1.recv()
	c1.request(r.GetTypeUrl(), last[resource.EndpointType].GetVersionInfo(), r.GetNonce(), []string{"a.default.mesh:80"}, "endpoint rejected")
	waitUntil(t, "NACK in status", func() bool {
		return h.srv.ProxyStatus()[0].Types[resource.EndpointType].NACK == "endpoint rejected"
	})
	ts := h.srv.ProxyStatus()[0].Types[resource.EndpointType]
	if ts.SentVersion != r.GetVersionInfo() || ts.AckedVersion != last[resource.EndpointType].GetVersionInfo() {
		t.Errorf("EDS status after NACK = %+v", ts)
	}
	var metric dto.Metric
	if err := h.srv.nacks.WithLabelValues(resource.EndpointType).Write(&metric); err != nil {
		t.Fatal(err)
	}
	if got := metric.GetCounter().GetValue(); got != 1 {
		t.Errorf("nacks counter = %v, want 1", got)
	}

	// The HTTP view has the shape the CLI reads.
	rec := httptest.NewRecorder()
	h.srv.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/api/v1/proxies", nil))
	var got []map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatalf("decode /api/v1/proxies: %v\n%s", err, rec.Body)
	}
	if len(got) != 1 {
		t.Fatalf("got %d proxies, want 1", len(got))
	}
	for _, k := range []string{"id", "namespace", "workload", "connected", "connectedAt", "types"} {
		if _, ok := got[0][k]; !ok {
			t.Errorf("proxy JSON lacks %q: %v", k, got[0])
		}
	}
	eds := got[0]["types"].(map[string]any)[resource.EndpointType].(map[string]any)
	if diff := cmp.Diff(map[string]any{
		"sentVersion": r.GetVersionInfo(), "ackedVersion": last[resource.EndpointType].GetVersionInfo(),
		"nack": "endpoint rejected", "updatedAt": eds["updatedAt"],
	}, eds); diff != "" {
		t.Errorf("EDS JSON (-want +got):\n%s", diff)
	}
	if _, err := time.Parse(time.RFC3339, eds["updatedAt"].(string)); err != nil {
		t.Errorf("updatedAt: %v", err)
	}

	// Closing the stream tells the observer.
	c1.close()
	waitUntil(t, "proxy disconnected", func() bool { return h.obs.get("default/c1") == 0 })
	waitUntil(t, "status disconnected", func() bool { return !h.srv.ProxyStatus()[0].Connected })
}

// TestProxylessAndUnknown checks which resources nodes other than Verge
// proxies get, and that a node connecting before any mesh is served once
// one arrives.
func TestProxylessAndUnknown(t *testing.T) {
	h := start(t)
	grpcSvc := service("g", 50051, 50051)
	grpcSvc.Spec.Ports[0].Protocol = v1alpha1.ProtocolGRPC
	m := baseMesh()
	m.Services = append(m.Services, grpcSvc)
	m.Workloads = append(m.Workloads, backend("g-1", "g", "10.0.2.1", 50051))

	pl := h.dial(t, "grpc-client", "")
	pl.request(resource.ListenerType, "", "", []string{"g.default.mesh:50051"}, "")
	// The first mesh arrives after the node connected.
	h.send(t, m)
	r := pl.recv()
	if len(r.GetResources()) != 1 {
		t.Fatalf("proxyless LDS: %d resources, want 1", len(r.GetResources()))
	}
	l := &listenerv3.Listener{}
	if err := r.GetResources()[0].UnmarshalTo(l); err != nil {
		t.Fatal(err)
	}
	if l.GetName() != "g.default.mesh:50051" || l.GetApiListener() == nil {
		t.Errorf("proxyless listener = %v, want api listener g.default.mesh:50051", l)
	}

	// A Verge proxy whose Workload is not stored gets nothing at all: an
	// empty config would make it drop every listener it has.
	unknown := h.dial(t, "ghost.default", "default/ghost")
	unknown.request(resource.ListenerType, "", "", nil, "")
	waitUntil(t, "ghost in status", func() bool { return len(h.srv.ProxyStatus()) == 2 })
	h.applied(t, m)
	if snap, err := h.srv.proxies.GetSnapshot("ghost.default"); err == nil {
		t.Errorf("unknown workload has a snapshot: %v", snap)
	}
	unknown.noResponse()
}

// applied sends m and returns once the server applied it: the loop takes
// the second send only after applying the first.
func (h *harness) applied(t *testing.T, m translate.Mesh) {
	t.Helper()
	h.send(t, m)
	h.send(t, m)
}

// noResponse checks that nothing arrived (or arrives within a short wait).
// It cannot fail a correct server on timing: a correct server never sends.
func (c *adsClient) noResponse() {
	c.t.Helper()
	select {
	case r := <-c.resps:
		c.t.Errorf("node %s got %s with %d resources, want nothing", c.node.GetId(), r.GetTypeUrl(), len(r.GetResources()))
	case <-time.After(100 * time.Millisecond):
	}
}

func listenerNames(t *testing.T, r *discovery.DiscoveryResponse) []string {
	t.Helper()
	var out []string
	for _, a := range r.GetResources() {
		l := &listenerv3.Listener{}
		if err := a.UnmarshalTo(l); err != nil {
			t.Fatal(err)
		}
		out = append(out, l.GetName())
	}
	slices.Sort(out)
	return out
}

// TestDeletedWorkloadKeepsConfig checks the edge guarantee: when a proxy's
// Workload leaves the mesh, the proxy is sent nothing and its snapshot stays.
func TestDeletedWorkloadKeepsConfig(t *testing.T) {
	h := start(t)
	h.send(t, baseMesh())
	c1 := h.dial(t, "c1.default", "default/c1")
	last, _ := c1.sync()

	m := baseMesh()
	m.Workloads = slices.DeleteFunc(m.Workloads, func(wl *v1alpha1.Workload) bool { return wl.Name == "c1" })
	// Change what c1 would see too, so a push would be due if c1 were known.
	m.Workloads = append(m.Workloads, backend("a-2", "a", "10.0.0.2", 8080))
	h.applied(t, m)
	snap, err := h.srv.proxies.GetSnapshot("c1.default")
	if err != nil {
		t.Fatalf("c1's snapshot is gone: %v", err)
	}
	for typ, r := range last {
		if got := snap.GetVersion(typ); got != r.GetVersionInfo() {
			t.Errorf("%s version = %q, want the last sent %q", typ, got, r.GetVersionInfo())
		}
	}
	c1.noResponse()
}

// TestWorkloadChange checks that a node ID that reconnects naming another
// workload gets that workload's config, and nothing when it is unknown.
func TestWorkloadChange(t *testing.T) {
	h := start(t)
	h.send(t, baseMesh())
	first := h.dial(t, "node-1", "default/c1")
	last, _ := first.sync()
	if got, want := listenerNames(t, last[resource.ListenerType]), []string{"outbound:15001"}; !cmp.Equal(got, want) {
		t.Fatalf("as c1: listeners %v, want %v", got, want)
	}
	first.close()
	waitUntil(t, "c1 disconnected", func() bool { return h.obs.get("default/c1") == 0 })

	// Within GoneAfter, the same node ID comes back as c2.
	second := h.dial(t, "node-1", "default/c2")
	second.request(resource.ListenerType, "", "", nil, "")
	if got, want := listenerNames(t, second.recv()), []string{"outbound:15002"}; !cmp.Equal(got, want) {
		t.Errorf("as c2: listeners %v, want %v", got, want)
	}
	waitUntil(t, "c2 connected", func() bool { return h.obs.get("default/c2") == 1 })
	if st := h.srv.ProxyStatus(); len(st) != 1 || st[0].Workload != "c2" {
		t.Errorf("status = %+v, want node-1 as c2", st)
	}
	second.close()

	// And then as a workload that does not exist: c2's config is not its own.
	third := h.dial(t, "node-1", "default/ghost")
	third.request(resource.ListenerType, "", "", nil, "")
	waitUntil(t, "ghost connected", func() bool { return h.obs.get("default/ghost") == 1 })
	h.applied(t, baseMesh())
	if snap, err := h.srv.proxies.GetSnapshot("node-1"); err == nil {
		t.Errorf("node-1 as ghost has a snapshot: %v", snap)
	}
	third.noResponse()
	if got := h.obs.get("default/c1") + h.obs.get("default/c2"); got != 0 {
		t.Errorf("observer: %d streams of c1 and c2 still open, want 0", got)
	}
}

// TestUnservedTypeAndLongNACK checks that a client cannot add status
// entries or metric series by naming invented type URLs, and that a NACK
// message is kept to 1 KiB.
func TestUnservedTypeAndLongNACK(t *testing.T) {
	h := start(t)
	h.send(t, baseMesh())
	c1 := h.dial(t, "c1.default", "default/c1")
	const invented = "type.googleapis.com/verge.Invented"
	for i := range 3 {
		c1.request(invented+strconv.Itoa(i), "", "n", nil, "rejected")
	}
	// Requests on a stream are handled in order: once sync is done, so are
	// the invented ones.
	last, names := c1.sync()
	st := h.srv.ProxyStatus()
	if len(st) != 1 {
		t.Fatalf("status = %+v", st)
	}
	var got []string
	for typ := range st[0].Types {
		got = append(got, typ)
	}
	slices.Sort(got)
	want := []string{resource.ClusterType, resource.EndpointType, resource.ListenerType, resource.RouteType}
	slices.Sort(want)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("status types (-want +got):\n%s", diff)
	}
	if n := seriesCount(h.srv.nacks); n != 0 {
		t.Errorf("nacks has %d series, want 0", n)
	}

	m := baseMesh()
	m.Workloads = append(m.Workloads, backend("a-2", "a", "10.0.0.2", 8080))
	h.send(t, m)
	r := c1.recv()
	long := strings.Repeat("é", 1000) // 2000 bytes
	c1.request(r.GetTypeUrl(), last[resource.EndpointType].GetVersionInfo(), r.GetNonce(), names[resource.EndpointType], long)
	waitUntil(t, "NACK in status", func() bool {
		return h.srv.ProxyStatus()[0].Types[resource.EndpointType].NACK != ""
	})
	nack := h.srv.ProxyStatus()[0].Types[resource.EndpointType].NACK
	if len(nack) != 1024 || !utf8.ValidString(nack) || !strings.HasPrefix(long, nack) {
		t.Errorf("stored NACK: %d bytes, valid UTF-8 %v; want a 1024-byte prefix", len(nack), utf8.ValidString(nack))
	}
	if n := seriesCount(h.srv.nacks); n != 1 {
		t.Errorf("nacks has %d series, want 1", n)
	}
}

func seriesCount(c prometheus.Collector) int {
	ch := make(chan prometheus.Metric, 16)
	c.Collect(ch)
	close(ch)
	return len(ch)
}

func TestTruncateUTF8(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		n        int
		want     string
	}{
		{"short", "abc", 5, "abc"},
		{"exact", "abc", 3, "abc"},
		{"ascii", "abcdef", 4, "abcd"},
		{"rune boundary", "aéb", 3, "aé"},
		{"inside a rune", "aéb", 2, "a"},
		{"inside a 4-byte rune", "a😀", 4, "a"},
		{"zero", "abc", 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, truncateUTF8(tc.in, tc.n)); diff != "" {
				t.Errorf("truncateUTF8(%q, %d) (-want +got):\n%s", tc.in, tc.n, diff)
			}
		})
	}
}

func TestNonceEviction(t *testing.T) {
	st := &streamState{nonces: map[string]string{}}
	for i := range maxNonces + 1 {
		st.rememberNonce(strconv.Itoa(i), "v"+strconv.Itoa(i))
	}
	if _, ok := st.takeNonce("0"); ok {
		t.Error("oldest nonce survived eviction")
	}
	for _, n := range []string{"1", strconv.Itoa(maxNonces)} {
		if v, ok := st.takeNonce(n); !ok || v != "v"+n {
			t.Errorf("takeNonce(%s) = %q, %v; want v%s, true", n, v, ok, n)
		}
	}
	if _, ok := st.takeNonce("1"); ok {
		t.Error("a nonce was taken twice")
	}
	// Answered nonces free their place: the next maxNonces-len fit
	// without evicting "2".
	for i := range 2 {
		st.rememberNonce("new"+strconv.Itoa(i), "")
	}
	if _, ok := st.takeNonce("2"); !ok {
		t.Error("nonce 2 evicted although answered nonces made room")
	}
	if len(st.nonces) != len(st.order) || len(st.order) > maxNonces {
		t.Errorf("%d nonces, %d in order; want equal and at most %d", len(st.nonces), len(st.order), maxNonces)
	}
}

func TestDelta(t *testing.T) {
	h := start(t)
	h.send(t, baseMesh())
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(h.conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	md, _ := structpb.NewStruct(map[string]any{MetadataWorkload: "default/c1"})
	node := &corev3.Node{Id: "c1.default", Metadata: md}
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: resource.ClusterType}); err != nil {
		t.Fatal(err)
	}
	r, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(r.GetResources()) != 1 || r.GetResources()[0].GetName() != "a.default.mesh:80" {
		t.Errorf("delta CDS = %v", r.GetResources())
	}
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType, ResponseNonce: r.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "delta ACK in status", func() bool {
		st := h.srv.ProxyStatus()
		return len(st) == 1 && st[0].Types[resource.ClusterType].AckedVersion == r.GetSystemVersionInfo()
	})

	// An ACK with a nonce the server never sent (or evicted) is ignored. The
	// EDS subscription after it is a barrier: requests are handled in order.
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType, ResponseNonce: "never-sent"}); err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNamesSubscribe: []string{"a.default.mesh:80"}}); err != nil {
		t.Fatal(err)
	}
	if r, err := stream.Recv(); err != nil || r.GetTypeUrl() != resource.EndpointType {
		t.Fatalf("delta EDS = %v, %v", r, err)
	}
	if ts := h.srv.ProxyStatus()[0].Types[resource.ClusterType]; ts.AckedVersion != r.GetSystemVersionInfo() {
		t.Errorf("CDS acked version after an unknown nonce = %q, want %q", ts.AckedVersion, r.GetSystemVersionInfo())
	}
	cancel()
	waitUntil(t, "delta stream closed", func() bool { return h.obs.get("default/c1") == 0 })
}

func TestSweep(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(t.Output(), nil))
	s := New(Config{GoneAfter: time.Minute}, logger)
	now := time.Now()
	s.nodes["gone"] = &nodeState{id: "gone", disconnectedAt: now.Add(-2 * time.Minute)}
	s.nodes["recent"] = &nodeState{id: "recent", disconnectedAt: now.Add(-time.Second)}
	s.nodes["live"] = &nodeState{id: "live", streams: 1}
	s.sweep(now)
	var got []string
	for _, ps := range s.ProxyStatus() {
		got = append(got, ps.ID)
	}
	if diff := cmp.Diff([]string{"live", "recent"}, got); diff != "" {
		t.Errorf("nodes after sweep (-want +got):\n%s", diff)
	}
}

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestSnapshotValidation checks that snapshots are held to translate's
// Validate: messages inside Anys, and references for proxyless clients too.
func TestSnapshotValidation(t *testing.T) {
	tcpListener := func(statPrefix string) translate.Resources {
		return translate.Resources{
			Listeners: []*listenerv3.Listener{{
				Name: "tcp",
				Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 15001},
				}}},
				FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
					Name: "envoy.filters.network.tcp_proxy",
					ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, &tcpv3.TcpProxy{
						StatPrefix:       statPrefix,
						ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: "c"},
					})},
				}}}},
			}},
			Clusters: []*clusterv3.Cluster{{Name: "c"}},
		}
	}
	apiListener := func(route string) translate.Resources {
		r := translate.Resources{Listeners: []*listenerv3.Listener{{
			Name: "g.default.mesh:50051",
			ApiListener: &listenerv3.ApiListener{ApiListener: mustAny(t, &hcmv3.HttpConnectionManager{
				StatPrefix: "g",
				RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
					RouteConfigName: route,
					ConfigSource:    &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}},
				}},
			})},
		}}}
		r.Routes = []*routev3.RouteConfiguration{{Name: "g-routes"}}
		return r
	}
	for _, tc := range []struct {
		name      string
		key       string
		r         translate.Resources
		wantValid bool
	}{
		{"proxy valid", "default/c1", tcpListener("tcp"), true},
		{"proxy invalid inside an Any", "default/c1", tcpListener(""), false},
		{"proxyless valid", "", apiListener("g-routes"), true},
		{"proxyless dangling route", "", apiListener("missing"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := New(Config{}, slog.New(slog.NewTextHandler(t.Output(), nil)))
			snap := s.snapshot("node", tc.key, tc.r)
			if got := snap != nil; got != tc.wantValid {
				t.Errorf("snapshot built = %v, want %v", got, tc.wantValid)
			}
			var metric dto.Metric
			if err := s.invalid.Write(&metric); err != nil {
				t.Fatal(err)
			}
			if got, want := metric.GetCounter().GetValue(), map[bool]float64{true: 0, false: 1}[tc.wantValid]; got != want {
				t.Errorf("invalid counter = %v, want %v", got, want)
			}
		})
	}
}
