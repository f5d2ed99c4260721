package authz

import (
	"errors"
	"fmt"
	"reflect"
	"strings"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"
	"cel.dev/cel-go/interpreter"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	exprpb "google.golang.org/genproto/googleapis/api/expr/v1alpha1"

	"verge.dev/verge/internal/proxy/authz/celenv"
)

// A policy's CEL condition (RBAC Policy.condition, or checked_condition)
// runs against celenv's environment. The proxy type-checks what it
// receives itself: a checked_condition is read as its parsed expression and
// checked again, so type information from another build of the control
// plane is never trusted.
//
// Evaluation errors (a missing header or claim read with [], a value of
// the wrong dynamic type, the cost limit) make the condition false, as
// Envoy's RBAC filter does. For an ALLOW or AUDIT policy that means "not
// matched"; for a DENY policy it means "not denied", so a DENY condition
// should guard its lookups (`has(request.auth.claims.sub)`, `"x" in
// request.headers`). Envoy compatibility and one reading of a condition in
// every action were preferred to failing closed for DENY only.

// celCond is a compiled condition.
type celCond struct {
	prg  cel.Program
	http bool // reads a request.* variable
}

// compileCondition compiles a policy's condition; nil when it has none.
func (b *Builder) compileCondition(p *rbacv3.Policy) (*celCond, error) {
	var e *exprpb.Expr
	field := ".condition"
	switch {
	case p.GetCelConfig() != nil:
		return nil, errors.New(".cel_config: unsupported")
	case p.GetCondition() != nil && p.GetCheckedCondition() != nil:
		return nil, errors.New(".checked_condition: only one of condition and checked_condition")
	case p.GetCondition() != nil:
		e = p.GetCondition()
	case p.GetCheckedCondition() != nil:
		e, field = p.GetCheckedCondition().GetExpr(), ".checked_condition.expr"
	default:
		return nil, nil
	}
	ast, err := celenv.FromProto(e)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	c := &celCond{http: celenv.ReadsRequest(ast)}
	if c.http && !b.http {
		return nil, fmt.Errorf("%s: reads request.*, HTTP only, unsupported in a network filter", field)
	}
	if c.prg, err = celenv.Program(ast); err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	return c, nil
}

// eval runs the condition; an error or a non-boolean result is false.
func (c *celCond) eval(ec *evalCtx) bool {
	// The activation copies the request so that neither it nor the
	// decision's state escapes to the heap on decisions without CEL.
	out, _, err := c.prg.Eval(&celActivation{r: *ec.r, claims: ec.claims})
	if err != nil {
		return false
	}
	return out == types.True
}

// celActivation binds celenv's variables to one request lazily: the
// interpreter asks only for the variables the expression reads, so a
// condition over source.principal builds no header map and formats no
// address.
type celActivation struct {
	r Request
	// claims are the verified JWT's claims, nil without one.
	claims map[string]any
}

func (a *celActivation) ResolveName(name string) (any, bool) {
	r := &a.r
	switch name {
	case celenv.SourcePrincipal:
		return r.Principal, true
	case celenv.SourceNamespace:
		ns, _ := spiffeNSSA(r.Principal)
		return ns, true
	case celenv.SourceServiceAccount:
		_, sa := spiffeNSSA(r.Principal)
		return sa, true
	case celenv.SourceIP:
		if !r.SourceIP.IsValid() {
			return "", true
		}
		return r.SourceIP.Unmap().String(), true
	case celenv.DestinationPort:
		return int64(r.DestPort), true
	}
	if !r.HTTP {
		// A connection has no request: reading one is an evaluation
		// error, hence no match.
		return nil, false
	}
	switch name {
	case celenv.RequestMethod:
		return r.Method, true
	case celenv.RequestPath:
		return r.Path, true
	case celenv.RequestHost:
		return r.Host, true
	case celenv.RequestHeaders:
		return &headerMap{r: r}, true
	case celenv.RequestAuthClaims:
		if a.claims == nil {
			// Without a verified token the claims are empty, so that
			// has(request.auth.claims.x) is false rather than an error.
			return map[string]any{}, true
		}
		return a.claims, true
	}
	return nil, false
}

func (*celActivation) Parent() interpreter.Activation { return nil }

// headerMap is request.headers. Looking up one header (the common case:
// `request.headers["x"]`, `"x" in request.headers`) asks Request.Header and
// builds nothing; only iterating, sizing or comparing the whole map builds
// it, once, from Request.VisitHeaders. Keys are lower-case names, values
// the first value; a header with an empty value reads as absent, as it
// does for the RBAC header matchers.
type headerMap struct {
	r    *Request
	full traits.Mapper // built on first use
}

var _ traits.Mapper = (*headerMap)(nil)

// lookup returns the header named by key, a lower-case string.
func (h *headerMap) lookup(key ref.Val) (string, bool) {
	k, ok := key.(types.String)
	if !ok || h.r.Header == nil || hasUpper(string(k)) {
		return "", false
	}
	v := h.r.Header(string(k))
	return v, v != ""
}

func hasUpper(s string) bool {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			return true
		}
	}
	return false
}

func (h *headerMap) Find(key ref.Val) (ref.Val, bool) {
	if v, ok := h.lookup(key); ok {
		return types.String(v), true
	}
	if _, ok := key.(types.String); !ok {
		return h.all().Find(key)
	}
	return nil, false
}

func (h *headerMap) Get(key ref.Val) ref.Val {
	if v, ok := h.Find(key); ok {
		return v
	}
	return types.NewErr("no such key: %v", key)
}

func (h *headerMap) Contains(key ref.Val) ref.Val {
	_, ok := h.Find(key)
	return types.Bool(ok)
}

func (h *headerMap) all() traits.Mapper {
	if h.full != nil {
		return h.full
	}
	m := map[string]string{}
	if h.r.VisitHeaders != nil {
		h.r.VisitHeaders(func(name, value string) bool {
			name = strings.ToLower(name)
			if _, ok := m[name]; !ok && value != "" {
				m[name] = value
			}
			return true
		})
	}
	h.full = types.NewStringStringMap(types.DefaultTypeAdapter, m)
	return h.full
}

func (h *headerMap) ConvertToNative(t reflect.Type) (any, error) { return h.all().ConvertToNative(t) }
func (h *headerMap) ConvertToType(t ref.Type) ref.Val            { return h.all().ConvertToType(t) }
func (h *headerMap) Equal(other ref.Val) ref.Val                 { return h.all().Equal(other) }
func (h *headerMap) Type() ref.Type                              { return types.MapType }
func (h *headerMap) Value() any                                  { return h.all().Value() }
func (h *headerMap) Iterator() traits.Iterator                   { return h.all().Iterator() }
func (h *headerMap) Size() ref.Val                               { return h.all().Size() }

// spiffeNSSA reads NS and SA from spiffe://TD/ns/NS/sa/SA; both are empty
// for any other shape.
func spiffeNSSA(id string) (ns, sa string) {
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return "", ""
	}
	if _, rest, ok = strings.Cut(rest, "/"); !ok {
		return "", ""
	}
	if rest, ok = strings.CutPrefix(rest, "ns/"); !ok {
		return "", ""
	}
	ns, rest, ok = strings.Cut(rest, "/")
	if !ok {
		return "", ""
	}
	if sa, ok = strings.CutPrefix(rest, "sa/"); !ok || ns == "" || sa == "" || strings.Contains(sa, "/") {
		return "", ""
	}
	return ns, sa
}
