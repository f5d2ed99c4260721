package translate

import (
	"cmp"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"verge.dev/verge/api/v1alpha1"
)

// This file translates the traffic controls of outbound routes
// (docs/xds-traffic.md, "Routes"): retries, hash policies, Gateway API
// filters and FaultInjections. Every (rule, match) of a route rule shares
// what is built here; only the name and the match differ.

// faultFilterName is the HTTP fault filter, in outbound HCMs (and proxyless
// api listeners) whose routes carry a fault.
const faultFilterName = "envoy.filters.http.fault"

// Retry defaults of the API (RetryPolicy's comment).
const (
	defaultRetryAttempts = 2
	defaultRetryOn       = "connect-failure,refused-stream,unavailable,gateway-error"
	defaultRetryBase     = 25 * time.Millisecond
	// gatewayRetryOn is what a Gateway API retry stanza retries besides its
	// codes: "Implementations SHOULD retry on connection errors".
	gatewayRetryOn = "connect-failure,refused-stream,reset"
)

// ruleSpec is what a route rule says besides its matches and backends.
type ruleSpec struct {
	name     string // the rule's name, "" when unnamed
	timeout  time.Duration
	retry    *gatewayv1.HTTPRouteRetry // HTTPRoute only
	perTry   time.Duration             // HTTPRoute timeouts.backendRequest
	reqHdr   *gatewayv1.HTTPHeaderFilter
	respHdr  *gatewayv1.HTTPHeaderFilter
	rewrite  *gatewayv1.HTTPURLRewriteFilter
	redirect *gatewayv1.HTTPRequestRedirectFilter
	mirrors  []*gatewayv1.HTTPRequestMirrorFilter
}

func httpRuleSpec(rule *gatewayv1.HTTPRouteRule) ruleSpec {
	rs := ruleSpec{name: deref(rule.Name), retry: rule.Retry}
	if t := rule.Timeouts; t != nil {
		if t.Request != nil {
			// Validation accepted it; GEP-2257 durations are a subset of Go's.
			rs.timeout, _ = time.ParseDuration(string(*t.Request))
		}
		if t.BackendRequest != nil {
			rs.perTry, _ = time.ParseDuration(string(*t.BackendRequest))
		}
	}
	// The Gateway API allows each filter type once per rule, except
	// RequestMirror; the first wins should validation have let two by.
	for _, f := range rule.Filters {
		switch f.Type {
		case gatewayv1.HTTPRouteFilterRequestHeaderModifier:
			rs.reqHdr = cmp.Or(rs.reqHdr, f.RequestHeaderModifier)
		case gatewayv1.HTTPRouteFilterResponseHeaderModifier:
			rs.respHdr = cmp.Or(rs.respHdr, f.ResponseHeaderModifier)
		case gatewayv1.HTTPRouteFilterURLRewrite:
			rs.rewrite = cmp.Or(rs.rewrite, f.URLRewrite)
		case gatewayv1.HTTPRouteFilterRequestRedirect:
			rs.redirect = cmp.Or(rs.redirect, f.RequestRedirect)
		case gatewayv1.HTTPRouteFilterRequestMirror:
			if f.RequestMirror != nil {
				rs.mirrors = append(rs.mirrors, f.RequestMirror)
			}
		}
	}
	return rs
}

func grpcRuleSpec(rule *gatewayv1.GRPCRouteRule) ruleSpec {
	rs := ruleSpec{name: deref(rule.Name)}
	for _, f := range rule.Filters {
		switch f.Type {
		case gatewayv1.GRPCRouteFilterRequestHeaderModifier:
			rs.reqHdr = cmp.Or(rs.reqHdr, f.RequestHeaderModifier)
		case gatewayv1.GRPCRouteFilterResponseHeaderModifier:
			rs.respHdr = cmp.Or(rs.respHdr, f.ResponseHeaderModifier)
		case gatewayv1.GRPCRouteFilterRequestMirror:
			if f.RequestMirror != nil {
				rs.mirrors = append(rs.mirrors, f.RequestMirror)
			}
		}
	}
	return rs
}

// ruleRoute builds the route every match of a rule copies: the action
// (forward, split or redirect) with its traffic controls, header edits and
// fault. parent is the service port whose route table it is in; clusters it
// sends to (backends and mirrors) are added to backends.
func (ix *Index) ruleRoute(parent *portInfo, routeNS string, refs []gatewayv1.BackendRef, rs ruleSpec, backends map[string]*portInfo) *routev3.Route {
	var r *routev3.Route
	if rs.redirect != nil {
		// A redirect answers without forwarding: no backend is called.
		r = &routev3.Route{Action: &routev3.Route_Redirect{Redirect: redirectAction(rs.redirect)}}
	} else {
		ws := ix.resolveBackends(routeNS, refs, backends)
		r = routeTo(ws, rs.timeout)
		if ra := r.GetRoute(); ra != nil {
			ra.RetryPolicy = ix.retryPolicy(parent, ws, rs)
			ra.HashPolicy = ix.hashPolicies(ws)
			setRewrite(ra, rs.rewrite)
			for _, m := range rs.mirrors {
				if mp := ix.mirrorPolicy(routeNS, m, backends); mp != nil {
					ra.RequestMirrorPolicies = append(ra.RequestMirrorPolicies, mp)
				}
			}
			if f := ix.faultFor(parent, ws, rs.name); f != nil {
				r.TypedPerFilterConfig = map[string]*anypb.Any{faultFilterName: mustAny(f)}
			}
		}
	}
	r.RequestHeadersToAdd, r.RequestHeadersToRemove = headerEdits(rs.reqHdr)
	r.ResponseHeadersToAdd, r.ResponseHeadersToRemove = headerEdits(rs.respHdr)
	return r
}

// withMatch is a copy of the rule's route t for one match. The copy shares
// t's action and edits, which nobody modifies after translation.
func withMatch(t *routev3.Route, name string, m *routev3.RouteMatch) *routev3.Route {
	return &routev3.Route{
		Name:                    name,
		Match:                   m,
		Action:                  t.Action,
		RequestHeadersToAdd:     t.RequestHeadersToAdd,
		RequestHeadersToRemove:  t.RequestHeadersToRemove,
		ResponseHeadersToAdd:    t.ResponseHeadersToAdd,
		ResponseHeadersToRemove: t.ResponseHeadersToRemove,
		TypedPerFilterConfig:    t.TypedPerFilterConfig,
	}
}

// hasFault reports whether a route carries a fault for the fault filter.
func hasFault(routes []*routev3.Route) bool {
	return slices.ContainsFunc(routes, func(r *routev3.Route) bool { return r.TypedPerFilterConfig[faultFilterName] != nil })
}

// retryPolicy: the rule's Gateway API retry wins; else the retry section of
// the DestinationPolicies of the service called (parent), else of the first
// backend that has one. nil when none retries.
func (ix *Index) retryPolicy(parent *portInfo, ws []weighted, rs ruleSpec) *routev3.RetryPolicy {
	if g := rs.retry; g != nil {
		attempts := defaultRetryAttempts
		if g.Attempts != nil {
			attempts = *g.Attempts
		}
		if attempts <= 0 {
			return nil
		}
		base := defaultRetryBase
		if g.Backoff != nil {
			base = parseDuration(string(*g.Backoff), defaultRetryBase)
		}
		rp := &routev3.RetryPolicy{
			RetryOn:      gatewayRetryOn,
			NumRetries:   wrapperspb.UInt32(uint32(min(int64(attempts), math.MaxUint32))),
			RetryBackOff: &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(base), MaxInterval: durationpb.New(10 * base)},
		}
		if rs.perTry > 0 {
			rp.PerTryTimeout = durationpb.New(rs.perTry)
		}
		for _, c := range g.Codes {
			rp.RetriableStatusCodes = append(rp.RetriableStatusCodes, uint32(c))
		}
		if len(rp.RetriableStatusCodes) > 0 {
			rp.RetryOn += ",retriable-status-codes"
		}
		return rp
	}
	dr := section(parent.svc, parent.port.Port, retrySection)
	for _, w := range ws {
		if dr != nil {
			break
		}
		if be := ix.ports[w.cluster]; be != nil {
			dr = section(be.svc, be.port.Port, retrySection)
		}
	}
	if dr == nil {
		return nil
	}
	attempts := cmp.Or(dr.Attempts, defaultRetryAttempts)
	if attempts <= 0 {
		return nil
	}
	on := defaultRetryOn
	if len(dr.On) > 0 {
		on = strings.Join(dr.On, ",")
	}
	base := parseDuration(dr.BaseInterval, defaultRetryBase)
	// Envoy refuses a max below the base.
	maxI := max(parseDuration(dr.MaxInterval, 10*base), base)
	rp := &routev3.RetryPolicy{
		RetryOn:      on,
		NumRetries:   wrapperspb.UInt32(uint32(attempts)),
		RetryBackOff: &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(base), MaxInterval: durationpb.New(maxI)},
	}
	if d := parseDuration(dr.PerTryTimeout, 0); d > 0 {
		rp.PerTryTimeout = durationpb.New(d)
	}
	return rp
}

// hashPolicies are the consistentHash of every backend balanced by
// RingHash or Maglev, in backend order without repeats: Envoy hashes with
// the route's policies whichever cluster the split picks.
func (ix *Index) hashPolicies(ws []weighted) []*routev3.RouteAction_HashPolicy {
	var out []*routev3.RouteAction_HashPolicy
	for _, w := range ws {
		be := ix.ports[w.cluster]
		if be == nil {
			continue
		}
		lb := section(be.svc, be.port.Port, lbSection)
		if lb == nil || lb.ConsistentHash == nil || (lb.Policy != v1alpha1.LoadBalancerRingHash && lb.Policy != v1alpha1.LoadBalancerMaglev) {
			continue
		}
		hp := hashPolicy(lb.ConsistentHash)
		if hp != nil && !slices.ContainsFunc(out, func(x *routev3.RouteAction_HashPolicy) bool { return proto.Equal(x, hp) }) {
			out = append(out, hp)
		}
	}
	// Envoy hashes every present property together unless one is
	// terminal; Verge's proxy uses the first present one. Terminal on all
	// but the last makes both mean the same.
	for _, hp := range out[:max(len(out)-1, 0)] {
		hp.Terminal = true
	}
	return out
}

func hashPolicy(ch *v1alpha1.ConsistentHash) *routev3.RouteAction_HashPolicy {
	switch {
	case ch.Header != "":
		return &routev3.RouteAction_HashPolicy{PolicySpecifier: &routev3.RouteAction_HashPolicy_Header_{
			Header: &routev3.RouteAction_HashPolicy_Header{HeaderName: strings.ToLower(ch.Header)},
		}}
	case ch.Cookie != nil && ch.Cookie.Name != "":
		c := &routev3.RouteAction_HashPolicy_Cookie{Name: ch.Cookie.Name, Path: ch.Cookie.Path}
		if d := parseDuration(ch.Cookie.TTL, 0); d > 0 {
			c.Ttl = durationpb.New(d)
		}
		return &routev3.RouteAction_HashPolicy{PolicySpecifier: &routev3.RouteAction_HashPolicy_Cookie_{Cookie: c}}
	case ch.SourceIP:
		return &routev3.RouteAction_HashPolicy{PolicySpecifier: &routev3.RouteAction_HashPolicy_ConnectionProperties_{
			ConnectionProperties: &routev3.RouteAction_HashPolicy_ConnectionProperties{SourceIp: true},
		}}
	}
	return nil
}

// headerEdits translates a header modifier: set overwrites, add appends,
// remove removes. Names are lower-cased (HTTP/2 and gRPC require it).
func headerEdits(f *gatewayv1.HTTPHeaderFilter) ([]*corev3.HeaderValueOption, []string) {
	if f == nil {
		return nil, nil
	}
	var add []*corev3.HeaderValueOption
	opt := func(h gatewayv1.HTTPHeader, a corev3.HeaderValueOption_HeaderAppendAction) *corev3.HeaderValueOption {
		return &corev3.HeaderValueOption{
			Header:       &corev3.HeaderValue{Key: strings.ToLower(string(h.Name)), Value: h.Value},
			AppendAction: a,
		}
	}
	for _, h := range f.Set {
		add = append(add, opt(h, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD))
	}
	for _, h := range f.Add {
		add = append(add, opt(h, corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD))
	}
	var remove []string
	for _, n := range f.Remove {
		remove = append(remove, strings.ToLower(n))
	}
	return add, remove
}

// setRewrite applies a URLRewrite filter to the action. A prefix
// replacement is prefix_rewrite, which replaces what the route's prefix
// matched; a full path is a regex replacing everything.
func setRewrite(ra *routev3.RouteAction, f *gatewayv1.HTTPURLRewriteFilter) {
	if f == nil {
		return
	}
	if f.Hostname != nil && *f.Hostname != "" {
		ra.HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: string(*f.Hostname)}
	}
	if p := f.Path; p != nil {
		switch {
		case p.Type == gatewayv1.FullPathHTTPPathModifier && p.ReplaceFullPath != nil:
			ra.RegexRewrite = &matcherv3.RegexMatchAndSubstitute{
				Pattern:      &matcherv3.RegexMatcher{Regex: "^.*$"},
				Substitution: *p.ReplaceFullPath,
			}
		case p.Type == gatewayv1.PrefixMatchHTTPPathModifier && p.ReplacePrefixMatch != nil:
			ra.PrefixRewrite = *p.ReplacePrefixMatch
		}
	}
}

// redirectCodes maps the Gateway API's redirect statuses to Envoy's.
var redirectCodes = map[int]routev3.RedirectAction_RedirectResponseCode{
	301: routev3.RedirectAction_MOVED_PERMANENTLY,
	302: routev3.RedirectAction_FOUND,
	303: routev3.RedirectAction_SEE_OTHER,
	307: routev3.RedirectAction_TEMPORARY_REDIRECT,
	308: routev3.RedirectAction_PERMANENT_REDIRECT,
}

func redirectAction(f *gatewayv1.HTTPRequestRedirectFilter) *routev3.RedirectAction {
	ra := &routev3.RedirectAction{ResponseCode: routev3.RedirectAction_FOUND} // the Gateway API's default, 302
	if f.StatusCode != nil {
		if c, ok := redirectCodes[*f.StatusCode]; ok {
			ra.ResponseCode = c
		}
	}
	if f.Scheme != nil && *f.Scheme != "" {
		ra.SchemeRewriteSpecifier = &routev3.RedirectAction_SchemeRedirect{SchemeRedirect: *f.Scheme}
	}
	if f.Hostname != nil {
		ra.HostRedirect = string(*f.Hostname)
	}
	if f.Port != nil && *f.Port > 0 {
		ra.PortRedirect = uint32(*f.Port)
	}
	if p := f.Path; p != nil {
		switch {
		case p.Type == gatewayv1.FullPathHTTPPathModifier && p.ReplaceFullPath != nil:
			ra.PathRewriteSpecifier = &routev3.RedirectAction_PathRedirect{PathRedirect: *p.ReplaceFullPath}
		case p.Type == gatewayv1.PrefixMatchHTTPPathModifier && p.ReplacePrefixMatch != nil:
			ra.PathRewriteSpecifier = &routev3.RedirectAction_PrefixRewrite{PrefixRewrite: *p.ReplacePrefixMatch}
		}
	}
	return ra
}

// mirrorPolicy sends a share of the requests to the mirror's service port,
// whose cluster joins backends so that the caller gets it (a mirror to a
// port that does not exist gets an empty cluster, as a backend does).
func (ix *Index) mirrorPolicy(routeNS string, f *gatewayv1.HTTPRequestMirrorFilter, backends map[string]*portInfo) *routev3.RouteAction_RequestMirrorPolicy {
	ref := f.BackendRef
	if ref.Port == nil || (deref(ref.Kind) != "" && deref(ref.Kind) != "Service") {
		return nil
	}
	ws := ix.resolveBackends(routeNS, []gatewayv1.BackendRef{{BackendObjectReference: ref}}, backends)
	if len(ws) != 1 {
		return nil
	}
	frac := &typev3.FractionalPercent{Numerator: 100, Denominator: typev3.FractionalPercent_HUNDRED}
	switch {
	case f.Percent != nil:
		frac.Numerator = uint32(min(max(*f.Percent, 0), 100))
	case f.Fraction != nil:
		den := int64(100)
		if f.Fraction.Denominator != nil && *f.Fraction.Denominator > 0 {
			den = int64(*f.Fraction.Denominator)
		}
		num := min(max(int64(f.Fraction.Numerator), 0), den)
		frac = fraction(num, den)
	}
	return &routev3.RouteAction_RequestMirrorPolicy{
		Cluster:         ws[0].cluster,
		RuntimeFraction: &corev3.RuntimeFractionalPercent{DefaultValue: frac},
	}
}

// fraction is num/den (0 <= num <= den, den > 0) with the smallest of
// Envoy's denominators that represents it exactly, else in millionths
// rounded to nearest.
func fraction(num, den int64) *typev3.FractionalPercent {
	for _, d := range []struct {
		n   int64
		den typev3.FractionalPercent_DenominatorType
	}{{100, typev3.FractionalPercent_HUNDRED}, {10_000, typev3.FractionalPercent_TEN_THOUSAND}, {1_000_000, typev3.FractionalPercent_MILLION}} {
		if (num*d.n)%den == 0 {
			return &typev3.FractionalPercent{Numerator: uint32(num * d.n / den), Denominator: d.den}
		}
	}
	return &typev3.FractionalPercent{Numerator: uint32((num*1_000_000 + den/2) / den), Denominator: typev3.FractionalPercent_MILLION}
}

// parsePercent reads a percentage "0"-"100" with up to four decimals
// ("0.5") exactly, as a fraction of 1,000,000; ok is false when s is not one.
func parsePercent(s string) (millionths int64, ok bool) {
	whole, frac, _ := strings.Cut(strings.TrimSpace(s), ".")
	if whole == "" && frac == "" || len(frac) > 4 {
		return 0, false
	}
	w, err := strconv.ParseUint(cmp.Or(whole, "0"), 10, 8)
	if err != nil || w > 100 {
		return 0, false
	}
	var f uint64
	if frac != "" {
		if f, err = strconv.ParseUint(frac+strings.Repeat("0", 4-len(frac)), 10, 16); err != nil {
			return 0, false
		}
	}
	v := int64(w)*10_000 + int64(f)
	if v > 1_000_000 {
		return 0, false
	}
	return v, true
}

// percentFraction is a parsed percentage as a FractionalPercent.
func percentFraction(s string) (*typev3.FractionalPercent, bool) {
	v, ok := parsePercent(s)
	if !ok {
		return nil, false
	}
	return fraction(v, 1_000_000), true
}

// faultIndex lists FaultInjections by target service ("ns/name"), oldest
// first.
type faultIndex map[string][]*v1alpha1.FaultInjection

func newFaultIndex(fis []*v1alpha1.FaultInjection) faultIndex {
	idx := faultIndex{}
	for _, fi := range fis {
		ref := fi.Spec.TargetRef
		if (ref.Group != "" && ref.Group != v1alpha1.Group) || (ref.Kind != "" && ref.Kind != "Service") {
			continue
		}
		k := fi.Namespace + "/" + ref.Name
		idx[k] = append(idx[k], fi)
	}
	for _, l := range idx {
		slices.SortFunc(l, compareFaultAge)
	}
	return idx
}

func compareFaultAge(a, b *v1alpha1.FaultInjection) int {
	return cmp.Or(a.CreationTimestamp.Compare(b.CreationTimestamp.Time), strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
}

// faultFor is the fault of a route of parent's table named rule (""
// unnamed) sending to ws: that of the oldest FaultInjection targeting
// parent's service or a backend's (with their port or none) and listing the
// rule or no rule. Envoy takes one fault per route, so newer ones lose.
func (ix *Index) faultFor(parent *portInfo, ws []weighted, rule string) *faultv3.HTTPFault {
	if len(ix.faults) == 0 {
		return nil
	}
	var best *v1alpha1.FaultInjection
	consider := func(pi *portInfo) {
		if pi == nil || pi.svc == nil {
			return
		}
		for _, fi := range ix.faults[pi.svc.key] {
			if fi.Spec.TargetRef.Port != 0 && fi.Spec.TargetRef.Port != pi.port.Port {
				continue
			}
			if len(fi.Spec.Routes) > 0 && (rule == "" || !slices.Contains(fi.Spec.Routes, rule)) {
				continue
			}
			if best == nil || compareFaultAge(fi, best) < 0 {
				best = fi
			}
			return // the list is oldest first
		}
	}
	consider(parent)
	for _, w := range ws {
		consider(ix.ports[w.cluster])
	}
	if best == nil {
		return nil
	}
	return httpFault(&best.Spec)
}

// httpFault translates a FaultInjection; a part whose values are unusable
// (validation should refuse them) is left out rather than faulting every
// request, and nil means nothing is left.
func httpFault(s *v1alpha1.FaultInjectionSpec) *faultv3.HTTPFault {
	f := &faultv3.HTTPFault{}
	if d := s.Delay; d != nil {
		dur := parseDuration(d.Duration, 0)
		if pct, ok := percentFraction(d.Percent); ok && dur > 0 {
			f.Delay = &faultcommonv3.FaultDelay{
				FaultDelaySecifier: &faultcommonv3.FaultDelay_FixedDelay{FixedDelay: durationpb.New(dur)},
				Percentage:         pct,
			}
		}
	}
	if a := s.Abort; a != nil {
		if pct, ok := percentFraction(a.Percent); ok {
			switch {
			case a.GRPCStatus != "":
				if c, ok := grpcCode(a.GRPCStatus); ok {
					f.Abort = &faultv3.FaultAbort{ErrorType: &faultv3.FaultAbort_GrpcStatus{GrpcStatus: c}, Percentage: pct}
				}
			case a.HTTPStatus >= 200 && a.HTTPStatus < 600:
				f.Abort = &faultv3.FaultAbort{ErrorType: &faultv3.FaultAbort_HttpStatus{HttpStatus: uint32(a.HTTPStatus)}, Percentage: pct}
			}
		}
	}
	if f.Delay == nil && f.Abort == nil {
		return nil
	}
	names := make([]string, 0, len(s.Headers))
	for n := range s.Headers {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		f.Headers = append(f.Headers, headerMatcher(n, false, s.Headers[n]))
	}
	if s.MaxActive > 0 {
		f.MaxActiveFaults = wrapperspb.UInt32(uint32(s.MaxActive))
	}
	return f
}

// grpcCode reads a gRPC status code by name ("UNAVAILABLE") or number.
func grpcCode(s string) (uint32, bool) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return uint32(n), n <= uint64(codes.Unauthenticated)
	}
	var c codes.Code
	if err := c.UnmarshalJSON([]byte(strconv.Quote(strings.ToUpper(s)))); err != nil {
		return 0, false
	}
	return uint32(c), true
}
