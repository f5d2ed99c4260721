package translate

import (
	"cmp"
	"slices"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	localratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpbandwidthv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_bandwidth_limit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"verge.dev/verge/api/v1alpha1"
)

// This file translates what a service's own proxies enforce on its inbound
// listeners (docs/xds-traffic.md, "Inbound listeners"): local rate limits,
// priority shedding under overload and TCP bandwidth limits, from the
// DestinationPolicies of the services selecting the workload.

const (
	localRateLimitFilter = "envoy.filters.http.local_ratelimit"
	priorityFilter       = "verge.filters.http.priority"
	priorityType         = "type.googleapis.com/verge.dev.filters.http.Priority"
	tcpBandwidthFilter   = "envoy.filters.network.tcp_bandwidth_limit"
	// maxDynamicDescriptors bounds the keyed buckets (callers or header
	// values) a proxy keeps, so a caller inventing header values cannot
	// grow its memory without end.
	maxDynamicDescriptors = 10000
)

// inboundTraffic is what the services selecting a workload ask of one of
// its application ports.
type inboundTraffic struct {
	rateLimit *v1alpha1.RateLimit
	overload  *v1alpha1.Overload
	bandwidth *v1alpha1.Bandwidth
	// routed are the service ports (with routes) whose rule names the
	// rate limit's routes and overload's route classes refer to.
	routed []*portInfo
}

// inboundTraffic resolves each section over the service ports targeting
// appPort, services in ns/name order (the first selecting service that
// has a section wins it, as the first decides the port's protocol), and
// within a service by the oldest-wins rule.
func (ix *Index) inboundTraffic(selecting []*serviceInfo, appPort int32) inboundTraffic {
	var t inboundTraffic
	for _, si := range selecting {
		for _, p := range si.svc.Spec.Ports {
			if p.TargetPort != appPort {
				continue
			}
			t.rateLimit = cmp.Or(t.rateLimit, section(si, p.Port, rateLimitSection))
			t.overload = cmp.Or(t.overload, section(si, p.Port, overloadSection))
			t.bandwidth = cmp.Or(t.bandwidth, section(si, p.Port, bandwidthSection))
			if pi := ix.ports[ClusterName(si.name, si.ns, p.Port)]; pi != nil && len(pi.routes) > 0 {
				t.routed = append(t.routed, pi)
			}
		}
	}
	return t
}

// httpFilters are the inbound HCM's traffic filters, before authorization:
// a refused request costs no more than a token.
func (t inboundTraffic) httpFilters(stat string) []*hcmv3.HttpFilter {
	var out []*hcmv3.HttpFilter
	if t.rateLimit != nil {
		out = append(out, &hcmv3.HttpFilter{
			Name:       localRateLimitFilter,
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&localratelimitv3.LocalRateLimit{StatPrefix: stat + "_ratelimit"})},
		})
	}
	if o := t.overload; o != nil {
		out = append(out, &hcmv3.HttpFilter{
			Name:       priorityFilter,
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: overloadConfig(o)},
			// Envoy has no such filter: it skips it rather than refusing
			// the listener.
			IsOptional: true,
		})
	}
	return out
}

func overloadConfig(o *v1alpha1.Overload) *anypb.Any {
	maxConc := max(o.MaxConcurrent, 1)
	maxQueue := o.MaxQueue
	if maxQueue <= 0 {
		maxQueue = maxConc
	}
	classes := o.Classes
	if len(classes) == 0 {
		classes = []string{"critical", "default", "bulk"}
	}
	cls := make([]any, len(classes))
	for i, c := range classes {
		cls[i] = c
	}
	return typedStruct(priorityType, map[string]any{
		"maxConcurrent": float64(maxConc),
		"maxQueue":      float64(maxQueue),
		"maxQueueWait":  parseDuration(o.MaxQueueWait, time.Second).String(),
		"header":        strings.ToLower(cmp.Or(o.Header, "x-verge-priority")),
		"classes":       cls,
		"defaultClass":  cmp.Or(o.DefaultClass, "default"),
	})
}

// routes is the inbound route table sending everything to the local
// cluster. When the rate limit or the priority classes name route rules,
// the service's routes are repeated (same matches, same order) so that
// each request finds its rule's settings, before the catch-all "default".
func (t inboundTraffic) routes(cluster, stat string) []*routev3.Route {
	action := routeTo([]weighted{{cluster, 1}}, 0).Action
	var out []*routev3.Route
	scoped := (t.rateLimit != nil && len(t.rateLimit.Routes) > 0) || (t.overload != nil && len(t.overload.RouteClasses) > 0)
	if scoped {
		for _, pi := range t.routed {
			for i, r := range pi.routes {
				out = append(out, &routev3.Route{
					Name:                 r.Name,
					Match:                r.Match,
					Action:               action,
					TypedPerFilterConfig: t.perRoute(stat, pi.ruleNames[i]),
				})
			}
		}
	}
	return append(out, &routev3.Route{
		Name:                 "default",
		Match:                &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action:               action,
		TypedPerFilterConfig: t.perRoute(stat, ""),
	})
}

// perRoute is the per-filter config of an inbound route of rule ("" for
// unnamed rules and the catch-all).
func (t inboundTraffic) perRoute(stat, rule string) map[string]*anypb.Any {
	out := map[string]*anypb.Any{}
	if rl := t.rateLimit; rl != nil && (len(rl.Routes) == 0 || (rule != "" && slices.Contains(rl.Routes, rule))) {
		if l := localRateLimit(stat+"_ratelimit", rl); l != nil {
			out[localRateLimitFilter] = mustAny(l)
		}
	}
	if o := t.overload; o != nil && rule != "" {
		if c := o.RouteClasses[rule]; c != "" {
			out[priorityFilter] = typedStruct(priorityType, map[string]any{"class": c})
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// localRateLimit is the per-route token bucket: RequestsPerSecond tokens a
// second, Burst at most. Keyed limits (by source or header) put the bucket
// in a dynamic descriptor, one bucket per value, and stop requests from
// also drawing on the route's shared bucket.
func localRateLimit(stat string, rl *v1alpha1.RateLimit) *localratelimitv3.LocalRateLimit {
	if rl.RequestsPerSecond <= 0 {
		return nil
	}
	burst := rl.Burst
	if burst <= 0 {
		burst = rl.RequestsPerSecond
	}
	tb := &typev3.TokenBucket{
		MaxTokens:     uint32(burst),
		TokensPerFill: wrapperspb.UInt32(uint32(rl.RequestsPerSecond)),
		FillInterval:  durationpb.New(time.Second),
	}
	all := &corev3.RuntimeFractionalPercent{DefaultValue: &typev3.FractionalPercent{Numerator: 100, Denominator: typev3.FractionalPercent_HUNDRED}}
	l := &localratelimitv3.LocalRateLimit{
		StatPrefix:                     stat,
		TokenBucket:                    tb,
		FilterEnabled:                  all,
		FilterEnforced:                 all,
		EnableRetryAfterHeader:         true,
		RateLimitedAsResourceExhausted: true,
	}
	key := ""
	switch by := rl.By; {
	case by == "source":
		key = "source"
	case strings.HasPrefix(by, "header:") && len(by) > len("header:"):
		key = "header:" + strings.ToLower(strings.TrimPrefix(by, "header:"))
	}
	if key != "" {
		l.Descriptors = []*ratelimitv3.LocalRateLimitDescriptor{{
			Entries:     []*ratelimitv3.RateLimitDescriptor_Entry{{Key: key}},
			TokenBucket: tb,
		}}
		l.MaxDynamicDescriptors = wrapperspb.UInt32(maxDynamicDescriptors)
		l.AlwaysConsumeDefaultTokenBucket = wrapperspb.Bool(false)
	}
	return l
}

// networkFilters are the inbound TCP chain's traffic filters (before
// tcp_proxy): the bandwidth limit, in KiB/s rounded up.
func (t inboundTraffic) networkFilters(stat string) []*listenerv3.Filter {
	if t.bandwidth == nil || t.bandwidth.BytesPerSecond <= 0 {
		return nil
	}
	kbps := uint64((t.bandwidth.BytesPerSecond + 1023) / 1024)
	return []*listenerv3.Filter{{
		Name: tcpBandwidthFilter,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&tcpbandwidthv3.TcpBandwidthLimit{
			StatPrefix:     stat + "_bandwidth",
			ReadLimitKbps:  wrapperspb.UInt64(kbps),
			WriteLimitKbps: wrapperspb.UInt64(kbps),
		})},
	}}
}
