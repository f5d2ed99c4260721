package translate

import (
	"slices"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"verge.dev/verge/api/v1alpha1"
)

// TestTelemetryScope checks which Telemetry applies, through the tracer's
// service name and collector, which differ per object.
func TestTelemetryScope(t *testing.T) {
	tel := func(name, ns, svc, collector string, age int) *v1alpha1.Telemetry {
		return &v1alpha1.Telemetry{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns,
				CreationTimestamp: metav1.Unix(int64(age), 0)},
			Spec: v1alpha1.TelemetrySpec{Service: svc, Tracing: &v1alpha1.TelemetryTracing{
				SamplingPercent: new(5.0), Collector: collector}},
		}
	}
	svc := &v1alpha1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"},
		Spec: v1alpha1.ServiceSpec{Selector: map[string]string{"app": "web"}, Ports: []v1alpha1.ServicePort{{Port: 80, TargetPort: 80, Protocol: v1alpha1.ProtocolHTTP, Name: "http"}}}}
	wl := &v1alpha1.Workload{ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "shop", Labels: map[string]string{"app": "web"}},
		Spec: v1alpha1.WorkloadSpec{Address: "10.0.0.1", Ports: []v1alpha1.WorkloadPort{{Port: 80, InboundPort: 15006}}, Proxy: &v1alpha1.WorkloadProxy{}}}
	other := &v1alpha1.Workload{ObjectMeta: metav1.ObjectMeta{Name: "x-1", Namespace: "other"},
		Spec: v1alpha1.WorkloadSpec{Address: "10.0.0.2", Ports: []v1alpha1.WorkloadPort{{Port: 80, InboundPort: 15006}}, Proxy: &v1alpha1.WorkloadProxy{}}}
	mesh := tel("mesh", v1alpha1.MeshNamespace, "", "10.9.0.1:4317", 1)
	ns := tel("ns", "shop", "", "10.9.0.2:4317", 1)
	svcOld := tel("svc-old", "shop", "web", "10.9.0.3:4317", 1)
	svcNew := tel("svc-new", "shop", "web", "10.9.0.4:4317", 2)
	tests := []struct {
		name string
		tels []*v1alpha1.Telemetry
		wl   *v1alpha1.Workload
		want string // collector address, "" for no tracing
	}{
		{"none", nil, wl, ""},
		{"mesh", []*v1alpha1.Telemetry{mesh}, wl, "10.9.0.1"},
		{"namespace beats mesh", []*v1alpha1.Telemetry{mesh, ns}, wl, "10.9.0.2"},
		{"service beats namespace", []*v1alpha1.Telemetry{svcNew, ns, mesh}, wl, "10.9.0.4"},
		{"oldest service one", []*v1alpha1.Telemetry{svcNew, svcOld}, wl, "10.9.0.3"},
		{"other namespace gets mesh", []*v1alpha1.Telemetry{mesh, ns, svcOld}, other, "10.9.0.1"},
		{"other namespace without mesh", []*v1alpha1.Telemetry{ns, svcOld}, other, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ix := NewIndex(Mesh{Services: []*v1alpha1.Service{svc}, Workloads: []*v1alpha1.Workload{wl, other}, Telemetries: tt.tels})
			r := ix.ForWorkload(tt.wl)
			if err := r.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			got := ""
			if i := slices.IndexFunc(r.Clusters, func(c *clusterv3.Cluster) bool { return c.Name == CollectorCluster }); i >= 0 {
				got = r.Clusters[i].GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetAddress()
			}
			if got != tt.want {
				t.Errorf("collector %q, want %q", got, tt.want)
			}
		})
	}
}

// TestValidateTracingCluster: a tracer naming a cluster that is not sent is
// an inconsistency Validate reports.
func TestValidateTracingCluster(t *testing.T) {
	wl := &v1alpha1.Workload{ObjectMeta: metav1.ObjectMeta{Name: "w", Namespace: "default"},
		Spec: v1alpha1.WorkloadSpec{Address: "10.0.0.1", Ports: []v1alpha1.WorkloadPort{{Port: 80, InboundPort: 15006}}, Proxy: &v1alpha1.WorkloadProxy{}}}
	tel := &v1alpha1.Telemetry{ObjectMeta: metav1.ObjectMeta{Name: "t", Namespace: "default"},
		Spec: v1alpha1.TelemetrySpec{Tracing: &v1alpha1.TelemetryTracing{SamplingPercent: new(1.0), Collector: "127.0.0.1:4317"}}}
	r := NewIndex(Mesh{Workloads: []*v1alpha1.Workload{wl}, Telemetries: []*v1alpha1.Telemetry{tel}}).ForWorkload(wl)
	r.Clusters = slices.DeleteFunc(slices.Clone(r.Clusters), func(c *clusterv3.Cluster) bool { return c.Name == CollectorCluster })
	if err := r.Validate(); err == nil || !strings.Contains(err.Error(), `cluster "verge-otlp" is referenced but missing`) {
		t.Errorf("Validate without the collector cluster: %v", err)
	}
}
