package svid

import (
	"context"
	"crypto"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var webID = spiffeid.RequireFromString("spiffe://verge.local/ns/default/sa/web")

// A join token over plaintext loopback gives the SVID of the token's
// identity, persisted with mode 0600, and counted.
func TestFirstIssuance(t *testing.T) {
	cp := newControlPlane(t, time.Hour)
	dir := t.TempDir()
	s, err := New(testConfig(t, cp.url("http"), cp.token(t, "web", 1), dir))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetX509SVID(); err == nil {
		t.Error("GetX509SVID before Run: want an error")
	}
	runSource(t, s)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := s.Wait(ctx); err != nil {
		t.Fatalf("Wait() = %v", err)
	}
	if s.ID() != webID {
		t.Errorf("ID() = %v, want %v", s.ID(), webID)
	}
	sv, _ := s.GetX509SVID()
	if _, _, err := x509svid.Verify(sv.Certificates, cp.ca.Bundle()); err != nil {
		t.Errorf("SVID does not verify under the CA bundle: %v", err)
	}
	b, err := s.GetX509BundleForTrustDomain(testTD)
	if err != nil || !b.Equal(cp.ca.Bundle()) {
		t.Errorf("bundle = %v, %v; want the CA's", b, err)
	}
	if _, err := s.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("other.td")); err == nil {
		t.Error("bundle of another trust domain: want an error")
	}
	if s.APIBase() != cp.url("https") {
		t.Errorf("APIBase() = %q, want %q", s.APIBase(), cp.url("https"))
	}
	// Persisted right after it is published.
	waitFor(t, FileName, 10*time.Second, func() bool { return HasPersisted(dir) })
	fi, err := os.Stat(filepath.Join(dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s mode = %v, want 0600", FileName, fi.Mode().Perm())
	}
	if got := value(s.renewals.WithLabelValues("success")); got != 1 {
		t.Errorf("renewals{success} = %v, want 1", got)
	}
	if got, want := value(s.expiry), float64(s.NotAfter().Unix()); got != want {
		t.Errorf("expiry gauge = %v, want %v", got, want)
	}
	reg := prometheus.NewPedanticRegistry()
	for _, c := range s.Metrics() {
		if err := reg.Register(c); err != nil {
			t.Errorf("register: %v", err)
		}
	}
}

// First issuance over https verifies the control plane with --ca-file.
func TestFirstIssuanceOverTLS(t *testing.T) {
	cp := newControlPlane(t, time.Hour)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, cp.rootsPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, cp.url("https"), cp.token(t, "web", 1), t.TempDir())
	cfg.CAFile = caFile
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	runSource(t, s)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := s.Wait(ctx); err != nil {
		t.Fatalf("Wait() = %v", err)
	}
	if s.ID() != webID {
		t.Errorf("ID() = %v, want %v", s.ID(), webID)
	}
}

// The SVID is renewed at half its lifetime over mTLS, each time with a new
// key, and watchers are told.
func TestRenewal(t *testing.T) {
	cp := newControlPlane(t, 4*time.Second)
	s, err := New(testConfig(t, cp.url("http"), cp.token(t, "web", 1), t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	runSource(t, s)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := s.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	first, firstKey := serial(s), keyOf(s)
	changed := s.Changed()
	waitFor(t, "two renewals", 60*time.Second, func() bool { return cp.renewals.Load() >= 2 })
	select {
	case <-changed:
	default:
		t.Error("Changed() not closed after a renewal")
	}
	if serial(s) == first {
		t.Error("serial unchanged after renewals")
	}
	if k := keyOf(s); k.(interface{ Equal(crypto.PublicKey) bool }).Equal(firstKey) {
		t.Error("renewal kept the key; want a new key each time")
	}
	if s.ID() != webID {
		t.Errorf("ID() after renewal = %v, want %v", s.ID(), webID)
	}
}

// While the control plane is down the proxy keeps its certificate, and it
// renews once the control plane is back.
func TestOutageKeepsCertificate(t *testing.T) {
	cp := newControlPlane(t, 10*time.Second)
	s, err := New(testConfig(t, cp.url("http"), cp.token(t, "web", 1), t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	runSource(t, s)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := s.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	first := serial(s)
	addr := cp.url("")[3:] // host:port
	cp.stop()
	waitFor(t, "failed renewals", 60*time.Second, func() bool {
		return value(s.renewals.WithLabelValues("failure")) >= 2
	})
	if got := serial(s); got != first {
		t.Fatalf("serial during the outage = %s, want the original %s", got, first)
	}
	cp.start(addr)
	waitFor(t, "renewal after the outage", 60*time.Second, func() bool { return cp.renewals.Load() >= 1 })
	waitFor(t, "new serial", 10*time.Second, func() bool { return serial(s) != first })
}

// A restarted proxy serves its persisted certificate at once, before Run
// and without a token or a reachable control plane.
func TestRestartFromDisk(t *testing.T) {
	cp := newControlPlane(t, time.Hour)
	dir := t.TempDir()
	s, err := New(testConfig(t, cp.url("http"), cp.token(t, "web", 1), dir))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(t.Context())
	go func() { done <- s.Run(ctx) }()
	wctx, wcancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer wcancel()
	if err := s.Wait(wctx); err != nil {
		t.Fatal(err)
	}
	if err := s.SetTrustBundle("verge.local", rawRoots(cp)); err != nil {
		t.Fatal(err)
	}
	cancel()
	<-done
	want := serial(s)
	cp.stop()

	if !HasPersisted(dir) {
		t.Fatal("HasPersisted() = false after issuance")
	}
	s2, err := New(testConfig(t, "http://127.0.0.1:1", "", dir))
	if err != nil {
		t.Fatalf("New from disk: %v", err)
	}
	if got := serial(s2); got != want {
		t.Errorf("serial after restart = %q, want %q", got, want)
	}
	if err := s2.Wait(t.Context()); err != nil {
		t.Errorf("Wait() = %v, want nil at once", err)
	}
	b, err := s2.GetX509BundleForTrustDomain(testTD)
	if err != nil || !b.Equal(cp.ca.Bundle()) {
		t.Errorf("bundle after restart = %v, %v", b, err)
	}
	if st := s2.cur.Load(); st.sds == nil {
		t.Error("SDS bundle not restored")
	}

	// No token and nothing on disk: no way to an identity.
	if _, err := New(testConfig(t, "http://127.0.0.1:1", "", t.TempDir())); !errors.Is(err, ErrNoCredential) {
		t.Errorf("New without token or file = %v, want ErrNoCredential", err)
	}
}

func rawRoots(cp *controlPlane) [][]byte {
	var out [][]byte
	for _, c := range cp.ca.Bundle().X509Authorities() {
		out = append(out, c.Raw)
	}
	return out
}

// A new root in the SDS bundle makes the proxy renew soon, and it gets a
// certificate from the new root; the SDS bundle is served.
func TestBundleChangeTriggersRenewal(t *testing.T) {
	cp := newControlPlane(t, time.Hour)
	s, err := New(testConfig(t, cp.url("http"), cp.token(t, "web", 1), t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	runSource(t, s)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := s.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	// The same roots over SDS (trust domain as an ID): no renewal.
	if err := s.SetTrustBundle("spiffe://verge.local", rawRoots(cp)); err != nil {
		t.Fatal(err)
	}
	oldRoot := cp.ca.Bundle().X509Authorities()[0]
	if err := cp.ca.Rotate(time.Hour); err != nil {
		t.Fatal(err)
	}
	if cp.renewals.Load() != 0 {
		t.Fatalf("renewals before the bundle change = %d, want 0", cp.renewals.Load())
	}
	if err := s.SetTrustBundle("verge.local", rawRoots(cp)); err != nil {
		t.Fatal(err)
	}
	b, _ := s.GetX509BundleForTrustDomain(testTD)
	if len(b.X509Authorities()) != 2 {
		t.Errorf("served bundle has %d roots, want the 2 of the SDS bundle", len(b.X509Authorities()))
	}
	waitFor(t, "renewal after the bundle change", 60*time.Second, func() bool { return cp.renewals.Load() >= 1 })
	waitFor(t, "certificate from the new root", 10*time.Second, func() bool {
		sv, err := s.GetX509SVID()
		return err == nil && sv.Certificates[0].CheckSignatureFrom(oldRoot) != nil
	})

	// Wrong trust domain and garbage are refused.
	if err := s.SetTrustBundle("other.td", rawRoots(cp)); err == nil {
		t.Error("SetTrustBundle(other.td): want an error")
	}
	if err := s.SetTrustBundle("", [][]byte{[]byte("junk")}); err == nil {
		t.Error("SetTrustBundle(junk): want an error")
	}
}

// A refused join token stops Run and is what Wait returns.
func TestBadToken(t *testing.T) {
	cp := newControlPlane(t, time.Hour)
	s, err := New(testConfig(t, cp.url("http"), "vt1.nosuchtoken.abcdefabcdefabcdef", t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	done := runSource(t, s)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := s.Wait(ctx); !isRefusal(err) {
		t.Errorf("Wait() = %v, want ErrTokenRefused", err)
	}
	if err := done(); !isRefusal(err) || !contains(err.Error(), "401") {
		t.Errorf("Run() = %v, want ErrTokenRefused with the 401", err)
	}
}

// HTTPClient talks mTLS to the control plane and refuses a server that is
// not the control plane's identity.
func TestHTTPClientVerifiesControlPlane(t *testing.T) {
	cp := newControlPlane(t, time.Hour)
	s, err := New(testConfig(t, cp.url("http"), cp.token(t, "web", 1), t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	runSource(t, s)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := s.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	c := s.HTTPClient()
	defer c.CloseIdleConnections()
	res, err := c.Get(s.APIBase() + "/api/v1/bundle")
	if err != nil {
		t.Fatalf("GET bundle over mTLS: %v", err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.TLS == nil || res.TLS.Version != tls.VersionTLS13 {
		t.Errorf("connection state %+v, want TLS 1.3", res.TLS)
	}

	// Another workload's SVID posing as the server is refused.
	impostor, err := New(testConfig(t, cp.url("http"), cp.token(t, "db", 1), t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	runSource(t, impostor)
	if err := impostor.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	lis, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.TLSServerConfig(impostor))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.NotFoundHandler(), ReadHeaderTimeout: 5 * time.Second}
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(lis) }()
	defer func() { srv.Close(); <-served }()
	if res, err := c.Get("https://" + lis.Addr().String() + "/"); err == nil {
		res.Body.Close()
		t.Error("GET from a server with a workload's SVID succeeded; want a verification error")
	} else if diff := cmp.Diff(true, contains(err.Error(), "not the control plane")); diff != "" {
		t.Errorf("error %v does not say the peer is not the control plane", err)
	}
}

// value reads a counter or gauge (prometheus/testutil needs a module the
// project does not require).
func value(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		return -1
	}
	if d.Counter != nil {
		return d.Counter.GetValue()
	}
	return d.Gauge.GetValue()
}
