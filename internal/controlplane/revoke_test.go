package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/structpb"

	"verge.dev/verge/internal/identity"
	"verge.dev/verge/internal/xds"
	"verge.dev/verge/internal/xds/translate"
)

// TestRevocation runs a control plane and revokes certificates through its
// API: a revoked certificate can neither renew nor connect to the API or
// xDS port, revoking a join token revokes its lineage, proxies get a CRL in
// the ROOTCA secret, and all of it survives a restart.
func TestRevocation(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{DataDir: dir, CAPassphrase: passphrase, AdminToken: adminToken, TLSSANs: []string{"cp.example", "192.0.2.7"}}
	addrs, stop := startAddrs(t, cfg)
	plain := &http.Client{Timeout: waitFor}
	admin := cpClient{t: t, base: "http://" + addrs.API, hc: plain, token: adminToken}
	anon := cpClient{t: t, base: admin.base, hc: plain}
	bundlePEM := []byte(get(t, admin.base+identity.BundlePath))
	td := spiffeid.RequireTrustDomainFromString(DefaultTrustDomain)

	// The control plane's own certificate names its host names and
	// addresses, and is in the log without a token.
	cpLeaf := servedLeaf(t, addrs.API, bundlePEM)
	for _, host := range []string{"localhost", "127.0.0.1", "cp.example", "192.0.2.7"} {
		if err := cpLeaf.VerifyHostname(host); err != nil {
			t.Errorf("control plane certificate: %v", err)
		}
	}

	web := issue(t, admin, "default", "web")
	db := issue(t, admin, "default", "db")
	for _, name := range []string{"web-1", "db-1"} {
		sa := strings.TrimSuffix(name, "-1")
		if code, body := admin.do(http.MethodPut, workloadPath("default", name), workloadBody(name, sa)); code != http.StatusCreated && code != http.StatusOK {
			t.Fatalf("register %s: %d %s", name, code, body)
		}
	}

	// The list is for administrators only.
	if code, body := anon.do(http.MethodGet, identity.CertificatesPath, ""); code != http.StatusUnauthorized {
		t.Errorf("anonymous list: %d %s", code, body)
	}
	if code, body := anon.do(http.MethodPost, identity.CertificatesPath+"/"+web.Certificates[0].SerialNumber.Text(16)+"/revoke", ""); code != http.StatusUnauthorized {
		t.Errorf("anonymous revoke: %d %s", code, body)
	}
	webTLS := cpClient{t: t, base: "https://" + addrs.API, hc: tlsClient(t, bundlePEM, web)}
	if code, body := webTLS.do(http.MethodGet, identity.CertificatesPath, ""); code != http.StatusForbidden {
		t.Errorf("list with a workload svid: %d %s", code, body)
	}
	list := listCerts(t, admin, "")
	cpSerial := cpLeaf.SerialNumber.Text(16)
	webSerial := web.Certificates[0].SerialNumber.Text(16)
	i := slices.IndexFunc(list, func(c identity.CertificateInfo) bool { return c.Serial == cpSerial })
	if i < 0 || list[i].TokenID != "" || !strings.HasSuffix(list[i].SPIFFEID, "/ns/verge-system/sa/control-plane") {
		t.Errorf("control plane certificate %s not listed as such: %+v", cpSerial, list)
	}
	webRecs := listCerts(t, admin, "?spiffeID=spiffe://verge.local/ns/default/sa/web")
	if len(webRecs) != 1 || webRecs[0].Serial != webSerial || webRecs[0].TokenID == "" {
		t.Fatalf("web certificates: %+v", webRecs)
	}
	webToken := webRecs[0].TokenID

	// Renewal over TLS works, then the renewed certificate is revoked.
	renewed := renewTLS(t, webTLS)
	renewedSerial := renewed.Certificates[0].SerialNumber.Text(16)
	code, body := admin.do(http.MethodPost, identity.CertificatesPath+"/"+renewedSerial+"/revoke", `{"reason":"test"}`)
	if code != http.StatusOK {
		t.Fatalf("revoke: %d %s", code, body)
	}
	renewedTLS := cpClient{t: t, base: "https://" + addrs.API, hc: tlsClient(t, bundlePEM, renewed)}
	if err := renewErr(t, renewedTLS); err == nil {
		t.Error("renewal with a revoked certificate succeeded")
	}
	waitMetric(t, admin, `verge_cp_connections_refused_total{port="api",reason="revoked"}`, 1)
	if err := ads(t, addrs.XDS, bundlePEM, renewed, td, "web-1", func(*tlsv3.Secret) error { return nil }); err == nil {
		t.Error("xds stream with a revoked certificate succeeded")
	}
	waitMetric(t, admin, `verge_cp_connections_refused_total{port="xds",reason="revoked"}`, 1)

	// Proxies get the CRL with the bundle.
	hasCRL := func(serials ...string) func(*tlsv3.Secret) error {
		return func(sec *tlsv3.Secret) error {
			got := crlSerials(t, sec)
			for _, s := range serials {
				if !slices.Contains(got, s) {
					return fmt.Errorf("crl lists %v, want %s", got, s)
				}
			}
			return nil
		}
	}
	if err := ads(t, addrs.XDS, bundlePEM, web, td, "web-1", hasCRL(renewedSerial)); err != nil {
		t.Errorf("ROOTCA secret: %v", err)
	}

	// Revoking the token revokes the rest of its lineage: web's first
	// certificate (the renewed one is revoked already).
	code, body = admin.do(http.MethodDelete, identity.TokensPath+"/"+webToken, "")
	var tr identity.TokenRevoked
	if err := json.Unmarshal([]byte(body), &tr); err != nil || code != http.StatusOK || tr.RevokedCertificates != 1 {
		t.Fatalf("revoke token: %d %s", code, body)
	}
	if err := renewErr(t, cpClient{t: t, base: webTLS.base, hc: tlsClient(t, bundlePEM, web)}); err == nil {
		t.Error("renewal with a certificate of a revoked token succeeded")
	}
	if err := ads(t, addrs.XDS, bundlePEM, db, td, "db-1", hasCRL(renewedSerial, webSerial)); err != nil {
		t.Errorf("ROOTCA secret after the token's revocation: %v", err)
	}
	if got := metric(t, admin, "verge_ca_certificates_revoked_total"); got != 2 {
		t.Errorf("verge_ca_certificates_revoked_total = %v, want 2", got)
	}

	// A restart keeps every revocation.
	if err := stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	addrs, _ = startAddrs(t, cfg)
	admin.base = "http://" + addrs.API
	for _, svid := range []*x509svid.SVID{web, renewed} {
		if err := renewErr(t, cpClient{t: t, base: "https://" + addrs.API, hc: tlsClient(t, bundlePEM, svid)}); err == nil {
			t.Errorf("after restart: renewal with revoked %s succeeded", svid.Certificates[0].SerialNumber.Text(16))
		}
	}
	if err := renewErr(t, cpClient{t: t, base: "https://" + addrs.API, hc: tlsClient(t, bundlePEM, db)}); err != nil {
		t.Errorf("after restart: renewal of db: %v", err)
	}
	if err := ads(t, addrs.XDS, bundlePEM, db, td, "db-1", hasCRL(renewedSerial, webSerial)); err != nil {
		t.Errorf("after restart: ROOTCA secret: %v", err)
	}
	for _, c := range listCerts(t, admin, "?tokenID="+webToken) {
		if c.RevokedAt == nil {
			t.Errorf("after restart: %s not revoked", c.Serial)
		}
	}
}

func listCerts(t *testing.T, admin cpClient, query string) []identity.CertificateInfo {
	t.Helper()
	code, body := admin.do(http.MethodGet, identity.CertificatesPath+query, "")
	if code != http.StatusOK {
		t.Fatalf("list certificates: %d %s", code, body)
	}
	var l identity.CertificateList
	if err := json.Unmarshal([]byte(body), &l); err != nil {
		t.Fatal(err)
	}
	return l.Items
}

// servedLeaf returns the certificate the control plane serves at addr.
func servedLeaf(t *testing.T, addr string, bundlePEM []byte) *x509.Certificate {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(bundlePEM)
	d := tls.Dialer{Config: &tls.Config{RootCAs: roots, ServerName: "localhost", MinVersion: tls.VersionTLS13}, NetDialer: &net.Dialer{Timeout: waitFor}}
	c, err := d.DialContext(t.Context(), "tcp", addr)
	if err != nil {
		t.Fatalf("tls dial %s checking the host name: %v", addr, err)
	}
	defer c.Close()
	return c.(*tls.Conn).ConnectionState().PeerCertificates[0]
}

// renewErr asks for a renewal over c's TLS client and returns why it did
// not succeed, nil when it did.
func renewErr(t *testing.T, c cpClient) error {
	t.Helper()
	_, csr := newCSR(t)
	body, _ := json.Marshal(identity.CertificateRequest{CSR: csr})
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, c.base+identity.CertificatesPath, strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// renewTLS renews c's certificate and returns the new SVID.
func renewTLS(t *testing.T, c cpClient) *x509svid.SVID {
	t.Helper()
	key, csr := newCSR(t)
	body, _ := json.Marshal(identity.CertificateRequest{CSR: csr})
	code, resp := c.do(http.MethodPost, identity.CertificatesPath, string(body))
	if code != http.StatusOK {
		t.Fatalf("renew: %d %s", code, resp)
	}
	return certResponse(t, resp, key)
}

// ads opens an ADS stream to the xDS port over mutual TLS with svid as the
// proxy of workload default/<workload>, asks for the ROOTCA secret and
// returns nil once check accepts one, or the last error.
func ads(t *testing.T, addr string, bundlePEM []byte, svid *x509svid.SVID, td spiffeid.TrustDomain, workload string, check func(*tlsv3.Secret) error) error {
	t.Helper()
	bundle, err := x509bundle.Parse(td, bundlePEM)
	if err != nil {
		t.Fatal(err)
	}
	cpID, _ := spiffeid.FromSegments(td, "ns", SystemNamespace, "sa", ControlPlaneServiceAccount)
	tc := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(cpID))
	tc.MinVersion = tls.VersionTLS13
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), waitFor)
	defer cancel()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	md, _ := structpb.NewStruct(map[string]any{xds.MetadataWorkload: "default/" + workload})
	req := &discovery.DiscoveryRequest{
		Node:          &corev3.Node{Id: workload + ".default", Metadata: md},
		TypeUrl:       resource.SecretType,
		ResourceNames: []string{translate.SecretTrustBundle},
	}
	var last error
	for range 20 {
		if err := stream.Send(req); err != nil {
			return err
		}
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		req.VersionInfo, req.ResponseNonce = resp.GetVersionInfo(), resp.GetNonce()
		if len(resp.GetResources()) != 1 {
			last = fmt.Errorf("%d secrets", len(resp.GetResources()))
			continue
		}
		sec := &tlsv3.Secret{}
		if err := resp.GetResources()[0].UnmarshalTo(sec); err != nil {
			return err
		}
		if last = check(sec); last == nil {
			return nil
		}
	}
	return last
}

// crlSerials reads the ROOTCA secret's CRL as the proxy does: PEM "X509 CRL"
// blocks in validation_context.crl, serials in big.Int.Text(16).
func crlSerials(t *testing.T, sec *tlsv3.Secret) []string {
	t.Helper()
	data := sec.GetValidationContext().GetCrl().GetInlineBytes()
	var out []string
	for {
		var b *pem.Block
		if b, data = pem.Decode(data); b == nil {
			return out
		}
		if b.Type != "X509 CRL" {
			t.Errorf("crl block of type %q", b.Type)
			continue
		}
		crl, err := x509.ParseRevocationList(b.Bytes)
		if err != nil {
			t.Fatalf("parse crl: %v", err)
		}
		for _, e := range crl.RevokedCertificateEntries {
			out = append(out, e.SerialNumber.Text(16))
		}
	}
}
