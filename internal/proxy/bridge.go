package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http2/hpack"

	"verge.dev/verge/internal/proxy/authz"
	"verge.dev/verge/internal/proxy/config"
	"verge.dev/verge/internal/proxy/h1"
	"verge.dev/verge/internal/proxy/h2"
)

// The HTTP/2 bridge carries HTTP/1.1 between applications over mutual TLS
// between proxies with package h2 instead of net/http:
//
//	app -> outbound proxy: h1 engine -> Router picks a TLS endpoint ->
//	       Decision.Upstream = the cluster's tlsUpstream -> h2.Client stream
//	   -> inbound proxy: TLS handshake, ALPN h2, table HTTP/1.1-only ->
//	       h2.ServeConn -> bridgeConn.ServeStream -> authorization, route ->
//	       h1.Pool.RoundTrip to the app
//
// It is chosen explicitly, per listener and per request, and only where it
// is complete: routes whose clusters all speak HTTP/1.1 (no trailers, no
// full-duplex streams to carry). HTTP/2 and gRPC services, tables mixing
// them, Config.DisableH2Bridge and Config.DisableH1FastPath keep the
// net/http path (HTTP/2 server and Transport over the same TLS).

// bridgeOut reports whether HTTP/1.1 fast-path requests may reach TLS
// endpoints through the bridge.
func (p *Proxy) bridgeOut() bool { return !p.cfg.DisableH2Bridge }

// bridgeIn reports whether an inbound TLS connection that negotiated h2
// on l is served by the bridge: its table reaches only HTTP/1.1 clusters
// with plaintext endpoints (the applications behind this proxy).
func (l *httpListener) bridgeIn() bool {
	if l.p.cfg.DisableH2Bridge || l.p.h1Pool == nil {
		return false
	}
	st := l.p.state.Load()
	rt := st.routes[l.cfg.Load().RouteName]
	return rt == nil || (rt.h1Only && !rt.tlsEndpoints)
}

// h2Client returns the cluster's bridge client, built on first use.
func (u *tlsUpstream) h2Client() *h2.Client {
	u.bridgeOnce.Do(func() {
		u.bridge.Store(h2.NewClient(h2.ClientConfig{
			Dial:           u.dialH2,
			ConnsPerAddr:   bridgeConnsPerEndpoint,
			IdleTimeout:    u.idleTimeout,
			ConnectTimeout: u.connectTimeout,
		}))
	})
	return u.bridge.Load()
}

// bridgeConnsPerEndpoint is how many connections the bridge spreads the
// streams to one peer over; see h2.ClientConfig.ConnsPerAddr.
const bridgeConnsPerEndpoint = 2

// dialH2 opens a mutual TLS connection that negotiated "h2".
func (u *tlsUpstream) dialH2(ctx context.Context, addr string) (net.Conn, error) {
	c, err := u.dial(ctx, u.cluster, addr)
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*tls.Conn); ok && tc.ConnectionState().NegotiatedProtocol != "h2" {
		_ = c.Close()
		u.failed.WithLabelValues(u.cluster, "alpn").Inc()
		return nil, fmt.Errorf("tls handshake with %s: peer did not negotiate h2", addr)
	}
	u.bridgeDialed.Inc()
	return c, nil
}

// Exchange implements h1.Upstream: the request of an HTTP/1.1 client goes
// to a peer proxy as an HTTP/2 stream, and the response comes back as
// HTTP/1.1.
func (u *tlsUpstream) Exchange(x *h1.Exchange) error {
	// The client encodes the fields before RoundTrip returns.
	hp := h2.HeaderFields()
	defer h2.PutHeaderFields(hp)
	hdr := (*hp)[:0]
	x.VisitFields(func(name, value []byte) bool {
		f := hpack.HeaderField{Name: h2.LowerName(name), Value: string(value)}
		if !isPeerMeta(f.Name) { // the application's own are not believed
			hdr = append(hdr, f)
		}
		return true
	})
	if pm := u.peerMeta.Load(); pm != nil {
		hdr = append(hdr, *pm...)
	}
	if x.TETrailers() {
		hdr = append(hdr, hpack.HeaderField{Name: "te", Value: "trailers"})
	}
	*hp = hdr // a grown slice goes back to the pool
	host := x.Host()
	if host == "" {
		host = x.Addr()
	}
	req := h2.Request{Method: x.Method(), Authority: host, Path: x.Target(), Header: hdr,
		ContentLength: x.ContentLength(), Deadline: x.Deadline()}
	if req.ContentLength != 0 {
		req.Body = x
	}
	res, err := u.h2Client().RoundTrip(x.Addr(), &req)
	if err != nil {
		switch {
		case h2.IsBodyError(err):
			return err // h1 answers 400/408 from its own record
		case errors.Is(err, h2.ErrTimeout):
			return &h1.UpstreamError{Status: http.StatusGatewayTimeout, Err: err}
		}
		// The same mapping as net/http's path: 503 when connecting
		// failed, 504 past the deadline, 502 for the rest (a peer
		// certificate refused among them).
		return &h1.UpstreamError{Status: classify(context.Background(), err).httpStatus(), Err: err}
	}
	defer res.Close()
	x.WriteHead(res.Status, res.ContentLength, func(yield func(name, value string) bool) {
		for _, f := range res.Header {
			if f.Name == "content-length" {
				continue
			}
			if !yield(f.Name, f.Value) {
				return
			}
		}
	})
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	flush := func() { _ = x.Flush() }
	for {
		n, rerr := res.ReadFlushing(buf, flush)
		if n > 0 {
			if _, err := x.Write(buf[:n]); err != nil {
				return err
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// serveBridge serves an inbound TLS connection that negotiated h2 with
// the bridge until it ends or ctx does (then it drains with GOAWAY).
func (l *httpListener) serveBridge(ctx context.Context, tc net.Conn, src netip.Addr, principal string) {
	l.p.metrics.bridgeConns.WithLabelValues("inbound").Inc()
	bc := bridgeConn{p: l.p, l: l, src: src, principal: principal}
	err := h2.ServeConn(ctx, tc, bc, h2.ServerConfig{MaxConcurrentStreams: 1000, IdleTimeout: listenerIdleTimeout})
	if err != nil && l.p.log.Enabled(ctx, slog.LevelDebug) {
		l.p.log.Debug("h2 connection ended", "listener", l.cfg.Load().Name, "error", err)
	}
}

// bridgeConn routes the streams of one inbound bridge connection.
type bridgeConn struct {
	p *Proxy
	l *httpListener
	// src and principal are the peer's address and SPIFFE ID, for
	// authorization.
	src       netip.Addr
	principal string
}

// streamHeaders adapts a stream's fields for route matching.
type streamHeaders struct{ s *h2.Stream }

func (h streamHeaders) get(lower, _ string) (string, bool) {
	for _, f := range h.s.Header {
		if f.Name == lower {
			return f.Value, true
		}
	}
	return "", false
}

// ServeStream implements h2.Handler.
func (b bridgeConn) ServeStream(s *h2.Stream) {
	lcfg := b.l.cfg.Load()
	st := b.p.state.Load()
	src := takeStreamPeerMeta(s)
	lt := st.tel[lcfg.Name]
	if lt == nil || !lt.on() {
		b.serveStream(s, lcfg, st, nil)
		return
	}
	b.serveObserved(s, lcfg, st, lt, src)
}

// serveStream routes the stream and forwards it to the application. It
// returns the status the peer was sent (499 when none); info, when set,
// learns the route, cluster and endpoint.
func (b bridgeConn) serveStream(s *h2.Stream, lcfg *config.Listener, st *state, info *routeInfo) int {
	p := b.p
	stat := statName(lcfg)
	active := p.metrics.activeRequests.WithLabelValues(stat)
	active.Inc()
	defer active.Dec()

	path, query, _ := strings.Cut(s.Path, "?")
	if lcfg.Authz != nil && !b.authorize(lcfg, s, path) {
		localReply(s, http.StatusForbidden, h1.LocalBody(http.StatusForbidden))
		p.metrics.request(stat, "", http.StatusForbidden)
		return local(info, http.StatusForbidden)
	}
	rt := st.routes[lcfg.RouteName]
	var rte *route
	if rt != nil {
		head := requestHead{method: s.Method, host: s.Authority, path: path, query: query, header: streamHeaders{s}}
		rte = rt.match(&head)
	}
	if rte == nil {
		localReply(s, http.StatusNotFound, h1.LocalBody(http.StatusNotFound))
		p.metrics.request(stat, "", http.StatusNotFound)
		return local(info, http.StatusNotFound)
	}
	if info != nil {
		info.route = rte.cfg.Name
	}
	if dr := rte.cfg.DirectResponse; dr != nil {
		localReply(s, dr.Status, dr.Body)
		p.metrics.request(stat, "", dr.Status)
		return local(info, dr.Status)
	}
	if (rte.traffic != nil && rte.traffic.limit != nil) || lcfg.Traffic != nil {
		// Inbound admission (route_traffic_bridge.go).
		release, ok := b.admit(s, lcfg, stat, rte)
		if !ok {
			return local(info, 0)
		}
		if release != nil {
			defer release()
		}
	}
	cl := rte.pickCluster()
	if info != nil {
		info.cl = cl
	}
	if cl == nil {
		localReply(s, http.StatusServiceUnavailable, h1.LocalBody(http.StatusServiceUnavailable))
		p.metrics.request(stat, "", http.StatusServiceUnavailable)
		return local(info, http.StatusServiceUnavailable)
	}
	ep := cl.bal.Pick()
	if ep == nil || cl.cfg.Protocol != config.UpstreamHTTP1 || cl.isTLS(ep.Address) {
		// No endpoint, or the table changed under this connection (the
		// listener drains it; the peer's next connection gets net/http).
		if ep != nil {
			ep.Done()
		}
		localReply(s, http.StatusServiceUnavailable, h1.LocalBody(http.StatusServiceUnavailable))
		p.metrics.request(stat, cl.name, http.StatusServiceUnavailable)
		return local(info, http.StatusServiceUnavailable)
	}
	defer ep.Done()
	if info != nil {
		info.addr = ep.Address
	}
	status := b.forward(s, rte, ep.Address)
	if status == 0 {
		status = 499
	}
	p.metrics.request(stat, cl.name, status)
	return status
}

// local marks a stream the proxy answered itself and returns status (0:
// the answer was written by a callee that knows it; 499 is close enough
// for what telemetry needs of an admission refusal without its status).
func local(info *routeInfo, status int) int {
	if info != nil {
		info.local = true
	}
	return status
}

// authorize decides a stream on a listener with a policy.
func (b bridgeConn) authorize(cl *config.Listener, s *h2.Stream, path string) bool {
	req := authz.Request{
		Principal: b.principal,
		SourceIP:  b.src,
		DestPort:  b.l.port,
		HTTP:      true,
		Method:    s.Method,
		Path:      path,
		Host:      s.Authority,
		Header:    s.Get,
		VisitHeaders: func(fn func(name, value string) bool) {
			for _, f := range s.Header {
				if !fn(f.Name, f.Value) {
					return
				}
			}
		},
	}
	d := cl.Authz.Check(&req)
	b.p.record(cl, &req, d)
	return d.Allowed
}

// forward sends the stream's request to the application at addr through
// the h1 engine's pool and relays the response. It returns the status the
// peer was sent, 0 when the stream was reset instead.
func (b bridgeConn) forward(s *h2.Stream, rte *route, addr string) int {
	req := h1.OutRequest{
		Method: s.Method, Target: s.Path, Host: s.Authority,
		Fields:        requestFields(s),
		ContentLength: s.ContentLength,
	}
	if !s.BodyDone() && s.ContentLength != 0 {
		req.Body = s
	} else {
		req.ContentLength = 0
	}
	if rte.timeout > 0 {
		req.Deadline = time.Now().Add(rte.timeout)
	}
	res, err := b.p.h1Pool.RoundTrip(addr, &req)
	if err != nil {
		if h1.IsBodyError(err) {
			return 0 // the peer reset its request: nobody to answer
		}
		status := http.StatusBadGateway
		if ue, ok := errors.AsType[*h1.UpstreamError](err); ok {
			status = ue.Status
		}
		if b.p.log.Enabled(context.Background(), slog.LevelDebug) {
			b.p.log.Debug("upstream request failed", "endpoint", addr, "error", err)
		}
		localReply(s, status, h1.LocalBody(status))
		return status
	}
	defer res.Close()
	// WriteHeader encodes the fields before it returns.
	hp := h2.HeaderFields()
	defer h2.PutHeaderFields(hp)
	hdr := (*hp)[:0]
	res.VisitFields(func(name, value []byte) bool {
		hdr = append(hdr, hpack.HeaderField{Name: h2.LowerName(name), Value: string(value)})
		return true
	})
	if res.ContentLength >= 0 {
		hdr = append(hdr, hpack.HeaderField{Name: "content-length", Value: formatLength(res.ContentLength)})
	}
	*hp = hdr // a grown slice goes back to the pool
	end := res.NoBody() || res.ContentLength == 0
	if s.WriteHeader(res.Status, hdr, end, end || res.Buffered() == 0) != nil {
		return 0
	}
	if end {
		return res.Status
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		n, rerr := res.Read(buf)
		last := rerr == io.EOF
		if rerr != nil && !last {
			return 0 // reset by the handler's return: the body was cut
		}
		if n > 0 || last {
			if s.WriteData(buf[:n], last, last || res.Buffered() == 0) != nil {
				return 0
			}
		}
		if last {
			return res.Status
		}
	}
}

// requestFields yields a stream's fields for the HTTP/1.1 request: the
// framing and authority are the engine's, and HTTP/2's split cookie
// fields are joined again (RFC 9113 8.2.3).
func requestFields(s *h2.Stream) func(yield func(name, value string) bool) {
	return func(yield func(name, value string) bool) {
		cookies := 0
		for _, f := range s.Header {
			if f.Name == "cookie" {
				cookies++
			}
		}
		joined := false
		for _, f := range s.Header {
			switch f.Name {
			case "content-length", "te", "host":
				continue
			case "cookie":
				if cookies > 1 {
					if joined {
						continue
					}
					joined = true
					var sb strings.Builder
					for _, c := range s.Header {
						if c.Name == "cookie" {
							if sb.Len() > 0 {
								sb.WriteString("; ")
							}
							sb.WriteString(c.Value)
						}
					}
					if !yield("cookie", sb.String()) {
						return
					}
					continue
				}
			}
			if !yield(f.Name, f.Value) {
				return
			}
		}
	}
}

// localReply answers a stream with a small text body of the proxy's own.
func localReply(s *h2.Stream, status int, body string) {
	hdr := []hpack.HeaderField{
		{Name: "content-type", Value: "text/plain; charset=utf-8"},
		{Name: "x-content-type-options", Value: "nosniff"},
		{Name: "content-length", Value: formatLength(int64(len(body)))},
	}
	if body == "" {
		_ = s.WriteHeader(status, hdr[2:], true, true)
		return
	}
	if s.WriteHeader(status, hdr, false, false) == nil {
		_ = s.WriteData([]byte(body), true, true)
	}
}

// formatLength formats a content-length, without allocating for the
// common small ones.
func formatLength(n int64) string {
	if n >= 0 && n < int64(len(smallLengths)) {
		return smallLengths[n]
	}
	return strconv.FormatInt(n, 10)
}

var smallLengths = func() []string {
	s := make([]string, 4097)
	for i := range s {
		s[i] = strconv.Itoa(i)
	}
	return s
}()
