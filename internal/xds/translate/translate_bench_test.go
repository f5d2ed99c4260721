package translate

import (
	"fmt"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"verge.dev/verge/api/v1alpha1"
)

// benchMesh is services × perService workloads, every workload proxied and
// calling 5 other services; every 4th service is gRPC and every 10th has an
// HTTPRoute splitting it between itself and the next service.
func benchMesh(services, perService int) Mesh {
	var m Mesh
	m.Health = map[string]Health{}
	name := func(i int) string { return fmt.Sprintf("svc-%04d", i%services) }
	for i := range services {
		proto, port := v1alpha1.ProtocolHTTP, int32(80)
		if i%4 == 0 {
			proto, port = v1alpha1.ProtocolGRPC, 9000
		}
		m.Services = append(m.Services, &v1alpha1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name(i), Namespace: "default"},
			Spec: v1alpha1.ServiceSpec{
				Selector: map[string]string{"app": name(i)},
				Ports:    []v1alpha1.ServicePort{{Name: "p", Port: port, Protocol: proto, TargetPort: 8080}},
			},
		})
		if i%10 == 5 {
			m.HTTPRoutes = append(m.HTTPRoutes, &v1alpha1.HTTPRoute{
				ObjectMeta: metav1.ObjectMeta{Name: name(i), Namespace: "default"},
				Spec: gatewayv1.HTTPRouteSpec{
					CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{{Name: gatewayv1.ObjectName(name(i))}}},
					Rules: []gatewayv1.HTTPRouteRule{{BackendRefs: []gatewayv1.HTTPBackendRef{
						{BackendRef: backendRef(name(i), 80, 90)},
						{BackendRef: backendRef(name(i+1), 80, 10)},
					}}},
				},
			})
		}
		for j := range perService {
			w := &v1alpha1.Workload{
				ObjectMeta: metav1.ObjectMeta{
					Name: fmt.Sprintf("%s-%d", name(i), j), Namespace: "default",
					Labels: map[string]string{"app": name(i), "version": "v1"},
				},
				Spec: v1alpha1.WorkloadSpec{
					Address: fmt.Sprintf("10.%d.%d.%d", i/250, i%250, j+1),
					Ports:   []v1alpha1.WorkloadPort{{Port: 8080, InboundPort: 15006}},
					Proxy:   &v1alpha1.WorkloadProxy{AppAddress: "127.0.0.1"},
				},
			}
			for k := 1; k <= 5; k++ {
				up := (i + k*7) % services
				p := int32(80)
				if up%4 == 0 {
					p = 9000
				}
				w.Spec.Upstreams = append(w.Spec.Upstreams, v1alpha1.Upstream{
					Service: name(up) + ".default", Port: p, LocalPort: int32(10000 + k), LocalAddress: "127.0.0.1",
				})
			}
			if j == 0 {
				m.Health["default/"+w.Name] = HealthUnhealthy
			}
			m.Workloads = append(m.Workloads, w)
		}
	}
	return m
}

// BenchmarkTranslate1000 is one full recomputation for a 1,000-service,
// 10,000-workload mesh: the Index, the proxyless resources and 100 nodes.
func BenchmarkTranslate1000(b *testing.B) {
	m := benchMesh(1000, 10)
	nodes := make([]*v1alpha1.Workload, 0, 100)
	for i := range 100 {
		nodes = append(nodes, m.Workloads[i*100])
	}
	b.ReportAllocs()
	for b.Loop() {
		ix := NewIndex(m)
		_ = ix.ForProxyless()
		for _, w := range nodes {
			_ = ix.ForWorkload(w)
		}
	}
}

// TestBenchMeshValid keeps the benchmark honest: its output is valid.
func TestBenchMeshValid(t *testing.T) {
	m := benchMesh(40, 3)
	ix := NewIndex(m)
	if err := ix.ForProxyless().Validate(); err != nil {
		t.Error(err)
	}
	for _, w := range m.Workloads[:10] {
		if err := ix.ForWorkload(w).Validate(); err != nil {
			t.Error(err)
		}
	}
}
