package xdsclient

import (
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	xdstypev3 "github.com/cncf/xds/go/xds/type/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	localratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	bandwidthv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_bandwidth_limit/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"verge.dev/verge/internal/proxy/config"
)

// Traffic management (issue 5): the Envoy fields docs/xds-traffic.md lists,
// read into config.RouteTraffic, config.ClusterTraffic and
// config.ListenerTraffic. Every message this file accepts is checked with
// onlyFields: a retry, breaker or limit the proxy cannot honour as sent is
// NACKed with its field path rather than half-applied. Values are checked
// for range too (percentages, positive durations, thresholds of at least
// 1), so that a control plane bug is a NACK naming the field, never a
// panic or a nonsense configuration. Runtime keys (runtime_key) are
// ignored: Verge has no runtime layer, so the default value is always the
// one that applies, as in an Envoy without that key.

// Filter names and the type URLs of Verge's own extensions.
const (
	faultFilterName     = "envoy.filters.http.fault"
	rateLimitFilterName = "envoy.filters.http.local_ratelimit"
	priorityFilterName  = "verge.filters.http.priority"
	// priorityTypeURL is the TypedStruct type of the priority filter's
	// listener config and of its per-route config ({class}).
	priorityTypeURL  = "type.googleapis.com/verge.dev.filters.http.Priority"
	peakEWMATypeURL  = "type.googleapis.com/verge.dev.lb.PeakEWMA"
	peakEWMADecay    = 10 * time.Second
	maxRetries       = 100
	maxRingSize      = 8 << 20
	rateLimitBySrc   = "source"
	rateLimitByHdr   = "header:"
	defaultBackOff   = 25 * time.Millisecond
	backOffMaxFactor = 10
)

// Envoy's defaults for the parts of a retry budget and an outlier detection
// the control plane leaves unset.
const (
	defaultBudgetPercent       = 20
	defaultMinRetryConcurrency = 3
	defaultConsecutiveFailures = 5
	defaultOutlierInterval     = 10 * time.Second
	defaultBaseEjectionTime    = 30 * time.Second
	defaultMaxEjectionPercent  = 10
)

// retryOnConditions are the retry_on values the data path implements;
// "retriable-status-codes" is also accepted and becomes
// RetryPolicy.RetriableStatusCodes.
var retryOnConditions = []string{
	"5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx", "refused-stream",
	"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
}

const retryOnStatusCodes = "retriable-status-codes"

// routeTraffic returns out.Traffic, allocating it on first use so that a
// route without traffic management keeps a nil Traffic.
func routeTraffic(out *config.Route) *config.RouteTraffic {
	if out.Traffic == nil {
		out.Traffic = &config.RouteTraffic{}
	}
	return out.Traffic
}

// convertRouteActionTraffic reads a route action's retry, hash, rewrite and
// mirror settings. Errors start with a field path relative to the action.
func convertRouteActionTraffic(a *routev3.RouteAction, out *config.Route) error {
	if rp := a.GetRetryPolicy(); rp != nil {
		r, err := convertRetryPolicy(rp, "retry_policy.")
		if err != nil {
			return err
		}
		routeTraffic(out).Retry = r
	}
	for i, hp := range a.GetHashPolicy() {
		h, err := convertHashPolicy(hp, fmt.Sprintf("hash_policy[%d].", i))
		if err != nil {
			return err
		}
		routeTraffic(out).Hash = append(routeTraffic(out).Hash, h)
	}
	rw, err := convertRewrite(a, out.Match)
	if err != nil {
		return err
	}
	if rw != nil {
		routeTraffic(out).Rewrite = rw
	}
	for i, mp := range a.GetRequestMirrorPolicies() {
		path := fmt.Sprintf("request_mirror_policies[%d].", i)
		if err := onlyFields(mp, path, "cluster", "runtime_fraction"); err != nil {
			return err
		}
		if mp.GetCluster() == "" {
			return fmt.Errorf("%scluster: required", path)
		}
		pct := 100.0
		if rf := mp.GetRuntimeFraction(); rf != nil {
			if pct, err = runtimePercent(rf, path+"runtime_fraction."); err != nil {
				return err
			}
		}
		routeTraffic(out).Mirrors = append(routeTraffic(out).Mirrors, config.Mirror{Cluster: mp.GetCluster(), Percent: pct})
	}
	return nil
}

// convertRetryPolicy errors start with path.
func convertRetryPolicy(rp *routev3.RetryPolicy, path string) (*config.RetryPolicy, error) {
	if err := onlyFields(rp, path, "retry_on", "num_retries", "per_try_timeout", "retry_back_off", "retriable_status_codes"); err != nil {
		return nil, err
	}
	out := &config.RetryPolicy{Attempts: 1, BaseInterval: defaultBackOff, MaxInterval: backOffMaxFactor * defaultBackOff}
	statusCodes := false
	for c := range strings.SplitSeq(rp.GetRetryOn(), ",") {
		c = strings.TrimSpace(c)
		switch {
		case c == "":
			return nil, fmt.Errorf("%sretry_on: empty condition in %q", path, rp.GetRetryOn())
		case c == retryOnStatusCodes:
			statusCodes = true
		case slices.Contains(retryOnConditions, c):
			if !slices.Contains(out.On, c) {
				out.On = append(out.On, c)
			}
		default:
			return nil, fmt.Errorf("%sretry_on: unsupported condition %q", path, c)
		}
	}
	if n := rp.GetNumRetries(); n != nil {
		if n.GetValue() < 1 || n.GetValue() > maxRetries {
			return nil, fmt.Errorf("%snum_retries: %d out of range [1, %d]", path, n.GetValue(), maxRetries)
		}
		out.Attempts = int(n.GetValue())
	}
	if t := rp.GetPerTryTimeout(); t != nil {
		d, err := positiveDuration(t, path+"per_try_timeout")
		if err != nil {
			return nil, err
		}
		out.PerTryTimeout = d
	}
	if bo := rp.GetRetryBackOff(); bo != nil {
		bp := path + "retry_back_off."
		if err := onlyFields(bo, bp, "base_interval", "max_interval"); err != nil {
			return nil, err
		}
		base, err := positiveDuration(bo.GetBaseInterval(), bp+"base_interval")
		if err != nil {
			return nil, err
		}
		out.BaseInterval, out.MaxInterval = base, backOffMaxFactor*base
		if m := bo.GetMaxInterval(); m != nil {
			if out.MaxInterval, err = positiveDuration(m, bp+"max_interval"); err != nil {
				return nil, err
			}
			if out.MaxInterval < base {
				return nil, fmt.Errorf("%smax_interval: %s is less than base_interval %s", bp, out.MaxInterval, base)
			}
		}
	}
	for i, c := range rp.GetRetriableStatusCodes() {
		if c < 100 || c > 599 {
			return nil, fmt.Errorf("%sretriable_status_codes[%d]: %d is not an HTTP status", path, i, c)
		}
		out.RetriableStatusCodes = append(out.RetriableStatusCodes, int(c))
	}
	// Envoy ignores codes without the condition and retries nothing for the
	// condition without codes: either way the sender meant something else.
	if statusCodes != (len(out.RetriableStatusCodes) > 0) {
		return nil, fmt.Errorf("%sretriable_status_codes: must be set exactly when retry_on holds %q", path, retryOnStatusCodes)
	}
	return out, nil
}

// convertHashPolicy errors start with path.
//
// The data path hashes the first property present. Envoy does that when
// every policy but the last is terminal and otherwise hashes all present
// ones together; either way equal requests reach the same endpoint, which
// is what affinity needs, so terminal is accepted but not required.
func convertHashPolicy(hp *routev3.RouteAction_HashPolicy, path string) (config.HashPolicy, error) {
	var out config.HashPolicy
	if err := onlyFields(hp, path, "header", "cookie", "connection_properties", "terminal"); err != nil {
		return out, err
	}
	switch p := hp.GetPolicySpecifier().(type) {
	case *routev3.RouteAction_HashPolicy_Header_:
		if err := onlyFields(p.Header, path+"header.", "header_name"); err != nil {
			return out, err
		}
		out.Header = strings.ToLower(p.Header.GetHeaderName())
	case *routev3.RouteAction_HashPolicy_Cookie_:
		cp := path + "cookie."
		if err := onlyFields(p.Cookie, cp, "name", "ttl", "path"); err != nil {
			return out, err
		}
		out.Cookie, out.CookiePath = p.Cookie.GetName(), p.Cookie.GetPath()
		if t := p.Cookie.GetTtl(); t != nil {
			// Envoy makes a session cookie for ttl 0; the data path
			// generates cookies only with a lifetime.
			d, err := positiveDuration(t, cp+"ttl")
			if err != nil {
				return out, err
			}
			out.CookieTTL = d
		}
	case *routev3.RouteAction_HashPolicy_ConnectionProperties_:
		if err := onlyFields(p.ConnectionProperties, path+"connection_properties.", "source_ip"); err != nil {
			return out, err
		}
		if !p.ConnectionProperties.GetSourceIp() {
			return out, fmt.Errorf("%sconnection_properties.source_ip: must be true", path)
		}
		out.SourceIP = true
	default:
		return out, fmt.Errorf("%spolicy_specifier: header, cookie or connection_properties required", path)
	}
	return out, nil
}

// convertRewrite reads prefix_rewrite, regex_rewrite (only the whole-path
// form) and host_rewrite_literal; nil when none is set. Errors start with
// a field path relative to the action.
func convertRewrite(a *routev3.RouteAction, m config.RouteMatch) (*config.Rewrite, error) {
	var out config.Rewrite
	switch h := a.GetHostRewriteSpecifier().(type) {
	case nil:
	case *routev3.RouteAction_HostRewriteLiteral:
		out.Host = h.HostRewriteLiteral
	default:
		return nil, fmt.Errorf("host_rewrite_specifier: only host_rewrite_literal is supported, got %T", h)
	}
	if a.GetPathRewritePolicy() != nil {
		return nil, errors.New("path_rewrite_policy: unsupported")
	}
	if a.GetPrefixRewrite() != "" && a.GetRegexRewrite() != nil {
		return nil, errors.New("prefix_rewrite: set together with regex_rewrite")
	}
	if pr := a.GetPrefixRewrite(); pr != "" {
		prefix, err := matchedPrefix(m, "prefix_rewrite")
		if err != nil {
			return nil, err
		}
		out.PathPrefix, out.PrefixMatch = pr, prefix
	}
	if rr := a.GetRegexRewrite(); rr != nil {
		full, err := fullPathSubstitution(rr, "regex_rewrite.")
		if err != nil {
			return nil, err
		}
		out.FullPath, out.FullPathSet = full, true
	}
	if out == (config.Rewrite{}) {
		return nil, nil
	}
	return &out, nil
}

// matchedPrefix returns the prefix a prefix rewrite replaces: the route's
// prefix or path-separated prefix. Other matches have no prefix to replace.
func matchedPrefix(m config.RouteMatch, field string) (string, error) {
	switch {
	case m.PathSeparatedPrefix != "":
		return m.PathSeparatedPrefix, nil
	case m.Prefix != "":
		return m.Prefix, nil
	}
	return "", fmt.Errorf("%s: needs a prefix or path_separated_prefix match", field)
}

// fullPathPattern is the only regex_rewrite pattern accepted: it replaces
// the whole path (the Gateway API's ReplaceFullPath).
const fullPathPattern = "^.*$"

func fullPathSubstitution(rr *matcherv3.RegexMatchAndSubstitute, path string) (string, error) {
	if err := onlyFields(rr, path, "pattern", "substitution"); err != nil {
		return "", err
	}
	if err := onlyFields(rr.GetPattern(), path+"pattern.", "regex"); err != nil {
		return "", err
	}
	if re := rr.GetPattern().GetRegex(); re != fullPathPattern {
		return "", fmt.Errorf("%spattern.regex: only %q (replace the full path) is supported, got %q", path, fullPathPattern, re)
	}
	s := rr.GetSubstitution()
	if strings.Contains(s, `\`) {
		return "", fmt.Errorf("%ssubstitution: capture group references are unsupported", path)
	}
	if !strings.HasPrefix(s, "/") {
		return "", fmt.Errorf("%ssubstitution: %q must start with /", path, s)
	}
	return s, nil
}

// convertRedirect errors start with a field path relative to the redirect.
func convertRedirect(rd *routev3.RedirectAction, m config.RouteMatch) (*config.Redirect, error) {
	if err := onlyFields(rd, "", "scheme_redirect", "https_redirect", "host_redirect", "port_redirect",
		"path_redirect", "prefix_rewrite", "response_code"); err != nil {
		return nil, err
	}
	out := &config.Redirect{Host: rd.GetHostRedirect(), Port: rd.GetPortRedirect()}
	switch s := rd.GetSchemeRewriteSpecifier().(type) {
	case nil:
	case *routev3.RedirectAction_HttpsRedirect:
		if s.HttpsRedirect {
			out.Scheme = "https"
		}
	case *routev3.RedirectAction_SchemeRedirect:
		out.Scheme = strings.ToLower(s.SchemeRedirect)
		if out.Scheme != "http" && out.Scheme != "https" {
			return nil, fmt.Errorf("scheme_redirect: want http or https, got %q", s.SchemeRedirect)
		}
	}
	if out.Port > math.MaxUint16 {
		return nil, fmt.Errorf("port_redirect: %d is not a port", out.Port)
	}
	switch p := rd.GetPathRewriteSpecifier().(type) {
	case nil:
	case *routev3.RedirectAction_PathRedirect:
		if !strings.HasPrefix(p.PathRedirect, "/") {
			return nil, fmt.Errorf("path_redirect: %q must start with /", p.PathRedirect)
		}
		out.Path = p.PathRedirect
	case *routev3.RedirectAction_PrefixRewrite:
		prefix, err := matchedPrefix(m, "prefix_rewrite")
		if err != nil {
			return nil, err
		}
		out.PathPrefix, out.PrefixMatch = p.PrefixRewrite, prefix
	default:
		return nil, fmt.Errorf("path_rewrite_specifier: unsupported %T", p)
	}
	switch rd.GetResponseCode() {
	case routev3.RedirectAction_MOVED_PERMANENTLY:
		out.Status = 301
	case routev3.RedirectAction_FOUND:
		out.Status = 302
	case routev3.RedirectAction_SEE_OTHER:
		out.Status = 303
	case routev3.RedirectAction_TEMPORARY_REDIRECT:
		out.Status = 307
	case routev3.RedirectAction_PERMANENT_REDIRECT:
		out.Status = 308
	default:
		return nil, fmt.Errorf("response_code: unsupported %s", rd.GetResponseCode())
	}
	return out, nil
}

// refuseVirtualHostTraffic refuses the traffic fields Envoy also takes on
// a virtual host: the proxy reads them per route only (where the translator
// puts them), and ignoring them would half-apply the sender's intent.
func refuseVirtualHostTraffic(vh *routev3.VirtualHost, path string) error {
	var set []string
	for _, f := range []struct {
		name string
		set  bool
	}{
		{"retry_policy", vh.GetRetryPolicy() != nil},
		{"hedge_policy", vh.GetHedgePolicy() != nil},
		{"rate_limits", len(vh.GetRateLimits()) > 0},
		{"request_headers_to_add", len(vh.GetRequestHeadersToAdd()) > 0},
		{"request_headers_to_remove", len(vh.GetRequestHeadersToRemove()) > 0},
		{"response_headers_to_add", len(vh.GetResponseHeadersToAdd()) > 0},
		{"response_headers_to_remove", len(vh.GetResponseHeadersToRemove()) > 0},
		{"typed_per_filter_config", len(vh.GetTypedPerFilterConfig()) > 0},
		{"request_mirror_policies", len(vh.GetRequestMirrorPolicies()) > 0},
	} {
		if f.set {
			set = append(set, f.name)
		}
	}
	if len(set) > 0 {
		return fmt.Errorf("%s%s: unsupported on a virtual host (set it per route)", path, set[0])
	}
	return nil
}

// refuseTableTraffic is refuseVirtualHostTraffic for the route
// configuration's own header mutations and per-filter configs.
func refuseTableTraffic(r *routev3.RouteConfiguration) error {
	switch {
	case len(r.GetRequestHeadersToAdd()) > 0:
		return errors.New("request_headers_to_add: unsupported on a route configuration (set it per route)")
	case len(r.GetRequestHeadersToRemove()) > 0:
		return errors.New("request_headers_to_remove: unsupported on a route configuration (set it per route)")
	case len(r.GetResponseHeadersToAdd()) > 0:
		return errors.New("response_headers_to_add: unsupported on a route configuration (set it per route)")
	case len(r.GetResponseHeadersToRemove()) > 0:
		return errors.New("response_headers_to_remove: unsupported on a route configuration (set it per route)")
	case len(r.GetTypedPerFilterConfig()) > 0:
		return errors.New("typed_per_filter_config: unsupported on a route configuration (set it per route)")
	}
	return nil
}

// convertRouteTraffic reads what a route carries besides its match and
// action: header mutations and per-filter configs. Errors start with a
// field path relative to the route.
func convertRouteTraffic(r *routev3.Route, out *config.Route) error {
	req, err := convertHeaderMutation(r.GetRequestHeadersToAdd(), r.GetRequestHeadersToRemove(), "request_headers_to_")
	if err != nil {
		return err
	}
	resp, err := convertHeaderMutation(r.GetResponseHeadersToAdd(), r.GetResponseHeadersToRemove(), "response_headers_to_")
	if err != nil {
		return err
	}
	if !emptyMutation(req) {
		routeTraffic(out).RequestHeaders = req
	}
	if !emptyMutation(resp) {
		routeTraffic(out).ResponseHeaders = resp
	}
	pf := r.GetTypedPerFilterConfig()
	keys := make([]string, 0, len(pf))
	for k := range pf {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		path := fmt.Sprintf("typed_per_filter_config[%q].", k)
		a := pf[k]
		switch k {
		case faultFilterName:
			f, err := convertFault(a, path)
			if err != nil {
				return err
			}
			routeTraffic(out).Faults = []*config.Fault{f}
		case rateLimitFilterName:
			rl, err := convertRouteRateLimit(a, path)
			if err != nil {
				return err
			}
			routeTraffic(out).RateLimit = rl
		case priorityFilterName:
			fields, err := typedStruct(a, priorityTypeURL, path)
			if err != nil {
				return err
			}
			s := structReader{fields: fields, path: path + "value."}
			class := s.str("class", true)
			if err := s.done(); err != nil {
				return err
			}
			routeTraffic(out).PriorityClass = class
		default:
			return fmt.Errorf("typed_per_filter_config[%q]: unsupported filter", k)
		}
	}
	return nil
}

func emptyMutation(m config.HeaderMutation) bool {
	return len(m.Set) == 0 && len(m.Add) == 0 && len(m.Remove) == 0
}

// convertHeaderMutation reads NAME+"add" and NAME+"remove" (prefix is
// "request_headers_to_" or "response_headers_to_"). Errors start with the
// field.
func convertHeaderMutation(add []*corev3.HeaderValueOption, remove []string, prefix string) (config.HeaderMutation, error) {
	var out config.HeaderMutation
	for i, o := range add {
		path := fmt.Sprintf("%sadd[%d].", prefix, i)
		if err := onlyFields(o, path, "header", "append_action"); err != nil {
			return out, err
		}
		if err := onlyFields(o.GetHeader(), path+"header.", "key", "value"); err != nil {
			return out, err
		}
		name, err := mutableHeader(o.GetHeader().GetKey(), path+"header.key")
		if err != nil {
			return out, err
		}
		h := config.Header{Name: name, Value: o.GetHeader().GetValue()}
		switch o.GetAppendAction() {
		case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
			out.Set = append(out.Set, h)
		case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
			out.Add = append(out.Add, h)
		default:
			return out, fmt.Errorf("%sappend_action: only OVERWRITE_IF_EXISTS_OR_ADD and APPEND_IF_EXISTS_OR_ADD are supported, got %s", path, o.GetAppendAction())
		}
	}
	for i, n := range remove {
		name, err := mutableHeader(n, fmt.Sprintf("%sremove[%d]", prefix, i))
		if err != nil {
			return out, err
		}
		out.Remove = append(out.Remove, name)
	}
	return out, nil
}

// mutableHeader lower-cases name, refusing the pseudo-headers and Host,
// which Envoy does not let header mutations touch either.
func mutableHeader(name, path string) (string, error) {
	n := strings.ToLower(name)
	switch {
	case n == "":
		return "", fmt.Errorf("%s: required", path)
	case strings.HasPrefix(n, ":") || n == "host":
		return "", fmt.Errorf("%s: %q may not be modified", path, name)
	}
	return n, nil
}

// convertFault reads an HTTPFault per-route config. Errors start with path.
func convertFault(a *anypb.Any, path string) (*config.Fault, error) {
	hf := &faultv3.HTTPFault{}
	if err := unpackAny(a, hf, path); err != nil {
		return nil, err
	}
	if err := onlyFields(hf, path, "delay", "abort", "headers", "max_active_faults"); err != nil {
		return nil, err
	}
	out := &config.Fault{AbortGRPCStatus: -1}
	if hf.GetDelay() == nil && hf.GetAbort() == nil {
		return nil, fmt.Errorf("%sdelay: delay or abort required", path)
	}
	if d := hf.GetDelay(); d != nil {
		dp := path + "delay."
		if err := onlyFields(d, dp, "fixed_delay", "percentage"); err != nil {
			return nil, err
		}
		var err error
		if out.Delay, err = positiveDuration(d.GetFixedDelay(), dp+"fixed_delay"); err != nil {
			return nil, err
		}
		if out.DelayPercent, err = requiredPercent(d.GetPercentage(), dp+"percentage"); err != nil {
			return nil, err
		}
	}
	if ab := hf.GetAbort(); ab != nil {
		ap := path + "abort."
		if err := onlyFields(ab, ap, "http_status", "grpc_status", "percentage"); err != nil {
			return nil, err
		}
		switch e := ab.GetErrorType().(type) {
		case *faultv3.FaultAbort_HttpStatus:
			// PGV bounds it to [200, 600).
			out.AbortHTTPStatus = int(e.HttpStatus)
		case *faultv3.FaultAbort_GrpcStatus:
			if e.GrpcStatus < 1 || e.GrpcStatus > 16 {
				return nil, fmt.Errorf("%sgrpc_status: %d is not a gRPC error code (1-16)", ap, e.GrpcStatus)
			}
			// As Envoy: a gRPC abort is an HTTP 200 carrying grpc-status.
			out.AbortHTTPStatus, out.AbortGRPCStatus = 200, int(e.GrpcStatus)
		default:
			return nil, fmt.Errorf("%serror_type: http_status or grpc_status required", ap)
		}
		var err error
		if out.AbortPercent, err = requiredPercent(ab.GetPercentage(), ap+"percentage"); err != nil {
			return nil, err
		}
	}
	for i, h := range hf.GetHeaders() {
		hm, err := convertHeaderMatcher(h)
		if err != nil {
			return nil, fmt.Errorf("%sheaders[%d].%w", path, i, err)
		}
		out.Headers = append(out.Headers, hm)
	}
	if m := hf.GetMaxActiveFaults(); m != nil {
		if m.GetValue() < 1 || m.GetValue() > math.MaxInt32 {
			return nil, fmt.Errorf("%smax_active_faults: %d out of range [1, %d]", path, m.GetValue(), math.MaxInt32)
		}
		out.MaxActive = int(m.GetValue())
	}
	return out, nil
}

// convertRouteRateLimit reads a LocalRateLimit per-route config: one token
// bucket, shared or keyed by one dynamic descriptor entry. Errors start
// with path.
func convertRouteRateLimit(a *anypb.Any, path string) (*config.RateLimit, error) {
	rl := &localratelimitv3.LocalRateLimit{}
	if err := unpackAny(a, rl, path); err != nil {
		return nil, err
	}
	if err := onlyFields(rl, path, "stat_prefix", "token_bucket", "filter_enabled", "filter_enforced",
		"enable_retry_after_header", "rate_limited_as_resource_exhausted", "descriptors", "max_dynamic_descriptors",
		"always_consume_default_token_bucket"); err != nil {
		return nil, err
	}
	// A request matching the descriptor draws from its bucket only, as
	// the data path's keyed limiter does; drawing from the default bucket
	// too cannot be honoured.
	if a := rl.GetAlwaysConsumeDefaultTokenBucket(); a != nil && a.GetValue() {
		return nil, fmt.Errorf("%salways_consume_default_token_bucket: only false is supported", path)
	}
	// The data path always enforces, answers 429 / RESOURCE_EXHAUSTED and
	// sends retry-after; a config asking otherwise cannot be honoured.
	for _, f := range []struct {
		name string
		v    *corev3.RuntimeFractionalPercent
	}{{"filter_enabled", rl.GetFilterEnabled()}, {"filter_enforced", rl.GetFilterEnforced()}} {
		if f.v == nil {
			return nil, fmt.Errorf("%s%s: required (100%%)", path, f.name)
		}
		p, err := runtimePercent(f.v, path+f.name+".")
		if err != nil {
			return nil, err
		}
		if p != 100 {
			return nil, fmt.Errorf("%s%s: only 100%% is supported, got %g%%", path, f.name, p)
		}
	}
	if !rl.GetEnableRetryAfterHeader() {
		return nil, fmt.Errorf("%senable_retry_after_header: must be true", path)
	}
	if !rl.GetRateLimitedAsResourceExhausted() {
		return nil, fmt.Errorf("%srate_limited_as_resource_exhausted: must be true", path)
	}
	if n := rl.GetMaxDynamicDescriptors(); n != nil && n.GetValue() < 1 {
		return nil, fmt.Errorf("%smax_dynamic_descriptors: must be at least 1", path)
	}
	out := &config.RateLimit{}
	descs := rl.GetDescriptors()
	switch len(descs) {
	case 0:
		if rl.GetTokenBucket() == nil {
			return nil, fmt.Errorf("%stoken_bucket: required", path)
		}
		if err := tokenBucket(rl.GetTokenBucket(), path+"token_bucket.", out); err != nil {
			return nil, err
		}
	case 1:
		dp := path + "descriptors[0]."
		d := descs[0]
		if err := onlyFields(d, dp, "entries", "token_bucket"); err != nil {
			return nil, err
		}
		if n := len(d.GetEntries()); n != 1 {
			return nil, fmt.Errorf("%sentries: want exactly 1, got %d", dp, n)
		}
		e := d.GetEntries()[0]
		ep := dp + "entries[0]."
		if e.GetValue() != "" {
			return nil, fmt.Errorf("%svalue: must be empty (a dynamic descriptor)", ep)
		}
		key := e.GetKey()
		switch {
		case key == rateLimitBySrc:
			out.By = key
		case strings.HasPrefix(key, rateLimitByHdr) && len(key) > len(rateLimitByHdr):
			out.By = rateLimitByHdr + strings.ToLower(strings.TrimPrefix(key, rateLimitByHdr))
		default:
			return nil, fmt.Errorf("%skey: want %q or %q NAME, got %q", ep, rateLimitBySrc, rateLimitByHdr, key)
		}
		if err := tokenBucket(d.GetTokenBucket(), dp+"token_bucket.", out); err != nil {
			return nil, err
		}
		// Requests without the key would fall into the default bucket in
		// Envoy; the data path keeps one bucket kind per route, so a
		// different default bucket cannot be honoured.
		if tb := rl.GetTokenBucket(); tb != nil && !proto.Equal(tb, d.GetTokenBucket()) {
			return nil, fmt.Errorf("%stoken_bucket: must equal descriptors[0].token_bucket when set", path)
		}
	default:
		return nil, fmt.Errorf("%sdescriptors: want at most 1, got %d", path, len(descs))
	}
	return out, nil
}

// tokenBucket fills out's bucket from tb. Errors start with path.
func tokenBucket(tb *typev3.TokenBucket, path string, out *config.RateLimit) error {
	if tb == nil {
		return fmt.Errorf("%s: required", strings.TrimSuffix(path, "."))
	}
	if err := onlyFields(tb, path, "max_tokens", "tokens_per_fill", "fill_interval"); err != nil {
		return err
	}
	if tb.GetMaxTokens() < 1 || tb.GetMaxTokens() > math.MaxInt32 {
		return fmt.Errorf("%smax_tokens: %d out of range [1, %d]", path, tb.GetMaxTokens(), math.MaxInt32)
	}
	out.MaxTokens, out.TokensPerFill = int(tb.GetMaxTokens()), 1
	if n := tb.GetTokensPerFill(); n != nil {
		if n.GetValue() < 1 || n.GetValue() > math.MaxInt32 {
			return fmt.Errorf("%stokens_per_fill: %d out of range [1, %d]", path, n.GetValue(), math.MaxInt32)
		}
		out.TokensPerFill = int(n.GetValue())
	}
	d, err := positiveDuration(tb.GetFillInterval(), path+"fill_interval")
	if err != nil {
		return err
	}
	out.FillInterval = d
	return nil
}

// trafficHTTPFilter reports whether hf is one of the traffic filters
// convertTrafficHTTPFilter reads.
func trafficHTTPFilter(hf *hcmv3.HttpFilter) bool {
	tc := hf.GetTypedConfig()
	if tc == nil {
		return false
	}
	if tc.MessageIs(&faultv3.HTTPFault{}) || tc.MessageIs(&localratelimitv3.LocalRateLimit{}) {
		return true
	}
	if !tc.MessageIs(&xdstypev3.TypedStruct{}) {
		return false
	}
	ts := &xdstypev3.TypedStruct{}
	return tc.UnmarshalTo(ts) == nil && ts.GetTypeUrl() == priorityTypeURL
}

// convertTrafficHTTPFilter reads one HCM traffic filter into out. The fault
// and local rate limit filters act through their per-route configs, so
// their listener configs must be empty (stat_prefix aside); the priority
// filter's is the listener's Overload. seen tracks duplicates. Errors
// start with path (the filter's).
func convertTrafficHTTPFilter(hf *hcmv3.HttpFilter, out *config.Listener, seen map[string]bool, path string) error {
	tc := hf.GetTypedConfig()
	tp := path + "typed_config."
	var kind string
	switch {
	case tc.MessageIs(&faultv3.HTTPFault{}):
		kind = faultFilterName
		m := &faultv3.HTTPFault{}
		if err := unpackAny(tc, m, tp); err != nil {
			return err
		}
		if err := onlyFields(m, tp); err != nil {
			return fmt.Errorf("%w (faults are per route: typed_per_filter_config)", err)
		}
	case tc.MessageIs(&localratelimitv3.LocalRateLimit{}):
		kind = rateLimitFilterName
		m := &localratelimitv3.LocalRateLimit{}
		if err := unpackAny(tc, m, tp); err != nil {
			return err
		}
		if err := onlyFields(m, tp, "stat_prefix"); err != nil {
			return fmt.Errorf("%w (limits are per route: typed_per_filter_config)", err)
		}
	default:
		kind = priorityFilterName
		fields, err := typedStruct(tc, priorityTypeURL, tp)
		if err != nil {
			return err
		}
		ov, err := convertOverload(fields, tp+"value.")
		if err != nil {
			return err
		}
		if out.Traffic == nil {
			out.Traffic = &config.ListenerTraffic{}
		}
		out.Traffic.Overload = ov
	}
	if seen[kind] {
		return fmt.Errorf("%s: duplicate %s filter", strings.TrimSuffix(path, "."), kind)
	}
	seen[kind] = true
	return nil
}

// convertOverload reads the priority filter's TypedStruct value. Absent
// optional fields take the API's defaults. Errors start with path.
func convertOverload(fields map[string]*structpb.Value, path string) (*config.Overload, error) {
	s := structReader{fields: fields, path: path}
	out := &config.Overload{
		MaxConcurrent: s.integer("maxConcurrent", 1, true),
		MaxQueue:      -1,
		MaxQueueWait:  time.Second,
		Header:        "x-verge-priority",
	}
	if _, ok := fields["maxQueue"]; ok {
		out.MaxQueue = s.integer("maxQueue", 0, false)
	}
	if _, ok := fields["maxQueueWait"]; ok {
		out.MaxQueueWait = s.duration("maxQueueWait")
	}
	if h := s.str("header", false); h != "" {
		out.Header = strings.ToLower(h)
	}
	out.Classes = s.strList("classes")
	out.DefaultClass = s.str("defaultClass", true)
	if err := s.done(); err != nil {
		return nil, err
	}
	if out.MaxQueue < 0 {
		out.MaxQueue = out.MaxConcurrent
	}
	if len(out.Classes) == 0 {
		return nil, fmt.Errorf("%sclasses: at least one class required", path)
	}
	for i, c := range out.Classes {
		if c == "" {
			return nil, fmt.Errorf("%sclasses[%d]: empty", path, i)
		}
		if slices.Index(out.Classes, c) != i {
			return nil, fmt.Errorf("%sclasses[%d]: duplicate %q", path, i, c)
		}
	}
	if !slices.Contains(out.Classes, out.DefaultClass) {
		return nil, fmt.Errorf("%sdefaultClass: %q is not one of classes", path, out.DefaultClass)
	}
	return out, nil
}

// isBandwidthFilter reports whether f is a tcp_bandwidth_limit filter.
func isBandwidthFilter(f *listenerv3.Filter) bool {
	tc := f.GetTypedConfig()
	return tc != nil && tc.MessageIs(&bandwidthv3.TcpBandwidthLimit{})
}

// convertBandwidth reads a tcp_bandwidth_limit filter: read and write
// limits equal (the data path caps both directions with one rate), in KiB/s.
// Errors start with path (the filter's).
func convertBandwidth(f *listenerv3.Filter, path string) (int64, error) {
	tp := path + "typed_config."
	bw := &bandwidthv3.TcpBandwidthLimit{}
	if err := unpackAny(f.GetTypedConfig(), bw, tp); err != nil {
		return 0, err
	}
	if err := onlyFields(bw, tp, "stat_prefix", "read_limit_kbps", "write_limit_kbps"); err != nil {
		return 0, err
	}
	r, w := bw.GetReadLimitKbps(), bw.GetWriteLimitKbps()
	if r == nil || w == nil {
		return 0, fmt.Errorf("%sread_limit_kbps: read_limit_kbps and write_limit_kbps both required", tp)
	}
	if r.GetValue() != w.GetValue() {
		return 0, fmt.Errorf("%swrite_limit_kbps: %d differs from read_limit_kbps %d (one rate caps both directions)", tp, w.GetValue(), r.GetValue())
	}
	if r.GetValue() < 1 || r.GetValue() > math.MaxInt64/1024 {
		return 0, fmt.Errorf("%sread_limit_kbps: %d out of range [1, %d]", tp, r.GetValue(), int64(math.MaxInt64/1024))
	}
	return int64(r.GetValue()) * 1024, nil
}

// convertClusterLB sets out.LB (and the ring size) from lb_policy, its
// config, or a load_balancing_policy whose first policy is PeakEWMA.
// Errors start with a field path relative to the cluster.
func convertClusterLB(c *clusterv3.Cluster, out *config.Cluster) error {
	if lbp := c.GetLoadBalancingPolicy(); lbp != nil {
		// Envoy ignores lb_policy then; one set besides is a sender bug.
		if c.GetLbPolicy() != clusterv3.Cluster_ROUND_ROBIN || c.GetLbConfig() != nil {
			return errors.New("load_balancing_policy: set together with lb_policy or its config")
		}
		return convertLoadBalancingPolicy(lbp, out)
	}
	switch c.GetLbPolicy() {
	case clusterv3.Cluster_ROUND_ROBIN:
		out.LB = config.LBRoundRobin
	case clusterv3.Cluster_LEAST_REQUEST:
		out.LB = config.LBLeastRequest
	case clusterv3.Cluster_RING_HASH:
		out.LB = config.LBRingHash
	case clusterv3.Cluster_MAGLEV:
		out.LB = config.LBMaglev
	default:
		return fmt.Errorf("lb_policy: unsupported policy %s", c.GetLbPolicy())
	}
	switch lc := c.GetLbConfig().(type) {
	case nil:
	case *clusterv3.Cluster_RingHashLbConfig_:
		if out.LB != config.LBRingHash {
			return fmt.Errorf("ring_hash_lb_config: set with lb_policy %s", c.GetLbPolicy())
		}
		if err := onlyFields(lc.RingHashLbConfig, "ring_hash_lb_config.", "minimum_ring_size"); err != nil {
			return err
		}
		if m := lc.RingHashLbConfig.GetMinimumRingSize(); m != nil {
			if m.GetValue() < 1 || m.GetValue() > maxRingSize {
				return fmt.Errorf("ring_hash_lb_config.minimum_ring_size: %d out of range [1, %d]", m.GetValue(), maxRingSize)
			}
			clusterTraffic(out).RingHashMinSize = m.GetValue()
		}
	default:
		return fmt.Errorf("lb_config: unsupported %T", lc)
	}
	return nil
}

// convertLoadBalancingPolicy accepts Verge's PeakEWMA TypedStruct as the
// first policy. Envoy and gRPC take the first policy they support, so the
// ones after it (the least_request fallback for them) never apply here.
func convertLoadBalancingPolicy(lbp *clusterv3.LoadBalancingPolicy, out *config.Cluster) error {
	if len(lbp.GetPolicies()) == 0 {
		return errors.New("load_balancing_policy.policies: at least one required")
	}
	const path = "load_balancing_policy.policies[0].typed_extension_config.typed_config."
	tc := lbp.GetPolicies()[0].GetTypedExtensionConfig().GetTypedConfig()
	if tc == nil {
		return errors.New("load_balancing_policy.policies[0].typed_extension_config.typed_config: required")
	}
	fields, err := typedStruct(tc, peakEWMATypeURL, path)
	if err != nil {
		return err
	}
	s := structReader{fields: fields, path: path + "value."}
	if _, ok := fields["decay"]; ok {
		// config.Cluster has no decay: the balancer's is fixed.
		if d := s.duration("decay"); s.err == nil && d != peakEWMADecay {
			return fmt.Errorf("%svalue.decay: only %s is supported, got %s", path, peakEWMADecay, d)
		}
	}
	if err := s.done(); err != nil {
		return err
	}
	out.LB = config.LBPeakEWMA
	return nil
}

func clusterTraffic(out *config.Cluster) *config.ClusterTraffic {
	if out.Traffic == nil {
		out.Traffic = &config.ClusterTraffic{}
	}
	return out.Traffic
}

// convertClusterTraffic reads circuit_breakers, outlier_detection and
// health_checks. Errors start with a field path relative to the cluster.
func convertClusterTraffic(c *clusterv3.Cluster, out *config.Cluster) error {
	if cb := c.GetCircuitBreakers(); cb != nil {
		if err := convertCircuitBreakers(cb, out); err != nil {
			return err
		}
	}
	if od := c.GetOutlierDetection(); od != nil {
		o, err := convertOutlierDetection(od, "outlier_detection.")
		if err != nil {
			return err
		}
		clusterTraffic(out).Outlier = o
	}
	switch hcs := c.GetHealthChecks(); len(hcs) {
	case 0:
	case 1:
		hc, err := convertHealthCheck(hcs[0], "health_checks[0].")
		if err != nil {
			return err
		}
		clusterTraffic(out).HealthCheck = hc
	default:
		return fmt.Errorf("health_checks: want at most 1, got %d", len(hcs))
	}
	return nil
}

func convertCircuitBreakers(cb *clusterv3.CircuitBreakers, out *config.Cluster) error {
	if err := onlyFields(cb, "circuit_breakers.", "thresholds"); err != nil {
		return err
	}
	switch n := len(cb.GetThresholds()); n {
	case 0:
		return nil
	case 1:
	default:
		return fmt.Errorf("circuit_breakers.thresholds: want at most 1 (priority DEFAULT), got %d", n)
	}
	th := cb.GetThresholds()[0]
	const path = "circuit_breakers.thresholds[0]."
	if err := onlyFields(th, path, "priority", "max_connections", "max_pending_requests", "max_requests", "max_retries", "retry_budget"); err != nil {
		return err
	}
	if th.GetPriority() != corev3.RoutingPriority_DEFAULT {
		return fmt.Errorf("%spriority: only DEFAULT is supported, got %s", path, th.GetPriority())
	}
	var b config.CircuitBreaker
	for _, f := range []struct {
		name string
		v    interface{ GetValue() uint32 }
		dst  *int
		set  bool
	}{
		{"max_connections", th.GetMaxConnections(), &b.MaxConnections, th.GetMaxConnections() != nil},
		{"max_pending_requests", th.GetMaxPendingRequests(), &b.MaxPendingRequests, th.GetMaxPendingRequests() != nil},
		{"max_requests", th.GetMaxRequests(), &b.MaxRequests, th.GetMaxRequests() != nil},
		{"max_retries", th.GetMaxRetries(), &b.MaxRetries, th.GetMaxRetries() != nil},
	} {
		if !f.set {
			continue
		}
		v := f.v.GetValue()
		if v < 1 || v > math.MaxInt32 {
			return fmt.Errorf("%s%s: %d out of range [1, %d]", path, f.name, v, math.MaxInt32)
		}
		*f.dst = int(v)
	}
	if b != (config.CircuitBreaker{}) {
		clusterTraffic(out).CircuitBreaker = &b
	}
	if rb := th.GetRetryBudget(); rb != nil {
		bp := path + "retry_budget."
		if err := onlyFields(rb, bp, "budget_percent", "min_retry_concurrency"); err != nil {
			return err
		}
		budget := &config.RetryBudget{Percent: defaultBudgetPercent, MinRetriesPerSecond: defaultMinRetryConcurrency}
		if p := rb.GetBudgetPercent(); p != nil {
			// PGV's range check lets NaN through.
			if v := p.GetValue(); math.IsNaN(v) || v < 0 || v > 100 {
				return fmt.Errorf("%sbudget_percent.value: %g out of range [0, 100]", bp, v)
			}
			budget.Percent = p.GetValue()
		}
		if m := rb.GetMinRetryConcurrency(); m != nil {
			if m.GetValue() > math.MaxInt32 {
				return fmt.Errorf("%smin_retry_concurrency: %d out of range [0, %d]", bp, m.GetValue(), math.MaxInt32)
			}
			budget.MinRetriesPerSecond = int(m.GetValue())
		}
		if budget.Percent == 0 && budget.MinRetriesPerSecond == 0 {
			return fmt.Errorf("%sbudget_percent: 0 with min_retry_concurrency 0 allows no retry at all", bp)
		}
		clusterTraffic(out).RetryBudget = budget
	}
	return nil
}

// convertOutlierDetection reads the consecutive-failure checks. Each is on
// when its enforcing_ percentage is 100 and off when it is 0 (Envoy's
// defaults: 100 for 5xx, 0 for gateway errors); partial enforcement is
// refused. Errors start with path.
func convertOutlierDetection(od *clusterv3.OutlierDetection, path string) (*config.OutlierDetection, error) {
	if err := onlyFields(od, path, "consecutive_5xx", "consecutive_gateway_failure", "enforcing_consecutive_5xx",
		"enforcing_consecutive_gateway_failure", "interval", "base_ejection_time", "max_ejection_percent", "enforcing_success_rate"); err != nil {
		return nil, err
	}
	// Success-rate ejection is on by default in Envoy; the proxy does not
	// implement it, so it must be turned off explicitly or left unset.
	if es := od.GetEnforcingSuccessRate(); es != nil && es.GetValue() != 0 {
		return nil, fmt.Errorf("%senforcing_success_rate: only 0 is supported (success-rate ejection is not implemented)", path)
	}
	out := &config.OutlierDetection{
		Interval:           defaultOutlierInterval,
		BaseEjectionTime:   defaultBaseEjectionTime,
		MaxEjectionPercent: defaultMaxEjectionPercent,
	}
	check := func(name string, count, enforcing interface{ GetValue() uint32 }, countSet, enforcingSet bool, enforcingDefault uint32) (int, error) {
		e := enforcingDefault
		if enforcingSet {
			e = enforcing.GetValue()
		}
		switch e {
		case 0:
			return 0, nil
		case 100:
		default:
			return 0, fmt.Errorf("%senforcing_%s: only 0 (off) and 100 are supported, got %d", path, name, e)
		}
		n := uint32(defaultConsecutiveFailures)
		if countSet {
			n = count.GetValue()
		}
		if n < 1 || n > math.MaxInt32 {
			return 0, fmt.Errorf("%s%s: %d out of range [1, %d] (set enforcing_%s 0 to turn the check off)", path, name, n, math.MaxInt32, name)
		}
		return int(n), nil
	}
	var err error
	if out.Consecutive5xx, err = check("consecutive_5xx", od.GetConsecutive_5Xx(), od.GetEnforcingConsecutive_5Xx(),
		od.GetConsecutive_5Xx() != nil, od.GetEnforcingConsecutive_5Xx() != nil, 100); err != nil {
		return nil, err
	}
	if out.ConsecutiveGatewayErrors, err = check("consecutive_gateway_failure", od.GetConsecutiveGatewayFailure(), od.GetEnforcingConsecutiveGatewayFailure(),
		od.GetConsecutiveGatewayFailure() != nil, od.GetEnforcingConsecutiveGatewayFailure() != nil, 0); err != nil {
		return nil, err
	}
	if t := od.GetInterval(); t != nil {
		if out.Interval, err = positiveDuration(t, path+"interval"); err != nil {
			return nil, err
		}
	}
	if t := od.GetBaseEjectionTime(); t != nil {
		if out.BaseEjectionTime, err = positiveDuration(t, path+"base_ejection_time"); err != nil {
			return nil, err
		}
	}
	if m := od.GetMaxEjectionPercent(); m != nil {
		if m.GetValue() > 100 {
			return nil, fmt.Errorf("%smax_ejection_percent: %d out of range [0, 100]", path, m.GetValue())
		}
		out.MaxEjectionPercent = int(m.GetValue())
	}
	return out, nil
}

// convertHealthCheck errors start with path.
func convertHealthCheck(hc *corev3.HealthCheck, path string) (*config.HealthCheck, error) {
	if err := onlyFields(hc, path, "timeout", "interval", "healthy_threshold", "unhealthy_threshold",
		"http_health_check", "grpc_health_check", "tcp_health_check"); err != nil {
		return nil, err
	}
	out := &config.HealthCheck{}
	var err error
	if out.Timeout, err = positiveDuration(hc.GetTimeout(), path+"timeout"); err != nil {
		return nil, err
	}
	if out.Interval, err = positiveDuration(hc.GetInterval(), path+"interval"); err != nil {
		return nil, err
	}
	for _, f := range []struct {
		name string
		v    interface{ GetValue() uint32 }
		dst  *int
	}{
		{"healthy_threshold", hc.GetHealthyThreshold(), &out.HealthyThreshold},
		{"unhealthy_threshold", hc.GetUnhealthyThreshold(), &out.UnhealthyThreshold},
	} {
		// PGV requires both; the range is Verge's.
		if v := f.v.GetValue(); v < 1 || v > 100 {
			return nil, fmt.Errorf("%s%s: %d out of range [1, 100]", path, f.name, v)
		}
		*f.dst = int(f.v.GetValue())
	}
	switch c := hc.GetHealthChecker().(type) {
	case *corev3.HealthCheck_HttpHealthCheck_:
		hp := path + "http_health_check."
		if err := onlyFields(c.HttpHealthCheck, hp, "path"); err != nil {
			return nil, err
		}
		if p := c.HttpHealthCheck.GetPath(); !strings.HasPrefix(p, "/") {
			return nil, fmt.Errorf("%spath: %q must start with /", hp, p)
		}
		out.HTTP, out.HTTPPath = true, c.HttpHealthCheck.GetPath()
	case *corev3.HealthCheck_GrpcHealthCheck_:
		if err := onlyFields(c.GrpcHealthCheck, path+"grpc_health_check.", "service_name"); err != nil {
			return nil, err
		}
		out.GRPC, out.GRPCService = true, c.GrpcHealthCheck.GetServiceName()
	case *corev3.HealthCheck_TcpHealthCheck_:
		tp := path + "tcp_health_check."
		if err := onlyFields(c.TcpHealthCheck, tp, "send", "receive"); err != nil {
			return nil, err
		}
		out.TCP = true
		if s := c.TcpHealthCheck.GetSend(); s != nil {
			if out.TCPSend, err = payload(s, tp+"send"); err != nil {
				return nil, err
			}
		}
		// Envoy matches the receive payloads in order, as one sequence.
		for i, r := range c.TcpHealthCheck.GetReceive() {
			b, err := payload(r, fmt.Sprintf("%sreceive[%d]", tp, i))
			if err != nil {
				return nil, err
			}
			out.TCPExpect = append(out.TCPExpect, b...)
		}
	default:
		return nil, fmt.Errorf("%shealth_checker: http_health_check, grpc_health_check or tcp_health_check required", path)
	}
	return out, nil
}

// payload decodes a health check payload (text is hex, as in Envoy).
func payload(p *corev3.HealthCheck_Payload, path string) ([]byte, error) {
	var b []byte
	switch v := p.GetPayload().(type) {
	case *corev3.HealthCheck_Payload_Text:
		var err error
		if b, err = hex.DecodeString(v.Text); err != nil {
			return nil, fmt.Errorf("%s.text: not hex: %w", path, err)
		}
	case *corev3.HealthCheck_Payload_Binary:
		b = v.Binary
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("%s: empty payload", path)
	}
	return b, nil
}

// Helpers shared by the conversions above.

// positiveDuration converts d, which must be set and greater than zero.
func positiveDuration(d *durationpb.Duration, path string) (time.Duration, error) {
	if d == nil {
		return 0, fmt.Errorf("%s: required", path)
	}
	v, err := duration(d)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	if v <= 0 {
		return 0, fmt.Errorf("%s: must be positive", path)
	}
	return v, nil
}

// fractionalPercent converts p to a percentage in [0, 100].
func fractionalPercent(p *typev3.FractionalPercent, path string) (float64, error) {
	var den float64
	switch p.GetDenominator() {
	case typev3.FractionalPercent_HUNDRED:
		den = 100
	case typev3.FractionalPercent_TEN_THOUSAND:
		den = 10_000
	case typev3.FractionalPercent_MILLION:
		den = 1_000_000
	default:
		return 0, fmt.Errorf("%s.denominator: unsupported %s", path, p.GetDenominator())
	}
	// Envoy caps a numerator above the denominator at 100%; a sender
	// that means more than all requests has a bug.
	if float64(p.GetNumerator()) > den {
		return 0, fmt.Errorf("%s.numerator: %d exceeds the denominator %s", path, p.GetNumerator(), p.GetDenominator())
	}
	return float64(p.GetNumerator()) * 100 / den, nil
}

// requiredPercent is fractionalPercent of a field that must be set.
func requiredPercent(p *typev3.FractionalPercent, path string) (float64, error) {
	if p == nil {
		return 0, fmt.Errorf("%s: required", path)
	}
	return fractionalPercent(p, path)
}

// runtimePercent reads a RuntimeFractionalPercent's default_value (path
// ends in "."). Its runtime_key is ignored: Verge has no runtime layer.
func runtimePercent(rf *corev3.RuntimeFractionalPercent, path string) (float64, error) {
	if err := onlyFields(rf, path, "default_value", "runtime_key"); err != nil {
		return 0, err
	}
	return requiredPercent(rf.GetDefaultValue(), path+"default_value")
}

// unpackAny decodes a into m, refusing any other type, and validates it.
// path ends in ".".
func unpackAny(a *anypb.Any, m proto.Message, path string) error {
	p := strings.TrimSuffix(path, ".")
	if !a.MessageIs(m) {
		return fmt.Errorf("%s: unsupported type %q, want %s", p, a.GetTypeUrl(), m.ProtoReflect().Descriptor().FullName())
	}
	if err := a.UnmarshalTo(m); err != nil {
		return fmt.Errorf("%s: decode: %w", p, err)
	}
	if v, ok := m.(interface{ ValidateAll() error }); ok {
		if err := v.ValidateAll(); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	return nil
}

// typedStruct decodes a as an xds.type.v3.TypedStruct of typeURL and
// returns its fields. path ends in ".".
func typedStruct(a *anypb.Any, typeURL, path string) (map[string]*structpb.Value, error) {
	ts := &xdstypev3.TypedStruct{}
	if err := unpackAny(a, ts, path); err != nil {
		return nil, err
	}
	if ts.GetTypeUrl() != typeURL {
		return nil, fmt.Errorf("%stype_url: want %q, got %q", path, typeURL, ts.GetTypeUrl())
	}
	return ts.GetValue().GetFields(), nil
}

// structReader reads typed fields out of a TypedStruct value, keeping the
// first error and the keys it read, so that done can refuse the others.
type structReader struct {
	fields map[string]*structpb.Value
	path   string
	read   []string
	err    error
}

func (s *structReader) get(key string, required bool) *structpb.Value {
	s.read = append(s.read, key)
	v := s.fields[key]
	// An explicit null reads as absent.
	if _, null := v.GetKind().(*structpb.Value_NullValue); null || v.GetKind() == nil {
		if required && s.err == nil {
			s.err = fmt.Errorf("%s%s: required", s.path, key)
		}
		return nil
	}
	return v
}

func (s *structReader) fail(key, format string, args ...any) {
	if s.err == nil {
		s.err = fmt.Errorf("%s%s: %s", s.path, key, fmt.Sprintf(format, args...))
	}
}

// integer reads a whole number of at least lo and at most MaxInt32.
func (s *structReader) integer(key string, lo int, required bool) int {
	v := s.get(key, required)
	if v == nil {
		return 0
	}
	n, ok := v.GetKind().(*structpb.Value_NumberValue)
	if !ok {
		s.fail(key, "want a number")
		return 0
	}
	f := n.NumberValue
	if math.IsNaN(f) || f != math.Trunc(f) || f < float64(lo) || f > math.MaxInt32 {
		s.fail(key, "%g is not a whole number in [%d, %d]", f, lo, math.MaxInt32)
		return 0
	}
	return int(f)
}

func (s *structReader) str(key string, required bool) string {
	v := s.get(key, required)
	if v == nil {
		return ""
	}
	str, ok := v.GetKind().(*structpb.Value_StringValue)
	if !ok {
		s.fail(key, "want a string")
		return ""
	}
	if required && str.StringValue == "" {
		s.fail(key, "required")
	}
	return str.StringValue
}

// duration reads a positive Go duration string ("10s", "250ms").
func (s *structReader) duration(key string) time.Duration {
	str := s.str(key, true)
	if str == "" {
		return 0
	}
	d, err := time.ParseDuration(str)
	if err != nil {
		s.fail(key, "%v", err)
		return 0
	}
	if d <= 0 {
		s.fail(key, "%s must be positive", str)
		return 0
	}
	return d
}

func (s *structReader) strList(key string) []string {
	v := s.get(key, false)
	if v == nil {
		return nil
	}
	l, ok := v.GetKind().(*structpb.Value_ListValue)
	if !ok {
		s.fail(key, "want a list of strings")
		return nil
	}
	out := make([]string, 0, len(l.ListValue.GetValues()))
	for i, e := range l.ListValue.GetValues() {
		str, ok := e.GetKind().(*structpb.Value_StringValue)
		if !ok {
			s.fail(fmt.Sprintf("%s[%d]", key, i), "want a string")
			return nil
		}
		out = append(out, str.StringValue)
	}
	return out
}

// done returns the first error, or one naming the keys nobody read.
func (s *structReader) done() error {
	if s.err != nil {
		return s.err
	}
	var unknown []string
	for k := range s.fields {
		if !slices.Contains(s.read, k) {
			unknown = append(unknown, k)
		}
	}
	slices.Sort(unknown)
	errs := make([]error, len(unknown))
	for i, k := range unknown {
		errs[i] = fmt.Errorf("%s%s: unsupported", s.path, k)
	}
	return errors.Join(errs...)
}
