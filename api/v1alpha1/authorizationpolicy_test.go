package v1alpha1

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestValidateAuthorizationPolicy(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{
			name: "action",
			in:   `{spec: {action: PERMIT}}`,
			want: []string{`spec.action: Unsupported value: "PERMIT": supported values: "ALLOW", "DENY", "AUDIT"`},
		},
		{
			name: "action required",
			in:   `{spec: {}}`,
			want: []string{`spec.action: Required value: ALLOW, DENY or AUDIT`},
		},
		{
			name: "wildcards and names",
			in: `{spec: {action: ALLOW, service: Bad_Name, rules: [
  {name: a, from: [{principals: ["spiffe://td/ns/*/sa/x", "web"], namespaces: [prod, "p*"], serviceAccounts: [default]}]},
  {name: a, to: [{paths: ["/a*b*", "api", "/x?y"], methods: ["GE T"], hosts: ["a.*.b"], ports: [0, 70000]}]}]}}`,
			want: []string{
				`spec.service: Invalid value: "Bad_Name": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`,
				`spec.rules[0].from[0].principals[0]: Invalid value: "spiffe://td/ns/*/sa/x": "*" may only be the whole value, its first or its last character, once`,
				`spec.rules[0].from[0].principals[1]: Invalid value: "web": must be a SPIFFE ID ("spiffe://...") or start with "*"`,
				`spec.rules[0].from[0].namespaces[1]: Invalid value: "p*": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`,
				`spec.rules[0].from[0].serviceAccounts[0]: Invalid value: "default": must be NAMESPACE/SERVICEACCOUNT`,
				`spec.rules[1].name: Duplicate value: "a"`,
				`spec.rules[1].to[0].ports[0]: Invalid value: 0: must be between 1 and 65535`,
				`spec.rules[1].to[0].ports[1]: Invalid value: 70000: must be between 1 and 65535`,
				`spec.rules[1].to[0].paths[0]: Invalid value: "/a*b*": "*" may only be the whole value, its first or its last character, once`,
				`spec.rules[1].to[0].paths[1]: Invalid value: "api": must start with "/" or "*"`,
				`spec.rules[1].to[0].paths[2]: Invalid value: "/x?y": must not contain a query or fragment`,
				`spec.rules[1].to[0].methods[0]: Invalid value: "GE T": must be an HTTP method token`,
				`spec.rules[1].to[0].hosts[0]: Invalid value: "a.*.b": "*" may only be the whole value, its first or its last character, once`,
			},
		},
		{
			name: "conditions",
			in: `{spec: {action: DENY, rules: [{headers: [{name: ":path", values: [x]}, {name: x}], when: [{values: ["*a*"]}],
  cel: "source.namespace == 'x'"}]}}`,
			want: []string{
				`spec.rules[0].headers[0].name: Invalid value: ":path": must be an HTTP header name (to[] has methods, paths and hosts)`,
				`spec.rules[0].headers[1].values: Required value: at least one of values and notValues`,
				`spec.rules[0].when[0].claim: Required value`,
				`spec.rules[0].when[0].values[0]: Invalid value: "*a*": "*" may only be the whole value, its first or its last character, once`,
			},
		},
		{
			name: "cel",
			in: `{spec: {action: ALLOW, rules: [
  {cel: "source.namespace == 'x' && request.headers['x-a'].startsWith('b')"},
  {cel: "source.ip"},
  {cel: "nope"},
  {cel: "request.auth.claims.groups.exists(g, g =="},
  {cel: "` + strings.Repeat("a", 4097) + `"}]}}`,
			want: []string{
				`spec.rules[1].cel: Invalid value: "source.ip": must evaluate to bool, not string`,
				"spec.rules[2].cel: Invalid value: \"nope\": ERROR: <input>:1:1: undeclared reference to 'nope'\n | nope\n | ^",
				"spec.rules[3].cel: Invalid value: \"request.auth.claims.groups.exists(g, g ==\": ERROR: <input>:1:42: Syntax error: mismatched input '<EOF>' expecting {'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER}\n | request.auth.claims.groups.exists(g, g ==\n | .........................................^",
				`spec.rules[4].cel: Too long: may not be more than 4096 bytes`,
			},
		},
		{
			name: "jwt",
			in: `{spec: {action: ALLOW, jwt: {providers: [
  {issuer: a, jwksFile: /x, jwksURI: "https://x"},
  {issuer: a},
  {issuer: b, jwksFile: "rel/path"},
  {issuer: c, jwksURI: "ftp://x", audiences: [""], fromHeader: {name: "bad header"}}]}}}`,
			want: []string{
				`spec.jwt.providers[0].jwksURI: Invalid value: "https://x": jwksFile and jwksURI are mutually exclusive`,
				`spec.jwt.providers[1].issuer: Duplicate value: "a"`,
				`spec.jwt.providers[1].jwksFile: Required value: one of jwksFile and jwksURI`,
				`spec.jwt.providers[2].jwksFile: Invalid value: "rel/path": must be a clean absolute path`,
				`spec.jwt.providers[3].audiences[0]: Required value`,
				`spec.jwt.providers[3].jwksURI: Invalid value: "ftp://x": must be an absolute http or https URL`,
				`spec.jwt.providers[3].fromHeader.name: Invalid value: "bad header": must be an HTTP header name`,
			},
		},
		{
			name: "jwt without providers",
			in:   `{spec: {action: ALLOW, jwt: {providers: []}}}`,
			want: []string{`spec.jwt.providers: Required value: at least one provider`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := "apiVersion: verge.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n" + tt.in[1:len(tt.in)-1] + "\n"
			obj, err := DecodeOne([]byte(doc))
			if err != nil {
				t.Fatalf("DecodeOne: %v\n%s", err, doc)
			}
			Default(obj)
			if diff := cmp.Diff(tt.want, errorStrings(Validate(obj))); diff != "" {
				t.Errorf("Validate (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDefaultAuthorizationPolicy(t *testing.T) {
	obj, err := DecodeOne([]byte(`{"apiVersion":"verge.dev/v1alpha1","kind":"AuthorizationPolicy","metadata":{"name":"p"},
		"spec":{"action":"ALLOW","jwt":{"providers":[{"issuer":"i","jwksFile":"/k"}]}}}`))
	if err != nil {
		t.Fatal(err)
	}
	Default(obj)
	got := obj.(*AuthorizationPolicy)
	want := &JWTHeader{Name: "Authorization", Prefix: "Bearer "}
	if diff := cmp.Diff(want, got.Spec.JWT.Providers[0].FromHeader); diff != "" {
		t.Errorf("fromHeader (-want +got):\n%s", diff)
	}
	if got.Namespace != DefaultNamespace {
		t.Errorf("namespace = %q", got.Namespace)
	}
}

func TestDecodeAuthorizationPolicyStrict(t *testing.T) {
	_, err := DecodeOne([]byte("apiVersion: verge.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {action: ALLOW, rules: [{form: []}]}\n"))
	if err == nil || err.Error() != `document 1: spec.rules[0]: unknown field "form"` {
		t.Errorf("DecodeOne: %v, want unknown field spec.rules[0].form", err)
	}
}
