package proxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"verge.dev/verge/internal/proxy/authz"
	"verge.dev/verge/internal/proxy/config"
)

// allowRBAC is an ALLOW policy: principal (exact) and, when set, a path
// prefix, both required.
func allowRBAC(t *testing.T, http bool, principal, pathPrefix string) *authz.Engine {
	t.Helper()
	perm := &rbacv3.Permission{Rule: &rbacv3.Permission_Any{Any: true}}
	if pathPrefix != "" {
		perm = &rbacv3.Permission{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{
			Rule: &matcherv3.PathMatcher_Path{Path: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: pathPrefix}}}}}}
	}
	prin := &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{Authenticated: &rbacv3.Principal_Authenticated{
		PrincipalName: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: principal}}}}}
	b := authz.NewBuilder(http)
	err := b.AddRBAC(&rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW, Policies: map[string]*rbacv3.Policy{
		"allow-frontend": {Permissions: []*rbacv3.Permission{perm}, Principals: []*rbacv3.Principal{prin}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return b.Engine()
}

// denyHeaderRBAC is a DENY policy on requests carrying a header value.
func denyHeaderRBAC(t *testing.T, name, value string) *authz.Engine {
	t.Helper()
	perm := &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: &routev3.HeaderMatcher{Name: name,
		HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: value}}}}}}
	b := authz.NewBuilder(true)
	err := b.AddRBAC(&rbacv3.RBAC{Action: rbacv3.RBAC_DENY, Policies: map[string]*rbacv3.Policy{
		"deny-header": {Permissions: []*rbacv3.Permission{perm}, Principals: []*rbacv3.Principal{{Identifier: &rbacv3.Principal_Any{Any: true}}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return b.Engine()
}

// withAuthz sets the engine on the snapshot's only listener.
func withAuthz(s *config.Snapshot, e *authz.Engine) *config.Snapshot {
	s.Listeners[0].Authz = e
	return s
}

const frontendID = "spiffe://verge.local/ns/default/sa/frontend"

func TestAuthzHTTPOverMTLS(t *testing.T) {
	_, in, out := meshIdentities(t)
	app := startBackend(t, "app", nil)
	o := meshOpts{appAddr: app.addr, kind: config.ListenerHTTP, appProto: config.UpstreamHTTP1, mode: config.TLSStrict, in: in, out: out}
	inbound := startProxy(t, identityConfig(in), withAuthz(inboundSnapshot(o), allowRBAC(t, true, frontendID, "/allowed")))
	outbound := startProxy(t, identityConfig(out), outboundSnapshot(o, inbound.addr(t, "inbound")))
	client := h1Client(t)
	base := "http://" + outbound.addr(t, "outbound")

	if r := mustDo(t, client, "GET", base+"/allowed/x", nil); r.status != http.StatusOK || r.backend != "app" {
		t.Errorf("allowed path: %+v, want 200 from app", r)
	}
	r := mustDo(t, client, "GET", base+"/other", nil)
	if r.status != http.StatusForbidden || r.body != deniedBody {
		t.Errorf("other path: status %d body %q, want 403 %q", r.status, r.body, deniedBody)
	}
	if got := app.hits.Load(); got != 1 {
		t.Errorf("app served %d requests, want 1", got)
	}

	// Another identity of the mesh is refused even on the allowed path.
	other := startProxy(t, identityConfig(in), outboundSnapshot(o, inbound.addr(t, "inbound")))
	if r := mustDo(t, client, "GET", "http://"+other.addr(t, "outbound")+"/allowed", nil); r.status != http.StatusForbidden {
		t.Errorf("allowed path as sa/backend: status %d, want 403", r.status)
	}
}

func TestAuthzHTTPFastPath(t *testing.T) {
	// A plaintext listener on the h1 engine: no principal, header rules.
	app := startBackend(t, "app", nil)
	s := inboundSnapshot(meshOpts{appAddr: app.addr, kind: config.ListenerHTTP, appProto: config.UpstreamHTTP1, noTLS: true})
	tp := startProxy(t, Config{}, withAuthz(s, denyHeaderRBAC(t, "x-verdict", "deny")))
	client := h1Client(t)
	url := "http://" + tp.addr(t, "inbound") + "/"

	if r := mustDo(t, client, "GET", url, map[string]string{"X-Verdict": "allow"}); r.status != http.StatusOK {
		t.Errorf("allowed: status %d, want 200", r.status)
	}
	r := mustDo(t, client, "GET", url, map[string]string{"X-Verdict": "deny"})
	if r.status != http.StatusForbidden || r.body != deniedBody {
		t.Errorf("denied: status %d body %q, want 403 %q", r.status, r.body, deniedBody)
	}
	// The same on net/http (h2c).
	r = mustDo(t, h2cClient(t), "GET", url, map[string]string{"X-Verdict": "deny"})
	if r.status != http.StatusForbidden || r.body != deniedBody {
		t.Errorf("denied over h2c: status %d body %q, want 403 %q", r.status, r.body, deniedBody)
	}
	if got := app.hits.Load(); got != 1 {
		t.Errorf("app served %d requests, want 1", got)
	}
}

func TestAuthzGRPC(t *testing.T) {
	_, in, out := meshIdentities(t)
	o := meshOpts{appAddr: startGRPCBackend(t, "g1"), kind: config.ListenerHTTP, appProto: config.UpstreamHTTP2, mode: config.TLSStrict}
	inbound := startProxy(t, identityConfig(in), withAuthz(inboundSnapshot(o), allowRBAC(t, true, frontendID, "/grpc.testing.TestService/UnaryCall")))
	outbound := startProxy(t, identityConfig(out), outboundSnapshot(o, inbound.addr(t, "inbound")))
	client, _ := grpcClient(t, outbound.addr(t, "outbound"))
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	if _, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{}); err != nil {
		t.Errorf("allowed method: %v", err)
	}
	_, err := client.EmptyCall(ctx, &testgrpc.Empty{})
	if st := status.Convert(err); st.Code() != codes.PermissionDenied || st.Message() != deniedBody {
		t.Errorf("denied method: %v, want PermissionDenied %q", err, deniedBody)
	}
}

func TestAuthzTCP(t *testing.T) {
	_, in, out := meshIdentities(t)
	echo, conns := startEcho(t)
	o := meshOpts{appAddr: echo, kind: config.ListenerTCP, mode: config.TLSStrict}
	for _, tc := range []struct {
		name    string
		allowed string
		want    bool
	}{{"allowed", frontendID, true}, {"denied", "spiffe://verge.local/ns/default/sa/nobody", false}} {
		t.Run(tc.name, func(t *testing.T) {
			before := conns()
			inbound := startProxy(t, identityConfig(in), withAuthz(inboundSnapshot(o), allowRBAC(t, false, tc.allowed, "")))
			outbound := startProxy(t, identityConfig(out), outboundSnapshot(o, inbound.addr(t, "inbound")))
			c, err := net.Dial("tcp", outbound.addr(t, "outbound"))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			_, _ = io.WriteString(c, "ping")
			_ = c.(*net.TCPConn).CloseWrite()
			got, _ := io.ReadAll(c)
			if ok := string(got) == "ping"; ok != tc.want {
				t.Errorf("echoed %q, want echo %v", got, tc.want)
			}
			if !tc.want && conns() != before {
				t.Errorf("denied connection reached the application")
			}
		})
	}
}
