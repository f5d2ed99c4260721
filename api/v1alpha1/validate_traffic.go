package v1alpha1

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation/field"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Limits of DestinationPolicy and FaultInjection fields. Each keeps a value
// inside what the proxy (and Envoy, for the same resources) can carry, or
// bounds work a single object can cause on every proxy.
const (
	maxRetryAttempts = 10
	// maxRingSize is Envoy's upper bound on ring_hash_lb_config.minimum_ring_size.
	maxRingSize       = 8388608
	maxThreshold      = 100
	minBandwidth      = 1024 // bytes per second: Envoy's limit is in KiB/s
	maxPriorityClass  = 16
	maxRouteNames     = 64
	maxFaultHeaders   = 16
	maxStatusGRPCCode = 16
)

// retryConditions are the retry triggers Verge's proxy implements, by
// Envoy's x-envoy-retry-on and x-envoy-retry-grpc-on names.
var retryConditions = []string{
	"5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx", "refused-stream",
	"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
}

// grpcCodes are the gRPC status code names, indexed by their number.
var grpcCodes = []string{
	"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
	"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
	"ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
	"UNAUTHENTICATED",
}

var loadBalancerPolicies = []LoadBalancerPolicy{
	LoadBalancerRoundRobin, LoadBalancerLeastRequest, LoadBalancerRingHash, LoadBalancerMaglev, LoadBalancerPeakEWMA,
}

// faultPercent is a percentage with at most four decimals, the precision an
// Envoy FractionalPercent over a million carries.
var faultPercent = regexp.MustCompile(`^(0|[1-9][0-9]{0,2})(\.[0-9]{1,4})?$`)

func validateDestinationPolicySpec(s *DestinationPolicySpec, p *field.Path) field.ErrorList {
	errs := validateTargetRef(&s.TargetRef, p.Child("targetRef"))
	// A policy that sets nothing does nothing: refuse it, so that a
	// misplaced or forgotten section is noticed at apply time.
	if s.LoadBalancer == nil && s.Retry == nil && s.CircuitBreaker == nil && s.OutlierDetection == nil &&
		s.HealthCheck == nil && s.RateLimit == nil && s.Overload == nil && s.Bandwidth == nil {
		errs = append(errs, field.Required(p, "a policy must set at least one of: loadBalancer, retry, "+
			"circuitBreaker, outlierDetection, healthCheck, rateLimit, overload, bandwidth"))
	}
	if s.LoadBalancer != nil {
		errs = append(errs, validateLoadBalancer(s.LoadBalancer, p.Child("loadBalancer"))...)
	}
	if s.Retry != nil {
		errs = append(errs, validateRetryPolicy(s.Retry, p.Child("retry"))...)
	}
	if s.CircuitBreaker != nil {
		errs = append(errs, validateCircuitBreaker(s.CircuitBreaker, p.Child("circuitBreaker"))...)
	}
	if s.OutlierDetection != nil {
		errs = append(errs, validateOutlierDetection(s.OutlierDetection, p.Child("outlierDetection"))...)
	}
	if s.HealthCheck != nil {
		errs = append(errs, validateHealthCheck(s.HealthCheck, p.Child("healthCheck"))...)
	}
	if s.RateLimit != nil {
		errs = append(errs, validateRateLimit(s.RateLimit, p.Child("rateLimit"))...)
	}
	if s.Overload != nil {
		errs = append(errs, validateOverload(s.Overload, p.Child("overload"))...)
	}
	if s.Bandwidth != nil && s.Bandwidth.BytesPerSecond < minBandwidth {
		errs = append(errs, field.Invalid(p.Child("bandwidth", "bytesPerSecond"), s.Bandwidth.BytesPerSecond,
			"must be at least 1024"))
	}
	return errs
}

// validateTargetRef checks the Service (and port) a policy applies to.
func validateTargetRef(t *PolicyTargetReference, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if g := t.Group; g != "" && g != Group {
		errs = append(errs, field.NotSupported(p.Child("group"), g, []string{"", Group}))
	}
	if k := t.Kind; k != "Service" {
		errs = append(errs, field.NotSupported(p.Child("kind"), k, []string{"Service"}))
	}
	errs = append(errs, dnsLabel(p.Child("name"), t.Name)...)
	if t.Port != 0 {
		errs = append(errs, portRange(p.Child("port"), t.Port)...)
	}
	return errs
}

func validateLoadBalancer(lb *LoadBalancer, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	hashed := false
	switch lb.Policy {
	case LoadBalancerRingHash, LoadBalancerMaglev:
		hashed = true
	case LoadBalancerRoundRobin, LoadBalancerLeastRequest, LoadBalancerPeakEWMA:
	default:
		errs = append(errs, field.NotSupported(p.Child("policy"), lb.Policy, loadBalancerPolicies))
	}
	ch := lb.ConsistentHash
	cp := p.Child("consistentHash")
	switch {
	case ch == nil && hashed:
		errs = append(errs, field.Required(cp, fmt.Sprintf("policy %s hashes a request property", lb.Policy)))
	case ch != nil && !hashed && slices.Contains(loadBalancerPolicies, lb.Policy):
		errs = append(errs, field.Forbidden(cp, fmt.Sprintf("only the RingHash and Maglev policies hash, not %s", lb.Policy)))
	}
	if ch == nil {
		return errs
	}
	set := 0
	if ch.Header != "" {
		set++
		errs = append(errs, httpHeaderName(cp.Child("header"), ch.Header)...)
	}
	if c := ch.Cookie; c != nil {
		set++
		kp := cp.Child("cookie")
		// A cookie name is an HTTP token (RFC 6265 section 4.1.1).
		errs = append(errs, httpHeaderName(kp.Child("name"), c.Name)...)
		if c.TTL == "" {
			errs = append(errs, field.Required(kp.Child("ttl"), "the generated cookie needs a lifetime"))
		} else {
			_, more := positiveDuration(kp.Child("ttl"), c.TTL)
			errs = append(errs, more...)
		}
		if c.Path != "" && !strings.HasPrefix(c.Path, "/") {
			errs = append(errs, field.Invalid(kp.Child("path"), c.Path, "must start with /"))
		}
	}
	if ch.SourceIP {
		set++
	}
	if set != 1 {
		errs = append(errs, field.Invalid(cp, set, "exactly one of header, cookie and sourceIP must be set"))
	}
	switch {
	case lb.Policy == LoadBalancerRingHash && (ch.MinimumRingSize < 1 || ch.MinimumRingSize > maxRingSize):
		errs = append(errs, field.Invalid(cp.Child("minimumRingSize"), ch.MinimumRingSize, "must be between 1 and 8388608"))
	case lb.Policy != LoadBalancerRingHash && ch.MinimumRingSize != 0:
		errs = append(errs, field.Forbidden(cp.Child("minimumRingSize"), "only the RingHash policy has a ring"))
	}
	return errs
}

func validateRetryPolicy(r *RetryPolicy, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if r.Attempts < 0 || r.Attempts > maxRetryAttempts {
		errs = append(errs, field.Invalid(p.Child("attempts"), r.Attempts, "must be between 0 and 10"))
	}
	if len(r.On) == 0 {
		errs = append(errs, field.Required(p.Child("retryOn"), "at least one retry condition"))
	}
	seen := map[string]bool{}
	for i, c := range r.On {
		cp := p.Child("retryOn").Index(i)
		switch {
		case !slices.Contains(retryConditions, c):
			errs = append(errs, field.NotSupported(cp, c, retryConditions))
		case seen[c]:
			errs = append(errs, field.Duplicate(cp, c))
		}
		seen[c] = true
	}
	if r.PerTryTimeout != "" {
		_, more := positiveDuration(p.Child("perTryTimeout"), r.PerTryTimeout)
		errs = append(errs, more...)
	}
	base, more := requiredDuration(p.Child("baseInterval"), r.BaseInterval)
	errs = append(errs, more...)
	limit, more := requiredDuration(p.Child("maxInterval"), r.MaxInterval)
	errs = append(errs, more...)
	if base > 0 && limit > 0 && base > limit {
		errs = append(errs, field.Invalid(p.Child("maxInterval"), r.MaxInterval, "must not be less than baseInterval"))
	}
	if b := r.Budget; b != nil {
		bp := p.Child("budget")
		errs = append(errs, percent(bp.Child("percent"), b.Percent)...)
		if b.MinRetriesPerSecond < 0 {
			errs = append(errs, field.Invalid(bp.Child("minRetriesPerSecond"), b.MinRetriesPerSecond, "must not be negative"))
		}
	}
	return errs
}

func validateCircuitBreaker(c *CircuitBreaker, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	for _, f := range []struct {
		name string
		v    int32
	}{
		{"maxConnections", c.MaxConnections},
		{"maxPendingRequests", c.MaxPendingRequests},
		{"maxRequests", c.MaxRequests},
		{"maxRetries", c.MaxRetries},
	} {
		if f.v < 1 {
			errs = append(errs, field.Invalid(p.Child(f.name), f.v, "must be at least 1"))
		}
	}
	return errs
}

func validateOutlierDetection(o *OutlierDetection, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	checks := 0
	for _, f := range []struct {
		name string
		v    *int32
	}{
		{"consecutive5xx", o.Consecutive5xx},
		{"consecutiveGatewayErrors", o.ConsecutiveGatewayErrors},
	} {
		switch {
		case f.v == nil:
			errs = append(errs, field.Required(p.Child(f.name), "0 turns the check off"))
		case *f.v < 0:
			errs = append(errs, field.Invalid(p.Child(f.name), *f.v, "must not be negative"))
		case *f.v > 0:
			checks++
		}
	}
	if checks == 0 && o.Consecutive5xx != nil && o.ConsecutiveGatewayErrors != nil &&
		*o.Consecutive5xx == 0 && *o.ConsecutiveGatewayErrors == 0 {
		errs = append(errs, field.Invalid(p.Child("consecutive5xx"), 0,
			"at least one of consecutive5xx and consecutiveGatewayErrors must be greater than 0, or nothing is ever ejected"))
	}
	_, more := requiredDuration(p.Child("interval"), o.Interval)
	errs = append(errs, more...)
	_, more = requiredDuration(p.Child("baseEjectionTime"), o.BaseEjectionTime)
	errs = append(errs, more...)
	if o.MaxEjectionPercent == nil {
		errs = append(errs, field.Required(p.Child("maxEjectionPercent"), ""))
	} else {
		errs = append(errs, percent(p.Child("maxEjectionPercent"), *o.MaxEjectionPercent)...)
	}
	return errs
}

func validateHealthCheck(h *HealthCheck, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	set := 0
	if h.HTTP != nil {
		set++
		pp := p.Child("http", "path")
		switch {
		case h.HTTP.Path == "":
			errs = append(errs, field.Required(pp, ""))
		case !strings.HasPrefix(h.HTTP.Path, "/") || strings.ContainsAny(h.HTTP.Path, " \t\r\n"):
			errs = append(errs, field.Invalid(pp, h.HTTP.Path, "must start with / and contain no whitespace"))
		}
	}
	if h.GRPC != nil {
		set++
		if s := h.GRPC.Service; s != "" && !grpcService.MatchString(s) {
			errs = append(errs, field.Invalid(p.Child("grpc", "service"), s, "must be a fully qualified gRPC service name"))
		}
	}
	if h.TCP != nil {
		set++
	}
	if set != 1 {
		errs = append(errs, field.Invalid(p, set, "exactly one of http, grpc and tcp must be set"))
	}
	interval, more := requiredDuration(p.Child("interval"), h.Interval)
	errs = append(errs, more...)
	timeout, more := requiredDuration(p.Child("timeout"), h.Timeout)
	errs = append(errs, more...)
	if interval > 0 && timeout >= interval {
		errs = append(errs, field.Invalid(p.Child("timeout"), h.Timeout, "must be less than interval"))
	}
	errs = append(errs, threshold(p.Child("healthyThreshold"), h.HealthyThreshold)...)
	errs = append(errs, threshold(p.Child("unhealthyThreshold"), h.UnhealthyThreshold)...)
	return errs
}

func validateRateLimit(r *RateLimit, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if r.RequestsPerSecond < 1 {
		errs = append(errs, field.Invalid(p.Child("requestsPerSecond"), r.RequestsPerSecond, "must be at least 1"))
	}
	if r.Burst < 0 {
		errs = append(errs, field.Invalid(p.Child("burst"), r.Burst, "must not be negative"))
	}
	switch by := r.By; {
	case by == "", by == "source":
	case strings.HasPrefix(by, "header:"):
		name := strings.TrimPrefix(by, "header:")
		if name == "" || len(name) > 256 || !headerName.MatchString(name) {
			errs = append(errs, field.Invalid(p.Child("by"), by, "the header must be an HTTP token of at most 256 characters"))
		}
	default:
		errs = append(errs, field.Invalid(p.Child("by"), by, `must be "", "source" or "header:NAME"`))
	}
	errs = append(errs, routeNames(p.Child("routes"), r.Routes)...)
	return errs
}

func validateOverload(o *Overload, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if o.MaxConcurrent < 1 {
		errs = append(errs, field.Invalid(p.Child("maxConcurrent"), o.MaxConcurrent, "must be at least 1"))
	}
	if o.MaxQueue < 0 {
		errs = append(errs, field.Invalid(p.Child("maxQueue"), o.MaxQueue, "must not be negative"))
	}
	_, more := requiredDuration(p.Child("maxQueueWait"), o.MaxQueueWait)
	errs = append(errs, more...)
	errs = append(errs, httpHeaderName(p.Child("header"), o.Header)...)
	cp := p.Child("classes")
	switch n := len(o.Classes); {
	case n == 0:
		errs = append(errs, field.Required(cp, "at least one priority class"))
	case n > maxPriorityClass:
		errs = append(errs, field.TooMany(cp, n, maxPriorityClass))
	}
	classes := map[string]bool{}
	for i, c := range o.Classes {
		errs = append(errs, dnsLabel(cp.Index(i), c)...)
		if classes[c] {
			errs = append(errs, field.Duplicate(cp.Index(i), c))
		}
		classes[c] = true
	}
	if o.DefaultClass == "" {
		errs = append(errs, field.Required(p.Child("defaultClass"), ""))
	} else if !classes[o.DefaultClass] {
		errs = append(errs, field.NotSupported(p.Child("defaultClass"), o.DefaultClass, o.Classes))
	}
	rp := p.Child("routeClasses")
	if n := len(o.RouteClasses); n > maxRouteNames {
		errs = append(errs, field.TooMany(rp, n, maxRouteNames))
	}
	for _, rule := range slices.Sorted(maps.Keys(o.RouteClasses)) {
		errs = append(errs, ruleName(rp, new(gatewayv1.SectionName(rule)))...)
		if c := o.RouteClasses[rule]; !classes[c] {
			errs = append(errs, field.NotSupported(rp.Key(rule), c, o.Classes))
		}
	}
	return errs
}

func validateFaultInjectionSpec(s *FaultInjectionSpec, p *field.Path) field.ErrorList {
	errs := validateTargetRef(&s.TargetRef, p.Child("targetRef"))
	errs = append(errs, routeNames(p.Child("routes"), s.Routes)...)
	hp := p.Child("headers")
	if n := len(s.Headers); n > maxFaultHeaders {
		errs = append(errs, field.TooMany(hp, n, maxFaultHeaders))
	}
	for _, name := range slices.Sorted(maps.Keys(s.Headers)) {
		if name == "" || len(name) > 256 || !headerName.MatchString(name) {
			errs = append(errs, field.Invalid(hp, name, "must be an HTTP token of at most 256 characters"))
		}
	}
	if s.Delay == nil && s.Abort == nil {
		errs = append(errs, field.Required(p, "a fault injection must set at least one of: delay, abort"))
	}
	if d := s.Delay; d != nil {
		dp := p.Child("delay")
		_, more := requiredDuration(dp.Child("duration"), d.Duration)
		errs = append(errs, more...)
		errs = append(errs, decimalPercent(dp.Child("percent"), d.Percent)...)
	}
	if a := s.Abort; a != nil {
		ap := p.Child("abort")
		switch {
		case a.HTTPStatus != 0 && a.GRPCStatus != "":
			errs = append(errs, field.Invalid(ap, a.GRPCStatus, "httpStatus and grpcStatus are mutually exclusive"))
		case a.HTTPStatus == 0 && a.GRPCStatus == "":
			errs = append(errs, field.Required(ap.Child("httpStatus"), "one of httpStatus and grpcStatus"))
		case a.GRPCStatus != "":
			if _, ok := GRPCStatusCode(a.GRPCStatus); !ok {
				errs = append(errs, field.Invalid(ap.Child("grpcStatus"), a.GRPCStatus,
					"must be a gRPC status code name such as UNAVAILABLE, or its number (0-16)"))
			}
		case a.HTTPStatus < 200 || a.HTTPStatus > 599:
			errs = append(errs, field.Invalid(ap.Child("httpStatus"), a.HTTPStatus, "must be between 200 and 599"))
		}
		errs = append(errs, decimalPercent(ap.Child("percent"), a.Percent)...)
	}
	if s.MaxActive < 0 {
		errs = append(errs, field.Invalid(p.Child("maxActive"), s.MaxActive, "must not be negative"))
	}
	return errs
}

// GRPCStatusCode reads a gRPC status as a FaultAbort's GRPCStatus holds it:
// a code name (UNAVAILABLE) or its decimal number (14).
func GRPCStatusCode(v string) (uint32, bool) {
	if i := slices.Index(grpcCodes, v); i >= 0 {
		return uint32(i), true
	}
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil || n > maxStatusGRPCCode || strconv.FormatUint(n, 10) != v {
		return 0, false
	}
	return uint32(n), true
}

// ParsePercent reads a FaultInjection percentage ("12.5") as parts per
// million, exactly: the form validation accepts has at most four decimals.
func ParsePercent(v string) (uint32, bool) {
	if !faultPercent.MatchString(v) {
		return 0, false
	}
	whole, frac, _ := strings.Cut(v, ".")
	w, err := strconv.ParseUint(whole, 10, 32)
	if err != nil {
		return 0, false
	}
	frac += strings.Repeat("0", 4-len(frac))
	f, err := strconv.ParseUint(frac, 10, 32)
	if err != nil {
		return 0, false
	}
	ppm := w*10000 + f
	if ppm > 1000000 {
		return 0, false
	}
	return uint32(ppm), true
}

func decimalPercent(p *field.Path, v string) field.ErrorList {
	if v == "" {
		return field.ErrorList{field.Required(p, `a percentage such as "100" or "0.5"`)}
	}
	if _, ok := ParsePercent(v); !ok {
		return field.ErrorList{field.Invalid(p, v, "must be a decimal number between 0 and 100 with at most 4 decimals")}
	}
	return nil
}

func percent(p *field.Path, v int32) field.ErrorList {
	if v < 0 || v > 100 {
		return field.ErrorList{field.Invalid(p, v, "must be between 0 and 100")}
	}
	return nil
}

func threshold(p *field.Path, v int32) field.ErrorList {
	if v < 1 || v > maxThreshold {
		return field.ErrorList{field.Invalid(p, v, "must be between 1 and 100")}
	}
	return nil
}

// routeNames checks a list of route rule names: each a rule name as the
// Gateway API spells it, none twice.
func routeNames(p *field.Path, names []string) field.ErrorList {
	var errs field.ErrorList
	if n := len(names); n > maxRouteNames {
		return field.ErrorList{field.TooMany(p, n, maxRouteNames)}
	}
	seen := map[string]bool{}
	for i, n := range names {
		if n == "" {
			errs = append(errs, field.Required(p.Index(i), ""))
			continue
		}
		errs = append(errs, ruleName(p.Index(i), new(gatewayv1.SectionName(n)))...)
		if seen[n] {
			errs = append(errs, field.Duplicate(p.Index(i), n))
		}
		seen[n] = true
	}
	return errs
}

// httpHeaderName requires v and checks it is a Gateway API header name.
func httpHeaderName(p *field.Path, v string) field.ErrorList {
	switch {
	case v == "":
		return field.ErrorList{field.Required(p, "")}
	case len(v) > 256 || !headerName.MatchString(v):
		return field.ErrorList{field.Invalid(p, v, "must be an HTTP token of at most 256 characters")}
	}
	return nil
}

// requiredDuration checks a duration field Default fills.
func requiredDuration(p *field.Path, v string) (time.Duration, field.ErrorList) {
	if v == "" {
		return 0, field.ErrorList{field.Required(p, "")}
	}
	return positiveDuration(p, v)
}

// positiveDuration checks a set Gateway API duration that must not be zero.
func positiveDuration(p *field.Path, v string) (time.Duration, field.ErrorList) {
	d, errs := duration(p, new(gatewayv1.Duration(v)))
	if errs != nil {
		return 0, errs
	}
	if d <= 0 {
		return 0, field.ErrorList{field.Invalid(p, v, "must be greater than 0")}
	}
	return d, nil
}
