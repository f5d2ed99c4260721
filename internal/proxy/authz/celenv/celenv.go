// Package celenv owns the CEL environment of authorization conditions: the
// variables an AuthorizationPolicy's `cel` expression may read, their types,
// the limits on an expression, and the conversions between its source, the
// protobuf form an Envoy RBAC policy carries and a runnable program.
// Validation (api/v1alpha1), translation (internal/xds/translate) and the
// proxy's engine (internal/proxy/authz) all compile against this one
// environment, so an expression the API accepts is one the proxy can run.
// Binding variables to a request is the engine's business, not this
// package's. It imports neither the API nor anything Kubernetes: the proxy
// links it.
package celenv

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/cost"
	"cel.dev/cel-go/common/types"
	exprpb "google.golang.org/genproto/googleapis/api/expr/v1alpha1"
	"google.golang.org/protobuf/proto"
)

// The variables, by their dotted names. CEL resolves a qualified name such as
// source.principal to a declared variable of that name, which keeps each
// field statically typed (a map-typed `source` would make every field dyn and
// hide a non-boolean expression until it runs).
const (
	SourcePrincipal      = "source.principal"      // string: SPIFFE ID, "" for plaintext
	SourceNamespace      = "source.namespace"      // string: from the SPIFFE ID
	SourceServiceAccount = "source.serviceAccount" // string: from the SPIFFE ID
	SourceIP             = "source.ip"             // string: the peer's address
	DestinationPort      = "destination.port"      // int: the port the connection reached
	RequestMethod        = "request.method"        // string
	RequestPath          = "request.path"          // string, without the query
	RequestHost          = "request.host"          // string: the authority
	RequestHeaders       = "request.headers"       // map(string, string), lower-case names
	RequestAuthClaims    = "request.auth.claims"   // map(string, dyn): verified JWT claims
)

// requestPrefix starts every variable only an HTTP request has.
const requestPrefix = "request."

// MaxLength bounds an expression's source, so a policy cannot make the
// proxy parse megabytes.
const MaxLength = 4096

// CostLimit bounds an expression's estimated worst-case cost, in CEL's
// cost units (about one per operation, one per element a comprehension
// visits, one per ten bytes a string function reads). Source length alone
// does not bound run time: a few nested comprehensions over literal lists
// multiply. The estimate assumes at most maxEntries headers or claims and
// strings of at most maxStringBytes; an expression whose worst case is over
// the limit is refused when compiled, so that evaluation needs no run-time
// cost tracking (which doubles its cost). Ordinary conditions cost tens.
const CostLimit = 1_000_000

// The sizes the cost estimate assumes: Envoy's default max_headers_count,
// and a generous header value or claim.
const (
	maxEntries     = 100
	maxStringBytes = 8 << 10
)

var (
	envOnce sync.Once
	env     *cel.Env
	envErr  error
)

// Env returns the shared environment. It is safe for concurrent use.
func Env() (*cel.Env, error) {
	envOnce.Do(func() {
		env, envErr = cel.NewEnv(
			cel.Variable(SourcePrincipal, cel.StringType),
			cel.Variable(SourceNamespace, cel.StringType),
			cel.Variable(SourceServiceAccount, cel.StringType),
			cel.Variable(SourceIP, cel.StringType),
			cel.Variable(DestinationPort, cel.IntType),
			cel.Variable(RequestMethod, cel.StringType),
			cel.Variable(RequestPath, cel.StringType),
			cel.Variable(RequestHost, cel.StringType),
			cel.Variable(RequestHeaders, cel.MapType(cel.StringType, cel.StringType)),
			cel.Variable(RequestAuthClaims, cel.MapType(cel.StringType, cel.DynType)),
		)
	})
	return env, envErr
}

// Compile parses and type-checks expr and requires a boolean result. The
// error is the checker's message (with line and column) or says why the
// expression is refused.
func Compile(expr string) (*cel.Ast, error) {
	_, checked, err := compile(expr)
	return checked, err
}

// Condition compiles expr like Compile and also returns it in the form
// Envoy's RBAC Policy.condition takes (google.api.expr.v1alpha1.Expr, which
// cel-go's conversions use too). That is the parsed expression, as Envoy
// reads it: type information is recomputed by FromProto against the
// receiver's environment, so a proxy never trusts a checker it did not
// run.
func Condition(expr string) (*exprpb.Expr, *cel.Ast, error) {
	return compile(expr)
}

// compile returns the parsed expression as a proto, taken before the
// checker rewrites qualified names in the tree, and the checked ast.
func compile(expr string) (*exprpb.Expr, *cel.Ast, error) {
	if strings.TrimSpace(expr) == "" {
		return nil, nil, errors.New("empty expression")
	}
	if len(expr) > MaxLength {
		return nil, nil, fmt.Errorf("longer than %d bytes", MaxLength)
	}
	e, err := Env()
	if err != nil {
		return nil, nil, err
	}
	parsed, iss := e.Parse(expr)
	if iss.Err() != nil {
		return nil, nil, errors.New(strings.TrimSpace(iss.Err().Error()))
	}
	pe, err := cel.AstToParsedExpr(parsed)
	if err != nil {
		return nil, nil, err
	}
	// A deep copy: checking rewrites the parsed tree in place.
	pexpr := proto.CloneOf(pe.GetExpr())
	checked, iss := e.Check(parsed)
	if iss.Err() != nil {
		return nil, nil, errors.New(strings.TrimSpace(iss.Err().Error()))
	}
	if checked, err = requireBool(checked); err != nil {
		return nil, nil, err
	}
	return pexpr, checked, nil
}

// FromProto type-checks an expression received in an RBAC policy and
// requires a boolean result. It accepts any message, including hostile
// ones: depth is bounded by cel-go's loader, and a malformed tree is a
// checker error.
func FromProto(e *exprpb.Expr) (*cel.Ast, error) {
	if e.GetExprKind() == nil {
		return nil, errors.New("empty expression")
	}
	ast := cel.ParsedExprToAst(&exprpb.ParsedExpr{Expr: e})
	return Check(ast)
}

// Check type-checks an already parsed expression and requires a boolean
// result.
func Check(parsed *cel.Ast) (*cel.Ast, error) {
	e, err := Env()
	if err != nil {
		return nil, err
	}
	ast, iss := e.Check(parsed)
	if iss.Err() != nil {
		// A received expression has no source, so the issues' positions
		// mean nothing: keep the messages.
		var msgs []string
		for _, ie := range iss.Errors() {
			msgs = append(msgs, ie.Message)
		}
		return nil, errors.New(strings.Join(msgs, "; "))
	}
	return requireBool(ast)
}

// Program plans a checked expression for evaluation, with constant
// folding. The program is safe for concurrent use.
func Program(checked *cel.Ast) (cel.Program, error) {
	e, err := Env()
	if err != nil {
		return nil, err
	}
	return e.Program(checked, cel.EvalOptions(cel.OptOptimize))
}

// requireBool checks a checked expression's type and estimated cost.
func requireBool(ast *cel.Ast) (*cel.Ast, error) {
	if t := ast.OutputType(); !t.IsExactType(cel.BoolType) {
		return nil, fmt.Errorf("must evaluate to bool, not %s", t)
	}
	e, err := Env()
	if err != nil {
		return nil, err
	}
	est, err := e.EstimateCost(ast, sizes{})
	if err != nil {
		return nil, fmt.Errorf("cost estimate: %w", err)
	}
	if est.Max > CostLimit {
		return nil, fmt.Errorf("estimated worst-case cost %d exceeds the limit %d", est.Max, CostLimit)
	}
	return ast, nil
}

// sizes bounds the variables' sizes for the cost estimate.
type sizes struct{}

func (sizes) EstimateSize(n cost.AstNode) *cost.SizeEstimate {
	if n.Path() == nil {
		return nil
	}
	switch n.Type().Kind() {
	case types.StringKind, types.BytesKind, types.DynKind:
		// A claim (dyn) may be a string or a list: assume the larger.
		return &cost.SizeEstimate{Min: 0, Max: maxStringBytes}
	case types.ListKind, types.MapKind:
		return &cost.SizeEstimate{Min: 0, Max: maxEntries}
	}
	return nil
}

func (sizes) EstimateCallCost(string, string, *cost.AstNode, []cost.AstNode) *cost.CallEstimate {
	return nil
}

// Reads reports whether a checked expression reads the named variable.
func Reads(checked *cel.Ast, name string) bool {
	for _, ref := range checked.NativeRep().ReferenceMap() {
		if ref.Name == name {
			return true
		}
	}
	return false
}

// ReadsRequest reports whether a checked expression reads any request.*
// variable, which a TCP connection does not have.
func ReadsRequest(checked *cel.Ast) bool {
	for _, ref := range checked.NativeRep().ReferenceMap() {
		if strings.HasPrefix(ref.Name, requestPrefix) {
			return true
		}
	}
	return false
}
