package authz

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// JWTFilterName is the Envoy filter whose dynamic metadata holds verified JWT
// payloads; RBAC metadata matchers over claims name it.
const JWTFilterName = "envoy.filters.http.jwt_authn"

// maxDepth bounds how deeply permissions and principals nest, so that a
// hostile configuration cannot exhaust the stack.
const maxDepth = 32

// Builder compiles one listener's authorization filters, in the order they
// appear, into an Engine. It is not safe for concurrent use.
//
// Supported subset (anything else is an error naming the field): RBAC with
// action ALLOW, DENY or LOG (AUDIT) and policies whose permissions are any,
// and_rules, or_rules, not_rule, destination_port, destination_port_range,
// url_path and header, and whose principals are any, and_ids, or_ids,
// not_id, authenticated, source_ip, direct_remote_ip, remote_ip and metadata
// over the JWT filter's payload; string matchers exact, prefix, suffix,
// contains and safe_regex; and a CEL condition (condition or
// checked_condition, no cel_config) over celenv's variables (see cel.go). A
// network RBAC (http false) refuses HTTP-only matchers and conditions
// reading request.*. See AddJWT for JWT authentication.
type Builder struct {
	http bool
	eng  Engine
	seen bool // a filter was added
	rbac bool // an RBAC filter was added
}

// NewBuilder starts an engine for an HTTP listener (http true) or a TCP one.
func NewBuilder(http bool) *Builder { return &Builder{http: http} }

// Engine returns the compiled engine; nil when nothing was added.
func (b *Builder) Engine() *Engine {
	if !b.seen {
		return nil
	}
	e := b.eng
	return &e
}

// AddRBAC adds one RBAC filter's rules. Errors start with a field path
// relative to the RBAC message (".policies[\"x\"].permissions[0]: ...").
func (b *Builder) AddRBAC(r *rbacv3.RBAC) error {
	var action Action
	switch r.GetAction() {
	case rbacv3.RBAC_ALLOW:
		action = ActionAllow
	case rbacv3.RBAC_DENY:
		action = ActionDeny
	case rbacv3.RBAC_LOG:
		action = ActionAudit
	default:
		return fmt.Errorf(".action: unsupported action %s", r.GetAction())
	}
	if r.GetAuditLoggingOptions() != nil {
		return errors.New(".audit_logging_options: unsupported (the proxy writes its own audit log)")
	}
	names := make([]string, 0, len(r.GetPolicies()))
	for name := range r.GetPolicies() {
		names = append(names, name)
	}
	// Envoy evaluates the map in no defined order; sorting makes the policy
	// a decision names stable.
	slices.Sort(names)
	var pols []*policy
	for _, name := range names {
		p := r.GetPolicies()[name]
		path := fmt.Sprintf(".policies[%q]", name)
		perm, err := b.permissions(p.GetPermissions())
		if err != nil {
			return fmt.Errorf("%s.permissions%w", path, err)
		}
		prin, err := b.principals(p.GetPrincipals())
		if err != nil {
			return fmt.Errorf("%s.principals%w", path, err)
		}
		cond, err := b.compileCondition(p)
		if err != nil {
			return fmt.Errorf("%s%w", path, err)
		}
		if perm.isHTTP() || prin.isHTTP() || (cond != nil && cond.http) {
			b.eng.needsHTTP = true
		}
		pol := newPolicy(name, action, perm, prin)
		pol.cond = cond
		pols = append(pols, pol)
	}
	b.seen, b.rbac = true, true
	switch action {
	case ActionAllow:
		b.eng.hasAllow = true
		b.eng.allow = append(b.eng.allow, pols...)
	case ActionDeny:
		b.eng.deny = append(b.eng.deny, pols...)
	case ActionAudit:
		b.eng.audit = append(b.eng.audit, pols...)
	}
	return nil
}

// permissions compiles a policy's permission list: any of them.
func (b *Builder) permissions(ps []*rbacv3.Permission) (node, error) {
	if len(ps) == 0 {
		return node{}, errors.New(": at least one permission is required")
	}
	return b.permSet(ps, nodeOr, 0)
}

func (b *Builder) permSet(ps []*rbacv3.Permission, kind nodeKind, depth int) (node, error) {
	return compileSet(ps, kind, depth, b.permission)
}

// compileSet compiles the members of an and/or list with one, collapsing a
// single member to itself and an empty list to emptySet(kind).
func compileSet[T any](items []T, kind nodeKind, depth int, one func(T, int) (node, error)) (node, error) {
	n := node{kind: kind, kids: make([]node, 0, len(items))}
	for i, it := range items {
		k, err := one(it, depth+1)
		if err != nil {
			return node{}, fmt.Errorf("[%d]%w", i, err)
		}
		n.kids = append(n.kids, k)
	}
	if len(n.kids) == 1 {
		return n.kids[0], nil
	}
	if len(n.kids) == 0 {
		return emptySet(kind), nil
	}
	return n, nil
}

func (b *Builder) permission(p *rbacv3.Permission, depth int) (node, error) {
	if depth > maxDepth {
		return node{}, fmt.Errorf(": nested deeper than %d", maxDepth)
	}
	switch r := p.GetRule().(type) {
	case *rbacv3.Permission_Any:
		if !r.Any {
			return node{kind: nodeNone}, nil
		}
		return node{kind: nodeAny}, nil
	case *rbacv3.Permission_AndRules:
		n, err := b.permSet(r.AndRules.GetRules(), nodeAnd, depth)
		return n, prefixErr(".and_rules.rules", err)
	case *rbacv3.Permission_OrRules:
		n, err := b.permSet(r.OrRules.GetRules(), nodeOr, depth)
		return n, prefixErr(".or_rules.rules", err)
	case *rbacv3.Permission_NotRule:
		k, err := b.permission(r.NotRule, depth+1)
		if err != nil {
			return node{}, prefixErr(".not_rule", err)
		}
		return node{kind: nodeNot, kids: []node{k}}, nil
	case *rbacv3.Permission_DestinationPort:
		return node{kind: nodePort, port: r.DestinationPort}, nil
	case *rbacv3.Permission_DestinationPortRange:
		s, e := r.DestinationPortRange.GetStart(), r.DestinationPortRange.GetEnd()
		if s < 0 || e < s {
			return node{}, fmt.Errorf(".destination_port_range: bad range [%d, %d)", s, e)
		}
		return node{kind: nodePortRange, port: uint32(s), portEnd: uint32(e)}, nil
	case *rbacv3.Permission_UrlPath:
		if !b.http {
			return node{}, errors.New(".url_path: HTTP only, unsupported in a network filter")
		}
		sm := r.UrlPath.GetPath()
		if sm == nil {
			return node{}, errors.New(".url_path.path: required")
		}
		m, err := compileString(sm)
		if err != nil {
			return node{}, prefixErr(".url_path.path", err)
		}
		return node{kind: nodePath, str: m}, nil
	case *rbacv3.Permission_Header:
		if !b.http {
			return node{}, errors.New(".header: HTTP only, unsupported in a network filter")
		}
		n, err := compileHeader(r.Header)
		return n, prefixErr(".header", err)
	case nil:
		return node{}, errors.New(".rule: required")
	default:
		return node{}, fmt.Errorf(": unsupported permission %T", r)
	}
}

// principals compiles a policy's principal list: any of them.
func (b *Builder) principals(ps []*rbacv3.Principal) (node, error) {
	if len(ps) == 0 {
		return node{}, errors.New(": at least one principal is required")
	}
	return b.prinSet(ps, nodeOr, 0)
}

func (b *Builder) prinSet(ps []*rbacv3.Principal, kind nodeKind, depth int) (node, error) {
	return compileSet(ps, kind, depth, b.principal)
}

func (b *Builder) principal(p *rbacv3.Principal, depth int) (node, error) {
	if depth > maxDepth {
		return node{}, fmt.Errorf(": nested deeper than %d", maxDepth)
	}
	switch id := p.GetIdentifier().(type) {
	case *rbacv3.Principal_Any:
		if !id.Any {
			return node{kind: nodeNone}, nil
		}
		return node{kind: nodeAny}, nil
	case *rbacv3.Principal_AndIds:
		n, err := b.prinSet(id.AndIds.GetIds(), nodeAnd, depth)
		return n, prefixErr(".and_ids.ids", err)
	case *rbacv3.Principal_OrIds:
		n, err := b.prinSet(id.OrIds.GetIds(), nodeOr, depth)
		return n, prefixErr(".or_ids.ids", err)
	case *rbacv3.Principal_NotId:
		k, err := b.principal(id.NotId, depth+1)
		if err != nil {
			return node{}, prefixErr(".not_id", err)
		}
		return node{kind: nodeNot, kids: []node{k}}, nil
	case *rbacv3.Principal_Authenticated_:
		sm := id.Authenticated.GetPrincipalName()
		if sm == nil {
			return node{kind: nodePrincipal}, nil
		}
		m, err := compileString(sm)
		if err != nil {
			return node{}, prefixErr(".authenticated.principal_name", err)
		}
		return node{kind: nodePrincipal, str: m}, nil
	case *rbacv3.Principal_SourceIp:
		n, err := cidr(id.SourceIp.GetAddressPrefix(), id.SourceIp.GetPrefixLen().GetValue())
		return n, prefixErr(".source_ip", err)
	case *rbacv3.Principal_DirectRemoteIp:
		n, err := cidr(id.DirectRemoteIp.GetAddressPrefix(), id.DirectRemoteIp.GetPrefixLen().GetValue())
		return n, prefixErr(".direct_remote_ip", err)
	case *rbacv3.Principal_RemoteIp:
		n, err := cidr(id.RemoteIp.GetAddressPrefix(), id.RemoteIp.GetPrefixLen().GetValue())
		return n, prefixErr(".remote_ip", err)
	case *rbacv3.Principal_Metadata:
		if !b.http {
			return node{}, errors.New(".metadata: HTTP only, unsupported in a network filter")
		}
		n, err := compileClaim(id.Metadata)
		return n, prefixErr(".metadata", err)
	case *rbacv3.Principal_Header:
		if !b.http {
			return node{}, errors.New(".header: HTTP only, unsupported in a network filter")
		}
		n, err := compileHeader(id.Header)
		return n, prefixErr(".header", err)
	case nil:
		return node{}, errors.New(".identifier: required")
	default:
		return node{}, fmt.Errorf(": unsupported principal %T", id)
	}
}

// emptySet is Envoy's reading of an empty set: and matches, or does not.
func emptySet(kind nodeKind) node {
	if kind == nodeAnd {
		return node{kind: nodeAny}
	}
	return node{kind: nodeNone}
}

func cidr(addr string, bits uint32) (node, error) {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return node{}, fmt.Errorf(".address_prefix: %w", err)
	}
	p, err := a.Unmap().Prefix(int(bits))
	if err != nil {
		return node{}, fmt.Errorf(".prefix_len: %w", err)
	}
	return node{kind: nodeSourceIP, prefix: p}, nil
}

func compileHeader(h *routev3.HeaderMatcher) (node, error) {
	name := strings.ToLower(h.GetName())
	if name == "" {
		return node{}, errors.New(".name: required")
	}
	n := node{name: name, invert: h.GetInvertMatch()}
	if h.GetTreatMissingHeaderAsEmpty() {
		return node{}, errors.New(".treat_missing_header_as_empty: unsupported")
	}
	switch m := h.GetHeaderMatchSpecifier().(type) {
	case *routev3.HeaderMatcher_StringMatch:
		sm, err := compileString(m.StringMatch)
		if err != nil {
			return node{}, prefixErr(".string_match", err)
		}
		n.kind, n.str = nodeHeader, sm
	case *routev3.HeaderMatcher_PresentMatch:
		n.kind = nodeHeaderPresent
		if !m.PresentMatch {
			n.invert = !n.invert
		}
	case *routev3.HeaderMatcher_ExactMatch:
		n.kind, n.str = nodeHeader, strMatch{kind: strExact, value: m.ExactMatch}
	case *routev3.HeaderMatcher_PrefixMatch:
		n.kind, n.str = nodeHeader, strMatch{kind: strPrefix, value: m.PrefixMatch}
	case *routev3.HeaderMatcher_SuffixMatch:
		n.kind, n.str = nodeHeader, strMatch{kind: strSuffix, value: m.SuffixMatch}
	default:
		return node{}, fmt.Errorf(".header_match_specifier: unsupported %T", m)
	}
	return n, nil
}

// compileClaim accepts metadata matchers over the JWT filter's payload:
// filter envoy.filters.http.jwt_authn, path [payload key, claim], and a
// string_match, list_match.one_of.string_match or present_match value.
// The payload key is not checked against the JWT filter's: every verified
// payload is the request's one set of claims.
func compileClaim(m *matcherv3.MetadataMatcher) (node, error) {
	if m.GetFilter() != JWTFilterName {
		return node{}, fmt.Errorf(".filter: only %s is supported, not %q", JWTFilterName, m.GetFilter())
	}
	path := m.GetPath()
	if len(path) != 2 || path[0].GetKey() == "" || path[1].GetKey() == "" {
		return node{}, errors.New(".path: want [payload key, claim]")
	}
	n := node{name: path[1].GetKey()}
	v := m.GetValue()
	switch vm := v.GetMatchPattern().(type) {
	case *matcherv3.ValueMatcher_StringMatch:
		sm, err := compileString(vm.StringMatch)
		if err != nil {
			return node{}, prefixErr(".value.string_match", err)
		}
		n.kind, n.str = nodeClaim, sm
	case *matcherv3.ValueMatcher_ListMatch:
		sm, err := compileString(vm.ListMatch.GetOneOf().GetStringMatch())
		if err != nil {
			return node{}, prefixErr(".value.list_match.one_of.string_match", err)
		}
		n.kind, n.str, n.list = nodeClaim, sm, true
	case *matcherv3.ValueMatcher_PresentMatch:
		n.kind = nodeClaimPresent
	default:
		return node{}, fmt.Errorf(".value: unsupported %T", vm)
	}
	if m.GetInvert() {
		return node{kind: nodeNot, kids: []node{n}}, nil
	}
	return n, nil
}

func compileString(sm *matcherv3.StringMatcher) (strMatch, error) {
	if sm == nil {
		return strMatch{}, errors.New(": required")
	}
	m := strMatch{ignoreCase: sm.GetIgnoreCase()}
	switch p := sm.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		m.kind, m.value = strExact, p.Exact
	case *matcherv3.StringMatcher_Prefix:
		m.kind, m.value = strPrefix, p.Prefix
	case *matcherv3.StringMatcher_Suffix:
		m.kind, m.value = strSuffix, p.Suffix
	case *matcherv3.StringMatcher_Contains:
		m.kind, m.value = strContains, p.Contains
	case *matcherv3.StringMatcher_SafeRegex:
		if m.ignoreCase {
			return strMatch{}, errors.New(".ignore_case: unsupported with safe_regex")
		}
		// Envoy's regexes must match the whole string.
		re, err := regexp.Compile(`^(?:` + p.SafeRegex.GetRegex() + `)$`)
		if err != nil {
			return strMatch{}, fmt.Errorf(".safe_regex.regex: %w", err)
		}
		m.kind, m.re = strRegex, re
	default:
		return strMatch{}, fmt.Errorf(".match_pattern: unsupported %T", p)
	}
	return m, nil
}

func prefixErr(path string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s%w", path, err)
}
