package translate

import (
	"strings"
	"testing"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"verge.dev/verge/api/v1alpha1"
)

func TestMain(m *testing.M) {
	// The proxyless test runs an ADS server and grpc-go's xDS client.
	goleak.VerifyTestMain(m)
}

// snapshot is what the xDS server will do with Resources: go-control-plane's
// Consistent() requires every route config and EDS resource a listener or
// cluster names to be present, and nothing else. It does not follow
// api_listener, so proxyless resources are checked by Validate alone.
func snapshot(t *testing.T, r Resources, proxyless bool) *cachev3.Snapshot {
	t.Helper()
	m := map[resource.Type][]types.Resource{}
	for _, x := range r.Listeners {
		m[resource.ListenerType] = append(m[resource.ListenerType], x)
	}
	for _, x := range r.Routes {
		m[resource.RouteType] = append(m[resource.RouteType], x)
	}
	for _, x := range r.Clusters {
		m[resource.ClusterType] = append(m[resource.ClusterType], x)
	}
	for _, x := range r.Endpoints {
		m[resource.EndpointType] = append(m[resource.EndpointType], x)
	}
	s, err := cachev3.NewSnapshot("1", m)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Validate(); err != nil {
		t.Errorf("invalid resources: %v", err)
	}
	if err := s.Consistent(); err != nil && !proxyless {
		t.Errorf("snapshot is not consistent: %v", err)
	}
	return s
}

func TestConsistent(t *testing.T) {
	for _, dir := range []string{"demo", "tcp", "precedence", "direct", "missing", "lb", "traffic"} {
		t.Run(dir, func(t *testing.T) {
			m := loadMesh(t, "testdata/"+dir)
			ix := NewIndex(m)
			for _, wl := range m.Workloads {
				snapshot(t, ix.ForWorkload(wl), false)
			}
			snapshot(t, ix.ForProxyless(), true)
		})
	}
}

// TestIsolation: changing a service a workload neither calls nor is
// selected by leaves the workload's resources equal, so the xDS server
// pushes it nothing.
func TestIsolation(t *testing.T) {
	m := loadMesh(t, "testdata/demo")
	frontend := find(t, m.Workloads, "frontend-1")
	before := NewIndex(m).ForWorkload(frontend)

	unrelated := &v1alpha1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "billing", Namespace: "default"},
		Spec: v1alpha1.ServiceSpec{
			Selector: map[string]string{"app": "billing"},
			Ports:    []v1alpha1.ServicePort{{Name: "http-80", Port: 80, Protocol: v1alpha1.ProtocolHTTP, TargetPort: 8080}},
		},
	}
	changed := m
	changed.Services = append(append([]*v1alpha1.Service(nil), m.Services...), unrelated)
	changed.Workloads = append(append([]*v1alpha1.Workload(nil), m.Workloads...), &v1alpha1.Workload{
		ObjectMeta: metav1.ObjectMeta{Name: "billing-1", Namespace: "default", Labels: map[string]string{"app": "billing"}},
		Spec:       v1alpha1.WorkloadSpec{Address: "10.9.0.1", Ports: []v1alpha1.WorkloadPort{{Port: 8080, InboundPort: 15006}}},
	})
	changed.HTTPRoutes = append(append([]*v1alpha1.HTTPRoute(nil), m.HTTPRoutes...), &v1alpha1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{Name: "billing", Namespace: "default"},
		Spec: gatewayv1.HTTPRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{{Name: "billing"}}},
			Rules:           []gatewayv1.HTTPRouteRule{{BackendRefs: []gatewayv1.HTTPBackendRef{{BackendRef: backendRef("backend-v1", 80, 1)}}}},
		},
	})
	changed.Health = map[string]Health{"default/billing-1": HealthUnhealthy, "default/backend-v1-2": HealthUnhealthy}
	changed.DestinationPolicies = append(append([]*v1alpha1.DestinationPolicy(nil), m.DestinationPolicies...),
		leastRequest("billing-lb", "billing", 0, 0))

	after := NewIndex(changed).ForWorkload(frontend)
	if diff := cmp.Diff(before, after, protocmp.Transform()); diff != "" {
		t.Errorf("ForWorkload(frontend-1) changed with an unrelated service (-before +after):\n%s", diff)
	}

	// And the converse, so the test cannot pass by ignoring changes: a
	// backend endpoint turning unhealthy does change frontend's resources.
	changed.Health = map[string]Health{"default/backend-v2-1": HealthUnhealthy}
	if diff := cmp.Diff(before, NewIndex(changed).ForWorkload(frontend), protocmp.Transform()); diff == "" {
		t.Error("ForWorkload(frontend-1) did not change when a backend it calls turned unhealthy")
	}
	changed.Health = nil
	changed.DestinationPolicies = append(changed.DestinationPolicies, leastRequest("backend-lb", "backend-v2", 0, 0))
	if diff := cmp.Diff(before, NewIndex(changed).ForWorkload(frontend), protocmp.Transform()); diff == "" {
		t.Error("ForWorkload(frontend-1) did not change with a DestinationPolicy on a backend it calls")
	}
}

func find(t *testing.T, wls []*v1alpha1.Workload, name string) *v1alpha1.Workload {
	t.Helper()
	for _, w := range wls {
		if w.Name == name {
			return w
		}
	}
	t.Fatalf("no workload %q", name)
	return nil
}

func backendRef(name string, port, weight int32) gatewayv1.BackendRef {
	return gatewayv1.BackendRef{
		BackendObjectReference: gatewayv1.BackendObjectReference{Name: gatewayv1.ObjectName(name), Port: new(port)},
		Weight:                 new(weight),
	}
}

// TestRouteAction covers the actions validation cannot produce from YAML
// (all weights zero is refused there) but a stored resource might.
func TestRouteAction(t *testing.T) {
	cluster := func(c string) *routev3.Route {
		return &routev3.Route{Action: &routev3.Route_Route{Route: &routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: c},
			Timeout:          durationpb.New(0),
		}}}
	}
	tests := []struct {
		name string
		refs []gatewayv1.BackendRef
		want *routev3.Route
	}{
		{
			name: "no backends",
			want: &routev3.Route{Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 500}}},
		},
		{
			name: "all weights zero",
			refs: []gatewayv1.BackendRef{backendRef("a", 80, 0), backendRef("b", 80, 0)},
			want: &routev3.Route{Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 500}}},
		},
		{
			name: "one left after dropping zero",
			refs: []gatewayv1.BackendRef{backendRef("a", 80, 0), backendRef("b", 80, 3)},
			want: cluster("b.default.mesh:80"),
		},
		{
			name: "repeats merge",
			refs: []gatewayv1.BackendRef{backendRef("a", 80, 1), backendRef("b", 80, 2), backendRef("a", 80, 3)},
			want: &routev3.Route{Action: &routev3.Route_Route{Route: &routev3.RouteAction{
				ClusterSpecifier: &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{
					Clusters: []*routev3.WeightedCluster_ClusterWeight{
						{Name: "a.default.mesh:80", Weight: wrapperspb.UInt32(4)},
						{Name: "b.default.mesh:80", Weight: wrapperspb.UInt32(2)},
					},
				}},
				Timeout: durationpb.New(0),
			}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ix := NewIndex(Mesh{})
			got := routeTo(ix.resolveBackends("default", tt.refs, map[string]*portInfo{}), 0)
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("action (-want +got):\n%s", diff)
			}
		})
	}
}

// TestForWorkloadNotIndexed: a workload the Index has never seen (a proxy
// registering itself) gets the same inbound protocol as an indexed one.
func TestForWorkloadNotIndexed(t *testing.T) {
	m := loadMesh(t, "testdata/demo")
	ix := NewIndex(m)
	greeter := find(t, m.Workloads, "greeter-v1-1")
	copied := *greeter
	if diff := cmp.Diff(ix.ForWorkload(greeter), ix.ForWorkload(&copied), protocmp.Transform()); diff != "" {
		t.Errorf("ForWorkload differs for a copy of an indexed workload (-indexed +copy):\n%s", diff)
	}
}

// TestValidateRefuses: Validate catches what would make a client NACK or
// wait forever.
func TestValidateRefuses(t *testing.T) {
	m := loadMesh(t, "testdata/demo")
	ix := NewIndex(m)
	frontend := find(t, m.Workloads, "frontend-1")
	// Resources share messages with the Index; slices are per call, so
	// the cases below may shorten or extend them.
	good := func() Resources { return ix.ForWorkload(frontend) }
	if err := good().Validate(); err != nil {
		t.Fatalf("good resources: %v", err)
	}
	tests := []struct {
		name   string
		mutate func(*Resources)
		want   string
	}{
		{"route config missing", func(r *Resources) { r.Routes = r.Routes[1:] }, `route configuration "backend.default.mesh:80" is referenced but missing`},
		{"cluster missing", func(r *Resources) { r.Clusters = r.Clusters[1:] }, `cluster "backend-v1.default.mesh:80" is referenced but missing`},
		{"endpoints unreferenced", func(r *Resources) {
			r.Endpoints = append(r.Endpoints, &endpointv3.ClusterLoadAssignment{ClusterName: "stray"})
		}, `cluster load assignment "stray" is not referenced`},
		{"invalid proto", func(r *Resources) {
			r.Endpoints = append(r.Endpoints, &endpointv3.ClusterLoadAssignment{})
		}, "ClusterName"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := good()
			tt.mutate(&r)
			err := r.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate() = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}
