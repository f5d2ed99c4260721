package authz

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	exprpb "google.golang.org/genproto/googleapis/api/expr/v1alpha1"
	"google.golang.org/protobuf/encoding/protojson"

	"verge.dev/verge/internal/proxy/authz/celenv"
)

// condJSON is expr compiled and written as an RBAC policy's condition.
func condJSON(t testing.TB, expr string) string {
	t.Helper()
	e, _, err := celenv.Condition(expr)
	if err != nil {
		t.Fatalf("Condition(%q): %v", expr, err)
	}
	b, err := protojson.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// celPolicy is an RBAC filter of action with one policy "ns/p/r" matching
// principals prin (JSON) and the condition expr.
func celPolicy(t testing.TB, action, prin, expr string) string {
	return `{"action":"` + action + `","policies":{"ns/p/r":{"permissions":[{"any":true}],"principals":[` + prin +
		`],"condition":` + condJSON(t, expr) + `}}}`
}

const anyPrin = `{"any":true}`

func TestCELConditions(t *testing.T) {
	iss := newIssuer(t, "https://issuer.test", "k1")
	file := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(file, iss.jwks(t), 0o600); err != nil {
		t.Fatal(err)
	}
	jwtCfg := `{"providers":{` + jwtProviderJSON("a", iss.name, `"localJwks":{"filename":"`+file+`"}`) + `},` + jwtRules + `}`
	admins := iss.token(t, "shop", time.Now().Add(time.Hour), map[string]any{"groups": []string{"dev", "admin"}, "level": 3})

	tests := []struct {
		name    string
		expr    string
		req     *Request
		matches bool
	}{
		{"principal", `source.principal == "` + web + `"`, httpReq(web, "GET", "/", nil), true},
		{"principal differs", `source.principal == "` + web + `"`, httpReq(admin, "GET", "/", nil), false},
		{"namespace and service account", `source.namespace == "shop" && source.serviceAccount == "web"`, httpReq(web, "GET", "/", nil), true},
		{"plaintext has no namespace", `source.namespace == ""`, httpReq("", "GET", "/", nil), true},
		{"source ip", `source.ip.startsWith("127.")`, httpReq(web, "GET", "/", nil), true},
		{"destination port", `destination.port == 15080`, httpReq(web, "GET", "/", nil), true},
		{"method and path", `request.method == "GET" && request.path.startsWith("/api/")`, httpReq(web, "GET", "/api/x", nil), true},
		{"host", `request.host.endsWith(".mesh")`, httpReq(web, "GET", "/", nil), true},
		{"header", `request.headers["x-tenant"] == "acme"`, httpReq(web, "GET", "/", map[string]string{"x-tenant": "acme"}), true},
		{"header differs", `request.headers["x-tenant"] == "acme"`, httpReq(web, "GET", "/", map[string]string{"x-tenant": "other"}), false},
		{"missing header is an error: no match", `request.headers["x-tenant"] == "acme"`, httpReq(web, "GET", "/", nil), false},
		{"guarded missing header", `!("x-tenant" in request.headers)`, httpReq(web, "GET", "/", nil), true},
		{"list claim", `"admin" in request.auth.claims.groups`, httpReq(web, "GET", "/", map[string]string{"authorization": "Bearer " + admins}), true},
		{"number claim", `request.auth.claims.level == 3.0`, httpReq(web, "GET", "/", map[string]string{"authorization": "Bearer " + admins}), true},
		{"subject claim", `request.auth.claims.sub == "user-1"`, httpReq(web, "GET", "/", map[string]string{"authorization": "Bearer " + admins}), true},
		{"no token: has is false", `!has(request.auth.claims.sub)`, httpReq(web, "GET", "/", nil), true},
		{"no token: lookup is an error", `request.auth.claims.sub == "user-1"`, httpReq(web, "GET", "/", nil), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, req := range []*Request{tt.req} {
				setHeaders(req)
			}
			allow := build(t, true, jwtConfig(t, jwtCfg), celPolicy(t, "ALLOW", anyPrin, tt.expr))
			if got := allow.Check(tt.req).Allowed; got != tt.matches {
				t.Errorf("ALLOW: Allowed = %v, want %v", got, tt.matches)
			}
			// An evaluation error in a DENY condition is no match
			// either: the request is not denied (Envoy's reading).
			deny := build(t, true, jwtConfig(t, jwtCfg), celPolicy(t, "DENY", anyPrin, tt.expr))
			if got := deny.Check(tt.req).Allowed; got == tt.matches {
				t.Errorf("DENY: Allowed = %v, want %v", got, !tt.matches)
			}
		})
	}
}

// setHeaders gives req a VisitHeaders over what its Header returns for the
// names tests use.
func setHeaders(req *Request) {
	names := []string{"x-tenant", "authorization"}
	req.VisitHeaders = func(fn func(name, value string) bool) {
		for _, n := range names {
			if v := req.Header(n); v != "" && !fn(n, v) {
				return
			}
		}
	}
}

func TestCELLazy(t *testing.T) {
	visits := 0
	req := httpReq(web, "GET", "/", map[string]string{"x-tenant": "acme"})
	req.VisitHeaders = func(fn func(name, value string) bool) {
		visits++
		fn("x-tenant", "acme")
	}
	// Other parts first: a principal that does not match means the
	// condition never runs.
	e := build(t, true, nil, celPolicy(t, "ALLOW", `{"authenticated":{"principalName":{"exact":"`+admin+`"}}}`, `request.headers["x-tenant"] == "acme"`))
	if e.Check(req).Allowed || visits != 0 {
		t.Errorf("condition ran (%d header visits) although the principal did not match", visits)
	}
	// A condition not reading request.headers builds no map.
	e = build(t, true, nil, celPolicy(t, "ALLOW", anyPrin, `source.principal != ""`))
	if !e.Check(req).Allowed || visits != 0 {
		t.Errorf("headers visited %d times for a condition not reading them", visits)
	}
	e = build(t, true, nil, celPolicy(t, "ALLOW", anyPrin, `request.headers["x-tenant"] == "acme" && request.headers.size() == 1`))
	if !e.Check(req).Allowed || visits != 1 {
		t.Errorf("headers visited %d times, want once", visits)
	}
}

func TestCELTCP(t *testing.T) {
	e := build(t, false, nil, celPolicy(t, "ALLOW", anyPrin, `source.namespace == "shop" && destination.port == 15432`))
	if e.NeedsHTTP() {
		t.Error("NeedsHTTP = true for a condition over source and destination")
	}
	conn := func(principal string) *Request {
		return &Request{Principal: principal, DestPort: 15432, SourceIP: netip.MustParseAddr("127.0.0.1")}
	}
	if !e.Check(conn(web)).Allowed {
		t.Error("shop connection refused")
	}
	if e.Check(conn(admin)).Allowed {
		t.Error("ops connection allowed")
	}
	// An HTTP engine with a condition over the request needs HTTP.
	if e := build(t, true, nil, celPolicy(t, "DENY", anyPrin, `request.method == "GET"`)); !e.NeedsHTTP() {
		t.Error("NeedsHTTP = false for a condition reading request.method")
	}
}

func TestCELCheckedCondition(t *testing.T) {
	c := condJSON(t, `source.namespace == "shop"`)
	e := build(t, true, nil, `{"action":"ALLOW","policies":{"ns/p/r":{"permissions":[{"any":true}],"principals":[{"any":true}],
		"checkedCondition":{"expr":`+c+`}}}}`)
	if !e.Check(httpReq(web, "GET", "/", nil)).Allowed || e.Check(httpReq(admin, "GET", "/", nil)).Allowed {
		t.Error("checked_condition not applied")
	}
}

func TestCELBuildErrors(t *testing.T) {
	pol := func(extra string) string {
		return `{"policies":{"p":{"permissions":[{"any":true}],"principals":[{"any":true}],` + extra + `}}}`
	}
	tests := []struct {
		name string
		http bool
		rule string
		want string
	}{
		{"request in network filter", false, pol(`"condition":` + condJSON(t, `request.path == "/"`)),
			`.policies["p"].condition: reads request.*, HTTP only, unsupported in a network filter`},
		{"not bool", true, pol(`"condition":{"constExpr":{"int64Value":"1"}}`),
			`.policies["p"].condition: must evaluate to bool, not int`},
		{"undeclared", true, pol(`"condition":{"identExpr":{"name":"nope"}}`),
			`.policies["p"].condition: undeclared reference to 'nope'`},
		{"empty", true, pol(`"condition":{}`), `.policies["p"].condition: empty expression`},
		{"both", true, pol(`"condition":{"constExpr":{"boolValue":true}},"checkedCondition":{"expr":{"constExpr":{"boolValue":true}}}`),
			`.policies["p"].checked_condition: only one of condition and checked_condition`},
		{"cel_config", true, pol(`"condition":{"constExpr":{"boolValue":true}},"celConfig":{}`),
			`.policies["p"].cel_config: unsupported`},
		{"checked without expr", true, pol(`"checkedCondition":{}`), `.policies["p"].checked_condition.expr: empty expression`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := NewBuilder(tt.http).AddRBAC(rbac(t, tt.rule))
			if err == nil || err.Error() != tt.want {
				t.Errorf("AddRBAC = %v, want %s", err, tt.want)
			}
		})
	}
}

// TestCELDeep: a hostile condition nested past cel-go's limit is refused,
// not a stack overflow.
func TestCELDeep(t *testing.T) {
	e := &exprpb.Expr{ExprKind: &exprpb.Expr_ConstExpr{ConstExpr: &exprpb.Constant{ConstantKind: &exprpb.Constant_BoolValue{BoolValue: true}}}}
	for i := range 5000 {
		e = &exprpb.Expr{Id: int64(i + 2), ExprKind: &exprpb.Expr_CallExpr{CallExpr: &exprpb.Expr_Call{Function: "!_", Args: []*exprpb.Expr{e}}}}
	}
	r := &rbacv3.RBAC{Policies: map[string]*rbacv3.Policy{"p": {
		Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_Any{Any: true}}},
		Principals:  []*rbacv3.Principal{{Identifier: &rbacv3.Principal_Any{Any: true}}},
		Condition:   e,
	}}}
	err := NewBuilder(true).AddRBAC(r)
	if err == nil || !strings.Contains(err.Error(), "nesting depth") {
		t.Errorf("AddRBAC = %v, want a nesting depth error", err)
	}
}

func TestSPIFFENSSA(t *testing.T) {
	for id, want := range map[string][2]string{
		web:                                  {"shop", "web"},
		"spiffe://td/ns/a/sa/b/c":            {"", ""},
		"spiffe://td/ns//sa/b":               {"", ""},
		"spiffe://td/x/a/sa/b":               {"", ""},
		"https://td/ns/a/sa/b":               {"", ""},
		"spiffe://td":                        {"", ""},
		"":                                   {"", ""},
		"spiffe://verge.local/ns/n-1/sa/s.a": {"n-1", "s.a"},
	} {
		ns, sa := spiffeNSSA(id)
		if got := [2]string{ns, sa}; got != want {
			t.Errorf("spiffeNSSA(%q) = %v, want %v", id, got, want)
		}
	}
}
