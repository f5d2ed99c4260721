package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"

	"verge.dev/verge/internal/proxy/config"
	"verge.dev/verge/internal/proxy/healthcheck"
)

// dialCheck is how h's probes reach the cluster's endpoints: plaintext
// ones directly, TLS ones (peer proxies) with the cluster's mutual TLS and
// the ALPN protocol the peer's inbound listener serves the probe with.
// The cluster's TLS upstream is read at every dial, so probes follow
// certificate and settings changes.
func (g *clusterGuard) dialCheck(h *config.HealthCheck) healthcheck.DialFunc {
	var alpn []string
	switch {
	case h.HTTP:
		// The peer offers h2 only; Go's server falls back to no protocol
		// for a client that offers http/1.1, and then serves HTTP/1.1
		// (listener.go hands such connections to net/http).
		alpn = []string{"http/1.1"}
	case h.GRPC:
		alpn = []string{"h2"}
	}
	// TCP probes keep the cluster's own protocol (verge-tcp).
	var d net.Dialer
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if m := g.tlsAddrs.Load(); m == nil || !hasAddr(*m, addr) {
			return d.DialContext(ctx, network, addr)
		}
		u := g.tls.Load()
		if u == nil {
			return nil, fmt.Errorf("health check %s: cluster %s has no tls settings", addr, g.name)
		}
		return u.dialProbe(ctx, g.name, addr, alpn)
	}
}

func hasAddr(m map[string]struct{}, addr string) bool {
	_, ok := m[addr]
	return ok
}

// dialProbe opens a mutual TLS connection to addr for a health check,
// offering alpn instead of the cluster's protocols when not nil. Unlike
// dial it accepts a peer that chose no protocol (the HTTP/1.1 fallback)
// and does not count the connection as an upstream one.
func (u *tlsUpstream) dialProbe(ctx context.Context, clusterName, addr string, alpn []string) (net.Conn, error) {
	if u.err != nil {
		return nil, u.unusable(clusterName, addr)
	}
	cfg := u.cfg
	if alpn != nil {
		cfg = cfg.Clone()
		cfg.NextProtos = alpn
	}
	d := net.Dialer{Timeout: u.connectTimeout}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		return nil, fmt.Errorf("tls handshake with %s: %w", addr, err)
	}
	return tc, nil
}
