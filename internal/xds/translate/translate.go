// Package translate turns mesh resources into Envoy xDS v3 resources. It is the
// one translation in Verge: the Verge proxy, Envoy and proxyless gRPC all
// consume its output. It is a pure core: it takes values, never a store or a
// clock, and the same input always gives the same output (sorted, stable), so
// golden files under testdata/ pin it.
//
// Naming (relied on by the proxy, tests and docs):
//   - Service port cluster, EDS name and route config: "NAME.NS.mesh:PORT".
//   - Proxyless gRPC api listener: "NAME.NS.mesh:PORT" (the xds:/// target).
//   - Verge proxy outbound listener: "outbound:LOCALPORT"; inbound listener
//     and its local cluster: "inbound:APPPORT".
//
// With Mesh.MTLS, proxied workloads' inbound listeners take mutual TLS
// (STRICT or PERMISSIVE by MeshTLS) and clusters use auto mTLS towards
// proxied endpoints; see tls.go. The proxyless view never carries TLS.
//
// Traffic management (docs/xds-traffic.md is the field-by-field contract):
// DestinationPolicies targeting a service (with that port or no port) set
// its clusters' balancer, circuit breakers, retry budget, outlier detection
// and health checks (policy.go), the default retry and hash policy of
// routes to it, and the rate limit, priority shedding and bandwidth limit
// of its own proxies' inbound listeners (inbound.go); for each section the
// oldest policy setting it (creationTimestamp, then name) wins. Gateway API
// route filters and retries, and FaultInjections, shape outbound routes
// (traffic.go). Endpoints carry their locality (workload labels "region"
// and "zone"), and ForWorkload prioritises them relative to the caller's.
//
// Telemetry (docs/xds-telemetry.md is the contract): the Telemetry applying
// to a workload (scoped as MeshTLS is, scope.go) gives its listeners a file
// access log, OpenTelemetry tracing to the cluster "verge-otlp" and the
// metrics switch in listener metadata (telemetry.go). Proxyless clients get
// none of it.
package translate

import (
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"verge.dev/verge/api/v1alpha1"
)

// Health is a workload's runtime health as the control plane sees it.
type Health int

const (
	// HealthUnknown is treated as healthy: a workload without a proxy has no
	// one to report for it.
	HealthUnknown Health = iota
	HealthHealthy
	HealthUnhealthy
)

// Mesh is the translator's input: every stored resource (already defaulted
// and validated) and the runtime health of workloads. The translator does not
// modify it.
type Mesh struct {
	Services   []*v1alpha1.Service
	Workloads  []*v1alpha1.Workload
	HTTPRoutes []*v1alpha1.HTTPRoute
	GRPCRoutes []*v1alpha1.GRPCRoute
	// DestinationPolicies set how clients reach a service; today its
	// ports' load-balancing policy; the oldest wins a conflict (see the
	// package comment).
	DestinationPolicies []*v1alpha1.DestinationPolicy
	// MeshTLSes set STRICT or PERMISSIVE per mesh, namespace or service
	// (see tls.go); they matter only when MTLS is set.
	MeshTLSes []*v1alpha1.MeshTLS
	// AuthorizationPolicies become authorization filters on proxied
	// workloads' inbound listeners (see authz.go).
	AuthorizationPolicies []*v1alpha1.AuthorizationPolicy
	// FaultInjections become fault filters on the routes of callers of
	// their target service (see docs/xds-traffic.md).
	FaultInjections []*v1alpha1.FaultInjection
	// Telemetries set access logs, tracing and metrics per mesh, namespace
	// or service, scoped as MeshTLSes are (see telemetry.go).
	Telemetries []*v1alpha1.Telemetry
	// Health by "namespace/name" of the workload; absent means HealthUnknown.
	Health map[string]Health
	// MTLS turns on mutual TLS between Verge proxies: TLS filter chains on
	// proxied workloads' inbound listeners and auto mTLS on outbound
	// clusters (see tls.go). The control plane sets it only once proxies
	// can get certificates and the trust bundle is served; when false the
	// output carries no TLS at all.
	MTLS bool
	// TrustDomain is the SPIFFE trust domain of the mesh's identities;
	// DefaultTrustDomain when empty.
	TrustDomain string
}

// Resources is the xDS resources for one client, each list sorted by name.
type Resources struct {
	Listeners []*listenerv3.Listener
	Routes    []*routev3.RouteConfiguration
	Clusters  []*clusterv3.Cluster
	Endpoints []*endpointv3.ClusterLoadAssignment
	// Secrets are SDS secrets sent over ADS. The translator never fills
	// them: the xDS server adds the trust bundle (TrustBundleSecret).
	Secrets []*tlsv3.Secret
}

// Add appends o to the list of its kind and reports whether Mesh has one,
// so that every producer of a Mesh (the registry, tests) sorts objects by
// kind in one place.
func (m *Mesh) Add(o v1alpha1.Object) bool {
	switch o := o.(type) {
	case *v1alpha1.Service:
		m.Services = append(m.Services, o)
	case *v1alpha1.Workload:
		m.Workloads = append(m.Workloads, o)
	case *v1alpha1.HTTPRoute:
		m.HTTPRoutes = append(m.HTTPRoutes, o)
	case *v1alpha1.GRPCRoute:
		m.GRPCRoutes = append(m.GRPCRoutes, o)
	case *v1alpha1.DestinationPolicy:
		m.DestinationPolicies = append(m.DestinationPolicies, o)
	case *v1alpha1.MeshTLS:
		m.MeshTLSes = append(m.MeshTLSes, o)
	case *v1alpha1.AuthorizationPolicy:
		m.AuthorizationPolicies = append(m.AuthorizationPolicies, o)
	case *v1alpha1.FaultInjection:
		m.FaultInjections = append(m.FaultInjections, o)
	case *v1alpha1.Telemetry:
		m.Telemetries = append(m.Telemetries, o)
	default:
		return false
	}
	return true
}
