package translate

import (
	"cmp"
	"strconv"
	"strings"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/types/known/durationpb"

	"verge.dev/verge/api/v1alpha1"
)

const (
	// HTTPProxyListener is the name of the listener of a workload's
	// spec.httpProxy, the one applications reach through HTTP_PROXY.
	HTTPProxyListener = "outbound_http_proxy"
	// HTTPProxyRoute is its route configuration.
	HTTPProxyRoute = "http_proxy"
	// ConnectRouteName names the CONNECT route of each of its virtual hosts.
	ConnectRouteName = "connect"
	connectUpgrade   = "CONNECT"
)

// httpProxy adds the HTTP_PROXY listener of wl (which sets spec.httpProxy),
// its route configuration and every cluster it leads to; tel is the
// workload's outbound telemetry (nil: none).
//
// The route configuration has one virtual host per service port of the mesh
// (in cluster-name order), named after the port's cluster, with domains
// "NAME.NS.mesh:PORT" and, for port 80, also "NAME.NS.mesh" (what an
// absolute-form "http://NAME.NS.mesh/" carries). Its first route takes
// CONNECT (connect_matcher) and tunnels the bytes to the port's cluster
// (RouteAction upgrade_configs CONNECT with connect_config, no timeout);
// HTTP-ish ports then carry the same routes as the port's outbound route
// configuration, so HTTPRoutes, retries and faults apply as they do on an
// explicit upstream. A name with a port-80 service port also gets a virtual
// host "NAME.NS.mesh:*" without routes, so that its other ports are not
// taken for port 80. There is no "*" virtual host: any other authority gets
// 404 and is never dialled, so the listener is no open proxy.
//
// Every service port is listed, not only those wl names in spec.upstreams:
// an application behind HTTP_PROXY picks its destinations at run time.
// TODO(#5): restrict by policy once there is one saying what a workload may
// call.
func (ix *Index) httpProxy(b *collector, wl *v1alpha1.Workload, tel *listenerTelemetry) {
	hp := wl.Spec.HTTPProxy
	faults := false
	vhs := make([]*routev3.VirtualHost, 0, len(ix.sorted))
	for _, pi := range ix.sorted {
		if pi.missing {
			continue
		}
		routes := []*routev3.Route{connectRoute(pi.name)}
		ix.clientCluster(b, pi, wl)
		if pi.port.Protocol.IsHTTP() {
			routes = append(routes, pi.routes...)
			faults = faults || pi.faults
			for _, be := range pi.backends {
				ix.clientCluster(b, be, wl)
			}
		}
		domains := proxyDomains(pi.name)
		vhs = append(vhs, &routev3.VirtualHost{Name: pi.name, Domains: domains, Routes: routes})
		if len(domains) > 1 {
			// Without routes, so that "NAME.NS.mesh:OTHERPORT" gets 404:
			// a proxy that retries a host with a port without it (the
			// Verge proxy does) would otherwise send it to port 80.
			others := domains[0] + ":*"
			vhs = append(vhs, &routev3.VirtualHost{Name: others, Domains: []string{others}})
		}
	}
	b.route(&routev3.RouteConfiguration{Name: HTTPProxyRoute, VirtualHosts: vhs})

	var filters []*hcmv3.HttpFilter
	if faults {
		filters = outboundFilters(&portInfo{faults: true})
	}
	m := hcm(HTTPProxyListener, HTTPProxyRoute, filters...)
	// CONNECT must be allowed on the connection manager too; the route then
	// says where each tunnel goes.
	m.UpgradeConfigs = []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: connectUpgrade}}
	tel.hcm(m)
	l := &listenerv3.Listener{
		Name:    HTTPProxyListener,
		Address: socketAddress(cmp.Or(hp.Address, defaultAddr), hp.Port),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name:       wellknown.HTTPConnectionManager,
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(m)},
		}}}},
	}
	tel.apply(l)
	b.listener(l)
}

// proxyDomains are the authorities of a service port's cluster name
// "NAME.NS.mesh:PORT": that, and the bare mesh name for port 80, which HTTP
// clients leave out of absolute-form targets and Host headers.
func proxyDomains(cluster string) []string {
	host, port, _ := strings.Cut(cluster, ":")
	if port == strconv.Itoa(80) {
		return []string{host, cluster}
	}
	return []string{cluster}
}

// connectRoute tunnels CONNECT requests to cluster. Envoy terminates the
// CONNECT (connect_config) and sends only the tunnelled bytes upstream,
// which is what the service's own proxies expect. The route timeout is off:
// a tunnel lives as long as its client keeps it.
func connectRoute(cluster string) *routev3.Route {
	return &routev3.Route{
		Name:  ConnectRouteName,
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_ConnectMatcher_{ConnectMatcher: &routev3.RouteMatch_ConnectMatcher{}}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster},
			Timeout:          durationpb.New(0),
			UpgradeConfigs: []*routev3.RouteAction_UpgradeConfig{{
				UpgradeType:   connectUpgrade,
				ConnectConfig: &routev3.RouteAction_UpgradeConfig_ConnectConfig{},
			}},
		}},
	}
}
