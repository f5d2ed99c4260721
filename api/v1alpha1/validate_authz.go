package v1alpha1

import (
	"net/url"
	"path"
	"strings"
	"unicode/utf8"

	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"verge.dev/verge/internal/proxy/authz/celenv"
)

// maxAuthzValues bounds every list of an AuthorizationPolicy, and
// maxAuthzRules its rules, so that one object cannot make every proxy's
// decision slow.
const (
	maxAuthzRules  = 64
	maxAuthzValues = 256
)

func validateAuthorizationPolicySpec(s *AuthorizationPolicySpec, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	switch s.Action {
	case AuthorizationAllow, AuthorizationDeny, AuthorizationAudit:
	case "":
		errs = append(errs, field.Required(p.Child("action"), "ALLOW, DENY or AUDIT"))
	default:
		errs = append(errs, field.NotSupported(p.Child("action"), s.Action,
			[]AuthorizationAction{AuthorizationAllow, AuthorizationDeny, AuthorizationAudit}))
	}
	if s.Service != "" {
		errs = append(errs, dnsLabel(p.Child("service"), s.Service)...)
	}
	rp := p.Child("rules")
	if len(s.Rules) > maxAuthzRules {
		errs = append(errs, field.TooMany(rp, len(s.Rules), maxAuthzRules))
	}
	names := map[string]bool{}
	for i := range s.Rules {
		r := &s.Rules[i]
		ip := rp.Index(i)
		if r.Name != "" {
			errs = append(errs, dnsLabel(ip.Child("name"), r.Name)...)
			if names[r.Name] {
				errs = append(errs, field.Duplicate(ip.Child("name"), r.Name))
			}
			names[r.Name] = true
		}
		errs = append(errs, validateAuthorizationRule(r, ip)...)
	}
	if s.JWT != nil {
		errs = append(errs, validateJWT(s.JWT, p.Child("jwt"))...)
	}
	return errs
}

func validateAuthorizationRule(r *AuthorizationRule, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	for i, f := range r.From {
		fp := p.Child("from").Index(i)
		errs = append(errs, eachValue(fp.Child("principals"), f.Principals, principal)...)
		errs = append(errs, eachValue(fp.Child("notPrincipals"), f.NotPrincipals, principal)...)
		errs = append(errs, eachValue(fp.Child("namespaces"), f.Namespaces, namespaceOrAny)...)
		errs = append(errs, eachValue(fp.Child("notNamespaces"), f.NotNamespaces, namespaceOrAny)...)
		errs = append(errs, eachValue(fp.Child("serviceAccounts"), f.ServiceAccounts, serviceAccount)...)
		errs = append(errs, eachValue(fp.Child("notServiceAccounts"), f.NotServiceAccounts, serviceAccount)...)
	}
	for i, t := range r.To {
		tp := p.Child("to").Index(i)
		errs = append(errs, ports(tp.Child("ports"), t.Ports)...)
		errs = append(errs, ports(tp.Child("notPorts"), t.NotPorts)...)
		errs = append(errs, eachValue(tp.Child("paths"), t.Paths, pathValue)...)
		errs = append(errs, eachValue(tp.Child("notPaths"), t.NotPaths, pathValue)...)
		errs = append(errs, eachValue(tp.Child("methods"), t.Methods, method)...)
		errs = append(errs, eachValue(tp.Child("notMethods"), t.NotMethods, method)...)
		errs = append(errs, eachValue(tp.Child("hosts"), t.Hosts, wildcard)...)
		errs = append(errs, eachValue(tp.Child("notHosts"), t.NotHosts, wildcard)...)
	}
	for i, h := range r.Headers {
		hp := p.Child("headers").Index(i)
		if h.Name == "" {
			errs = append(errs, field.Required(hp.Child("name"), ""))
		} else if !validHeaderName(h.Name) {
			errs = append(errs, field.Invalid(hp.Child("name"), h.Name, "must be an HTTP header name (to[] has methods, paths and hosts)"))
		}
		errs = append(errs, conditionValues(hp, h.Values, h.NotValues)...)
	}
	for i, w := range r.When {
		wp := p.Child("when").Index(i)
		errs = append(errs, nonEmpty(wp.Child("claim"), w.Claim)...)
		errs = append(errs, conditionValues(wp, w.Values, w.NotValues)...)
	}
	if r.CEL != "" {
		errs = append(errs, celCondition(p.Child("cel"), r.CEL)...)
	}
	return errs
}

// celCondition compiles a rule's CEL condition with the environment the
// proxies run it in, so that a stored condition is one every proxy can
// enforce: it must type-check to bool within the length and cost limits.
func celCondition(p *field.Path, expr string) field.ErrorList {
	if len(expr) > celenv.MaxLength {
		return field.ErrorList{field.TooLong(p, "", celenv.MaxLength)}
	}
	if !utf8.ValidString(expr) {
		return field.ErrorList{field.Invalid(p, expr, "must be valid UTF-8")}
	}
	if _, err := celenv.Compile(expr); err != nil {
		return field.ErrorList{field.Invalid(p, expr, err.Error())}
	}
	return nil
}

func conditionValues(p *field.Path, values, notValues []string) field.ErrorList {
	var errs field.ErrorList
	if len(values) == 0 && len(notValues) == 0 {
		errs = append(errs, field.Required(p.Child("values"), "at least one of values and notValues"))
	}
	errs = append(errs, eachValue(p.Child("values"), values, wildcard)...)
	errs = append(errs, eachValue(p.Child("notValues"), notValues, wildcard)...)
	return errs
}

func validateJWT(j *JWTAuthentication, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	pp := p.Child("providers")
	if len(j.Providers) == 0 {
		errs = append(errs, field.Required(pp, "at least one provider"))
	}
	if len(j.Providers) > maxAuthzValues {
		errs = append(errs, field.TooMany(pp, len(j.Providers), maxAuthzValues))
	}
	issuers := map[string]bool{}
	for i, pr := range j.Providers {
		ip := pp.Index(i)
		if err := nonEmpty(ip.Child("issuer"), pr.Issuer); err != nil {
			errs = append(errs, err...)
		} else if issuers[pr.Issuer] {
			errs = append(errs, field.Duplicate(ip.Child("issuer"), pr.Issuer))
		}
		issuers[pr.Issuer] = true
		errs = append(errs, eachValue(ip.Child("audiences"), pr.Audiences, nonEmpty)...)
		switch {
		case pr.JWKSFile != "" && pr.JWKSURI != "":
			errs = append(errs, field.Invalid(ip.Child("jwksURI"), pr.JWKSURI, "jwksFile and jwksURI are mutually exclusive"))
		case pr.JWKSFile == "" && pr.JWKSURI == "":
			errs = append(errs, field.Required(ip.Child("jwksFile"), "one of jwksFile and jwksURI"))
		case pr.JWKSFile != "":
			if !path.IsAbs(pr.JWKSFile) || path.Clean(pr.JWKSFile) != pr.JWKSFile {
				errs = append(errs, field.Invalid(ip.Child("jwksFile"), pr.JWKSFile, "must be a clean absolute path"))
			}
		default:
			u, err := url.Parse(pr.JWKSURI)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				errs = append(errs, field.Invalid(ip.Child("jwksURI"), pr.JWKSURI, "must be an absolute http or https URL"))
			}
		}
		if h := pr.FromHeader; h != nil {
			hp := ip.Child("fromHeader")
			if !validHeaderName(h.Name) {
				errs = append(errs, field.Invalid(hp.Child("name"), h.Name, "must be an HTTP header name"))
			}
		} else {
			errs = append(errs, field.Required(ip.Child("fromHeader"), ""))
		}
	}
	return errs
}

// eachValue checks a list: not longer than maxAuthzValues, every value by check.
func eachValue(p *field.Path, vs []string, check func(*field.Path, string) field.ErrorList) field.ErrorList {
	var errs field.ErrorList
	if len(vs) > maxAuthzValues {
		return field.ErrorList{field.TooMany(p, len(vs), maxAuthzValues)}
	}
	for i, v := range vs {
		errs = append(errs, check(p.Index(i), v)...)
	}
	return errs
}

func ports(p *field.Path, ps []int32) field.ErrorList {
	if len(ps) > maxAuthzValues {
		return field.ErrorList{field.TooMany(p, len(ps), maxAuthzValues)}
	}
	var errs field.ErrorList
	for i, port := range ps {
		errs = append(errs, portRange(p.Index(i), port)...)
	}
	return errs
}

// nonEmpty requires v, as valid UTF-8: it ends up in protobuf strings,
// which must be.
func nonEmpty(p *field.Path, v string) field.ErrorList {
	if v == "" {
		return field.ErrorList{field.Required(p, "")}
	}
	if !utf8.ValidString(v) {
		return field.ErrorList{field.Invalid(p, v, "must be valid UTF-8")}
	}
	return nil
}

// wildcard checks a value where "*" may stand alone or be the first or the
// last character.
func wildcard(p *field.Path, v string) field.ErrorList {
	if errs := nonEmpty(p, v); errs != nil {
		return errs
	}
	if n := strings.Count(v, "*"); n == 0 || (n == 1 && (v[0] == '*' || v[len(v)-1] == '*')) {
		return nil
	}
	return field.ErrorList{field.Invalid(p, v, `"*" may only be the whole value, its first or its last character, once`)}
}

func principal(p *field.Path, v string) field.ErrorList {
	if errs := wildcard(p, v); errs != nil {
		return errs
	}
	if !strings.HasPrefix(v, "*") && !strings.HasPrefix(v, "spiffe://") {
		return field.ErrorList{field.Invalid(p, v, `must be a SPIFFE ID ("spiffe://...") or start with "*"`)}
	}
	return nil
}

func namespaceOrAny(p *field.Path, v string) field.ErrorList {
	if v == "*" {
		return nil
	}
	return dnsLabel(p, v)
}

func serviceAccount(p *field.Path, v string) field.ErrorList {
	ns, sa, ok := strings.Cut(v, "/")
	if !ok {
		return field.ErrorList{field.Invalid(p, v, "must be NAMESPACE/SERVICEACCOUNT")}
	}
	var errs field.ErrorList
	for _, msg := range validation.IsDNS1123Label(ns) {
		errs = append(errs, field.Invalid(p, v, "namespace: "+msg))
	}
	for _, msg := range validation.IsDNS1123Subdomain(sa) {
		errs = append(errs, field.Invalid(p, v, "service account: "+msg))
	}
	return errs
}

func pathValue(p *field.Path, v string) field.ErrorList {
	if errs := wildcard(p, v); errs != nil {
		return errs
	}
	if !strings.HasPrefix(v, "/") && !strings.HasPrefix(v, "*") {
		return field.ErrorList{field.Invalid(p, v, `must start with "/" or "*"`)}
	}
	if strings.ContainsAny(v, "?#") {
		return field.ErrorList{field.Invalid(p, v, "must not contain a query or fragment")}
	}
	return nil
}

func method(p *field.Path, v string) field.ErrorList {
	if !validHeaderName(v) {
		return field.ErrorList{field.Invalid(p, v, "must be an HTTP method token")}
	}
	return nil
}

// validHeaderName reports whether v is an RFC 9110 token.
func validHeaderName(v string) bool {
	if v == "" {
		return false
	}
	for _, c := range []byte(v) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}
