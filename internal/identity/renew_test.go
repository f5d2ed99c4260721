package identity

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"verge.dev/verge/internal/ca"
)

// TestRenewCertificate: without a bearer token, the verified client
// certificate names the identity a CSR gets; anything else is refused.
func TestRenewCertificate(t *testing.T) {
	f := newFixture(t, nil)
	web := spiffeid.RequireFromString("spiffe://verge.local/ns/default/sa/web")
	chainFor := func(c *ca.CA, id spiffeid.ID) []*x509.Certificate {
		t.Helper()
		chain, err := c.SignCSR(newCSR(t, p256(t)), id)
		if err != nil {
			t.Fatal(err)
		}
		return chain
	}
	other, err := ca.New(ca.Config{TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	renew := func(peer []*x509.Certificate, body string) (int, []byte) {
		t.Helper()
		req := httptest.NewRequestWithContext(t.Context(), http.MethodPost, CertificatesPath, strings.NewReader(body))
		req.TLS = &tls.ConnectionState{PeerCertificates: peer}
		rec := httptest.NewRecorder()
		f.srv.Handler().ServeHTTP(rec, req)
		return rec.Code, rec.Body.Bytes()
	}

	before := counterValue(t, f.srv.issued)
	code, b := renew(chainFor(f.srv.ca, web), csrBody(newCSR(t, p256(t))))
	if code != http.StatusOK {
		t.Fatalf("renew: %d %s", code, b)
	}
	if id := f.verify(t, b, true); id != web {
		t.Errorf("renewed %s, want %s", id, web)
	}
	if got := counterValue(t, f.srv.issued); got != before+1 {
		t.Errorf("issued = %v, want %v", got, before+1)
	}
	// A CSR may name the same identity, not another.
	if code, b := renew(chainFor(f.srv.ca, web), csrBody(newCSR(t, p256(t), web.String()))); code != http.StatusOK {
		t.Errorf("renew with own uri san: %d %s", code, b)
	}
	for _, tc := range []struct {
		name   string
		peer   []*x509.Certificate
		body   string
		code   int
		reason string
	}{
		{"another identity", chainFor(f.srv.ca, web), csrBody(newCSR(t, p256(t), "spiffe://verge.local/ns/default/sa/db")), http.StatusForbidden, ReasonIdentityMismatch},
		{"foreign ca", chainFor(other, web), csrBody(newCSR(t, p256(t))), http.StatusUnauthorized, ReasonInvalidCertificate},
		{"bad csr", chainFor(f.srv.ca, web), `{"csr":"AAAA"}`, http.StatusBadRequest, ReasonBadCSR},
	} {
		before := counterValue(t, f.srv.refusals.WithLabelValues(tc.reason))
		if code, b := renew(tc.peer, tc.body); code != tc.code {
			t.Errorf("%s: %d %s, want %d", tc.name, code, b, tc.code)
		}
		if got := counterValue(t, f.srv.refusals.WithLabelValues(tc.reason)); got != before+1 {
			t.Errorf("%s: refusals{%s} = %v, want %v", tc.name, tc.reason, got, before+1)
		}
	}
}

// TestOnRotate: the hook runs after a rotation, with the new root in the
// bundle.
func TestOnRotate(t *testing.T) {
	f := newFixture(t, nil)
	var roots []int
	f.srv.onRotate = func() { roots = append(roots, len(f.srv.ca.Bundle().X509Authorities())) }
	if code, b := f.do(t, http.MethodPost, RotatePath, "", `{"overlap":"1h"}`); code != http.StatusOK {
		t.Fatalf("rotate: %d %s", code, b)
	}
	if len(roots) != 1 || roots[0] != 2 {
		t.Errorf("OnRotate saw bundles of %v roots, want one call with 2", roots)
	}
}
