package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

var tokenRE = regexp.MustCompile(`(?m)^vt1\.([0-9a-f]{16})\.[A-Za-z0-9_-]{43}$`)

// TestIdentity: join tokens from the CLI, SVIDs over the API verified with
// go-spiffe, every refusal counted, root rotation, and CA material that
// survives a restart encrypted.
func TestIdentity(t *testing.T) {
	t.Parallel()
	c := startCP(t, "")
	td := spiffeid.RequireTrustDomainFromString("verge.local")
	const web = "spiffe://verge.local/ns/default/sa/web"

	newToken := func(args ...string) (secret, id string) {
		t.Helper()
		out, code := c.verge(t, "", append([]string{"token", "create", "--service", "web"}, args...)...)
		m := tokenRE.FindStringSubmatch(out)
		if code != 0 || m == nil {
			t.Fatalf("verge token create: exit %d\n%s", code, out)
		}
		return m[0], m[1]
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	csr := func(uris ...string) string {
		t.Helper()
		tmpl := &x509.CertificateRequest{}
		for _, u := range uris {
			pu, err := url.Parse(u)
			if err != nil {
				t.Fatal(err)
			}
			tmpl.URIs = append(tmpl.URIs, pu)
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
		if err != nil {
			t.Fatal(err)
		}
		return `{"csr":"` + base64.StdEncoding.EncodeToString(der) + `"}`
	}
	request := func(secret, body string) (int, []byte) {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, c.api+"/api/v1/certificates", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if secret != "" {
			req.Header.Set("Authorization", "Bearer "+secret)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, b
	}
	getBundle := func() (*x509bundle.Bundle, string) {
		t.Helper()
		code, body, err := get(http.DefaultClient, c.api+"/api/v1/bundle")
		if err != nil || code != http.StatusOK {
			t.Fatalf("GET /api/v1/bundle: %d %v", code, err)
		}
		b, err := x509bundle.Parse(td, []byte(body))
		if err != nil {
			t.Fatal(err)
		}
		return b, body
	}
	// verify checks an answer with go-spiffe against the published bundle.
	verify := func(body []byte) {
		t.Helper()
		var resp struct {
			CertificateChain []string `json:"certificateChain"`
			SPIFFEID         string   `json:"spiffeID"`
		}
		if err := json.Unmarshal(body, &resp); err != nil {
			t.Fatal(err)
		}
		var der []byte
		for _, p := range resp.CertificateChain {
			blk, _ := pem.Decode([]byte(p))
			if blk == nil {
				t.Fatalf("not PEM: %q", p)
			}
			der = append(der, blk.Bytes...)
		}
		svid, err := x509svid.ParseRaw(der, pkcs8)
		if err != nil {
			t.Fatalf("parse svid: %v", err)
		}
		bundle, _ := getBundle()
		id, _, err := x509svid.Verify(svid.Certificates, bundle)
		if err != nil {
			t.Fatalf("verify svid: %v", err)
		}
		if id.String() != web || svid.ID.String() != web || resp.SPIFFEID != web {
			t.Errorf("identity %s (svid %s, response %s), want %s", id, svid.ID, resp.SPIFFEID, web)
		}
	}

	single, _ := newToken()
	if code, b := request(single, csr()); code != http.StatusOK {
		t.Fatalf("certificate: %d %s", code, b)
	} else {
		verify(b)
	}
	if code, b := request(single, csr()); code != http.StatusUnauthorized {
		t.Errorf("single-use token again: %d %s", code, b)
	}
	revoked, revokedID := newToken("--uses", "0")
	if out, code := c.verge(t, "", "token", "revoke", revokedID); code != 0 {
		t.Fatalf("verge token revoke: exit %d\n%s", code, out)
	}
	if code, b := request(revoked, csr()); code != http.StatusUnauthorized {
		t.Errorf("revoked token: %d %s", code, b)
	}
	multi, _ := newToken("--uses", "0")
	for _, tc := range []struct {
		name, secret, body string
		want               int
	}{
		{"another identity", multi, csr("spiffe://verge.local/ns/default/sa/db"), http.StatusForbidden},
		{"garbage csr", multi, `{"csr":"` + base64.StdEncoding.EncodeToString([]byte("garbage")) + `"}`, http.StatusBadRequest},
		{"oversized body", multi, `{"csr":"` + strings.Repeat("A", 20<<10) + `"}`, http.StatusRequestEntityTooLarge},
		{"no token", "", csr(), http.StatusUnauthorized},
	} {
		if code, b := request(tc.secret, tc.body); code != tc.want {
			t.Errorf("%s: %d, want %d: %s", tc.name, code, tc.want, b)
		}
	}
	if out, code := c.verge(t, "", "token", "list"); code != 0 || !strings.Contains(out, revokedID) || !strings.Contains(out, "revoked") {
		t.Errorf("verge token list: exit %d\n%s", code, out)
	}

	// Root rotation: new certificates verify, the bundle holds both roots.
	if out, code := c.verge(t, "", "ca", "rotate", "--overlap", "1h"); code != 0 {
		t.Fatalf("verge ca rotate: exit %d\n%s", code, out)
	}
	if code, b := request(multi, csr(web)); code != http.StatusOK {
		t.Fatalf("certificate after rotation: %d %s", code, b)
	} else {
		verify(b)
	}
	bundle, bundlePEM := getBundle()
	if n := len(bundle.X509Authorities()); n != 2 {
		t.Errorf("bundle after rotation has %d roots, want 2", n)
	}
	if out, code := c.verge(t, "", "ca", "bundle"); code != 0 || out != bundlePEM+"\n" && out != bundlePEM {
		t.Errorf("verge ca bundle: exit %d\n%s", code, out)
	}

	_, metrics, err := get(http.DefaultClient, c.api+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for reason, n := range map[string]int{
		"used_up_token": 1, "revoked_token": 1, "identity_mismatch": 1, "bad_csr": 1, "too_large": 1, "missing_token": 1,
	} {
		if want := fmt.Sprintf("verge_ca_refusals_total{reason=%q} %d\n", reason, n); !strings.Contains(metrics+"\n", want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if want := "verge_ca_certificates_issued_total 2"; !strings.Contains(metrics, want) {
		t.Errorf("/metrics lacks %q", want)
	}

	// Restart on the same data dir: the same roots, read back from the
	// encrypted file with the generated passphrase.
	if err := c.stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(c.dataDir, "ca", "ca.json"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte("PRIVATE KEY")) {
		t.Errorf("ca.json holds a clear private key")
	}
	if fi, err := os.Stat(filepath.Join(c.dataDir, "ca-passphrase")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("generated passphrase file: %v %v", fi, err)
	}
	c = startCPAt(t, c.dataDir, c.api, c.xds)
	if _, again := getBundle(); again != bundlePEM {
		t.Errorf("bundle changed across a restart:\n%s\nwant\n%s", again, bundlePEM)
	}
	if code, b := request(multi, csr()); code != http.StatusOK {
		t.Errorf("token after restart: %d %s", code, b)
	} else {
		verify(b)
	}
}
