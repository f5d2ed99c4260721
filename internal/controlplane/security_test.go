package controlplane

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"verge.dev/verge/internal/apiclient"
	"verge.dev/verge/internal/apiserver"
	"verge.dev/verge/internal/ca"
	"verge.dev/verge/internal/identity"
	"verge.dev/verge/internal/registry"
)

const adminToken = "vadm.test-admin-token-0123456789"

// cpClient talks to a running control plane as one principal.
type cpClient struct {
	t     *testing.T
	base  string
	hc    *http.Client
	token string
}

func (c cpClient) do(method, path, body string) (int, string) {
	c.t.Helper()
	req, err := http.NewRequestWithContext(c.t.Context(), method, c.base+path, strings.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// statusOf decodes a Status body.
func statusOf(t *testing.T, body string) metav1.Status {
	t.Helper()
	var st metav1.Status
	if err := json.Unmarshal([]byte(body), &st); err != nil || st.Kind != "Status" {
		t.Fatalf("not a Status body (%v): %s", err, body)
	}
	return st
}

// newCSR returns a P-256 key and a CSR for it without SANs.
func newCSR(t *testing.T) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return key, csr
}

// certResponse turns an issuance answer and its key into an SVID.
func certResponse(t *testing.T, body string, key *ecdsa.PrivateKey) *x509svid.SVID {
	t.Helper()
	var cr identity.CertificateResponse
	if err := json.Unmarshal([]byte(body), &cr); err != nil {
		t.Fatalf("decode certificate response: %v: %s", err, body)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := x509svid.Parse([]byte(strings.Join(cr.CertificateChain, "")),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	if err != nil {
		t.Fatalf("parse issued svid: %v", err)
	}
	return svid
}

// issue obtains an SVID for ns/sa through the API: an admin creates a join
// token, the "proxy" redeems it with a CSR.
func issue(t *testing.T, admin cpClient, ns, sa string) *x509svid.SVID {
	t.Helper()
	code, body := admin.do(http.MethodPost, identity.TokensPath, fmt.Sprintf(`{"namespace":%q,"serviceAccount":%q}`, ns, sa))
	if code != http.StatusCreated {
		t.Fatalf("create token: %d %s", code, body)
	}
	var tc identity.TokenCreated
	if err := json.Unmarshal([]byte(body), &tc); err != nil {
		t.Fatal(err)
	}
	key, csr := newCSR(t)
	req, _ := json.Marshal(identity.CertificateRequest{CSR: csr})
	joiner := cpClient{t: t, base: admin.base, hc: admin.hc, token: tc.Token}
	code, body = joiner.do(http.MethodPost, identity.CertificatesPath, string(req))
	if code != http.StatusOK {
		t.Fatalf("issue certificate for %s/%s: %d %s", ns, sa, code, body)
	}
	return certResponse(t, body, key)
}

// tlsClient is an https client of the control plane that verifies its SVID
// with apiclient.ServerTLSConfig and presents svid when not nil.
func tlsClient(t *testing.T, bundlePEM []byte, svid *x509svid.SVID) *http.Client {
	t.Helper()
	var src x509svid.Source
	if svid != nil {
		src = svid
	}
	tc, err := apiclient.ServerTLSConfig(bundlePEM, src)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Timeout: waitFor, Transport: tr}
}

// metric returns the value of one sample line of /metrics, or -1.
func metric(t *testing.T, c cpClient, sample string) float64 {
	t.Helper()
	_, body := c.do(http.MethodGet, "/metrics", "")
	for line := range strings.Lines(body) {
		if name, val, ok := strings.Cut(strings.TrimSpace(line), " "); ok && name == sample {
			var f float64
			fmt.Sscan(val, &f)
			return f
		}
	}
	return -1
}

// waitMetric waits until sample reaches at least want.
func waitMetric(t *testing.T, c cpClient, sample string, want float64) {
	t.Helper()
	for end := time.Now().Add(waitFor); ; time.Sleep(20 * time.Millisecond) {
		got := metric(t, c, sample)
		if got >= want {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("%s = %v, want at least %v", sample, got, want)
		}
	}
}

const (
	servicesPath = "/apis/verge.dev/v1alpha1/namespaces/default/services"
	serviceBody  = `{"apiVersion":"verge.dev/v1alpha1","kind":"Service","metadata":{"name":"%s"},
		"spec":{"ports":[{"port":80,"protocol":"HTTP","targetPort":8080}]}}`
)

func workloadPath(ns, name string) string {
	return "/apis/verge.dev/v1alpha1/namespaces/" + ns + "/workloads/" + name
}

func workloadBody(name, sa string) string {
	return fmt.Sprintf(`{"apiVersion":"verge.dev/v1alpha1","kind":"Workload","metadata":{"name":%q,"labels":{"app":"x"}},
		"spec":{"address":"127.0.0.1","serviceAccount":%q,"ports":[{"port":8080,"inboundPort":15006}],"proxy":{}}}`, name, sa)
}

// TestAPIAuth runs the control plane and checks who may write what, over
// plaintext loopback and TLS.
func TestAPIAuth(t *testing.T) {
	if apiserver.HealthPath != registry.HealthPath {
		t.Fatalf("apiserver.HealthPath %q != registry.HealthPath %q", apiserver.HealthPath, registry.HealthPath)
	}
	dir := t.TempDir()
	addrs, _ := startAddrs(t, Config{DataDir: dir, CAPassphrase: passphrase, AdminToken: adminToken})
	plain := &http.Client{Timeout: waitFor}
	base := "http://" + addrs.API
	anon := cpClient{t: t, base: base, hc: plain}
	admin := cpClient{t: t, base: base, hc: plain, token: adminToken}

	// Anonymous writes are refused with a Status that says what to send.
	code, body := anon.do(http.MethodPost, servicesPath, fmt.Sprintf(serviceBody, "web"))
	if st := statusOf(t, body); code != http.StatusUnauthorized || st.Reason != metav1.StatusReasonUnauthorized ||
		!strings.Contains(st.Message, "admin token") {
		t.Errorf("anonymous write = %d %s", code, body)
	}
	if code, body := anon.do(http.MethodGet, identity.TokensPath, ""); code != http.StatusUnauthorized {
		t.Errorf("anonymous token list = %d %s", code, body)
	}
	if code, body := anon.do(http.MethodPost, identity.RotatePath, "{}"); code != http.StatusUnauthorized {
		t.Errorf("anonymous rotate = %d %s", code, body)
	}
	wrong := cpClient{t: t, base: base, hc: plain, token: "vadm.not-the-token"}
	if code, body := wrong.do(http.MethodPost, servicesPath, fmt.Sprintf(serviceBody, "web")); code != http.StatusUnauthorized ||
		!strings.Contains(body, "not a valid admin token") {
		t.Errorf("write with a wrong token = %d %s", code, body)
	}
	// Reads stay open.
	if code, body := anon.do(http.MethodGet, servicesPath, ""); code != http.StatusOK {
		t.Errorf("anonymous read = %d %s", code, body)
	}
	if code, body := admin.do(http.MethodPost, servicesPath, fmt.Sprintf(serviceBody, "web")); code != http.StatusCreated {
		t.Fatalf("admin token write = %d %s", code, body)
	}
	if code, body := admin.do(http.MethodGet, identity.TokensPath, ""); code != http.StatusOK {
		t.Errorf("admin token list = %d %s", code, body)
	}

	bundlePEM := []byte(get(t, base+identity.BundlePath))
	adminSVID := issue(t, admin, SystemNamespace, AdminServiceAccount)
	webSVID := issue(t, admin, "default", "web")
	tlsBase := "https://" + addrs.API

	// An administrator's client certificate is as good as the token.
	adminTLS := cpClient{t: t, base: tlsBase, hc: tlsClient(t, bundlePEM, adminSVID)}
	if code, body := adminTLS.do(http.MethodPost, servicesPath, fmt.Sprintf(serviceBody, "api")); code != http.StatusCreated {
		t.Errorf("admin svid write = %d %s", code, body)
	}
	// TLS without a client certificate is anonymous.
	anonTLS := cpClient{t: t, base: tlsBase, hc: tlsClient(t, bundlePEM, nil)}
	if code, body := anonTLS.do(http.MethodPost, servicesPath, fmt.Sprintf(serviceBody, "x")); code != http.StatusUnauthorized {
		t.Errorf("anonymous tls write = %d %s", code, body)
	}
	if code, _ := anonTLS.do(http.MethodGet, servicesPath, ""); code != http.StatusOK {
		t.Errorf("anonymous tls read = %d", code)
	}

	// A workload identity registers its own workload and reports its
	// health, and nothing else.
	web := cpClient{t: t, base: tlsBase, hc: tlsClient(t, bundlePEM, webSVID)}
	if code, body := web.do(http.MethodPut, workloadPath("default", "web-1"), workloadBody("web-1", "web")); code != http.StatusCreated {
		t.Fatalf("own workload = %d %s", code, body)
	}
	if code, body := web.do(http.MethodPut, "/api/v1/health/default/web-1", `{"ready":true}`); code != http.StatusNoContent && code != http.StatusNotFound {
		// 404 only until the registry has seen the new workload.
		t.Errorf("own health report = %d %s", code, body)
	}
	if code, body := admin.do(http.MethodPut, workloadPath("default", "db-1"), workloadBody("db-1", "db")); code != http.StatusCreated {
		t.Fatalf("admin writes db-1 = %d %s", code, body)
	}
	for _, tc := range []struct {
		name, method, path, body, want string
	}{
		{"another service's workload", http.MethodPut, workloadPath("default", "db-2"), workloadBody("db-2", "db"), `spec.serviceAccount is "db"`},
		{"overwrite another service's workload", http.MethodPut, workloadPath("default", "db-1"), workloadBody("db-1", "web"), `runs as service account "db"`},
		{"delete another service's workload", http.MethodDelete, workloadPath("default", "db-1"), "", `runs as service account "db"`},
		{"another namespace", http.MethodPut, workloadPath("prod", "web-1"), workloadBody("web-1", "web"), `its namespace is "default"`},
		{"another service's health", http.MethodPut, "/api/v1/health/default/db-1", `{"ready":false}`, `runs as service account "db"`},
		{"a service", http.MethodPost, servicesPath, fmt.Sprintf(serviceBody, "evil"), "is not an administrator"},
		{"a join token", http.MethodPost, identity.TokensPath, `{"serviceAccount":"db"}`, "is not an administrator"},
	} {
		code, body := web.do(tc.method, tc.path, tc.body)
		if st := statusOf(t, body); code != http.StatusForbidden || st.Reason != metav1.StatusReasonForbidden || !strings.Contains(st.Message, tc.want) {
			t.Errorf("%s: %d %s, want 403 naming %q", tc.name, code, body, tc.want)
		}
	}

	// Renewal: no bearer, the client certificate names the identity.
	key, csr := newCSR(t)
	req, _ := json.Marshal(identity.CertificateRequest{CSR: csr})
	code, body = web.do(http.MethodPost, identity.CertificatesPath, string(req))
	if code != http.StatusOK {
		t.Fatalf("renewal = %d %s", code, body)
	}
	if renewed := certResponse(t, body, key); renewed.ID != webSVID.ID {
		t.Errorf("renewed id = %s, want %s", renewed.ID, webSVID.ID)
	}
	// Over plaintext without a bearer there is nothing to renew from.
	if code, body := anon.do(http.MethodPost, identity.CertificatesPath, string(req)); code != http.StatusUnauthorized {
		t.Errorf("renewal without certificate = %d %s", code, body)
	}
	if code, body := web.do(http.MethodDelete, workloadPath("default", "web-1"), ""); code != http.StatusOK {
		t.Errorf("delete own workload = %d %s", code, body)
	}
	for _, reason := range []string{"anonymous", "invalid_token", "not_admin", "workload_mismatch"} {
		if v := metric(t, admin, `verge_api_auth_refusals_total{reason="`+reason+`"}`); v < 1 {
			t.Errorf("verge_api_auth_refusals_total{reason=%q} = %v", reason, v)
		}
	}

	// Certificates the CA did not sign, or that expired, fail the
	// handshake.
	mat, err := ca.Load(filepath.Join(dir, "ca"), passphrase)
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString(DefaultTrustDomain)
	other, err := ca.New(ca.Config{TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	past, err := ca.New(ca.Config{TrustDomain: td, Material: mat, SVIDTTL: 20 * time.Second,
		Clock: func() time.Time { return now.Add(-50 * time.Second) }})
	if err != nil {
		t.Fatal(err)
	}
	adminID, _ := ca.WorkloadID(td, SystemNamespace, AdminServiceAccount)
	for _, tc := range []struct {
		name string
		ca   *ca.CA
	}{{"another ca", other}, {"expired", past}} {
		key, csr := newCSR(t)
		chain, err := tc.ca.SignCSR(csr, adminID)
		if err != nil {
			t.Fatal(err)
		}
		bad := &x509svid.SVID{ID: adminID, Certificates: chain, PrivateKey: key}
		c := cpClient{t: t, base: tlsBase, hc: tlsClient(t, bundlePEM, bad)}
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, c.base+servicesPath, nil)
		if resp, err := c.hc.Do(req); err == nil {
			resp.Body.Close()
			t.Errorf("%s: request with a bad client certificate = %d, want a failed handshake", tc.name, resp.StatusCode)
		}
	}
	waitMetric(t, admin, `verge_cp_connections_refused_total{port="api",reason="tls_handshake"}`, 2)
}

// TestPortsRefuseGarbage: bytes that are neither TLS nor the port's
// plaintext protocol are refused and counted on both ports; an HTTP-looking
// line gets net/http's 400.
func TestPortsRefuseGarbage(t *testing.T) {
	addrs, _ := startAddrs(t, Config{DataDir: t.TempDir(), CAPassphrase: passphrase, AdminToken: adminToken,
		HandshakeTimeout: 300 * time.Millisecond})
	admin := cpClient{t: t, base: "http://" + addrs.API, hc: &http.Client{Timeout: waitFor}, token: adminToken}
	send := func(addr string, data []byte) []byte {
		t.Helper()
		c, err := net.DialTimeout("tcp", addr, waitFor)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if len(data) > 0 {
			if _, err := c.Write(data); err != nil {
				t.Fatal(err)
			}
		}
		_ = c.SetReadDeadline(time.Now().Add(waitFor))
		b, _ := io.ReadAll(c) // the port closes the connection
		return b
	}
	garbage := bytes.Repeat([]byte{0x00, 0xff, 0x13, 0x37}, 16)
	for _, port := range []struct{ name, addr string }{{"api", addrs.API}, {"xds", addrs.XDS}} {
		if got := send(port.addr, garbage); len(got) != 0 {
			t.Errorf("%s: garbage answered %q", port.name, got)
		}
		send(port.addr, []byte{0x16, 0x03, 0x01, 0x00, 0x04, 'n', 'o', 'p', 'e'})
		send(port.addr, nil) // silent: the handshake timeout closes it
		for _, reason := range []string{"garbage", "tls_handshake", "timeout"} {
			waitMetric(t, admin, fmt.Sprintf(`verge_cp_connections_refused_total{port=%q,reason=%q}`, port.name, reason), 1)
		}
	}
	if got := send(addrs.API, []byte("HELLO THERE\r\n\r\n")); !bytes.HasPrefix(got, []byte("HTTP/1.1 400")) {
		t.Errorf("api: malformed request line answered %q, want a 400", got)
	}
	if got := send(addrs.XDS, []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); len(got) != 0 {
		t.Errorf("xds: HTTP/1.1 answered %q", got)
	}
	waitMetric(t, admin, `verge_cp_connections_refused_total{port="xds",reason="garbage"}`, 2)
}

// TestControlPlaneCertificate: the ports serve the control plane's SVID
// (checked by ID with go-spiffe), and a CA rotation renews it under the new
// root.
func TestControlPlaneCertificate(t *testing.T) {
	addrs, _ := startAddrs(t, Config{DataDir: t.TempDir(), CAPassphrase: passphrase, AdminToken: adminToken})
	admin := cpClient{t: t, base: "http://" + addrs.API, hc: &http.Client{Timeout: waitFor}, token: adminToken}
	bundlePEM := []byte(get(t, admin.base+identity.BundlePath))
	tc, err := apiclient.ServerTLSConfig(bundlePEM, nil)
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString(DefaultTrustDomain)
	wantID, _ := apiclient.ControlPlaneID(td)
	if cpID, _ := ca.WorkloadID(td, SystemNamespace, ControlPlaneServiceAccount); cpID != wantID {
		t.Fatalf("apiclient.ControlPlaneID = %s, control plane uses %s", wantID, cpID)
	}
	leaf := func(addr string, tc *tls.Config) *x509.Certificate {
		t.Helper()
		d := tls.Dialer{Config: tc, NetDialer: &net.Dialer{Timeout: waitFor}}
		c, err := d.DialContext(t.Context(), "tcp", addr)
		if err != nil {
			t.Fatalf("tls dial %s: %v", addr, err)
		}
		defer c.Close()
		st := c.(*tls.Conn).ConnectionState()
		if st.Version != tls.VersionTLS13 {
			t.Errorf("%s: tls version %x, want 1.3", addr, st.Version)
		}
		return st.PeerCertificates[0]
	}
	for _, addr := range []string{addrs.API, addrs.XDS} {
		l := leaf(addr, tc.Clone())
		if id, err := x509svid.IDFromCert(l); err != nil || id != wantID {
			t.Errorf("%s serves %v (%v), want %s", addr, id, err, wantID)
		}
	}
	// TLS 1.2 is refused.
	old := tc.Clone()
	old.MaxVersion = tls.VersionTLS12
	d := tls.Dialer{Config: old, NetDialer: &net.Dialer{Timeout: waitFor}}
	if c, err := d.DialContext(t.Context(), "tcp", addrs.API); err == nil {
		c.Close()
		t.Error("tls 1.2 handshake succeeded")
	}

	code, body := admin.do(http.MethodPost, identity.RotatePath, `{"overlap":"1h"}`)
	if code != http.StatusOK {
		t.Fatalf("rotate = %d %s", code, body)
	}
	var rr identity.RotateResponse
	if err := json.Unmarshal([]byte(body), &rr); err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode([]byte(rr.TrustBundle[0]))
	newRoot, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	tc2, err := apiclient.ServerTLSConfig([]byte(strings.Join(rr.TrustBundle, "")), nil)
	if err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(waitFor); ; time.Sleep(20 * time.Millisecond) {
		if l := leaf(addrs.API, tc2.Clone()); bytes.Equal(l.AuthorityKeyId, newRoot.SubjectKeyId) {
			break
		}
		if time.Now().After(end) {
			t.Fatal("control plane certificate not renewed under the new root")
		}
	}
}

// TestClassify: plaintext only from loopback, TLS from anywhere.
func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		first      byte
		addr       net.Addr
		want       connKind
		wantReason string
	}{
		{0x16, &net.TCPAddr{IP: net.ParseIP("10.1.2.3"), Port: 5}, connTLS, ""},
		{0x16, &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 5}, connTLS, ""},
		{'G', &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 5}, connPlaintext, ""},
		{'G', &net.TCPAddr{IP: net.ParseIP("127.8.9.10"), Port: 5}, connPlaintext, ""},
		{'G', &net.TCPAddr{IP: net.ParseIP("::1"), Port: 5}, connPlaintext, ""},
		{'G', &net.TCPAddr{IP: net.ParseIP("::ffff:127.0.0.1"), Port: 5}, connPlaintext, ""},
		{'G', &net.TCPAddr{IP: net.ParseIP("10.1.2.3"), Port: 5}, connRefuse, refusedPlaintextNotLoopback},
		{'P', &net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 5}, connRefuse, refusedPlaintextNotLoopback},
		{'G', &net.UnixAddr{Name: "/tmp/x", Net: "unix"}, connRefuse, refusedPlaintextNotLoopback},
		{'G', nil, connRefuse, refusedPlaintextNotLoopback},
	} {
		kind, reason := classify(tc.first, tc.addr)
		if kind != tc.want || reason != tc.wantReason {
			t.Errorf("classify(%#x, %v) = %v %q, want %v %q", tc.first, tc.addr, kind, reason, tc.want, tc.wantReason)
		}
	}
}
