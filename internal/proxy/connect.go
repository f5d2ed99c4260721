package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"verge.dev/verge/internal/proxy/config"
)

// CONNECT tunnels for the HTTP_PROXY listener (docs/xds-traffic.md).
//
// An application with HTTP_PROXY set sends absolute-form requests, which
// the ordinary HTTP paths route by their authority, and CONNECT for
// tunnels, which end here: serveConnect finds the virtual host named
// exactly by the CONNECT authority ("NAME.NS.mesh:PORT"), takes its
// CONNECT route (the xDS connect_matcher, which the xDS client turns into a
// route whose first header match is ":method" exactly "CONNECT"), answers
// 200 and copies bytes both ways to an endpoint of the route's cluster, as
// a TCP listener would. Nothing else is ever dialled: an authority no
// virtual host names, or one without a CONNECT route, gets 404, so the
// listener is no open proxy.
//
// The h1 engine hands CONNECT requests to net/http (Options.OnUpgrade), so
// every CONNECT reaches listenerHandler.ServeHTTP, which calls
// serveConnect.
//
// The tunnel carries whatever the application sends, so the hop to a peer
// proxy (mutual TLS) must offer the ALPN protocol under which the peer's
// inbound listener reads those bytes: "verge-tcp" for a TCP service, as a
// TCP listener dials; "h2" for an HTTP2/GRPC service (the application's
// HTTP/2 prior-knowledge bytes are what the peer's HTTP/2 server reads);
// and for an HTTP/1.1 service "http/1.1", for which the peer's inbound
// listener negotiates no protocol and serves the connection as HTTP/1.1
// over TLS (as it does the health checks), where the cluster's own "h2"
// would have its HTTP/2 server read the application's HTTP/1.1 bytes.
// Either way the peer authorizes the tunnel as this proxy's identity and
// applies its inbound policy (rate limits, shedding) per request.

// connectRoute returns the CONNECT route of the virtual host whose domain
// is exactly authority in the route table named table, or nil. The lookup
// is exact on purpose: routeTable.vhost would retry "host:8080" as "host",
// which would tunnel to the port-80 service instead of refusing.
func (p *Proxy) connectRoute(table, authority string) *route {
	rt := p.state.Load().routes[table]
	if rt == nil {
		return nil
	}
	if _, port, err := net.SplitHostPort(authority); err != nil || port == "" {
		return nil
	}
	vh := rt.exact[strings.ToLower(authority)]
	if vh == nil {
		return nil
	}
	for _, r := range vh.routes {
		if isConnectRoute(r.cfg) {
			return r
		}
	}
	return nil
}

// isConnectRoute reports whether cr came from an xDS connect_matcher.
func isConnectRoute(cr *config.Route) bool {
	if len(cr.Match.Headers) == 0 || cr.DirectResponse != nil {
		return false
	}
	h := cr.Match.Headers[0]
	return h.Name == ":method" && h.Exact == http.MethodConnect && h.Regex == nil && !h.Present && !h.Invert
}

// serveConnect answers a CONNECT request of the listener's client: 404
// without a CONNECT route for r.Host, 503 without an endpoint or when none
// can be reached, else 200 and a tunnel to the endpoint (mutual TLS when
// the cluster reaches it so). HTTP/1.1 tunnels take over the connection;
// HTTP/2 ones use the stream. It returns when the tunnel closes: both
// directions at EOF, an error, or TCPIdleTimeout without a byte moving.
func (h listenerHandler) serveConnect(w http.ResponseWriter, r *http.Request) {
	p := h.p
	lcfg := h.l.cfg.Load()
	stat := statName(lcfg)
	if lcfg.Authz != nil && !h.authorizeHTTP(w, r, lcfg, false, stat) {
		return
	}
	rte := p.connectRoute(lcfg.RouteName, r.Host)
	if rte == nil {
		h.fail(w, r, false, stat, "", failNoRoute)
		return
	}
	cl := rte.pickCluster()
	if cl == nil {
		h.fail(w, r, false, stat, "", failNoEndpoint)
		return
	}
	ep := cl.bal.Pick()
	if ep == nil {
		h.fail(w, r, false, stat, cl.name, failNoEndpoint)
		return
	}
	defer ep.Done()
	up, upRaw, err := p.dialTunnel(r.Context(), cl, ep.Address)
	if err != nil {
		p.log.Debug("connect upstream failed", "listener", stat, "cluster", cl.name, "endpoint", ep.Address, "error", err)
		h.fail(w, r, false, stat, cl.name, failConnect)
		return
	}
	defer up.Close()

	var down io.ReadWriter
	var downRaw net.Conn
	if r.ProtoMajor == 1 {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			h.fail(w, r, false, stat, cl.name, failUpstream)
			return
		}
		defer c.Close()
		if _, err := io.WriteString(c, "HTTP/1.1 200 Connection Established\r\n\r\n"); err != nil {
			return
		}
		down, downRaw = &bufferedConn{Conn: c, r: brw.Reader}, c
	} else {
		// HTTP/2 (RFC 9113 8.5): the stream carries the tunnel.
		rc := http.NewResponseController(w)
		_ = rc.EnableFullDuplex()
		w.WriteHeader(http.StatusOK)
		if err := rc.Flush(); err != nil {
			return
		}
		down = streamConn{r: r.Body, w: w, rc: rc}
	}
	p.metrics.request(stat, cl.name, http.StatusOK)
	p.tunnel(down, downRaw, up, upRaw)
}

// tunnelALPN is what a CONNECT tunnel to a TLS endpoint of an HTTP/1.1
// cluster offers (see the comment at the top of the file).
var tunnelALPN = []string{"http/1.1"}

// dialTunnel connects a CONNECT tunnel to the endpoint at addr of cl and
// returns the connection to copy through and the socket under it. Only a
// TLS endpoint of an HTTP/1.1 cluster differs from a TCP listener's dial:
// it offers tunnelALPN and accepts a peer that chose no protocol. (A TCP
// service's cluster is HTTP/1.1 too in the proxy's configuration; its
// ALPN, verge-tcp rather than h2, tells them apart.)
func (p *Proxy) dialTunnel(ctx context.Context, cl *cluster, addr string) (net.Conn, net.Conn, error) {
	if cl.cfg.Protocol != config.UpstreamHTTP1 || !cl.isTLS(addr) || cl.cfg.TLS == nil || !slices.Contains(cl.cfg.TLS.ALPN, "h2") {
		// dialUpstream uses nothing of its listener but the proxy.
		return (&tcpListener{p: p}).dialUpstream(ctx, cl, addr)
	}
	u := cl.tls
	if u.err != nil {
		p.warnOnce("cluster/"+cl.name, "tls endpoints not reached", "cluster", cl.name, "error", u.err)
		return nil, nil, u.unusable(cl.name, addr)
	}
	cfg := u.cfg.Clone()
	cfg.NextProtos = tunnelALPN
	d := net.Dialer{Timeout: cl.connectTimeout}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	u.opened.Inc()
	u.gauge.Inc()
	counted := &countedConn{Conn: raw, gauge: u.gauge}
	tc := tls.Client(counted, cfg)
	hctx, cancel := context.WithTimeout(ctx, tlsHandshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		_ = counted.Close()
		u.failed.WithLabelValues(cl.name, refusalReason(err)).Inc()
		return nil, nil, fmt.Errorf("tls handshake with %s: %w", addr, err)
	}
	if np := tc.ConnectionState().NegotiatedProtocol; np != "" && np != tunnelALPN[0] {
		_ = counted.Close()
		u.failed.WithLabelValues(cl.name, "alpn").Inc()
		return nil, nil, fmt.Errorf("tls handshake with %s: peer negotiated %q for an HTTP/1.1 tunnel", addr, np)
	}
	// Tracked so that a revocation of the peer closes the tunnel too.
	u.trackUpstream(tc, counted)
	return tc, counted, nil
}

// tunnel copies bytes both ways between down and up, half-closing each
// destination at its source's EOF, until both directions end. The raw
// sockets (downRaw may be nil for an HTTP/2 stream) are closed when
// neither direction has moved a byte for TCPIdleTimeout, which ends both
// copies.
func (p *Proxy) tunnel(down io.ReadWriter, downRaw net.Conn, up, upRaw net.Conn) {
	idle := p.cfg.TCPIdleTimeout
	start := time.Now()
	var last atomic.Int64
	progress := func() { last.Store(int64(time.Since(start))) }
	var mu sync.Mutex // orders the callback's Reset after the assignment and before Stop
	ended := false
	var timer *time.Timer
	mu.Lock()
	timer = time.AfterFunc(idle, func() {
		if quiet := time.Since(start) - time.Duration(last.Load()); quiet < idle {
			mu.Lock()
			if !ended {
				timer.Reset(idle - quiet)
			}
			mu.Unlock()
			return
		}
		_ = upRaw.Close()
		if downRaw != nil {
			_ = downRaw.Close()
		} else if c, ok := down.(io.Closer); ok {
			_ = c.Close()
		}
	})
	mu.Unlock()
	defer func() {
		mu.Lock()
		ended = true
		timer.Stop()
		mu.Unlock()
	}()

	var wg sync.WaitGroup
	wg.Go(func() {
		copyProgress(up, down, progress)
		closeWrite(up)
	})
	copyProgress(down, up, progress)
	if downRaw != nil {
		closeWrite(downRaw)
	} else if c, ok := down.(io.Closer); ok {
		// A handler cannot half-close an HTTP/2 stream: returning ends
		// it both ways, so stop reading the client's side too.
		_ = c.Close()
	}
	wg.Wait()
}

// streamConn is an HTTP/2 CONNECT stream as a byte stream: reads from the
// request body, writes to the response, flushed at once (a tunnel's peer
// waits for every byte).
type streamConn struct {
	r  io.ReadCloser
	w  io.Writer
	rc *http.ResponseController
}

func (s streamConn) Read(b []byte) (int, error) { return s.r.Read(b) }

func (s streamConn) Write(b []byte) (int, error) {
	n, err := s.w.Write(b)
	if err == nil {
		err = s.rc.Flush()
	}
	return n, err
}

// Close ends the client's direction of the stream.
func (s streamConn) Close() error { return s.r.Close() }
