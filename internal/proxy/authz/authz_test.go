package authz

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func rbac(t testing.TB, js string) *rbacv3.RBAC {
	t.Helper()
	r := &rbacv3.RBAC{}
	if err := protojson.Unmarshal([]byte(js), r); err != nil {
		t.Fatalf("rbac %s: %v", js, err)
	}
	if err := r.ValidateAll(); err != nil {
		t.Fatalf("rbac %s: %v", js, err)
	}
	return r
}

func build(t testing.TB, http bool, jwtCfg *jwtv3.JwtAuthentication, rules ...string) *Engine {
	t.Helper()
	b := NewBuilder(http)
	if jwtCfg != nil {
		if err := b.AddJWT(jwtCfg); err != nil {
			t.Fatalf("AddJWT: %v", err)
		}
	}
	for _, r := range rules {
		if err := b.AddRBAC(rbac(t, r)); err != nil {
			t.Fatalf("AddRBAC: %v", err)
		}
	}
	return b.Engine()
}

// httpReq is a request from principal to path with headers.
func httpReq(principal, method, path string, headers map[string]string) *Request {
	return &Request{
		Principal: principal, SourceIP: netip.MustParseAddr("127.0.0.1"), DestPort: 15080,
		HTTP: true, Method: method, Path: path, Host: "api.shop.mesh",
		Header: func(name string) string { return headers[name] },
	}
}

const (
	web   = "spiffe://verge.local/ns/shop/sa/web"
	admin = "spiffe://verge.local/ns/ops/sa/admin"
)

func TestPrecedence(t *testing.T) {
	deny := `{"action":"DENY","policies":{"ns/deny/debug":{"permissions":[{"urlPath":{"path":{"prefix":"/debug"}}}],"principals":[{"any":true}]}}}`
	allow := `{"action":"ALLOW","policies":{
		"ns/allow/web":{"permissions":[{"header":{"name":":method","stringMatch":{"exact":"GET"}}}],
			"principals":[{"authenticated":{"principalName":{"exact":"` + web + `"}}}]},
		"ns/allow/ops":{"permissions":[{"any":true}],"principals":[{"authenticated":{"principalName":{"prefix":"spiffe://verge.local/ns/ops/"}}}]}}}`
	audit := `{"action":"LOG","policies":{"ns/audit/writes":{"permissions":[{"notRule":{"header":{"name":":method","stringMatch":{"exact":"GET"}}}}],"principals":[{"any":true}]}}}`
	emptyAllow := `{"action":"ALLOW"}`

	tests := []struct {
		name  string
		rules []string
		req   *Request
		want  Decision
	}{
		{"no filters allows", nil, httpReq("", "GET", "/", nil), Decision{Allowed: true}},
		{"deny wins over allow", []string{deny, allow}, httpReq(web, "GET", "/debug/x", nil),
			Decision{Policy: "ns/deny", Rule: "debug", Reason: "denied by policy ns/deny rule debug"}},
		{"allow matches", []string{deny, allow}, httpReq(web, "GET", "/x", nil),
			Decision{Allowed: true, Policy: "ns/allow", Rule: "web", Reason: "allowed by policy ns/allow rule web"}},
		{"no allow matched", []string{deny, allow}, httpReq(web, "POST", "/x", nil),
			Decision{Reason: reasonNoAllow}},
		{"plaintext matches no principal", []string{allow}, httpReq("", "GET", "/x", nil),
			Decision{Reason: reasonNoAllow}},
		{"only deny: unmatched allowed", []string{deny}, httpReq("", "POST", "/x", nil),
			Decision{Allowed: true, Reason: reasonAllowed}},
		{"audit is recorded, allow decides", []string{audit, allow}, httpReq(admin, "POST", "/x", nil),
			Decision{Allowed: true, Policy: "ns/allow", Rule: "ops", Audited: []string{"ns/audit/writes"}, Reason: "allowed by policy ns/allow rule ops"}},
		{"audit alone never denies", []string{audit}, httpReq("", "DELETE", "/x", nil),
			Decision{Allowed: true, Audited: []string{"ns/audit/writes"}, Reason: reasonAllowed}},
		{"allow filter without policies refuses", []string{emptyAllow}, httpReq(web, "GET", "/", nil),
			Decision{Reason: reasonNoAllow}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var e *Engine
			if tt.rules != nil {
				e = build(t, true, nil, tt.rules...)
			}
			if diff := cmp.Diff(tt.want, e.Check(tt.req)); diff != "" {
				t.Errorf("Check (-want +got):\n%s", diff)
			}
		})
	}
}

func TestMatchers(t *testing.T) {
	policy := func(perm, prin string) string {
		return `{"action":"ALLOW","policies":{"p/r":{"permissions":[` + perm + `],"principals":[` + prin + `]}}}`
	}
	anyP := `{"any":true}`
	tests := []struct {
		name       string
		perm, prin string
		req        *Request
		want       bool
	}{
		{"principal suffix", anyP, `{"authenticated":{"principalName":{"suffix":"/sa/web"}}}`, httpReq(web, "GET", "/", nil), true},
		{"principal suffix miss", anyP, `{"authenticated":{"principalName":{"suffix":"/sa/web"}}}`, httpReq(admin, "GET", "/", nil), false},
		{"any authenticated", anyP, `{"authenticated":{}}`, httpReq(admin, "GET", "/", nil), true},
		{"any authenticated plaintext", anyP, `{"authenticated":{}}`, httpReq("", "GET", "/", nil), false},
		{"not principal", anyP, `{"notId":{"authenticated":{"principalName":{"exact":"` + web + `"}}}}`, httpReq(admin, "GET", "/", nil), true},
		{"source ip", anyP, `{"directRemoteIp":{"addressPrefix":"127.0.0.0","prefixLen":8}}`, httpReq("", "GET", "/", nil), true},
		{"source ip miss", anyP, `{"remoteIp":{"addressPrefix":"10.0.0.0","prefixLen":8}}`, httpReq("", "GET", "/", nil), false},
		{"path exact", `{"urlPath":{"path":{"exact":"/a"}}}`, anyP, httpReq("", "GET", "/a", nil), true},
		{"path suffix", `{"urlPath":{"path":{"suffix":".json"}}}`, anyP, httpReq("", "GET", "/a/b.json", nil), true},
		{"path regex", `{"urlPath":{"path":{"safeRegex":{"regex":"/v[0-9]+/x"}}}}`, anyP, httpReq("", "GET", "/v12/x", nil), true},
		{"path regex is anchored", `{"urlPath":{"path":{"safeRegex":{"regex":"/v[0-9]+"}}}}`, anyP, httpReq("", "GET", "/v12/x", nil), false},
		{"host ignore case", `{"header":{"name":":authority","stringMatch":{"prefix":"API.","ignoreCase":true}}}`, anyP, httpReq("", "GET", "/", nil), true},
		{"header present", `{"header":{"name":"x-tenant","presentMatch":true}}`, anyP, httpReq("", "GET", "/", map[string]string{"x-tenant": "a"}), true},
		{"header absent", `{"header":{"name":"x-tenant","presentMatch":true}}`, anyP, httpReq("", "GET", "/", nil), false},
		{"header contains", `{"header":{"name":"X-Tenant","stringMatch":{"contains":"EN","ignoreCase":true}}}`, anyP, httpReq("", "GET", "/", map[string]string{"x-tenant": "tenant"}), true},
		{"header inverted", `{"header":{"name":"x-tenant","stringMatch":{"exact":"a"},"invertMatch":true}}`, anyP, httpReq("", "GET", "/", map[string]string{"x-tenant": "b"}), true},
		{"port", `{"destinationPort":15080}`, anyP, httpReq("", "GET", "/", nil), true},
		{"port range", `{"destinationPortRange":{"start":15000,"end":15080}}`, anyP, httpReq("", "GET", "/", nil), false},
		{"and rules", `{"andRules":{"rules":[{"destinationPort":15080},{"urlPath":{"path":{"prefix":"/b"}}}]}}`, anyP, httpReq("", "GET", "/a", nil), false},
		{"or rules", `{"orRules":{"rules":[{"destinationPort":1},{"urlPath":{"path":{"prefix":"/a"}}}]}}`, anyP, httpReq("", "GET", "/a", nil), true},
		{"never", `{"notRule":{"any":true}}`, anyP, httpReq("", "GET", "/a", nil), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := build(t, true, nil, policy(tt.perm, tt.prin))
			if got := e.Check(tt.req).Allowed; got != tt.want {
				t.Errorf("Allowed = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestTCP(t *testing.T) {
	e := build(t, false, nil,
		`{"action":"DENY","policies":{"p/legacy":{"permissions":[{"any":true}],"principals":[{"authenticated":{"principalName":{"prefix":"spiffe://verge.local/ns/legacy/"}}}]}}}`,
		`{"action":"ALLOW","policies":{"p/shop":{"permissions":[{"destinationPort":15432}],"principals":[{"authenticated":{"principalName":{"prefix":"spiffe://verge.local/ns/shop/"}}}]}}}`)
	if e.NeedsHTTP() {
		t.Error("NeedsHTTP = true for L4 rules")
	}
	conn := func(principal string) *Request {
		return &Request{Principal: principal, DestPort: 15432, SourceIP: netip.MustParseAddr("127.0.0.1")}
	}
	for principal, want := range map[string]bool{
		web: true, "spiffe://verge.local/ns/legacy/sa/x": false, admin: false, "": false,
	} {
		if got := e.Check(conn(principal)).Allowed; got != want {
			t.Errorf("%q: Allowed = %v, want %v", principal, got, want)
		}
	}
}

func TestBuildErrors(t *testing.T) {
	tests := []struct {
		name string
		http bool
		rule string
		want string
	}{
		{"http matcher in network filter", false,
			`{"policies":{"p":{"permissions":[{"urlPath":{"path":{"exact":"/"}}}],"principals":[{"any":true}]}}}`,
			`.policies["p"].permissions[0].url_path: HTTP only, unsupported in a network filter`},
		{"unsupported permission", true,
			`{"policies":{"p":{"permissions":[{"requestedServerName":{"exact":"x"}}],"principals":[{"any":true}]}}}`,
			`.policies["p"].permissions[0]: unsupported permission *rbacv3.Permission_RequestedServerName`},
		{"bad regex", true,
			`{"policies":{"p":{"permissions":[{"any":true}],"principals":[{"orIds":{"ids":[{"any":true},{"authenticated":{"principalName":{"safeRegex":{"regex":"("}}}}]}}]}}}`,
			`.policies["p"].principals[0].or_ids.ids[1].authenticated.principal_name.safe_regex.regex: error parsing regexp: missing closing ): ` + "`^(?:()$`"},
		{"claim on another filter", true,
			`{"policies":{"p":{"permissions":[{"any":true}],"principals":[{"metadata":{"filter":"x","path":[{"key":"a"},{"key":"b"}],"value":{"presentMatch":true}}}]}}}`,
			`.policies["p"].principals[0].metadata.filter: only envoy.filters.http.jwt_authn is supported, not "x"`},
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

// issuer is a token issuer for tests: an ECDSA key and its key set.
type issuer struct {
	name   string
	key    *ecdsa.PrivateKey
	kid    string
	signer jose.Signer
}

func newIssuer(t testing.TB, name, kid string) *issuer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: k, KeyID: kid}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &issuer{name: name, key: k, kid: kid, signer: s}
}

func (i *issuer) jwks(t testing.TB) []byte {
	t.Helper()
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &i.key.PublicKey, KeyID: i.kid, Algorithm: "ES256", Use: "sig"}}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (i *issuer) token(t testing.TB, aud string, exp time.Time, extra map[string]any) string {
	t.Helper()
	std := jwt.Claims{Issuer: i.name, Subject: "user-1", Audience: jwt.Audience{aud}, Expiry: jwt.NewNumericDate(exp), IssuedAt: jwt.NewNumericDate(time.Now().Add(-time.Minute))}
	s, err := jwt.Signed(i.signer).Claims(std).Claims(extra).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func jwtConfig(t testing.TB, js string) *jwtv3.JwtAuthentication {
	t.Helper()
	c := &jwtv3.JwtAuthentication{}
	if err := protojson.Unmarshal([]byte(js), c); err != nil {
		t.Fatalf("jwt %s: %v", js, err)
	}
	if err := c.ValidateAll(); err != nil {
		t.Fatalf("jwt %s: %v", js, err)
	}
	return c
}

func jwtProviderJSON(name, iss, source string) string {
	return `"` + name + `":{"issuer":"` + iss + `","audiences":["shop"],` + source + `,"payloadInMetadata":"jwt_payload"}`
}

const jwtRules = `"rules":[{"match":{"prefix":"/"},"requires":{"requiresAny":{"requirements":[{"providerName":"a"},{"allowMissing":{}}]}}}]`

// claimAllow allows requests whose token has group "admin".
const claimAllow = `{"action":"ALLOW","policies":{"p/admins":{"permissions":[{"any":true}],"principals":[{"orIds":{"ids":[
	{"metadata":{"filter":"envoy.filters.http.jwt_authn","path":[{"key":"jwt_payload"},{"key":"groups"}],"value":{"stringMatch":{"exact":"admin"}}}},
	{"metadata":{"filter":"envoy.filters.http.jwt_authn","path":[{"key":"jwt_payload"},{"key":"groups"}],"value":{"listMatch":{"oneOf":{"stringMatch":{"exact":"admin"}}}}}}]}}]}}}`

func TestJWTFromFile(t *testing.T) {
	iss := newIssuer(t, "https://issuer.test", "k1")
	other := newIssuer(t, "https://issuer.test", "k1") // same kid, other key
	file := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(file, iss.jwks(t), 0o600); err != nil {
		t.Fatal(err)
	}
	e := build(t, true, jwtConfig(t, `{"providers":{`+jwtProviderJSON("a", iss.name, `"localJwks":{"filename":"`+file+`"}`)+`},`+jwtRules+`}`), claimAllow)

	future := time.Now().Add(time.Hour)
	tests := []struct {
		name   string
		token  string
		want   bool
		reason string
	}{
		{"valid list claim", iss.token(t, "shop", future, map[string]any{"groups": []string{"dev", "admin"}}), true, "allowed by policy p rule admins"},
		{"valid string claim", iss.token(t, "shop", future, map[string]any{"groups": "admin"}), true, "allowed by policy p rule admins"},
		{"valid, claim does not match", iss.token(t, "shop", future, map[string]any{"groups": "dev"}), false, reasonNoAllow},
		{"no token", "", false, reasonNoAllow},
		{"expired", iss.token(t, "shop", time.Now().Add(-time.Hour), map[string]any{"groups": "admin"}), false, "JWT: token expired"},
		{"wrong audience", iss.token(t, "other", future, map[string]any{"groups": "admin"}), false, "JWT: audience not allowed"},
		{"wrong issuer", newIssuer(t, "https://evil.test", "k1").token(t, "shop", future, nil), false, "JWT: issuer not trusted"},
		{"bad signature", other.token(t, "shop", future, map[string]any{"groups": "admin"}), false, "JWT: signature invalid"},
		{"garbage", "not.a.jwt", false, "JWT: token malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := map[string]string{}
			if tt.token != "" {
				h["authorization"] = "Bearer " + tt.token
			}
			// Twice: the second answer comes from the token cache.
			for range 2 {
				d := e.Check(httpReq(web, "GET", "/", h))
				if d.Allowed != tt.want || d.Reason != tt.reason {
					t.Errorf("Check = %+v, want allowed %v reason %q", d, tt.want, tt.reason)
				}
			}
		})
	}
}

func TestJWTFromURL(t *testing.T) {
	iss := newIssuer(t, "https://issuer.test", "k1")
	var fetches atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		_, _ = w.Write(iss.jwks(t))
	}))
	t.Cleanup(srv.Close)
	cfg := jwtConfig(t, `{"providers":{`+jwtProviderJSON("a", iss.name,
		`"remoteJwks":{"httpUri":{"uri":"`+srv.URL+`/jwks","cluster":"jwks","timeout":"5s"},"cacheDuration":"300s"}`)+`},`+jwtRules+`}`)
	e := build(t, true, cfg, claimAllow)
	tok := iss.token(t, "shop", time.Now().Add(time.Hour), map[string]any{"groups": "admin"})
	d := e.Check(httpReq(web, "GET", "/", map[string]string{"authorization": "Bearer " + tok}))
	if !d.Allowed {
		t.Fatalf("Check = %+v, want allowed", d)
	}
	// A second engine (a new configuration) shares the fetched key set.
	e2 := build(t, true, cfg, claimAllow)
	tok2 := iss.token(t, "shop", time.Now().Add(2*time.Hour), map[string]any{"groups": "admin"})
	if d := e2.Check(httpReq(web, "GET", "/", map[string]string{"authorization": "Bearer " + tok2})); !d.Allowed {
		t.Fatalf("second engine: Check = %+v, want allowed", d)
	}
	if n := fetches.Load(); n != 1 {
		t.Errorf("key set fetched %d times, want 1", n)
	}
}

func TestJWTURLUnavailable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(srv.Close)
	iss := newIssuer(t, "https://issuer.test", "k1")
	e := build(t, true, jwtConfig(t, `{"providers":{`+jwtProviderJSON("a", iss.name,
		`"remoteJwks":{"httpUri":{"uri":"`+srv.URL+`/missing","cluster":"jwks","timeout":"5s"}}`)+`},`+jwtRules+`}`), claimAllow)
	tok := iss.token(t, "shop", time.Now().Add(time.Hour), nil)
	d := e.Check(httpReq(web, "GET", "/", map[string]string{"authorization": "Bearer " + tok}))
	if d.Allowed || !strings.Contains(d.Reason, "404") {
		t.Errorf("Check = %+v, want refused naming the 404", d)
	}
}

func TestRecorder(t *testing.T) {
	var buf bytes.Buffer
	r := NewRecorder(&buf)
	req := httpReq(web, "DELETE", "/x", nil)
	r.Record("inbound:8080", req, Decision{Allowed: true, Policy: "ns/p", Rule: "r"})
	r.Record("inbound:8080", req, Decision{Policy: "ns/d", Rule: "r", Reason: "denied by policy ns/d rule r", Audited: []string{"ns/a/w"}})
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if got := counterValue(t, r.decisions.WithLabelValues("inbound:8080", "allow", "ns/p/r")); got != 1 {
		t.Errorf("allow count = %v", got)
	}
	if got := counterValue(t, r.decisions.WithLabelValues("inbound:8080", "deny", "ns/d/r")); got != 1 {
		t.Errorf("deny count = %v", got)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("audit log has %d lines, want 2:\n%s", len(lines), buf.String())
	}
	var got []map[string]any
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatal(err)
		}
		delete(m, "time")
		got = append(got, m)
	}
	want := []map[string]any{
		{"decision": "deny", "listener": "inbound:8080", "source_principal": web, "source_ip": "127.0.0.1", "destination_port": 15080.0,
			"method": "DELETE", "path": "/x", "policy": "ns/d", "rule": "r", "reason": "denied by policy ns/d rule r"},
		{"decision": "audit", "listener": "inbound:8080", "source_principal": web, "source_ip": "127.0.0.1", "destination_port": 15080.0,
			"method": "DELETE", "path": "/x", "policy": "ns/a", "rule": "w", "reason": "matched AUDIT policy; request denied: denied by policy ns/d rule r"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("audit log (-want +got):\n%s", diff)
	}
}

// blockingWriter blocks every write until released.
type blockingWriter struct{ release chan struct{} }

func (w blockingWriter) Write(p []byte) (int, error) { <-w.release; return len(p), nil }

func TestRecorderDropsWhenFull(t *testing.T) {
	w := blockingWriter{release: make(chan struct{})}
	r := NewRecorder(w)
	req := httpReq("", "GET", "/", nil)
	for range auditQueueSize + 100 {
		r.Record("l", req, Decision{Reason: "x"})
	}
	if got := counterValue(t, r.dropped); got < 99 {
		t.Errorf("dropped = %v, want at least 99", got)
	}
	close(w.release)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	var nilRec *Recorder
	nilRec.Record("l", req, Decision{})
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
