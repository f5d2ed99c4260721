package svid

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"verge.dev/verge/internal/ca"
	"verge.dev/verge/internal/identity"
)

var testTD = spiffeid.RequireTrustDomainFromString("verge.local")

// controlPlane is the real CA and identity API behind one loopback port that
// accepts TLS and plaintext (told apart by the first byte, as the control
// plane does). Renewal (mTLS, no bearer) is a small handler here that
// verifies the client SVID with go-spiffe and signs with the real CA for
// that identity.
type controlPlane struct {
	t      *testing.T
	ca     *ca.CA
	tokens *ca.Tokens
	api    http.Handler
	tlsCfg *tls.Config

	renewals atomic.Int64
	mu       sync.Mutex
	addr     string
	srv      *http.Server
	done     chan struct{}
}

func newControlPlane(t *testing.T, ttl time.Duration) *controlPlane {
	t.Helper()
	c, err := ca.New(ca.Config{TrustDomain: testTD, SVIDTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	tokens := ca.NewTokens(testTD, ca.NewMemTokenStore(), nil)
	logger := slog.New(slog.NewTextHandler(t.Output(), nil))
	ids, err := identity.New(identity.Config{CA: c, Tokens: tokens, Persist: func(*ca.Material) error { return nil }}, logger)
	if err != nil {
		t.Fatal(err)
	}
	cp := &controlPlane{t: t, ca: c, tokens: tokens, api: ids.Handler()}
	cp.tlsCfg = &tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequestClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			// Signed per handshake so that a rotated CA is picked up.
			return cp.serverCert()
		},
	}
	cp.start("127.0.0.1:0")
	t.Cleanup(cp.stop)
	return cp
}

func (cp *controlPlane) serverCert() (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, err
	}
	id, _ := spiffeid.FromPath(testTD, ControlPlanePath)
	chain, err := cp.ca.SignCSR(csr, id)
	if err != nil {
		return nil, err
	}
	tc := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	return tc, nil
}

func (cp *controlPlane) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 && r.Header.Get("Authorization") == "" &&
		r.Method == http.MethodPost && r.URL.Path == identity.CertificatesPath {
		cp.renew(w, r)
		return
	}
	cp.api.ServeHTTP(w, r)
}

// renew re-issues for exactly the client certificate's identity.
func (cp *controlPlane) renew(w http.ResponseWriter, r *http.Request) {
	id, _, err := x509svid.Verify(r.TLS.PeerCertificates, cp.ca.Bundle())
	if err != nil {
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	var req identity.CertificateRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	chain, err := cp.ca.SignCSR(req.CSR, id)
	if err != nil {
		http.Error(w, err.Error(), http.StatusForbidden)
		return
	}
	cp.renewals.Add(1)
	resp := identity.CertificateResponse{SPIFFEID: id.String(), ExpiresAt: chain[0].NotAfter}
	for _, c := range chain {
		resp.CertificateChain = append(resp.CertificateChain, pemOf(c))
	}
	for _, c := range cp.ca.Bundle().X509Authorities() {
		resp.TrustBundle = append(resp.TrustBundle, pemOf(c))
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}

func pemOf(c *x509.Certificate) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
}

// start serves on addr ("127.0.0.1:0" or the address of a stopped server).
func (cp *controlPlane) start(addr string) {
	cp.t.Helper()
	var lis net.Listener
	var err error
	// The port of a stopped server is normally free at once; retry
	// briefly in case the kernel still holds it.
	for i := 0; i < 50; i++ {
		if lis, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		cp.t.Fatalf("listen %s: %v", addr, err)
	}
	srv := &http.Server{Handler: cp, ReadHeaderTimeout: 5 * time.Second, ErrorLog: nil}
	done := make(chan struct{})
	cp.mu.Lock()
	cp.addr, cp.srv, cp.done = lis.Addr().String(), srv, done
	cp.mu.Unlock()
	go func() {
		defer close(done)
		_ = srv.Serve(&sniffListener{Listener: lis, tls: cp.tlsCfg})
	}()
}

func (cp *controlPlane) stop() {
	cp.mu.Lock()
	srv, done := cp.srv, cp.done
	cp.srv = nil
	cp.mu.Unlock()
	if srv == nil {
		return
	}
	srv.Close()
	<-done
}

func (cp *controlPlane) url(scheme string) string {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return scheme + "://" + cp.addr
}

func (cp *controlPlane) token(t *testing.T, sa string, uses int) string {
	t.Helper()
	secret, _, err := cp.tokens.Create(context.Background(), ca.TokenSpec{Namespace: "default", ServiceAccount: sa, TTL: time.Hour, Uses: uses})
	if err != nil {
		t.Fatal(err)
	}
	return string(secret)
}

func (cp *controlPlane) rootsPEM() []byte {
	var b []byte
	for _, c := range cp.ca.Bundle().X509Authorities() {
		b = append(b, pemOf(c)...)
	}
	return b
}

// sniffListener hands http.Server a TLS connection when the first byte is a
// TLS handshake record (0x16), else the plain connection.
type sniffListener struct {
	net.Listener
	tls *tls.Config
}

func (l *sniffListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		br := bufio.NewReader(c)
		first, err := br.Peek(1)
		_ = c.SetReadDeadline(time.Time{})
		if err != nil {
			c.Close()
			continue
		}
		pc := &peekedConn{Conn: c, r: br}
		if first[0] == 0x16 {
			return tls.Server(pc, l.tls), nil
		}
		return pc, nil
	}
}

type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// waitFor polls cond until it holds or a generous deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// runSource runs s until the test ends; the function returned waits for
// Run's result.
func runSource(t *testing.T, s *Source) func() error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	result := sync.OnceValue(func() error {
		select {
		case err := <-done:
			return err
		case <-time.After(30 * time.Second):
			t.Error("Run did not return")
			return nil
		}
	})
	t.Cleanup(func() {
		cancel()
		result()
	})
	return result
}

func testConfig(t *testing.T, server, token, dir string) Config {
	return Config{
		Server: server, JoinToken: token, Dir: dir,
		Logger:    slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
		retryBase: 50 * time.Millisecond, retryMax: 300 * time.Millisecond, rotationJitter: 50 * time.Millisecond,
	}
}

func serial(s *Source) string {
	sv, err := s.GetX509SVID()
	if err != nil {
		return ""
	}
	return sv.Certificates[0].SerialNumber.String()
}

func keyOf(s *Source) crypto.PublicKey {
	sv, _ := s.GetX509SVID()
	return sv.PrivateKey.Public()
}

func isRefusal(err error) bool { return errors.Is(err, ErrTokenRefused) }

func contains(s, sub string) bool { return strings.Contains(s, sub) }
