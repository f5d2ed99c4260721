package xdsclient

import (
	"errors"
	"fmt"
	"math"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"verge.dev/verge/internal/proxy/config"
)

const (
	// httpProtocolOptionsKey is the typed_extension_protocol_options key
	// Envoy reads upstream HTTP settings from.
	httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	routerFilterName       = "envoy.filters.http.router"
	// inlineRoutePrefix keys a listener's inline route_config in
	// Snapshot.Routes. Translated RDS names ("NAME.NS.mesh:PORT") never
	// start with it; Build refuses a collision anyway.
	inlineRoutePrefix = "listener/"
)

// Envoy's defaults for fields the control plane leaves unset.
const (
	defaultConnectTimeout = 5 * time.Second
	defaultRouteTimeout   = 15 * time.Second
)

// Build converts accepted xDS resources into a proxy Snapshot. It is pure:
// it validates every resource (as the Validate functions do), reports every
// problem at once (errors.Join), and never keeps a reference to its inputs.
//
// Consistency rules: a listener whose RDS route configuration is not in
// routes is an error (callers drop such listeners first); an EDS cluster
// whose ClusterLoadAssignment is not in cla gets zero endpoints; a route
// naming a cluster that is not in clusters is allowed (the data path answers
// 503, as Envoy does). Listeners carrying an api_listener (proxyless gRPC)
// are not sockets and are skipped. An inline route_config is stored in
// Routes under "listener/" + the listener name. A TLS context naming a
// secret that is not in secrets is allowed (the data path cannot handshake
// until it arrives, as Envoy's listener would stay warming). Snapshot.Versions
// is left nil for the caller to fill.
func Build(listeners []*listenerv3.Listener, routes []*routev3.RouteConfiguration, clusters []*clusterv3.Cluster, cla []*endpointv3.ClusterLoadAssignment, secrets []*tlsv3.Secret) (*config.Snapshot, error) {
	var errs []error
	byType := map[string][]*resource{
		TypeRoute:    convertAll(routes, &errs),
		TypeListener: convertAll(listeners, &errs),
		TypeEndpoint: convertAll(cla, &errs),
		TypeCluster:  convertAll(clusters, &errs),
		TypeSecret:   convertAll(secrets, &errs),
	}
	snap, err := buildFrom(byType)
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return snap, nil
}

// convertAll converts ms in order, appending their errors to errs.
func convertAll[M proto.Message](ms []M, errs *[]error) []*resource {
	out := make([]*resource, 0, len(ms))
	for _, m := range ms {
		r, err := convertResource(m)
		if err != nil {
			*errs = append(*errs, err)
			continue
		}
		out = append(out, r)
	}
	return out
}

// buildFrom combines converted resources, grouped by type URL, into a
// Snapshot, checking what only the whole can show (duplicate names and
// addresses, missing route configurations). The resources are shared with
// the Snapshot, never modified: a part that differs per Snapshot (a
// listener's inline route key, a cluster's EDS endpoints) is set on a copy.
func buildFrom(byType map[string][]*resource) (*config.Snapshot, error) {
	routes, listeners := byType[TypeRoute], byType[TypeListener]
	snap := &config.Snapshot{
		Routes:   make(map[string]*config.RouteTable, len(routes)),
		Clusters: make(map[string]*config.Cluster, len(byType[TypeCluster])),
	}
	var errs []error
	if len(byType[TypeSecret]) > 0 {
		snap.Secrets = make(map[string]*config.Secret, len(byType[TypeSecret]))
	}
	for _, r := range byType[TypeSecret] {
		if _, dup := snap.Secrets[r.name]; dup {
			errs = append(errs, fmt.Errorf("secret %q: duplicate name", r.name))
			continue
		}
		snap.Secrets[r.name] = r.secret
	}

	for _, r := range routes {
		rt := r.route
		if _, dup := snap.Routes[rt.Name]; dup {
			errs = append(errs, fmt.Errorf("route configuration %q: duplicate name", rt.Name))
			continue
		}
		snap.Routes[rt.Name] = rt
	}

	names := make(map[string]bool, len(listeners))
	addrs := make(map[string]string, len(listeners))
	for _, r := range listeners {
		cl, inline := r.listener, r.route
		if cl == nil {
			continue
		}
		if names[cl.Name] {
			errs = append(errs, fmt.Errorf("listener %q: duplicate name", cl.Name))
			continue
		}
		names[cl.Name] = true
		if other, ok := addrs[cl.Address]; ok {
			errs = append(errs, fmt.Errorf("listener %q: address %q already used by listener %q", cl.Name, cl.Address, other))
			continue
		}
		addrs[cl.Address] = cl.Name
		if inline != nil {
			key := inlineRoutePrefix + cl.Name
			if _, dup := snap.Routes[key]; dup {
				errs = append(errs, fmt.Errorf("listener %q: inline route_config key %q collides with a route configuration", cl.Name, key))
				continue
			}
			snap.Routes[key] = inline
			withKey := *cl
			withKey.RouteName = key
			cl = &withKey
		} else if cl.Kind == config.ListenerHTTP && snap.Routes[cl.RouteName] == nil {
			errs = append(errs, fmt.Errorf("listener %q: route configuration %q not present", cl.Name, cl.RouteName))
			continue
		}
		snap.Listeners = append(snap.Listeners, cl)
	}
	slices.SortFunc(snap.Listeners, func(a, b *config.Listener) int { return strings.Compare(a.Name, b.Name) })

	loads := make(map[string][]config.Endpoint, len(byType[TypeEndpoint]))
	for _, r := range byType[TypeEndpoint] {
		if _, dup := loads[r.name]; dup {
			errs = append(errs, fmt.Errorf("cluster load assignment %q: duplicate name", r.name))
			continue
		}
		loads[r.name] = r.endpoints
	}

	for _, r := range byType[TypeCluster] {
		cc := r.cluster
		if _, dup := snap.Clusters[cc.Name]; dup {
			errs = append(errs, fmt.Errorf("cluster %q: duplicate name", cc.Name))
			continue
		}
		if r.dependency != "" {
			// Endpoint slices are immutable too, so they are shared
			// unless TLS flags must be cleared.
			withEndpoints := *cc
			withEndpoints.Endpoints = loads[r.dependency]
			if cc.TLS == nil {
				withEndpoints.Endpoints = withoutTLS(withEndpoints.Endpoints)
			}
			cc = &withEndpoints
		}
		snap.Clusters[cc.Name] = cc
	}

	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return snap, nil
}

// ValidateListener checks l against its proto rules and the subset the
// proxy supports. The error names the listener and the field.
func ValidateListener(l *listenerv3.Listener) error {
	_, _, err := convertListener(l)
	return err
}

// ValidateRouteConfiguration checks r against its proto rules and the subset
// the proxy supports. The error names the route configuration and the field.
func ValidateRouteConfiguration(r *routev3.RouteConfiguration) error {
	_, err := convertRouteConfiguration(r)
	return err
}

// ValidateSecret checks s against its proto rules and the subset the proxy
// supports (the trust bundle). The error names the secret and the field.
func ValidateSecret(s *tlsv3.Secret) error {
	_, err := convertSecret(s)
	return err
}

// ValidateCluster checks c against its proto rules and the subset the proxy
// supports. The error names the cluster and the field.
func ValidateCluster(c *clusterv3.Cluster) error {
	_, _, err := convertCluster(c)
	return err
}

// ValidateClusterLoadAssignment checks a against its proto rules and the
// subset the proxy supports. The error names the assignment and the field.
func ValidateClusterLoadAssignment(a *endpointv3.ClusterLoadAssignment) error {
	_, err := convertClusterLoadAssignment(a)
	return err
}

// convertListener returns the listener and, for an inline route_config, its
// table. A nil listener with a nil error means "not a socket, skip".
func convertListener(l *listenerv3.Listener) (*config.Listener, *config.RouteTable, error) {
	if l == nil {
		return nil, nil, errors.New("listener: nil")
	}
	wrap := func(err error) error { return fmt.Errorf("listener %q: %w", l.GetName(), err) }
	if err := l.ValidateAll(); err != nil {
		return nil, nil, wrap(err)
	}
	if l.GetName() == "" {
		return nil, nil, wrap(errors.New("name: required"))
	}
	if l.GetApiListener() != nil {
		return nil, nil, nil
	}
	addr, err := socketAddress(l.GetAddress())
	if err != nil {
		return nil, nil, wrap(fmt.Errorf("address: %w", err))
	}
	if len(l.GetAdditionalAddresses()) > 0 {
		return nil, nil, wrap(errors.New("additional_addresses: unsupported"))
	}
	if l.GetDefaultFilterChain() != nil {
		return nil, nil, wrap(errors.New("default_filter_chain: unsupported"))
	}
	// Serving plain text where TLS was asked for would be worse than
	// refusing the listener: convertFilterChains accepts only the shapes
	// it can honour.
	at, downstream, err := convertFilterChains(l.GetFilterChains())
	if err != nil {
		return nil, nil, wrap(err)
	}
	fc := l.GetFilterChains()[at]
	chain := fmt.Sprintf("filter_chains[%d]", at)
	out := &config.Listener{Name: l.GetName(), Address: addr, TLS: downstream}
	var inline *config.RouteTable
	filters := fc.GetFilters()
	var errs []error
	if err := convertListenerMetadata(l, out); err != nil {
		errs = append(errs, err)
	}
	var authzFilters []*listenerv3.Filter
	bandwidthAt, terminalAt := -1, -1
	for i, f := range filters {
		path := fmt.Sprintf("%s.filters[%d]", chain, i)
		tc := f.GetTypedConfig()
		if !isAuthzNetworkFilter(f) && !isBandwidthFilter(f) {
			terminalAt = i
		}
		switch {
		case isAuthzNetworkFilter(f):
			authzFilters = append(authzFilters, f)
		case isBandwidthFilter(f):
			if bandwidthAt >= 0 {
				errs = append(errs, fmt.Errorf("%s: duplicate tcp_bandwidth_limit filter", path))
				continue
			}
			bandwidthAt = i
			bps, err := convertBandwidth(f, path+".")
			if err != nil {
				errs = append(errs, err)
				continue
			}
			out.Traffic = &config.ListenerTraffic{BandwidthBytesPerSecond: bps}
		case tc != nil && tc.MessageIs(&hcmv3.HttpConnectionManager{}):
			hcm := &hcmv3.HttpConnectionManager{}
			if err := tc.UnmarshalTo(hcm); err != nil {
				errs = append(errs, fmt.Errorf("%s.typed_config: decode: %w", path, err))
				continue
			}
			rt, err := convertHCM(hcm, out)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s.%w", path, err))
				continue
			}
			inline = rt
		case tc != nil && tc.MessageIs(&tcpproxyv3.TcpProxy{}):
			tp := &tcpproxyv3.TcpProxy{}
			if err := tc.UnmarshalTo(tp); err != nil {
				errs = append(errs, fmt.Errorf("%s.typed_config: decode: %w", path, err))
				continue
			}
			if err := tp.ValidateAll(); err != nil {
				errs = append(errs, fmt.Errorf("%s.typed_config: %w", path, err))
				continue
			}
			if tp.GetCluster() == "" {
				errs = append(errs, fmt.Errorf("%s.typed_config.cluster: required (weighted_clusters is unsupported)", path))
				continue
			}
			if err := convertAccessLogs(tp.GetAccessLog(), false, out, path+".typed_config.access_log"); err != nil {
				errs = append(errs, err)
				continue
			}
			out.Kind = config.ListenerTCP
			out.Cluster = tp.GetCluster()
			out.StatPrefix = tp.GetStatPrefix()
		case tc == nil && f.GetConfigDiscovery() == nil && f.GetName() == "":
			errs = append(errs, fmt.Errorf("%s.typed_config: required", path))
		default:
			name := f.GetName()
			if name == "" && tc != nil {
				name = tc.GetTypeUrl()
			}
			errs = append(errs, fmt.Errorf("%s: unsupported filter %q", path, name))
		}
	}
	if len(errs) > 0 {
		return nil, nil, wrap(errors.Join(errs...))
	}
	nonTerminal := len(authzFilters)
	if bandwidthAt >= 0 {
		nonTerminal++
	}
	if n := len(filters) - nonTerminal; n != 1 {
		return nil, nil, wrap(fmt.Errorf("%s.filters: want exactly 1 terminal filter, got %d", chain, n))
	}
	if bandwidthAt >= 0 && (out.Kind != config.ListenerTCP || bandwidthAt > terminalAt) {
		return nil, nil, wrap(fmt.Errorf("%s.filters[%d]: tcp_bandwidth_limit is supported before tcp_proxy only", chain, bandwidthAt))
	}
	if len(authzFilters) > 0 {
		if out.Kind != config.ListenerTCP {
			return nil, nil, wrap(fmt.Errorf("%s.filters: network RBAC is supported before tcp_proxy only", chain))
		}
		eng, err := compileAuthz(nil, authzFilters)
		if err != nil {
			return nil, nil, wrap(fmt.Errorf("%s.filters%w", chain, err))
		}
		out.Authz = eng
	}
	return out, inline, nil
}

func isEmptyFilterChainMatch(m *listenerv3.FilterChainMatch) bool {
	return m.GetDestinationPort() == nil && len(m.GetPrefixRanges()) == 0 && m.GetAddressSuffix() == "" &&
		m.GetSuffixLen() == nil && len(m.GetDirectSourcePrefixRanges()) == 0 && m.GetSourceType() == listenerv3.FilterChainMatch_ANY &&
		len(m.GetSourcePrefixRanges()) == 0 && len(m.GetSourcePorts()) == 0 && len(m.GetServerNames()) == 0 &&
		m.GetTransportProtocol() == "" && len(m.GetApplicationProtocols()) == 0
}

// convertHCM fills out from an http_connection_manager. Errors start with
// "typed_config", the filter's field holding it.
func convertHCM(hcm *hcmv3.HttpConnectionManager, out *config.Listener) (*config.RouteTable, error) {
	rt, err := convertHCMBody(hcm, out)
	if err != nil {
		return nil, fmt.Errorf("typed_config%w", err)
	}
	return rt, nil
}

// convertHCMBody errors start with ": " or ".field" so that they read well
// after "typed_config".
func convertHCMBody(hcm *hcmv3.HttpConnectionManager, out *config.Listener) (*config.RouteTable, error) {
	if err := hcm.ValidateAll(); err != nil {
		return nil, fmt.Errorf(": %w", err)
	}
	out.Kind = config.ListenerHTTP
	out.StatPrefix = hcm.GetStatPrefix()
	if hcm.GetCodecType() == hcmv3.HttpConnectionManager_HTTP3 {
		return nil, errors.New(".codec_type: HTTP3 unsupported")
	}
	if err := checkHCMUpgrades(hcm); err != nil {
		return nil, err
	}
	if err := convertHCMTelemetry(hcm, out); err != nil {
		return nil, err
	}
	routerAt := -1
	var authzFilters []*hcmv3.HttpFilter
	traffic := map[string]bool{}
	for i, hf := range hcm.GetHttpFilters() {
		tc := hf.GetTypedConfig()
		isRouter := (tc != nil && tc.MessageIs(&routerv3.Router{})) ||
			(tc == nil && hf.GetConfigDiscovery() == nil && hf.GetName() == routerFilterName)
		switch {
		case isAuthzHTTPFilter(hf):
			authzFilters = append(authzFilters, hf)
		case trafficHTTPFilter(hf):
			if err := convertTrafficHTTPFilter(hf, out, traffic, fmt.Sprintf(".http_filters[%d].", i)); err != nil {
				return nil, err
			}
		case isRouter:
			if routerAt >= 0 {
				return nil, fmt.Errorf(".http_filters[%d]: duplicate router", i)
			}
			routerAt = i
		case hf.GetIsOptional():
			// Envoy's contract for optional filters: skip if unsupported.
		default:
			return nil, fmt.Errorf(".http_filters[%d]: unsupported http filter %q", i, hf.GetName())
		}
	}
	if routerAt < 0 {
		return nil, errors.New(".http_filters: router filter required")
	}
	if routerAt != len(hcm.GetHttpFilters())-1 {
		return nil, fmt.Errorf(".http_filters[%d]: router must be the last filter", routerAt)
	}
	if len(authzFilters) > 0 {
		eng, err := compileAuthz(authzFilters, nil)
		if err != nil {
			return nil, fmt.Errorf(".http_filters%w", err)
		}
		out.Authz = eng
	}
	switch rs := hcm.GetRouteSpecifier().(type) {
	case *hcmv3.HttpConnectionManager_Rds:
		cs := rs.Rds.GetConfigSource()
		if cs.GetAds() == nil && cs.GetSelf() == nil {
			return nil, errors.New(".rds.config_source: only ads is supported")
		}
		if rs.Rds.GetRouteConfigName() == "" {
			return nil, errors.New(".rds.route_config_name: required")
		}
		out.RouteName = rs.Rds.GetRouteConfigName()
		return nil, nil
	case *hcmv3.HttpConnectionManager_RouteConfig:
		rt, err := convertRouteConfigurationBody(rs.RouteConfig)
		if err != nil {
			return nil, fmt.Errorf(".route_config.%w", err)
		}
		return rt, nil
	default:
		return nil, errors.New(".route_specifier: only rds and route_config are supported")
	}
}

func convertRouteConfiguration(r *routev3.RouteConfiguration) (*config.RouteTable, error) {
	if r == nil {
		return nil, errors.New("route configuration: nil")
	}
	wrap := func(err error) error { return fmt.Errorf("route configuration %q: %w", r.GetName(), err) }
	if err := r.ValidateAll(); err != nil {
		return nil, wrap(err)
	}
	if r.GetName() == "" {
		return nil, wrap(errors.New("name: required"))
	}
	rt, err := convertRouteConfigurationBody(r)
	if err != nil {
		return nil, wrap(err)
	}
	return rt, nil
}

// convertRouteConfigurationBody converts an already proto-validated route
// configuration. Errors start with a field path.
func convertRouteConfigurationBody(r *routev3.RouteConfiguration) (*config.RouteTable, error) {
	if r.GetVhds() != nil {
		return nil, errors.New("vhds: unsupported")
	}
	rt := &config.RouteTable{Name: r.GetName()}
	var errs []error
	if err := refuseTableTraffic(r); err != nil {
		return nil, err
	}
	for i, vh := range r.GetVirtualHosts() {
		if err := refuseVirtualHostTraffic(vh, fmt.Sprintf("virtual_hosts[%d].", i)); err != nil {
			errs = append(errs, err)
			continue
		}
		cvh := &config.VirtualHost{Name: vh.GetName(), Domains: slices.Clone(vh.GetDomains())}
		for j, route := range vh.GetRoutes() {
			cr, err := convertRoute(route)
			if err != nil {
				errs = append(errs, fmt.Errorf("virtual_hosts[%d].routes[%d].%w", i, j, err))
				continue
			}
			cvh.Routes = append(cvh.Routes, cr)
		}
		rt.VirtualHosts = append(rt.VirtualHosts, cvh)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return rt, nil
}

// convertRoute errors start with a field path relative to the route.
func convertRoute(r *routev3.Route) (*config.Route, error) {
	out := &config.Route{Name: r.GetName()}
	m, err := convertRouteMatch(r.GetMatch())
	if err != nil {
		return nil, fmt.Errorf("match.%w", err)
	}
	out.Match = m
	switch a := r.GetAction().(type) {
	case *routev3.Route_Route:
		if err := convertRouteAction(a.Route, out); err != nil {
			return nil, fmt.Errorf("route.%w", err)
		}
	case *routev3.Route_Redirect:
		rd, err := convertRedirect(a.Redirect, out.Match)
		if err != nil {
			return nil, fmt.Errorf("redirect.%w", err)
		}
		routeTraffic(out).Redirect = rd
	case *routev3.Route_DirectResponse:
		dr := &config.DirectResponse{Status: int(a.DirectResponse.GetStatus())}
		if b := a.DirectResponse.GetBody(); b != nil {
			switch s := b.GetSpecifier().(type) {
			case *corev3.DataSource_InlineString:
				dr.Body = s.InlineString
			case *corev3.DataSource_InlineBytes:
				dr.Body = string(s.InlineBytes)
			default:
				return nil, errors.New("direct_response.body: only inline_string and inline_bytes are supported")
			}
		}
		out.DirectResponse = dr
	case nil:
		return nil, errors.New("action: required")
	default:
		return nil, fmt.Errorf("action: unsupported action %s", actionName(r))
	}
	if err := convertRouteTraffic(r, out); err != nil {
		return nil, err
	}
	return out, nil
}

func actionName(r *routev3.Route) string {
	switch {
	case r.GetFilterAction() != nil:
		return `"filter_action"`
	case r.GetNonForwardingAction() != nil:
		return `"non_forwarding_action"`
	}
	return fmt.Sprintf("%T", r.GetAction())
}

func convertRouteAction(a *routev3.RouteAction, out *config.Route) error {
	switch cs := a.GetClusterSpecifier().(type) {
	case *routev3.RouteAction_Cluster:
		out.Clusters = []config.WeightedCluster{{Name: cs.Cluster, Weight: 1}}
		out.TotalWeight = 1
	case *routev3.RouteAction_WeightedClusters:
		var total uint64
		for i, wc := range cs.WeightedClusters.GetClusters() {
			if wc.GetName() == "" {
				return fmt.Errorf("weighted_clusters.clusters[%d].name: required (cluster_header is unsupported)", i)
			}
			w := wc.GetWeight().GetValue()
			total += uint64(w)
			out.Clusters = append(out.Clusters, config.WeightedCluster{Name: wc.GetName(), Weight: w})
		}
		if total == 0 {
			return errors.New("weighted_clusters: total weight must be positive")
		}
		if total > math.MaxUint32 {
			return fmt.Errorf("weighted_clusters: total weight %d exceeds %d", total, uint64(math.MaxUint32))
		}
		out.TotalWeight = uint32(total)
	case *routev3.RouteAction_ClusterHeader:
		return errors.New(`cluster_specifier: unsupported cluster specifier "cluster_header"`)
	case *routev3.RouteAction_ClusterSpecifierPlugin:
		return errors.New(`cluster_specifier: unsupported cluster specifier "cluster_specifier_plugin"`)
	case *routev3.RouteAction_InlineClusterSpecifierPlugin:
		return errors.New(`cluster_specifier: unsupported cluster specifier "inline_cluster_specifier_plugin"`)
	default:
		return errors.New("cluster_specifier: required")
	}
	out.Timeout = defaultRouteTimeout
	if t := a.GetTimeout(); t != nil {
		d, err := duration(t)
		if err != nil {
			return fmt.Errorf("timeout: %w", err)
		}
		out.Timeout = d
	}
	if err := checkRouteUpgrades(a, out.Match); err != nil {
		return err
	}
	return convertRouteActionTraffic(a, out)
}

func duration(d *durationpb.Duration) (time.Duration, error) {
	if err := d.CheckValid(); err != nil {
		return 0, err
	}
	v := d.AsDuration()
	if v < 0 {
		return 0, fmt.Errorf("invalid value %s: must not be negative", v)
	}
	return v, nil
}

// convertRouteMatch errors start with a field path relative to the match.
func convertRouteMatch(m *routev3.RouteMatch) (config.RouteMatch, error) {
	var out config.RouteMatch
	if cs := m.GetCaseSensitive(); cs != nil && !cs.GetValue() {
		return out, errors.New("case_sensitive: false is unsupported")
	}
	switch {
	case m.GetRuntimeFraction() != nil:
		return out, errors.New("runtime_fraction: unsupported")
	case m.GetGrpc() != nil:
		return out, errors.New("grpc: unsupported")
	case m.GetTlsContext() != nil:
		return out, errors.New("tls_context: unsupported")
	case len(m.GetDynamicMetadata()) > 0:
		return out, errors.New("dynamic_metadata: unsupported")
	case len(m.GetCookies()) > 0:
		return out, errors.New("cookies: unsupported")
	case len(m.GetFilterState()) > 0:
		return out, errors.New("filter_state: unsupported")
	}
	switch p := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		out.Prefix = p.Prefix
		if out.Prefix == "" {
			out.Prefix = "/"
		}
	case *routev3.RouteMatch_Path:
		out.Path = p.Path
	case *routev3.RouteMatch_SafeRegex:
		re, err := compileAnchored(p.SafeRegex.GetRegex())
		if err != nil {
			return out, fmt.Errorf("safe_regex.regex: %w", err)
		}
		out.Regex = re
	case *routev3.RouteMatch_PathSeparatedPrefix:
		// PGV already refuses "?", "#" and a trailing "/".
		out.PathSeparatedPrefix = p.PathSeparatedPrefix
	case *routev3.RouteMatch_ConnectMatcher_:
		out = connectMatch() // httpproxy.go
	case *routev3.RouteMatch_PathMatchPolicy:
		return out, errors.New(`path_specifier: unsupported path specifier "path_match_policy"`)
	default:
		return out, errors.New("path_specifier: required")
	}
	for i, h := range m.GetHeaders() {
		hm, err := convertHeaderMatcher(h)
		if err != nil {
			return out, fmt.Errorf("headers[%d].%w", i, err)
		}
		out.Headers = append(out.Headers, hm)
	}
	for i, q := range m.GetQueryParameters() {
		qm := config.QueryParamMatch{Name: q.GetName()}
		switch s := q.GetQueryParameterMatchSpecifier().(type) {
		case *routev3.QueryParameterMatcher_PresentMatch:
			if !s.PresentMatch {
				return out, fmt.Errorf("query_parameters[%d].present_match: false is unsupported", i)
			}
			qm.Present = true
		case *routev3.QueryParameterMatcher_StringMatch:
			exact, re, err := convertStringMatcher(s.StringMatch)
			if err != nil {
				return out, fmt.Errorf("query_parameters[%d].string_match.%w", i, err)
			}
			qm.Exact, qm.Regex = exact, re
		default:
			return out, fmt.Errorf("query_parameters[%d]: string_match or present_match required", i)
		}
		out.QueryParams = append(out.QueryParams, qm)
	}
	return out, nil
}

// convertHeaderMatcher errors start with a field path relative to the matcher.
func convertHeaderMatcher(h *routev3.HeaderMatcher) (config.HeaderMatch, error) {
	out := config.HeaderMatch{Name: strings.ToLower(h.GetName()), Invert: h.GetInvertMatch()}
	if h.GetTreatMissingHeaderAsEmpty() {
		return out, errors.New("treat_missing_header_as_empty: unsupported")
	}
	var err error
	switch s := h.GetHeaderMatchSpecifier().(type) {
	case *routev3.HeaderMatcher_ExactMatch:
		out.Exact = s.ExactMatch
	case *routev3.HeaderMatcher_SafeRegexMatch:
		if out.Regex, err = compileAnchored(s.SafeRegexMatch.GetRegex()); err != nil {
			return out, fmt.Errorf("safe_regex_match.regex: %w", err)
		}
	case *routev3.HeaderMatcher_PresentMatch:
		// present_match: false means "absent", which is Present inverted.
		out.Present = true
		if !s.PresentMatch {
			out.Invert = !out.Invert
		}
	case *routev3.HeaderMatcher_PrefixMatch:
		out.Regex = regexp.MustCompile("^" + regexp.QuoteMeta(s.PrefixMatch))
	case *routev3.HeaderMatcher_SuffixMatch:
		out.Regex = regexp.MustCompile(regexp.QuoteMeta(s.SuffixMatch) + "$")
	case *routev3.HeaderMatcher_ContainsMatch:
		out.Regex = regexp.MustCompile(regexp.QuoteMeta(s.ContainsMatch))
	case *routev3.HeaderMatcher_StringMatch:
		if out.Exact, out.Regex, err = convertStringMatcher(s.StringMatch); err != nil {
			return out, fmt.Errorf("string_match.%w", err)
		}
	case *routev3.HeaderMatcher_RangeMatch:
		return out, errors.New("range_match: unsupported")
	default:
		// No specifier: Envoy matches when the header is present.
		out.Present = true
	}
	return out, nil
}

// convertStringMatcher maps a StringMatcher to an exact string, or to an
// anchored regexp for every other kind (prefix, suffix, contains,
// ignore_case), so the data path has only two cases. Errors start with a
// field path relative to the matcher.
func convertStringMatcher(s *matcherv3.StringMatcher) (string, *regexp.Regexp, error) {
	flags := ""
	if s.GetIgnoreCase() {
		flags = "(?i)"
	}
	var expr string
	switch p := s.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		if flags == "" {
			return p.Exact, nil, nil
		}
		expr = "^" + regexp.QuoteMeta(p.Exact) + "$"
	case *matcherv3.StringMatcher_Prefix:
		expr = "^" + regexp.QuoteMeta(p.Prefix)
	case *matcherv3.StringMatcher_Suffix:
		expr = regexp.QuoteMeta(p.Suffix) + "$"
	case *matcherv3.StringMatcher_Contains:
		expr = regexp.QuoteMeta(p.Contains)
	case *matcherv3.StringMatcher_SafeRegex:
		re, err := compileAnchored(p.SafeRegex.GetRegex())
		if err != nil {
			return "", nil, fmt.Errorf("safe_regex.regex: %w", err)
		}
		if flags == "" {
			return "", re, nil
		}
		expr = "^(?:" + p.SafeRegex.GetRegex() + ")$"
	default:
		return "", nil, errors.New("match_pattern: unsupported")
	}
	re, err := regexp.Compile(flags + expr)
	if err != nil {
		return "", nil, fmt.Errorf("match_pattern: %w", err)
	}
	return "", re, nil
}

// compileAnchored compiles an RE2 expression for a full match, as Envoy's
// safe_regex requires; Go's regexp is RE2 too.
func compileAnchored(expr string) (*regexp.Regexp, error) {
	re, err := regexp.Compile("^(?:" + expr + ")$")
	if err != nil {
		return nil, fmt.Errorf("invalid regex %q: %w", expr, err)
	}
	return re, nil
}

// convertCluster returns the cluster and the EDS service name it waits for
// ("" for STATIC).
func convertCluster(c *clusterv3.Cluster) (*config.Cluster, string, error) {
	if c == nil {
		return nil, "", errors.New("cluster: nil")
	}
	wrap := func(err error) error { return fmt.Errorf("cluster %q: %w", c.GetName(), err) }
	if err := c.ValidateAll(); err != nil {
		return nil, "", wrap(err)
	}
	if c.GetName() == "" {
		return nil, "", wrap(errors.New("name: required"))
	}
	out := &config.Cluster{Name: c.GetName(), Protocol: config.UpstreamHTTP1, ConnectTimeout: defaultConnectTimeout}
	upstream, err := convertClusterTLS(c)
	if err != nil {
		return nil, "", wrap(err)
	}
	out.TLS = upstream
	if err := convertClusterLB(c, out); err != nil {
		return nil, "", wrap(err)
	}
	if err := convertClusterTraffic(c, out); err != nil {
		return nil, "", wrap(err)
	}
	if t := c.GetConnectTimeout(); t != nil {
		d, err := duration(t)
		if err != nil {
			return nil, "", wrap(fmt.Errorf("connect_timeout: %w", err))
		}
		if d > 0 {
			out.ConnectTimeout = d
		}
	}
	// The deprecated field still selects HTTP/2 in Envoy.
	if c.GetHttp2ProtocolOptions() != nil {
		out.Protocol = config.UpstreamHTTP2
	}
	if o, ok := c.GetTypedExtensionProtocolOptions()[httpProtocolOptionsKey]; ok {
		opts := &upstreamhttpv3.HttpProtocolOptions{}
		if err := o.UnmarshalTo(opts); err != nil {
			return nil, "", wrap(fmt.Errorf("typed_extension_protocol_options[%q]: decode: %w", httpProtocolOptionsKey, err))
		}
		if err := opts.ValidateAll(); err != nil {
			return nil, "", wrap(fmt.Errorf("typed_extension_protocol_options[%q]: %w", httpProtocolOptionsKey, err))
		}
		explicit := opts.GetExplicitHttpConfig()
		switch {
		case explicit.GetHttp2ProtocolOptions() != nil:
			out.Protocol = config.UpstreamHTTP2
		case explicit.GetHttpProtocolOptions() != nil:
			out.Protocol = config.UpstreamHTTP1
		case opts.GetAutoConfig() != nil:
			// Envoy picks by ALPN: TLS endpoints negotiate what
			// Cluster.TLS.ALPN offers (h2), plaintext ones speak
			// HTTP/1.1, which is what Protocol describes.
			out.Protocol = config.UpstreamHTTP1
		default:
			return nil, "", wrap(fmt.Errorf("typed_extension_protocol_options[%q]: only explicit_http_config with http_protocol_options or http2_protocol_options, or auto_config, is supported", httpProtocolOptionsKey))
		}
	}
	if c.GetClusterType() != nil {
		return nil, "", wrap(errors.New("cluster_type: unsupported"))
	}
	switch c.GetType() {
	case clusterv3.Cluster_EDS:
		eds := c.GetEdsClusterConfig()
		if eds == nil {
			return nil, "", wrap(errors.New("eds_cluster_config: required for type EDS"))
		}
		if cs := eds.GetEdsConfig(); cs != nil && cs.GetAds() == nil && cs.GetSelf() == nil {
			return nil, "", wrap(errors.New("eds_cluster_config.eds_config: only ads is supported"))
		}
		name := eds.GetServiceName()
		if name == "" {
			name = c.GetName()
		}
		return out, name, nil
	case clusterv3.Cluster_STATIC, clusterv3.Cluster_STRICT_DNS:
		// STRICT_DNS endpoints keep their host names; the proxy resolves
		// them at each connection rather than on Envoy's refresh timer.
		if c.GetLoadAssignment() == nil {
			return nil, "", wrap(fmt.Errorf("load_assignment: required for type %s", c.GetType()))
		}
		eps, err := convertEndpoints(c.GetLoadAssignment())
		if err != nil {
			return nil, "", wrap(fmt.Errorf("load_assignment.%w", err))
		}
		if out.TLS == nil {
			eps = withoutTLS(eps)
		}
		out.Endpoints = eps
		return out, "", nil
	default:
		return nil, "", wrap(fmt.Errorf("type: unsupported discovery type %s", c.GetType()))
	}
}

func convertClusterLoadAssignment(a *endpointv3.ClusterLoadAssignment) ([]config.Endpoint, error) {
	if a == nil {
		return nil, errors.New("cluster load assignment: nil")
	}
	wrap := func(err error) error { return fmt.Errorf("cluster load assignment %q: %w", a.GetClusterName(), err) }
	if err := a.ValidateAll(); err != nil {
		return nil, wrap(err)
	}
	eps, err := convertEndpoints(a)
	if err != nil {
		return nil, wrap(err)
	}
	return eps, nil
}

// convertEndpoints keeps the HEALTHY and UNKNOWN endpoints of every
// priority, each with its locality's priority, zone and region: the
// balancer (proxy/balancer) sends traffic to the lowest level and spills to
// the next as a level loses its endpoints, as Envoy does. Locality weights
// are ignored, as Envoy does without locality_weighted_lb_config. Errors
// start with a field path.
func convertEndpoints(a *endpointv3.ClusterLoadAssignment) ([]config.Endpoint, error) {
	var out []config.Endpoint
	for i, le := range a.GetEndpoints() {
		if le.GetLbConfig() != nil {
			return nil, fmt.Errorf("endpoints[%d].lb_config: unsupported", i)
		}
		zone, region := le.GetLocality().GetZone(), le.GetLocality().GetRegion()
		for j, lb := range le.GetLbEndpoints() {
			path := fmt.Sprintf("endpoints[%d].lb_endpoints[%d]", i, j)
			ep := lb.GetEndpoint()
			if ep == nil {
				return nil, fmt.Errorf("%s.endpoint: required (endpoint_name is unsupported)", path)
			}
			if len(ep.GetAdditionalAddresses()) > 0 {
				return nil, fmt.Errorf("%s.endpoint.additional_addresses: unsupported", path)
			}
			addr, err := socketAddress(ep.GetAddress())
			if err != nil {
				return nil, fmt.Errorf("%s.endpoint.address: %w", path, err)
			}
			switch lb.GetHealthStatus() {
			case corev3.HealthStatus_HEALTHY, corev3.HealthStatus_UNKNOWN:
			default:
				continue
			}
			w := uint32(1)
			if lw := lb.GetLoadBalancingWeight(); lw != nil {
				w = lw.GetValue()
			}
			if w == 0 {
				return nil, fmt.Errorf("%s.load_balancing_weight: must be at least 1", path)
			}
			out = append(out, config.Endpoint{Address: addr, Weight: w, TLS: endpointTLS(lb), Priority: le.GetPriority(), Zone: zone, Region: region})
		}
	}
	return out, nil
}

// socketAddress renders a socket_address as host:port. Errors start with a
// field path relative to the Address.
func socketAddress(a *corev3.Address) (string, error) {
	sa := a.GetSocketAddress()
	if sa == nil {
		return "", errors.New("socket_address: required")
	}
	if sa.GetProtocol() != corev3.SocketAddress_TCP {
		return "", fmt.Errorf("socket_address.protocol: unsupported protocol %s", sa.GetProtocol())
	}
	if sa.GetResolverName() != "" {
		return "", errors.New("socket_address.resolver_name: unsupported")
	}
	if _, ok := sa.GetPortSpecifier().(*corev3.SocketAddress_PortValue); !ok {
		return "", errors.New("socket_address.port_value: required")
	}
	if sa.GetAddress() == "" {
		return "", errors.New("socket_address.address: required")
	}
	return net.JoinHostPort(sa.GetAddress(), strconv.FormatUint(uint64(sa.GetPortValue()), 10)), nil
}
