package translate

import (
	"context"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/xds"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"verge.dev/verge/api/v1alpha1"
)

// TestProxylessGRPC serves ForProxyless over a real go-control-plane ADS
// server to grpc-go's own xDS resolver: if grpc-go NACKs anything, the RPCs
// never leave the channel. A GRPCRoute sends "x-canary: true" to v2 and the
// rest to v1; each version's health server knows only its own name.
func TestProxylessGRPC(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	v1Port := serveHealth(t, "v1")
	v2Port := serveHealth(t, "v2")
	grpcPort := func(name string) *v1alpha1.Service {
		return &v1alpha1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
			Spec: v1alpha1.ServiceSpec{
				Selector: map[string]string{"app": name},
				Ports:    []v1alpha1.ServicePort{{Name: "grpc", Port: 9000, Protocol: v1alpha1.ProtocolGRPC, TargetPort: 9000}},
			},
		}
	}
	workload := func(name, app string, port int32) *v1alpha1.Workload {
		return &v1alpha1.Workload{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{"app": app}},
			// The app port is 9000 for the service; the proxyless endpoint is
			// the address peers dial, here the test server's real port.
			Spec: v1alpha1.WorkloadSpec{Address: "127.0.0.1", Ports: []v1alpha1.WorkloadPort{{Port: 9000, InboundPort: port}}},
		}
	}
	exact := gatewayv1.GRPCHeaderMatchExact
	healthSvc := &gatewayv1.GRPCMethodMatch{Type: new(gatewayv1.GRPCMethodMatchExact), Service: new("grpc.health.v1.Health")}
	m := Mesh{
		Services:  []*v1alpha1.Service{grpcPort("greeter"), grpcPort("greeter-v1"), grpcPort("greeter-v2")},
		Workloads: []*v1alpha1.Workload{workload("v1", "greeter-v1", v1Port), workload("v2", "greeter-v2", v2Port)},
		GRPCRoutes: []*v1alpha1.GRPCRoute{{
			ObjectMeta: metav1.ObjectMeta{Name: "canary", Namespace: "default"},
			Spec: gatewayv1.GRPCRouteSpec{
				CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{{Name: "greeter"}}},
				Rules: []gatewayv1.GRPCRouteRule{
					{
						// Same service as the next rule, one more header: first.
						Matches: []gatewayv1.GRPCRouteMatch{{
							Method:  healthSvc,
							Headers: []gatewayv1.GRPCHeaderMatch{{Type: &exact, Name: "x-canary", Value: "true"}},
						}},
						BackendRefs: []gatewayv1.GRPCBackendRef{{BackendRef: backendRef("greeter-v2", 9000, 1)}},
					},
					{
						Matches:     []gatewayv1.GRPCRouteMatch{{Method: healthSvc}},
						BackendRefs: []gatewayv1.GRPCBackendRef{{BackendRef: backendRef("greeter-v1", 9000, 1)}},
					},
				},
			},
		}},
	}
	res := NewIndex(m).ForProxyless()
	if err := res.Validate(); err != nil {
		t.Fatal(err)
	}

	const node = "proxyless-test"
	// ads=false: in ADS mode go-control-plane answers a request only when it
	// names every resource of the type in the snapshot, and a gRPC client
	// asks for the one listener it dials.
	cache := cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
	if err := cache.SetSnapshot(ctx, node, snapshot(t, res, true)); err != nil {
		t.Fatal(err)
	}
	xdsAddr := serveADS(t, ctx, cache)

	bootstrap := fmt.Sprintf(`{
		"xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
		"node": {"id": %q}
	}`, xdsAddr, node)
	rb, err := xds.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("xds:///greeter.default.mesh:9000",
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(rb))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := healthpb.NewHealthClient(cc)

	// WaitForReady rides out the xDS exchange; ctx bounds it.
	check := func(ctx context.Context, service string) error {
		resp, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: service}, grpc.WaitForReady(true))
		if err != nil {
			return err
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("status %v", resp.GetStatus())
		}
		return nil
	}
	if err := check(ctx, "v1"); err != nil {
		t.Errorf("Check(v1) without header: %v (want SERVING from greeter-v1)", err)
	}
	if err := check(metadata.AppendToOutgoingContext(ctx, "x-canary", "true"), "v2"); err != nil {
		t.Errorf("Check(v2) with x-canary: %v (want SERVING from greeter-v2)", err)
	}
}

// serveHealth starts a gRPC health server that reports name SERVING.
func serveHealth(t *testing.T, name string) int32 {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := health.NewServer()
	hs.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, hs)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Serve(lis)
	}()
	t.Cleanup(func() {
		s.Stop()
		<-done
	})
	_, port, _ := net.SplitHostPort(lis.Addr().String())
	p, _ := strconv.Atoi(port)
	return int32(p)
}

// serveADS serves cache over ADS on a loopback port and returns its address.
func serveADS(t *testing.T, ctx context.Context, cache cachev3.SnapshotCache) string {
	t.Helper()
	return serveADSWith(t, ctx, cache, nil)
}

func serveADSWith(t *testing.T, ctx context.Context, cache cachev3.SnapshotCache, cb serverv3.Callbacks) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(s, serverv3.NewServer(ctx, cache, cb))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Serve(lis)
	}()
	t.Cleanup(func() {
		s.Stop()
		<-done
	})
	return lis.Addr().String()
}

// TestProxylessACK offers every golden case's proxyless resources to
// grpc-go's xDS client, one target at a time, and requires each type to be
// ACKed: grpc-go's checks (route path specifiers, weighted clusters, LB
// policy, EDS source, filters) are stricter than Validate().
func TestProxylessACK(t *testing.T) {
	for _, dir := range []string{"demo", "precedence", "direct", "lb", "traffic"} {
		res := NewIndex(loadMesh(t, "testdata/"+dir)).ForProxyless()
		for _, l := range res.Listeners {
			t.Run(dir+"/"+l.GetName(), func(t *testing.T) {
				ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
				defer cancel()
				const node = "ack-test"
				cache := cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
				if err := cache.SetSnapshot(ctx, node, snapshot(t, res, true)); err != nil {
					t.Fatal(err)
				}
				var (
					mu    sync.Mutex
					acked = map[string]bool{}
					nacks []string
				)
				cb := serverv3.CallbackFuncs{StreamRequestFunc: func(_ int64, r *discoverygrpc.DiscoveryRequest) error {
					mu.Lock()
					defer mu.Unlock()
					if r.GetErrorDetail() != nil {
						nacks = append(nacks, r.GetTypeUrl()+": "+r.GetErrorDetail().GetMessage())
					} else if r.GetVersionInfo() != "" {
						acked[r.GetTypeUrl()] = true
					}
					return nil
				}}
				addr := serveADSWith(t, ctx, cache, cb)
				rb, err := xds.NewXDSResolverWithConfigForTesting([]byte(fmt.Sprintf(`{
					"xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
					"node": {"id": %q}
				}`, addr, node)))
				if err != nil {
					t.Fatal(err)
				}
				cc, err := grpc.NewClient("xds:///"+l.GetName(),
					grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(rb))
				if err != nil {
					t.Fatal(err)
				}
				defer cc.Close()
				cc.Connect()

				want := []string{resource.ListenerType, resource.RouteType, resource.ClusterType, resource.EndpointType}
				// Poll with a deadline: the xDS exchange is asynchronous.
				for {
					mu.Lock()
					done := len(nacks) > 0 || allTrue(acked, want)
					gotNacks, gotAcked := slices.Clone(nacks), maps.Clone(acked)
					mu.Unlock()
					if done {
						if len(gotNacks) > 0 {
							t.Fatalf("grpc-go NACKed %d times, first: %s", len(gotNacks), gotNacks[0])
						}
						return
					}
					select {
					case <-ctx.Done():
						t.Fatalf("no ACK for every type before the deadline; acked %v", gotAcked)
					case <-time.After(10 * time.Millisecond):
					}
				}
			})
		}
	}
}

func allTrue(m map[string]bool, keys []string) bool {
	for _, k := range keys {
		if !m[k] {
			return false
		}
	}
	return true
}
