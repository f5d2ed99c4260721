// Package mtls measures the cost of the mesh's mutual TLS handshake: TLS 1.3
// between two SVIDs issued by Verge's CA (ECDSA P-256), each side verifying
// the other with go-spiffe, exactly as two Verge proxies do. The figure the
// issue asks for is handshakes per second per core: run with -cpu 1 and read
// it as 1e9 / ns/op (each op is one complete handshake, both ends, in one
// process, so a server doing only its half needs a bit more than half).
package mtls

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"verge.dev/verge/internal/ca"
)

// issue returns an SVID for id signed by authority, its key made here as a
// proxy makes its own.
func issue(tb testing.TB, authority *ca.CA, id spiffeid.ID) *x509svid.SVID {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		tb.Fatal(err)
	}
	chain, err := authority.SignCSR(csr, id)
	if err != nil {
		tb.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}
}

// pair returns the server and client configurations two proxies use.
func pair(tb testing.TB) (server, client *tls.Config) {
	tb.Helper()
	td := spiffeid.RequireTrustDomainFromString("verge.local")
	authority, err := ca.New(ca.Config{TrustDomain: td})
	if err != nil {
		tb.Fatal(err)
	}
	serverID := spiffeid.RequireFromString("spiffe://verge.local/ns/default/sa/api")
	clientID := spiffeid.RequireFromString("spiffe://verge.local/ns/default/sa/web")
	bundle := authority.Bundle()
	server = tlsconfig.MTLSServerConfig(issue(tb, authority, serverID), bundle, tlsconfig.AuthorizeMemberOf(td))
	client = tlsconfig.MTLSClientConfig(issue(tb, authority, clientID), bundle, tlsconfig.AuthorizeID(serverID))
	for _, c := range []*tls.Config{server, client} {
		c.MinVersion, c.MaxVersion = tls.VersionTLS13, tls.VersionTLS13
		c.NextProtos = []string{"h2"}
	}
	return server, client
}

// serve accepts on ln and completes each connection's handshake with cfg
// until ln is closed.
func serve(ln net.Listener, cfg *tls.Config) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			tc := tls.Server(c, cfg)
			if tc.HandshakeContext(context.Background()) == nil {
				// Wait for the client to close, so that its side of the
				// handshake completes undisturbed.
				var buf [1]byte
				_, _ = tc.Read(buf[:])
			}
		}()
	}
}

// handshake dials addr and completes one mutual handshake with cfg.
func handshake(tb testing.TB, addr string, cfg *tls.Config) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	tc := tls.Client(c, cfg)
	defer tc.Close()
	if err := tc.HandshakeContext(context.Background()); err != nil {
		tb.Fatal(err)
	}
	if tc.ConnectionState().NegotiatedProtocol != "h2" {
		tb.Fatal("ALPN h2 not negotiated")
	}
}

// BenchmarkMutualHandshake is one complete TLS 1.3 mutual handshake over
// loopback TCP per op, both ends in this process. "default" is Go's key
// exchange preference (the hybrid post-quantum X25519MLKEM768 first), as the
// proxies run; "x25519" shows what the post-quantum share costs.
func BenchmarkMutualHandshake(b *testing.B) {
	for _, tc := range []struct {
		name   string
		curves []tls.CurveID
	}{{"default", nil}, {"x25519", []tls.CurveID{tls.X25519}}} {
		b.Run(tc.name, func(b *testing.B) {
			serverCfg, clientCfg := pair(b)
			clientCfg.CurvePreferences = tc.curves
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			go serve(ln, serverCfg)
			b.ReportAllocs()
			for b.Loop() {
				handshake(b, ln.Addr().String(), clientCfg)
			}
		})
	}
}

// TestHandshake keeps the benchmark's setup working in the ordinary test run.
func TestHandshake(t *testing.T) {
	serverCfg, clientCfg := pair(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serve(ln, serverCfg)
	handshake(t, ln.Addr().String(), clientCfg)
}
