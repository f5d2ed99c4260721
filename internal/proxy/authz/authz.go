// Package authz is the proxy's authorization engine: it compiles the
// authorization filters a listener carries (Envoy RBAC and JWT
// authentication, as the control plane's translator writes them from
// AuthorizationPolicy objects) into an Engine that decides one request or
// connection, and records decisions (metrics and the audit log). Policies are
// enforced at the destination's proxy, so only inbound listeners carry an
// Engine. Recognising the filters in a listener and NACKing the rest belongs
// to the xDS client; answering 403 or closing a connection to the data path.
//
// Semantics are Istio's (and Envoy's for the same filters): a request with a
// JWT that does not verify is refused; then any matching DENY policy refuses;
// then, if the listener has an ALLOW filter, the request must match one of
// its policies; LOG (AUDIT) policies only add their names to the decision.
package authz

import (
	"net/netip"
	"strings"
)

// Action is what a matched policy does.
type Action int

const (
	ActionAllow Action = iota + 1
	ActionDeny
	ActionAudit
)

func (a Action) String() string {
	switch a {
	case ActionAllow:
		return "ALLOW"
	case ActionDeny:
		return "DENY"
	case ActionAudit:
		return "AUDIT"
	}
	return "UNKNOWN"
}

// Request is what one decision reads. The data path fills what it knows; a
// TCP connection has HTTP false and no HTTP fields.
type Request struct {
	// Principal is the peer's SPIFFE ID from its mTLS certificate
	// ("spiffe://verge.local/ns/default/sa/web"), empty for plaintext.
	Principal string
	SourceIP  netip.Addr
	// DestPort is the port the connection reached (the listener's).
	DestPort uint32
	// HTTP is true for an HTTP or gRPC request.
	HTTP bool
	// Method, Path (without the query) and Host (authority) of the request.
	Method string
	Path   string
	Host   string
	// Header returns the first value of a header by lower-case name, ""
	// when absent. It must be set when HTTP is true. The engine reads
	// headers only as its rules need them (the bearer token for JWT rules,
	// named headers, every header only when a CEL condition asks for
	// request.headers), so the data path builds no map per request.
	Header func(name string) string
	// VisitHeaders calls fn for every header (lower-case name) until fn
	// returns false; used only by CEL conditions over request.headers.
	VisitHeaders func(fn func(name, value string) bool)
}

// header returns a header, or the pseudo-header Envoy's matchers see for
// the request's method, path and authority.
func (r *Request) header(name string) string {
	switch name {
	case ":method":
		return r.Method
	case ":path":
		return r.Path
	case ":authority", "host":
		return r.Host
	}
	if r.Header == nil {
		return ""
	}
	return r.Header(name)
}

// Decision is the outcome for one request or connection.
type Decision struct {
	// Allowed is false when the request must be refused (HTTP 403, gRPC
	// PERMISSION_DENIED, TCP close).
	Allowed bool
	// Policy and Rule name what decided: the DENY or ALLOW policy that
	// matched, empty when no policy matched. Rule is the rule's name
	// ("rules[2]" when unnamed).
	Policy string
	Rule   string
	// Audited lists the AUDIT policies that matched ("policy/rule").
	Audited []string
	// Reason is a short human-readable cause ("denied by policy x rule y",
	// "no ALLOW policy matched", "JWT: signature invalid").
	Reason string
}

// Engine is a listener's compiled policy set. It is immutable and safe for
// concurrent use; a nil *Engine allows everything. Build one with a Builder.
type Engine struct {
	jwt   *jwtAuth // nil without a JWT filter
	audit []*policy
	deny  []*policy
	allow []*policy
	// hasAllow is true when an ALLOW filter exists, even with no policies:
	// then a request must match one of them.
	hasAllow  bool
	needsHTTP bool
}

// policy is one RBAC policy: a rule of an AuthorizationPolicy.
type policy struct {
	name         string // the RBAC key, "ns/policy/rule"
	policy, rule string
	perm, prin   node
	// cond is the CEL condition, nil without one; it runs only when perm
	// and prin matched.
	cond *celCond
	// reason is precomputed so that a decision allocates nothing.
	reason string
}

func newPolicy(name string, action Action, perm, prin node) *policy {
	p := &policy{name: name, policy: name, perm: perm, prin: prin}
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		p.policy, p.rule = name[:i], name[i+1:]
	}
	switch action {
	case ActionDeny:
		p.reason = "denied by policy " + p.policy + " rule " + p.rule
	case ActionAllow:
		p.reason = "allowed by policy " + p.policy + " rule " + p.rule
	}
	return p
}

func (p *policy) matches(c *evalCtx) bool {
	return p.perm.match(c) && p.prin.match(c) && (p.cond == nil || p.cond.eval(c))
}

// evalCtx is one decision's state.
type evalCtx struct {
	r *Request
	// claims are the verified JWT's claims, nil without one.
	claims map[string]any
}

// Reasons of decisions that no policy made.
const (
	reasonNoAllow = "no ALLOW policy matched"
	reasonAllowed = "no DENY policy matched"
)

// Check decides r. A nil Engine allows. It does not modify r, allocates
// only for AUDIT matches and JWT verification (cached per token), and may
// block only while a remote key set is fetched for the first time (bounded
// by the fetch timeout).
func (e *Engine) Check(r *Request) Decision {
	if e == nil {
		return Decision{Allowed: true}
	}
	c := evalCtx{r: r}
	if e.jwt != nil && r.HTTP {
		claims, err := e.jwt.verify(r)
		if err != nil {
			return Decision{Reason: "JWT: " + err.Error()}
		}
		c.claims = claims
	}
	var audited []string
	for _, p := range e.audit {
		if p.matches(&c) {
			audited = append(audited, p.name)
		}
	}
	for _, p := range e.deny {
		if p.matches(&c) {
			return Decision{Policy: p.policy, Rule: p.rule, Audited: audited, Reason: p.reason}
		}
	}
	if !e.hasAllow {
		return Decision{Allowed: true, Audited: audited, Reason: reasonAllowed}
	}
	for _, p := range e.allow {
		if p.matches(&c) {
			return Decision{Allowed: true, Policy: p.policy, Rule: p.rule, Audited: audited, Reason: p.reason}
		}
	}
	return Decision{Audited: audited, Reason: reasonNoAllow}
}

// NeedsHTTP reports whether any rule reads HTTP fields; a TCP listener's
// engine never does.
func (e *Engine) NeedsHTTP() bool { return e != nil && e.needsHTTP }
