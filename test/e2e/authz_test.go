package e2e

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// jwtIssuer signs tokens with a key whose JWKS it wrote to a file.
type jwtIssuer struct {
	signer   jose.Signer
	jwksFile string
}

func newJWTIssuer(t *testing.T) *jwtIssuer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwk := jose.JSONWebKey{Key: key, KeyID: "e2e", Algorithm: string(jose.ES256), Use: "sig"}
	set, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{jwk.Public()}})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(file, set, 0o644); err != nil {
		t.Fatal(err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jwk},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	return &jwtIssuer{signer: signer, jwksFile: file}
}

func (j *jwtIssuer) token(t *testing.T, groups ...string) string {
	t.Helper()
	claims := map[string]any{"iss": "e2e", "sub": "alice", "aud": "api",
		"exp": time.Now().Add(time.Hour).Unix(), "groups": groups}
	s, err := jwt.Signed(j.signer).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestAuthorizationPolicy: ALLOW, DENY and AUDIT policies at the api
// workload's proxy decide HTTP, gRPC and TCP from two callers by service
// account, method, path, a JWT claim and a CEL condition; denials answer
// 403, PERMISSION_DENIED or a closed connection, and every deny and audit
// decision is counted and written to the audit log.
func TestAuthorizationPolicy(t *testing.T) {
	t.Parallel()
	issuer := newJWTIssuer(t)
	auditLog := filepath.Join(t.TempDir(), "audit.log")
	f := newZTFixture(t, nil, "web", "other")
	// The api proxy was started by the fixture without an audit log;
	// restart it with one (same data dir: it keeps its identity).
	f.api.stop(10 * time.Second)
	f.api = startProxy(t, f.cp, proxyOpts{name: "api-0", labels: "app=api", host: f.apiH, sa: "api", dataDir: f.apiDir,
		inbound: []string{"8080=15006", "9000=15090", "7000=15070"},
		extra:   []string{"--workload-api-socket", "off", "--audit-log", auditLog}})
	f.api.waitReady(t)
	web, other := f.callers["web"], f.callers["other"]
	c := &http.Client{Timeout: 10 * time.Second}
	waitAPI(t, c, web.httpURL+"/")

	f.cp.apply(t, fmt.Sprintf(`apiVersion: verge.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: api-allow}
spec:
  service: api
  action: ALLOW
  jwt:
    providers:
    - {issuer: e2e, audiences: [api], jwksFile: %q}
  rules:
  - name: web-get
    from: [{serviceAccounts: [default/web]}]
    to: [{methods: [GET], ports: [8080]}]
  - name: web-grpc-tcp
    from: [{principals: ["spiffe://verge.local/ns/default/sa/web"]}]
    to: [{ports: [9000, 7000]}]
  - name: readers
    from: [{serviceAccounts: [default/other]}]
    to: [{paths: ["/jwt*"]}]
    when: [{claim: groups, values: [readers]}]
  - name: tenant-a
    from: [{namespaces: [default]}]
    cel: 'request.headers["x-tenant"] == "a" && source.serviceAccount == "other"'
---
apiVersion: verge.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: api-deny}
spec:
  service: api
  action: DENY
  rules:
  # On a TCP port a DENY rule keeps only its L4 part (Istio's rule: deny
  # more rather than less), so the port keeps this one off the TCP port.
  - name: admin
    to: [{paths: ["/admin*"], ports: [8080]}]
---
apiVersion: verge.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: api-audit}
spec:
  service: api
  action: AUDIT
  rules:
  - name: audited
    to: [{paths: ["/audited*"]}]
`, issuer.jwksFile))

	cases := []struct {
		name   string
		url    string
		method string
		hdr    []string
		want   int
	}{
		{"web GET allowed", web.httpURL + "/x", "GET", nil, 200},
		{"web GET audited", web.httpURL + "/audited", "GET", nil, 200},
		{"web POST not allowed", web.httpURL + "/x", "POST", nil, 403},
		{"DENY wins over ALLOW", web.httpURL + "/admin/users", "GET", nil, 403},
		{"other without grounds", other.httpURL + "/x", "GET", nil, 403},
		{"other with a readers JWT", other.httpURL + "/jwt/x", "GET", []string{"Authorization", "Bearer " + issuer.token(t, "readers")}, 200},
		{"other with a writers JWT", other.httpURL + "/jwt/x", "GET", []string{"Authorization", "Bearer " + issuer.token(t, "writers")}, 403},
		{"other with a forged JWT", other.httpURL + "/jwt/x", "GET", []string{"Authorization", "Bearer " + newJWTIssuer(t).token(t, "readers")}, 403},
		{"other, CEL true", other.httpURL + "/x", "GET", []string{"x-tenant", "a"}, 200},
		{"other, CEL false", other.httpURL + "/x", "GET", []string{"x-tenant", "b"}, 403},
	}
	do := func(method, url string, hdr []string) (int, error) {
		req, err := http.NewRequestWithContext(t.Context(), method, url, nil)
		if err != nil {
			return 0, err
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := c.Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	// The policies arrive asynchronously: wait until the first deny shows.
	eventually(t, 20*time.Second, func() error {
		if code, err := do("GET", other.httpURL+"/x", nil); err != nil || code != 403 {
			return fmt.Errorf("policy not in force yet: %d %v", code, err)
		}
		return nil
	})
	for _, tc := range cases {
		code, err := do(tc.method, tc.url, tc.hdr)
		if err != nil || code != tc.want {
			t.Errorf("%s: got %d %v, want %d", tc.name, code, err, tc.want)
		}
	}

	// gRPC: web is allowed, other gets PERMISSION_DENIED.
	if err := grpcCall(t.Context(), web.grpc); err != nil {
		t.Errorf("web gRPC: %v", err)
	}
	if err := grpcCall(t.Context(), other.grpc); status.Code(err) != codes.PermissionDenied {
		t.Errorf("other gRPC: got %v, want PermissionDenied", err)
	}
	// TCP: web's connection is proxied, other's is closed.
	if err := tcpRoundTrip(web.tcp); err != nil {
		t.Errorf("web TCP: %v", err)
	}
	if err := tcpRoundTrip(other.tcp); err == nil {
		t.Error("other TCP: connection not closed")
	}

	stats := f.api.admin + "/stats/prometheus"
	waitMetric(t, stats, "verge_authz_decisions_total", map[string]string{"action": "deny"}, 6)
	waitMetric(t, stats, "verge_authz_decisions_total", map[string]string{"action": "allow"}, 4)

	// The audit log has the DENY policy's decision and the AUDIT match,
	// each with its source and reason.
	eventually(t, 10*time.Second, func() error {
		fh, err := os.Open(auditLog)
		if err != nil {
			return err
		}
		defer fh.Close()
		var sawDeny, sawAudit bool
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			var l struct {
				Decision, Principal, Path, Policy, Reason string
			}
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				return fmt.Errorf("audit line %q: %w", sc.Text(), err)
			}
			var raw map[string]any
			_ = json.Unmarshal(sc.Bytes(), &raw)
			principal, _ := raw["source_principal"].(string)
			switch {
			case l.Decision == "deny" && strings.HasPrefix(l.Path, "/admin") && strings.Contains(l.Policy, "api-deny") &&
				principal == "spiffe://verge.local/ns/default/sa/web" && l.Reason != "":
				sawDeny = true
			case l.Decision == "audit" && l.Path == "/audited" && strings.Contains(l.Policy, "api-audit"):
				sawAudit = true
			}
		}
		if !sawDeny || !sawAudit {
			return errors.New("audit log lacks the deny or the audit line")
		}
		return nil
	})
}
