package cli

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"verge.dev/verge/internal/apiserver"
	"verge.dev/verge/internal/ca"
	"verge.dev/verge/internal/identity"
	"verge.dev/verge/internal/store/bolt"
)

var testTD = spiffeid.RequireTrustDomainFromString("verge.local")

// testCA is a small in-test CA (internal/ca) with the PEM file of its
// bundle.
type testCA struct {
	*ca.CA
	bundleFile string
}

func newTestCA(t *testing.T, clock func() time.Time) *testCA {
	t.Helper()
	authority, err := ca.New(ca.Config{TrustDomain: testTD, Clock: clock, SVIDTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	var bundle []byte
	for _, r := range authority.Bundle().X509Authorities() {
		bundle = append(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
	}
	f := filepath.Join(t.TempDir(), "bundle.pem")
	if err := os.WriteFile(f, bundle, 0o600); err != nil {
		t.Fatal(err)
	}
	return &testCA{CA: authority, bundleFile: f}
}

// issue signs an SVID for ns/sa and returns the key and chain.
func (c *testCA) issue(t *testing.T, ns, sa string) (*ecdsa.PrivateKey, []*x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	id, err := ca.WorkloadID(testTD, ns, sa)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := c.SignCSR(csr, id)
	if err != nil {
		t.Fatal(err)
	}
	return key, chain
}

// issueFiles is issue writing the chain and the key as PEM files.
func (c *testCA) issueFiles(t *testing.T, ns, sa string) (certFile, keyFile string) {
	t.Helper()
	key, chain := c.issue(t, ns, sa)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, sa+".crt"), filepath.Join(dir, sa+".key")
	var chainPEM []byte
	for _, c := range chain {
		chainPEM = append(chainPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, chainPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// serverTLS is a TLS server configuration with the control plane's SVID
// from c; clientAuth says whether client certificates are requested or
// required (then verified against c's roots).
func (c *testCA) serverTLS(t *testing.T, clientAuth tls.ClientAuthType) *tls.Config {
	t.Helper()
	key, chain := c.issue(t, "verge-system", "control-plane")
	roots := x509.NewCertPool()
	for _, r := range c.Bundle().X509Authorities() {
		roots.AddCert(r)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{{Certificate: [][]byte{chain[0].Raw}, PrivateKey: key}},
		ClientAuth:   clientAuth,
		ClientCAs:    roots,
	}
}

// controlPlane serves the real API and identity API behind the real guard,
// as the control plane mounts them, over plaintext and over TLS that
// requests (not requires) client certificates.
func controlPlane(t *testing.T, c *testCA) (plainURL, tlsURL string) {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(t.Output(), nil))
	st, err := bolt.Open(filepath.Join(t.TempDir(), "verge.db"), logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	idsrv, err := identity.New(identity.Config{
		CA:      c.CA,
		Tokens:  ca.NewTokens(testTD, identity.NewStoreTokens(st), nil),
		Persist: func(*ca.Material) error { return nil },
	}, logger)
	if err != nil {
		t.Fatal(err)
	}
	adminID, err := ca.WorkloadID(testTD, "verge-system", "admin")
	if err != nil {
		t.Fatal(err)
	}
	g, err := apiserver.NewGuard(st, apiserver.AuthConfig{TrustDomain: testTD, Bundle: c.Bundle(), AdminToken: cliAdminToken, AdminID: adminID}, logger)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	api := apiserver.New(st, logger).Handler()
	mux.Handle("/apis/", api)
	for _, p := range []string{identity.TokensPath, identity.TokensPath + "/", identity.CertificatesPath, identity.CertificatesPath + "/", identity.BundlePath, identity.RotatePath} {
		mux.Handle(p, idsrv.Handler())
	}
	h := g.Wrap(mux)
	plain := httptest.NewServer(h)
	t.Cleanup(plain.Close)
	hs := httptest.NewUnstartedServer(h)
	// The guard verifies the client's SVID itself, as on the control
	// plane's port where certificates are optional.
	hs.TLS = c.serverTLS(t, tls.RequestClientCert)
	hs.StartTLS()
	t.Cleanup(hs.Close)
	return plain.URL, hs.URL
}

// TestCertRequestAdminFlow is the administrator's way to an admin SVID
// without handling a CA key: an admin-token holder makes a join token for
// verge-system/admin, `cert request` turns it into files, and those files
// alone then authenticate writes.
func TestCertRequestAdminFlow(t *testing.T) {
	c := newTestCA(t, nil)
	plainURL, tlsURL := controlPlane(t, c)
	svc := filepath.Join(writeFiles(t, map[string]string{"svc.yaml": "apiVersion: verge.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: 80}]\n"}), "svc.yaml")

	secret := mustRun(t, plainURL, "", "--token", cliAdminToken, "token", "create", "--service-account", "admin", "-n", "verge-system")
	tokenFile := filepath.Join(t.TempDir(), "join-token")
	if err := os.WriteFile(tokenFile, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	prefix := filepath.Join(t.TempDir(), "creds", "admin")
	// VERGE_TOKEN is the admin token; cert request must send the join token
	// of its own --token-file instead.
	t.Setenv("VERGE_TOKEN", cliAdminToken)
	out, errOut, err := run(t, tlsURL, "", "--ca-file", c.bundleFile, "cert", "request", "--token-file", tokenFile, "--out", prefix)
	if err != nil {
		t.Fatalf("cert request: %s", FormatError(err))
	}
	t.Setenv("VERGE_TOKEN", "")
	if !strings.HasPrefix(out, "Certificate for spiffe://verge.local/ns/verge-system/sa/admin, serial ") ||
		!strings.Contains(out, "Wrote "+prefix+".crt (chain), "+prefix+".key (private key) and "+prefix+"-bundle.pem (trust bundle).\n") {
		t.Errorf("cert request stdout: %q", out)
	}
	if !strings.Contains(errOut, "--cert "+prefix+".crt --key "+prefix+".key --ca-file "+prefix+"-bundle.pem") {
		t.Errorf("cert request stderr: %q", errOut)
	}
	for name, want := range map[string]os.FileMode{".key": 0o600, ".crt": 0o644, "-bundle.pem": 0o644} {
		fi, err := os.Stat(prefix + name)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", name, fi.Mode().Perm(), want)
		}
	}
	keyPEM, err := os.ReadFile(prefix + ".key")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := pem.Decode(keyPEM); b == nil || b.Type != "PRIVATE KEY" {
		t.Errorf("key file is not a PKCS#8 PEM block: %q", keyPEM)
	} else if k, err := x509.ParsePKCS8PrivateKey(b.Bytes); err != nil {
		t.Errorf("key file: %v", err)
	} else if ek, ok := k.(*ecdsa.PrivateKey); !ok || ek.Curve != elliptic.P256() {
		t.Errorf("key is %T, want ECDSA P-256", k)
	}
	svid, err := x509svid.Load(prefix+".crt", prefix+".key")
	if err != nil {
		t.Fatal(err)
	}
	if got := svid.ID.String(); got != "spiffe://verge.local/ns/verge-system/sa/admin" {
		t.Errorf("svid id %s", got)
	}
	if bundle, _ := os.ReadFile(prefix + "-bundle.pem"); !strings.Contains(string(bundle), "BEGIN CERTIFICATE") {
		t.Errorf("bundle file: %q", bundle)
	}

	// Without credentials a write is refused; with the admin SVID alone
	// it goes through, and so with the SVID and the admin token together.
	tlsArgs := []string{"--ca-file", prefix + "-bundle.pem"}
	_, _, err = run(t, tlsURL, "", append(tlsArgs, "apply", "-f", svc)...)
	if !strings.Contains(FormatError(err), "not authenticated") || !strings.Contains(FormatError(err), "--cert and --key") {
		t.Errorf("apply without credentials: %q", FormatError(err))
	}
	certArgs := append(tlsArgs, "--cert", prefix+".crt", "--key", prefix+".key")
	mustRun(t, tlsURL, "", append(certArgs, "apply", "-f", svc)...)
	mustRun(t, tlsURL, "", append(certArgs, "--token", cliAdminToken, "delete", "service", "web")...)
	// The flags' environment variables do the same.
	t.Setenv("VERGE_CERT_FILE", prefix+".crt")
	t.Setenv("VERGE_KEY_FILE", prefix+".key")
	t.Setenv("VERGE_CA_FILE", prefix+"-bundle.pem")
	mustRun(t, tlsURL, "", "apply", "-f", svc)
	t.Setenv("VERGE_CERT_FILE", "")
	t.Setenv("VERGE_KEY_FILE", "")

	// The single-use token is spent: a second request is refused with a
	// message about the join token, not the admin token.
	_, _, err = run(t, tlsURL, "", "--ca-file", c.bundleFile, "cert", "request", "--token", strings.TrimSpace(secret), "--out", prefix+"2")
	if msg := FormatError(err); ExitCode(err) != 1 || !strings.Contains(msg, "refused the join token") || strings.Contains(msg, "VERGE_TOKEN") {
		t.Errorf("second cert request: exit %d %q", ExitCode(err), msg)
	}
	if _, err := os.Stat(prefix + "2.key"); !os.IsNotExist(err) {
		t.Errorf("a refused request left a key file: %v", err)
	}

	// A workload's SVID authenticates but may not write a Service.
	wlCert, wlKey := c.issueFiles(t, "default", "web")
	_, _, err = run(t, tlsURL, "", append(tlsArgs, "--cert", wlCert, "--key", wlKey, "apply", "-f", svc)...)
	if ExitCode(err) != 1 || !strings.Contains(FormatError(err), "spiffe://verge.local/ns/default/sa/web") {
		t.Errorf("apply with a workload svid: exit %d %q", ExitCode(err), FormatError(err))
	}

	// The inventory lists the certificate under its join token, to the
	// admin SVID; a revocation shows in the list with its reason.
	serial := svid.Certificates[0].SerialNumber.Text(16)
	tokenID := strings.Split(secret, ".")[1]
	const adminID = "spiffe://verge.local/ns/verge-system/sa/admin"
	list := mustRun(t, tlsURL, "", append(certArgs, "cert", "list", "--spiffe-id", adminID)...)
	if lines := strings.Split(strings.TrimSpace(list), "\n"); len(lines) != 2 ||
		!strings.HasPrefix(lines[1], serial+"   "+adminID+"   "+tokenID+"   ") || !strings.HasSuffix(lines[1], "   -") {
		t.Errorf("cert list:\n%s", list)
	}
	if out := mustRun(t, tlsURL, "", append(certArgs, "cert", "list", "--token-id", "ffffffffffffffff")...); out != "" {
		t.Errorf("cert list of another token: %q", out)
	}
	if out := mustRun(t, tlsURL, "", append(certArgs, "cert", "revoke", serial, "--reason", "rotated by hand")...); out != "certificate "+serial+" of "+adminID+" revoked\n" {
		t.Errorf("cert revoke: %q", out)
	}
	list = mustRun(t, tlsURL, "", append(tlsArgs, "--token", cliAdminToken, "cert", "list", "-o", "json")...)
	var certs identity.CertificateList
	if err := json.Unmarshal([]byte(list), &certs); err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, ci := range certs.Items {
		if ci.Serial == serial {
			found = true
			if ci.RevokedAt == nil || ci.Reason != "rotated by hand" || ci.TokenID != tokenID {
				t.Errorf("revoked certificate listed as %+v", ci)
			}
		}
	}
	if !found {
		t.Errorf("cert list -o json lacks %s:\n%s", serial, list)
	}
	out = mustRun(t, tlsURL, "", append(tlsArgs, "--token", cliAdminToken, "token", "revoke", tokenID)...)
	if !strings.HasPrefix(out, "join token \""+tokenID+"\" revoked, and ") {
		t.Errorf("token revoke: %q", out)
	}
}

// recordingServer is a TLS server that requires a client certificate
// verified against c and answers every request with status and body,
// recording what each request presented.
type recordingServer struct {
	url string

	mu   sync.Mutex
	seen []seenRequest
}

type seenRequest struct {
	Method, Path, Query, Bearer, PeerID, Body string
}

func newRecordingServer(t *testing.T, c *testCA, status int, body string) *recordingServer {
	t.Helper()
	rs := &recordingServer{}
	hs := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		s := seenRequest{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Body: string(b),
			Bearer: strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")}
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			if id, _, err := x509svid.Verify(r.TLS.PeerCertificates, c.Bundle()); err == nil {
				s.PeerID = id.String()
			}
		}
		rs.mu.Lock()
		rs.seen = append(rs.seen, s)
		rs.mu.Unlock()
		if status == http.StatusNoContent {
			w.WriteHeader(status)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		io.WriteString(w, body)
	}))
	hs.TLS = c.serverTLS(t, tls.RequireAndVerifyClientCert)
	// Handshakes refused on purpose are logged with the test's output.
	hs.Config.ErrorLog = log.New(t.Output(), "", 0)
	hs.StartTLS()
	t.Cleanup(hs.Close)
	rs.url = hs.URL
	return rs
}

func (rs *recordingServer) requests() []seenRequest {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return append([]seenRequest(nil), rs.seen...)
}

const certListJSON = `{"items":[
{"serial":"1a2b","spiffeID":"spiffe://verge.local/ns/default/sa/web","tokenID":"00112233aabbccdd",
 "issuedAt":"2026-05-01T11:00:00Z","expiresAt":"2026-05-01T23:00:00Z"},
{"serial":"ff01","spiffeID":"spiffe://verge.local/ns/default/sa/web","tokenID":"00112233aabbccdd",
 "issuedAt":"2026-05-01T11:30:00Z","expiresAt":"2026-05-02T11:30:00Z","revokedAt":"2026-05-01T12:00:00Z","reason":"key leaked"},
{"serial":"c0de","spiffeID":"spiffe://verge.local/ns/verge-system/sa/control-plane",
 "issuedAt":"2026-05-01T12:00:00Z","expiresAt":"2026-05-02T12:00:00Z"}]}`

// TestCertCommands runs cert list and cert revoke, and token revoke against
// the 200 answer that counts certificates, over mutual TLS: every call
// presents the --cert SVID and sends the --token too.
func TestCertCommands(t *testing.T) {
	c := newTestCA(t, nil)
	certFile, keyFile := c.issueFiles(t, "verge-system", "admin")
	creds := []string{"--ca-file", c.bundleFile, "--cert", certFile, "--key", keyFile, "--token", cliAdminToken}
	const admin = "spiffe://verge.local/ns/verge-system/sa/admin"

	t.Run("list", func(t *testing.T) {
		rs := newRecordingServer(t, c, http.StatusOK, certListJSON)
		got := mustRun(t, rs.url, "", append(creds, "cert", "list", "--spiffe-id", "spiffe://verge.local/ns/default/sa/web", "--token-id", "00112233aabbccdd")...)
		want := "" +
			"SERIAL   SPIFFE ID                                               TOKEN              ISSUED    EXPIRES   REVOKED\n" +
			"1a2b     spiffe://verge.local/ns/default/sa/web                  00112233aabbccdd   65m ago   in 10h    -\n" +
			"ff01     spiffe://verge.local/ns/default/sa/web                  00112233aabbccdd   35m ago   in 23h    5m ago: key leaked\n" +
			"c0de     spiffe://verge.local/ns/verge-system/sa/control-plane   -                  5m ago    in 23h    -\n"
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("cert list (-want +got):\n%s", diff)
		}
		js := mustRun(t, rs.url, "", append(creds, "cert", "list", "-o", "json")...)
		var list identity.CertificateList
		if err := json.Unmarshal([]byte(js), &list); err != nil || len(list.Items) != 3 || list.Items[1].Reason != "key leaked" {
			t.Errorf("cert list -o json: %v %q", err, js)
		}
		wantSeen := []seenRequest{
			{Method: "GET", Path: "/api/v1/certificates", Query: "spiffeID=spiffe%3A%2F%2Fverge.local%2Fns%2Fdefault%2Fsa%2Fweb&tokenID=00112233aabbccdd", Bearer: cliAdminToken, PeerID: admin},
			{Method: "GET", Path: "/api/v1/certificates", Bearer: cliAdminToken, PeerID: admin},
		}
		if diff := cmp.Diff(wantSeen, rs.requests()); diff != "" {
			t.Errorf("requests (-want +got):\n%s", diff)
		}
		if _, _, err := run(t, rs.url, "", append(creds, "cert", "list", "-o", "wide")...); ExitCode(err) != 2 {
			t.Errorf("cert list -o wide: exit %d %v", ExitCode(err), err)
		}
	})

	t.Run("list empty", func(t *testing.T) {
		rs := newRecordingServer(t, c, http.StatusOK, `{"items":[]}`)
		out, errOut, err := run(t, rs.url, "", append(creds, "cert", "list")...)
		if err != nil || out != "" || errOut != "No certificates.\n" {
			t.Errorf("cert list: %q %q %v", out, errOut, err)
		}
		if out := mustRun(t, rs.url, "", append(creds, "cert", "list", "-o", "json")...); out != "{\n  \"items\": []\n}\n" {
			t.Errorf("cert list -o json: %q", out)
		}
	})

	t.Run("revoke", func(t *testing.T) {
		rs := newRecordingServer(t, c, http.StatusOK,
			`{"serial":"a1b2","spiffeID":"spiffe://verge.local/ns/default/sa/web","issuedAt":"2026-05-01T11:00:00Z","expiresAt":"2026-05-01T23:00:00Z","revokedAt":"2026-05-01T12:05:00Z","reason":"lost laptop"}`)
		// openssl's form: upper case, colons, a leading zero byte.
		out := mustRun(t, rs.url, "", append(creds, "cert", "revoke", "00:A1:B2", "--reason", "lost laptop")...)
		if out != "certificate a1b2 of spiffe://verge.local/ns/default/sa/web revoked\n" {
			t.Errorf("cert revoke: %q", out)
		}
		mustRun(t, rs.url, "", append(creds, "cert", "revoke", "a1b2")...)
		wantSeen := []seenRequest{
			{Method: "POST", Path: "/api/v1/certificates/a1b2/revoke", Bearer: cliAdminToken, PeerID: admin, Body: `{"reason":"lost laptop"}`},
			{Method: "POST", Path: "/api/v1/certificates/a1b2/revoke", Bearer: cliAdminToken, PeerID: admin, Body: `{}`},
		}
		if diff := cmp.Diff(wantSeen, rs.requests()); diff != "" {
			t.Errorf("requests (-want +got):\n%s", diff)
		}
		for _, bad := range []string{"xyz", "", "0", "00:00", "12/revoke"} {
			_, _, err := run(t, rs.url, "", append(creds, "cert", "revoke", bad)...)
			if ExitCode(err) != 2 || !strings.Contains(FormatError(err), "not a positive hexadecimal serial") {
				t.Errorf("cert revoke %q: exit %d %q", bad, ExitCode(err), FormatError(err))
			}
		}
		if n := len(rs.requests()); n != 2 {
			t.Errorf("bad serials sent requests: %d in all", n)
		}
	})

	t.Run("revoke refused", func(t *testing.T) {
		rs := newRecordingServer(t, c, http.StatusNotFound,
			`{"kind":"Status","apiVersion":"v1","status":"Failure","message":"certificate \"beef\" not found","reason":"NotFound","code":404}`)
		_, _, err := run(t, rs.url, "", append(creds, "cert", "revoke", "beef")...)
		if ExitCode(err) != 1 || FormatError(err) != "error: certificate \"beef\" not found\n" {
			t.Errorf("cert revoke unknown: exit %d %q", ExitCode(err), FormatError(err))
		}
	})

	t.Run("token revoke counts certificates", func(t *testing.T) {
		for _, tc := range []struct {
			status int
			body   string
			want   string
		}{
			{http.StatusOK, `{"id":"00112233aabbccdd","revokedCertificates":3}`, "join token \"00112233aabbccdd\" revoked, and 3 certificates issued with it\n"},
			{http.StatusOK, `{"id":"00112233aabbccdd","revokedCertificates":1}`, "join token \"00112233aabbccdd\" revoked, and 1 certificate issued with it\n"},
			{http.StatusNoContent, "", "join token \"00112233aabbccdd\" revoked\n"},
		} {
			rs := newRecordingServer(t, c, tc.status, tc.body)
			if out := mustRun(t, rs.url, "", append(creds, "token", "revoke", "00112233aabbccdd")...); out != tc.want {
				t.Errorf("token revoke answered %d %s: %q, want %q", tc.status, tc.body, out, tc.want)
			}
			if r := rs.requests(); len(r) != 1 || r[0].Method != "DELETE" || r[0].Path != "/api/v1/tokens/00112233aabbccdd" || r[0].PeerID != admin {
				t.Errorf("requests: %+v", r)
			}
		}
	})

	t.Run("no certificate", func(t *testing.T) {
		// The server requires one: without --cert the handshake fails.
		rs := newRecordingServer(t, c, http.StatusOK, certListJSON)
		if _, _, err := run(t, rs.url, "", "--ca-file", c.bundleFile, "--token", cliAdminToken, "cert", "list"); err == nil {
			t.Error("cert list without a client certificate succeeded against a server that requires one")
		}
	})
}

// TestCertFlagErrors checks that bad --cert/--key input is refused before
// any request, with an error naming the flag and the reason.
func TestCertFlagErrors(t *testing.T) {
	c := newTestCA(t, nil)
	rs := newRecordingServer(t, c, http.StatusOK, `{"items":[]}`)
	certFile, keyFile := c.issueFiles(t, "verge-system", "admin")
	_, otherKey := c.issueFiles(t, "verge-system", "admin")
	// An SVID that expired before the CLI's clock (created+5m).
	old := newTestCA(t, func() time.Time { return created.Add(-48 * time.Hour) })
	oldCert, oldKey := old.issueFiles(t, "verge-system", "admin")
	missing := filepath.Join(t.TempDir(), "missing.pem")

	for _, tc := range []struct {
		name   string
		server string
		args   []string
		want   string
	}{
		{"cert without key", rs.url, []string{"--cert", certFile}, "error: --cert needs --key (env VERGE_KEY_FILE): the private key of the certificate\n"},
		{"key without cert", rs.url, []string{"--key", keyFile}, "error: --key needs --cert (env VERGE_CERT_FILE): the certificate chain that goes with the key\n"},
		{"http server", "http://127.0.0.1:1", []string{"--cert", certFile, "--key", keyFile},
			"error: --cert and --key need an https:// --server (a client certificate is presented in the TLS handshake); --server is http://127.0.0.1:1\n"},
		{"missing key file", rs.url, []string{"--cert", certFile, "--key", missing}, "error: --key: open " + missing + ": no such file or directory\n"},
		{"missing cert file", rs.url, []string{"--cert", missing, "--key", keyFile}, "error: --cert: open " + missing + ": no such file or directory\n"},
		{"key of another certificate", rs.url, []string{"--cert", certFile, "--key", otherKey},
			"error: --cert \"" + certFile + "\" and --key \"" + otherKey + "\": x509svid: private key validation failed: leaf certificate does not match private key\n"},
		{"key file given as cert", rs.url, []string{"--cert", keyFile, "--key", keyFile},
			"error: --cert \"" + keyFile + "\" and --key \"" + keyFile + "\": x509svid: certificate validation failed: no certificates found\n"},
		{"expired", rs.url, []string{"--cert", oldCert, "--key", oldKey},
			"error: --cert \"" + oldCert + "\": certificate of spiffe://verge.local/ns/verge-system/sa/admin expired at 2026-04-29T13:00:00Z: get a new one with verge cert request\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"--ca-file", c.bundleFile}, tc.args...)
			_, _, err := run(t, tc.server, "", append(args, "cert", "list")...)
			if diff := cmp.Diff(tc.want, FormatError(err)); diff != "" || ExitCode(err) != 2 {
				t.Errorf("exit %d (-want +got):\n%s", ExitCode(err), diff)
			}
		})
	}
	if n := len(rs.requests()); n != 0 {
		t.Errorf("%d requests sent with bad flags", n)
	}
}

// TestCertRequestErrors covers the request's own flags.
func TestCertRequestErrors(t *testing.T) {
	url := identityServer(t)
	tokenFile := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(tokenFile, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "svid")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		// VERGE_TOKEN, the admin token, is set: it is no join token.
		{"no token", []string{"--out", out}, "a join token is required"},
		{"both", []string{"--token", "vt1.x.y", "--token-file", tokenFile, "--out", out}, "--token and --token-file both given"},
		{"empty file", []string{"--token-file", tokenFile, "--out", out}, "file is empty"},
		{"missing file", []string{"--token-file", tokenFile + ".missing", "--out", out}, "--token-file: open"},
		{"no out", []string{"--token", "vt1.x.y"}, "--out is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("VERGE_TOKEN", cliAdminToken)
			_, _, err := run(t, url, "", append([]string{"cert", "request"}, tc.args...)...)
			if ExitCode(err) != 2 || !strings.Contains(FormatError(err), tc.want) {
				t.Errorf("exit %d %q, want 2 and %q", ExitCode(err), FormatError(err), tc.want)
			}
		})
	}
	_, _, err := run(t, url, "", "cert", "request", "--token", "vt1.0011223344556677.bad", "--out", out)
	if ExitCode(err) != 1 || !strings.Contains(FormatError(err), "refused the join token") {
		t.Errorf("bad token: exit %d %q", ExitCode(err), FormatError(err))
	}
	if entries, _ := os.ReadDir(filepath.Dir(out)); len(entries) != 0 {
		t.Errorf("files left after failures: %v", entries)
	}

	// Over plaintext (which the control plane accepts from loopback only)
	// the request works too, with the token given on the command line.
	secret := strings.TrimSpace(mustRun(t, url, "", "token", "create", "--service-account", "web"))
	got := mustRun(t, url, "", "cert", "request", "--token", secret, "--out", out)
	if !strings.HasPrefix(got, "Certificate for spiffe://verge.local/ns/default/sa/web, serial ") {
		t.Errorf("cert request: %q", got)
	}
	if _, err := x509svid.Load(out+".crt", out+".key"); err != nil {
		t.Error(err)
	}
}

func TestNormalizeSerial(t *testing.T) {
	for in, want := range map[string]string{
		"1a2b":     "1a2b",
		"001A2B":   "1a2b",
		"00:1a:2b": "1a2b",
		"0x1A2B":   "1a2b",
		" ff ":     "ff",
	} {
		if got, err := normalizeSerial(in); err != nil || got != want {
			t.Errorf("normalizeSerial(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}
