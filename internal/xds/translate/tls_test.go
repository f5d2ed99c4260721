package translate

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
)

// TestMTLSNeedsBundle checks that Validate refuses TLS contexts whose trust
// bundle secret is not among the resources: a proxy would wait for it.
func TestMTLSNeedsBundle(t *testing.T) {
	m := loadMesh(t, "testdata/mtls")
	ix := NewIndex(m)
	for _, wl := range m.Workloads {
		if wl.Name != "web-1" {
			continue
		}
		err := ix.ForWorkload(wl).Validate()
		if err == nil || !strings.Contains(err.Error(), `secret "ROOTCA" is referenced but missing`) {
			t.Errorf("Validate() = %v, want the missing ROOTCA secret", err)
		}
	}
}

// TestMTLSOffIgnoresMeshTLS checks that without Mesh.MTLS, MeshTLS objects
// and the trust domain change nothing.
func TestMTLSOffIgnoresMeshTLS(t *testing.T) {
	m := loadMesh(t, "testdata/mtls")
	m.MTLS = false
	plain := m
	plain.MeshTLSes, plain.TrustDomain = nil, ""
	a, b := NewIndex(m), NewIndex(plain)
	for _, wl := range m.Workloads {
		if diff := cmp.Diff(b.ForWorkload(wl), a.ForWorkload(wl), protocmp.Transform()); diff != "" {
			t.Errorf("%s (-without +with MeshTLS):\n%s", wl.Name, diff)
		}
	}
}

func TestSPIFFEID(t *testing.T) {
	if got, want := SPIFFEID("", "shop", "web"), "spiffe://verge.local/ns/shop/sa/web"; got != want {
		t.Errorf("SPIFFEID = %q, want %q", got, want)
	}
}

// TestTrustBundleSecretCRL: the CRL rides in validation_context.crl, inline,
// only when there is one, and the secret stays valid Envoy.
func TestTrustBundleSecretCRL(t *testing.T) {
	roots := [][]byte{[]byte("root")}
	crl := []byte("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")
	with := TrustBundleSecret(roots, crl)
	if err := with.ValidateAll(); err != nil {
		t.Fatalf("ValidateAll: %v", err)
	}
	vc := with.GetValidationContext()
	if got := vc.GetCrl().GetInlineBytes(); string(got) != string(crl) || !vc.GetOnlyVerifyLeafCertCrl() {
		t.Errorf("crl %q, only leaf %v", got, vc.GetOnlyVerifyLeafCertCrl())
	}
	without := TrustBundleSecret(roots, nil)
	if without.GetValidationContext().GetCrl() != nil || without.GetValidationContext().GetOnlyVerifyLeafCertCrl() {
		t.Errorf("secret without revocations has a crl: %v", without)
	}
	if diff := cmp.Diff(without.GetValidationContext().GetTrustedCa(), vc.GetTrustedCa(), protocmp.Transform()); diff != "" {
		t.Errorf("trusted_ca differs with a crl (-without +with):\n%s", diff)
	}
}
