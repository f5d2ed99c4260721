package v1alpha1

import (
	"regexp"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// The checks below follow the Gateway API's own CRD validation (patterns and
// CEL rules of sigs.k8s.io/gateway-api v1), which Verge must apply itself
// because it also runs without a Kubernetes API server, plus Verge's limits:
// only Service parents and backends, filters on rules but not on
// backendRefs, and no session persistence yet.

// refGroups are the groups a parentRef or backendRef may name: the core group
// (a Kubernetes Service) or Verge's (a Verge Service), which are the same
// thing to Verge.
var refGroups = []string{"", Group}

const maxWeight = 1000000

var (
	// Gateway API HTTPPathMatch: an absolute path of RFC 3986 characters.
	pathChars = regexp.MustCompile(`^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$`)
	// Gateway API HeaderName.
	headerName = regexp.MustCompile(`^[A-Za-z0-9!#$%&'*+\-.^_` + "`" + `|~]+$`)
	// Gateway API Duration (GEP-2257), a subset of time.ParseDuration's syntax.
	durationFormat = regexp.MustCompile(`^([0-9]{1,5}(h|m|s|ms)){1,4}$`)
	// Gateway API GRPCMethodMatch for type Exact.
	grpcService = regexp.MustCompile(`^(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$`)
	grpcMethod  = regexp.MustCompile(`^[A-Za-z_][A-Za-z_0-9]*$`)
)

var httpMethods = []gatewayv1.HTTPMethod{
	gatewayv1.HTTPMethodGet, gatewayv1.HTTPMethodHead, gatewayv1.HTTPMethodPost,
	gatewayv1.HTTPMethodPut, gatewayv1.HTTPMethodDelete, gatewayv1.HTTPMethodConnect,
	gatewayv1.HTTPMethodOptions, gatewayv1.HTTPMethodTrace, gatewayv1.HTTPMethodPatch,
}

func validateHTTPRouteSpec(s *gatewayv1.HTTPRouteSpec, p *field.Path) field.ErrorList {
	errs := validateCommonRoute(&s.CommonRouteSpec, s.Hostnames, p)
	rules := p.Child("rules")
	if len(s.Rules) == 0 {
		errs = append(errs, field.Required(rules, "a route needs at least one rule"))
	}
	for i := range s.Rules {
		r := &s.Rules[i]
		rp := rules.Index(i)
		errs = append(errs, ruleName(rp.Child("name"), r.Name)...)
		for j := range r.Matches {
			errs = append(errs, validateHTTPMatch(&r.Matches[j], rp.Child("matches").Index(j))...)
		}
		filterErrs, redirect := validateHTTPFilters(r, rp.Child("filters"))
		errs = append(errs, filterErrs...)
		refs := make([]gatewayv1.BackendRef, len(r.BackendRefs))
		for j, b := range r.BackendRefs {
			refs[j] = b.BackendRef
		}
		switch {
		case !redirect:
			errs = append(errs, validateBackendRefs(refs, rp.Child("backendRefs"))...)
		case len(refs) > 0:
			// The redirect answers every request the rule matches.
			errs = append(errs, field.Forbidden(rp.Child("backendRefs"), "must be empty in a rule with a RequestRedirect filter"))
		}
		for j, b := range r.BackendRefs {
			errs = append(errs, backendFilters(rp.Child("backendRefs").Index(j).Child("filters"), len(b.Filters))...)
		}
		if r.Timeouts != nil {
			errs = append(errs, validateTimeouts(r.Timeouts, rp.Child("timeouts"))...)
		}
		if r.Retry != nil {
			errs = append(errs, validateRetry(r.Retry, rp.Child("retry"))...)
		}
		if r.SessionPersistence != nil {
			errs = append(errs, field.Forbidden(rp.Child("sessionPersistence"), "not supported yet"))
		}
	}
	return errs
}

func validateGRPCRouteSpec(s *gatewayv1.GRPCRouteSpec, p *field.Path) field.ErrorList {
	errs := validateCommonRoute(&s.CommonRouteSpec, s.Hostnames, p)
	rules := p.Child("rules")
	if len(s.Rules) == 0 {
		errs = append(errs, field.Required(rules, "a route needs at least one rule"))
	}
	for i := range s.Rules {
		r := &s.Rules[i]
		rp := rules.Index(i)
		errs = append(errs, ruleName(rp.Child("name"), r.Name)...)
		for j := range r.Matches {
			errs = append(errs, validateGRPCMatch(&r.Matches[j], rp.Child("matches").Index(j))...)
		}
		errs = append(errs, validateGRPCFilters(r.Filters, rp.Child("filters"))...)
		refs := make([]gatewayv1.BackendRef, len(r.BackendRefs))
		for j, b := range r.BackendRefs {
			refs[j] = b.BackendRef
		}
		errs = append(errs, validateBackendRefs(refs, rp.Child("backendRefs"))...)
		for j, b := range r.BackendRefs {
			errs = append(errs, backendFilters(rp.Child("backendRefs").Index(j).Child("filters"), len(b.Filters))...)
		}
		if r.SessionPersistence != nil {
			errs = append(errs, field.Forbidden(rp.Child("sessionPersistence"), "not supported yet"))
		}
	}
	return errs
}

func validateCommonRoute(s *gatewayv1.CommonRouteSpec, hostnames []gatewayv1.Hostname, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	parents := p.Child("parentRefs")
	if len(s.ParentRefs) == 0 {
		errs = append(errs, field.Required(parents, "a mesh route attaches to at least one Service"))
	}
	for i, ref := range s.ParentRefs {
		pp := parents.Index(i)
		errs = append(errs, groupKind(pp, ref.Group, ref.Kind)...)
		errs = append(errs, dnsLabel(pp.Child("name"), string(ref.Name))...)
		if ref.Namespace != nil {
			errs = append(errs, dnsLabel(pp.Child("namespace"), string(*ref.Namespace))...)
		}
		if ref.SectionName != nil {
			errs = append(errs, dnsLabel(pp.Child("sectionName"), string(*ref.SectionName))...)
		}
		if ref.Port != nil {
			errs = append(errs, portRange(pp.Child("port"), *ref.Port)...)
		}
	}
	for i, h := range hostnames {
		hp := p.Child("hostnames").Index(i)
		check := validation.IsDNS1123Subdomain
		if strings.HasPrefix(string(h), "*") {
			check = validation.IsWildcardDNS1123Subdomain
		}
		for _, msg := range check(string(h)) {
			errs = append(errs, field.Invalid(hp, h, msg))
		}
	}
	return errs
}

// groupKind checks a parentRef's or backendRef's group and kind, which
// Default has set.
func groupKind(p *field.Path, group *gatewayv1.Group, kind *gatewayv1.Kind) field.ErrorList {
	var errs field.ErrorList
	switch {
	case group == nil:
		errs = append(errs, field.Required(p.Child("group"), ""))
	case *group != "" && *group != Group:
		errs = append(errs, field.NotSupported(p.Child("group"), *group, refGroups))
	}
	switch {
	case kind == nil:
		errs = append(errs, field.Required(p.Child("kind"), ""))
	case *kind != "Service":
		errs = append(errs, field.NotSupported(p.Child("kind"), *kind, []string{"Service"}))
	}
	return errs
}

func validateBackendRefs(refs []gatewayv1.BackendRef, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if len(refs) == 0 {
		errs = append(errs, field.Required(p, "a rule needs at least one backend"))
		return errs
	}
	var total int64
	weightsOK := true
	for i, b := range refs {
		bp := p.Index(i)
		errs = append(errs, groupKind(bp, b.Group, b.Kind)...)
		errs = append(errs, dnsLabel(bp.Child("name"), string(b.Name))...)
		if b.Namespace != nil {
			errs = append(errs, dnsLabel(bp.Child("namespace"), string(*b.Namespace))...)
		}
		if b.Port == nil {
			errs = append(errs, field.Required(bp.Child("port"), "a Service backend needs a port"))
		} else {
			errs = append(errs, portRange(bp.Child("port"), *b.Port)...)
		}
		switch {
		case b.Weight == nil:
			weightsOK = false
			errs = append(errs, field.Required(bp.Child("weight"), ""))
		case *b.Weight < 0 || *b.Weight > maxWeight:
			weightsOK = false
			errs = append(errs, field.Invalid(bp.Child("weight"), *b.Weight, "must be between 0 and 1000000"))
		default:
			total += int64(*b.Weight)
		}
	}
	if weightsOK && total == 0 {
		errs = append(errs, field.Invalid(p, total, "the sum of the weights must be greater than 0"))
	}
	return errs
}

func validateHTTPMatch(m *gatewayv1.HTTPRouteMatch, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if m.Path == nil {
		errs = append(errs, field.Required(p.Child("path"), ""))
	} else {
		errs = append(errs, validatePathMatch(m.Path, p.Child("path"))...)
	}
	seen := map[string]bool{}
	for i, h := range m.Headers {
		hp := p.Child("headers").Index(i)
		errs = append(errs, headerMatch(hp, string(h.Name), (*string)(h.Type), h.Value)...)
		// Header names are case-insensitive, and the Gateway API keys the
		// list by name.
		if n := strings.ToLower(string(h.Name)); seen[n] {
			errs = append(errs, field.Duplicate(hp.Child("name"), h.Name))
		} else {
			seen[n] = true
		}
	}
	seen = map[string]bool{}
	for i, q := range m.QueryParams {
		qp := p.Child("queryParams").Index(i)
		errs = append(errs, headerMatch(qp, string(q.Name), (*string)(q.Type), q.Value)...)
		if seen[string(q.Name)] {
			errs = append(errs, field.Duplicate(qp.Child("name"), q.Name))
		}
		seen[string(q.Name)] = true
	}
	if m.Method != nil {
		found := false
		for _, hm := range httpMethods {
			found = found || hm == *m.Method
		}
		if !found {
			errs = append(errs, field.NotSupported(p.Child("method"), *m.Method, httpMethods))
		}
	}
	return errs
}

func validatePathMatch(m *gatewayv1.HTTPPathMatch, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if m.Type == nil {
		errs = append(errs, field.Required(p.Child("type"), ""))
	}
	if m.Value == nil {
		return append(errs, field.Required(p.Child("value"), ""))
	}
	v := *m.Value
	vp := p.Child("value")
	if m.Type == nil {
		return errs
	}
	switch *m.Type {
	case gatewayv1.PathMatchExact, gatewayv1.PathMatchPathPrefix:
		if msg := pathProblem(v); msg != "" {
			errs = append(errs, field.Invalid(vp, v, msg))
		}
	case gatewayv1.PathMatchRegularExpression:
		errs = append(errs, regex(vp, v)...)
	default:
		errs = append(errs, field.NotSupported(p.Child("type"), *m.Type, []gatewayv1.PathMatchType{
			gatewayv1.PathMatchExact, gatewayv1.PathMatchPathPrefix, gatewayv1.PathMatchRegularExpression}))
	}
	return errs
}

// pathProblem applies the Gateway API's rules for Exact and PathPrefix path
// values, which keep a match from depending on how a proxy normalises paths.
func pathProblem(v string) string {
	switch {
	case !strings.HasPrefix(v, "/"):
		return "must be an absolute path starting with /"
	case !pathChars.MatchString(v):
		return "must contain only URI path characters and %-escapes"
	case strings.Contains(v, "//"):
		return "must not contain //"
	case strings.Contains(v, "/./"), strings.HasSuffix(v, "/."):
		return "must not contain /./ or end with /."
	case strings.Contains(v, "/../"), strings.HasSuffix(v, "/.."):
		return "must not contain /../ or end with /.."
	case strings.Contains(strings.ToLower(v), "%2f"):
		return "must not contain %2F"
	}
	return ""
}

// headerMatch checks a header, query parameter or gRPC metadata match.
func headerMatch(p *field.Path, name string, typ *string, value string) field.ErrorList {
	var errs field.ErrorList
	switch {
	case name == "":
		errs = append(errs, field.Required(p.Child("name"), ""))
	case len(name) > 256 || !headerName.MatchString(name):
		errs = append(errs, field.Invalid(p.Child("name"), name, "must be an HTTP token of at most 256 characters"))
	}
	switch {
	case typ == nil:
		errs = append(errs, field.Required(p.Child("type"), ""))
	case *typ == "Exact":
	case *typ == "RegularExpression":
		errs = append(errs, regex(p.Child("value"), value)...)
	default:
		errs = append(errs, field.NotSupported(p.Child("type"), *typ, []string{"Exact", "RegularExpression"}))
	}
	return errs
}

func validateGRPCMatch(m *gatewayv1.GRPCRouteMatch, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if mm := m.Method; mm != nil {
		mp := p.Child("method")
		if mm.Service == nil && mm.Method == nil {
			errs = append(errs, field.Required(mp, "one or both of service and method must be set"))
		}
		switch {
		case mm.Type == nil:
			errs = append(errs, field.Required(mp.Child("type"), ""))
		case *mm.Type == gatewayv1.GRPCMethodMatchExact:
			if mm.Service != nil && !grpcService.MatchString(*mm.Service) {
				errs = append(errs, field.Invalid(mp.Child("service"), *mm.Service, "must be a fully qualified gRPC service name"))
			}
			if mm.Method != nil && !grpcMethod.MatchString(*mm.Method) {
				errs = append(errs, field.Invalid(mp.Child("method"), *mm.Method, "must be a gRPC method name"))
			}
		case *mm.Type == gatewayv1.GRPCMethodMatchRegularExpression:
			if mm.Service != nil {
				errs = append(errs, regex(mp.Child("service"), *mm.Service)...)
			}
			if mm.Method != nil {
				errs = append(errs, regex(mp.Child("method"), *mm.Method)...)
			}
		default:
			errs = append(errs, field.NotSupported(mp.Child("type"), *mm.Type, []gatewayv1.GRPCMethodMatchType{
				gatewayv1.GRPCMethodMatchExact, gatewayv1.GRPCMethodMatchRegularExpression}))
		}
	}
	seen := map[string]bool{}
	for i, h := range m.Headers {
		hp := p.Child("headers").Index(i)
		errs = append(errs, headerMatch(hp, string(h.Name), (*string)(h.Type), h.Value)...)
		if n := strings.ToLower(string(h.Name)); seen[n] {
			errs = append(errs, field.Duplicate(hp.Child("name"), h.Name))
		} else {
			seen[n] = true
		}
	}
	return errs
}

func validateTimeouts(t *gatewayv1.HTTPRouteTimeouts, p *field.Path) field.ErrorList {
	req, errs := duration(p.Child("request"), t.Request)
	backend, more := duration(p.Child("backendRequest"), t.BackendRequest)
	errs = append(errs, more...)
	// Zero disables a timeout, as in the Gateway API.
	if len(errs) == 0 && req > 0 && backend > req {
		errs = append(errs, field.Invalid(p.Child("backendRequest"), *t.BackendRequest,
			"must not be longer than the request timeout"))
	}
	return errs
}

func validateRetry(r *gatewayv1.HTTPRouteRetry, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	for i, c := range r.Codes {
		if c < 400 || c > 599 {
			errs = append(errs, field.Invalid(p.Child("codes").Index(i), c, "must be between 400 and 599"))
		}
	}
	if r.Attempts != nil && *r.Attempts < 0 {
		errs = append(errs, field.Invalid(p.Child("attempts"), *r.Attempts, "must not be negative"))
	}
	_, more := duration(p.Child("backoff"), r.Backoff)
	return append(errs, more...)
}

// duration parses an optional Gateway API duration; nil is zero.
func duration(p *field.Path, d *gatewayv1.Duration) (time.Duration, field.ErrorList) {
	if d == nil {
		return 0, nil
	}
	if !durationFormat.MatchString(string(*d)) {
		return 0, field.ErrorList{field.Invalid(p, *d, `must be a Gateway API duration such as "10s" or "1m30s500ms"`)}
	}
	v, err := time.ParseDuration(string(*d))
	if err != nil {
		return 0, field.ErrorList{field.Invalid(p, *d, err.Error())}
	}
	return v, nil
}

func ruleName(p *field.Path, name *gatewayv1.SectionName) field.ErrorList {
	if name == nil {
		return nil
	}
	var errs field.ErrorList
	for _, msg := range validation.IsDNS1123Subdomain(string(*name)) {
		errs = append(errs, field.Invalid(p, *name, msg))
	}
	return errs
}

func regex(p *field.Path, v string) field.ErrorList {
	if _, err := regexp.Compile(v); err != nil {
		return field.ErrorList{field.Invalid(p, v, "must be an RE2 regular expression: "+err.Error())}
	}
	return nil
}

// notYet refuses a feature a later change adds, so that a route using it is
// refused whole rather than applied without it.
func notYet(p *field.Path, value, what string) *field.Error {
	e := field.NotSupported[string](p, value, nil)
	e.Detail = what + " are not supported yet"
	return e
}
