package authz

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// benchEngine is 100 policies as the translator writes them: 20 DENY and 80
// ALLOW rules mixing principals (exact, namespace prefix, suffix), paths,
// methods, headers and one JWT claim, behind a JWT filter with a local key
// set. The benchmark request matches only the last ALLOW policy, whose CEL
// condition reads the principal, a header (so request.headers is built)
// and a claim; so every policy is evaluated, and the condition too.
func benchEngine(b *testing.B) (*Engine, *Request) {
	iss := newIssuer(b, "https://issuer.test", "k1")
	file := filepath.Join(b.TempDir(), "jwks.json")
	if err := os.WriteFile(file, iss.jwks(b), 0o600); err != nil {
		b.Fatal(err)
	}
	cfg := jwtConfig(b, `{"providers":{`+jwtProviderJSON("a", iss.name, `"localJwks":{"filename":"`+file+`"}`)+`},`+jwtRules+`}`)

	policy := func(i int) string {
		prin := []string{
			`{"authenticated":{"principalName":{"exact":"spiffe://verge.local/ns/ns%d/sa/web"}}}`,
			`{"authenticated":{"principalName":{"prefix":"spiffe://verge.local/ns/ns%d/sa/"}}}`,
			`{"authenticated":{"principalName":{"suffix":"/sa/sa%d"}}}`,
		}[i%3]
		perm := fmt.Sprintf(`{"andRules":{"rules":[
			{"orRules":{"rules":[{"urlPath":{"path":{"prefix":"/api/v%d/"}}},{"urlPath":{"path":{"suffix":".v%d"}}}]}},
			{"orRules":{"rules":[{"header":{"name":":method","stringMatch":{"exact":"GET"}}},{"header":{"name":":method","stringMatch":{"exact":"POST"}}}]}},
			{"header":{"name":"x-tenant","stringMatch":{"prefix":"t%d"}}}]}}`, i, i, i)
		return fmt.Sprintf(`"ns/p%d/r":{"permissions":[%s],"principals":[%s]}`, i, perm, fmt.Sprintf(prin, i))
	}
	var deny, allow []string
	for i := range 20 {
		deny = append(deny, policy(i))
	}
	for i := 20; i < 99; i++ {
		allow = append(allow, policy(i))
	}
	allow = append(allow, `"ns/p99/admins":{"permissions":[{"any":true}],"principals":[{"andIds":{"ids":[
		{"authenticated":{"principalName":{"prefix":"spiffe://verge.local/ns/shop/"}}},
		{"metadata":{"filter":"envoy.filters.http.jwt_authn","path":[{"key":"jwt_payload"},{"key":"groups"}],"value":{"listMatch":{"oneOf":{"stringMatch":{"exact":"admin"}}}}}}]}}],
		"condition":`+condJSON(b, `source.serviceAccount == "web" && request.headers["x-tenant"].startsWith("t-") && request.auth.claims.sub != ""`)+`}`)
	e := build(b, true, cfg,
		`{"action":"DENY","policies":{`+strings.Join(deny, ",")+`}}`,
		`{"action":"ALLOW","policies":{`+strings.Join(allow, ",")+`}}`)

	tok := iss.token(b, "shop", time.Now().Add(time.Hour), map[string]any{"groups": []string{"dev", "admin"}})
	headers := map[string]string{"authorization": "Bearer " + tok, "x-tenant": "t-none"}
	req := httpReq(web, "GET", "/api/v999/items", headers)
	req.VisitHeaders = func(fn func(name, value string) bool) {
		for k, v := range headers {
			if !fn(k, v) {
				return
			}
		}
	}
	if d := e.Check(req); !d.Allowed || d.Policy != "ns/p99" {
		b.Fatalf("Check = %+v, want allowed by ns/p99", d)
	}
	return e, req
}

func BenchmarkCheck100Policies(b *testing.B) {
	e, req := benchEngine(b)
	b.ReportAllocs()
	for b.Loop() {
		e.Check(req)
	}
}

func BenchmarkCheck100PoliciesParallel(b *testing.B) {
	e, req := benchEngine(b)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			e.Check(req)
		}
	})
}

// BenchmarkJWTVerify is the cost of a token seen for the first time
// (signature check), which the cache saves on every later request.
func BenchmarkJWTVerify(b *testing.B) {
	iss := newIssuer(b, "https://issuer.test", "k1")
	file := filepath.Join(b.TempDir(), "jwks.json")
	if err := os.WriteFile(file, iss.jwks(b), 0o600); err != nil {
		b.Fatal(err)
	}
	e := build(b, true, jwtConfig(b, `{"providers":{`+jwtProviderJSON("a", iss.name, `"localJwks":{"filename":"`+file+`"}`)+`},`+jwtRules+`}`))
	tok := iss.token(b, "shop", time.Now().Add(time.Hour), nil)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := e.jwt.verifyToken(tok, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCELCondition is the cost of one condition reading the
// principal, a header and the method, on top of its policy's matchers.
func BenchmarkCELCondition(b *testing.B) {
	e := build(b, true, nil, celPolicy(b, "ALLOW", anyPrin,
		`source.serviceAccount == "web" && request.headers["x-tenant"].startsWith("t-") && request.method == "GET"`))
	headers := map[string]string{"x-tenant": "t-1", "accept": "*/*", "user-agent": "bench"}
	req := httpReq(web, "GET", "/", headers)
	req.VisitHeaders = func(fn func(name, value string) bool) {
		for k, v := range headers {
			if !fn(k, v) {
				return
			}
		}
	}
	if !e.Check(req).Allowed {
		b.Fatal("not allowed")
	}
	b.ReportAllocs()
	for b.Loop() {
		e.Check(req)
	}
}
