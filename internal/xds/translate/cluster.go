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
	// Workload labels that place an endpoint in a locality (the Kubernetes
	// well-known topology labels, so Kubernetes pods carry them already).
	labelRegion = "topology.kubernetes.io/region"
	labelZone   = "topology.kubernetes.io/zone"
	defaultAddr = "127.0.0.1"
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

// edsCluster is a service port's cluster. An ADS EDS source and lb_policy
// ROUND_ROBIN or LEAST_REQUEST are what grpc-go's CDS validation accepts.
func (ix *Index) edsCluster(name string, p v1alpha1.Protocol, lb clusterv3.Cluster_LbPolicy) *clusterv3.Cluster {
	c := &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: ads(), ServiceName: name},
		ConnectTimeout:       durationpb.New(connectTimeout),
		LbPolicy:             lb,
	}
	if isH2(p) {
		c.TypedExtensionProtocolOptions = ix.h2Options
	}
	return c
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
				region:   w.Labels[labelRegion],
				zone:     w.Labels[labelZone],
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
