package translate

import (
	"cmp"
	"slices"
	"strconv"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"

	"verge.dev/verge/api/v1alpha1"
)

// ForWorkload returns what the proxy (Verge or an Envoy sidecar) in front of
// wl needs, and only that, so that a change to a service wl neither calls nor
// is selected by leaves the result equal:
//
//   - per application port with an InboundPort: listener, cluster (STATIC, the
//     application at Proxy.AppAddress) and, for HTTP-ish ports, route config,
//     all named "inbound:APPPORT". The protocol is that of the first service
//     (by ns/name) selecting wl with that targetPort; HTTP when none does.
//   - per upstream: listener "outbound:LOCALPORT", the service port's route
//     config, and every cluster and ClusterLoadAssignment it leads to.
//   - with spec.httpProxy: listener "outbound_http_proxy", route config
//     "http_proxy" naming every service port, and their clusters
//     (httpproxy.go).
//
// With Mesh.MTLS and wl.Spec.Proxy set, inbound listeners get the mutual TLS
// filter chains of wl's MeshTLS mode, and outbound clusters auto mTLS
// (tls.go). The Telemetry applying to wl adds access logs, tracing (and
// the collector cluster) and the metrics switch to every listener
// (telemetry.go).
//
// An upstream whose service or port does not exist (yet) gets an HTTP
// listener and a route config "NAME.NS.mesh:PORT" with no routes: requests
// get 404 until the service appears, when the listener takes the port's
// protocol. No cluster is sent for it, so nothing dangles.
//
// wl need not be in the Mesh the Index was built from (a proxy registering
// itself). The result shares messages with the Index; do not modify it.
func (ix *Index) ForWorkload(wl *v1alpha1.Workload) Resources {
	var b collector
	selecting := ix.servicesSelecting(wl)
	appAddr := defaultAddr
	if wl.Spec.Proxy != nil && wl.Spec.Proxy.AppAddress != "" {
		appAddr = wl.Spec.Proxy.AppAddress
	}
	mode := v1alpha1.MeshTLSPermissive
	if ix.tls.on {
		mode = ix.tlsMode(wl, selecting)
	}
	wt := ix.telemetryFor(wl, selecting)
	in, out := wt.listener(directionInbound), wt.listener(directionOutbound)
	wt.addCollector(&b)
	for _, wp := range wl.Spec.Ports {
		if wp.InboundPort <= 0 {
			continue
		}
		name := "inbound:" + strconv.Itoa(int(wp.Port))
		stat := "inbound_" + strconv.Itoa(int(wp.Port))
		p := inboundProtocol(selecting, wp.Port)
		t := ix.inboundTraffic(selecting, wp.Port)
		l := &listenerv3.Listener{Name: name, Address: socketAddress(wl.Spec.Address, wp.InboundPort)}
		if p.IsHTTP() {
			l.FilterChains = hcmChain(stat, name, in, append(t.httpFilters(stat), ix.authzHTTPFilters(wl, wp.Port)...)...)
			b.route(&routev3.RouteConfiguration{
				Name: name,
				VirtualHosts: []*routev3.VirtualHost{{
					Name:    "inbound",
					Domains: []string{"*"},
					Routes:  t.routes(name, stat),
				}},
			})
		} else {
			l.FilterChains = tcpChain(stat, name, in, append(ix.authzNetworkFilters(wl, wp.Port), t.networkFilters(stat)...)...)
		}
		if ix.tls.on && wl.Spec.Proxy != nil {
			ix.secureInbound(l, mode, p)
		}
		in.apply(l)
		b.listener(l)
		b.cluster(ix.staticCluster(name, appAddr, wp.Port, p), nil)
	}

	for _, u := range wl.Spec.Upstreams {
		svcName, ns, ok := strings.Cut(u.Service, ".")
		if !ok || ns == "" {
			ns = wl.Namespace
		}
		ns = cmp.Or(ns, v1alpha1.DefaultNamespace)
		cname := ClusterName(svcName, ns, u.Port)
		lname := "outbound:" + strconv.Itoa(int(u.LocalPort))
		stat := "outbound_" + strconv.Itoa(int(u.LocalPort))
		l := &listenerv3.Listener{Name: lname, Address: socketAddress(cmp.Or(u.LocalAddress, defaultAddr), u.LocalPort)}
		pi := ix.ports[cname]
		switch {
		case pi == nil || pi.missing:
			l.FilterChains = hcmChain(stat, cname, out)
			b.route(routeConfig(cname, []string{"*"}, nil))
		case pi.port.Protocol.IsHTTP():
			l.FilterChains = hcmChain(stat, cname, out, outboundFilters(pi)...)
			b.route(pi.outbound)
			for _, be := range pi.backends {
				ix.clientCluster(&b, be, wl)
			}
		default:
			l.FilterChains = tcpChain(stat, cname, out)
			ix.clientCluster(&b, pi, wl)
		}
		out.apply(l)
		b.listener(l)
	}
	if wl.Spec.HTTPProxy != nil {
		ix.httpProxy(&b, wl, out)
	}
	return b.resources()
}

// inboundProtocol is the protocol of appPort as the services selecting the
// workload declare it, HTTP when none does.
func inboundProtocol(selecting []*serviceInfo, appPort int32) v1alpha1.Protocol {
	for _, si := range selecting {
		for _, p := range si.svc.Spec.Ports {
			if p.TargetPort == appPort {
				return p.Protocol
			}
		}
	}
	return v1alpha1.ProtocolHTTP
}

// ForProxyless returns what proxyless gRPC clients (grpc-go's xds resolver,
// target xds:///NAME.NS.mesh:PORT) need: for every GRPC and HTTP2 service
// port an API listener named after the target, its route config (whose
// virtual host matches the authority gRPC sends) and the clusters and
// endpoints behind it. The result shares messages with the Index; do not
// modify it.
func (ix *Index) ForProxyless() Resources {
	var b collector
	for _, pi := range ix.sorted {
		if !isH2(pi.port.Protocol) {
			continue
		}
		b.listener(&listenerv3.Listener{
			Name:        pi.name,
			ApiListener: &listenerv3.ApiListener{ApiListener: mustAny(hcm(pi.name, pi.name, outboundFilters(pi)...))},
		})
		b.route(pi.proxyless)
		for _, be := range pi.backends {
			b.cluster(be.proxylessCluster, be.cla)
		}
	}
	return b.resources()
}

// outboundFilters are the HTTP filters before the router of HCMs routing
// with pi's route config: the fault filter when a route carries a fault.
// grpc-go implements it too, so proxyless clients get it as well.
func outboundFilters(pi *portInfo) []*hcmv3.HttpFilter {
	if !pi.faults {
		return nil
	}
	return []*hcmv3.HttpFilter{{
		Name:       faultFilterName,
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&faultv3.HTTPFault{})},
	}}
}

// hcm is the HTTP connection manager of every HTTP listener: routes over ADS
// (grpc-go accepts only ADS or self), the given filters, and the router as
// the last filter.
func hcm(statPrefix, routeConfig string, filters ...*hcmv3.HttpFilter) *hcmv3.HttpConnectionManager {
	return &hcmv3.HttpConnectionManager{
		StatPrefix: statPrefix,
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    ads(),
			RouteConfigName: routeConfig,
		}},
		HttpFilters: append(filters, &hcmv3.HttpFilter{
			Name:       wellknown.Router,
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})},
		}),
	}
}

// hcmChain is an HTTP connection manager with tel's access log and
// tracing (nil: none).
func hcmChain(statPrefix, routeConfig string, tel *listenerTelemetry, httpFilters ...*hcmv3.HttpFilter) []*listenerv3.FilterChain {
	m := hcm(statPrefix, routeConfig, httpFilters...)
	tel.hcm(m)
	return []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
		Name:       wellknown.HTTPConnectionManager,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(m)},
	}}}}
}

// tcpChain is tcp_proxy to cluster, with tel's access log (nil: none),
// after the given network filters.
func tcpChain(statPrefix, cluster string, tel *listenerTelemetry, filters ...*listenerv3.Filter) []*listenerv3.FilterChain {
	p := &tcpv3.TcpProxy{
		StatPrefix:       statPrefix,
		ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: cluster},
	}
	tel.tcp(p)
	return []*listenerv3.FilterChain{{Filters: append(filters, &listenerv3.Filter{
		Name:       wellknown.TCPProxy,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(p)},
	})}}
}

// collector gathers one client's resources, unique by name (the first wins:
// two upstreams may share a service port, or a local port by mistake).
type collector struct {
	listeners []*listenerv3.Listener
	routes    []*routev3.RouteConfiguration
	clusters  []*clusterv3.Cluster
	endpoints []*endpointv3.ClusterLoadAssignment
	seen      map[string]bool
}

func (c *collector) add(kind, name string) bool {
	if c.seen == nil {
		c.seen = map[string]bool{}
	}
	k := kind + "\x00" + name
	if c.seen[k] {
		return false
	}
	c.seen[k] = true
	return true
}

func (c *collector) listener(l *listenerv3.Listener) {
	if c.add("l", l.Name) {
		c.listeners = append(c.listeners, l)
	}
}

func (c *collector) route(r *routev3.RouteConfiguration) {
	if c.add("r", r.Name) {
		c.routes = append(c.routes, r)
	}
}

// cluster adds a cluster and, for EDS clusters, its load assignment.
func (c *collector) cluster(cl *clusterv3.Cluster, cla *endpointv3.ClusterLoadAssignment) {
	if !c.add("c", cl.Name) {
		return
	}
	c.clusters = append(c.clusters, cl)
	if cla != nil {
		c.endpoints = append(c.endpoints, cla)
	}
}

func (c *collector) resources() Resources {
	slices.SortFunc(c.listeners, func(a, b *listenerv3.Listener) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(c.routes, func(a, b *routev3.RouteConfiguration) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(c.clusters, func(a, b *clusterv3.Cluster) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(c.endpoints, func(a, b *endpointv3.ClusterLoadAssignment) int {
		return strings.Compare(a.ClusterName, b.ClusterName)
	})
	return Resources{Listeners: c.listeners, Routes: c.routes, Clusters: c.clusters, Endpoints: c.endpoints}
}
