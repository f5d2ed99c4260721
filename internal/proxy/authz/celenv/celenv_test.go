package celenv

import (
	"strings"
	"testing"
)

func TestCompile(t *testing.T) {
	list := "[" + strings.Repeat("1,", 49) + "1]"
	tests := []struct {
		expr    string
		wantErr string // substring; empty: compiles
		request bool   // reads request.*
	}{
		{expr: `source.principal == "spiffe://verge.local/ns/a/sa/b"`},
		{expr: `source.namespace in ["a", "b"] && destination.port != 0`},
		{expr: `request.headers["x-a"] == "1"`, request: true},
		{expr: `has(request.auth.claims.sub) && "admin" in request.auth.claims.groups`, request: true},
		{expr: `request.headers.exists(k, k.startsWith("x-"))`, request: true},
		{expr: `source.ip`, wantErr: "must evaluate to bool, not string"},
		{expr: `request.auth.claims.admin`, wantErr: "must evaluate to bool, not dyn"},
		{expr: `nope == 1`, wantErr: "undeclared reference to 'nope'"},
		{expr: `source.principal ==`, wantErr: "Syntax error"},
		{expr: "  ", wantErr: "empty expression"},
		{expr: "true || " + strings.Repeat("a", MaxLength), wantErr: "longer than 4096 bytes"},
		{expr: list + ".all(a, " + list + ".all(b, " + list + ".all(c, " + list + ".all(d, a+b+c+d > 0))))",
			wantErr: "estimated worst-case cost"},
		{expr: `request.headers.all(a, request.headers.all(b, request.headers.all(c, a+b+c != "")))`,
			wantErr: "estimated worst-case cost"},
	}
	for _, tt := range tests {
		t.Run(tt.expr[:min(len(tt.expr), 40)], func(t *testing.T) {
			pe, ast, err := Condition(tt.expr)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Compile = %v, want an error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Compile: %v", err)
			}
			if got := ReadsRequest(ast); got != tt.request {
				t.Errorf("ReadsRequest = %v, want %v", got, tt.request)
			}
			// What travels in an RBAC policy checks again to the same
			// expression.
			back, err := FromProto(pe)
			if err != nil {
				t.Fatalf("FromProto: %v", err)
			}
			if _, err := Compile(tt.expr); err != nil {
				t.Errorf("Compile: %v", err)
			}
			if ReadsRequest(back) != tt.request || !back.OutputType().IsExactType(ast.OutputType()) {
				t.Errorf("FromProto changed the expression")
			}
			if _, err := Program(back); err != nil {
				t.Errorf("Program: %v", err)
			}
		})
	}
}

func TestReads(t *testing.T) {
	ast, err := Compile(`request.headers["a"] == "b" || source.namespace == "x"`)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{RequestHeaders: true, SourceNamespace: true, RequestAuthClaims: false, SourcePrincipal: false} {
		if got := Reads(ast, name); got != want {
			t.Errorf("Reads(%s) = %v, want %v", name, got, want)
		}
	}
}
