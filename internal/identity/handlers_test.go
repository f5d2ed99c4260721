package identity

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"verge.dev/verge/internal/ca"
)

var td = spiffeid.RequireTrustDomainFromString("verge.local")

// fixture is an identity server over a real CA and a bolt-backed token
// store, with a clock the test moves.
type fixture struct {
	url    string
	srv    *Server
	st     *flakyStore
	log    *hookedLog
	tokens *ca.Tokens
	// revokes counts OnRevoke calls.
	revokes atomic.Int32

	mu        sync.Mutex
	now       time.Time
	saved     []*ca.Material
	persistFn func(*ca.Material) error
}

func (f *fixture) clock() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fixture) advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
}

func newFixture(t *testing.T, mat *ca.Material) *fixture {
	t.Helper()
	f := &fixture{now: time.Now()}
	c, err := ca.New(ca.Config{TrustDomain: td, Material: mat, Clock: f.clock})
	if err != nil {
		t.Fatal(err)
	}
	f.st = &flakyStore{Store: openStore(t)}
	f.log = &hookedLog{CertificateLog: NewStoreCertificates(f.st)}
	f.tokens = ca.NewTokens(td, NewStoreTokens(f.st), f.clock)
	srv, err := New(Config{
		CA:           c,
		Tokens:       f.tokens,
		Certificates: f.log,
		Clock:        f.clock,
		OnRevoke:     func() { f.revokes.Add(1) },
		Persist: func(m *ca.Material) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			if f.persistFn != nil {
				return f.persistFn(m)
			}
			f.saved = append(f.saved, m)
			return nil
		},
		Registerer: prometheus.NewRegistry(),
	}, slog.New(slog.NewTextHandler(t.Output(), nil)))
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	for _, p := range []string{TokensPath, TokensPath + "/", CertificatesPath, CertificatesPath + "/", BundlePath, RotatePath} {
		mux.Handle(p, srv.Handler())
	}
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	f.url, f.srv = hs.URL, srv
	return f
}

// do sends a request and returns the status code and body.
func (f *fixture) do(t *testing.T, method, path, auth, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, f.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
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

func (f *fixture) createToken(t *testing.T, body string) TokenCreated {
	t.Helper()
	code, b := f.do(t, http.MethodPost, TokensPath, "", body)
	if code != http.StatusCreated {
		t.Fatalf("create token %s: %d %s", body, code, b)
	}
	var tc TokenCreated
	if err := json.Unmarshal(b, &tc); err != nil {
		t.Fatal(err)
	}
	return tc
}

// causes returns the field of each cause of a Status body.
func causes(t *testing.T, b []byte) []string {
	t.Helper()
	var st struct {
		Kind    string `json:"kind"`
		Details struct {
			Causes []struct {
				Field string `json:"field"`
			} `json:"causes"`
		} `json:"details"`
	}
	if err := json.Unmarshal(b, &st); err != nil || st.Kind != "Status" {
		t.Fatalf("not a Status: %s (%v)", b, err)
	}
	var out []string
	for _, c := range st.Details.Causes {
		out = append(out, c.Field)
	}
	return out
}

func TestCreateToken(t *testing.T) {
	f := newFixture(t, nil)
	for _, tc := range []struct {
		name       string
		body       string
		wantCode   int
		wantCauses []string
		want       TokenCreated // compared without ID, Token, ExpiresAt
		wantTTL    time.Duration
	}{
		{name: "defaults", body: `{"serviceAccount":"web"}`, wantCode: 201,
			want: TokenCreated{Namespace: "default", ServiceAccount: "web", Uses: 1}, wantTTL: time.Hour},
		{name: "everything", body: `{"namespace":"shop","serviceAccount":"cart.v2","ttl":"30m","uses":0}`, wantCode: 201,
			want: TokenCreated{Namespace: "shop", ServiceAccount: "cart.v2", Uses: 0}, wantTTL: 30 * time.Minute},
		{name: "max ttl", body: `{"serviceAccount":"web","ttl":"720h","uses":5}`, wantCode: 201,
			want: TokenCreated{Namespace: "default", ServiceAccount: "web", Uses: 5}, wantTTL: MaxTokenTTL},
		{name: "empty body", body: ``, wantCode: 422, wantCauses: []string{"serviceAccount"}},
		{name: "every field bad", body: `{"namespace":"Bad_NS","serviceAccount":"Web!","ttl":"721h","uses":-1}`, wantCode: 422,
			wantCauses: []string{"namespace", "serviceAccount", "ttl", "uses"}},
		{name: "ttl not a duration", body: `{"serviceAccount":"web","ttl":"1 day"}`, wantCode: 422, wantCauses: []string{"ttl"}},
		{name: "ttl negative", body: `{"serviceAccount":"web","ttl":"-1h"}`, wantCode: 422, wantCauses: []string{"ttl"}},
		{name: "unknown field", body: `{"serviceAccount":"web","service":"web"}`, wantCode: 400},
		{name: "not json", body: `serviceAccount: web`, wantCode: 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, b := f.do(t, http.MethodPost, TokensPath, "", tc.body)
			if code != tc.wantCode {
				t.Fatalf("code %d, want %d: %s", code, tc.wantCode, b)
			}
			if code != 201 {
				if diff := cmp.Diff(tc.wantCauses, causes(t, b)); diff != "" {
					t.Errorf("causes (-want +got):\n%s", diff)
				}
				return
			}
			var got TokenCreated
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(got.Token, "vt1."+got.ID+".") {
				t.Errorf("token %q does not carry id %q", got.Token, got.ID)
			}
			if ttl := got.ExpiresAt.Sub(f.clock()); ttl != tc.wantTTL {
				t.Errorf("expires in %v, want %v", ttl, tc.wantTTL)
			}
			got.ID, got.Token, got.ExpiresAt = "", "", time.Time{}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestListAndRevokeTokens(t *testing.T) {
	f := newFixture(t, nil)
	a := f.createToken(t, `{"serviceAccount":"web"}`)
	f.advance(time.Second)
	b := f.createToken(t, `{"namespace":"shop","serviceAccount":"cart","uses":0}`)

	code, body := f.do(t, http.MethodDelete, TokensPath+"/"+a.ID, "", "")
	if code != http.StatusOK {
		t.Fatalf("revoke: %d %s", code, body)
	}
	code, body = f.do(t, http.MethodGet, TokensPath, "", "")
	if code != http.StatusOK {
		t.Fatalf("list: %d %s", code, body)
	}
	if bytes.Contains(body, []byte(a.Token)) || bytes.Contains(body, []byte(b.Token)) || bytes.Contains(body, []byte("secret")) {
		t.Errorf("list shows a secret: %s", body)
	}
	var list TokenList
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatal(err)
	}
	want := []TokenInfo{
		{ID: a.ID, Namespace: "default", ServiceAccount: "web", ExpiresAt: a.ExpiresAt, Uses: 1, Revoked: true},
		{ID: b.ID, Namespace: "shop", ServiceAccount: "cart", ExpiresAt: b.ExpiresAt, Uses: 0},
	}
	if diff := cmp.Diff(want, list.Items, cmp.Comparer(func(x, y time.Time) bool { return x.Equal(y) }),
		cmp.FilterPath(func(p cmp.Path) bool { return p.Last().String() == ".CreatedAt" }, cmp.Ignore())); diff != "" {
		t.Errorf("list (-want +got):\n%s", diff)
	}

	if code, body := f.do(t, http.MethodDelete, TokensPath+"/0000000000000000", "", ""); code != http.StatusNotFound {
		t.Errorf("revoke unknown: %d %s", code, body)
	}
	if code, _ := f.do(t, http.MethodPut, TokensPath, "", "{}"); code != http.StatusMethodNotAllowed {
		t.Errorf("PUT tokens: %d, want 405", code)
	}
}

// newCSR returns a DER CSR for key, naming uris as URI SANs.
func newCSR(t *testing.T, key crypto.Signer, uris ...string) []byte {
	t.Helper()
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: "test"}}
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
	return der
}

func p256(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func csrBody(der []byte) string {
	return `{"csr":"` + base64.StdEncoding.EncodeToString(der) + `"}`
}

// verify checks a CertificateResponse with go-spiffe against the bundle the
// server publishes now and returns the SPIFFE ID. fresh says the response
// is from after the last rotation, so its trust bundle is the current one.
func (f *fixture) verify(t *testing.T, b []byte, fresh bool) spiffeid.ID {
	t.Helper()
	var resp CertificateResponse
	if err := json.Unmarshal(b, &resp); err != nil {
		t.Fatal(err)
	}
	var chain []*x509.Certificate
	for _, p := range resp.CertificateChain {
		blk, _ := pem.Decode([]byte(p))
		if blk == nil {
			t.Fatalf("chain entry is not PEM: %q", p)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	code, pemBundle := f.do(t, http.MethodGet, BundlePath, "", "")
	if code != http.StatusOK {
		t.Fatalf("bundle: %d", code)
	}
	bundle, err := x509bundle.Parse(td, pemBundle)
	if err != nil {
		t.Fatal(err)
	}
	id, _, err := x509svid.Verify(chain, bundle, x509svid.WithTime(f.clock()))
	if err != nil {
		t.Fatalf("verify svid: %v", err)
	}
	if id.String() != resp.SPIFFEID || !resp.ExpiresAt.Equal(chain[0].NotAfter) {
		t.Errorf("response says %s until %v; certificate %s until %v", resp.SPIFFEID, resp.ExpiresAt, id, chain[0].NotAfter)
	}
	if got := strings.Join(resp.TrustBundle, ""); fresh && got != string(pemBundle) {
		t.Errorf("trust bundle in response differs from GET %s", BundlePath)
	}
	return id
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func TestIssueCertificate(t *testing.T) {
	f := newFixture(t, nil)
	const web = "spiffe://verge.local/ns/default/sa/web"
	key := p256(t)
	good := csrBody(newCSR(t, key))
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	revoked := f.createToken(t, `{"serviceAccount":"web"}`)
	if code, _ := f.do(t, http.MethodDelete, TokensPath+"/"+revoked.ID, "", ""); code != http.StatusOK {
		t.Fatal("revoke failed")
	}
	expired := f.createToken(t, `{"serviceAccount":"web","ttl":"1m"}`)
	single := f.createToken(t, `{"serviceAccount":"web"}`)
	multi := f.createToken(t, `{"serviceAccount":"web","uses":0}`)
	f.advance(2 * time.Minute)
	wrongSecret := "vt1." + multi.ID + "." + base64.RawURLEncoding.EncodeToString(make([]byte, 32))

	for _, tc := range []struct {
		name       string
		auth, body string
		wantCode   int
		wantReason string
	}{
		// A malformed CSR does not spend the single-use token...
		{"garbage csr", "Bearer " + single.Token, csrBody([]byte("not a csr")), 400, ReasonBadCSR},
		{"csr not base64", "Bearer " + single.Token, `{"csr":"%%%"}`, 400, ReasonBadCSR},
		{"unknown field", "Bearer " + single.Token, `{"csr":"","key":"x"}`, 400, ReasonBadCSR},
		{"empty csr", "Bearer " + single.Token, `{}`, 400, ReasonBadCSR},
		{"p-384 key", "Bearer " + single.Token, csrBody(newCSR(t, p384)), 400, ReasonUnsupportedKey},
		{"csr too large", "Bearer " + single.Token, csrBody(make([]byte, ca.MaxCSRSize+1)), 400, ReasonTooLarge},
		{"body too large", "Bearer " + single.Token, csrBody(make([]byte, maxRequestBytes)), 413, ReasonTooLarge},
		// ...so it still works here, once.
		{"single-use token", "Bearer " + single.Token, good, 200, ""},
		{"single-use token again", "Bearer " + single.Token, good, 401, ReasonUsedUpToken},
		{"csr with the token's identity", "Bearer " + multi.Token, csrBody(newCSR(t, key, web)), 200, ""},
		{"multi-use token again", "bearer " + multi.Token, good, 200, ""},
		{"csr for another identity", "Bearer " + multi.Token, csrBody(newCSR(t, key, "spiffe://verge.local/ns/default/sa/db")), 403, ReasonIdentityMismatch},
		{"csr for two identities", "Bearer " + multi.Token, csrBody(newCSR(t, key, web, web)), 403, ReasonIdentityMismatch},
		{"no token", "", good, 401, ReasonMissingToken},
		{"basic auth", "Basic d2ViOndlYg==", good, 401, ReasonMissingToken},
		{"not a token", "Bearer nope", good, 401, ReasonInvalidToken},
		{"wrong secret", "Bearer " + wrongSecret, good, 401, ReasonInvalidToken},
		{"revoked token", "Bearer " + revoked.Token, good, 401, ReasonRevokedToken},
		{"expired token", "Bearer " + expired.Token, good, 401, ReasonExpiredToken},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := map[string]float64{}
			for _, r := range reasons {
				before[r] = counterValue(t, f.srv.refusals.WithLabelValues(r))
			}
			issued := counterValue(t, f.srv.issued)
			code, b := f.do(t, http.MethodPost, CertificatesPath, tc.auth, tc.body)
			if code != tc.wantCode {
				t.Fatalf("code %d, want %d: %s", code, tc.wantCode, b)
			}
			if code == 200 {
				if id := f.verify(t, b, true); id.String() != web {
					t.Errorf("spiffe id %s, want %s", id, web)
				}
				if got := counterValue(t, f.srv.issued) - issued; got != 1 {
					t.Errorf("issued counter +%v, want +1", got)
				}
				return
			}
			if code == 401 && (bytes.Contains(b, []byte("revoked")) || bytes.Contains(b, []byte("expired")) || bytes.Contains(b, []byte("uses"))) {
				t.Errorf("401 says which token problem it was: %s", b)
			}
			for _, r := range reasons {
				want := 0.0
				if r == tc.wantReason {
					want = 1
				}
				if got := counterValue(t, f.srv.refusals.WithLabelValues(r)) - before[r]; got != want {
					t.Errorf("refusals{reason=%q} +%v, want +%v", r, got, want)
				}
			}
		})
	}
}

func TestBundleAndRotate(t *testing.T) {
	f := newFixture(t, nil)
	tok := f.createToken(t, `{"serviceAccount":"web","uses":0}`)
	issue := func() []byte {
		t.Helper()
		code, b := f.do(t, http.MethodPost, CertificatesPath, "Bearer "+tok.Token, csrBody(newCSR(t, p256(t))))
		if code != 200 {
			t.Fatalf("issue: %d %s", code, b)
		}
		return b
	}
	before := issue()

	for _, tc := range []struct{ name, body string }{
		{"too short", `{"overlap":"30s"}`},
		{"not a duration", `{"overlap":"two days"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, b := f.do(t, http.MethodPost, RotatePath, "", tc.body)
			if code != 422 {
				t.Fatalf("rotate %s: %d %s", tc.body, code, b)
			}
			if diff := cmp.Diff([]string{"overlap"}, causes(t, b)); diff != "" {
				t.Errorf("causes (-want +got):\n%s", diff)
			}
		})
	}
	if len(f.saved) != 0 {
		t.Fatalf("refused rotations persisted material")
	}

	code, b := f.do(t, http.MethodPost, RotatePath, "", ``)
	if code != 200 {
		t.Fatalf("rotate: %d %s", code, b)
	}
	var rr RotateResponse
	if err := json.Unmarshal(b, &rr); err != nil {
		t.Fatal(err)
	}
	if len(rr.TrustBundle) != 2 {
		t.Errorf("bundle after rotation has %d roots, want 2", len(rr.TrustBundle))
	}
	if len(f.saved) != 1 || f.saved[0] != f.srv.ca.Material() {
		t.Errorf("rotation persisted %d materials, want the current one", len(f.saved))
	}
	// Certificates from before and after the rotation both verify while
	// the overlap lasts (the default 48h).
	f.verify(t, before, false)
	f.verify(t, issue(), true)
	f.advance(DefaultOverlap + time.Minute)
	if _, pemBundle := f.do(t, http.MethodGet, BundlePath, "", ""); bytes.Count(pemBundle, []byte("BEGIN CERTIFICATE")) != 1 {
		t.Errorf("bundle after the overlap:\n%s", pemBundle)
	}

	f.persistFn = func(*ca.Material) error { return errors.New("disk full") }
	if code, b := f.do(t, http.MethodPost, RotatePath, "", `{"overlap":"1m"}`); code != 500 || !bytes.Contains(b, []byte("could not be saved")) {
		t.Errorf("rotate with failing persist: %d %s", code, b)
	}
}

func TestRotateOperatorCA(t *testing.T) {
	key := p256(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "operator root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	mat, err := ca.MaterialFromPEM(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}))
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, mat)
	if code, b := f.do(t, http.MethodPost, RotatePath, "", `{"overlap":"1h"}`); code != http.StatusConflict {
		t.Errorf("rotate operator ca: %d %s", code, b)
	}
	if len(f.saved) != 0 {
		t.Errorf("refused rotation persisted material")
	}
}

func TestTokenID(t *testing.T) {
	for in, want := range map[string]string{
		"vt1.0123456789abcdef.c2VjcmV0": "0123456789abcdef",
		"vt1.0123456789abcdef":          "",
		"vt1.short.c2VjcmV0":            "",
		"vt1.0123456789ABCDEF.x":        "",
		"some-other-secret":             "",
	} {
		if got := tokenID(in); got != want {
			t.Errorf("tokenID(%q) = %q, want %q", in, got, want)
		}
	}
}
