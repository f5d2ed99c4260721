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
