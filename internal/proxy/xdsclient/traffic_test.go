package xdsclient

import (
	"math"
	"strings"
	"testing"
	"time"

	xdstypev3 "github.com/cncf/xds/go/xds/type/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	commonratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	commonfaultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	localratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	bandwidthv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_bandwidth_limit/v3"
	leastrequestv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/least_request/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"verge.dev/verge/internal/proxy/config"
)

// Builders of the traffic fields, shaped as docs/xds-traffic.md says the
// translator sends them.

func pct(n uint32, d typev3.FractionalPercent_DenominatorType) *typev3.FractionalPercent {
	return &typev3.FractionalPercent{Numerator: n, Denominator: d}
}

func runtimePct(n uint32) *corev3.RuntimeFractionalPercent {
	return &corev3.RuntimeFractionalPercent{DefaultValue: pct(n, typev3.FractionalPercent_HUNDRED)}
}

func typedStructAny(typeURL string, fields map[string]any) *anypb.Any {
	s, err := structpb.NewStruct(fields)
	if err != nil {
		panic(err)
	}
	return mustAny(&xdstypev3.TypedStruct{TypeUrl: typeURL, Value: s})
}

func bucket(maxTokens, perFill uint32, every time.Duration) *typev3.TokenBucket {
	return &typev3.TokenBucket{MaxTokens: maxTokens, TokensPerFill: wrapperspb.UInt32(perFill), FillInterval: durationpb.New(every)}
}

// rateLimit is an inbound route's LocalRateLimit as the translator sends it.
func rateLimit(key string) *localratelimitv3.LocalRateLimit {
	rl := &localratelimitv3.LocalRateLimit{
		StatPrefix:                     "inbound",
		TokenBucket:                    bucket(20, 10, time.Second),
		FilterEnabled:                  runtimePct(100),
		FilterEnforced:                 runtimePct(100),
		EnableRetryAfterHeader:         true,
		RateLimitedAsResourceExhausted: true,
	}
	if key != "" {
		rl.Descriptors = []*commonratelimitv3.LocalRateLimitDescriptor{{
			Entries:     []*commonratelimitv3.RateLimitDescriptor_Entry{{Key: key}},
			TokenBucket: bucket(20, 10, time.Second),
		}}
		rl.MaxDynamicDescriptors = wrapperspb.UInt32(10000)
	}
	return rl
}

func fault() *faultv3.HTTPFault {
	return &faultv3.HTTPFault{
		Delay: &commonfaultv3.FaultDelay{
			FaultDelaySecifier: &commonfaultv3.FaultDelay_FixedDelay{FixedDelay: durationpb.New(time.Second)},
			Percentage:         pct(50, typev3.FractionalPercent_HUNDRED),
		},
		Abort: &faultv3.FaultAbort{
			ErrorType:  &faultv3.FaultAbort_HttpStatus{HttpStatus: 503},
			Percentage: pct(250000, typev3.FractionalPercent_MILLION),
		},
		Headers:         []*routev3.HeaderMatcher{{Name: "X-Chaos", HeaderMatchSpecifier: &routev3.HeaderMatcher_ExactMatch{ExactMatch: "on"}}},
		MaxActiveFaults: wrapperspb.UInt32(5),
	}
}

// trafficRoute is a route to svc matching prefix /api whose action and
// route mod changes.
func trafficRoute(mod func(r *routev3.Route, a *routev3.RouteAction)) *routev3.Route {
	a := &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: svc}}
	r := &routev3.Route{
		Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/api"}},
		Action: &routev3.Route_Route{Route: a},
	}
	mod(r, a)
	return r
}

// wantRoute is trafficRoute's conversion with traffic t.
func wantRoute(t *config.RouteTraffic) *config.Route {
	return &config.Route{
		Match:    config.RouteMatch{Prefix: "/api"},
		Clusters: []config.WeightedCluster{{Name: svc, Weight: 1}}, TotalWeight: 1,
		Timeout: 15 * time.Second,
		Traffic: t,
	}
}

func buildRoute(t *testing.T, r *routev3.Route) (*config.Route, error) {
	t.Helper()
	snap, err := Build(nil, []*routev3.RouteConfiguration{routeConfig("r", r)}, nil, nil, nil)
	if err != nil {
		return nil, err
	}
	return snap.Routes["r"].VirtualHosts[0].Routes[0], nil
}

// checkErr fails unless err contains want (a field path and reason).
func checkErr(t *testing.T, err error, want string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("error = %v, want it to contain %q", err, want)
	}
}

func TestRouteTraffic(t *testing.T) {
	retry := func(mod func(*routev3.RetryPolicy)) *routev3.Route {
		return trafficRoute(func(_ *routev3.Route, a *routev3.RouteAction) {
			a.RetryPolicy = &routev3.RetryPolicy{RetryOn: "connect-failure"}
			mod(a.RetryPolicy)
		})
	}
	hdr := func(k, v string, action corev3.HeaderValueOption_HeaderAppendAction) *corev3.HeaderValueOption {
		return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: v}, AppendAction: action}
	}
	perFilter := func(name string, a *anypb.Any) *routev3.Route {
		return trafficRoute(func(r *routev3.Route, _ *routev3.RouteAction) {
			r.TypedPerFilterConfig = map[string]*anypb.Any{name: a}
		})
	}
	redirect := func(rd *routev3.RedirectAction) *routev3.Route {
		return trafficRoute(func(r *routev3.Route, _ *routev3.RouteAction) {
			r.Match = &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: "/old"}}
			r.Action = &routev3.Route_Redirect{Redirect: rd}
		})
	}
	tests := []struct {
		name string
		in   *routev3.Route
		want *config.Route
	}{
		{
			name: "no traffic management keeps Traffic nil",
			in:   trafficRoute(func(*routev3.Route, *routev3.RouteAction) {}),
			want: wantRoute(nil),
		},
		{
			name: "retry policy",
			in: retry(func(rp *routev3.RetryPolicy) {
				rp.RetryOn = "5xx, reset,retriable-status-codes,unavailable,5xx"
				rp.NumRetries = wrapperspb.UInt32(3)
				rp.PerTryTimeout = durationpb.New(2 * time.Second)
				rp.RetryBackOff = &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(10 * time.Millisecond), MaxInterval: durationpb.New(time.Second)}
				rp.RetriableStatusCodes = []uint32{503, 429}
			}),
			want: wantRoute(&config.RouteTraffic{Retry: &config.RetryPolicy{
				Attempts: 3, On: []string{"5xx", "reset", "unavailable"}, RetriableStatusCodes: []int{503, 429},
				PerTryTimeout: 2 * time.Second, BaseInterval: 10 * time.Millisecond, MaxInterval: time.Second,
			}}),
		},
		{
			name: "retry policy with Envoy's defaults",
			in:   retry(func(*routev3.RetryPolicy) {}),
			want: wantRoute(&config.RouteTraffic{Retry: &config.RetryPolicy{
				Attempts: 1, On: []string{"connect-failure"}, BaseInterval: 25 * time.Millisecond, MaxInterval: 250 * time.Millisecond,
			}}),
		},
		{
			name: "backoff max defaults to ten times base",
			in: retry(func(rp *routev3.RetryPolicy) {
				rp.RetryBackOff = &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(100 * time.Millisecond)}
			}),
			want: wantRoute(&config.RouteTraffic{Retry: &config.RetryPolicy{
				Attempts: 1, On: []string{"connect-failure"}, BaseInterval: 100 * time.Millisecond, MaxInterval: time.Second,
			}}),
		},
		{
			name: "hash policies",
			in: trafficRoute(func(_ *routev3.Route, a *routev3.RouteAction) {
				a.HashPolicy = []*routev3.RouteAction_HashPolicy{
					{Terminal: true, PolicySpecifier: &routev3.RouteAction_HashPolicy_Header_{Header: &routev3.RouteAction_HashPolicy_Header{HeaderName: "X-User"}}},
					{PolicySpecifier: &routev3.RouteAction_HashPolicy_Cookie_{Cookie: &routev3.RouteAction_HashPolicy_Cookie{Name: "sticky", Ttl: durationpb.New(time.Hour), Path: "/"}}},
					{PolicySpecifier: &routev3.RouteAction_HashPolicy_ConnectionProperties_{ConnectionProperties: &routev3.RouteAction_HashPolicy_ConnectionProperties{SourceIp: true}}},
				}
			}),
			want: wantRoute(&config.RouteTraffic{Hash: []config.HashPolicy{
				{Header: "x-user"}, {Cookie: "sticky", CookieTTL: time.Hour, CookiePath: "/"}, {SourceIP: true},
			}}),
		},
		{
			name: "header mutations",
			in: trafficRoute(func(r *routev3.Route, _ *routev3.RouteAction) {
				r.RequestHeadersToAdd = []*corev3.HeaderValueOption{
					hdr("X-Env", "prod", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD),
					hdr("X-Trace", "1", corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD),
				}
				r.RequestHeadersToRemove = []string{"X-Debug"}
				r.ResponseHeadersToAdd = []*corev3.HeaderValueOption{hdr("cache-control", "no-store", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD)}
				r.ResponseHeadersToRemove = []string{"server"}
			}),
			want: wantRoute(&config.RouteTraffic{
				RequestHeaders:  config.HeaderMutation{Set: []config.Header{{Name: "x-env", Value: "prod"}}, Add: []config.Header{{Name: "x-trace", Value: "1"}}, Remove: []string{"x-debug"}},
				ResponseHeaders: config.HeaderMutation{Set: []config.Header{{Name: "cache-control", Value: "no-store"}}, Remove: []string{"server"}},
			}),
		},
		{
			name: "prefix and host rewrite",
			in: trafficRoute(func(_ *routev3.Route, a *routev3.RouteAction) {
				a.PrefixRewrite = "/v2"
				a.HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: "backend.internal"}
			}),
			want: wantRoute(&config.RouteTraffic{Rewrite: &config.Rewrite{PathPrefix: "/v2", PrefixMatch: "/api", Host: "backend.internal"}}),
		},
		{
			name: "full path rewrite",
			in: trafficRoute(func(_ *routev3.Route, a *routev3.RouteAction) {
				a.RegexRewrite = &matcherv3.RegexMatchAndSubstitute{Pattern: &matcherv3.RegexMatcher{Regex: "^.*$"}, Substitution: "/health"}
			}),
			want: wantRoute(&config.RouteTraffic{Rewrite: &config.Rewrite{FullPath: "/health", FullPathSet: true}}),
		},
		{
			name: "mirrors",
			in: trafficRoute(func(_ *routev3.Route, a *routev3.RouteAction) {
				a.RequestMirrorPolicies = []*routev3.RouteAction_RequestMirrorPolicy{
					{Cluster: "shadow.default.mesh:80"},
					{Cluster: "audit.default.mesh:80", RuntimeFraction: &corev3.RuntimeFractionalPercent{DefaultValue: pct(5, typev3.FractionalPercent_TEN_THOUSAND), RuntimeKey: "ignored"}},
				}
			}),
			want: wantRoute(&config.RouteTraffic{Mirrors: []config.Mirror{{Cluster: "shadow.default.mesh:80", Percent: 100}, {Cluster: "audit.default.mesh:80", Percent: 0.05}}}),
		},
		{
			name: "fault",
			in:   perFilter(faultFilterName, mustAny(fault())),
			want: wantRoute(&config.RouteTraffic{Faults: []*config.Fault{{
				Headers: []config.HeaderMatch{{Name: "x-chaos", Exact: "on"}},
				Delay:   time.Second, DelayPercent: 50,
				AbortHTTPStatus: 503, AbortGRPCStatus: -1, AbortPercent: 25,
				MaxActive: 5,
			}}}),
		},
		{
			name: "grpc abort",
			in: perFilter(faultFilterName, mustAny(&faultv3.HTTPFault{Abort: &faultv3.FaultAbort{
				ErrorType: &faultv3.FaultAbort_GrpcStatus{GrpcStatus: 14}, Percentage: pct(100, typev3.FractionalPercent_HUNDRED),
			}})),
			want: wantRoute(&config.RouteTraffic{Faults: []*config.Fault{{AbortHTTPStatus: 200, AbortGRPCStatus: 14, AbortPercent: 100}}}),
		},
		{
			name: "rate limit, one bucket",
			in:   perFilter(rateLimitFilterName, mustAny(rateLimit(""))),
			want: wantRoute(&config.RouteTraffic{RateLimit: &config.RateLimit{MaxTokens: 20, TokensPerFill: 10, FillInterval: time.Second}}),
		},
		{
			name: "rate limit per source",
			in:   perFilter(rateLimitFilterName, mustAny(rateLimit("source"))),
			want: wantRoute(&config.RouteTraffic{RateLimit: &config.RateLimit{MaxTokens: 20, TokensPerFill: 10, FillInterval: time.Second, By: "source"}}),
		},
		{
			name: "rate limit per header without a default bucket",
			in: perFilter(rateLimitFilterName, mustAny(func() *localratelimitv3.LocalRateLimit {
				rl := rateLimit("header:X-Tenant")
				rl.TokenBucket = nil
				return rl
			}())),
			want: wantRoute(&config.RouteTraffic{RateLimit: &config.RateLimit{MaxTokens: 20, TokensPerFill: 10, FillInterval: time.Second, By: "header:x-tenant"}}),
		},
		{
			name: "priority class",
			in:   perFilter(priorityFilterName, typedStructAny(priorityTypeURL, map[string]any{"class": "critical"})),
			want: wantRoute(&config.RouteTraffic{PriorityClass: "critical"}),
		},
		{
			name: "redirect",
			in: redirect(&routev3.RedirectAction{
				SchemeRewriteSpecifier: &routev3.RedirectAction_SchemeRedirect{SchemeRedirect: "HTTPS"},
				HostRedirect:           "new.example", PortRedirect: 8443,
				PathRewriteSpecifier: &routev3.RedirectAction_PrefixRewrite{PrefixRewrite: "/new"},
				ResponseCode:         routev3.RedirectAction_PERMANENT_REDIRECT,
			}),
			want: &config.Route{
				Match: config.RouteMatch{PathSeparatedPrefix: "/old"},
				Traffic: &config.RouteTraffic{Redirect: &config.Redirect{
					Scheme: "https", Host: "new.example", Port: 8443, PathPrefix: "/new", PrefixMatch: "/old", Status: 308,
				}},
			},
		},
		{
			name: "redirect with path and Envoy's default code",
			in:   redirect(&routev3.RedirectAction{PathRewriteSpecifier: &routev3.RedirectAction_PathRedirect{PathRedirect: "/moved"}}),
			want: &config.Route{
				Match:   config.RouteMatch{PathSeparatedPrefix: "/old"},
				Traffic: &config.RouteTraffic{Redirect: &config.Redirect{Path: "/moved", Status: 301}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := buildRoute(t, tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, regexpComparer); diff != "" {
				t.Errorf("route mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRouteTrafficRefused(t *testing.T) {
	const prefix = `route configuration "r": virtual_hosts[0].routes[0].`
	retry := func(mod func(*routev3.RetryPolicy)) *routev3.Route {
		return trafficRoute(func(_ *routev3.Route, a *routev3.RouteAction) {
			a.RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx"}
			mod(a.RetryPolicy)
		})
	}
	action := func(mod func(*routev3.RouteAction)) *routev3.Route {
		return trafficRoute(func(_ *routev3.Route, a *routev3.RouteAction) { mod(a) })
	}
	route := func(mod func(*routev3.Route)) *routev3.Route {
		return trafficRoute(func(r *routev3.Route, _ *routev3.RouteAction) { mod(r) })
	}
	perFilter := func(name string, a *anypb.Any) *routev3.Route {
		return route(func(r *routev3.Route) { r.TypedPerFilterConfig = map[string]*anypb.Any{name: a} })
	}
	withFault := func(mod func(*faultv3.HTTPFault)) *routev3.Route {
		f := fault()
		mod(f)
		return perFilter(faultFilterName, mustAny(f))
	}
	withLimit := func(key string, mod func(*localratelimitv3.LocalRateLimit)) *routev3.Route {
		rl := rateLimit(key)
		mod(rl)
		return perFilter(rateLimitFilterName, mustAny(rl))
	}
	redirect := func(rd *routev3.RedirectAction) *routev3.Route {
		return route(func(r *routev3.Route) { r.Action = &routev3.Route_Redirect{Redirect: rd} })
	}
	hdr := func(k string, action corev3.HeaderValueOption_HeaderAppendAction) []*corev3.HeaderValueOption {
		return []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: k, Value: "v"}, AppendAction: action}}
	}
	tests := []struct {
		name    string
		in      *routev3.Route
		wantErr string
	}{
		{"unknown retry condition", retry(func(rp *routev3.RetryPolicy) { rp.RetryOn = "5xx,envoy-ratelimited" }),
			`route.retry_policy.retry_on: unsupported condition "envoy-ratelimited"`},
		{"empty retry condition", retry(func(rp *routev3.RetryPolicy) { rp.RetryOn = "" }), `route.retry_policy.retry_on: empty condition`},
		{"zero retries", retry(func(rp *routev3.RetryPolicy) { rp.NumRetries = wrapperspb.UInt32(0) }), `route.retry_policy.num_retries: 0 out of range [1, 100]`},
		{"zero per-try timeout", retry(func(rp *routev3.RetryPolicy) { rp.PerTryTimeout = durationpb.New(0) }), `route.retry_policy.per_try_timeout: must be positive`},
		{"backoff max below base", retry(func(rp *routev3.RetryPolicy) {
			rp.RetryBackOff = &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(time.Second), MaxInterval: durationpb.New(time.Millisecond)}
		}), `route.retry_policy.retry_back_off.max_interval: 1ms is less than base_interval 1s`},
		{"status code out of range", retry(func(rp *routev3.RetryPolicy) {
			rp.RetryOn = "retriable-status-codes"
			rp.RetriableStatusCodes = []uint32{99}
		}), `route.retry_policy.retriable_status_codes[0]: 99 is not an HTTP status`},
		{"status codes without the condition", retry(func(rp *routev3.RetryPolicy) { rp.RetriableStatusCodes = []uint32{503} }),
			`route.retry_policy.retriable_status_codes: must be set exactly when retry_on holds "retriable-status-codes"`},
		{"retry field not supported", retry(func(rp *routev3.RetryPolicy) {
			rp.RetriableHeaders = []*routev3.HeaderMatcher{{Name: "x"}}
		}), `route.retry_policy.retriable_headers: unsupported`},
		{"hash by query parameter", action(func(a *routev3.RouteAction) {
			a.HashPolicy = []*routev3.RouteAction_HashPolicy{{PolicySpecifier: &routev3.RouteAction_HashPolicy_QueryParameter_{QueryParameter: &routev3.RouteAction_HashPolicy_QueryParameter{Name: "u"}}}}
		}), `route.hash_policy[0].query_parameter: unsupported`},
		{"hash by source ip false", action(func(a *routev3.RouteAction) {
			a.HashPolicy = []*routev3.RouteAction_HashPolicy{{PolicySpecifier: &routev3.RouteAction_HashPolicy_ConnectionProperties_{ConnectionProperties: &routev3.RouteAction_HashPolicy_ConnectionProperties{}}}}
		}), `route.hash_policy[0].connection_properties.source_ip: must be true`},
		{"session cookie", action(func(a *routev3.RouteAction) {
			a.HashPolicy = []*routev3.RouteAction_HashPolicy{{PolicySpecifier: &routev3.RouteAction_HashPolicy_Cookie_{Cookie: &routev3.RouteAction_HashPolicy_Cookie{Name: "s", Ttl: durationpb.New(0)}}}}
		}), `route.hash_policy[0].cookie.ttl: must be positive`},
		{"append action add if absent", route(func(r *routev3.Route) { r.RequestHeadersToAdd = hdr("x", corev3.HeaderValueOption_ADD_IF_ABSENT) }),
			`request_headers_to_add[0].append_action: only OVERWRITE_IF_EXISTS_OR_ADD and APPEND_IF_EXISTS_OR_ADD are supported, got ADD_IF_ABSENT`},
		{"pseudo-header mutation", route(func(r *routev3.Route) {
			r.RequestHeadersToAdd = hdr(":path", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD)
		}),
			`request_headers_to_add[0].header.key: ":path" may not be modified`},
		{"host removal", route(func(r *routev3.Route) { r.ResponseHeadersToRemove = []string{"Host"} }),
			`response_headers_to_remove[0]: "Host" may not be modified`},
		{"prefix rewrite after a regex match", trafficRoute(func(r *routev3.Route, a *routev3.RouteAction) {
			r.Match = &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "/a.*"}}}
			a.PrefixRewrite = "/x"
		}), `route.prefix_rewrite: needs a prefix or path_separated_prefix match`},
		{"regex rewrite of part of the path", action(func(a *routev3.RouteAction) {
			a.RegexRewrite = &matcherv3.RegexMatchAndSubstitute{Pattern: &matcherv3.RegexMatcher{Regex: "^/api/(.*)$"}, Substitution: "/\\1"}
		}), `route.regex_rewrite.pattern.regex: only "^.*$" (replace the full path) is supported`},
		{"full path rewrite with a group", action(func(a *routev3.RouteAction) {
			a.RegexRewrite = &matcherv3.RegexMatchAndSubstitute{Pattern: &matcherv3.RegexMatcher{Regex: "^.*$"}, Substitution: "/\\0"}
		}), `route.regex_rewrite.substitution: capture group references are unsupported`},
		{"both rewrites", action(func(a *routev3.RouteAction) {
			a.PrefixRewrite = "/x"
			a.RegexRewrite = &matcherv3.RegexMatchAndSubstitute{Pattern: &matcherv3.RegexMatcher{Regex: "^.*$"}, Substitution: "/y"}
		}), `route.prefix_rewrite: set together with regex_rewrite`},
		{"host rewrite from a header", action(func(a *routev3.RouteAction) {
			a.HostRewriteSpecifier = &routev3.RouteAction_HostRewriteHeader{HostRewriteHeader: "x-host"}
		}), `route.host_rewrite_specifier: only host_rewrite_literal is supported`},
		{"mirror above 100%", action(func(a *routev3.RouteAction) {
			a.RequestMirrorPolicies = []*routev3.RouteAction_RequestMirrorPolicy{{Cluster: "m", RuntimeFraction: runtimePct(101)}}
		}), `route.request_mirror_policies[0].runtime_fraction.default_value.numerator: 101 exceeds the denominator HUNDRED`},
		{"mirror by header", action(func(a *routev3.RouteAction) {
			a.RequestMirrorPolicies = []*routev3.RouteAction_RequestMirrorPolicy{{ClusterHeader: "x-mirror"}}
		}), `route.request_mirror_policies[0].cluster_header: unsupported`},
		{"redirect to ftp", redirect(&routev3.RedirectAction{SchemeRewriteSpecifier: &routev3.RedirectAction_SchemeRedirect{SchemeRedirect: "ftp"}}),
			`redirect.scheme_redirect: want http or https, got "ftp"`},
		{"redirect port", redirect(&routev3.RedirectAction{PortRedirect: 70000}), `redirect.port_redirect: 70000 is not a port`},
		{"redirect strip query", redirect(&routev3.RedirectAction{StripQuery: true}), `redirect.strip_query: unsupported`},
		{"redirect regex", redirect(&routev3.RedirectAction{PathRewriteSpecifier: &routev3.RedirectAction_RegexRewrite{
			RegexRewrite: &matcherv3.RegexMatchAndSubstitute{Pattern: &matcherv3.RegexMatcher{Regex: "^.*$"}, Substitution: "/"},
		}}), `redirect.regex_rewrite: unsupported`},
		{"fault without delay or abort", perFilter(faultFilterName, mustAny(&faultv3.HTTPFault{})),
			`typed_per_filter_config["envoy.filters.http.fault"].delay: delay or abort required`},
		{"fault delay without percentage", withFault(func(f *faultv3.HTTPFault) { f.Delay.Percentage = nil }),
			`typed_per_filter_config["envoy.filters.http.fault"].delay.percentage: required`},
		{"fault abort above 100%", withFault(func(f *faultv3.HTTPFault) { f.Abort.Percentage = pct(10001, typev3.FractionalPercent_TEN_THOUSAND) }),
			`typed_per_filter_config["envoy.filters.http.fault"].abort.percentage.numerator: 10001 exceeds the denominator TEN_THOUSAND`},
		{"fault grpc OK", withFault(func(f *faultv3.HTTPFault) { f.Abort.ErrorType = &faultv3.FaultAbort_GrpcStatus{GrpcStatus: 0} }),
			`typed_per_filter_config["envoy.filters.http.fault"].abort.grpc_status: 0 is not a gRPC error code`},
		{"fault abort from a header", withFault(func(f *faultv3.HTTPFault) {
			f.Abort.ErrorType = &faultv3.FaultAbort_HeaderAbort_{HeaderAbort: &faultv3.FaultAbort_HeaderAbort{}}
		}), `typed_per_filter_config["envoy.filters.http.fault"].abort.header_abort: unsupported`},
		{"fault max active zero", withFault(func(f *faultv3.HTTPFault) { f.MaxActiveFaults = wrapperspb.UInt32(0) }),
			`typed_per_filter_config["envoy.filters.http.fault"].max_active_faults: 0 out of range`},
		{"fault upstream cluster", withFault(func(f *faultv3.HTTPFault) { f.UpstreamCluster = "x" }),
			`typed_per_filter_config["envoy.filters.http.fault"].upstream_cluster: unsupported`},
		{"fault of the wrong type", perFilter(faultFilterName, mustAny(rateLimit(""))),
			`typed_per_filter_config["envoy.filters.http.fault"]: unsupported type "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit", want envoy.extensions.filters.http.fault.v3.HTTPFault`},
		{"limit half enabled", withLimit("", func(rl *localratelimitv3.LocalRateLimit) { rl.FilterEnabled = runtimePct(50) }),
			`typed_per_filter_config["envoy.filters.http.local_ratelimit"].filter_enabled: only 100% is supported, got 50%`},
		{"limit not enforced", withLimit("", func(rl *localratelimitv3.LocalRateLimit) { rl.FilterEnforced = nil }),
			`typed_per_filter_config["envoy.filters.http.local_ratelimit"].filter_enforced: required (100%)`},
		{"limit without retry-after", withLimit("", func(rl *localratelimitv3.LocalRateLimit) { rl.EnableRetryAfterHeader = false }),
			`typed_per_filter_config["envoy.filters.http.local_ratelimit"].enable_retry_after_header: must be true`},
		{"limit drawing from both buckets", withLimit("source", func(rl *localratelimitv3.LocalRateLimit) { rl.AlwaysConsumeDefaultTokenBucket = wrapperspb.Bool(true) }),
			`typed_per_filter_config["envoy.filters.http.local_ratelimit"].always_consume_default_token_bucket: only false is supported`},
		{"limit with a custom status", withLimit("", func(rl *localratelimitv3.LocalRateLimit) {
			rl.Status = &typev3.HttpStatus{Code: typev3.StatusCode_ServiceUnavailable}
		}),
			`typed_per_filter_config["envoy.filters.http.local_ratelimit"].status: unsupported`},
		{"limit without a bucket", withLimit("", func(rl *localratelimitv3.LocalRateLimit) { rl.TokenBucket = nil }),
			`typed_per_filter_config["envoy.filters.http.local_ratelimit"].token_bucket: required`},
		{"limit keyed by something else", withLimit("remote_address", func(*localratelimitv3.LocalRateLimit) {}),
			`typed_per_filter_config["envoy.filters.http.local_ratelimit"].descriptors[0].entries[0].key: want "source" or "header:" NAME, got "remote_address"`},
		{"limit with a static descriptor", withLimit("source", func(rl *localratelimitv3.LocalRateLimit) { rl.Descriptors[0].Entries[0].Value = "spiffe://x" }),
			`typed_per_filter_config["envoy.filters.http.local_ratelimit"].descriptors[0].entries[0].value: must be empty`},
		{"limit with a different default bucket", withLimit("source", func(rl *localratelimitv3.LocalRateLimit) { rl.TokenBucket = bucket(1, 1, time.Second) }),
			`typed_per_filter_config["envoy.filters.http.local_ratelimit"].token_bucket: must equal descriptors[0].token_bucket when set`},
		{"limit with two descriptors", withLimit("source", func(rl *localratelimitv3.LocalRateLimit) { rl.Descriptors = append(rl.Descriptors, rl.Descriptors[0]) }),
			`typed_per_filter_config["envoy.filters.http.local_ratelimit"].descriptors: want at most 1, got 2`},
		{"priority of another type", perFilter(priorityFilterName, typedStructAny("type.googleapis.com/verge.dev.Other", map[string]any{"class": "x"})),
			`typed_per_filter_config["verge.filters.http.priority"].type_url: want "type.googleapis.com/verge.dev.filters.http.Priority"`},
		{"priority without class", perFilter(priorityFilterName, typedStructAny(priorityTypeURL, map[string]any{})),
			`typed_per_filter_config["verge.filters.http.priority"].value.class: required`},
		{"priority with an unknown key", perFilter(priorityFilterName, typedStructAny(priorityTypeURL, map[string]any{"class": "x", "weight": 2})),
			`typed_per_filter_config["verge.filters.http.priority"].value.weight: unsupported`},
		{"priority class not a string", perFilter(priorityFilterName, typedStructAny(priorityTypeURL, map[string]any{"class": 1})),
			`typed_per_filter_config["verge.filters.http.priority"].value.class: want a string`},
		{"unknown per-filter config", perFilter("envoy.filters.http.cors", mustAny(&faultv3.HTTPFault{})),
			`typed_per_filter_config["envoy.filters.http.cors"]: unsupported filter`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := buildRoute(t, tt.in)
			checkErr(t, err, prefix+tt.wantErr)
		})
	}
}

func TestVirtualHostTrafficRefused(t *testing.T) {
	rc := routeConfig("r", clusterRoute("/", svc))
	rc.VirtualHosts[0].RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx"}
	_, err := Build(nil, []*routev3.RouteConfiguration{rc}, nil, nil, nil)
	checkErr(t, err, `route configuration "r": virtual_hosts[0].retry_policy: unsupported on a virtual host (set it per route)`)

	rc = routeConfig("r", clusterRoute("/", svc))
	rc.ResponseHeadersToRemove = []string{"server"}
	_, err = Build(nil, []*routev3.RouteConfiguration{rc}, nil, nil, nil)
	checkErr(t, err, `route configuration "r": response_headers_to_remove: unsupported on a route configuration`)
}

// inboundListener is an inbound HTTP listener with an inline route table
// and the given HTTP filters before the router.
func inboundListener(filters ...*hcmv3.HttpFilter) *listenerv3.Listener {
	return listenerWith("inbound:8080", 15006, hcmFilter(&hcmv3.HttpConnectionManager{
		StatPrefix:     "inbound",
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: routeConfig("inbound", clusterRoute("/", "inbound:8080"))},
		HttpFilters:    append(filters, routerFilter()),
	}))
}

func httpFilter(name string, a *anypb.Any, optional bool) *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}, IsOptional: optional}
}

func priorityFilter(fields map[string]any) *hcmv3.HttpFilter {
	return httpFilter(priorityFilterName, typedStructAny(priorityTypeURL, fields), true)
}

// bandwidthListener is a TCP listener to db with filters before tcp_proxy.
func bandwidthListener(filters ...*listenerv3.Filter) *listenerv3.Listener {
	l := tcpListener("inbound:5432", 15007, db)
	l.FilterChains[0].Filters = append(filters, l.FilterChains[0].Filters...)
	return l
}

func bandwidthFilter(read, write uint64) *listenerv3.Filter {
	return &listenerv3.Filter{Name: "envoy.filters.network.tcp_bandwidth_limit", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&bandwidthv3.TcpBandwidthLimit{
		StatPrefix: "inbound", ReadLimitKbps: wrapperspb.UInt64(read), WriteLimitKbps: wrapperspb.UInt64(write),
	})}}
}

func TestListenerTraffic(t *testing.T) {
	overload := map[string]any{
		"maxConcurrent": 100, "maxQueue": 50, "maxQueueWait": "250ms", "header": "X-Priority",
		"classes": []any{"critical", "default", "bulk"}, "defaultClass": "default",
	}
	tests := []struct {
		name string
		in   *listenerv3.Listener
		want *config.ListenerTraffic
	}{
		{
			name: "fault, rate limit and priority filters",
			in: inboundListener(
				httpFilter(faultFilterName, mustAny(&faultv3.HTTPFault{}), false),
				httpFilter(rateLimitFilterName, mustAny(&localratelimitv3.LocalRateLimit{StatPrefix: "inbound"}), false),
				priorityFilter(overload),
			),
			want: &config.ListenerTraffic{Overload: &config.Overload{
				MaxConcurrent: 100, MaxQueue: 50, MaxQueueWait: 250 * time.Millisecond, Header: "x-priority",
				Classes: []string{"critical", "default", "bulk"}, DefaultClass: "default",
			}},
		},
		{
			name: "priority defaults",
			in:   inboundListener(priorityFilter(map[string]any{"maxConcurrent": 8, "classes": []any{"a", "b"}, "defaultClass": "b"})),
			want: &config.ListenerTraffic{Overload: &config.Overload{
				MaxConcurrent: 8, MaxQueue: 8, MaxQueueWait: time.Second, Header: "x-verge-priority", Classes: []string{"a", "b"}, DefaultClass: "b",
			}},
		},
		{
			name: "no traffic filters keeps Traffic nil",
			in:   inboundListener(httpFilter(faultFilterName, mustAny(&faultv3.HTTPFault{}), false)),
		},
		{
			name: "optional TypedStruct of another type is skipped",
			in:   inboundListener(httpFilter("verge.other", typedStructAny("type.googleapis.com/verge.dev.Other", map[string]any{"x": 1}), true)),
		},
		{
			name: "bandwidth",
			in:   bandwidthListener(bandwidthFilter(10, 10)),
			want: &config.ListenerTraffic{BandwidthBytesPerSecond: 10240},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap, err := Build([]*listenerv3.Listener{tt.in}, nil, []*clusterv3.Cluster{edsCluster(db, false)}, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, snap.Listeners[0].Traffic); diff != "" {
				t.Errorf("listener traffic mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestListenerTrafficRefused(t *testing.T) {
	const hcm = `listener "inbound:8080": filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.`
	withOverload := func(mod func(map[string]any)) *listenerv3.Listener {
		f := map[string]any{"maxConcurrent": 10, "classes": []any{"high", "low"}, "defaultClass": "low"}
		mod(f)
		return inboundListener(priorityFilter(f))
	}
	tests := []struct {
		name    string
		in      *listenerv3.Listener
		wantErr string
	}{
		{"listener-wide fault", inboundListener(httpFilter(faultFilterName, mustAny(fault()), false)),
			hcm + `abort: unsupported`},
		{"listener-wide bucket", inboundListener(httpFilter(rateLimitFilterName, mustAny(rateLimit("")), false)),
			hcm + `enable_retry_after_header: unsupported`},
		{"no concurrency", withOverload(func(f map[string]any) { f["maxConcurrent"] = 0 }),
			hcm + `value.maxConcurrent: 0 is not a whole number in [1, 2147483647]`},
		{"fractional queue", withOverload(func(f map[string]any) { f["maxQueue"] = 1.5 }),
			hcm + `value.maxQueue: 1.5 is not a whole number`},
		{"bad queue wait", withOverload(func(f map[string]any) { f["maxQueueWait"] = "soon" }),
			hcm + `value.maxQueueWait: time: invalid duration "soon"`},
		{"negative queue wait", withOverload(func(f map[string]any) { f["maxQueueWait"] = "-1s" }),
			hcm + `value.maxQueueWait: -1s must be positive`},
		{"no classes", withOverload(func(f map[string]any) { delete(f, "classes") }),
			hcm + `value.classes: at least one class required`},
		{"duplicate class", withOverload(func(f map[string]any) { f["classes"] = []any{"low", "low"} }),
			hcm + `value.classes[1]: duplicate "low"`},
		{"default class unknown", withOverload(func(f map[string]any) { f["defaultClass"] = "mid" }),
			hcm + `value.defaultClass: "mid" is not one of classes`},
		{"unknown overload key", withOverload(func(f map[string]any) { f["shed"] = true }),
			hcm + `value.shed: unsupported`},
		{"two priority filters", inboundListener(
			priorityFilter(map[string]any{"maxConcurrent": 1, "classes": []any{"a"}, "defaultClass": "a"}),
			priorityFilter(map[string]any{"maxConcurrent": 1, "classes": []any{"a"}, "defaultClass": "a"}),
		), `listener "inbound:8080": filter_chains[0].filters[0].typed_config.http_filters[1]: duplicate verge.filters.http.priority filter`},
		{"bandwidth directions differ", bandwidthListener(bandwidthFilter(10, 20)),
			`listener "inbound:5432": filter_chains[0].filters[0].typed_config.write_limit_kbps: 20 differs from read_limit_kbps 10`},
		{"bandwidth zero", bandwidthListener(bandwidthFilter(0, 0)),
			`listener "inbound:5432": filter_chains[0].filters[0].typed_config.read_limit_kbps: 0 out of range`},
		{"bandwidth overflow", bandwidthListener(bandwidthFilter(math.MaxUint64, math.MaxUint64)),
			`listener "inbound:5432": filter_chains[0].filters[0].typed_config.read_limit_kbps: 18446744073709551615 out of range`},
		{"bandwidth fill interval", bandwidthListener(func() *listenerv3.Filter {
			f := bandwidthFilter(1, 1)
			bw := &bandwidthv3.TcpBandwidthLimit{}
			_ = f.GetTypedConfig().UnmarshalTo(bw)
			bw.FillInterval = durationpb.New(100 * time.Millisecond)
			f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(bw)}
			return f
		}()), `listener "inbound:5432": filter_chains[0].filters[0].typed_config.fill_interval: unsupported`},
		{"bandwidth after tcp_proxy", func() *listenerv3.Listener {
			l := tcpListener("inbound:5432", 15007, db)
			l.FilterChains[0].Filters = append(l.FilterChains[0].Filters, bandwidthFilter(1, 1))
			return l
		}(), `listener "inbound:5432": filter_chains[0].filters[1]: tcp_bandwidth_limit is supported before tcp_proxy only`},
		{"bandwidth before an HTTP connection manager", func() *listenerv3.Listener {
			l := inboundListener()
			l.FilterChains[0].Filters = append([]*listenerv3.Filter{bandwidthFilter(1, 1)}, l.FilterChains[0].Filters...)
			return l
		}(), `listener "inbound:8080": filter_chains[0].filters[0]: tcp_bandwidth_limit is supported before tcp_proxy only`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Build([]*listenerv3.Listener{tt.in}, nil, nil, nil, nil)
			checkErr(t, err, tt.wantErr)
		})
	}
}

func peakEWMAPolicy(fields map[string]any) *clusterv3.LoadBalancingPolicy {
	return &clusterv3.LoadBalancingPolicy{Policies: []*clusterv3.LoadBalancingPolicy_Policy{
		{TypedExtensionConfig: &corev3.TypedExtensionConfig{Name: "verge.lb.peak_ewma", TypedConfig: typedStructAny(peakEWMATypeURL, fields)}},
		{TypedExtensionConfig: &corev3.TypedExtensionConfig{Name: "envoy.load_balancing_policies.least_request", TypedConfig: mustAny(&leastrequestv3.LeastRequest{})}},
	}}
}

func trafficCluster(mod func(*clusterv3.Cluster)) *clusterv3.Cluster {
	c := edsCluster(svc, false)
	c.LbPolicy = clusterv3.Cluster_ROUND_ROBIN
	mod(c)
	return c
}

func wantCluster(lb config.LBPolicy, t *config.ClusterTraffic) *config.Cluster {
	return &config.Cluster{Name: svc, Protocol: config.UpstreamHTTP1, LB: lb, ConnectTimeout: 2 * time.Second, Traffic: t}
}

func healthCheck(mod func(*corev3.HealthCheck)) []*corev3.HealthCheck {
	hc := &corev3.HealthCheck{
		Timeout: durationpb.New(time.Second), Interval: durationpb.New(10 * time.Second),
		HealthyThreshold: wrapperspb.UInt32(2), UnhealthyThreshold: wrapperspb.UInt32(3),
		HealthChecker: &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{Path: "/healthz"}},
	}
	mod(hc)
	return []*corev3.HealthCheck{hc}
}

func TestClusterTraffic(t *testing.T) {
	tests := []struct {
		name string
		in   *clusterv3.Cluster
		want *config.Cluster
	}{
		{
			name: "ring hash with a minimum size",
			in: trafficCluster(func(c *clusterv3.Cluster) {
				c.LbPolicy = clusterv3.Cluster_RING_HASH
				c.LbConfig = &clusterv3.Cluster_RingHashLbConfig_{RingHashLbConfig: &clusterv3.Cluster_RingHashLbConfig{MinimumRingSize: wrapperspb.UInt64(2048)}}
			}),
			want: wantCluster(config.LBRingHash, &config.ClusterTraffic{RingHashMinSize: 2048}),
		},
		{
			name: "maglev",
			in:   trafficCluster(func(c *clusterv3.Cluster) { c.LbPolicy = clusterv3.Cluster_MAGLEV }),
			want: wantCluster(config.LBMaglev, nil),
		},
		{
			name: "peak EWMA with least request fallback",
			in:   trafficCluster(func(c *clusterv3.Cluster) { c.LoadBalancingPolicy = peakEWMAPolicy(map[string]any{"decay": "10s"}) }),
			want: wantCluster(config.LBPeakEWMA, nil),
		},
		{
			name: "peak EWMA with the default decay",
			in:   trafficCluster(func(c *clusterv3.Cluster) { c.LoadBalancingPolicy = peakEWMAPolicy(map[string]any{}) }),
			want: wantCluster(config.LBPeakEWMA, nil),
		},
		{
			name: "circuit breaker and retry budget",
			in: trafficCluster(func(c *clusterv3.Cluster) {
				c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
					MaxConnections: wrapperspb.UInt32(100), MaxPendingRequests: wrapperspb.UInt32(10),
					MaxRequests: wrapperspb.UInt32(200), MaxRetries: wrapperspb.UInt32(3),
					RetryBudget: &clusterv3.CircuitBreakers_Thresholds_RetryBudget{BudgetPercent: &typev3.Percent{Value: 25}, MinRetryConcurrency: wrapperspb.UInt32(10)},
				}}}
			}),
			want: wantCluster(config.LBRoundRobin, &config.ClusterTraffic{
				CircuitBreaker: &config.CircuitBreaker{MaxConnections: 100, MaxPendingRequests: 10, MaxRequests: 200, MaxRetries: 3},
				RetryBudget:    &config.RetryBudget{Percent: 25, MinRetriesPerSecond: 10},
			}),
		},
		{
			name: "retry budget with Envoy's defaults and no caps",
			in: trafficCluster(func(c *clusterv3.Cluster) {
				c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
					RetryBudget: &clusterv3.CircuitBreakers_Thresholds_RetryBudget{},
				}}}
			}),
			want: wantCluster(config.LBRoundRobin, &config.ClusterTraffic{RetryBudget: &config.RetryBudget{Percent: 20, MinRetriesPerSecond: 3}}),
		},
		{
			name: "outlier detection as the translator sends it",
			in: trafficCluster(func(c *clusterv3.Cluster) {
				c.OutlierDetection = &clusterv3.OutlierDetection{
					Consecutive_5Xx: wrapperspb.UInt32(5), EnforcingConsecutive_5Xx: wrapperspb.UInt32(100),
					ConsecutiveGatewayFailure: wrapperspb.UInt32(3), EnforcingConsecutiveGatewayFailure: wrapperspb.UInt32(100),
					Interval: durationpb.New(5 * time.Second), BaseEjectionTime: durationpb.New(15 * time.Second),
					MaxEjectionPercent: wrapperspb.UInt32(50), EnforcingSuccessRate: wrapperspb.UInt32(0),
				}
			}),
			want: wantCluster(config.LBRoundRobin, &config.ClusterTraffic{Outlier: &config.OutlierDetection{
				Consecutive5xx: 5, ConsecutiveGatewayErrors: 3, Interval: 5 * time.Second, BaseEjectionTime: 15 * time.Second, MaxEjectionPercent: 50,
			}}),
		},
		{
			name: "outlier detection with Envoy's defaults",
			in:   trafficCluster(func(c *clusterv3.Cluster) { c.OutlierDetection = &clusterv3.OutlierDetection{} }),
			want: wantCluster(config.LBRoundRobin, &config.ClusterTraffic{Outlier: &config.OutlierDetection{
				Consecutive5xx: 5, Interval: 10 * time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionPercent: 10,
			}}),
		},
		{
			name: "outlier 5xx check off",
			in: trafficCluster(func(c *clusterv3.Cluster) {
				c.OutlierDetection = &clusterv3.OutlierDetection{
					Consecutive_5Xx: wrapperspb.UInt32(0), EnforcingConsecutive_5Xx: wrapperspb.UInt32(0),
					ConsecutiveGatewayFailure: wrapperspb.UInt32(2), EnforcingConsecutiveGatewayFailure: wrapperspb.UInt32(100),
				}
			}),
			want: wantCluster(config.LBRoundRobin, &config.ClusterTraffic{Outlier: &config.OutlierDetection{
				ConsecutiveGatewayErrors: 2, Interval: 10 * time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionPercent: 10,
			}}),
		},
		{
			name: "http health check",
			in:   trafficCluster(func(c *clusterv3.Cluster) { c.HealthChecks = healthCheck(func(*corev3.HealthCheck) {}) }),
			want: wantCluster(config.LBRoundRobin, &config.ClusterTraffic{HealthCheck: &config.HealthCheck{
				Interval: 10 * time.Second, Timeout: time.Second, HealthyThreshold: 2, UnhealthyThreshold: 3, HTTP: true, HTTPPath: "/healthz",
			}}),
		},
		{
			name: "grpc health check",
			in: trafficCluster(func(c *clusterv3.Cluster) {
				c.HealthChecks = healthCheck(func(hc *corev3.HealthCheck) {
					hc.HealthChecker = &corev3.HealthCheck_GrpcHealthCheck_{GrpcHealthCheck: &corev3.HealthCheck_GrpcHealthCheck{ServiceName: "greeter"}}
				})
			}),
			want: wantCluster(config.LBRoundRobin, &config.ClusterTraffic{HealthCheck: &config.HealthCheck{
				Interval: 10 * time.Second, Timeout: time.Second, HealthyThreshold: 2, UnhealthyThreshold: 3, GRPC: true, GRPCService: "greeter",
			}}),
		},
		{
			name: "tcp health check",
			in: trafficCluster(func(c *clusterv3.Cluster) {
				c.HealthChecks = healthCheck(func(hc *corev3.HealthCheck) {
					hc.HealthChecker = &corev3.HealthCheck_TcpHealthCheck_{TcpHealthCheck: &corev3.HealthCheck_TcpHealthCheck{
						Send: &corev3.HealthCheck_Payload{Payload: &corev3.HealthCheck_Payload_Text{Text: "50494e47"}},
						Receive: []*corev3.HealthCheck_Payload{
							{Payload: &corev3.HealthCheck_Payload_Text{Text: "504f"}},
							{Payload: &corev3.HealthCheck_Payload_Binary{Binary: []byte("NG")}},
						},
					}}
				})
			}),
			want: wantCluster(config.LBRoundRobin, &config.ClusterTraffic{HealthCheck: &config.HealthCheck{
				Interval: 10 * time.Second, Timeout: time.Second, HealthyThreshold: 2, UnhealthyThreshold: 3,
				TCP: true, TCPSend: []byte("PING"), TCPExpect: []byte("PONG"),
			}}),
		},
		{
			name: "tcp connect-only health check",
			in: trafficCluster(func(c *clusterv3.Cluster) {
				c.HealthChecks = healthCheck(func(hc *corev3.HealthCheck) {
					hc.HealthChecker = &corev3.HealthCheck_TcpHealthCheck_{TcpHealthCheck: &corev3.HealthCheck_TcpHealthCheck{}}
				})
			}),
			want: wantCluster(config.LBRoundRobin, &config.ClusterTraffic{HealthCheck: &config.HealthCheck{
				Interval: 10 * time.Second, Timeout: time.Second, HealthyThreshold: 2, UnhealthyThreshold: 3, TCP: true,
			}}),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap, err := Build(nil, nil, []*clusterv3.Cluster{tt.in}, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, snap.Clusters[svc]); diff != "" {
				t.Errorf("cluster mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestClusterTrafficRefused(t *testing.T) {
	const prefix = `cluster "web.default.mesh:80": `
	thresholds := func(mod func(*clusterv3.CircuitBreakers_Thresholds)) *clusterv3.Cluster {
		return trafficCluster(func(c *clusterv3.Cluster) {
			th := &clusterv3.CircuitBreakers_Thresholds{}
			mod(th)
			c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{th}}
		})
	}
	outlier := func(od *clusterv3.OutlierDetection) *clusterv3.Cluster {
		return trafficCluster(func(c *clusterv3.Cluster) { c.OutlierDetection = od })
	}
	hc := func(mod func(*corev3.HealthCheck)) *clusterv3.Cluster {
		return trafficCluster(func(c *clusterv3.Cluster) { c.HealthChecks = healthCheck(mod) })
	}
	tests := []struct {
		name    string
		in      *clusterv3.Cluster
		wantErr string
	}{
		{"random", trafficCluster(func(c *clusterv3.Cluster) { c.LbPolicy = clusterv3.Cluster_RANDOM }), `lb_policy: unsupported policy RANDOM`},
		{"ring config without ring hash", trafficCluster(func(c *clusterv3.Cluster) {
			c.LbConfig = &clusterv3.Cluster_RingHashLbConfig_{RingHashLbConfig: &clusterv3.Cluster_RingHashLbConfig{}}
		}), `ring_hash_lb_config: set with lb_policy ROUND_ROBIN`},
		{"ring of size zero", trafficCluster(func(c *clusterv3.Cluster) {
			c.LbPolicy = clusterv3.Cluster_RING_HASH
			c.LbConfig = &clusterv3.Cluster_RingHashLbConfig_{RingHashLbConfig: &clusterv3.Cluster_RingHashLbConfig{MinimumRingSize: wrapperspb.UInt64(0)}}
		}), `ring_hash_lb_config.minimum_ring_size: 0 out of range [1, 8388608]`},
		{"ring maximum", trafficCluster(func(c *clusterv3.Cluster) {
			c.LbPolicy = clusterv3.Cluster_RING_HASH
			c.LbConfig = &clusterv3.Cluster_RingHashLbConfig_{RingHashLbConfig: &clusterv3.Cluster_RingHashLbConfig{MaximumRingSize: wrapperspb.UInt64(4096)}}
		}), `ring_hash_lb_config.maximum_ring_size: unsupported`},
		{"maglev table size", trafficCluster(func(c *clusterv3.Cluster) {
			c.LbPolicy = clusterv3.Cluster_MAGLEV
			c.LbConfig = &clusterv3.Cluster_MaglevLbConfig_{MaglevLbConfig: &clusterv3.Cluster_MaglevLbConfig{}}
		}), `lb_config: unsupported *clusterv3.Cluster_MaglevLbConfig_`},
		{"load balancing policy with lb_policy", trafficCluster(func(c *clusterv3.Cluster) {
			c.LbPolicy = clusterv3.Cluster_LEAST_REQUEST
			c.LoadBalancingPolicy = peakEWMAPolicy(nil)
		}), `load_balancing_policy: set together with lb_policy or its config`},
		{"load balancing policy not PeakEWMA first", trafficCluster(func(c *clusterv3.Cluster) {
			p := peakEWMAPolicy(nil)
			p.Policies = p.Policies[1:]
			c.LoadBalancingPolicy = p
		}), `load_balancing_policy.policies[0].typed_extension_config.typed_config: unsupported type "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest", want xds.type.v3.TypedStruct`},
		{"peak EWMA decay", trafficCluster(func(c *clusterv3.Cluster) { c.LoadBalancingPolicy = peakEWMAPolicy(map[string]any{"decay": "5s"}) }),
			`load_balancing_policy.policies[0].typed_extension_config.typed_config.value.decay: only 10s is supported, got 5s`},
		{"peak EWMA unknown key", trafficCluster(func(c *clusterv3.Cluster) { c.LoadBalancingPolicy = peakEWMAPolicy(map[string]any{"alpha": 0.5}) }),
			`load_balancing_policy.policies[0].typed_extension_config.typed_config.value.alpha: unsupported`},
		{"high priority thresholds", thresholds(func(th *clusterv3.CircuitBreakers_Thresholds) { th.Priority = corev3.RoutingPriority_HIGH }),
			`circuit_breakers.thresholds[0].priority: only DEFAULT is supported, got HIGH`},
		{"zero connections", thresholds(func(th *clusterv3.CircuitBreakers_Thresholds) { th.MaxConnections = wrapperspb.UInt32(0) }),
			`circuit_breakers.thresholds[0].max_connections: 0 out of range [1, 2147483647]`},
		{"two thresholds", trafficCluster(func(c *clusterv3.Cluster) {
			c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{}, {Priority: corev3.RoutingPriority_HIGH}}}
		}), `circuit_breakers.thresholds: want at most 1 (priority DEFAULT), got 2`},
		{"per host thresholds", trafficCluster(func(c *clusterv3.Cluster) {
			c.CircuitBreakers = &clusterv3.CircuitBreakers{PerHostThresholds: []*clusterv3.CircuitBreakers_Thresholds{{}}}
		}), `circuit_breakers.per_host_thresholds: unsupported`},
		{"track remaining", thresholds(func(th *clusterv3.CircuitBreakers_Thresholds) { th.TrackRemaining = true }),
			`circuit_breakers.thresholds[0].track_remaining: unsupported`},
		{"budget NaN", thresholds(func(th *clusterv3.CircuitBreakers_Thresholds) {
			th.RetryBudget = &clusterv3.CircuitBreakers_Thresholds_RetryBudget{BudgetPercent: &typev3.Percent{Value: math.NaN()}}
		}), `circuit_breakers.thresholds[0].retry_budget.budget_percent.value: NaN out of range [0, 100]`},
		{"budget allowing nothing", thresholds(func(th *clusterv3.CircuitBreakers_Thresholds) {
			th.RetryBudget = &clusterv3.CircuitBreakers_Thresholds_RetryBudget{BudgetPercent: &typev3.Percent{}, MinRetryConcurrency: wrapperspb.UInt32(0)}
		}), `circuit_breakers.thresholds[0].retry_budget.budget_percent: 0 with min_retry_concurrency 0 allows no retry at all`},
		{"partial enforcement", outlier(&clusterv3.OutlierDetection{EnforcingConsecutive_5Xx: wrapperspb.UInt32(50)}),
			`outlier_detection.enforcing_consecutive_5xx: only 0 (off) and 100 are supported, got 50`},
		{"enforced check of zero failures", outlier(&clusterv3.OutlierDetection{Consecutive_5Xx: wrapperspb.UInt32(0)}),
			`outlier_detection.consecutive_5xx: 0 out of range [1, 2147483647] (set enforcing_consecutive_5xx 0 to turn the check off)`},
		{"success rate", outlier(&clusterv3.OutlierDetection{EnforcingSuccessRate: wrapperspb.UInt32(100)}),
			`outlier_detection.enforcing_success_rate: only 0 is supported`},
		{"failure percentage", outlier(&clusterv3.OutlierDetection{FailurePercentageThreshold: wrapperspb.UInt32(10)}),
			`outlier_detection.failure_percentage_threshold: unsupported`},
		{"two health checks", trafficCluster(func(c *clusterv3.Cluster) {
			c.HealthChecks = append(healthCheck(func(*corev3.HealthCheck) {}), healthCheck(func(*corev3.HealthCheck) {})...)
		}),
			`health_checks: want at most 1, got 2`},
		{"zero threshold", hc(func(h *corev3.HealthCheck) { h.HealthyThreshold = wrapperspb.UInt32(0) }),
			`health_checks[0].healthy_threshold: 0 out of range [1, 100]`},
		{"relative path", hc(func(h *corev3.HealthCheck) { h.GetHttpHealthCheck().Path = "healthz" }),
			`health_checks[0].http_health_check.path: "healthz" must start with /`},
		{"http host", hc(func(h *corev3.HealthCheck) { h.GetHttpHealthCheck().Host = "x" }),
			`health_checks[0].http_health_check.host: unsupported`},
		{"jitter", hc(func(h *corev3.HealthCheck) { h.IntervalJitter = durationpb.New(time.Second) }),
			`health_checks[0].interval_jitter: unsupported`},
		{"tcp text not hex", hc(func(h *corev3.HealthCheck) {
			h.HealthChecker = &corev3.HealthCheck_TcpHealthCheck_{TcpHealthCheck: &corev3.HealthCheck_TcpHealthCheck{
				Send: &corev3.HealthCheck_Payload{Payload: &corev3.HealthCheck_Payload_Text{Text: "PING"}},
			}}
		}), `health_checks[0].tcp_health_check.send.text: not hex`},
		{"custom checker", hc(func(h *corev3.HealthCheck) {
			h.HealthChecker = &corev3.HealthCheck_CustomHealthCheck_{CustomHealthCheck: &corev3.HealthCheck_CustomHealthCheck{Name: "redis", ConfigType: &corev3.HealthCheck_CustomHealthCheck_TypedConfig{TypedConfig: mustAny(&faultv3.HTTPFault{})}}}
		}), `health_checks[0].custom_health_check: unsupported`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Build(nil, nil, []*clusterv3.Cluster{tt.in}, nil, nil)
			checkErr(t, err, prefix+tt.wantErr)
		})
	}
}

func TestEndpointLocality(t *testing.T) {
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: svc, Endpoints: []*endpointv3.LocalityLbEndpoints{
		{
			Locality:    &corev3.Locality{Region: "eu", Zone: "eu-1"},
			LbEndpoints: []*endpointv3.LbEndpoint{lbEndpoint("10.0.0.1", corev3.HealthStatus_HEALTHY), lbEndpoint("10.0.0.9", corev3.HealthStatus_UNHEALTHY)},
		},
		{
			Locality:    &corev3.Locality{Region: "eu", Zone: "eu-2"},
			Priority:    1,
			LbEndpoints: []*endpointv3.LbEndpoint{lbEndpoint("10.0.1.1", corev3.HealthStatus_UNKNOWN)},
		},
		{
			Priority:    2,
			LbEndpoints: []*endpointv3.LbEndpoint{lbEndpoint("10.0.2.1", corev3.HealthStatus_HEALTHY)},
		},
	}}
	snap, err := Build(nil, nil, []*clusterv3.Cluster{edsCluster(svc, false)}, []*endpointv3.ClusterLoadAssignment{cla}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []config.Endpoint{
		{Address: "10.0.0.1:80", Weight: 1, Region: "eu", Zone: "eu-1"},
		{Address: "10.0.1.1:80", Weight: 1, Priority: 1, Region: "eu", Zone: "eu-2"},
		{Address: "10.0.2.1:80", Weight: 1, Priority: 2},
	}
	if diff := cmp.Diff(want, snap.Clusters[svc].Endpoints); diff != "" {
		t.Errorf("endpoints mismatch (-want +got):\n%s", diff)
	}
}

func lbEndpoint(host string, health corev3.HealthStatus) *endpointv3.LbEndpoint {
	return &endpointv3.LbEndpoint{
		HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: socketAddr(host, 80)}},
		HealthStatus:   health,
	}
}

// trafficSeeds are resources carrying every traffic field, for FuzzBuild:
// a listener with the traffic filters and a route table using them, and a
// cluster with every protection and an assignment with localities.
func trafficSeeds() (listener, routes, cluster, cla proto.Message) {
	full := trafficRoute(func(r *routev3.Route, a *routev3.RouteAction) {
		a.RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx,retriable-status-codes", RetriableStatusCodes: []uint32{503}, NumRetries: wrapperspb.UInt32(2)}
		a.HashPolicy = []*routev3.RouteAction_HashPolicy{{PolicySpecifier: &routev3.RouteAction_HashPolicy_Header_{Header: &routev3.RouteAction_HashPolicy_Header{HeaderName: "x-user"}}}}
		a.PrefixRewrite = "/v2"
		a.RequestMirrorPolicies = []*routev3.RouteAction_RequestMirrorPolicy{{Cluster: "shadow", RuntimeFraction: runtimePct(10)}}
		r.RequestHeadersToRemove = []string{"x-debug"}
		r.TypedPerFilterConfig = map[string]*anypb.Any{
			faultFilterName:     mustAny(fault()),
			rateLimitFilterName: mustAny(rateLimit("source")),
			priorityFilterName:  typedStructAny(priorityTypeURL, map[string]any{"class": "critical"}),
		}
	})
	listener = inboundListener(
		httpFilter(faultFilterName, mustAny(&faultv3.HTTPFault{}), false),
		priorityFilter(map[string]any{"maxConcurrent": 4, "classes": []any{"critical", "bulk"}, "defaultClass": "bulk"}),
	)
	routes = routeConfig(svc, full)
	c := trafficCluster(func(c *clusterv3.Cluster) {
		c.LoadBalancingPolicy = peakEWMAPolicy(map[string]any{"decay": "10s"})
		c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{MaxRequests: wrapperspb.UInt32(10)}}}
		c.OutlierDetection = &clusterv3.OutlierDetection{}
		c.HealthChecks = healthCheck(func(*corev3.HealthCheck) {})
	})
	cla = &endpointv3.ClusterLoadAssignment{ClusterName: svc, Endpoints: []*endpointv3.LocalityLbEndpoints{
		{Locality: &corev3.Locality{Region: "r", Zone: "z"}, LbEndpoints: []*endpointv3.LbEndpoint{lbEndpoint("10.0.0.1", corev3.HealthStatus_HEALTHY)}},
		{Priority: 1, LbEndpoints: []*endpointv3.LbEndpoint{lbEndpoint("10.0.0.2", corev3.HealthStatus_HEALTHY)}},
	}}
	return listener, routes, c, cla
}

// TestTrafficSeedsBuild keeps FuzzBuild's traffic seeds valid, so the
// fuzzer starts from inputs that reach every conversion.
func TestTrafficSeedsBuild(t *testing.T) {
	l, r, c, e := trafficSeeds()
	snap, err := Build([]*listenerv3.Listener{l.(*listenerv3.Listener)}, []*routev3.RouteConfiguration{r.(*routev3.RouteConfiguration)},
		[]*clusterv3.Cluster{c.(*clusterv3.Cluster)}, []*endpointv3.ClusterLoadAssignment{e.(*endpointv3.ClusterLoadAssignment)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rt := snap.Routes[svc].VirtualHosts[0].Routes[0].Traffic
	if rt == nil || rt.Retry == nil || rt.RateLimit == nil || len(rt.Faults) != 1 || rt.PriorityClass != "critical" || len(rt.Mirrors) != 1 || rt.Rewrite == nil {
		t.Errorf("route traffic incomplete: %+v", rt)
	}
	if ct := snap.Clusters[svc]; ct.LB != config.LBPeakEWMA || ct.Traffic == nil || ct.Traffic.HealthCheck == nil || len(ct.Endpoints) != 2 {
		t.Errorf("cluster incomplete: %+v", ct)
	}
	if snap.Listeners[0].Traffic == nil || snap.Listeners[0].Traffic.Overload == nil {
		t.Errorf("listener traffic missing: %+v", snap.Listeners[0].Traffic)
	}
}

// TestBuildTrafficGolden reads the translator's traffic output
// (testdata/traffic) and checks that the fields docs/xds-traffic.md names
// arrive where the data path looks for them.
func TestBuildTrafficGolden(t *testing.T) {
	client := buildGolden(t, goldenDir+"/traffic/client-1.json")
	var api *config.Route
	for _, vh := range client.Routes[svc].VirtualHosts {
		for _, r := range vh.Routes {
			if r.Match.PathSeparatedPrefix == "/api" {
				api = r
			}
		}
	}
	if api == nil || api.Traffic == nil {
		t.Fatalf("client-1: no /api route with traffic in %s", svc)
	}
	got := struct {
		Retry   *config.RetryPolicy
		Rewrite *config.Rewrite
		Hashes  int
	}{api.Traffic.Retry, api.Traffic.Rewrite, len(api.Traffic.Hash)}
	want := struct {
		Retry   *config.RetryPolicy
		Rewrite *config.Rewrite
		Hashes  int
	}{
		&config.RetryPolicy{Attempts: 3, On: []string{"connect-failure", "refused-stream", "reset"}, RetriableStatusCodes: []int{503, 504},
			PerTryTimeout: time.Second, BaseInterval: 100 * time.Millisecond, MaxInterval: time.Second},
		&config.Rewrite{PathPrefix: "/v2", PrefixMatch: "/api", Host: "api.internal"},
		2,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("client-1 /api route (-want +got):\n%s", diff)
	}
	if c := client.Clusters["web-v1.default.mesh:80"]; c.LB != config.LBRingHash || c.Traffic == nil || c.Traffic.RingHashMinSize != 2048 ||
		c.Traffic.Outlier == nil || c.Traffic.Outlier.ConsecutiveGatewayErrors != 3 || c.Traffic.Outlier.Consecutive5xx != 0 {
		t.Errorf("client-1 web-v1 cluster: LB %v traffic %+v", c.LB, c.Traffic)
	}
	if c := client.Clusters["greeter.default.mesh:9000"]; c.LB != config.LBPeakEWMA || c.Traffic == nil || c.Traffic.HealthCheck == nil || !c.Traffic.HealthCheck.GRPC {
		t.Errorf("client-1 greeter cluster: LB %v traffic %+v", c.LB, c.Traffic)
	}

	web := buildGolden(t, goldenDir+"/traffic/web-1.json")
	for _, l := range web.Listeners {
		if l.Kind == config.ListenerHTTP && strings.HasPrefix(l.Name, "inbound:") && (l.Traffic == nil || l.Traffic.Overload == nil) {
			t.Errorf("web-1 %s: no overload shedder", l.Name)
		}
	}
	db := buildGolden(t, goldenDir+"/traffic/db-1.json")
	found := false
	for _, l := range db.Listeners {
		if l.Traffic != nil && l.Traffic.BandwidthBytesPerSecond == 977*1024 {
			found = true
		}
	}
	if !found {
		t.Error("db-1: no listener capped at 977 KiB/s")
	}
}
