package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"verge.dev/verge/internal/ca"
	"verge.dev/verge/internal/store"
)

// flakyStore fails writes under CertificatePrefix while failCerts is set.
type flakyStore struct {
	store.Store
	failCerts atomic.Bool
}

var errDiskFull = errors.New("disk full")

func (s *flakyStore) Create(ctx context.Context, key string, value []byte) (int64, error) {
	if s.failCerts.Load() && strings.HasPrefix(key, CertificatePrefix) {
		return 0, errDiskFull
	}
	return s.Store.Create(ctx, key, value)
}

// hookedLog runs beforeCreate (once) before recording a certificate: the
// test's stand-in for a revocation racing with an issuance.
type hookedLog struct {
	CertificateLog
	mu           sync.Mutex
	beforeCreate func()
}

func (l *hookedLog) Create(ctx context.Context, c CertificateInfo) error {
	l.mu.Lock()
	hook := l.beforeCreate
	l.beforeCreate = nil
	l.mu.Unlock()
	if hook != nil {
		hook()
	}
	return l.CertificateLog.Create(ctx, c)
}

const webID = "spiffe://verge.local/ns/default/sa/web"

// issue obtains a certificate with a join token and returns its leaf.
func (f *fixture) issue(t *testing.T, token string) []*x509.Certificate {
	t.Helper()
	code, b := f.do(t, http.MethodPost, CertificatesPath, "Bearer "+token, csrBody(newCSR(t, p256(t))))
	if code != http.StatusOK {
		t.Fatalf("issue: %d %s", code, b)
	}
	return parseChain(t, b)
}

func parseChain(t *testing.T, b []byte) []*x509.Certificate {
	t.Helper()
	var resp CertificateResponse
	if err := json.Unmarshal(b, &resp); err != nil {
		t.Fatal(err)
	}
	certs, err := ca.ParseCertificatesPEM([]byte(strings.Join(resp.CertificateChain, "")))
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

// renew sends a renewal presenting chain as the TLS client certificate.
func (f *fixture) renew(t *testing.T, chain []*x509.Certificate) (int, []byte) {
	t.Helper()
	req := httptest.NewRequestWithContext(t.Context(), http.MethodPost, CertificatesPath, strings.NewReader(csrBody(newCSR(t, p256(t)))))
	req.TLS = &tls.ConnectionState{PeerCertificates: chain}
	rec := httptest.NewRecorder()
	f.srv.Handler().ServeHTTP(rec, req)
	return rec.Code, rec.Body.Bytes()
}

func (f *fixture) list(t *testing.T, query string) []CertificateInfo {
	t.Helper()
	code, b := f.do(t, http.MethodGet, CertificatesPath+query, "", "")
	if code != http.StatusOK {
		t.Fatalf("list %s: %d %s", query, code, b)
	}
	var l CertificateList
	if err := json.Unmarshal(b, &l); err != nil {
		t.Fatal(err)
	}
	if l.Items == nil {
		t.Errorf("list %s: items is null, want []", query)
	}
	return l.Items
}

func serials(certs []CertificateInfo) []string {
	var out []string
	for _, c := range certs {
		out = append(out, c.Serial)
	}
	return out
}

// TestCertificateLog: issuance and renewal are recorded with the lineage,
// listed oldest first, filtered, and dropped once expired.
func TestCertificateLog(t *testing.T) {
	f := newFixture(t, nil)
	tok := f.createToken(t, `{"serviceAccount":"web","uses":0}`)
	other := f.createToken(t, `{"serviceAccount":"db"}`)
	first := f.issue(t, tok.Token)
	if got := ca.Lineage(first[0]); got != tok.ID {
		t.Fatalf("issued certificate lineage %q, want token %s", got, tok.ID)
	}
	f.advance(time.Minute)
	code, b := f.renew(t, first)
	if code != http.StatusOK {
		t.Fatalf("renew: %d %s", code, b)
	}
	renewed := parseChain(t, b)
	if got := ca.Lineage(renewed[0]); got != tok.ID {
		t.Errorf("renewed certificate lineage %q, want token %s", got, tok.ID)
	}
	f.advance(time.Minute)
	db := f.issue(t, other.Token)

	all := f.list(t, "")
	want := []CertificateInfo{
		{Serial: first[0].SerialNumber.Text(16), SPIFFEID: webID, TokenID: tok.ID, ExpiresAt: first[0].NotAfter},
		{Serial: renewed[0].SerialNumber.Text(16), SPIFFEID: webID, TokenID: tok.ID, ExpiresAt: renewed[0].NotAfter},
		{Serial: db[0].SerialNumber.Text(16), SPIFFEID: "spiffe://verge.local/ns/default/sa/db", TokenID: other.ID, ExpiresAt: db[0].NotAfter},
	}
	opts := []cmp.Option{
		cmp.Comparer(func(x, y time.Time) bool { return x.Equal(y) }),
		cmp.FilterPath(func(p cmp.Path) bool { return p.Last().String() == ".IssuedAt" }, cmp.Ignore()),
	}
	if diff := cmp.Diff(want, all, opts...); diff != "" {
		t.Errorf("list (-want +got):\n%s", diff)
	}
	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"?tokenID=" + tok.ID, []string{want[0].Serial, want[1].Serial}},
		{"?spiffeID=spiffe://verge.local/ns/default/sa/db", []string{want[2].Serial}},
		{"?spiffeID=" + webID + "&tokenID=" + other.ID, nil},
		{"?tokenID=0000000000000000", nil},
	} {
		if diff := cmp.Diff(tc.want, serials(f.list(t, tc.query))); diff != "" {
			t.Errorf("list %s (-want +got):\n%s", tc.query, diff)
		}
	}

	// Expired certificates leave the list, and Prune removes their records.
	f.advance(ca.DefaultSVIDTTL)
	if got := f.list(t, ""); len(got) != 0 {
		t.Errorf("list after expiry: %v", serials(got))
	}
	n, err := f.srv.Prune(t.Context())
	if err != nil || n != 3 {
		t.Errorf("Prune = %d, %v; want 3", n, err)
	}
	if kvs, _, _ := f.st.List(t.Context(), CertificatePrefix); len(kvs) != 0 {
		t.Errorf("%d records left after prune", len(kvs))
	}
}

// TestRevokeCertificate: revoking by serial, what it answers, and that
// the certificate can no longer be renewed.
func TestRevokeCertificate(t *testing.T) {
	f := newFixture(t, nil)
	tok := f.createToken(t, `{"serviceAccount":"web","uses":0}`)
	chain := f.issue(t, tok.Token)
	f.advance(time.Second)
	keep := f.issue(t, tok.Token)
	serial := chain[0].SerialNumber.Text(16)
	revokePath := CertificatesPath + "/" + serial + "/revoke"

	code, b := f.do(t, http.MethodPost, CertificatesPath+"/"+serial+"/revoke", "", `{"reason":"`+strings.Repeat("x", MaxRevokeReason+1)+`"}`)
	if code != http.StatusUnprocessableEntity {
		t.Fatalf("revoke with a long reason: %d %s", code, b)
	}
	if diff := cmp.Diff([]string{"reason"}, causes(t, b)); diff != "" {
		t.Errorf("causes (-want +got):\n%s", diff)
	}

	before := counterValue(t, f.srv.revokedN)
	// Upper case and leading zeros name the same serial.
	code, b = f.do(t, http.MethodPost, CertificatesPath+"/00"+strings.ToUpper(serial)+"/revoke", "", `{"reason":"key leaked"}`)
	if code != http.StatusOK {
		t.Fatalf("revoke: %d %s", code, b)
	}
	var info CertificateInfo
	if err := json.Unmarshal(b, &info); err != nil {
		t.Fatal(err)
	}
	if info.Serial != serial || info.RevokedAt == nil || info.Reason != "key leaked" || info.TokenID != tok.ID {
		t.Errorf("revoke answered %+v", info)
	}
	if got := counterValue(t, f.srv.revokedN) - before; got != 1 {
		t.Errorf("revoked counter +%v, want +1", got)
	}
	if f.revokes.Load() != 1 {
		t.Errorf("OnRevoke called %d times, want 1", f.revokes.Load())
	}
	if !f.srv.IsRevoked(chain[0].SerialNumber) || f.srv.IsRevoked(keep[0].SerialNumber) {
		t.Errorf("IsRevoked: revoked %v, kept %v", f.srv.IsRevoked(chain[0].SerialNumber), f.srv.IsRevoked(keep[0].SerialNumber))
	}
	if r := f.srv.Revocations(); len(r) != 1 || r[0].Serial.Cmp(chain[0].SerialNumber) != 0 {
		t.Errorf("Revocations = %v", r)
	}

	// Again: the first revocation stands, nothing is counted twice.
	f.advance(time.Minute)
	code, b = f.do(t, http.MethodPost, revokePath, "", "")
	var again CertificateInfo
	if err := json.Unmarshal(b, &again); err != nil || code != http.StatusOK || !again.RevokedAt.Equal(*info.RevokedAt) || again.Reason != "key leaked" {
		t.Errorf("revoke again: %d %s", code, b)
	}
	if got := counterValue(t, f.srv.revokedN) - before; got != 1 || f.revokes.Load() != 1 {
		t.Errorf("after a second revoke: counter +%v, OnRevoke %d; want +1, 1", got, f.revokes.Load())
	}
	for _, p := range []string{"/0000000000000001/revoke", "/not-hex/revoke", "/0/revoke"} {
		if code, b := f.do(t, http.MethodPost, CertificatesPath+p, "", ""); code != http.StatusNotFound || !strings.Contains(string(b), `"kind":"Status"`) {
			t.Errorf("revoke %s: %d %s, want a 404 Status", p, code, b)
		}
	}

	refusedBefore := counterValue(t, f.srv.refusals.WithLabelValues(ReasonRevokedCertificate))
	if code, b := f.renew(t, chain); code != http.StatusForbidden || !strings.Contains(string(b), "revoked") {
		t.Errorf("renew a revoked certificate: %d %s", code, b)
	}
	if got := counterValue(t, f.srv.refusals.WithLabelValues(ReasonRevokedCertificate)) - refusedBefore; got != 1 {
		t.Errorf("refusals{revoked_certificate} +%v, want +1", got)
	}
	if code, b := f.renew(t, keep); code != http.StatusOK {
		t.Errorf("renew another certificate of the same token: %d %s", code, b)
	}
	if got := f.list(t, "?tokenID="+tok.ID); len(got) != 3 || got[0].Serial != serial || got[0].RevokedAt == nil || got[1].RevokedAt != nil {
		t.Errorf("list shows %+v", got)
	}
}

// TestRevokeTokenCascade: revoking a join token revokes every certificate
// of its lineage, renewals included, and nothing else.
func TestRevokeTokenCascade(t *testing.T) {
	f := newFixture(t, nil)
	tok := f.createToken(t, `{"serviceAccount":"web","uses":0}`)
	other := f.createToken(t, `{"serviceAccount":"web","uses":0}`)
	a := f.issue(t, tok.Token)
	b := f.issue(t, tok.Token)
	code, body := f.renew(t, a)
	if code != http.StatusOK {
		t.Fatalf("renew: %d %s", code, body)
	}
	renewed := parseChain(t, body)
	kept := f.issue(t, other.Token)
	// A certificate of the lineage the log never saw (issued before the
	// log existed) is refused by its lineage.
	unrecorded, err := f.srv.ca.SignCSRWith(newCSR(t, p256(t)), spiffeid.RequireFromString(webID), ca.SignOptions{Lineage: tok.ID})
	if err != nil {
		t.Fatal(err)
	}

	code, body = f.do(t, http.MethodDelete, TokensPath+"/"+tok.ID, "", "")
	if code != http.StatusOK {
		t.Fatalf("revoke token: %d %s", code, body)
	}
	var tr TokenRevoked
	if err := json.Unmarshal([]byte(body), &tr); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(TokenRevoked{ID: tok.ID, RevokedCertificates: 3}, tr); diff != "" {
		t.Errorf("answer (-want +got):\n%s", diff)
	}
	if f.revokes.Load() != 1 {
		t.Errorf("OnRevoke called %d times, want 1", f.revokes.Load())
	}
	for _, c := range f.list(t, "?tokenID="+tok.ID) {
		if c.RevokedAt == nil || c.Reason != "token "+tok.ID+" revoked" {
			t.Errorf("certificate %s: revoked %v, reason %q", c.Serial, c.RevokedAt, c.Reason)
		}
	}
	for name, chain := range map[string][]*x509.Certificate{"first": a, "second": b, "renewed": renewed, "unrecorded": unrecorded} {
		if code, body := f.renew(t, chain); code != http.StatusForbidden {
			t.Errorf("renew %s certificate of a revoked token: %d %s", name, code, body)
		}
	}
	if code, body := f.renew(t, kept); code != http.StatusOK {
		t.Errorf("renew a certificate of another token: %d %s", code, body)
	}
	// Again: nothing more to revoke.
	code, body = f.do(t, http.MethodDelete, TokensPath+"/"+tok.ID, "", "")
	if err := json.Unmarshal([]byte(body), &tr); err != nil || code != http.StatusOK || tr.RevokedCertificates != 0 {
		t.Errorf("revoke token again: %d %s", code, body)
	}
}

// TestRevocationRaces: a token revocation that lists the log before a new
// certificate's record is written still keeps that certificate from being
// handed out.
func TestRevocationRaces(t *testing.T) {
	f := newFixture(t, nil)
	tok := f.createToken(t, `{"serviceAccount":"web","uses":0}`)
	chain := f.issue(t, tok.Token)
	revokeToken := func() {
		if err := f.tokens.Revoke(context.Background(), tok.ID); err != nil {
			t.Error(err)
		}
	}

	t.Run("renewal", func(t *testing.T) {
		f.log.beforeCreate = revokeToken
		if code, b := f.renew(t, chain); code != http.StatusForbidden {
			t.Fatalf("renew during token revocation: %d %s", code, b)
		}
		var fresh []CertificateInfo
		for _, c := range f.list(t, "?tokenID="+tok.ID) {
			if c.Serial != chain[0].SerialNumber.Text(16) {
				fresh = append(fresh, c)
			}
		}
		if len(fresh) != 1 || fresh[0].RevokedAt == nil {
			t.Errorf("the certificate signed during the revocation: %+v, want one revoked record", fresh)
		}
		if r := f.srv.Revocations(); len(r) != 1 || r[0].Serial.Text(16) != fresh[0].Serial {
			t.Errorf("Revocations = %v", r)
		}
	})

	t.Run("issuance", func(t *testing.T) {
		tok2 := f.createToken(t, `{"serviceAccount":"web","uses":0}`)
		f.log.beforeCreate = func() {
			if err := f.tokens.Revoke(context.Background(), tok2.ID); err != nil {
				t.Error(err)
			}
		}
		before := counterValue(t, f.srv.refusals.WithLabelValues(ReasonRevokedToken))
		code, b := f.do(t, http.MethodPost, CertificatesPath, "Bearer "+tok2.Token, csrBody(newCSR(t, p256(t))))
		if code != http.StatusUnauthorized {
			t.Fatalf("issue during token revocation: %d %s", code, b)
		}
		if got := counterValue(t, f.srv.refusals.WithLabelValues(ReasonRevokedToken)) - before; got != 1 {
			t.Errorf("refusals{revoked_token} +%v, want +1", got)
		}
		if got := f.list(t, "?tokenID="+tok2.ID); len(got) != 1 || got[0].RevokedAt == nil {
			t.Errorf("record of the refused certificate: %+v", got)
		}
	})
}

// TestRecordFailure: a certificate whose record cannot be written is not
// handed out.
func TestRecordFailure(t *testing.T) {
	f := newFixture(t, nil)
	tok := f.createToken(t, `{"serviceAccount":"web","uses":0}`)
	chain := f.issue(t, tok.Token)
	f.st.failCerts.Store(true)
	issued := counterValue(t, f.srv.issued)
	if code, b := f.do(t, http.MethodPost, CertificatesPath, "Bearer "+tok.Token, csrBody(newCSR(t, p256(t)))); code != http.StatusInternalServerError || strings.Contains(string(b), "CERTIFICATE") {
		t.Errorf("issue with a failing log: %d %s", code, b)
	}
	if code, b := f.renew(t, chain); code != http.StatusInternalServerError || strings.Contains(string(b), "CERTIFICATE") {
		t.Errorf("renew with a failing log: %d %s", code, b)
	}
	if got := counterValue(t, f.srv.issued); got != issued {
		t.Errorf("issued counter moved by %v", got-issued)
	}
}

// TestSweep: Run's sweep prunes, reloads revocations from the log (as
// after a restart) and re-announces them until they expire.
func TestSweep(t *testing.T) {
	f := newFixture(t, nil)
	tok := f.createToken(t, `{"serviceAccount":"web","uses":0}`)
	chain := f.issue(t, tok.Token)
	if err := f.srv.Record(t.Context(), chain[0]); err == nil {
		t.Error("recording a serial twice succeeded")
	}
	if code, b := f.do(t, http.MethodPost, CertificatesPath+"/"+chain[0].SerialNumber.Text(16)+"/revoke", "", ""); code != http.StatusOK {
		t.Fatalf("revoke: %d %s", code, b)
	}

	// A second server over the same log: the revocation survives.
	restarted, err := New(Config{CA: f.srv.ca, Tokens: f.tokens, Certificates: f.log, Clock: f.clock,
		Persist: func(*ca.Material) error { return nil }}, f.srv.logger)
	if err != nil {
		t.Fatal(err)
	}
	if restarted.IsRevoked(chain[0].SerialNumber) {
		t.Fatal("revoked before Refresh")
	}
	if changed, err := restarted.Refresh(t.Context()); err != nil || !changed || !restarted.IsRevoked(chain[0].SerialNumber) {
		t.Errorf("Refresh = %v, %v; revoked %v", changed, err, restarted.IsRevoked(chain[0].SerialNumber))
	}

	calls := f.revokes.Load()
	f.srv.sweep(t.Context())
	if f.revokes.Load() != calls+1 {
		t.Error("sweep with a revocation in force did not call OnRevoke")
	}
	f.advance(ca.DefaultSVIDTTL)
	f.srv.sweep(t.Context())
	if f.srv.IsRevoked(chain[0].SerialNumber) || len(f.srv.Revocations()) != 0 {
		t.Error("expired revocation still in force")
	}
	if f.revokes.Load() != calls+2 {
		t.Error("sweep that dropped a revocation did not call OnRevoke")
	}
	f.srv.sweep(t.Context())
	if f.revokes.Load() != calls+2 {
		t.Error("sweep without revocations called OnRevoke")
	}
	if _, err := f.log.Get(t.Context(), chain[0].SerialNumber.Text(16)); !errors.Is(err, ErrCertificateNotFound) {
		t.Errorf("expired record not pruned: %v", err)
	}
}

// TestRunStops: Run sweeps at once and returns nil when its context ends.
func TestRunStops(t *testing.T) {
	f := newFixture(t, nil)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- f.srv.Run(ctx) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
}

func TestNormalSerial(t *testing.T) {
	for in, want := range map[string]string{
		"0aBc": "abc", "1": "1", "": "", "0": "", "-1": "", "xyz": "", "a/b": "", strings.Repeat("f", 65): "",
	} {
		got, ok := normalSerial(in)
		if got != want || ok != (want != "") {
			t.Errorf("normalSerial(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
	if s, _ := normalSerial(new(big.Int).Lsh(big.NewInt(1), 127).Text(16)); len(s) != 32 {
		t.Errorf("128-bit serial normalised to %q", s)
	}
}
