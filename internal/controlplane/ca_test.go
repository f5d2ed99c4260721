package controlplane

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"verge.dev/verge/internal/ca"
	"verge.dev/verge/internal/identity"
)

var passphrase = []byte("correct horse battery staple")

// start runs the control plane with cfg (loopback, port 0) and returns the
// API's base URL and a function that stops it and returns Run's error.
func start(t *testing.T, cfg Config) (string, func() error) {
	t.Helper()
	a, stop := startAddrs(t, cfg)
	return "http://" + a.API, stop
}

// startAddrs is start returning every bound address.
func startAddrs(t *testing.T, cfg Config) (Addrs, func() error) {
	t.Helper()
	cfg.APIAddr, cfg.XDSAddr, cfg.SyncAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	ctx, cancel := context.WithCancel(context.Background())
	addrsCh := make(chan Addrs, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, cfg, slog.New(slog.NewTextHandler(t.Output(), nil)), func(a Addrs) { addrsCh <- a })
	}()
	var stopErr error
	stopped := false
	stop := func() error {
		if stopped {
			return stopErr
		}
		stopped = true
		cancel()
		select {
		case stopErr = <-done:
		case <-time.After(waitFor):
			stopErr = errors.New("Run did not return after cancel")
		}
		return stopErr
	}
	t.Cleanup(func() { stop() })
	select {
	case a := <-addrsCh:
		return a, stop
	case err := <-done:
		stopped, stopErr = true, err
		t.Fatalf("Run: %v", err)
	case <-time.After(waitFor):
		t.Fatal("control plane not ready")
	}
	return Addrs{}, stop
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s %v", url, resp.StatusCode, b, err)
	}
	return string(b)
}

func TestCAPersisted(t *testing.T) {
	dir := t.TempDir()
	base, stop := start(t, Config{DataDir: dir, CAPassphrase: passphrase, AllowAnonymous: true})
	bundle := get(t, base+identity.BundlePath)

	// A token and a certificate through the mounted identity API.
	resp, err := http.Post(base+identity.TokensPath, "application/json", strings.NewReader(`{"serviceAccount":"web"}`))
	if err != nil {
		t.Fatal(err)
	}
	var tok identity.TokenCreated
	if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("create token: %d %v", resp.StatusCode, err)
	}
	resp.Body.Close()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(identity.CertificateRequest{CSR: csr})
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, base+identity.CertificatesPath, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+tok.Token)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var cert identity.CertificateResponse
	if err := json.NewDecoder(resp.Body).Decode(&cert); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("certificate: %d %v", resp.StatusCode, err)
	}
	resp.Body.Close()
	if cert.SPIFFEID != "spiffe://verge.local/ns/default/sa/web" {
		t.Errorf("spiffe id %q", cert.SPIFFEID)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}

	raw, err := os.ReadFile(filepath.Join(dir, "ca", ca.FileName))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte("PRIVATE KEY")) || bytes.Contains(raw, []byte("CERTIFICATE")) {
		t.Errorf("ca material stored in clear:\n%s", raw)
	}

	// Same data dir and passphrase: same root, and the token is still
	// known (used up).
	base, stop = start(t, Config{DataDir: dir, CAPassphrase: passphrase, AllowAnonymous: true})
	if got := get(t, base+identity.BundlePath); got != bundle {
		t.Errorf("bundle changed across a restart:\n%s\nwant\n%s", got, bundle)
	}
	if list := get(t, base+identity.TokensPath); !strings.Contains(list, tok.ID) || !strings.Contains(list, `"used":1`) {
		t.Errorf("tokens after restart: %s", list)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}

	// A wrong passphrase stops the start.
	err = Run(t.Context(), Config{APIAddr: "127.0.0.1:0", XDSAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0",
		DataDir: dir, CAPassphrase: []byte("wrong")}, slog.New(slog.NewTextHandler(t.Output(), nil)), nil)
	if !errors.Is(err, ca.ErrBadPassphrase) {
		t.Errorf("Run with a wrong passphrase = %v, want ErrBadPassphrase", err)
	}
}

func TestCAConfigErrors(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(t.Output(), nil))
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no passphrase", Config{}, "open ca: passphrase is empty"},
		{"bad trust domain", Config{TrustDomain: "Not A Domain", CAPassphrase: passphrase}, `open ca: trust domain "Not A Domain"`},
		{"bad operator pem", Config{CACert: []byte("junk"), CAKey: []byte("junk"), CAPassphrase: passphrase}, "no CERTIFICATE block"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.DataDir = t.TempDir()
			tc.cfg.APIAddr, tc.cfg.XDSAddr, tc.cfg.SyncAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
			err := Run(t.Context(), tc.cfg, logger, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Run = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestOperatorCA(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "operator root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(365 * 24 * time.Hour),
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
	rootPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	dir := t.TempDir()
	base, stop := start(t, Config{DataDir: dir, CAPassphrase: passphrase, AllowAnonymous: true, TrustDomain: "example.org",
		CACert: rootPEM, CAKey: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})})
	if got := get(t, base+identity.BundlePath); got != string(rootPEM) {
		t.Errorf("bundle is not the operator's root:\n%s", got)
	}
	resp, err := http.Post(base+identity.RotatePath, "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict {
		t.Errorf("rotate operator ca: %d, want 409", resp.StatusCode)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	// The material was saved: a start without the PEM keeps the operator CA.
	base, _ = start(t, Config{DataDir: dir, CAPassphrase: passphrase, AllowAnonymous: true, TrustDomain: "example.org"})
	if got := get(t, base+identity.BundlePath); got != string(rootPEM) {
		t.Errorf("bundle after restart without --ca-cert:\n%s", got)
	}
}
