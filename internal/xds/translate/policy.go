package translate

import (
	"cmp"
	"encoding/hex"
	"slices"
	"strings"
	"time"

	xdstypev3 "github.com/cncf/xds/go/xds/type/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	leastrequestv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/least_request/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"verge.dev/verge/api/v1alpha1"
)

// attachPolicies records, on each service, the DestinationPolicies that
// target it, oldest first. A policy targeting a service that does not exist
// (yet) is ignored until the service appears.
func (ix *Index) attachPolicies(dps []*v1alpha1.DestinationPolicy) {
	for _, dp := range dps {
		ref := dp.Spec.TargetRef
		if (ref.Group != "" && ref.Group != v1alpha1.Group) || (ref.Kind != "" && ref.Kind != "Service") {
			continue
		}
		if si := ix.services[dp.Namespace+"/"+ref.Name]; si != nil {
			si.policies = append(si.policies, dp)
		}
	}
	for _, si := range ix.ordered {
		slices.SortFunc(si.policies, comparePolicyAge)
	}
}

// comparePolicyAge orders policies oldest first: by creationTimestamp, then
// by name. When several policies set the same thing for one service port,
// the first in this order wins. Oldest-wins (as the Gateway API resolves
// conflicting policies) means applying a newer conflicting policy never
// changes traffic that is already flowing, and the order does not depend
// on the order the store lists objects in.
func comparePolicyAge(a, b *v1alpha1.DestinationPolicy) int {
	return cmp.Or(a.CreationTimestamp.Compare(b.CreationTimestamp.Time), strings.Compare(a.Name, b.Name))
}

// setLB sets the cluster's balancer from the port's loadBalancer section
// (ROUND_ROBIN when there is none) and returns the cluster proxyless gRPC
// clients get, which differs only when grpc-go cannot read the balancer.
//
// ROUND_ROBIN, LEAST_REQUEST and RING_HASH are what grpc-go (v1.85) reads
// from lb_policy; it NACKs MAGLEV, so proxyless clients get RING_HASH, the
// other consistent hash, instead. PeakEWMA has no lb_policy value: it is a
// load_balancing_policy whose first entry names Verge's balancer in a
// TypedStruct (grpc-go and Envoy skip a policy they do not know) and whose
// second is least_request, the closest balancer both of them have.
func setLB(c *clusterv3.Cluster, si *serviceInfo, port int32) (proxyless *clusterv3.Cluster) {
	lb := section(si, port, lbSection)
	if lb == nil {
		c.LbPolicy = clusterv3.Cluster_ROUND_ROBIN
		return c
	}
	switch lb.Policy {
	case v1alpha1.LoadBalancerLeastRequest:
		c.LbPolicy = clusterv3.Cluster_LEAST_REQUEST
	case v1alpha1.LoadBalancerRingHash:
		c.LbPolicy = clusterv3.Cluster_RING_HASH
		c.LbConfig = ringHashConfig(lb.ConsistentHash)
	case v1alpha1.LoadBalancerMaglev:
		c.LbPolicy = clusterv3.Cluster_MAGLEV
		pl := proto.CloneOf(c)
		pl.LbPolicy = clusterv3.Cluster_RING_HASH
		pl.LbConfig = ringHashConfig(lb.ConsistentHash)
		return pl
	case v1alpha1.LoadBalancerPeakEWMA:
		c.LoadBalancingPolicy = peakEWMAPolicy()
	default:
		c.LbPolicy = clusterv3.Cluster_ROUND_ROBIN
	}
	return c
}

// Ring sizes: the API's default and Envoy's maximum.
const (
	defaultRingSize = 1024
	maxRingSize     = 8388608
)

func ringHashConfig(ch *v1alpha1.ConsistentHash) *clusterv3.Cluster_RingHashLbConfig_ {
	size := int64(defaultRingSize)
	if ch != nil && ch.MinimumRingSize > 0 {
		size = min(ch.MinimumRingSize, maxRingSize)
	}
	return &clusterv3.Cluster_RingHashLbConfig_{RingHashLbConfig: &clusterv3.Cluster_RingHashLbConfig{
		MinimumRingSize: wrapperspb.UInt64(uint64(size)),
	}}
}

// peakEWMAType is the TypedStruct type URL naming Verge's peak-EWMA
// balancer (docs/xds-traffic.md); decay is the latency average's window.
const (
	peakEWMAType  = "type.googleapis.com/verge.dev.lb.PeakEWMA"
	peakEWMADecay = "10s"
)

func peakEWMAPolicy() *clusterv3.LoadBalancingPolicy {
	return &clusterv3.LoadBalancingPolicy{Policies: []*clusterv3.LoadBalancingPolicy_Policy{
		{TypedExtensionConfig: &corev3.TypedExtensionConfig{
			Name:        "verge.load_balancing_policies.peak_ewma",
			TypedConfig: typedStruct(peakEWMAType, map[string]any{"decay": peakEWMADecay}),
		}},
		{TypedExtensionConfig: &corev3.TypedExtensionConfig{
			Name:        "envoy.load_balancing_policies.least_request",
			TypedConfig: mustAny(&leastrequestv3.LeastRequest{}),
		}},
	}}
}

// typedStruct packs fields (JSON values: string, float64, bool, []any,
// map[string]any) as an xds.type.v3.TypedStruct of typeURL: how Verge
// configures what Envoy has no message for.
func typedStruct(typeURL string, fields map[string]any) *anypb.Any {
	v, err := structpb.NewStruct(fields)
	if err != nil {
		panic("translate: typed struct " + typeURL + ": " + err.Error())
	}
	return mustAny(&xdstypev3.TypedStruct{TypeUrl: typeURL, Value: v})
}

// setClusterTraffic adds to c what the port's circuitBreaker, retry budget,
// outlierDetection and healthCheck sections ask of every client. Missing
// values take the API's documented defaults, so an object that skipped
// defaulting translates the same.
func setClusterTraffic(c *clusterv3.Cluster, si *serviceInfo, port int32) {
	cb := section(si, port, cbSection)
	var budget *v1alpha1.RetryBudget
	if r := section(si, port, retrySection); r != nil {
		budget = r.Budget
	}
	if cb != nil || budget != nil {
		th := &clusterv3.CircuitBreakers_Thresholds{Priority: corev3.RoutingPriority_DEFAULT}
		if cb != nil {
			th.MaxConnections = positiveUInt32(cb.MaxConnections)
			th.MaxPendingRequests = positiveUInt32(cb.MaxPendingRequests)
			th.MaxRequests = positiveUInt32(cb.MaxRequests)
			th.MaxRetries = positiveUInt32(cb.MaxRetries)
		}
		if budget != nil {
			pct := budget.Percent
			if pct <= 0 || pct > 100 {
				pct = 20
			}
			th.RetryBudget = &clusterv3.CircuitBreakers_Thresholds_RetryBudget{
				BudgetPercent:       &typev3.Percent{Value: float64(pct)},
				MinRetryConcurrency: wrapperspb.UInt32(uint32(cmp.Or(max(budget.MinRetriesPerSecond, 0), 10))),
			}
		}
		c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{th}}
	}
	if od := section(si, port, outlierSection); od != nil {
		c.OutlierDetection = outlierDetection(od)
	}
	if hc := section(si, port, healthSection); hc != nil {
		c.HealthChecks = []*corev3.HealthCheck{healthCheck(hc)}
	}
}

// positiveUInt32 is v as a wrapper, nil (Envoy's default) when not positive.
func positiveUInt32(v int32) *wrapperspb.UInt32Value {
	if v <= 0 {
		return nil
	}
	return wrapperspb.UInt32(uint32(v))
}

func outlierDetection(od *v1alpha1.OutlierDetection) *clusterv3.OutlierDetection {
	c5xx := int32(5)
	if od.Consecutive5xx != nil {
		c5xx = max(*od.Consecutive5xx, 0)
	}
	var gw int32
	if od.ConsecutiveGatewayErrors != nil {
		gw = max(*od.ConsecutiveGatewayErrors, 0)
	}
	maxPct := int32(10)
	if od.MaxEjectionPercent != nil {
		maxPct = min(max(*od.MaxEjectionPercent, 0), 100)
	}
	// Envoy has no "off" for a check, only enforcement: a check that is
	// off (threshold 0) is enforced 0% of the time.
	enforce := func(n int32) (*wrapperspb.UInt32Value, *wrapperspb.UInt32Value) {
		if n == 0 {
			return wrapperspb.UInt32(0), wrapperspb.UInt32(0)
		}
		return wrapperspb.UInt32(uint32(n)), wrapperspb.UInt32(100)
	}
	o := &clusterv3.OutlierDetection{
		Interval:           durationpb.New(parseDuration(od.Interval, 10*time.Second)),
		BaseEjectionTime:   durationpb.New(parseDuration(od.BaseEjectionTime, 30*time.Second)),
		MaxEjectionPercent: wrapperspb.UInt32(uint32(maxPct)),
		// Envoy enforces success-rate ejection by default; Verge's
		// detector has none, so both say the same only with it off.
		EnforcingSuccessRate: wrapperspb.UInt32(0),
	}
	o.Consecutive_5Xx, o.EnforcingConsecutive_5Xx = enforce(c5xx)
	o.ConsecutiveGatewayFailure, o.EnforcingConsecutiveGatewayFailure = enforce(gw)
	return o
}

func healthCheck(hc *v1alpha1.HealthCheck) *corev3.HealthCheck {
	interval := parseDuration(hc.Interval, 10*time.Second)
	timeout := parseDuration(hc.Timeout, time.Second)
	threshold := func(v, def int32) *wrapperspb.UInt32Value {
		if v <= 0 {
			v = def
		}
		return wrapperspb.UInt32(uint32(v))
	}
	h := &corev3.HealthCheck{
		Timeout:            durationpb.New(timeout),
		Interval:           durationpb.New(interval),
		HealthyThreshold:   threshold(hc.HealthyThreshold, 2),
		UnhealthyThreshold: threshold(hc.UnhealthyThreshold, 3),
	}
	switch {
	case hc.GRPC != nil:
		h.HealthChecker = &corev3.HealthCheck_GrpcHealthCheck_{GrpcHealthCheck: &corev3.HealthCheck_GrpcHealthCheck{
			ServiceName: hc.GRPC.Service,
		}}
	case hc.TCP != nil:
		t := &corev3.HealthCheck_TcpHealthCheck{}
		if hc.TCP.Send != "" {
			t.Send = &corev3.HealthCheck_Payload{Payload: &corev3.HealthCheck_Payload_Text{Text: hex.EncodeToString([]byte(hc.TCP.Send))}}
		}
		if hc.TCP.Expect != "" {
			t.Receive = []*corev3.HealthCheck_Payload{{Payload: &corev3.HealthCheck_Payload_Text{Text: hex.EncodeToString([]byte(hc.TCP.Expect))}}}
		}
		h.HealthChecker = &corev3.HealthCheck_TcpHealthCheck_{TcpHealthCheck: t}
	default:
		// HTTP, and what validation should have refused (no checker): a GET
		// of "/" is the least surprising probe.
		path := "/"
		if hc.HTTP != nil && hc.HTTP.Path != "" {
			path = hc.HTTP.Path
		}
		h.HealthChecker = &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{Path: path}}
	}
	return h
}

// parseDuration reads a Gateway API duration (a subset of Go's); empty,
// invalid or non-positive values give def.
func parseDuration(s string, def time.Duration) time.Duration {
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return def
	}
	return d
}

// section is the section of the DestinationPolicies targeting the service
// that applies to port: the one of the oldest policy that sets it, with the
// port or with no port (each section is resolved on its own, so an older
// policy's retry and a newer one's circuit breaker both apply). nil when
// none does, or when si is nil (a backend that does not exist).
func section[T any](si *serviceInfo, port int32, get func(*v1alpha1.DestinationPolicySpec) *T) *T {
	if si == nil {
		return nil
	}
	for _, dp := range si.policies {
		if dp.Spec.TargetRef.Port != 0 && dp.Spec.TargetRef.Port != port {
			continue
		}
		if s := get(&dp.Spec); s != nil {
			return s
		}
	}
	return nil
}

func lbSection(s *v1alpha1.DestinationPolicySpec) *v1alpha1.LoadBalancer   { return s.LoadBalancer }
func retrySection(s *v1alpha1.DestinationPolicySpec) *v1alpha1.RetryPolicy { return s.Retry }
func cbSection(s *v1alpha1.DestinationPolicySpec) *v1alpha1.CircuitBreaker { return s.CircuitBreaker }
func outlierSection(s *v1alpha1.DestinationPolicySpec) *v1alpha1.OutlierDetection {
	return s.OutlierDetection
}
func healthSection(s *v1alpha1.DestinationPolicySpec) *v1alpha1.HealthCheck { return s.HealthCheck }
func rateLimitSection(s *v1alpha1.DestinationPolicySpec) *v1alpha1.RateLimit {
	return s.RateLimit
}
func overloadSection(s *v1alpha1.DestinationPolicySpec) *v1alpha1.Overload   { return s.Overload }
func bandwidthSection(s *v1alpha1.DestinationPolicySpec) *v1alpha1.Bandwidth { return s.Bandwidth }

// localityOff reports whether the port's loadBalancer section turns
// locality-aware balancing off.
func (si *serviceInfo) localityOff(port int32) bool {
	lb := section(si, port, lbSection)
	return lb != nil && lb.Locality != nil && lb.Locality.Disabled
}
