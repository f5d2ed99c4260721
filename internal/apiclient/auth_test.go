package apiclient_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"verge.dev/verge/internal/apiclient"
	"verge.dev/verge/internal/ca"
)

// svid signs an X.509 SVID for ns/sa with authority.
func svid(t *testing.T, authority *ca.CA, ns, sa string) *x509svid.SVID {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	id, err := ca.WorkloadID(spiffeid.RequireTrustDomainFromString("verge.local"), ns, sa)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := authority.SignCSR(csr, id)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}
}

// TestServerTLSConfigClientSVID checks that the configuration presents the
// client SVID to a server that requires one, and verifies the server by its
// SPIFFE ID: the control plane's is accepted, a workload's is not.
func TestServerTLSConfigClientSVID(t *testing.T) {
	authority, err := ca.New(ca.Config{TrustDomain: spiffeid.RequireTrustDomainFromString("verge.local")})
	if err != nil {
		t.Fatal(err)
	}
	var bundlePEM []byte
	roots := x509.NewCertPool()
	for _, r := range authority.Bundle().X509Authorities() {
		roots.AddCert(r)
		bundlePEM = append(bundlePEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
	}
	serve := func(t *testing.T, serverSA string) string {
		t.Helper()
		s := svid(t, authority, "verge-system", serverSA)
		hs := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			id, _, err := x509svid.Verify(r.TLS.PeerCertificates, authority.Bundle())
			if err != nil {
				http.Error(w, err.Error(), http.StatusUnauthorized)
				return
			}
			io.WriteString(w, id.String())
		}))
		hs.TLS = &tls.Config{
			MinVersion:   tls.VersionTLS13,
			Certificates: []tls.Certificate{{Certificate: [][]byte{s.Certificates[0].Raw}, PrivateKey: s.PrivateKey}},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    roots,
		}
		hs.StartTLS()
		t.Cleanup(hs.Close)
		return hs.URL
	}
	get := func(t *testing.T, url string, client *x509svid.SVID) (string, error) {
		t.Helper()
		var src x509svid.Source
		if client != nil {
			src = client
		}
		tc, err := apiclient.ServerTLSConfig(bundlePEM, src)
		if err != nil {
			t.Fatal(err)
		}
		tr := &http.Transport{TLSClientConfig: tc}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr}).Get(url)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}

	admin := svid(t, authority, "verge-system", "admin")
	cp := serve(t, "control-plane")
	if got, err := get(t, cp, admin); err != nil || got != "spiffe://verge.local/ns/verge-system/sa/admin" {
		t.Errorf("with client svid: %q %v", got, err)
	}
	if _, err := get(t, cp, nil); err == nil {
		t.Error("without a client svid, a server that requires one answered")
	}
	impostor := serve(t, "web")
	if _, err := get(t, impostor, admin); err == nil || !strings.Contains(err.Error(), "unexpected ID") {
		t.Errorf("server with a workload's svid: %v", err)
	}
}
