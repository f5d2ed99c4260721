package web

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"verge.dev/verge/api/v1alpha1"
	"verge.dev/verge/internal/xds/translate"
)

// Scopes of a policy: which workloads or callers it reaches.
const (
	ScopeService   = "service"
	ScopeNamespace = "namespace"
	ScopeMesh      = "mesh"
)

// Policy is a route or policy in effect, summarised for a table row; Spec
// is the object's spec for the detail view.
type Policy struct {
	Kind      string    `json:"kind"`
	Namespace string    `json:"namespace"`
	Name      string    `json:"name"`
	Created   time.Time `json:"created"`
	// Scope says how far the object reaches; Targets are the services
	// ("NAME.NAMESPACE") it attaches to when Scope is ScopeService.
	Scope   string   `json:"scope"`
	Targets []string `json:"targets,omitempty"`
	// Backends are the services a route sends traffic to, with weights
	// ("name.ns:8080 ×3").
	Backends []string `json:"backends,omitempty"`
	// Summary is one line on what the object does.
	Summary string `json:"summary"`
	Spec    any    `json:"spec"`
}

// policies summarises every route and policy of the mesh, sorted by kind
// (in v1alpha1.Kinds order), namespace and name.
func policies(m translate.Mesh) []Policy {
	out := []Policy{}
	for _, r := range m.HTTPRoutes {
		p := newPolicy(r, "HTTPRoute", r.Spec)
		p.Targets = parentServices(r.Namespace, r.Spec.ParentRefs)
		var backends []gatewayv1.BackendRef
		var matches int
		for _, rule := range r.Spec.Rules {
			matches += max(1, len(rule.Matches))
			for _, b := range rule.BackendRefs {
				backends = append(backends, b.BackendRef)
			}
		}
		p.Backends = backendNames(r.Namespace, backends)
		p.Summary = plural(len(r.Spec.Rules), "rule") + ", " + plural(matches, "match")
		out = append(out, p)
	}
	for _, r := range m.GRPCRoutes {
		p := newPolicy(r, "GRPCRoute", r.Spec)
		p.Targets = parentServices(r.Namespace, r.Spec.ParentRefs)
		var backends []gatewayv1.BackendRef
		var matches int
		for _, rule := range r.Spec.Rules {
			matches += max(1, len(rule.Matches))
			for _, b := range rule.BackendRefs {
				backends = append(backends, b.BackendRef)
			}
		}
		p.Backends = backendNames(r.Namespace, backends)
		p.Summary = plural(len(r.Spec.Rules), "rule") + ", " + plural(matches, "match")
		out = append(out, p)
	}
	for _, d := range m.DestinationPolicies {
		p := newPolicy(d, "DestinationPolicy", d.Spec)
		p.Targets = []string{targetName(d.Namespace, d.Spec.TargetRef)}
		p.Summary = destinationSummary(&d.Spec)
		out = append(out, p)
	}
	for _, f := range m.FaultInjections {
		p := newPolicy(f, "FaultInjection", f.Spec)
		p.Targets = []string{targetName(f.Namespace, f.Spec.TargetRef)}
		var parts []string
		if d := f.Spec.Delay; d != nil {
			parts = append(parts, fmt.Sprintf("delay %s to %s%%", d.Duration, d.Percent))
		}
		if a := f.Spec.Abort; a != nil {
			code := cmp.Or(a.GRPCStatus, fmt.Sprint(a.HTTPStatus))
			parts = append(parts, fmt.Sprintf("abort %s to %s%%", code, a.Percent))
		}
		p.Summary = strings.Join(parts, ", ")
		out = append(out, p)
	}
	for _, t := range m.MeshTLSes {
		p := newPolicy(t, "MeshTLS", t.Spec)
		p.Scope, p.Targets = scope(t.Namespace, t.Spec.Service)
		p.Summary = string(t.Spec.Mode)
		out = append(out, p)
	}
	for _, a := range m.AuthorizationPolicies {
		p := newPolicy(a, "AuthorizationPolicy", a.Spec)
		p.Scope, p.Targets = scope(a.Namespace, a.Spec.Service)
		p.Summary = string(a.Spec.Action) + ", " + plural(len(a.Spec.Rules), "rule")
		if a.Spec.JWT != nil {
			p.Summary += ", JWT"
		}
		out = append(out, p)
	}
	return out
}

func newPolicy(o v1alpha1.Object, kind string, spec any) Policy {
	return Policy{
		Kind: kind, Namespace: o.GetNamespace(), Name: o.GetName(),
		Created: o.GetCreationTimestamp().Time, Scope: ScopeService, Spec: spec,
	}
}

// scope follows MeshTLS and AuthorizationPolicy: a service when named, else
// the namespace, or the whole mesh from verge-system.
func scope(ns, service string) (string, []string) {
	switch {
	case service != "":
		return ScopeService, []string{service + "." + ns}
	case ns == v1alpha1.MeshNamespace:
		return ScopeMesh, nil
	default:
		return ScopeNamespace, nil
	}
}

func targetName(ns string, t v1alpha1.PolicyTargetReference) string {
	name := t.Name + "." + ns
	if t.Port != 0 {
		name += fmt.Sprintf(":%d", t.Port)
	}
	return name
}

// parentServices are the Service parents of a route (Gateway parents are
// not Verge's and are left out).
func parentServices(ns string, refs []gatewayv1.ParentReference) []string {
	var out []string
	for _, r := range refs {
		if r.Kind == nil || *r.Kind != "Service" {
			continue
		}
		pns := ns
		if r.Namespace != nil {
			pns = string(*r.Namespace)
		}
		out = append(out, string(r.Name)+"."+pns)
	}
	return out
}

func backendNames(ns string, refs []gatewayv1.BackendRef) []string {
	var out []string
	for _, b := range refs {
		bns := ns
		if b.Namespace != nil {
			bns = string(*b.Namespace)
		}
		s := string(b.Name) + "." + bns
		if b.Port != nil {
			s += fmt.Sprintf(":%d", *b.Port)
		}
		if b.Weight != nil && *b.Weight != 1 {
			s += fmt.Sprintf(" ×%d", *b.Weight)
		}
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

func destinationSummary(s *v1alpha1.DestinationPolicySpec) string {
	var parts []string
	if s.LoadBalancer != nil {
		parts = append(parts, "load balancer "+cmp.Or(string(s.LoadBalancer.Policy), "RoundRobin"))
	}
	for _, f := range []struct {
		set  bool
		name string
	}{
		{s.Retry != nil, "retry"},
		{s.CircuitBreaker != nil, "circuit breaker"},
		{s.OutlierDetection != nil, "outlier detection"},
		{s.HealthCheck != nil, "health check"},
		{s.RateLimit != nil, "rate limit"},
		{s.Overload != nil, "overload"},
		{s.Bandwidth != nil, "bandwidth"},
	} {
		if f.set {
			parts = append(parts, f.name)
		}
	}
	return strings.Join(parts, ", ")
}

// policiesFor are the policies that affect service id ("NAME.NS"): those
// targeting it (any port), routes sending to it, and namespace- and
// mesh-wide ones that reach its workloads.
func policiesFor(all []Policy, id string) []Policy {
	_, ns := splitService(id)
	isID := func(s string) bool {
		name, _, _ := strings.Cut(s, " ")
		return name == id || strings.HasPrefix(name, id+":")
	}
	var out []Policy
	for _, p := range all {
		switch {
		case p.Scope == ScopeMesh,
			p.Scope == ScopeNamespace && p.Namespace == ns,
			slices.ContainsFunc(p.Targets, isID),
			slices.ContainsFunc(p.Backends, isID):
			out = append(out, p)
		}
	}
	return out
}

// plural is "1 rule", "2 rules", "3 matches".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	if strings.HasSuffix(noun, "ch") {
		return fmt.Sprintf("%d %ses", n, noun)
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
