package xds

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"verge.dev/verge/api/v1alpha1"
	"verge.dev/verge/internal/xds/translate"
)

// testRoot returns a self-signed root's DER for trust domain td.
func testRoot(t *testing.T, td string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		URIs: []*url.URL{{Scheme: "spiffe", Host: td}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// recvType reads responses until one of typeURL arrives, ACKing the others
// so the stream keeps flowing.
func (c *adsClient) recvType(typeURL string, names map[string][]string) *discovery.DiscoveryResponse {
	c.t.Helper()
	for range 10 {
		r := c.recv()
		if r.GetTypeUrl() == typeURL {
			return r
		}
		c.ack(r, names[r.GetTypeUrl()])
	}
	c.t.Fatalf("no %s response among 10", typeURL)
	return nil
}

// secretRoots decodes the ROOTCA secret of a response to its roots' DER.
func secretRoots(t *testing.T, r *discovery.DiscoveryResponse) [][]byte {
	t.Helper()
	if n := len(r.GetResources()); n != 1 {
		t.Fatalf("secret response has %d resources, want 1", n)
	}
	sec := &tlsv3.Secret{}
	if err := r.GetResources()[0].UnmarshalTo(sec); err != nil {
		t.Fatal(err)
	}
	if sec.GetName() != translate.SecretTrustBundle {
		t.Fatalf("secret name %q", sec.GetName())
	}
	data := sec.GetValidationContext().GetTrustedCa().GetInlineBytes()
	var out [][]byte
	for {
		var b *pem.Block
		if b, data = pem.Decode(data); b == nil {
			return out
		}
		out = append(out, b.Bytes)
	}
}

// secretCRL returns the inline CRL of a ROOTCA secret response, nil when
// it has none.
func secretCRL(t *testing.T, r *discovery.DiscoveryResponse) []byte {
	t.Helper()
	sec := &tlsv3.Secret{}
	if err := r.GetResources()[0].UnmarshalTo(sec); err != nil {
		t.Fatal(err)
	}
	return sec.GetValidationContext().GetCrl().GetInlineBytes()
}

func mtlsMesh() translate.Mesh {
	srv := backend("a-1", "a", "10.0.0.1", 8080)
	srv.Spec.ServiceAccount = "a"
	srv.Spec.Proxy = &v1alpha1.WorkloadProxy{AppAddress: "127.0.0.1"}
	srv.Spec.Ports[0].InboundPort = 15006
	return translate.Mesh{
		Services:  []*v1alpha1.Service{service("a", 80, 8080)},
		Workloads: []*v1alpha1.Workload{srv, client("c1", "a", 80, 15001)},
		MTLS:      true,
	}
}

func clusterHasTLS(t *testing.T, r *discovery.DiscoveryResponse) bool {
	t.Helper()
	for _, a := range r.GetResources() {
		c := &clusterv3.Cluster{}
		if err := a.UnmarshalTo(c); err != nil {
			t.Fatal(err)
		}
		if len(c.GetTransportSocketMatches()) > 0 {
			return true
		}
	}
	return false
}

// TestTrustBundle checks that Mesh.MTLS takes effect only once a bundle is
// set, that every Verge proxy then gets the ROOTCA secret, that a new root
// pushes a new secret version, and that proxyless clients get neither.
func TestTrustBundle(t *testing.T) {
	h := start(t)
	h.send(t, mtlsMesh())

	c1 := h.dial(t, "c1.default", "default/c1")
	last, names := c1.sync()
	if clusterHasTLS(t, last[resource.ClusterType]) {
		t.Fatal("cluster has TLS before a trust bundle is set")
	}

	root1 := testRoot(t, "example.org")
	h.srv.SetTrustBundle("example.org", [][]byte{root1}, nil)
	cds := c1.recvType(resource.ClusterType, names)
	if !clusterHasTLS(t, cds) {
		t.Fatal("cluster has no TLS after the trust bundle was set")
	}
	c1.ack(cds, nil)
	c1.request(resource.SecretType, "", "", []string{translate.SecretTrustBundle}, "")
	sec := c1.recvType(resource.SecretType, names)
	if got := secretRoots(t, sec); len(got) != 1 || string(got[0]) != string(root1) {
		t.Fatalf("secret roots = %d, want root1", len(got))
	}
	c1.ack(sec, []string{translate.SecretTrustBundle})

	// A rotation adds a root: a new secret version is pushed.
	root2 := testRoot(t, "example.org")
	h.srv.SetTrustBundle("example.org", [][]byte{root1, root2}, nil)
	sec2 := c1.recvType(resource.SecretType, names)
	if sec2.GetVersionInfo() == sec.GetVersionInfo() {
		t.Error("secret version unchanged after rotation")
	}
	if got := secretRoots(t, sec2); len(got) != 2 {
		t.Errorf("secret roots after rotation = %d, want 2", len(got))
	}
	if crl := secretCRL(t, sec2); crl != nil {
		t.Errorf("secret has a crl before any revocation: %q", crl)
	}
	c1.ack(sec2, []string{translate.SecretTrustBundle})

	// A revocation pushes the same roots with a CRL.
	crlPEM := pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: []byte("crl")})
	h.srv.SetTrustBundle("example.org", [][]byte{root1, root2}, crlPEM)
	sec3 := c1.recvType(resource.SecretType, names)
	if got := secretCRL(t, sec3); string(got) != string(crlPEM) {
		t.Errorf("secret crl = %q, want %q", got, crlPEM)
	}
	if got := secretRoots(t, sec3); len(got) != 2 {
		t.Errorf("secret roots with a crl = %d, want 2", len(got))
	}

	// The server workload's proxy gets TLS inbound chains and SPIFFE IDs
	// in the bundle's trust domain.
	a1 := h.dial(t, "a-1.default", "default/a-1")
	a1.request(resource.ListenerType, "", "", nil, "")
	lds := a1.recvType(resource.ListenerType, nil)
	l := &listenerv3.Listener{}
	if err := lds.GetResources()[0].UnmarshalTo(l); err != nil {
		t.Fatal(err)
	}
	if n := len(l.GetFilterChains()); n != 2 || l.GetFilterChains()[0].GetTransportSocket() == nil {
		t.Errorf("inbound listener: %d filter chains, first TLS %v; want PERMISSIVE's 2 with TLS first", n, l.GetFilterChains()[0].GetTransportSocket() != nil)
	}

	// Proxyless: no secret, no TLS.
	p := h.dial(t, "grpc-client", "")
	p.request(resource.SecretType, "", "", []string{translate.SecretTrustBundle}, "")
	select {
	case r := <-p.resps:
		if len(r.GetResources()) != 0 {
			t.Errorf("proxyless client got %d secrets", len(r.GetResources()))
		}
	case <-time.After(200 * time.Millisecond):
		// Not answering is as good: the proxyless view has no secrets.
	}
}
