package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	spiffewl "github.com/spiffe/go-spiffe/v2/workloadapi"

	"verge.dev/verge/internal/ca"
	"verge.dev/verge/internal/identity"
	"verge.dev/verge/internal/proxy"
	"verge.dev/verge/internal/proxy/svid"
)

// tlsControlPlane is the real CA and identity API over TLS with the control
// plane's SVID; it records the verified client identity of every workload
// registration and readiness report.
type tlsControlPlane struct {
	ca  *ca.CA
	api http.Handler
	mu  sync.Mutex
	ids []string // "METHOD path id"
}

func (cp *tlsControlPlane) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == identity.CertificatesPath {
		cp.api.ServeHTTP(w, r)
		return
	}
	id := "anonymous"
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		v, _, err := x509svid.Verify(r.TLS.PeerCertificates, cp.ca.Bundle())
		if err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		id = v.String()
	}
	cp.mu.Lock()
	cp.ids = append(cp.ids, r.Method+" "+r.URL.Path+" "+id)
	cp.mu.Unlock()
	io.Copy(io.Discard, r.Body)
}

func (cp *tlsControlPlane) calls() []string {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return append([]string(nil), cp.ids...)
}

// With a join token the agent obtains its SVID, registers and reports over
// mutual TLS with it, serves the Workload API and exports the SVID metrics.
func TestRunWithIdentity(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("verge.local")
	c, err := ca.New(ca.Config{TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	tokens := ca.NewTokens(td, ca.NewMemTokenStore(), nil)
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
	ids, err := identity.New(identity.Config{CA: c, Tokens: tokens, Persist: func(*ca.Material) error { return nil }}, logger)
	if err != nil {
		t.Fatal(err)
	}
	secret, _, err := tokens.Create(t.Context(), ca.TokenSpec{Namespace: "default", ServiceAccount: "web", TTL: time.Hour, Uses: 1})
	if err != nil {
		t.Fatal(err)
	}

	// The control plane's server certificate: its SVID.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	cpID, _ := spiffeid.FromPath(td, svid.ControlPlanePath)
	chain, err := c.SignCSR(csr, cpID)
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{PrivateKey: key}
	for _, x := range chain {
		cert.Certificate = append(cert.Certificate, x.Raw)
	}
	cp := &tlsControlPlane{ca: c, api: ids.Handler()}
	srv := httptest.NewUnstartedServer(cp)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequestClientCert, MinVersion: tls.VersionTLS13}
	srv.StartTLS()
	defer srv.Close()

	dataDir := t.TempDir()
	caFile := filepath.Join(dataDir, "ca.pem")
	var roots []byte
	for _, r := range c.Bundle().X509Authorities() {
		roots = append(roots, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
	}
	if err := os.WriteFile(caFile, roots, 0o600); err != nil {
		t.Fatal(err)
	}
	sockDir, err := os.MkdirTemp("", "vwl")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	sock := filepath.Join(sockDir, "spiffe.sock")

	xds, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	xdsAddr := xds.Addr().String()
	xds.Close() // nothing serves xDS: the client keeps retrying

	cfg := Config{
		Server: srv.URL, XDSAddr: xdsAddr, Name: "w", Namespace: "default", Address: "127.0.0.1",
		ServiceAccount: "web", AdminAddr: "127.0.0.1:0", DataDir: dataDir,
		JoinToken: string(secret), CAFile: caFile, WorkloadAPISocket: sock,
		Proxy: proxy.Config{DrainTimeout: time.Second},
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	admin := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, logger, func(a Addrs) { admin <- a.Admin }) }()
	adminAddr := <-admin

	wantID := "spiffe://verge.local/ns/default/sa/web"
	waitFor(t, "registration and report over mTLS", func() bool {
		var reg, rep bool
		for _, c := range cp.calls() {
			reg = reg || (strings.HasPrefix(c, "PUT /apis/verge.dev/v1alpha1/namespaces/default/workloads/w ") && strings.HasSuffix(c, wantID))
			rep = rep || (strings.HasPrefix(c, "PUT /api/v1/health/default/w ") && strings.HasSuffix(c, wantID))
		}
		return reg && rep
	})
	for _, c := range cp.calls() {
		if !strings.HasSuffix(c, wantID) {
			t.Errorf("call %q without the workload's SVID", c)
		}
	}

	wctx, wcancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer wcancel()
	got, err := spiffewl.FetchX509SVID(wctx, spiffewl.WithAddr("unix://"+sock))
	if err != nil {
		t.Fatalf("Workload API FetchX509SVID: %v", err)
	}
	if got.ID.String() != wantID {
		t.Errorf("Workload API SVID = %v, want %s", got.ID, wantID)
	}

	client := &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	res, err := client.Get("http://" + adminAddr + "/stats/prometheus")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	for _, m := range []string{"verge_proxy_svid_expiry_timestamp_seconds", "verge_proxy_svid_renewals_total", "verge_authz_audit_dropped_total", "go_goroutines"} {
		if !strings.Contains(string(body), m) {
			t.Errorf("/stats/prometheus lacks %s", m)
		}
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run() = %v, want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if !svid.HasPersisted(dataDir) {
		t.Error("SVID not persisted in the data dir")
	}
	if _, err := os.Lstat(sock); err == nil {
		t.Error("Workload API socket left behind")
	}
}
