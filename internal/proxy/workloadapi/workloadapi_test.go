package workloadapi

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	spiffewl "github.com/spiffe/go-spiffe/v2/workloadapi"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"verge.dev/verge/internal/ca"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var (
	td    = spiffeid.RequireTrustDomainFromString("verge.local")
	webID = spiffeid.RequireFromString("spiffe://verge.local/ns/default/sa/web")
)

// fakeSource is the narrow Source interface over SVIDs signed by the real CA.
type fakeSource struct {
	mu      sync.Mutex
	svid    *x509svid.SVID
	bundle  *x509bundle.Bundle
	changed chan struct{}
}

func (f *fakeSource) GetX509SVID() (*x509svid.SVID, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.svid == nil {
		return nil, errors.New("no svid yet")
	}
	return f.svid, nil
}

func (f *fakeSource) GetX509BundleForTrustDomain(d spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.bundle == nil || d != f.bundle.TrustDomain() {
		return nil, errors.New("no bundle")
	}
	return f.bundle, nil
}

func (f *fakeSource) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

func (f *fakeSource) set(sv *x509svid.SVID, b *x509bundle.Bundle) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.svid, f.bundle = sv, b
	close(f.changed)
	f.changed = make(chan struct{})
}

func issue(t *testing.T, c *ca.CA) *x509svid.SVID {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := c.SignCSR(csr, webID)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: webID, Certificates: chain, PrivateKey: key}
}

// socketPath is short: a Unix socket path must fit in ~104 bytes, which
// t.TempDir() paths with long test names do not.
func socketPath(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "vwl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "spiffe.sock")
}

func serve(t *testing.T, path string, src Source) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	srv := New(path, src, slog.New(slog.NewTextHandler(t.Output(), nil)))
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run() = %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("Run did not return")
		}
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket left behind after Run: %v", err)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if fi, err := os.Lstat(path); err == nil && fi.Mode().Perm() == SocketMode {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("socket not created")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// go-spiffe's own client fetches the SVID and bundle, and a watching client
// gets a renewed SVID.
func TestGoSpiffeClient(t *testing.T) {
	c, err := ca.New(ca.Config{TrustDomain: td, SVIDTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	src := &fakeSource{changed: make(chan struct{})}
	first := issue(t, c)
	src.set(first, c.Bundle())
	path := socketPath(t)
	serve(t, path, src)
	addr := spiffewl.WithAddr("unix://" + path)

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	got, err := spiffewl.FetchX509SVID(ctx, addr)
	if err != nil {
		t.Fatalf("FetchX509SVID: %v", err)
	}
	if got.ID != webID || !got.Certificates[0].Equal(first.Certificates[0]) {
		t.Errorf("FetchX509SVID = %v %v, want the source's SVID", got.ID, got.Certificates[0].SerialNumber)
	}
	bundles, err := spiffewl.FetchX509Bundles(ctx, addr)
	if err != nil {
		t.Fatalf("FetchX509Bundles: %v", err)
	}
	if b, err := bundles.GetX509BundleForTrustDomain(td); err != nil || !b.Equal(c.Bundle()) {
		t.Errorf("FetchX509Bundles = %v, %v; want the CA bundle", b, err)
	}

	// A watching source sees the renewed SVID and the rotated bundle.
	xs, err := spiffewl.NewX509Source(ctx, spiffewl.WithClientOptions(addr))
	if err != nil {
		t.Fatalf("NewX509Source: %v", err)
	}
	defer xs.Close()
	if err := c.Rotate(time.Hour); err != nil {
		t.Fatal(err)
	}
	second := issue(t, c)
	src.set(second, c.Bundle())
	deadline := time.Now().Add(30 * time.Second)
	for {
		sv, err := xs.GetX509SVID()
		b, berr := xs.GetX509BundleForTrustDomain(td)
		if err == nil && berr == nil && sv.Certificates[0].Equal(second.Certificates[0]) && len(b.X509Authorities()) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("renewed SVID and rotated bundle did not reach the watching client")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// JWT-SVIDs are not issued.
	_, err = spiffewl.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "x"}, addr)
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("FetchJWTSVID = %v, want Unimplemented", err)
	}
}

// A call without the security header is refused; a stream opened before
// the first SVID gets it when it comes.
func TestHeaderAndWaitForFirstSVID(t *testing.T) {
	c, err := ca.New(ca.Config{TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	src := &fakeSource{changed: make(chan struct{})}
	path := socketPath(t)
	serve(t, path, src)
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := workload.NewSpiffeWorkloadAPIClient(conn)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	stream, err := client.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("FetchX509SVID without header = %v, want InvalidArgument", err)
	}

	addr := spiffewl.WithAddr("unix://" + path)
	type result struct {
		sv  *x509svid.SVID
		err error
	}
	res := make(chan result, 1)
	go func() {
		sv, err := spiffewl.FetchX509SVID(ctx, addr)
		res <- result{sv, err}
	}()
	sv := issue(t, c)
	src.set(sv, c.Bundle())
	r := <-res
	if r.err != nil || !r.sv.Certificates[0].Equal(sv.Certificates[0]) {
		t.Errorf("FetchX509SVID before the first SVID = %v, %v; want it once available", r.sv, r.err)
	}
}

// A stale socket is replaced; any other file at the path is left alone.
func TestStaleSocket(t *testing.T) {
	path := socketPath(t)
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	lis.(*net.UnixListener).SetUnlinkOnClose(false)
	lis.Close()
	src := &fakeSource{changed: make(chan struct{})}
	serve(t, path, src)

	other := filepath.Join(filepath.Dir(path), "file")
	if err := os.WriteFile(other, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	err = New(other, src, slog.New(slog.NewTextHandler(t.Output(), nil))).Run(t.Context())
	if err == nil {
		t.Error("Run over a regular file: want an error")
	}
	if _, serr := os.Stat(other); serr != nil {
		t.Errorf("regular file removed: %v", serr)
	}
}
