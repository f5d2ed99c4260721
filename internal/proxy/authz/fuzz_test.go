package authz

import (
	"net/netip"
	"testing"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	"google.golang.org/protobuf/proto"
)

// FuzzAddRBAC: any RBAC message that passes its proto validation either
// compiles or is refused with an error; a compiled engine decides any
// request without panicking. Seeds include CEL conditions, so the fuzzer
// mutates expression trees the proxy must check and run.
func FuzzAddRBAC(f *testing.F) {
	for _, js := range []string{
		`{"action":"DENY","policies":{"p/r":{"permissions":[{"andRules":{"rules":[{"destinationPort":1},{"notRule":{"urlPath":{"path":{"safeRegex":{"regex":"a.*"}}}}}]}}],"principals":[{"authenticated":{"principalName":{"suffix":"/sa/x"}}}]}}}`,
		`{"action":"LOG","policies":{"p":{"permissions":[{"header":{"name":"x","presentMatch":true}}],"principals":[{"metadata":{"filter":"envoy.filters.http.jwt_authn","path":[{"key":"a"},{"key":"b"}],"value":{"listMatch":{"oneOf":{"stringMatch":{"prefix":"x"}}}}}}]}}}`,
		`{"policies":{"p":{"permissions":[{"any":true}],"principals":[{"directRemoteIp":{"addressPrefix":"::1","prefixLen":128}}]}}}`,
		`{"action":"DENY","policies":{"p":{"permissions":[{"any":true}],"principals":[{"any":true}],"condition":` +
			condJSON(f, `request.headers["x"] == "y" && source.namespace != "" && has(request.auth.claims.sub)`) + `}}}`,
		`{"policies":{"p":{"permissions":[{"any":true}],"principals":[{"any":true}],"checkedCondition":{"expr":` +
			condJSON(f, `destination.port in [1, 2] || request.headers.exists(k, k == "x")`) + `}}}}`,
		`{"policies":{"p":{"permissions":[{"any":true}],"principals":[{"any":true}],"condition":{"callExpr":{"function":"_==_","args":[{"identExpr":{"name":"x"}},{"constExpr":{"int64Value":"1"}}]}}}}}`,
	} {
		b, err := proto.Marshal(rbac(f, js))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, true)
	}
	f.Fuzz(func(t *testing.T, data []byte, http bool) {
		r := &rbacv3.RBAC{}
		if proto.Unmarshal(data, r) != nil || r.ValidateAll() != nil {
			return
		}
		b := NewBuilder(http)
		if err := b.AddRBAC(r); err != nil {
			return
		}
		e := b.Engine()
		h := map[string]string{"x": "y"}
		for _, req := range []*Request{
			{Principal: "spiffe://td/ns/a/sa/x", SourceIP: netip.MustParseAddr("::1"), DestPort: 1, HTTP: http, Method: "GET", Path: "/a",
				Header: func(n string) string { return h[n] },
				VisitHeaders: func(fn func(n, v string) bool) {
					for k, v := range h {
						if !fn(k, v) {
							return
						}
					}
				}},
			{},
		} {
			if !http && e.NeedsHTTP() {
				t.Fatal("network engine reads HTTP fields")
			}
			e.Check(req)
		}
	})
}
