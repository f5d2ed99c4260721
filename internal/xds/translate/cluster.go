package translate

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"verge.dev/verge/api/v1alpha1"
)

const (
	connectTimeout = 5 * time.Second
	// httpProtocolOptionsKey is where Envoy looks for upstream HTTP options.
	httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	// Workload labels that place an endpoint in a locality: the API's
	// "region" and "zone", else the Kubernetes well-known topology labels
	// (Kubernetes pods carry them already).
	labelRegion    = "region"
	labelZone      = "zone"
	labelK8sRegion = "topology.kubernetes.io/region"
	labelK8sZone   = "topology.kubernetes.io/zone"
	defaultAddr    = "127.0.0.1"
)

// ads is the config source of every RDS and EDS reference: the same ADS
// stream, which both Envoy and grpc-go accept.
func ads() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	}
}

// mustAny packs m deterministically. Every message packed here is built by
// this package from known types, so an error is a programmer error.
func mustAny(m proto.Message) *anypb.Any {
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil {
		panic("translate: pack " + string(m.ProtoReflect().Descriptor().FullName()) + ": " + err.Error())
	}
	return a
}

// http2Options makes the upstream speak HTTP/2 (h2c to the peer's proxy or
// application), which gRPC and HTTP2 ports need.
func http2Options() map[string]*anypb.Any {
	return map[string]*anypb.Any{httpProtocolOptionsKey: mustAny(&httpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
					Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
				},
			},
		},
	})}
}

func isH2(p v1alpha1.Protocol) bool { return p == v1alpha1.ProtocolHTTP2 || p == v1alpha1.ProtocolGRPC }

// edsCluster is a service port's cluster with what the DestinationPolicies
// of si (nil for a port that does not exist) set for port: balancer,
// circuit breakers, outlier detection, health checks (policy.go). It
// returns the cluster proxyless gRPC clients get too, the same one unless
// grpc-go cannot read the balancer (see setLB). An ADS EDS source is what
// grpc-go's CDS validation accepts.
func (ix *Index) edsCluster(name string, p v1alpha1.Protocol, si *serviceInfo, port int32) (c, proxyless *clusterv3.Cluster) {
	c = &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: ads(), ServiceName: name},
		ConnectTimeout:       durationpb.New(connectTimeout),
	}
	if isH2(p) {
		c.TypedExtensionProtocolOptions = ix.h2Options
	}
	setClusterTraffic(c, si, port)
	return c, setLB(c, si, port)
}

// staticCluster is an inbound cluster: the application behind the proxy.
func (ix *Index) staticCluster(name, addr string, port int32, p v1alpha1.Protocol) *clusterv3.Cluster {
	c := &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(connectTimeout),
		LbPolicy:             clusterv3.Cluster_ROUND_ROBIN,
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{
				LbEndpoints: []*endpointv3.LbEndpoint{{
					HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: socketAddress(addr, port)}},
				}},
			}},
		},
	}
	if isH2(p) {
		c.TypedExtensionProtocolOptions = ix.h2Options
	}
	return c
}

func socketAddress(addr string, port int32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       addr,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)},
	}}}
}

type endpoint struct {
	addr     string
	ip       netip.Addr // for numeric ordering; zero when addr is a name
	port     int32
	healthy  bool
	region   string
	zone     string
	workload string // ns/name, the last tie-break
	tls      bool   // reached with mutual TLS
}

// loadAssignment lists the workloads serving targetPort. Peers connect to the
// workload's proxy inbound port when it has one, else to the application.
//
// Unhealthy endpoints stay listed as UNHEALTHY so that proxy-status and
// config dumps show them; every client skips them. Endpoints are unique by
// address:port (grpc-go NACKs duplicates); a healthy one wins a collision.
//
// With markTLS, endpoints that are a proxy's inbound listener carry the
// metadata selecting the cluster's TLS transport socket match (auto mTLS).
func (ix *Index) loadAssignment(name string, wls []*v1alpha1.Workload, targetPort int32, markTLS bool) *endpointv3.ClusterLoadAssignment {
	var eps []endpoint
	for _, w := range wls {
		for _, wp := range w.Spec.Ports {
			if wp.Port != targetPort {
				continue
			}
			key := w.Namespace + "/" + w.Name
			e := endpoint{
				addr:     w.Spec.Address,
				port:     wp.Port,
				healthy:  ix.health[key] != HealthUnhealthy,
				region:   cmp.Or(w.Labels[labelRegion], w.Labels[labelK8sRegion]),
				zone:     cmp.Or(w.Labels[labelZone], w.Labels[labelK8sZone]),
				workload: key,
				tls:      markTLS && tlsEndpoint(w, targetPort),
			}
			if wp.InboundPort > 0 {
				e.port = wp.InboundPort
			}
			e.ip, _ = netip.ParseAddr(e.addr)
			eps = append(eps, e)
			break
		}
	}
	slices.SortFunc(eps, func(a, b endpoint) int {
		return cmp.Or(
			compareAddr(a, b),
			cmp.Compare(a.port, b.port),
			-compareBool(a.healthy, b.healthy),
			strings.Compare(a.workload, b.workload),
		)
	})
	eps = slices.CompactFunc(eps, func(a, b endpoint) bool { return a.addr == b.addr && a.port == b.port })

	cla := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	// One LocalityLbEndpoints per (region, zone), sorted; grpc-go needs a
	// non-nil locality even when both are empty.
	type loc struct{ region, zone string }
	groups := map[loc]*endpointv3.LocalityLbEndpoints{}
	var locs []loc
	for _, e := range eps {
		l := loc{e.region, e.zone}
		g := groups[l]
		if g == nil {
			g = &endpointv3.LocalityLbEndpoints{
				Locality:            &corev3.Locality{Region: e.region, Zone: e.zone},
				LoadBalancingWeight: wrapperspb.UInt32(1),
			}
			groups[l] = g
			locs = append(locs, l)
		}
		hs := corev3.HealthStatus_HEALTHY
		if !e.healthy {
			hs = corev3.HealthStatus_UNHEALTHY
		}
		lbe := &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: socketAddress(e.addr, e.port)}},
			HealthStatus:   hs,
		}
		if e.tls {
			lbe.Metadata = tlsEndpointMetadata()
		}
		g.LbEndpoints = append(g.LbEndpoints, lbe)
	}
	slices.SortFunc(locs, func(a, b loc) int {
		return cmp.Or(strings.Compare(a.region, b.region), strings.Compare(a.zone, b.zone))
	})
	for _, l := range locs {
		cla.Endpoints = append(cla.Endpoints, groups[l])
	}
	return cla
}

// locality is a workload's place: its region and zone labels.
type locality struct{ region, zone string }

func workloadLocality(w *v1alpha1.Workload) locality {
	return locality{
		region: cmp.Or(w.Labels[labelRegion], w.Labels[labelK8sRegion]),
		zone:   cmp.Or(w.Labels[labelZone], w.Labels[labelK8sZone]),
	}
}

// Locality priorities (docs/xds-traffic.md): a client prefers endpoints in
// its zone, then its region, then the rest, spilling over by priority as
// nearer ones turn unhealthy.
const (
	prioritySameZone   = 0
	prioritySameRegion = 1
	priorityOther      = 2
)

func localityPriority(caller, ep locality) uint32 {
	switch {
	case ep.region != caller.region:
		return priorityOther
	case ep.zone != caller.zone:
		return prioritySameRegion
	}
	return prioritySameZone
}

// clientCluster adds the service port's cluster as the proxy in front of
// wl gets it, with endpoints prioritised by their locality relative to wl.
func (ix *Index) clientCluster(b *collector, pi *portInfo, wl *v1alpha1.Workload) {
	c, cla := pi.mesh()
	if !pi.svc.localityOff(pi.port.Port) {
		cla = withPriorities(cla, workloadLocality(wl))
	}
	b.cluster(c, cla)
}

// withPriorities is cla with each locality's priority set relative to
// caller. Priorities used are renumbered 0, 1, ... in order (Envoy and
// grpc-go want them contiguous), so with no same-zone endpoint the same
// region's are priority 0. A caller without locality labels, or endpoints
// all in one priority, get cla itself: everything at priority 0. The copy
// shares the endpoints with cla.
func withPriorities(cla *endpointv3.ClusterLoadAssignment, caller locality) *endpointv3.ClusterLoadAssignment {
	if caller == (locality{}) || len(cla.GetEndpoints()) < 2 {
		return cla
	}
	prios := make([]uint32, len(cla.Endpoints))
	var used [priorityOther + 1]bool
	for i, le := range cla.Endpoints {
		prios[i] = localityPriority(caller, locality{le.GetLocality().GetRegion(), le.GetLocality().GetZone()})
		used[prios[i]] = true
	}
	var renumber [priorityOther + 1]uint32
	n := uint32(0)
	for p, u := range used {
		renumber[p] = n
		if u {
			n++
		}
	}
	if n < 2 {
		return cla
	}
	out := &endpointv3.ClusterLoadAssignment{ClusterName: cla.ClusterName, Policy: cla.Policy, NamedEndpoints: cla.NamedEndpoints}
	for i, le := range cla.Endpoints {
		out.Endpoints = append(out.Endpoints, &endpointv3.LocalityLbEndpoints{
			Locality:            le.Locality,
			LbEndpoints:         le.LbEndpoints,
			LoadBalancingWeight: le.LoadBalancingWeight,
			Priority:            renumber[prios[i]],
		})
	}
	return out
}

// compareAddr orders IPs numerically (10.0.0.2 before 10.0.0.10), IPs
// before names, and names as strings.
func compareAddr(a, b endpoint) int {
	switch {
	case a.ip.IsValid() && b.ip.IsValid():
		return a.ip.Compare(b.ip)
	case a.ip.IsValid():
		return -1
	case b.ip.IsValid():
		return 1
	}
	return strings.Compare(a.addr, b.addr)
}

func compareBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}
