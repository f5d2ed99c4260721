package translate

import (
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"verge.dev/verge/api/v1alpha1"
)

// leastRequest is a LeastRequest policy on service (port 0: every port),
// created day days into 2026.
func leastRequest(name, service string, port int32, day int) *v1alpha1.DestinationPolicy {
	return policy(name, service, port, day, v1alpha1.LoadBalancerLeastRequest)
}

func policy(name, service string, port int32, day int, lb v1alpha1.LoadBalancerPolicy) *v1alpha1.DestinationPolicy {
	return &v1alpha1.DestinationPolicy{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: "default",
			CreationTimestamp: metav1.NewTime(time.Date(2026, 1, 1+day, 0, 0, 0, 0, time.UTC)),
		},
		Spec: v1alpha1.DestinationPolicySpec{
			TargetRef:    v1alpha1.PolicyTargetReference{Kind: "Service", Name: service, Port: port},
			LoadBalancer: &v1alpha1.LoadBalancer{Policy: lb},
		},
	}
}

// TestLBPolicy pins how DestinationPolicies pick each service port's
// lb_policy, conflicts included.
func TestLBPolicy(t *testing.T) {
	const (
		rr = clusterv3.Cluster_ROUND_ROBIN
		lr = clusterv3.Cluster_LEAST_REQUEST
	)
	svc := &v1alpha1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: v1alpha1.ServiceSpec{Ports: []v1alpha1.ServicePort{
			{Name: "a", Port: 80, Protocol: v1alpha1.ProtocolHTTP, TargetPort: 80},
			{Name: "b", Port: 81, Protocol: v1alpha1.ProtocolHTTP, TargetPort: 81},
		}},
	}
	otherNS := leastRequest("elsewhere", "web", 0, 0)
	otherNS.Namespace = "prod"
	wrongKind := leastRequest("wrong-kind", "web", 0, 0)
	wrongKind.Spec.TargetRef.Kind = "HTTPRoute"
	noLB := leastRequest("no-lb", "web", 0, 0)
	noLB.Spec.LoadBalancer = nil

	tests := []struct {
		name     string
		policies []*v1alpha1.DestinationPolicy
		want     map[int32]clusterv3.Cluster_LbPolicy
	}{
		{name: "no policy", want: map[int32]clusterv3.Cluster_LbPolicy{80: rr, 81: rr}},
		{
			name:     "whole service",
			policies: []*v1alpha1.DestinationPolicy{leastRequest("p", "web", 0, 0)},
			want:     map[int32]clusterv3.Cluster_LbPolicy{80: lr, 81: lr},
		},
		{
			name:     "one port",
			policies: []*v1alpha1.DestinationPolicy{leastRequest("p", "web", 81, 0)},
			want:     map[int32]clusterv3.Cluster_LbPolicy{80: rr, 81: lr},
		},
		{
			name: "oldest wins over a newer port policy",
			policies: []*v1alpha1.DestinationPolicy{
				policy("newer", "web", 81, 2, v1alpha1.LoadBalancerRoundRobin),
				leastRequest("older", "web", 0, 1),
			},
			want: map[int32]clusterv3.Cluster_LbPolicy{80: lr, 81: lr},
		},
		{
			name: "oldest wins over a newer service policy",
			policies: []*v1alpha1.DestinationPolicy{
				leastRequest("newer", "web", 0, 2),
				policy("older", "web", 80, 1, v1alpha1.LoadBalancerRoundRobin),
			},
			want: map[int32]clusterv3.Cluster_LbPolicy{80: rr, 81: lr},
		},
		{
			name: "same age: name breaks the tie",
			policies: []*v1alpha1.DestinationPolicy{
				policy("b", "web", 0, 1, v1alpha1.LoadBalancerRoundRobin),
				leastRequest("a", "web", 0, 1),
			},
			want: map[int32]clusterv3.Cluster_LbPolicy{80: lr, 81: lr},
		},
		{
			name: "ignored: other namespace, other service, other kind, no loadBalancer",
			policies: []*v1alpha1.DestinationPolicy{
				otherNS, leastRequest("other", "api", 0, 0), wrongKind,
				noLB, policy("later", "web", 0, 5, v1alpha1.LoadBalancerRoundRobin),
			},
			want: map[int32]clusterv3.Cluster_LbPolicy{80: rr, 81: rr},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ix := NewIndex(Mesh{Services: []*v1alpha1.Service{svc}, DestinationPolicies: tt.policies})
			got := map[int32]clusterv3.Cluster_LbPolicy{}
			for _, p := range svc.Spec.Ports {
				got[p.Port] = ix.ports[ClusterName("web", "default", p.Port)].cluster.GetLbPolicy()
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("lb_policy by port (-want +got):\n%s", diff)
			}
		})
	}
}
