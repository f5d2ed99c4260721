package xdsclient

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"verge.dev/verge/api/v1alpha1"
	"verge.dev/verge/internal/proxy/authz"
	"verge.dev/verge/internal/xds/translate"
)

// authzMesh has an HTTP service (api) and a TCP one (db) in namespace shop,
// with the policies under test; JWKS_FILE is replaced by a key set path.
const authzMesh = `
apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: api, namespace: shop}
spec: {ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: db, namespace: shop}
spec: {ports: [{port: 5432, protocol: TCP}]}
---
apiVersion: verge.dev/v1alpha1
kind: Workload
metadata: {name: api-1, namespace: shop, labels: {app: api}}
spec: {address: 127.0.0.1, serviceAccount: api, ports: [{port: 8080, inboundPort: 15080}], proxy: {}}
---
apiVersion: verge.dev/v1alpha1
kind: Workload
metadata: {name: db-1, namespace: shop, labels: {app: db}}
spec: {address: 127.0.0.2, serviceAccount: db, ports: [{port: 5432, inboundPort: 15432}], proxy: {}}
---
apiVersion: verge.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-debug, namespace: verge-system}
spec:
  action: DENY
  rules: [{name: debug, from: [{notNamespaces: [shop]}], to: [{paths: ["/debug*"]}]}]
---
apiVersion: verge.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: callers, namespace: shop}
spec:
  action: ALLOW
  jwt:
    providers: [{issuer: https://issuer.test, audiences: [shop], jwksFile: JWKS_FILE}]
  rules:
  - name: web-reads
    from: [{serviceAccounts: [shop/web]}]
    to: [{methods: [GET], paths: [/api/*]}]
    headers: [{name: x-tenant, values: ["*"]}]
  - name: admins
    when: [{claim: groups, values: [admin]}]
  - name: shop-db
    from: [{namespaces: [shop]}]
    to: [{ports: [5432]}]
  - name: partners
    from: [{namespaces: [partners]}]
    cel: request.headers["x-tenant"].startsWith("p-") && source.serviceAccount == "gw"
  - name: batch-db
    cel: source.serviceAccount == "batch" && destination.port == 15432
---
apiVersion: verge.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: audit-writes, namespace: shop}
spec:
  service: api
  action: AUDIT
  rules: [{name: writes, to: [{notMethods: [GET]}]}]
`

// TestAuthzRoundTrip translates policies, builds the proxy's snapshot from
// the result and checks the engines' decisions.
func TestAuthzRoundTrip(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwks, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "ES256"}}})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(file, jwks, 0o600); err != nil {
		t.Fatal(err)
	}
	objs, err := v1alpha1.Decode([]byte(strings.ReplaceAll(authzMesh, "JWKS_FILE", file)))
	if err != nil {
		t.Fatal(err)
	}
	var m translate.Mesh
	byName := map[string]*v1alpha1.Workload{}
	for _, o := range objs {
		v1alpha1.Default(o)
		if errs := v1alpha1.Validate(o); len(errs) > 0 {
			t.Fatalf("%s: %v", o.GetName(), errs)
		}
		m.Add(o)
		if w, ok := o.(*v1alpha1.Workload); ok {
			byName[w.Name] = w
		}
	}
	ix := translate.NewIndex(m)
	engine := func(wl, listener string) *authz.Engine {
		t.Helper()
		res := ix.ForWorkload(byName[wl])
		snap, err := Build(res.Listeners, res.Routes, res.Clusters, res.Endpoints, res.Secrets)
		if err != nil {
			t.Fatalf("Build: %v", err)
		}
		for _, l := range snap.Listeners {
			if l.Name == listener {
				if l.Authz == nil {
					t.Fatalf("listener %s has no engine", listener)
				}
				return l.Authz
			}
		}
		t.Fatalf("no listener %s", listener)
		return nil
	}
	api, db := engine("api-1", "inbound:8080"), engine("db-1", "inbound:5432")
	if !api.NeedsHTTP() || db.NeedsHTTP() {
		t.Errorf("NeedsHTTP: api %v (want true), db %v (want false)", api.NeedsHTTP(), db.NeedsHTTP())
	}

	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: "k1"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	token := func(groups ...string) string {
		s, err := jwt.Signed(signer).Claims(jwt.Claims{Issuer: "https://issuer.test", Audience: jwt.Audience{"shop"},
			Expiry: jwt.NewNumericDate(time.Now().Add(time.Hour))}).Claims(map[string]any{"groups": groups}).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	const (
		web       = "spiffe://verge.local/ns/shop/sa/web"
		other     = "spiffe://verge.local/ns/other/sa/web"
		partnerGW = "spiffe://verge.local/ns/partners/sa/gw"
	)
	req := func(principal, method, path string, h map[string]string) *authz.Request {
		return &authz.Request{Principal: principal, SourceIP: netip.MustParseAddr("127.0.0.1"), DestPort: 15080,
			HTTP: true, Method: method, Path: path, Host: "api.shop.mesh", Header: func(n string) string { return h[n] }}
	}
	tenant := map[string]string{"x-tenant": "a"}
	tests := []struct {
		name string
		e    *authz.Engine
		r    *authz.Request
		want authz.Decision
	}{
		{"web reads", api, req(web, "GET", "/api/x", tenant),
			authz.Decision{Allowed: true, Policy: "shop/callers", Rule: "web-reads", Reason: "allowed by policy shop/callers rule web-reads"}},
		{"web without tenant", api, req(web, "GET", "/api/x", nil),
			authz.Decision{Reason: "no ALLOW policy matched"}},
		{"other namespace", api, req(other, "GET", "/api/x", tenant),
			authz.Decision{Reason: "no ALLOW policy matched"}},
		{"web writes are audited and refused", api, req(web, "POST", "/api/x", tenant),
			authz.Decision{Audited: []string{"shop/audit-writes/writes"}, Reason: "no ALLOW policy matched"}},
		{"admin token", api, req(other, "POST", "/x", map[string]string{"authorization": "Bearer " + token("admin")}),
			authz.Decision{Allowed: true, Policy: "shop/callers", Rule: "admins", Audited: []string{"shop/audit-writes/writes"}, Reason: "allowed by policy shop/callers rule admins"}},
		{"token without the group", api, req(other, "GET", "/x", map[string]string{"authorization": "Bearer " + token("dev")}),
			authz.Decision{Reason: "no ALLOW policy matched"}},
		{"bad token", api, req(web, "GET", "/api/x", map[string]string{"authorization": "Bearer x.y.z", "x-tenant": "a"}),
			authz.Decision{Reason: "JWT: token malformed"}},
		{"mesh-wide deny wins", api, req("", "GET", "/debug/pprof", map[string]string{"authorization": "Bearer " + token("admin")}),
			authz.Decision{Policy: "verge-system/no-debug", Rule: "debug", Reason: "denied by policy verge-system/no-debug rule debug"}},
		{"cel: partner gateway with a partner tenant", api, req(partnerGW, "GET", "/x", map[string]string{"x-tenant": "p-1"}),
			authz.Decision{Allowed: true, Policy: "shop/callers", Rule: "partners", Reason: "allowed by policy shop/callers rule partners"}},
		{"cel: partner gateway, other tenant", api, req(partnerGW, "GET", "/x", tenant),
			authz.Decision{Reason: "no ALLOW policy matched"}},
		{"cel: missing header is no match", api, req(partnerGW, "GET", "/x", nil),
			authz.Decision{Reason: "no ALLOW policy matched"}},
		// Rules are tried by name: batch-db before shop-db.
		{"cel on tcp", db, &authz.Request{Principal: "spiffe://verge.local/ns/shop/sa/batch", DestPort: 15432},
			authz.Decision{Allowed: true, Policy: "shop/callers", Rule: "batch-db", Reason: "allowed by policy shop/callers rule batch-db"}},
		{"tcp from shop", db, &authz.Request{Principal: web, DestPort: 15432},
			authz.Decision{Allowed: true, Policy: "shop/callers", Rule: "shop-db", Reason: "allowed by policy shop/callers rule shop-db"}},
		// The mesh-wide DENY rule keeps its L4 part on TCP: it denies
		// every connection from outside shop, as Istio does.
		{"tcp: deny keeps its L4 part", db, &authz.Request{Principal: other, DestPort: 15432},
			authz.Decision{Policy: "verge-system/no-debug", Rule: "debug", Reason: "denied by policy verge-system/no-debug rule debug"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.e.Check(tt.r)
			if got.Allowed != tt.want.Allowed || got.Policy != tt.want.Policy || got.Rule != tt.want.Rule ||
				got.Reason != tt.want.Reason || strings.Join(got.Audited, ",") != strings.Join(tt.want.Audited, ",") {
				t.Errorf("Check = %+v\nwant    %+v", got, tt.want)
			}
		})
	}
}

func TestAuthzNACK(t *testing.T) {
	rbacFilter := func(r *rbachttpv3.RBAC) *hcmv3.HttpFilter {
		return &hcmv3.HttpFilter{Name: "envoy.filters.http.rbac", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(r)}}
	}
	listener := func(filters ...*hcmv3.HttpFilter) *listenerv3.Listener {
		return listenerWith("inbound:8080", 15080, hcmFilter(&hcmv3.HttpConnectionManager{
			StatPrefix:     "in",
			RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{ConfigSource: adsSource(), RouteConfigName: "r"}},
			HttpFilters:    append(filters, routerFilter()),
		}))
	}
	anyPolicy := &rbacv3.Policy{
		Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_Any{Any: true}}},
		Principals:  []*rbacv3.Principal{{Identifier: &rbacv3.Principal_Any{Any: true}}},
	}
	tests := []struct {
		name string
		l    *listenerv3.Listener
		want string
	}{
		{"shadow rules", listener(rbacFilter(&rbachttpv3.RBAC{ShadowRules: &rbacv3.RBAC{}})),
			`listener "inbound:8080": filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.shadow_rules: unsupported (use action LOG)`},
		{"unsupported principal", listener(rbacFilter(&rbachttpv3.RBAC{Rules: &rbacv3.RBAC{Policies: map[string]*rbacv3.Policy{"p": {
			Permissions: anyPolicy.Permissions,
			Principals:  []*rbacv3.Principal{{Identifier: &rbacv3.Principal_FilterState{FilterState: &matcherv3.FilterStateMatcher{Key: "k", Matcher: &matcherv3.FilterStateMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "x"}}}}}}},
		}}}})),
			`listener "inbound:8080": filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.rules.policies["p"].principals[0]: unsupported principal *rbacv3.Principal_FilterState`},
		{"jwt after rbac", listener(
			rbacFilter(&rbachttpv3.RBAC{Rules: &rbacv3.RBAC{Policies: map[string]*rbacv3.Policy{"p": anyPolicy}}}),
			&hcmv3.HttpFilter{Name: "envoy.filters.http.jwt_authn", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&jwtv3.JwtAuthentication{})}}),
			`listener "inbound:8080": filter_chains[0].filters[0].typed_config.http_filters[1].typed_config: JWT authentication must come before the RBAC filters`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateListener(tt.l)
			if err == nil || err.Error() != tt.want {
				t.Errorf("ValidateListener = %v\nwant %s", err, tt.want)
			}
		})
	}
}
