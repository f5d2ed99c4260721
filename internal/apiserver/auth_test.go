package apiserver_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"verge.dev/verge/internal/apiserver"
	"verge.dev/verge/internal/ca"
	"verge.dev/verge/internal/store/bolt"
)

const testAdminToken = "vadm.unit-test-admin-token"

// guardEnv is the resource API behind a Guard, called in-process with the
// TLS state a listener would have verified.
type guardEnv struct {
	t       *testing.T
	h       http.Handler
	ca      *ca.CA
	td      spiffeid.TrustDomain
	metrics *prometheus.Registry
}

func newGuardEnv(t *testing.T, allowAnonymous bool) *guardEnv {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(t.Output(), nil))
	st, err := bolt.Open(filepath.Join(t.TempDir(), "verge.db"), logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	td := spiffeid.RequireTrustDomainFromString("verge.local")
	authority, err := ca.New(ca.Config{TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	adminID, _ := ca.WorkloadID(td, "verge-system", "admin")
	metrics := prometheus.NewRegistry()
	g, err := apiserver.NewGuard(st, apiserver.AuthConfig{
		TrustDomain: td, Bundle: authority.Bundle(), AdminToken: testAdminToken, AdminID: adminID,
		AllowAnonymous: allowAnonymous, Registerer: metrics,
	}, logger)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/apis/", apiserver.New(st, logger).Handler())
	mux.HandleFunc("/api/v1/", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) })
	return &guardEnv{t: t, h: g.Wrap(mux), ca: authority, td: td, metrics: metrics}
}

// chain is an SVID chain for ns/sa signed by c.
func chain(t *testing.T, c *ca.CA, td spiffeid.TrustDomain, ns, sa string) []*x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := ca.WorkloadID(td, ns, sa)
	certs, err := c.SignCSR(csr, id)
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

func (e *guardEnv) do(method, path, token string, peer []*x509.Certificate, body string) (int, string) {
	e.t.Helper()
	req := httptest.NewRequestWithContext(e.t.Context(), method, path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if peer != nil {
		req.TLS = &tls.ConnectionState{PeerCertificates: peer}
	}
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

func wlPath(ns, name string) string {
	return "/apis/verge.dev/v1alpha1/namespaces/" + ns + "/workloads/" + name
}

func wlBody(name, sa string) string {
	return fmt.Sprintf(`{"apiVersion":"verge.dev/v1alpha1","kind":"Workload","metadata":{"name":%q},
		"spec":{"address":"127.0.0.1","serviceAccount":%q}}`, name, sa)
}

const guardSvcPath = "/apis/verge.dev/v1alpha1/namespaces/default/services"
const guardSvcBody = `{"apiVersion":"verge.dev/v1alpha1","kind":"Service","metadata":{"name":"web"},"spec":{"ports":[{"port":80}]}}`

func TestGuard(t *testing.T) {
	e := newGuardEnv(t, false)
	admin := chain(t, e.ca, e.td, "verge-system", "admin")
	web := chain(t, e.ca, e.td, "default", "web")
	other, err := ca.New(ca.Config{TrustDomain: e.td})
	if err != nil {
		t.Fatal(err)
	}
	foreign := chain(t, other, e.td, "verge-system", "admin")
	// db-1 runs as "db"; the default service account is "default".
	if code, body := e.do(http.MethodPut, wlPath("default", "db-1"), testAdminToken, nil, wlBody("db-1", "db")); code != http.StatusCreated {
		t.Fatalf("seed: %d %s", code, body)
	}
	for _, tc := range []struct {
		name, method, path, token string
		peer                      []*x509.Certificate
		body                      string
		code                      int
		msg                       string
	}{
		{"anonymous read", http.MethodGet, guardSvcPath, "", nil, "", http.StatusOK, ""},
		{"anonymous write", http.MethodPost, guardSvcPath, "", nil, guardSvcBody, http.StatusUnauthorized, "authentication required"},
		{"anonymous token list", http.MethodGet, "/api/v1/tokens", "", nil, "", http.StatusUnauthorized, "join tokens need an admin token"},
		{"anonymous token list, unclean path", http.MethodGet, "/api/v1//tokens/", "", nil, "", http.StatusUnauthorized, ""},
		{"wrong token on a read", http.MethodGet, guardSvcPath, "vadm.wrong", nil, "", http.StatusUnauthorized, "not a valid admin token"},
		{"join token to certificates", http.MethodPost, "/api/v1/certificates", "vt1.0123456789abcdef.x", nil, "{}", http.StatusTeapot, ""},
		{"anonymous certificates", http.MethodPost, "/api/v1/certificates", "", nil, "{}", http.StatusTeapot, ""},
		{"anonymous certificate list", http.MethodGet, "/api/v1/certificates", "", nil, "", http.StatusUnauthorized, "certificate listings and revocations need"},
		{"anonymous revocation", http.MethodPost, "/api/v1/certificates/ab/revoke", "", nil, "", http.StatusUnauthorized, "certificate listings and revocations need"},
		{"join token to a revocation", http.MethodPost, "/api/v1/certificates/ab/revoke", "vt1.0123456789abcdef.x", nil, "", http.StatusUnauthorized, "not a valid admin token"},
		{"workload lists certificates", http.MethodGet, "/api/v1/certificates", "", web, "", http.StatusForbidden, "is not an administrator"},
		{"workload revokes", http.MethodPost, "/api/v1/certificates/ab/revoke", "", web, "", http.StatusForbidden, "is not an administrator"},
		{"admin lists certificates", http.MethodGet, "/api/v1/certificates", testAdminToken, nil, "", http.StatusTeapot, ""},
		{"admin token", http.MethodPost, guardSvcPath, testAdminToken, nil, guardSvcBody, http.StatusCreated, ""},
		{"admin svid", http.MethodPost, "/api/v1/ca/rotate", "", admin, "{}", http.StatusTeapot, ""},
		{"foreign svid", http.MethodGet, guardSvcPath, "", foreign, "", http.StatusUnauthorized, "not a valid SVID"},
		{"workload writes a service", http.MethodPut, guardSvcPath + "/web", "", web, guardSvcBody, http.StatusForbidden, "is not an administrator"},
		{"workload registers itself", http.MethodPut, wlPath("default", "web-1"), "", web, wlBody("web-1", "web"), http.StatusCreated, ""},
		{"workload with the default account", http.MethodPut, wlPath("default", "web-2"), "", web, `{"metadata":{"name":"web-2"},"spec":{"address":"127.0.0.1"}}`, http.StatusForbidden, `spec.serviceAccount is "default"`},
		{"workload takes over db-1", http.MethodPut, wlPath("default", "db-1"), "", web, wlBody("db-1", "web"), http.StatusForbidden, `runs as service account "db"`},
		{"workload deletes db-1", http.MethodDelete, wlPath("default", "db-1"), "", web, "", http.StatusForbidden, `runs as service account "db"`},
		{"workload in another namespace", http.MethodPut, wlPath("prod", "web-1"), "", web, wlBody("web-1", "web"), http.StatusForbidden, `its namespace is "default"`},
		{"workload, unclean path", http.MethodPut, wlPath("default", "x/../web-1"), "", web, wlBody("web-1", "web"), http.StatusForbidden, "is not an administrator"},
		{"workload health of db-1", http.MethodPut, "/api/v1/health/default/db-1", "", web, `{"ready":true}`, http.StatusForbidden, `runs as service account "db"`},
		{"workload health of itself", http.MethodPut, "/api/v1/health/default/web-1", "", web, `{"ready":true}`, http.StatusTeapot, ""},
		{"workload body too large", http.MethodPut, wlPath("default", "web-3"), "", web, strings.Repeat(" ", apiserver.MaxBodyBytes+1), http.StatusRequestEntityTooLarge, ""},
		{"workload body not a workload", http.MethodPut, wlPath("default", "web-3"), "", web, guardSvcBody, http.StatusBadRequest, ""},
		{"workload deletes itself", http.MethodDelete, wlPath("default", "web-1"), "", web, "", http.StatusOK, ""},
	} {
		code, body := e.do(tc.method, tc.path, tc.token, tc.peer, tc.body)
		if code != tc.code || !strings.Contains(strings.ReplaceAll(body, `\"`, `"`), tc.msg) {
			t.Errorf("%s: %d %s, want %d naming %q", tc.name, code, body, tc.code, tc.msg)
		}
		if code == http.StatusUnauthorized || code == http.StatusForbidden {
			if !strings.Contains(body, `"kind":"Status"`) {
				t.Errorf("%s: refusal is not a Status: %s", tc.name, body)
			}
		}
	}
}

func TestGuardAllowAnonymous(t *testing.T) {
	e := newGuardEnv(t, true)
	if code, body := e.do(http.MethodPost, guardSvcPath, "", nil, guardSvcBody); code != http.StatusCreated {
		t.Errorf("anonymous write = %d %s", code, body)
	}
	if code, body := e.do(http.MethodPost, guardSvcPath, "vadm.wrong", nil, guardSvcBody); code != http.StatusUnauthorized {
		t.Errorf("wrong token = %d %s", code, body)
	}
	// A workload identity is held to its workload all the same.
	web := chain(t, e.ca, e.td, "default", "web")
	if code, body := e.do(http.MethodPut, wlPath("default", "db-1"), "", web, wlBody("db-1", "db")); code != http.StatusForbidden {
		t.Errorf("workload svid writes another service's workload = %d %s", code, body)
	}
	if code, body := e.do(http.MethodPut, wlPath("default", "web-1"), "", web, wlBody("web-1", "web")); code != http.StatusCreated {
		t.Errorf("workload svid writes its own workload = %d %s", code, body)
	}
}
