package cli

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"verge.dev/verge/internal/apiserver"
	"verge.dev/verge/internal/ca"
	"verge.dev/verge/internal/store/bolt"
)

const cliAdminToken = "vadm.cli-test-token-0123456789"

// guardedServer is the real API behind the real guard, over plaintext and
// over TLS with a control plane SVID; it returns both URLs and the bundle
// PEM file.
func guardedServer(t *testing.T) (plainURL, tlsURL, bundleFile string) {
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
	g, err := apiserver.NewGuard(st, apiserver.AuthConfig{TrustDomain: td, Bundle: authority.Bundle(), AdminToken: cliAdminToken}, logger)
	if err != nil {
		t.Fatal(err)
	}
	h := g.Wrap(apiserver.New(st, logger).Handler())
	plain := httptest.NewServer(h)
	t.Cleanup(plain.Close)

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	cpID, _ := ca.WorkloadID(td, "verge-system", "control-plane")
	chain, err := authority.SignCSR(csr, cpID)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewUnstartedServer(h)
	hs.TLS = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{{Certificate: [][]byte{chain[0].Raw}, PrivateKey: key}}}
	hs.StartTLS()
	t.Cleanup(hs.Close)

	var pemBundle []byte
	for _, r := range authority.Bundle().X509Authorities() {
		pemBundle = append(pemBundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
	}
	bundleFile = filepath.Join(t.TempDir(), "bundle.pem")
	if err := os.WriteFile(bundleFile, pemBundle, 0o600); err != nil {
		t.Fatal(err)
	}
	return plain.URL, hs.URL, bundleFile
}

func TestCredentials(t *testing.T) {
	plainURL, tlsURL, bundleFile := guardedServer(t)
	files := writeFiles(t, map[string]string{"svc.yaml": `apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: web}
spec:
  ports: [{port: 80}]
`})
	svc := filepath.Join(files, "svc.yaml")
	tokenFile := filepath.Join(t.TempDir(), "admin-token")
	if err := os.WriteFile(tokenFile, []byte(cliAdminToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	_, _, err := run(t, plainURL, "", "apply", "-f", svc)
	if msg := FormatError(err); err == nil || !strings.Contains(msg, "not authenticated: pass --token or set VERGE_TOKEN") {
		t.Errorf("apply without a token: %q", msg)
	}
	mustRun(t, plainURL, "", "--token", cliAdminToken, "apply", "-f", svc)
	mustRun(t, plainURL, "", "--token-file", tokenFile, "delete", "service", "web")
	t.Setenv("VERGE_TOKEN", cliAdminToken)
	mustRun(t, plainURL, "", "apply", "-f", svc)

	if out := mustRun(t, tlsURL, "", "--ca-file", bundleFile, "get", "services"); !strings.Contains(out, "web") {
		t.Errorf("get over https: %q", out)
	}
	mustRun(t, tlsURL, "", "--ca-file", bundleFile, "delete", "service", "web")
	_, _, err = run(t, tlsURL, "", "get", "services")
	if ExitCode(err) != 2 || !strings.Contains(FormatError(err), "--ca-file") {
		t.Errorf("https without --ca-file: exit %d %q", ExitCode(err), FormatError(err))
	}
	// A bundle of another mesh does not verify the server.
	other := filepath.Join(t.TempDir(), "other.pem")
	otherCA, err := ca.New(ca.Config{TrustDomain: spiffeid.RequireTrustDomainFromString("verge.local")})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(other, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: otherCA.Bundle().X509Authorities()[0].Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := run(t, tlsURL, "", "--ca-file", other, "get", "services"); err == nil {
		t.Error("get over https with another mesh's bundle succeeded")
	}
}
