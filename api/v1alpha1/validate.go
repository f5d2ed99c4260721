package v1alpha1

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Validate reports every problem of obj at once, each with its path from the
// document root in JSON field names (spec.ports[1].port). An empty list means
// the object may be stored. It expects obj to have been through Default:
// fields Default fills are required here. It does not look at other objects
// (a backendRef naming a Service that does not exist is valid) nor at status.
func Validate(obj Object) field.ErrorList {
	k, ok := KindOf(obj)
	if !ok {
		return field.ErrorList{field.InternalError(nil, fmt.Errorf("validate %T: not a Verge kind", obj))}
	}
	errs := validateTypeMeta(obj, k)
	errs = append(errs, validateMeta(obj)...)
	spec := field.NewPath("spec")
	switch o := obj.(type) {
	case *Service:
		errs = append(errs, validateServiceSpec(&o.Spec, spec)...)
	case *Workload:
		errs = append(errs, validateWorkloadSpec(&o.Spec, spec)...)
	case *HTTPRoute:
		errs = append(errs, validateHTTPRouteSpec(&o.Spec, spec)...)
	case *GRPCRoute:
		errs = append(errs, validateGRPCRouteSpec(&o.Spec, spec)...)
	case *DestinationPolicy:
		errs = append(errs, validateDestinationPolicySpec(&o.Spec, spec)...)
	case *FaultInjection:
		errs = append(errs, validateFaultInjectionSpec(&o.Spec, spec)...)
	case *MeshTLS:
		errs = append(errs, validateMeshTLSSpec(&o.Spec, spec)...)
	case *AuthorizationPolicy:
		errs = append(errs, validateAuthorizationPolicySpec(&o.Spec, spec)...)
	case *Telemetry:
		errs = append(errs, validateTelemetrySpec(&o.Spec, spec)...)
	}
	return append(errs, controlCharacters(reflect.ValueOf(obj), nil)...)
}

func validateTypeMeta(obj Object, k Kind) field.ErrorList {
	var errs field.ErrorList
	gvk := obj.GetObjectKind().GroupVersionKind()
	if v := gvk.GroupVersion().String(); v != k.APIVersion() {
		errs = append(errs, field.NotSupported(field.NewPath("apiVersion"), v, []string{k.APIVersion()}))
	}
	if gvk.Kind != k.Kind {
		errs = append(errs, field.NotSupported(field.NewPath("kind"), gvk.Kind, []string{k.Kind}))
	}
	return errs
}

func validateMeta(obj Object) field.ErrorList {
	meta := field.NewPath("metadata")
	errs := dnsLabel(meta.Child("name"), obj.GetName())
	errs = append(errs, dnsLabel(meta.Child("namespace"), obj.GetNamespace())...)
	errs = append(errs, labels(meta.Child("labels"), obj.GetLabels())...)
	errs = append(errs, annotations(meta.Child("annotations"), obj.GetAnnotations())...)
	return errs
}

func validateServiceSpec(s *ServiceSpec, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	ports := p.Child("ports")
	if len(s.Ports) == 0 {
		errs = append(errs, field.Required(ports, "a service needs at least one port"))
	}
	numbers := map[int32]bool{}
	names := map[string]bool{}
	for i, sp := range s.Ports {
		pp := ports.Index(i)
		supported := supportedProtocol(sp.Protocol)
		if !supported {
			errs = append(errs, field.NotSupported(pp.Child("protocol"), sp.Protocol,
				[]Protocol{ProtocolHTTP, ProtocolHTTP2, ProtocolGRPC, ProtocolTCP}))
		}
		switch {
		case sp.Name != "":
			errs = append(errs, dnsLabel(pp.Child("name"), sp.Name)...)
		case supported:
			errs = append(errs, field.Required(pp.Child("name"), ""))
		}
		if sp.Name != "" && names[sp.Name] {
			errs = append(errs, field.Duplicate(pp.Child("name"), sp.Name))
		}
		names[sp.Name] = true
		errs = append(errs, portNumber(pp.Child("port"), sp.Port)...)
		if numbers[sp.Port] {
			errs = append(errs, field.Duplicate(pp.Child("port"), sp.Port))
		}
		numbers[sp.Port] = true
		errs = append(errs, portNumber(pp.Child("targetPort"), sp.TargetPort)...)
	}
	errs = append(errs, labels(p.Child("selector"), s.Selector)...)
	sas := map[string]bool{}
	for i, sa := range s.ServiceAccounts {
		sp := p.Child("serviceAccounts").Index(i)
		for _, msg := range validation.IsDNS1123Subdomain(sa) {
			errs = append(errs, field.Invalid(sp, sa, msg))
		}
		if sas[sa] {
			errs = append(errs, field.Duplicate(sp, sa))
		}
		sas[sa] = true
	}
	if n := len(s.ServiceAccounts); n > maxServiceAccounts {
		errs = append(errs, field.TooMany(p.Child("serviceAccounts"), n, maxServiceAccounts))
	}
	return errs
}

// maxServiceAccounts bounds ServiceSpec.ServiceAccounts; a service run by
// more identities than this is better described by a selector per identity.
const maxServiceAccounts = 64

func validateWorkloadSpec(s *WorkloadSpec, p *field.Path) field.ErrorList {
	errs := ipAddress(p.Child("address"), s.Address)
	for _, msg := range validation.IsDNS1123Subdomain(s.ServiceAccount) {
		errs = append(errs, field.Invalid(p.Child("serviceAccount"), s.ServiceAccount, msg))
	}
	ports, inbound := map[int32]bool{}, map[int32]bool{}
	for i, wp := range s.Ports {
		pp := p.Child("ports").Index(i)
		errs = append(errs, portNumber(pp.Child("port"), wp.Port)...)
		if ports[wp.Port] {
			errs = append(errs, field.Duplicate(pp.Child("port"), wp.Port))
		}
		ports[wp.Port] = true
		if wp.InboundPort == 0 {
			continue
		}
		errs = append(errs, portNumber(pp.Child("inboundPort"), wp.InboundPort)...)
		if inbound[wp.InboundPort] {
			errs = append(errs, field.Duplicate(pp.Child("inboundPort"), wp.InboundPort))
		}
		inbound[wp.InboundPort] = true
	}
	if s.Proxy != nil {
		pp := p.Child("proxy")
		if rp := s.Proxy.ReadinessPath; rp != "" && !strings.HasPrefix(rp, "/") {
			errs = append(errs, field.Invalid(pp.Child("readinessPath"), rp, "must start with /"))
		}
		errs = append(errs, ipAddress(pp.Child("appAddress"), s.Proxy.AppAddress)...)
	}
	local := map[int32]bool{}
	for i, u := range s.Upstreams {
		up := p.Child("upstreams").Index(i)
		errs = append(errs, upstreamService(up.Child("service"), u.Service)...)
		errs = append(errs, portNumber(up.Child("port"), u.Port)...)
		errs = append(errs, portNumber(up.Child("localPort"), u.LocalPort)...)
		if local[u.LocalPort] {
			errs = append(errs, field.Duplicate(up.Child("localPort"), u.LocalPort))
		}
		local[u.LocalPort] = true
		errs = append(errs, ipAddress(up.Child("localAddress"), u.LocalAddress)...)
	}
	if hp := s.HTTPProxy; hp != nil {
		pp := p.Child("httpProxy")
		errs = append(errs, portNumber(pp.Child("port"), hp.Port)...)
		errs = append(errs, ipAddress(pp.Child("address"), hp.Address)...)
		// An upstream on the same socket would fail to bind on the proxy.
		for _, u := range s.Upstreams {
			if u.LocalPort == hp.Port && u.LocalAddress == hp.Address {
				errs = append(errs, field.Duplicate(pp.Child("port"), hp.Port))
				break
			}
		}
	}
	return errs
}

// upstreamService checks NAME.NAMESPACE: Default has added the namespace.
func upstreamService(p *field.Path, s string) field.ErrorList {
	if s == "" {
		return field.ErrorList{field.Required(p, "")}
	}
	name, ns, ok := strings.Cut(s, ".")
	if !ok || strings.Contains(ns, ".") {
		return field.ErrorList{field.Invalid(p, s, "must be NAME or NAME.NAMESPACE")}
	}
	var errs field.ErrorList
	for _, part := range []string{name, ns} {
		for _, msg := range validation.IsDNS1123Label(part) {
			errs = append(errs, field.Invalid(p, s, fmt.Sprintf("%q: %s", part, msg)))
		}
	}
	return errs
}

// dnsLabel requires v and checks it is a DNS-1123 label, as resource names,
// namespaces and port names are.
func dnsLabel(p *field.Path, v string) field.ErrorList {
	if v == "" {
		return field.ErrorList{field.Required(p, "")}
	}
	var errs field.ErrorList
	for _, msg := range validation.IsDNS1123Label(v) {
		errs = append(errs, field.Invalid(p, v, msg))
	}
	return errs
}

// portNumber checks a port field where zero means unset.
func portNumber(p *field.Path, port int32) field.ErrorList {
	if port == 0 {
		return field.ErrorList{field.Required(p, "")}
	}
	return portRange(p, port)
}

// portRange checks a port that is set.
func portRange(p *field.Path, port int32) field.ErrorList {
	if port < 1 || port > 65535 {
		return field.ErrorList{field.Invalid(p, port, "must be between 1 and 65535")}
	}
	return nil
}

func ipAddress(p *field.Path, v string) field.ErrorList {
	if v == "" {
		return field.ErrorList{field.Required(p, "")}
	}
	if _, err := netip.ParseAddr(v); err != nil {
		return field.ErrorList{field.Invalid(p, v, "must be an IP address")}
	}
	return nil
}

// labels checks label keys and values as Kubernetes does, in key order so
// that the same object always gets the same report.
func labels(p *field.Path, m map[string]string) field.ErrorList {
	var errs field.ErrorList
	for _, k := range slices.Sorted(maps.Keys(m)) {
		for _, msg := range validation.IsQualifiedName(k) {
			errs = append(errs, field.Invalid(p, k, msg))
		}
		for _, msg := range validation.IsValidLabelValue(m[k]) {
			errs = append(errs, field.Invalid(p.Key(k), m[k], msg))
		}
	}
	return errs
}

// maxAnnotationBytes is Kubernetes' limit on the total size of an object's
// annotations.
const maxAnnotationBytes = 256 << 10

func annotations(p *field.Path, m map[string]string) field.ErrorList {
	var errs field.ErrorList
	size := 0
	for _, k := range slices.Sorted(maps.Keys(m)) {
		size += len(k) + len(m[k])
		// Annotation keys are qualified names in any letter case.
		for _, msg := range validation.IsQualifiedName(strings.ToLower(k)) {
			errs = append(errs, field.Invalid(p, k, msg))
		}
	}
	if size > maxAnnotationBytes {
		errs = append(errs, field.TooLong(p, "", maxAnnotationBytes))
	}
	return errs
}

// controlCharacters refuses, in every string of v (map keys included), the
// characters YAML cannot carry: control characters other than tab, newline
// and carriage return, and U+FFFE and U+FFFF. None of them means anything in
// a resource, and an object holding one would not survive being written as
// YAML and read back (the encoder fails on U+FFFE, and writes U+0085 raw, which
// the parser then reads as a line break).
// p names v's position; nil is the document root.
func controlCharacters(v reflect.Value, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			errs = controlCharacters(v.Elem(), p)
		}
	case reflect.String:
		if s := v.String(); strings.ContainsFunc(s, badControl) {
			errs = field.ErrorList{field.Invalid(p, s, "must not contain control characters")}
		}
	case reflect.Slice, reflect.Array:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			return nil // raw bytes (FieldsV1, RawExtension), not text
		}
		for i := range v.Len() {
			errs = append(errs, controlCharacters(v.Index(i), p.Index(i))...)
		}
	case reflect.Map:
		if v.Type().Key().Kind() != reflect.String {
			return nil
		}
		keys := v.MapKeys()
		slices.SortFunc(keys, func(a, b reflect.Value) int { return strings.Compare(a.String(), b.String()) })
		for _, k := range keys {
			if strings.ContainsFunc(k.String(), badControl) {
				errs = append(errs, field.Invalid(p, k.String(), "keys must not contain control characters"))
			}
			errs = append(errs, controlCharacters(v.MapIndex(k), p.Key(k.String()))...)
		}
	case reflect.Struct:
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
			child := p
			switch {
			case name == "-":
				continue
			case f.Anonymous && (name == "" || strings.Contains(opts, "inline")):
				// Inlined: its fields sit at this level.
			case p == nil:
				child = field.NewPath(cmp.Or(name, f.Name))
			default:
				child = p.Child(cmp.Or(name, f.Name))
			}
			errs = append(errs, controlCharacters(v.Field(i), child)...)
		}
	}
	return errs
}

// badControl reports whether r is outside YAML's printable set (YAML 1.2
// section 5.1) or is NEL.
func badControl(r rune) bool {
	switch {
	case r == '\t', r == '\n', r == '\r':
		return false
	case r < 0x20, r >= 0x7F && r < 0xA0: // C0, DEL, C1 (including NEL)
		return true
	case r >= 0xD800 && r < 0xE000, r == 0xFFFE, r == 0xFFFF:
		return true
	}
	return false
}
