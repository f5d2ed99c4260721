package v1alpha1

import (
	"slices"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Route rule filters, checked as the Gateway API's CRD (its CEL rules)
// checks them, plus what Envoy refuses in the resources they become
// (docs/xds-traffic.md): pseudo-headers and host cannot be rewritten as
// headers. Filters on a backendRef are refused: the proxy applies filters
// per route, not per backend.

const (
	maxHeaderFilterEntries = 16 // the Gateway API's MaxItems for set, add and remove
	maxHeaderValue         = 4096
	maxPathModifier        = 1024
)

var (
	httpFilterTypes = []gatewayv1.HTTPRouteFilterType{
		gatewayv1.HTTPRouteFilterRequestHeaderModifier, gatewayv1.HTTPRouteFilterResponseHeaderModifier,
		gatewayv1.HTTPRouteFilterRequestMirror, gatewayv1.HTTPRouteFilterRequestRedirect, gatewayv1.HTTPRouteFilterURLRewrite,
	}
	grpcFilterTypes = []gatewayv1.GRPCRouteFilterType{
		gatewayv1.GRPCRouteFilterRequestHeaderModifier, gatewayv1.GRPCRouteFilterResponseHeaderModifier,
		gatewayv1.GRPCRouteFilterRequestMirror,
	}
	redirectCodes = []string{"301", "302", "303", "307", "308"}
)

// filterMember is one of a filter's union members: its JSON name, the type
// that selects it, and whether it is set.
type filterMember struct {
	name, typ string
	set       bool
}

// unionMembers refuses members set under another type, and reports whether
// the member typ selects is set (Required when it is not).
func unionMembers(p *field.Path, typ string, members []filterMember) field.ErrorList {
	var errs field.ErrorList
	for _, m := range members {
		switch {
		case m.set && m.typ != typ:
			errs = append(errs, field.Forbidden(p.Child(m.name), "may be set only when type is "+m.typ))
		case !m.set && m.typ == typ:
			errs = append(errs, field.Required(p.Child(m.name), "type "+typ+" needs it"))
		}
	}
	return errs
}

// validateHTTPFilters checks a rule's filters; redirect reports whether one
// is a RequestRedirect, which answers requests instead of the backends.
func validateHTTPFilters(r *gatewayv1.HTTPRouteRule, p *field.Path) (errs field.ErrorList, redirect bool) {
	count := map[gatewayv1.HTTPRouteFilterType]int{}
	for j := range r.Filters {
		f := &r.Filters[j]
		fp := p.Index(j)
		errs = append(errs, unionMembers(fp, string(f.Type), []filterMember{
			{"requestHeaderModifier", "RequestHeaderModifier", f.RequestHeaderModifier != nil},
			{"responseHeaderModifier", "ResponseHeaderModifier", f.ResponseHeaderModifier != nil},
			{"requestMirror", "RequestMirror", f.RequestMirror != nil},
			{"requestRedirect", "RequestRedirect", f.RequestRedirect != nil},
			{"urlRewrite", "URLRewrite", f.URLRewrite != nil},
			{"cors", "CORS", f.CORS != nil},
			{"externalAuth", "ExternalAuth", f.ExternalAuth != nil},
			{"extensionRef", "ExtensionRef", f.ExtensionRef != nil},
		})...)
		count[f.Type]++
		switch f.Type {
		case gatewayv1.HTTPRouteFilterRequestMirror:
			// Several mirrors are allowed: each sends a copy.
		case gatewayv1.HTTPRouteFilterRequestHeaderModifier, gatewayv1.HTTPRouteFilterResponseHeaderModifier,
			gatewayv1.HTTPRouteFilterRequestRedirect, gatewayv1.HTTPRouteFilterURLRewrite:
			if count[f.Type] > 1 {
				errs = append(errs, field.Duplicate(fp.Child("type"), f.Type))
			}
		}
		if (f.Type == gatewayv1.HTTPRouteFilterRequestRedirect && count[gatewayv1.HTTPRouteFilterURLRewrite] > 0) ||
			(f.Type == gatewayv1.HTTPRouteFilterURLRewrite && count[gatewayv1.HTTPRouteFilterRequestRedirect] > 0) {
			errs = append(errs, field.Forbidden(fp.Child("type"), "a rule cannot have both a RequestRedirect and a URLRewrite filter"))
		}
		switch f.Type {
		case gatewayv1.HTTPRouteFilterRequestHeaderModifier:
			if f.RequestHeaderModifier != nil {
				errs = append(errs, validateHeaderFilter(f.RequestHeaderModifier, fp.Child("requestHeaderModifier"))...)
			}
		case gatewayv1.HTTPRouteFilterResponseHeaderModifier:
			if f.ResponseHeaderModifier != nil {
				errs = append(errs, validateHeaderFilter(f.ResponseHeaderModifier, fp.Child("responseHeaderModifier"))...)
			}
		case gatewayv1.HTTPRouteFilterRequestMirror:
			if f.RequestMirror != nil {
				errs = append(errs, validateMirror(f.RequestMirror, fp.Child("requestMirror"))...)
			}
		case gatewayv1.HTTPRouteFilterRequestRedirect:
			redirect = true
			if f.RequestRedirect != nil {
				errs = append(errs, validateRedirect(f.RequestRedirect, r.Matches, fp.Child("requestRedirect"))...)
			}
		case gatewayv1.HTTPRouteFilterURLRewrite:
			if w := f.URLRewrite; w != nil {
				wp := fp.Child("urlRewrite")
				errs = append(errs, preciseHostname(wp.Child("hostname"), w.Hostname)...)
				if w.Path != nil {
					errs = append(errs, validatePathModifier(w.Path, r.Matches, wp.Child("path"))...)
				}
			}
		case gatewayv1.HTTPRouteFilterCORS, gatewayv1.HTTPRouteFilterExternalAuth, gatewayv1.HTTPRouteFilterExtensionRef:
			errs = append(errs, notYet(fp.Child("type"), string(f.Type), string(f.Type)+" filters"))
		case "":
			errs = append(errs, field.Required(fp.Child("type"), ""))
		default:
			errs = append(errs, field.NotSupported(fp.Child("type"), f.Type, httpFilterTypes))
		}
	}
	return errs, redirect
}

func validateGRPCFilters(filters []gatewayv1.GRPCRouteFilter, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	count := map[gatewayv1.GRPCRouteFilterType]int{}
	for j := range filters {
		f := &filters[j]
		fp := p.Index(j)
		errs = append(errs, unionMembers(fp, string(f.Type), []filterMember{
			{"requestHeaderModifier", "RequestHeaderModifier", f.RequestHeaderModifier != nil},
			{"responseHeaderModifier", "ResponseHeaderModifier", f.ResponseHeaderModifier != nil},
			{"requestMirror", "RequestMirror", f.RequestMirror != nil},
			{"extensionRef", "ExtensionRef", f.ExtensionRef != nil},
		})...)
		count[f.Type]++
		switch f.Type {
		case gatewayv1.GRPCRouteFilterRequestHeaderModifier, gatewayv1.GRPCRouteFilterResponseHeaderModifier:
			if count[f.Type] > 1 {
				errs = append(errs, field.Duplicate(fp.Child("type"), f.Type))
			}
		}
		switch f.Type {
		case gatewayv1.GRPCRouteFilterRequestHeaderModifier:
			if f.RequestHeaderModifier != nil {
				errs = append(errs, validateHeaderFilter(f.RequestHeaderModifier, fp.Child("requestHeaderModifier"))...)
			}
		case gatewayv1.GRPCRouteFilterResponseHeaderModifier:
			if f.ResponseHeaderModifier != nil {
				errs = append(errs, validateHeaderFilter(f.ResponseHeaderModifier, fp.Child("responseHeaderModifier"))...)
			}
		case gatewayv1.GRPCRouteFilterRequestMirror:
			if f.RequestMirror != nil {
				errs = append(errs, validateMirror(f.RequestMirror, fp.Child("requestMirror"))...)
			}
		case gatewayv1.GRPCRouteFilterExtensionRef:
			errs = append(errs, notYet(fp.Child("type"), string(f.Type), string(f.Type)+" filters"))
		case "":
			errs = append(errs, field.Required(fp.Child("type"), ""))
		default:
			errs = append(errs, field.NotSupported(fp.Child("type"), f.Type, grpcFilterTypes))
		}
	}
	return errs
}

// backendFilters refuses filters on a backendRef.
func backendFilters(p *field.Path, n int) field.ErrorList {
	if n == 0 {
		return nil
	}
	return field.ErrorList{field.Forbidden(p, "filters on a backendRef are not supported; set them on the rule")}
}

// validateHeaderFilter applies the Gateway API's rule that a header name
// takes one action only (set, add or remove), case-insensitively.
func validateHeaderFilter(h *gatewayv1.HTTPHeaderFilter, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	seen := map[string]bool{}
	name := func(np *field.Path, n string) {
		if more := modifiableHeader(np, n); more != nil {
			errs = append(errs, more...)
			return
		}
		if l := strings.ToLower(n); seen[l] {
			errs = append(errs, field.Duplicate(np, n))
		} else {
			seen[l] = true
		}
	}
	for _, list := range []struct {
		name    string
		headers []gatewayv1.HTTPHeader
	}{{"set", h.Set}, {"add", h.Add}} {
		lp := p.Child(list.name)
		if n := len(list.headers); n > maxHeaderFilterEntries {
			errs = append(errs, field.TooMany(lp, n, maxHeaderFilterEntries))
			continue
		}
		for i, hv := range list.headers {
			ip := lp.Index(i)
			name(ip.Child("name"), string(hv.Name))
			switch v := hv.Value; {
			case v == "":
				errs = append(errs, field.Required(ip.Child("value"), ""))
			case len(v) > maxHeaderValue:
				errs = append(errs, field.TooLong(ip.Child("value"), "", maxHeaderValue))
			case strings.ContainsAny(v, "\r\n\x00"):
				// The general control-character check lets CR and LF
				// through; in a header value they would split the header.
				errs = append(errs, field.Invalid(ip.Child("value"), v, "must not contain CR, LF or NUL"))
			}
		}
	}
	rp := p.Child("remove")
	if n := len(h.Remove); n > maxHeaderFilterEntries {
		errs = append(errs, field.TooMany(rp, n, maxHeaderFilterEntries))
	} else {
		for i, n := range h.Remove {
			name(rp.Index(i), n)
		}
	}
	return errs
}

// modifiableHeader checks a header a filter sets, adds or removes. Envoy
// refuses route header mutations of pseudo-headers and of host (the
// authority is rewritten by URLRewrite's hostname instead).
func modifiableHeader(p *field.Path, n string) field.ErrorList {
	switch {
	case strings.HasPrefix(n, ":"):
		return field.ErrorList{field.Invalid(p, n, "pseudo-headers cannot be modified")}
	case strings.EqualFold(n, "host"):
		return field.ErrorList{field.Invalid(p, n, "host cannot be modified; use a URLRewrite filter's hostname")}
	}
	return httpHeaderName(p, n)
}

func validateMirror(m *gatewayv1.HTTPRequestMirrorFilter, p *field.Path) field.ErrorList {
	b := &m.BackendRef
	bp := p.Child("backendRef")
	errs := groupKind(bp, b.Group, b.Kind)
	errs = append(errs, dnsLabel(bp.Child("name"), string(b.Name))...)
	if b.Namespace != nil {
		errs = append(errs, dnsLabel(bp.Child("namespace"), string(*b.Namespace))...)
	}
	if b.Port == nil {
		errs = append(errs, field.Required(bp.Child("port"), "a Service backend needs a port"))
	} else {
		errs = append(errs, portRange(bp.Child("port"), *b.Port)...)
	}
	if m.Percent != nil && m.Fraction != nil {
		errs = append(errs, field.Forbidden(p.Child("fraction"), "percent and fraction are mutually exclusive"))
	}
	if m.Percent != nil {
		errs = append(errs, percent(p.Child("percent"), *m.Percent)...)
	}
	if f := m.Fraction; f != nil {
		fp := p.Child("fraction")
		if f.Numerator < 0 {
			errs = append(errs, field.Invalid(fp.Child("numerator"), f.Numerator, "must not be negative"))
		}
		switch {
		case f.Denominator == nil:
			errs = append(errs, field.Required(fp.Child("denominator"), ""))
		case *f.Denominator < 1:
			errs = append(errs, field.Invalid(fp.Child("denominator"), *f.Denominator, "must be at least 1"))
		case f.Numerator > *f.Denominator:
			errs = append(errs, field.Invalid(fp.Child("numerator"), f.Numerator, "must not be greater than denominator"))
		}
	}
	return errs
}

func validateRedirect(r *gatewayv1.HTTPRequestRedirectFilter, matches []gatewayv1.HTTPRouteMatch, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if s := r.Scheme; s != nil && *s != "http" && *s != "https" {
		errs = append(errs, field.NotSupported(p.Child("scheme"), *s, []string{"http", "https"}))
	}
	errs = append(errs, preciseHostname(p.Child("hostname"), r.Hostname)...)
	if r.Path != nil {
		errs = append(errs, validatePathModifier(r.Path, matches, p.Child("path"))...)
	}
	if r.Port != nil {
		errs = append(errs, portRange(p.Child("port"), *r.Port)...)
	}
	switch {
	case r.StatusCode == nil:
		errs = append(errs, field.Required(p.Child("statusCode"), ""))
	case !slices.Contains(redirectCodes, strconv.Itoa(*r.StatusCode)):
		errs = append(errs, field.NotSupported(p.Child("statusCode"), *r.StatusCode, redirectCodes))
	}
	return errs
}

// validatePathModifier checks a rewrite or redirect path. ReplacePrefixMatch
// replaces what the rule's prefix match matched, so the rule must have
// exactly one match and it must be a PathPrefix (the Gateway API's rule).
func validatePathModifier(m *gatewayv1.HTTPPathModifier, matches []gatewayv1.HTTPRouteMatch, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	full, prefix := p.Child("replaceFullPath"), p.Child("replacePrefixMatch")
	switch m.Type {
	case gatewayv1.FullPathHTTPPathModifier:
		if m.ReplacePrefixMatch != nil {
			errs = append(errs, field.Forbidden(prefix, "may be set only when type is ReplacePrefixMatch"))
		}
		if m.ReplaceFullPath == nil {
			errs = append(errs, field.Required(full, "type ReplaceFullPath needs it"))
		} else {
			errs = append(errs, rewritePath(full, *m.ReplaceFullPath, false)...)
		}
	case gatewayv1.PrefixMatchHTTPPathModifier:
		if m.ReplaceFullPath != nil {
			errs = append(errs, field.Forbidden(full, "may be set only when type is ReplaceFullPath"))
		}
		if m.ReplacePrefixMatch == nil {
			errs = append(errs, field.Required(prefix, "type ReplacePrefixMatch needs it"))
		} else {
			errs = append(errs, rewritePath(prefix, *m.ReplacePrefixMatch, true)...)
		}
		if len(matches) != 1 || matches[0].Path == nil || matches[0].Path.Type == nil ||
			*matches[0].Path.Type != gatewayv1.PathMatchPathPrefix {
			errs = append(errs, field.Forbidden(p.Child("type"),
				"ReplacePrefixMatch needs the rule to have exactly one match, of type PathPrefix"))
		}
	case "":
		errs = append(errs, field.Required(p.Child("type"), ""))
	default:
		errs = append(errs, field.NotSupported(p.Child("type"), m.Type, []gatewayv1.HTTPPathModifierType{
			gatewayv1.FullPathHTTPPathModifier, gatewayv1.PrefixMatchHTTPPathModifier}))
	}
	return errs
}

// rewritePath checks a path a request is rewritten or redirected to; a
// prefix replacement may be empty (the prefix is removed).
func rewritePath(p *field.Path, v string, mayBeEmpty bool) field.ErrorList {
	switch {
	case v == "" && mayBeEmpty:
		return nil
	case len(v) > maxPathModifier:
		return field.ErrorList{field.TooLong(p, "", maxPathModifier)}
	}
	if msg := pathProblem(v); msg != "" {
		return field.ErrorList{field.Invalid(p, v, msg)}
	}
	return nil
}

// preciseHostname checks an optional Gateway API PreciseHostname: a DNS
// name without wildcard.
func preciseHostname(p *field.Path, h *gatewayv1.PreciseHostname) field.ErrorList {
	if h == nil {
		return nil
	}
	var errs field.ErrorList
	for _, msg := range validation.IsDNS1123Subdomain(string(*h)) {
		errs = append(errs, field.Invalid(p, *h, msg))
	}
	return errs
}
