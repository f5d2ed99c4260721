package translate

import (
	"cmp"
	"slices"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"

	"verge.dev/verge/api/v1alpha1"
)

// attachPolicies records, on each service, the DestinationPolicies that
// target it, oldest first. A policy targeting a service that does not exist
// (yet) is ignored until the service appears.
func (ix *Index) attachPolicies(dps []*v1alpha1.DestinationPolicy) {
	for _, dp := range dps {
		ref := dp.Spec.TargetRef
		if (ref.Group != "" && ref.Group != v1alpha1.Group) || (ref.Kind != "" && ref.Kind != "Service") {
			continue
		}
		if si := ix.services[dp.Namespace+"/"+ref.Name]; si != nil {
			si.policies = append(si.policies, dp)
		}
	}
	for _, si := range ix.ordered {
		slices.SortFunc(si.policies, comparePolicyAge)
	}
}

// comparePolicyAge orders policies oldest first: by creationTimestamp, then
// by name. When several policies set the same thing for one service port,
// the first in this order wins. Oldest-wins (as the Gateway API resolves
// conflicting policies) means applying a newer conflicting policy never
// changes traffic that is already flowing, and the order does not depend
// on the order the store lists objects in.
func comparePolicyAge(a, b *v1alpha1.DestinationPolicy) int {
	return cmp.Or(a.CreationTimestamp.Compare(b.CreationTimestamp.Time), strings.Compare(a.Name, b.Name))
}

// lbPolicy is the lb_policy of the service port's cluster: that of the
// oldest policy with a loadBalancer section targeting the service, with
// the port or with no port; ROUND_ROBIN when none does.
//
// Both values are ones every client accepts: the Verge proxy, Envoy, and
// grpc-go (v1.85 maps LEAST_REQUEST to its least_request_experimental
// balancer with the default choice count of 2, see unmarshal_cds.go), so
// the proxyless view shares the same cluster.
func (si *serviceInfo) lbPolicy(port int32) clusterv3.Cluster_LbPolicy {
	for _, dp := range si.policies {
		lb := dp.Spec.LoadBalancer
		if lb == nil || (dp.Spec.TargetRef.Port != 0 && dp.Spec.TargetRef.Port != port) {
			continue
		}
		if lb.Policy == v1alpha1.LoadBalancerLeastRequest {
			return clusterv3.Cluster_LEAST_REQUEST
		}
		return clusterv3.Cluster_ROUND_ROBIN
	}
	return clusterv3.Cluster_ROUND_ROBIN
}
