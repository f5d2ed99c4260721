package v1alpha1

import (
	"strconv"
	"strings"

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
	case *AuthorizationPolicy:
		defaultAuthorizationPolicy(o)
	}
}

// defaultDestinationPolicy leaves targetRef.group empty: "" and verge.dev
// both name Verge's Service, and "" is what Gateway API users write.
func defaultDestinationPolicy(d *DestinationPolicy) {
	if d.Spec.TargetRef.Kind == "" {
		d.Spec.TargetRef.Kind = "Service"
	}
	if lb := d.Spec.LoadBalancer; lb != nil && lb.Policy == "" {
		lb.Policy = LoadBalancerRoundRobin
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
