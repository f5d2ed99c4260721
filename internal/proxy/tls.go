package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2/hpack"

	"verge.dev/verge/internal/proxy/config"
	"verge.dev/verge/internal/proxy/h2"
)

// Mutual TLS between proxies. Certificates are checked by go-spiffe
// (tlsconfig): the chain against the trust bundle of the peer's trust
// domain, then the peer's SPIFFE ID by an authorizer. Inbound listeners
// accept any member of the proxy's own trust domain (authorization policy
// decides the rest); outbound connections require one of the cluster's
// PeerIDs, or any member of the trust domain when it lists none. Every
// handshake reads the current SVID and bundle from Config.SVID and
// Config.Bundle, so a renewal or a new root applies to the next handshake
// while established connections and their streams carry on.

// tlsRecordHandshake is the first byte of every TLS connection (the record
// type of the ClientHello); no HTTP/1.1 request line or HTTP/2 preface
// starts with it.
const tlsRecordHandshake = 0x16

// tlsHandshakeTimeout bounds a handshake, both ways.
const tlsHandshakeTimeout = 10 * time.Second

// tlsConnsPerEndpoint is how many HTTP/2 connections a cluster spreads its
// requests to one TLS endpoint over. One connection multiplexes every
// stream, but its frames are read, decrypted and dispatched by a single
// goroutine on each side, which caps throughput under many concurrent
// requests; a few connections let both cores work.
const tlsConnsPerEndpoint = 4

// Reasons a downstream TLS connection is refused (the reason label of
// verge_proxy_downstream_tls_refused_total; refusedRevoked is in
// revoke.go).
const (
	refusedPlaintext    = "plaintext"
	refusedNoIdentity   = "no_identity"
	refusedNoClientCert = "no_client_certificate"
	refusedBadCert      = "bad_certificate"
	refusedTimeout      = "timeout"
	refusedHandshake    = "handshake"
)

// Errors tagged onto handshake failures so they can be told apart.
var (
	errNoIdentity   = errors.New("proxy: no identity to present")
	errNoClientCert = errors.New("proxy: peer presented no certificate")
	errBadPeer      = errors.New("proxy: peer certificate refused")
)

// haveIdentity reports whether the proxy was given the sources mutual TLS
// needs; without them TLS is refused both ways, never downgraded.
func (p *Proxy) haveIdentity() bool { return p.cfg.SVID != nil && p.cfg.Bundle != nil }

// warnOnce logs msg once per key (a listener or cluster name): a missing
// identity would otherwise log on every connection.
func (p *Proxy) warnOnce(key, msg string, args ...any) {
	if _, loaded := p.warned.LoadOrStore(key, struct{}{}); !loaded {
		p.log.Warn(msg, args...)
	}
}

// authorizeOwnTrustDomain accepts a peer of the trust domain of the proxy's
// current SVID. It reads the SVID at each handshake so that the check
// follows the source, whose SVID may not exist yet when a listener opens.
func (p *Proxy) authorizeOwnTrustDomain(id spiffeid.ID, _ [][]*x509.Certificate) error {
	s, err := p.cfg.SVID.GetX509SVID()
	if err != nil {
		return fmt.Errorf("authorize peer %s: own svid: %w", id, err)
	}
	if td := s.ID.TrustDomain(); !id.MemberOf(td) {
		return fmt.Errorf("authorize peer %s: not a member of trust domain %q", id, td)
	}
	return nil
}

// tagTLS wraps the go-spiffe callbacks of c so that a handshake error says
// which side failed: our identity (errNoIdentity) or the peer's
// certificate (errNoClientCert, errBadPeer).
func tagTLS(c *tls.Config, server bool) {
	if get := c.GetCertificate; get != nil {
		c.GetCertificate = func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
			cert, err := get(h)
			if err != nil {
				return nil, fmt.Errorf("%w: %w", errNoIdentity, err)
			}
			return cert, nil
		}
	}
	if get := c.GetClientCertificate; get != nil {
		c.GetClientCertificate = func(r *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			cert, err := get(r)
			if err != nil {
				return nil, fmt.Errorf("%w: %w", errNoIdentity, err)
			}
			return cert, nil
		}
	}
	verify := c.VerifyPeerCertificate
	c.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
		if server && len(raw) == 0 {
			return errNoClientCert
		}
		if err := verify(raw, chains); err != nil {
			return fmt.Errorf("%w: %w", errBadPeer, err)
		}
		return nil
	}
}

// forceTLS13 pins the version: every peer is a proxy of this mesh.
func forceTLS13(c *tls.Config) {
	c.MinVersion = tls.VersionTLS13
	c.MaxVersion = tls.VersionTLS13
}

// serverTLSConfig is the tls.Config of an inbound listener offering alpn,
// or nil when the proxy has no identity sources.
func (p *Proxy) serverTLSConfig(alpn []string) *tls.Config {
	if !p.haveIdentity() {
		return nil
	}
	c := tlsconfig.MTLSServerConfig(p.cfg.SVID, p.cfg.Bundle, p.notRevoked(p.authorizeOwnTrustDomain))
	// RequestClientCert rather than RequireAnyClientCert only so that the
	// verify callback sees a missing certificate and names it; tagTLS
	// refuses an empty chain.
	c.ClientAuth = tls.RequestClientCert
	tagTLS(c, true)
	forceTLS13(c)
	c.NextProtos = slices.Clone(alpn)
	// A resumed session skips the certificate callbacks, so a peer would
	// not be checked against the current bundle; connections are pooled
	// and long-lived, so full handshakes cost little.
	c.SessionTicketsDisabled = true
	return c
}

// clientTLSConfig is the tls.Config to reach a cluster's TLS endpoints.
func (p *Proxy) clientTLSConfig(ut *config.UpstreamTLS) (*tls.Config, error) {
	authorize := tlsconfig.Authorizer(p.authorizeOwnTrustDomain)
	if len(ut.PeerIDs) > 0 {
		ids := make([]spiffeid.ID, 0, len(ut.PeerIDs))
		for i, s := range ut.PeerIDs {
			id, err := spiffeid.FromString(s)
			if err != nil {
				return nil, fmt.Errorf("upstream tls: peerIDs[%d] %q: %w", i, s, err)
			}
			ids = append(ids, id)
		}
		authorize = tlsconfig.AuthorizeOneOf(ids...)
	}
	c := tlsconfig.MTLSClientConfig(p.cfg.SVID, p.cfg.Bundle, p.notRevoked(authorize))
	tagTLS(c, false)
	forceTLS13(c)
	c.NextProtos = slices.Clone(ut.ALPN)
	c.ServerName = ut.SNI
	return c, nil
}

// refusalReason names why a downstream handshake failed.
func refusalReason(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, errNoIdentity):
		return refusedNoIdentity
	case errors.Is(err, errNoClientCert):
		return refusedNoClientCert
	case errors.Is(err, errRevoked):
		return refusedRevoked
	case errors.Is(err, errBadPeer):
		return refusedBadCert
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return refusedTimeout
	default:
		return refusedHandshake
	}
}

// downstreamTLS is what an inbound listener needs for mutual TLS; both
// listener kinds embed it.
type downstreamTLS struct {
	// cfg is the server config for the listener's current ALPN; nil when
	// the proxy has no identity (every TLS connection is then refused).
	cfg  atomic.Pointer[tls.Config]
	alpn atomic.Pointer[[]string]
}

// update rebuilds the server config when the listener's ALPN changed.
func (d *downstreamTLS) update(p *Proxy, cl *config.Listener) {
	var alpn []string
	if cl.TLS != nil {
		alpn = cl.TLS.ALPN
	}
	if old := d.alpn.Load(); old != nil && slices.Equal(*old, alpn) {
		return
	}
	d.alpn.Store(&alpn)
	d.cfg.Store(p.serverTLSConfig(alpn))
}

// tlsMode is the listener's mode, TLSDisabled without a TLS context.
func tlsMode(cl *config.Listener) config.TLSMode {
	if cl.TLS == nil {
		return config.TLSDisabled
	}
	return cl.TLS.Mode
}

// peekFirst waits for the first byte of c, up to listenerReadHeaderTimeout
// and no later than the end of ctx.
func peekFirst(ctx context.Context, c net.Conn, br *bufio.Reader) (byte, bool) {
	_ = c.SetReadDeadline(time.Now().Add(listenerReadHeaderTimeout))
	stopWatch := context.AfterFunc(ctx, func() { _ = c.SetReadDeadline(aLongTimeAgo) })
	b, err := br.Peek(1)
	if !stopWatch() || err != nil {
		return 0, false
	}
	_ = c.SetReadDeadline(time.Time{})
	return b[0], true
}

// acceptTLS sniffs a connection accepted by a listener whose mode is not
// TLSDisabled. It returns the connection to serve (the TLS connection, or
// the plaintext one in permissive mode, with the sniffed byte replayed)
// and who the peer is. It returns a nil conn, having closed c and counted
// the refusal, when the connection must not be served.
func (p *Proxy) acceptTLS(ctx context.Context, c net.Conn, cl *config.Listener, d *downstreamTLS) (net.Conn, downstreamPeer) {
	stat := statName(cl)
	br := bufio.NewReaderSize(c, 4<<10)
	first, ok := peekFirst(ctx, c, br)
	if !ok {
		_ = c.Close()
		return nil, downstreamPeer{}
	}
	bc := &bufferedConn{Conn: c, r: br}
	if first != tlsRecordHandshake {
		if tlsMode(cl) == config.TLSPermissive {
			return bc, downstreamPeer{}
		}
		p.metrics.tlsRefused.WithLabelValues(stat, refusedPlaintext).Inc()
		p.log.Debug("plaintext connection refused", "listener", cl.Name, "remote", c.RemoteAddr().String())
		_ = c.Close()
		return nil, downstreamPeer{}
	}
	cfg := d.cfg.Load()
	if cfg == nil {
		p.warnOnce("listener/"+cl.Name, "tls connections refused: proxy has no identity", "listener", cl.Name)
		p.metrics.tlsRefused.WithLabelValues(stat, refusedNoIdentity).Inc()
		_ = c.Close()
		return nil, downstreamPeer{}
	}
	tc := tls.Server(bc, cfg)
	hctx, cancel := context.WithTimeout(ctx, tlsHandshakeTimeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		reason := refusalReason(err)
		p.metrics.tlsRefused.WithLabelValues(stat, reason).Inc()
		p.log.Debug("tls handshake refused", "listener", cl.Name, "remote", c.RemoteAddr().String(), "reason", reason, "error", err)
		_ = c.Close()
		return nil, downstreamPeer{}
	}
	state := tc.ConnectionState()
	p.metrics.tlsHandshakes.WithLabelValues(stat, state.NegotiatedProtocol).Inc()
	return tc, downstreamPeer{tls: true, principal: peerID(&state), serial: leafSerial(&state)}
}

// peerID is the SPIFFE ID of a verified peer certificate, "" without one.
func peerID(cs *tls.ConnectionState) string {
	if len(cs.PeerCertificates) == 0 {
		return ""
	}
	id, err := x509svid.IDFromCert(cs.PeerCertificates[0])
	if err != nil {
		return ""
	}
	return id.String()
}

// peerKey carries a connection's *peer in its context (net/http path).
type peerKey struct{}

// peer is who is at the other end of a downstream TLS connection.
type peer struct {
	principal string
}

// connContext is the http.Server's ConnContext: a TLS connection's peer
// identity is computed once per connection, not per request.
func connContext(ctx context.Context, c net.Conn) context.Context {
	if tc, ok := c.(*tls.Conn); ok {
		state := tc.ConnectionState()
		return context.WithValue(ctx, peerKey{}, &peer{principal: peerID(&state)})
	}
	return ctx
}

// principalOf is the SPIFFE ID of the client of r, "" over plaintext.
func principalOf(r *http.Request) string {
	if pr, ok := r.Context().Value(peerKey{}).(*peer); ok {
		return pr.principal
	}
	return ""
}

// sourceIP is the address part of an "ip:port" remote address.
func sourceIP(remote string) netip.Addr {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// addrPort is the port of a listener's bound address.
func addrPort(a net.Addr) uint32 {
	if ta, ok := a.(*net.TCPAddr); ok {
		return uint32(ta.Port)
	}
	return 0
}

// tlsUpstream reaches the TLS endpoints of one cluster: the client config
// and, for HTTP clusters, a few HTTP/2 transports whose connections are
// spread over by request. It is shared by the states that hold the same
// cluster with the same TLS settings.
type tlsUpstream struct {
	// settings is what it was built from, to tell whether a new snapshot
	// needs a new one.
	settings string
	// cfg is nil when err is set: no identity or a bad PeerIDs entry, and
	// every TLS endpoint of the cluster is then a failure.
	cfg            *tls.Config
	err            error
	connectTimeout time.Duration
	opened         prometheus.Counter
	gauge          prometheus.Gauge
	failed         *prometheus.CounterVec

	build func() *http.Transport
	once  sync.Once
	ts    atomic.Pointer[[]*http.Transport]
	next  atomic.Uint32

	// cluster names the cluster in metrics; idleTimeout closes idle
	// bridge connections. bridge carries HTTP/1.1 fast-path requests
	// (bridge.go), built on first use.
	cluster      string
	idleTimeout  time.Duration
	bridgeDialed prometheus.Counter
	bridgeOnce   sync.Once
	bridge       atomic.Pointer[h2.Client]
	// peerMeta is the proxy's peer metadata fields (telemetry.go), sent
	// with every bridged request.
	peerMeta *atomic.Pointer[[]hpack.HeaderField]

	// conns are the open connections and their peer's leaf serial, so that
	// a revocation finds those to close (revoke.go).
	connsMu sync.Mutex
	conns   map[*countedConn]string
}

// upstreamTLSSettings is the identity of an UpstreamTLS for reuse.
func upstreamTLSSettings(ut *config.UpstreamTLS, connectTimeout time.Duration) string {
	return fmt.Sprintf("%q|%q|%q|%q|%q|%v", ut.CertSecret, ut.CASecret, ut.PeerIDs, ut.ALPN, ut.SNI, connectTimeout)
}

// newTLSUpstream builds a cluster's TLS upstream; transports are built on
// first use.
func (p *Proxy) newTLSUpstream(clusterName string, ut *config.UpstreamTLS, connectTimeout time.Duration) *tlsUpstream {
	u := &tlsUpstream{
		settings:       upstreamTLSSettings(ut, connectTimeout),
		connectTimeout: connectTimeout,
		opened:         p.metrics.upstreamOpened.WithLabelValues(clusterName),
		gauge:          p.metrics.upstreamActive.WithLabelValues(clusterName),
		failed:         p.metrics.upstreamTLSFailed,
		cluster:        clusterName,
		idleTimeout:    p.cfg.UpstreamIdleTimeout,
		bridgeDialed:   p.metrics.bridgeConns.WithLabelValues("outbound"),
		peerMeta:       &p.peerMeta,
	}
	if !p.haveIdentity() {
		u.err = errNoIdentity
	} else if u.cfg, u.err = p.clientTLSConfig(ut); u.err != nil {
		p.log.Warn("cluster tls endpoints unusable", "cluster", clusterName, "error", u.err)
	}
	u.build = func() *http.Transport {
		t := &http.Transport{
			Proxy: nil,
			DialTLSContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
				return u.dial(ctx, clusterName, addr)
			},
			MaxIdleConnsPerHost: p.cfg.MaxIdleConnsPerHost,
			IdleConnTimeout:     p.cfg.UpstreamIdleTimeout,
			DisableCompression:  true,
			// HTTP/2 only: an endpoint that does not negotiate h2 fails
			// rather than get HTTP/1.1 over a connection meant for h2.
			Protocols: new(http.Protocols),
			HTTP2: &http.HTTP2Config{
				MaxReceiveBufferPerConnection: 4 << 20,
				MaxReceiveBufferPerStream:     1 << 20,
				PingTimeout:                   15 * time.Second,
				SendPingTimeout:               30 * time.Second,
			},
		}
		t.Protocols.SetHTTP2(true)
		return t
	}
	return u
}

// dial opens a mutual TLS connection to addr, counted in the cluster's
// upstream connection series (the TCP connection underneath is counted,
// so that the transport still sees a *tls.Conn and its ALPN).
func (u *tlsUpstream) dial(ctx context.Context, clusterName, addr string) (net.Conn, error) {
	if u.err != nil {
		return nil, u.unusable(clusterName, addr)
	}
	d := net.Dialer{Timeout: u.connectTimeout, KeepAlive: 30 * time.Second}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	u.opened.Inc()
	u.gauge.Inc()
	c := &countedConn{Conn: raw, gauge: u.gauge}
	tc, err := u.handshake(ctx, clusterName, addr, c)
	if err != nil {
		return nil, err
	}
	u.trackUpstream(tc, c)
	return tc, nil
}

// unusable counts and returns the error of a dial that cannot be made:
// no identity, or settings that did not compile.
func (u *tlsUpstream) unusable(clusterName, addr string) error {
	reason := refusedNoIdentity
	if !errors.Is(u.err, errNoIdentity) {
		reason = "config"
	}
	u.failed.WithLabelValues(clusterName, reason).Inc()
	return fmt.Errorf("dial tls %s: %w", addr, u.err)
}

// handshake runs the client handshake over raw, closing it on failure, and
// checks that the peer chose one of the offered protocols.
func (u *tlsUpstream) handshake(ctx context.Context, clusterName, addr string, raw net.Conn) (*tls.Conn, error) {
	tc := tls.Client(raw, u.cfg)
	hctx, cancel := context.WithTimeout(ctx, tlsHandshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		_ = raw.Close()
		u.failed.WithLabelValues(clusterName, refusalReason(err)).Inc()
		return nil, fmt.Errorf("tls handshake with %s: %w", addr, err)
	}
	if want := u.cfg.NextProtos; len(want) > 0 && !slices.Contains(want, tc.ConnectionState().NegotiatedProtocol) {
		_ = raw.Close()
		u.failed.WithLabelValues(clusterName, "alpn").Inc()
		return nil, fmt.Errorf("tls handshake with %s: peer negotiated no protocol of %s", addr, strings.Join(want, ","))
	}
	return tc, nil
}

// transport returns one of the cluster's HTTP/2 transports, in turn.
func (u *tlsUpstream) transport() *http.Transport {
	u.once.Do(func() {
		ts := make([]*http.Transport, tlsConnsPerEndpoint)
		for i := range ts {
			ts[i] = u.build()
		}
		u.ts.Store(&ts)
	})
	ts := *u.ts.Load()
	return ts[u.next.Add(1)%uint32(len(ts))]
}

// closeIdle closes the idle connections of the transports and of the
// bridge, if built; the bridge's busy ones close after their last stream.
func (u *tlsUpstream) closeIdle() {
	if u == nil {
		return
	}
	if ts := u.ts.Load(); ts != nil {
		for _, t := range *ts {
			t.CloseIdleConnections()
		}
	}
	if b := u.bridge.Load(); b != nil {
		b.CloseIdle()
	}
}

// close releases every connection, at shutdown once requests drained.
func (u *tlsUpstream) close() {
	if u == nil {
		return
	}
	u.closeIdle()
	if b := u.bridge.Load(); b != nil {
		b.Close()
	}
}

// tlsEndpoints is the set of a cluster's endpoint addresses reached with
// TLS; nil when the cluster has no TLS settings or no such endpoint.
func tlsEndpoints(cc *config.Cluster) map[string]struct{} {
	if cc.TLS == nil {
		return nil
	}
	var m map[string]struct{}
	for _, e := range cc.Endpoints {
		if e.TLS {
			if m == nil {
				m = map[string]struct{}{}
			}
			m[e.Address] = struct{}{}
		}
	}
	return m
}

// isTLS reports whether the endpoint at addr is reached with TLS.
func (c *cluster) isTLS(addr string) bool {
	if c.tlsAddrs == nil {
		return false
	}
	_, ok := c.tlsAddrs[addr]
	return ok
}

// remoteIP is the peer address of c, without allocating for TCP.
func remoteIP(c net.Conn) netip.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap()
	}
	return sourceIP(c.RemoteAddr().String())
}
