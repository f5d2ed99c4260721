package xdsclient

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"verge.dev/verge/internal/ca"
	"verge.dev/verge/internal/proxy/config"
	"verge.dev/verge/internal/xds/translate"
)

// crlIssuer is a self-signed CA that signs CRLs, as the control plane's
// does.
type crlIssuer struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newCRLIssuer(t *testing.T) *crlIssuer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test root"},
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: "example.org"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		SubjectKeyId:          []byte{1, 2, 3, 4},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &crlIssuer{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// crl returns a PEM CRL listing serials.
func (c *crlIssuer) crl(t *testing.T, number int64, serials ...*big.Int) []byte {
	t.Helper()
	tmpl := &x509.RevocationList{
		Number:     big.NewInt(number),
		ThisUpdate: time.Now().Add(-time.Minute),
		NextUpdate: time.Now().Add(time.Hour),
	}
	for _, s := range serials {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries,
			x509.RevocationListEntry{SerialNumber: s, RevocationTime: time.Now()})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, c.cert, c.key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
}

// bundleSecret is the trust bundle secret as the control plane sends it
// (translate.TrustBundleSecret).
func bundleSecret(roots []byte, crl *corev3.DataSource) *tlsv3.Secret {
	return &tlsv3.Secret{Name: config.SecretTrustBundle, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		TrustedCa:             &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: roots}},
		Crl:                   crl,
		OnlyVerifyLeafCertCrl: crl != nil,
	}}}
}

func inlineString(s string) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: s}}
}

func TestSecretCRL(t *testing.T) {
	ca := newCRLIssuer(t)
	big1 := new(big.Int).Lsh(big.NewInt(0xabc), 100) // beyond 64 bits, as SVID serials are
	one := ca.crl(t, 1, big.NewInt(0x1f), big1)
	two := ca.crl(t, 2, big.NewInt(0x20))

	tests := []struct {
		name string
		crl  *corev3.DataSource
		want map[string]struct{}
	}{
		{"no crl", nil, nil},
		{"one block, inline bytes", &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: one}},
			map[string]struct{}{"1f": {}, big1.Text(16): {}}},
		{"two blocks, inline string", inlineString(string(one) + "\n" + string(two)),
			map[string]struct{}{"1f": {}, big1.Text(16): {}, "20": {}}},
		{"empty list", inlineString(string(ca.crl(t, 3))), map[string]struct{}{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := convertSecret(bundleSecret(ca.pem, tt.crl))
			if err != nil {
				t.Fatalf("convertSecret() = %v", err)
			}
			if diff := cmp.Diff(tt.want, got.Revoked); diff != "" {
				t.Errorf("Revoked mismatch (-want +got):\n%s", diff)
			}
			if got.TrustDomain != "example.org" || len(got.Roots) != 1 {
				t.Errorf("trust domain %q, %d roots; want example.org and 1", got.TrustDomain, len(got.Roots))
			}
		})
	}

	bad := []struct {
		name string
		crl  *corev3.DataSource
		want string
	}{
		{"garbage", inlineString("not a crl"), "validation_context.crl: data after the last PEM block"},
		{"no block", inlineString(""), "validation_context.crl: no CRL"},
		{"certificate block", inlineString(string(ca.pem)), `validation_context.crl: PEM block 0: type "CERTIFICATE", want X509 CRL`},
		{"bad der", inlineString(string(one) + string(pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: []byte("junk")}))),
			"validation_context.crl: PEM block 1: x509:"},
		{"trailing data", inlineString(string(one) + "junk"), "validation_context.crl: data after the last PEM block"},
		{"file", &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: "/etc/crl.pem"}},
			"validation_context.crl: only inline_bytes and inline_string are supported"},
	}
	t.Run("chain crl", func(t *testing.T) {
		s := bundleSecret(ca.pem, inlineString(string(one)))
		s.GetValidationContext().OnlyVerifyLeafCertCrl = false
		want := "validation_context.only_verify_leaf_cert_crl: must be true with a crl"
		if err := ValidateSecret(s); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ValidateSecret() = %v, want it to contain %q", err, want)
		}
	})
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateSecret(bundleSecret(ca.pem, tt.crl))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ValidateSecret() = %v, want it to contain %q", err, tt.want)
			}
			if err != nil && !strings.HasPrefix(err.Error(), `secret "ROOTCA": `) {
				t.Errorf("ValidateSecret() = %v, want it to name the secret", err)
			}
		})
	}
}

// TestSecretCRLFromControlPlane reads the secret the control plane builds
// (its CA's CRL in translate.TrustBundleSecret), so that both sides agree
// on the format.
func TestSecretCRLFromControlPlane(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("verge.local")
	c, err := ca.New(ca.Config{TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := c.SignCSR(csr, spiffeid.RequireFromPath(td, "/ns/default/sa/web"))
	if err != nil {
		t.Fatal(err)
	}
	leaf := chain[0]
	der, err := c.CRL([]ca.Revocation{{Serial: leaf.SerialNumber, RevokedAt: time.Now(), ExpiresAt: leaf.NotAfter}})
	if err != nil {
		t.Fatal(err)
	}
	var roots [][]byte
	for _, r := range c.Bundle().X509Authorities() {
		roots = append(roots, r.Raw)
	}
	got, err := convertSecret(translate.TrustBundleSecret(roots, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})))
	if err != nil {
		t.Fatalf("convertSecret() = %v", err)
	}
	if diff := cmp.Diff(map[string]struct{}{leaf.SerialNumber.Text(16): {}}, got.Revoked); diff != "" {
		t.Errorf("Revoked mismatch (-want +got):\n%s", diff)
	}
}
