package translate

import (
	"cmp"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	exprpb "google.golang.org/genproto/googleapis/api/expr/v1alpha1"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"

	"verge.dev/verge/api/v1alpha1"
	"verge.dev/verge/internal/proxy/authz/celenv"
)

// AuthorizationPolicy translation, the Istio mapping:
//
//   - HTTP inbound listeners get, before the router: jwt_authn (when a policy
//     applying to the port has JWT providers; a missing token is allowed, a
//     bad one refused), then RBAC filters: LOG for AUDIT policies, DENY, and
//     ALLOW (present whenever an ALLOW policy applies, even one without
//     rules, so that unmatched requests are refused).
//   - TCP inbound listeners get network RBAC filters in the same order,
//     with L4 fields only. A rule with HTTP-only parts (paths, methods,
//     hosts, headers, when) is dropped from ALLOW and AUDIT policies (it
//     can never match a connection, so refusing is the safe reading) and,
//     in DENY policies, loses those parts and keeps the rest (denying more
//     is the safe reading).
//
// Each rule is one RBAC policy named "NS/POLICY/RULE" (RULE is the rule's
// name or "rules[i]") so that decisions name it. Sources become principals
// on the peer's SPIFFE ID (namespaces and service accounts as its prefix or
// exact value in the mesh's trust domain), JWT claims become metadata
// matchers on the jwt_authn filter's payload; operations become
// permissions. A rule's ports are the workload's application ports: each
// listener serves exactly one, so a port list is decided here (and, when it
// holds the listener's port, written as destination_port of the proxy's
// inbound port, the port connections reach). A rule's CEL condition becomes
// the policy's condition (the parsed expression, the field Envoy
// implements; the proxy type-checks it again with the same environment).
// On TCP a condition reading request.* is an HTTP-only part; one over
// source.* and destination.port stays.

const (
	rbacHTTPFilterName    = "envoy.filters.http.rbac"
	rbacNetworkFilterName = "envoy.filters.network.rbac"
	jwtFilterName         = "envoy.filters.http.jwt_authn"
	// jwtPayloadKey is where jwt_authn puts a verified token's payload.
	jwtPayloadKey = "jwt_payload"
	// jwksTimeout and jwksCacheDuration are a remote key set's fetch
	// timeout and refresh period.
	jwksTimeout       = 5 * time.Second
	jwksCacheDuration = 5 * time.Minute
)

// authzIndex holds AuthorizationPolicies by scope, each list sorted by
// namespace and name.
type authzIndex struct {
	trustDomain string
	mesh        []*v1alpha1.AuthorizationPolicy
	byNS        map[string][]*v1alpha1.AuthorizationPolicy
	byService   map[string][]*v1alpha1.AuthorizationPolicy // by "ns/name"
	// cel holds every rule's compiled condition by source, compiled once
	// per Mesh rather than once per listener.
	cel map[string]celCondition
}

// celCondition is a compiled CEL condition; expr is nil when the source
// does not compile (validation refuses it, so only a policy stored by
// an older Verge can get there).
type celCondition struct {
	expr         *exprpb.Expr
	readsRequest bool
}

func compileCEL(src string) celCondition {
	e, checked, err := celenv.Condition(src)
	if err != nil {
		return celCondition{}
	}
	return celCondition{expr: e, readsRequest: celenv.ReadsRequest(checked)}
}

func newAuthzIndex(m Mesh) authzIndex {
	ai := authzIndex{
		trustDomain: cmp.Or(m.TrustDomain, DefaultTrustDomain),
		byNS:        map[string][]*v1alpha1.AuthorizationPolicy{},
		byService:   map[string][]*v1alpha1.AuthorizationPolicy{},
		cel:         map[string]celCondition{},
	}
	for _, p := range m.AuthorizationPolicies {
		for _, r := range p.Spec.Rules {
			if _, ok := ai.cel[r.CEL]; r.CEL != "" && !ok {
				ai.cel[r.CEL] = compileCEL(r.CEL)
			}
		}
	}
	ps := slices.Clone(m.AuthorizationPolicies)
	slices.SortFunc(ps, func(a, b *v1alpha1.AuthorizationPolicy) int { return compareMeta(a, b) })
	for _, p := range ps {
		switch {
		case p.Spec.Service != "":
			k := p.Namespace + "/" + p.Spec.Service
			ai.byService[k] = append(ai.byService[k], p)
		case p.Namespace == v1alpha1.MeshNamespace:
			ai.mesh = append(ai.mesh, p)
		default:
			ai.byNS[p.Namespace] = append(ai.byNS[p.Namespace], p)
		}
	}
	return ai
}

// authzPolicies lists the policies applying to wl's appPort, sorted by
// namespace and name.
func (ix *Index) authzPolicies(wl *v1alpha1.Workload, appPort int32) []*v1alpha1.AuthorizationPolicy {
	ai := &ix.authz
	out := slices.Concat(ai.mesh, ai.byNS[wl.Namespace])
	if len(ai.byService) > 0 {
		for _, si := range ix.servicesSelecting(wl) {
			if !slices.ContainsFunc(si.svc.Spec.Ports, func(p v1alpha1.ServicePort) bool { return p.TargetPort == appPort }) {
				continue
			}
			out = append(out, ai.byService[si.key]...)
		}
	}
	slices.SortFunc(out, func(a, b *v1alpha1.AuthorizationPolicy) int { return compareMeta(a, b) })
	return out
}

// inboundPort is the proxy's listener port for appPort.
func inboundPort(wl *v1alpha1.Workload, appPort int32) int32 {
	for _, p := range wl.Spec.Ports {
		if p.Port == appPort {
			return p.InboundPort
		}
	}
	return 0
}

// authzHTTPFilters returns the HTTP filters (JWT authentication, RBAC) that go
// before the router on wl's inbound listener for appPort, nil when no policy
// applies to it.
func (ix *Index) authzHTTPFilters(wl *v1alpha1.Workload, appPort int32) []*hcmv3.HttpFilter {
	pols := ix.authzPolicies(wl, appPort)
	if len(pols) == 0 {
		return nil
	}
	var out []*hcmv3.HttpFilter
	if jwt := jwtAuthentication(pols); jwt != nil {
		out = append(out, &hcmv3.HttpFilter{
			Name:       jwtFilterName,
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(jwt)},
		})
	}
	tr := ruleTranslator{td: ix.authz.trustDomain, appPort: appPort, inbound: inboundPort(wl, appPort), cel: ix.authz.cel}
	for _, rules := range tr.rbac(pols) {
		out = append(out, &hcmv3.HttpFilter{
			Name:       rbacHTTPFilterName,
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&rbachttpv3.RBAC{Rules: rules})},
		})
	}
	return out
}

// authzNetworkFilters returns the network filters (RBAC) that go before
// tcp_proxy on wl's TCP inbound listener for appPort, nil when no policy
// applies to it.
func (ix *Index) authzNetworkFilters(wl *v1alpha1.Workload, appPort int32) []*listenerv3.Filter {
	pols := ix.authzPolicies(wl, appPort)
	if len(pols) == 0 {
		return nil
	}
	tr := ruleTranslator{td: ix.authz.trustDomain, appPort: appPort, inbound: inboundPort(wl, appPort), l4: true, cel: ix.authz.cel}
	var out []*listenerv3.Filter
	for _, rules := range tr.rbac(pols) {
		out = append(out, &listenerv3.Filter{
			Name: rbacNetworkFilterName,
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&rbacnetv3.RBAC{
				Rules:      rules,
				StatPrefix: "inbound_" + strconv.Itoa(int(appPort)) + "_rbac.",
			})},
		})
	}
	return out
}

// jwtAuthentication merges the JWT providers of pols (the first policy
// naming an issuer wins), nil when none has any.
func jwtAuthentication(pols []*v1alpha1.AuthorizationPolicy) *jwtv3.JwtAuthentication {
	cfg := &jwtv3.JwtAuthentication{Providers: map[string]*jwtv3.JwtProvider{}}
	var names []string
	issuers := map[string]bool{}
	for _, p := range pols {
		if p.Spec.JWT == nil {
			continue
		}
		for i, pr := range p.Spec.JWT.Providers {
			if issuers[pr.Issuer] {
				continue
			}
			issuers[pr.Issuer] = true
			name := p.Namespace + "/" + p.Name + "/providers[" + strconv.Itoa(i) + "]"
			names = append(names, name)
			cfg.Providers[name] = jwtProvider(pr)
		}
	}
	if len(names) == 0 {
		return nil
	}
	// A missing token passes on to RBAC; a present one must verify with
	// one of the providers.
	anyOf := &jwtv3.JwtRequirementOrList{}
	for _, n := range names {
		anyOf.Requirements = append(anyOf.Requirements, &jwtv3.JwtRequirement{
			RequiresType: &jwtv3.JwtRequirement_ProviderName{ProviderName: n},
		})
	}
	anyOf.Requirements = append(anyOf.Requirements, &jwtv3.JwtRequirement{
		RequiresType: &jwtv3.JwtRequirement_AllowMissing{AllowMissing: &emptypb.Empty{}},
	})
	cfg.Rules = []*jwtv3.RequirementRule{{
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		RequirementType: &jwtv3.RequirementRule_Requires{Requires: &jwtv3.JwtRequirement{
			RequiresType: &jwtv3.JwtRequirement_RequiresAny{RequiresAny: anyOf},
		}},
	}}
	return cfg
}

func jwtProvider(pr v1alpha1.JWTProvider) *jwtv3.JwtProvider {
	out := &jwtv3.JwtProvider{
		Issuer:            pr.Issuer,
		Audiences:         pr.Audiences,
		Forward:           true,
		PayloadInMetadata: jwtPayloadKey,
	}
	if h := pr.FromHeader; h != nil {
		out.FromHeaders = []*jwtv3.JwtHeader{{Name: h.Name, ValuePrefix: h.Prefix}}
	}
	if pr.JWKSFile != "" {
		out.JwksSourceSpecifier = &jwtv3.JwtProvider_LocalJwks{LocalJwks: &corev3.DataSource{
			Specifier: &corev3.DataSource_Filename{Filename: pr.JWKSFile},
		}}
		return out
	}
	// Envoy fetches through a cluster; Verge proxies fetch the URI
	// directly. The cluster is named after the host for an Envoy operator
	// to provide.
	host := pr.JWKSURI
	if u, err := url.Parse(pr.JWKSURI); err == nil {
		host = u.Host
	}
	out.JwksSourceSpecifier = &jwtv3.JwtProvider_RemoteJwks{RemoteJwks: &jwtv3.RemoteJwks{
		HttpUri: &corev3.HttpUri{
			Uri:              pr.JWKSURI,
			HttpUpstreamType: &corev3.HttpUri_Cluster{Cluster: "jwks|" + host},
			Timeout:          durationpb.New(jwksTimeout),
		},
		CacheDuration: durationpb.New(jwksCacheDuration),
	}}
	return out
}

// ruleTranslator turns rules into RBAC policies for one listener.
type ruleTranslator struct {
	td      string
	appPort int32
	inbound int32
	l4      bool // TCP: L4 fields only (see the comment at the top)
	cel     map[string]celCondition
}

// rbac returns the RBAC rule sets, in filter order: LOG (AUDIT), DENY,
// ALLOW; a set is left out when no policy has that action.
func (tr ruleTranslator) rbac(pols []*v1alpha1.AuthorizationPolicy) []*rbacv3.RBAC {
	order := []struct {
		action v1alpha1.AuthorizationAction
		rbac   rbacv3.RBAC_Action
	}{
		{v1alpha1.AuthorizationAudit, rbacv3.RBAC_LOG},
		{v1alpha1.AuthorizationDeny, rbacv3.RBAC_DENY},
		{v1alpha1.AuthorizationAllow, rbacv3.RBAC_ALLOW},
	}
	var out []*rbacv3.RBAC
	for _, o := range order {
		var set *rbacv3.RBAC
		for _, p := range pols {
			if p.Spec.Action != o.action {
				continue
			}
			if set == nil {
				set = &rbacv3.RBAC{Action: o.rbac, Policies: map[string]*rbacv3.Policy{}}
			}
			for i := range p.Spec.Rules {
				r := &p.Spec.Rules[i]
				if tr.l4 && o.action != v1alpha1.AuthorizationDeny && tr.hasHTTPParts(r) {
					continue
				}
				cond, ok := tr.condition(r)
				if !ok && o.action != v1alpha1.AuthorizationDeny {
					// A condition that does not compile never matches.
					continue
				}
				name := p.Namespace + "/" + p.Name + "/" + cmp.Or(r.Name, fmt.Sprintf("rules[%d]", i))
				set.Policies[name] = &rbacv3.Policy{
					Permissions: []*rbacv3.Permission{tr.permission(r)},
					Principals:  []*rbacv3.Principal{tr.principal(r)},
					Condition:   cond,
				}
			}
		}
		if set != nil {
			out = append(out, set)
		}
	}
	return out
}

// condition is the rule's CEL condition for this listener: nil without
// one, and on TCP for one reading request.* (DENY keeps the rest of the
// rule, see the top). ok is false when the condition does not compile;
// a DENY rule then keeps its other parts (denying more is the safe
// reading).
func (tr ruleTranslator) condition(r *v1alpha1.AuthorizationRule) (cond *exprpb.Expr, ok bool) {
	if r.CEL == "" {
		return nil, true
	}
	c := tr.cel[r.CEL]
	if c.expr == nil {
		return nil, false
	}
	if tr.l4 && c.readsRequest {
		return nil, true
	}
	return c.expr, true
}

// hasHTTPParts reports whether a rule reads anything a TCP connection lacks.
func (tr ruleTranslator) hasHTTPParts(r *v1alpha1.AuthorizationRule) bool {
	if len(r.Headers) > 0 || len(r.When) > 0 || (r.CEL != "" && tr.cel[r.CEL].readsRequest) {
		return true
	}
	for _, t := range r.To {
		if len(t.Paths)+len(t.NotPaths)+len(t.Methods)+len(t.NotMethods)+len(t.Hosts)+len(t.NotHosts) > 0 {
			return true
		}
	}
	return false
}

func (tr ruleTranslator) permission(r *v1alpha1.AuthorizationRule) *rbacv3.Permission {
	var parts []*rbacv3.Permission
	if len(r.To) > 0 {
		var alts []*rbacv3.Permission
		for _, t := range r.To {
			alts = append(alts, tr.operation(t))
		}
		parts = append(parts, orPerm(alts))
	}
	if !tr.l4 {
		for _, h := range r.Headers {
			name := strings.ToLower(h.Name)
			parts = append(parts, valuesPerm(h.Values, h.NotValues, func(v string) *rbacv3.Permission {
				return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: authzHeaderMatcher(name, v, false)}}
			})...)
		}
	}
	return andPerm(parts)
}

func (tr ruleTranslator) operation(t v1alpha1.AuthorizationOperation) *rbacv3.Permission {
	var parts []*rbacv3.Permission
	if len(t.Ports) > 0 {
		parts = append(parts, tr.portPerm(slices.Contains(t.Ports, tr.appPort)))
	}
	if len(t.NotPorts) > 0 {
		parts = append(parts, tr.portPerm(!slices.Contains(t.NotPorts, tr.appPort)))
	}
	if !tr.l4 {
		parts = append(parts, valuesPerm(t.Paths, t.NotPaths, func(v string) *rbacv3.Permission {
			sm := wildcardMatcher(v, false)
			if sm == nil {
				return anyPerm()
			}
			return &rbacv3.Permission{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{
				Rule: &matcherv3.PathMatcher_Path{Path: sm},
			}}}
		})...)
		parts = append(parts, valuesPerm(t.Methods, t.NotMethods, func(v string) *rbacv3.Permission {
			if v == "*" {
				return anyPerm()
			}
			return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: &routev3.HeaderMatcher{
				Name: ":method",
				HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
					MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v},
				}},
			}}}
		})...)
		parts = append(parts, valuesPerm(t.Hosts, t.NotHosts, func(v string) *rbacv3.Permission {
			if v == "*" {
				return anyPerm()
			}
			return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: authzHeaderMatcher(":authority", v, true)}}
		})...)
	}
	return andPerm(parts)
}

// portPerm is the listener's port when in is true, else nothing.
func (tr ruleTranslator) portPerm(in bool) *rbacv3.Permission {
	if !in {
		return notPerm(anyPerm())
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationPort{DestinationPort: uint32(tr.inbound)}}
}

func (tr ruleTranslator) principal(r *v1alpha1.AuthorizationRule) *rbacv3.Principal {
	var parts []*rbacv3.Principal
	if len(r.From) > 0 {
		var alts []*rbacv3.Principal
		for _, f := range r.From {
			alts = append(alts, tr.source(f))
		}
		parts = append(parts, orPrin(alts))
	}
	if !tr.l4 {
		for _, w := range r.When {
			parts = append(parts, claimPrincipals(w)...)
		}
	}
	return andPrin(parts)
}

func (tr ruleTranslator) source(f v1alpha1.AuthorizationSource) *rbacv3.Principal {
	var parts []*rbacv3.Principal
	parts = append(parts, valuesPrin(f.Principals, f.NotPrincipals, func(v string) *rbacv3.Principal {
		return authenticated(wildcardMatcher(v, false))
	})...)
	parts = append(parts, valuesPrin(f.Namespaces, f.NotNamespaces, func(v string) *rbacv3.Principal {
		if v == "*" {
			return authenticated(nil)
		}
		return authenticated(&matcherv3.StringMatcher{
			MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: SPIFFEID(tr.td, v, "")},
		})
	})...)
	parts = append(parts, valuesPrin(f.ServiceAccounts, f.NotServiceAccounts, func(v string) *rbacv3.Principal {
		ns, sa, _ := strings.Cut(v, "/")
		return authenticated(&matcherv3.StringMatcher{
			MatchPattern: &matcherv3.StringMatcher_Exact{Exact: SPIFFEID(tr.td, ns, sa)},
		})
	})...)
	return andPrin(parts)
}

// claimPrincipals matches one JWT claim: a string claim equal to a value or
// a list claim holding one; notValues also require the claim to exist, so
// that a request without a token does not match.
func claimPrincipals(w v1alpha1.ClaimCondition) []*rbacv3.Principal {
	match := func(v string) *rbacv3.Principal {
		if v == "*" {
			return claimMatcher(w.Claim, &matcherv3.ValueMatcher{
				MatchPattern: &matcherv3.ValueMatcher_PresentMatch{PresentMatch: true},
			})
		}
		sm := wildcardMatcher(v, false)
		return orPrin([]*rbacv3.Principal{
			claimMatcher(w.Claim, &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: sm}}),
			claimMatcher(w.Claim, &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_ListMatch{ListMatch: &matcherv3.ListMatcher{
				MatchPattern: &matcherv3.ListMatcher_OneOf{OneOf: &matcherv3.ValueMatcher{
					MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: sm},
				}},
			}}}),
		})
	}
	parts := valuesPrin(w.Values, w.NotValues, match)
	if len(w.Values) == 0 {
		parts = append([]*rbacv3.Principal{match("*")}, parts...)
	}
	return parts
}

func claimMatcher(claim string, v *matcherv3.ValueMatcher) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Metadata{Metadata: &matcherv3.MetadataMatcher{
		Filter: jwtFilterName,
		Path: []*matcherv3.MetadataMatcher_PathSegment{
			{Segment: &matcherv3.MetadataMatcher_PathSegment_Key{Key: jwtPayloadKey}},
			{Segment: &matcherv3.MetadataMatcher_PathSegment_Key{Key: claim}},
		},
		Value: v,
	}}}
}

func authenticated(sm *matcherv3.StringMatcher) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{
		Authenticated: &rbacv3.Principal_Authenticated{PrincipalName: sm},
	}}
}

// authzHeaderMatcher matches a header's value, with wildcards; "*" is presence.
func authzHeaderMatcher(name, v string, ignoreCase bool) *routev3.HeaderMatcher {
	if v == "*" {
		return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}}
	}
	return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
		StringMatch: wildcardMatcher(v, ignoreCase),
	}}
}

// wildcardMatcher reads a validated wildcard value: "x*" is a prefix, "*x" a
// suffix, anything else exact; "*" alone is nil (anything).
func wildcardMatcher(v string, ignoreCase bool) *matcherv3.StringMatcher {
	sm := &matcherv3.StringMatcher{IgnoreCase: ignoreCase}
	switch {
	case v == "*":
		return nil
	case strings.HasSuffix(v, "*"):
		sm.MatchPattern = &matcherv3.StringMatcher_Prefix{Prefix: strings.TrimSuffix(v, "*")}
	case strings.HasPrefix(v, "*"):
		sm.MatchPattern = &matcherv3.StringMatcher_Suffix{Suffix: strings.TrimPrefix(v, "*")}
	default:
		sm.MatchPattern = &matcherv3.StringMatcher_Exact{Exact: v}
	}
	return sm
}

// valuesPerm is one of values (when any) and none of notValues (when any).
func valuesPerm(values, notValues []string, one func(string) *rbacv3.Permission) []*rbacv3.Permission {
	var out []*rbacv3.Permission
	each := func(vs []string) *rbacv3.Permission {
		var alts []*rbacv3.Permission
		for _, v := range vs {
			alts = append(alts, one(v))
		}
		return orPerm(alts)
	}
	if len(values) > 0 {
		out = append(out, each(values))
	}
	if len(notValues) > 0 {
		out = append(out, notPerm(each(notValues)))
	}
	return out
}

func valuesPrin(values, notValues []string, one func(string) *rbacv3.Principal) []*rbacv3.Principal {
	var out []*rbacv3.Principal
	each := func(vs []string) *rbacv3.Principal {
		var alts []*rbacv3.Principal
		for _, v := range vs {
			alts = append(alts, one(v))
		}
		return orPrin(alts)
	}
	if len(values) > 0 {
		out = append(out, each(values))
	}
	if len(notValues) > 0 {
		out = append(out, &rbacv3.Principal{Identifier: &rbacv3.Principal_NotId{NotId: each(notValues)}})
	}
	return out
}

func anyPerm() *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Any{Any: true}}
}

func notPerm(p *rbacv3.Permission) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_NotRule{NotRule: p}}
}

// andPerm and orPerm collapse sets of one; an empty and is any.
func andPerm(ps []*rbacv3.Permission) *rbacv3.Permission {
	switch len(ps) {
	case 0:
		return anyPerm()
	case 1:
		return ps[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_AndRules{AndRules: &rbacv3.Permission_Set{Rules: ps}}}
}

func orPerm(ps []*rbacv3.Permission) *rbacv3.Permission {
	if len(ps) == 1 {
		return ps[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_OrRules{OrRules: &rbacv3.Permission_Set{Rules: ps}}}
}

func andPrin(ps []*rbacv3.Principal) *rbacv3.Principal {
	switch len(ps) {
	case 0:
		return &rbacv3.Principal{Identifier: &rbacv3.Principal_Any{Any: true}}
	case 1:
		return ps[0]
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_AndIds{AndIds: &rbacv3.Principal_Set{Ids: ps}}}
}

func orPrin(ps []*rbacv3.Principal) *rbacv3.Principal {
	if len(ps) == 1 {
		return ps[0]
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_OrIds{OrIds: &rbacv3.Principal_Set{Ids: ps}}}
}
