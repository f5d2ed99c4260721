package translate

import (
	"cmp"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"verge.dev/verge/api/v1alpha1"
)

// routeEntry is one (rule, match) of an attached route with the keys the
// Gateway API orders matches by.
type routeEntry struct {
	route *routev3.Route

	// HTTPRoute keys. Path rank: Exact 0, RegularExpression 1, PathPrefix 2.
	// The API leaves regex precedence to the implementation; between exact
	// and prefix (as Envoy Gateway does) keeps "/" from shadowing a regex.
	pathRank int
	pathLen  int
	method   bool
	query    int
	// GRPCRoute keys.
	exactMethod       bool // exact service and method
	svcLen, methodLen int

	headers int
	// ruleName is the rule's name ("" when unnamed), which policies select
	// routes by.
	ruleName string
	// Tie-breaks shared by both kinds.
	created     time.Time
	key         string // ns/name
	rule, match int
}

func compareHTTP(a, b routeEntry) int {
	return cmp.Or(
		cmp.Compare(a.pathRank, b.pathRank),
		-cmp.Compare(a.pathLen, b.pathLen),
		-compareBool(a.method, b.method),
		-cmp.Compare(a.headers, b.headers),
		-cmp.Compare(a.query, b.query),
		compareTies(a, b),
	)
}

func compareGRPC(a, b routeEntry) int {
	return cmp.Or(
		-compareBool(a.exactMethod, b.exactMethod),
		-cmp.Compare(a.svcLen, b.svcLen),
		-cmp.Compare(a.methodLen, b.methodLen),
		-cmp.Compare(a.headers, b.headers),
		compareTies(a, b),
	)
}

// compareTies: the older route, then ns/name, then rule and match order.
func compareTies(a, b routeEntry) int {
	return cmp.Or(
		a.created.Compare(b.created),
		strings.Compare(a.key, b.key),
		cmp.Compare(a.rule, b.rule),
		cmp.Compare(a.match, b.match),
	)
}

// buildRoutes builds an HTTP-ish port's routes and both route configs.
//
// GRPCRoutes attach to GRPC ports, HTTPRoutes to HTTP, HTTP2 and GRPC ports.
// The Gateway API forbids merging the two kinds, so on a GRPC port all
// GRPCRoute matches come first (in GRPCRoute precedence), then HTTPRoute
// matches (in HTTPRoute precedence). With no route attached the port routes
// everything to its own cluster; with routes attached only their matches
// route and the rest gets 404 (GAMMA).
func (ix *Index) buildRoutes(pi *portInfo) {
	si := pi.svc
	backends := map[string]*portInfo{}
	var grpcEntries, httpEntries []routeEntry
	attached := false
	if pi.port.Protocol == v1alpha1.ProtocolGRPC {
		seen := map[*v1alpha1.GRPCRoute]bool{}
		for _, a := range si.grpcRoutes {
			if !a.appliesTo(pi.port) || seen[a.route] {
				continue
			}
			seen[a.route] = true
			attached = true
			grpcEntries = append(grpcEntries, ix.grpcEntries(pi, a.route, backends)...)
		}
	}
	seen := map[*v1alpha1.HTTPRoute]bool{}
	for _, a := range si.httpRoutes {
		if !a.appliesTo(pi.port) || seen[a.route] {
			continue
		}
		seen[a.route] = true
		attached = true
		httpEntries = append(httpEntries, ix.httpEntries(pi, a.route, backends)...)
	}
	slices.SortFunc(grpcEntries, compareGRPC)
	slices.SortFunc(httpEntries, compareHTTP)

	if attached {
		pi.routes = make([]*routev3.Route, 0, len(grpcEntries)+len(httpEntries))
		pi.ruleNames = make([]string, 0, cap(pi.routes))
		for _, e := range slices.Concat(grpcEntries, httpEntries) {
			pi.routes = append(pi.routes, e.route)
			pi.ruleNames = append(pi.ruleNames, e.ruleName)
		}
	} else {
		// The port's own cluster, with the traffic controls of an unnamed rule.
		ref := gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{
			Name: gatewayv1.ObjectName(si.name), Namespace: new(gatewayv1.Namespace(si.ns)), Port: new(pi.port.Port),
		}}
		tmpl := ix.ruleRoute(pi, si.ns, []gatewayv1.BackendRef{ref}, ruleSpec{}, backends)
		pi.routes = []*routev3.Route{withMatch(tmpl, "default", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}})}
		pi.ruleNames = []string{""}
	}
	pi.faults = hasFault(pi.routes)
	for _, b := range backends {
		pi.backends = append(pi.backends, b)
	}
	slices.SortFunc(pi.backends, func(a, b *portInfo) int { return strings.Compare(a.name, b.name) })

	pi.outbound = routeConfig(pi.name, []string{"*"}, pi.routes)
	host, _, _ := strings.Cut(pi.name, ":")
	pi.proxyless = routeConfig(pi.name, []string{pi.name, host}, forGRPCClients(pi.routes))
}

func routeConfig(name string, domains []string, routes []*routev3.Route) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{
		Name: name,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    name,
			Domains: domains,
			Routes:  routes,
		}},
	}
}

// forGRPCClients rewrites what grpc-go cannot read: it NACKs a whole route
// configuration holding a path_separated_prefix, so those become the
// equivalent full-match regex. Routes are shared when nothing changes.
func forGRPCClients(routes []*routev3.Route) []*routev3.Route {
	var out []*routev3.Route
	for i, r := range routes {
		p, ok := r.GetMatch().GetPathSpecifier().(*routev3.RouteMatch_PathSeparatedPrefix)
		if !ok {
			if out != nil {
				out = append(out, r)
			}
			continue
		}
		if out == nil {
			out = append(make([]*routev3.Route, 0, len(routes)), routes[:i]...)
		}
		nr := proto.CloneOf(r)
		nr.Match.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{
			Regex: regexp.QuoteMeta(p.PathSeparatedPrefix) + "(/.*)?",
		}}
		out = append(out, nr)
	}
	if out == nil {
		return routes
	}
	return out
}

func (ix *Index) httpEntries(parent *portInfo, r *v1alpha1.HTTPRoute, backends map[string]*portInfo) []routeEntry {
	var out []routeEntry
	key := r.Namespace + "/" + r.Name
	for ri, rule := range r.Spec.Rules {
		refs := make([]gatewayv1.BackendRef, len(rule.BackendRefs))
		for i, b := range rule.BackendRefs {
			refs[i] = b.BackendRef
		}
		rs := httpRuleSpec(&rule)
		tmpl := ix.ruleRoute(parent, r.Namespace, refs, rs, backends)
		matches := rule.Matches
		if len(matches) == 0 {
			matches = []gatewayv1.HTTPRouteMatch{{}}
		}
		for mi, m := range matches {
			e := routeEntry{
				created: r.CreationTimestamp.Time, key: key, rule: ri, match: mi, ruleName: rs.name,
				method: m.Method != nil, headers: len(m.Headers), query: len(m.QueryParams),
			}
			rm := &routev3.RouteMatch{}
			e.pathRank, e.pathLen = httpPath(m.Path, rm)
			for _, h := range m.Headers {
				rm.Headers = append(rm.Headers, headerMatcher(string(h.Name), h.Type != nil && *h.Type == gatewayv1.HeaderMatchRegularExpression, h.Value))
			}
			if m.Method != nil {
				rm.Headers = append(rm.Headers, headerMatcher(":method", false, string(*m.Method)))
			}
			for _, q := range m.QueryParams {
				rm.QueryParameters = append(rm.QueryParameters, &routev3.QueryParameterMatcher{
					Name: string(q.Name),
					QueryParameterMatchSpecifier: &routev3.QueryParameterMatcher_StringMatch{
						StringMatch: stringMatcher(q.Type != nil && *q.Type == gatewayv1.QueryParamMatchRegularExpression, q.Value),
					},
				})
			}
			e.route = withMatch(tmpl, entryName("httproute", key, ri, mi), rm)
			out = append(out, e)
		}
	}
	return out
}

// httpPath sets rm's path and returns its precedence rank and length.
// Gateway API prefixes match whole path elements ("/foo" matches "/foo/bar",
// not "/foobar"), which is Envoy's path_separated_prefix; it refuses a
// trailing "/", which the Gateway API ignores anyway.
func httpPath(p *gatewayv1.HTTPPathMatch, rm *routev3.RouteMatch) (rank, length int) {
	typ, val := gatewayv1.PathMatchPathPrefix, "/"
	if p != nil {
		if p.Type != nil {
			typ = *p.Type
		}
		if p.Value != nil {
			val = *p.Value
		}
	}
	switch typ {
	case gatewayv1.PathMatchExact:
		rm.PathSpecifier = &routev3.RouteMatch_Path{Path: val}
		return 0, len(val)
	case gatewayv1.PathMatchRegularExpression:
		rm.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: val}}
		return 1, len(val)
	}
	val = strings.TrimRight(val, "/")
	if val == "" {
		rm.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: "/"}
		return 2, 1
	}
	rm.PathSpecifier = &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: val}
	return 2, len(val)
}

func (ix *Index) grpcEntries(parent *portInfo, r *v1alpha1.GRPCRoute, backends map[string]*portInfo) []routeEntry {
	var out []routeEntry
	key := r.Namespace + "/" + r.Name
	for ri, rule := range r.Spec.Rules {
		refs := make([]gatewayv1.BackendRef, len(rule.BackendRefs))
		for i, b := range rule.BackendRefs {
			refs[i] = b.BackendRef
		}
		// GRPCRoute has no timeouts; streams must never be cut.
		rs := grpcRuleSpec(&rule)
		tmpl := ix.ruleRoute(parent, r.Namespace, refs, rs, backends)
		matches := rule.Matches
		if len(matches) == 0 {
			matches = []gatewayv1.GRPCRouteMatch{{}}
		}
		for mi, m := range matches {
			e := routeEntry{created: r.CreationTimestamp.Time, key: key, rule: ri, match: mi, ruleName: rs.name, headers: len(m.Headers)}
			rm := &routev3.RouteMatch{}
			e.exactMethod, e.svcLen, e.methodLen = grpcPath(m.Method, rm)
			for _, h := range m.Headers {
				rm.Headers = append(rm.Headers, headerMatcher(string(h.Name), h.Type != nil && *h.Type == gatewayv1.GRPCHeaderMatchRegularExpression, h.Value))
			}
			e.route = withMatch(tmpl, entryName("grpcroute", key, ri, mi), rm)
			out = append(out, e)
		}
	}
	return out
}

// grpcPath maps a method match onto the request path "/SERVICE/METHOD".
func grpcPath(mm *gatewayv1.GRPCMethodMatch, rm *routev3.RouteMatch) (exact bool, svcLen, methodLen int) {
	if mm == nil {
		rm.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: "/"}
		return false, 0, 0
	}
	svc, method := derefStr(mm.Service), derefStr(mm.Method)
	if mm.Type != nil && *mm.Type == gatewayv1.GRPCMethodMatchRegularExpression {
		rm.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{
			Regex: "/(?:" + cmp.Or(svc, "[^/]+") + ")/(?:" + cmp.Or(method, "[^/]+") + ")",
		}}
		return false, len(svc), len(method)
	}
	switch {
	case svc != "" && method != "":
		rm.PathSpecifier = &routev3.RouteMatch_Path{Path: "/" + svc + "/" + method}
		return true, len(svc), len(method)
	case svc != "":
		rm.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: "/" + svc + "/"}
	case method != "":
		rm.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "/[^/]+/" + regexp.QuoteMeta(method)}}
	default:
		rm.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: "/"}
	}
	return false, len(svc), len(method)
}

func derefStr(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// headerMatcher lower-cases the name: HTTP names are case-insensitive, and
// grpc-go never matches a name with upper case in it.
func headerMatcher(name string, regex bool, value string) *routev3.HeaderMatcher {
	return &routev3.HeaderMatcher{
		Name:                 strings.ToLower(name),
		HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: stringMatcher(regex, value)},
	}
}

func stringMatcher(regex bool, value string) *matcherv3.StringMatcher {
	if regex {
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: value}}}
	}
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: value}}
}

func entryName(kind, key string, rule, match int) string {
	return kind + "/" + key + "/rule/" + strconv.Itoa(rule) + "/match/" + strconv.Itoa(match)
}

type weighted struct {
	cluster string
	weight  uint32
}

// resolveBackends turns backendRefs into clusters, dropping weight-0 refs
// and merging repeats. A ref to a service port that does not exist still
// gets a cluster (with no endpoints, so its share of requests fails with 503)
// so that every cluster a route names is sent.
func (ix *Index) resolveBackends(routeNS string, refs []gatewayv1.BackendRef, backends map[string]*portInfo) []weighted {
	var out []weighted
	for _, ref := range refs {
		w := int32(1)
		if ref.Weight != nil {
			w = *ref.Weight
		}
		if w <= 0 || ref.Port == nil {
			continue
		}
		ns := cmp.Or(deref(ref.Namespace), routeNS)
		name := ClusterName(string(ref.Name), ns, *ref.Port)
		pi := ix.ports[name]
		if pi == nil {
			pi = &portInfo{
				name:    name,
				missing: true,
				port:    v1alpha1.ServicePort{Port: *ref.Port, Protocol: v1alpha1.ProtocolHTTP},
				cla:     &endpointv3.ClusterLoadAssignment{ClusterName: name},
			}
			pi.cluster, pi.proxylessCluster = ix.edsCluster(name, v1alpha1.ProtocolHTTP, nil, *ref.Port)
			ix.ports[name] = pi
		}
		backends[name] = pi
		if i := slices.IndexFunc(out, func(x weighted) bool { return x.cluster == name }); i >= 0 {
			out[i].weight += uint32(w)
			continue
		}
		out = append(out, weighted{name, uint32(w)})
	}
	return out
}

// routeTo forwards to one cluster or splits by weight; with no backend left
// it answers 500, as the Gateway API requires. A zero timeout disables
// Envoy's 15s default, which would cut gRPC streams.
//
// It returns a Route holding only the action, for callers to copy it from.
func routeTo(ws []weighted, timeout time.Duration) *routev3.Route {
	if len(ws) == 0 {
		return &routev3.Route{Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 500}}}
	}
	ra := &routev3.RouteAction{Timeout: durationpb.New(timeout)}
	if len(ws) == 1 {
		ra.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: ws[0].cluster}
	} else {
		wc := &routev3.WeightedCluster{}
		for _, w := range ws {
			wc.Clusters = append(wc.Clusters, &routev3.WeightedCluster_ClusterWeight{Name: w.cluster, Weight: wrapperspb.UInt32(w.weight)})
		}
		ra.ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: wc}
	}
	return &routev3.Route{Action: &routev3.Route_Route{Route: ra}}
}
