package v1alpha1

import (
	"cmp"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/runtime/schema"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Default fills the fields a user may leave out, in place, so that everything
// after decoding (validation, the store, translation, `verge get -o yaml`)
// sees explicit values. It is idempotent and never overwrites a set field.
// Objects of a type Verge does not serve are left alone.
func Default(obj Object) {
	k, ok := KindOf(obj)
	if !ok {
		return
	}
	gvk := obj.GetObjectKind().GroupVersionKind()
	if gvk.Group == "" && gvk.Version == "" {
		gvk.Group, gvk.Version = k.Group, k.Version
	}
	if gvk.Kind == "" {
		gvk.Kind = k.Kind
	}
	obj.GetObjectKind().SetGroupVersionKind(schema.GroupVersionKind(gvk))
	if obj.GetNamespace() == "" {
		obj.SetNamespace(DefaultNamespace)
	}
	switch o := obj.(type) {
	case *Service:
		defaultService(o)
	case *Workload:
		defaultWorkload(o)
	case *HTTPRoute:
		defaultHTTPRoute(o)
	case *GRPCRoute:
		defaultGRPCRoute(o)
	case *DestinationPolicy:
		defaultDestinationPolicy(o)
	case *FaultInjection:
		defaultFaultInjection(o)
	case *AuthorizationPolicy:
		defaultAuthorizationPolicy(o)
	case *Telemetry:
		defaultTelemetry(o)
	}
}

// defaultDestinationPolicy leaves targetRef.group empty: "" and verge.dev
// both name Verge's Service, and "" is what Gateway API users write. Each
// section gets its documented defaults only when it is set: a section left
// out means "not configured", never "configured with defaults".
func defaultDestinationPolicy(d *DestinationPolicy) {
	s := &d.Spec
	defaultTargetRef(&s.TargetRef)
	if lb := s.LoadBalancer; lb != nil {
		if lb.Policy == "" {
			lb.Policy = LoadBalancerRoundRobin
		}
		if ch := lb.ConsistentHash; ch != nil && lb.Policy == LoadBalancerRingHash && ch.MinimumRingSize == 0 {
			ch.MinimumRingSize = DefaultMinimumRingSize
		}
	}
	if r := s.Retry; r != nil {
		defaultRetryPolicy(r)
	}
	if c := s.CircuitBreaker; c != nil {
		for _, v := range []*int32{&c.MaxConnections, &c.MaxPendingRequests, &c.MaxRequests, &c.MaxRetries} {
			if *v == 0 {
				*v = DefaultCircuitBreakerLimit
			}
		}
	}
	if o := s.OutlierDetection; o != nil {
		if o.Consecutive5xx == nil {
			o.Consecutive5xx = new(int32(5))
		}
		if o.ConsecutiveGatewayErrors == nil {
			o.ConsecutiveGatewayErrors = new(int32(0))
		}
		o.Interval = cmp.Or(o.Interval, "10s")
		o.BaseEjectionTime = cmp.Or(o.BaseEjectionTime, "30s")
		if o.MaxEjectionPercent == nil {
			o.MaxEjectionPercent = new(int32(10))
		}
	}
	if h := s.HealthCheck; h != nil {
		h.Interval = cmp.Or(h.Interval, "10s")
		h.Timeout = cmp.Or(h.Timeout, "1s")
		h.HealthyThreshold = cmp.Or(h.HealthyThreshold, 2)
		h.UnhealthyThreshold = cmp.Or(h.UnhealthyThreshold, 3)
	}
	if r := s.RateLimit; r != nil {
		if r.Burst == 0 && r.RequestsPerSecond > 0 {
			r.Burst = r.RequestsPerSecond
		}
	}
	if o := s.Overload; o != nil {
		if o.MaxQueue == 0 && o.MaxConcurrent > 0 {
			o.MaxQueue = o.MaxConcurrent
		}
		o.MaxQueueWait = cmp.Or(o.MaxQueueWait, "1s")
		o.Header = cmp.Or(o.Header, DefaultPriorityHeader)
		if len(o.Classes) == 0 {
			o.Classes = []string{"critical", "default", "bulk"}
		}
		o.DefaultClass = cmp.Or(o.DefaultClass, "default")
	}
}

// Defaults of DestinationPolicy fields that other packages need to know.
const (
	// DefaultMinimumRingSize is RingHash's ring size when none is given.
	DefaultMinimumRingSize = 1024
	// DefaultCircuitBreakerLimit is each circuit breaker limit left at zero,
	// Envoy's own default.
	DefaultCircuitBreakerLimit = 1024
	// DefaultPriorityHeader carries a request's priority class.
	DefaultPriorityHeader = "x-verge-priority"
)

func defaultRetryPolicy(r *RetryPolicy) {
	r.Attempts = cmp.Or(r.Attempts, 2)
	if len(r.On) == 0 {
		r.On = []string{"connect-failure", "refused-stream", "unavailable", "gateway-error"}
	}
	r.BaseInterval = cmp.Or(r.BaseInterval, "25ms")
	// MaxInterval is ten times the base. A base that does not parse is left
	// for validation to report, with MaxInterval still empty.
	if r.MaxInterval == "" {
		if base, errs := positiveDuration(nil, r.BaseInterval); errs == nil {
			r.MaxInterval = formatDuration(10 * base)
		}
	}
	if r.Budget == nil {
		r.Budget = &RetryBudget{}
	}
	r.Budget.Percent = cmp.Or(r.Budget.Percent, 20)
	r.Budget.MinRetriesPerSecond = cmp.Or(r.Budget.MinRetriesPerSecond, 10)
}

// formatDuration writes d as a Gateway API duration ("1m30s500ms"), or ""
// when it has no such form (below a millisecond, or too long).
func formatDuration(d time.Duration) string {
	if d <= 0 || d%time.Millisecond != 0 {
		return ""
	}
	var b strings.Builder
	for _, u := range []struct {
		unit time.Duration
		name string
	}{{time.Hour, "h"}, {time.Minute, "m"}, {time.Second, "s"}, {time.Millisecond, "ms"}} {
		if n := d / u.unit; n > 0 {
			b.WriteString(strconv.FormatInt(int64(n), 10) + u.name)
			d -= n * u.unit
		}
	}
	if !durationFormat.MatchString(b.String()) {
		return ""
	}
	return b.String()
}

func defaultFaultInjection(f *FaultInjection) {
	defaultTargetRef(&f.Spec.TargetRef)
}

func defaultTargetRef(t *PolicyTargetReference) {
	if t.Kind == "" {
		t.Kind = "Service"
	}
}

func defaultService(s *Service) {
	if len(s.Spec.Selector) == 0 {
		s.Spec.Selector = map[string]string{"app": s.Name}
	}
	for i := range s.Spec.Ports {
		p := &s.Spec.Ports[i]
		if p.Protocol == "" {
			p.Protocol = ProtocolHTTP
		}
		if p.TargetPort == 0 {
			p.TargetPort = p.Port
		}
		// An unsupported protocol would make an invalid name too; leave the
		// name empty so that validation reports the protocol alone.
		if p.Name == "" && supportedProtocol(p.Protocol) {
			p.Name = strings.ToLower(string(p.Protocol)) + "-" + strconv.Itoa(int(p.Port))
		}
	}
}

func defaultWorkload(w *Workload) {
	if w.Spec.ServiceAccount == "" {
		w.Spec.ServiceAccount = "default"
	}
	if w.Spec.Proxy != nil && w.Spec.Proxy.AppAddress == "" {
		w.Spec.Proxy.AppAddress = "127.0.0.1"
	}
	for i := range w.Spec.Upstreams {
		u := &w.Spec.Upstreams[i]
		if u.LocalAddress == "" {
			u.LocalAddress = "127.0.0.1"
		}
		if u.Service != "" && !strings.Contains(u.Service, ".") {
			u.Service += "." + w.Namespace
		}
	}
	if w.Spec.HTTPProxy != nil && w.Spec.HTTPProxy.Address == "" {
		w.Spec.HTTPProxy.Address = "127.0.0.1"
	}
}

func defaultHTTPRoute(r *HTTPRoute) {
	ns := gatewayv1.Namespace(r.Namespace)
	for i := range r.Spec.ParentRefs {
		defaultParentRef(&r.Spec.ParentRefs[i], ns)
	}
	for i := range r.Spec.Rules {
		rule := &r.Spec.Rules[i]
		if len(rule.Matches) == 0 {
			rule.Matches = []gatewayv1.HTTPRouteMatch{{}}
		}
		for j := range rule.Matches {
			m := &rule.Matches[j]
			if m.Path == nil {
				m.Path = &gatewayv1.HTTPPathMatch{}
			}
			if m.Path.Type == nil {
				m.Path.Type = new(gatewayv1.PathMatchPathPrefix)
			}
			if m.Path.Value == nil {
				m.Path.Value = new("/")
			}
			for k := range m.Headers {
				if m.Headers[k].Type == nil {
					m.Headers[k].Type = new(gatewayv1.HeaderMatchExact)
				}
			}
			for k := range m.QueryParams {
				if m.QueryParams[k].Type == nil {
					m.QueryParams[k].Type = new(gatewayv1.QueryParamMatchExact)
				}
			}
		}
		for j := range rule.BackendRefs {
			defaultBackendRef(&rule.BackendRefs[j].BackendRef, ns)
		}
		for j := range rule.Filters {
			f := &rule.Filters[j]
			if f.RequestMirror != nil {
				defaultMirror(f.RequestMirror, ns)
			}
			// The Gateway API CRD's default status code.
			if rr := f.RequestRedirect; rr != nil && rr.StatusCode == nil {
				rr.StatusCode = new(302)
			}
		}
	}
}

// defaultMirror names the mirror's backend as defaultBackendRef names a
// backend, and spells out the Gateway API's default fraction denominator.
func defaultMirror(m *gatewayv1.HTTPRequestMirrorFilter, ns gatewayv1.Namespace) {
	b := &m.BackendRef
	if b.Group == nil {
		b.Group = new(gatewayv1.Group(""))
	}
	if b.Kind == nil {
		b.Kind = new(gatewayv1.Kind("Service"))
	}
	if b.Namespace == nil {
		b.Namespace = new(ns)
	}
	if f := m.Fraction; f != nil && f.Denominator == nil {
		f.Denominator = new(int32(100))
	}
}

func defaultGRPCRoute(r *GRPCRoute) {
	ns := gatewayv1.Namespace(r.Namespace)
	for i := range r.Spec.ParentRefs {
		defaultParentRef(&r.Spec.ParentRefs[i], ns)
	}
	for i := range r.Spec.Rules {
		rule := &r.Spec.Rules[i]
		if len(rule.Matches) == 0 {
			rule.Matches = []gatewayv1.GRPCRouteMatch{{}}
		}
		for j := range rule.Matches {
			m := &rule.Matches[j]
			if m.Method != nil && m.Method.Type == nil {
				m.Method.Type = new(gatewayv1.GRPCMethodMatchExact)
			}
			for k := range m.Headers {
				if m.Headers[k].Type == nil {
					m.Headers[k].Type = new(gatewayv1.GRPCHeaderMatchExact)
				}
			}
		}
		for j := range rule.BackendRefs {
			defaultBackendRef(&rule.BackendRefs[j].BackendRef, ns)
		}
		for j := range rule.Filters {
			if m := rule.Filters[j].RequestMirror; m != nil {
				defaultMirror(m, ns)
			}
		}
	}
}

// defaultParentRef attaches a route that names no group and kind to a Service
// (the GAMMA mesh attachment). This departs from the Gateway API, whose
// default is a Gateway, because a mesh route's parent is almost always a
// Service; a group-less ref with another kind keeps the Gateway API default.
func defaultParentRef(p *gatewayv1.ParentReference, ns gatewayv1.Namespace) {
	switch {
	case p.Group == nil && (p.Kind == nil || *p.Kind == "Service"):
		p.Group = new(gatewayv1.Group(""))
	case p.Group == nil:
		p.Group = new(gatewayv1.Group(GatewayGroup))
	}
	if p.Kind == nil {
		if *p.Group == "" || *p.Group == Group {
			p.Kind = new(gatewayv1.Kind("Service"))
		} else {
			p.Kind = new(gatewayv1.Kind("Gateway"))
		}
	}
	if p.Namespace == nil {
		p.Namespace = new(ns)
	}
}

func defaultBackendRef(b *gatewayv1.BackendRef, ns gatewayv1.Namespace) {
	if b.Group == nil {
		b.Group = new(gatewayv1.Group(""))
	}
	if b.Kind == nil {
		b.Kind = new(gatewayv1.Kind("Service"))
	}
	if b.Namespace == nil {
		b.Namespace = new(ns)
	}
	if b.Weight == nil {
		b.Weight = new(int32(1))
	}
}

func supportedProtocol(p Protocol) bool {
	switch p {
	case ProtocolHTTP, ProtocolHTTP2, ProtocolGRPC, ProtocolTCP:
		return true
	}
	return false
}
