package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"verge.dev/verge/internal/proxy/balancer"
	"verge.dev/verge/internal/proxy/h1"
	"verge.dev/verge/internal/proxy/resilience"
)

// failure is why the proxy answered a request itself.
type failure int

const (
	failNoRoute failure = iota + 1
	failNoEndpoint
	failConnect
	failTimeout
	failUpstream
)

// httpStatus and grpcStatus are the one mapping from a local failure to the
// code a client sees.
func (f failure) httpStatus() int {
	switch f {
	case failNoRoute:
		return http.StatusNotFound
	case failNoEndpoint, failConnect:
		return http.StatusServiceUnavailable
	case failTimeout:
		return http.StatusGatewayTimeout
	default:
		return http.StatusBadGateway
	}
}

// grpcStatus returns the gRPC code (as its decimal string) and message.
func (f failure) grpcStatus() (code, msg string) {
	switch f {
	case failNoRoute:
		return "12", "no route" // UNIMPLEMENTED
	case failNoEndpoint:
		return "14", "no healthy upstream" // UNAVAILABLE
	case failConnect:
		return "14", "upstream connect error"
	case failTimeout:
		return "4", "upstream request timeout" // DEADLINE_EXCEEDED
	default:
		return "14", "upstream reset"
	}
}

// hopHeaders are connection-specific and never forwarded (RFC 9110 7.6.1).
// "Te" is handled separately: "TE: trailers" must reach gRPC servers.
var hopHeaders = []string{
	"Connection",
	"Proxy-Connection",
	"Keep-Alive",
	"Proxy-Authenticate",
	"Proxy-Authorization",
	"Trailer",
	"Transfer-Encoding",
	"Upgrade",
}

func removeHopHeaders(h http.Header) {
	for _, f := range h["Connection"] {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = strings.TrimSpace(sf); sf != "" {
				h.Del(sf)
			}
		}
	}
	for _, k := range hopHeaders {
		delete(h, k)
	}
}

// bufPool holds body copy buffers, so streaming a body costs no allocation.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// listenerHandler routes and forwards the requests of one HTTP listener.
type listenerHandler struct {
	p *Proxy
	l *httpListener
}

func isGRPC(r *http.Request) bool {
	ct := r.Header.Get("Content-Type")
	return strings.HasPrefix(ct, "application/grpc")
}

func (h listenerHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.l.maybeUpgradeH2C(w, r, h) {
		return
	}
	if r.Method == http.MethodConnect {
		// HTTP_PROXY tunnels (connect.go); the h1 engine hands CONNECT here.
		h.serveConnect(w, r)
		return
	}
	lcfg := h.l.cfg.Load()
	var src peerMeta
	if h.l.inbound {
		src = takePeerMeta(r)
	}
	if lt := h.p.state.Load().tel[lcfg.Name]; lt != nil && lt.on() {
		h.serveObserved(w, r, lt, src)
		return
	}
	h.serve(w, r, nil)
}

// serve routes and forwards r; info, when set, learns the route, cluster,
// endpoint and retries, for telemetry.
func (h listenerHandler) serve(w http.ResponseWriter, r *http.Request, info *routeInfo) {
	p := h.p
	lcfg := h.l.cfg.Load()
	stat := statName(lcfg)
	active := p.metrics.activeRequests.WithLabelValues(stat)
	active.Inc()
	defer active.Dec()

	grpc := isGRPC(r)
	if lcfg.Authz != nil && !h.authorizeHTTP(w, r, lcfg, grpc, stat) {
		return
	}
	st := p.state.Load()
	rt := st.routes[lcfg.RouteName]
	var rte *route
	var head requestHead
	if rt != nil {
		head = requestHead{method: r.Method, host: r.Host, path: pathOf(r), query: r.URL.RawQuery, header: stdHeaders(r.Header)}
		rte = rt.match(&head)
	}
	if rte == nil {
		if info != nil {
			info.local = true
		}
		h.fail(w, r, grpc, stat, "", failNoRoute)
		return
	}
	if info != nil {
		// Local until an endpoint is picked.
		info.route, info.local = rte.cfg.Name, true
	}
	if dr := rte.cfg.DirectResponse; dr != nil {
		if dr.Body != "" {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		}
		w.WriteHeader(dr.Status)
		_, _ = io.WriteString(w, dr.Body)
		p.metrics.request(stat, "", dr.Status)
		return
	}
	if rte.traffic != nil || lcfg.Traffic != nil {
		// Redirect, rate limit, shedding and faults (route_traffic_http.go).
		end, ok := h.admit(w, r, grpc, stat, lcfg, rte, &head)
		if !ok {
			return
		}
		defer end()
	}
	cl := rte.pickCluster()
	if info != nil {
		info.cl = cl
	}
	if cl == nil {
		h.fail(w, r, grpc, stat, "", failNoEndpoint)
		return
	}
	if !cl.guard.admit() {
		// The cluster's breaker is open (Envoy's response flag UO).
		h.fail(w, r, grpc, stat, cl.name, failNoEndpoint)
		return
	}
	defer cl.guard.done()
	var ep *balancer.Endpoint
	var setCookie string
	if rtf := rte.traffic; rtf != nil && len(rtf.hash) > 0 {
		ep, setCookie = pickByHash(rtf, cl, r)
	} else {
		ep = cl.bal.Pick()
	}
	if ep == nil {
		h.fail(w, r, grpc, stat, cl.name, failNoEndpoint)
		return
	}
	if info != nil {
		info.local = false
	}
	h.forward(w, r, grpc, stat, rte, cl, ep, setCookie, info)
}

func (h listenerHandler) fail(w http.ResponseWriter, r *http.Request, grpc bool, stat, clusterName string, f failure) {
	if h.p.log.Enabled(r.Context(), slog.LevelDebug) {
		h.p.log.Debug("request answered locally", "listener", stat, "cluster", clusterName, "host", r.Host, "path", r.URL.Path, "status", f.httpStatus())
	}
	if grpc {
		code, msg := f.grpcStatus()
		hd := w.Header()
		hd.Set("Content-Type", "application/grpc")
		hd.Set("Grpc-Status", code)
		hd.Set("Grpc-Message", msg)
		w.WriteHeader(http.StatusOK)
		h.p.metrics.request(stat, clusterName, http.StatusOK)
		return
	}
	status := f.httpStatus()
	// The same reply as the h1 engine's, from its one table of bodies.
	hd := w.Header()
	hd.Del("Content-Length")
	hd.Set("Content-Type", "text/plain; charset=utf-8")
	hd.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, h1.LocalBody(status))
	h.p.metrics.request(stat, clusterName, status)
}

// forward sends r to ep, and to other endpoints of cl while the route's
// retry policy says so, and relays the final response. It owns ep: every
// attempt's endpoint is reported to the cluster's guard (which ends its
// in-flight count). setCookie, when not empty, is added to the response
// (a hash policy's new affinity cookie).
func (h listenerHandler) forward(w http.ResponseWriter, r *http.Request, grpc bool, stat string, rte *route, cl *cluster, ep *balancer.Endpoint, setCookie string, info *routeInfo) {
	ctx := r.Context()
	if rte.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, rte.timeout)
		defer cancel()
	}
	// Full duplex lets an HTTP/1.1 client keep sending while the response
	// streams; HTTP/2 is always full duplex. The error only says HTTP/2.
	_ = http.NewResponseController(w).EnableFullDuplex()

	// The handler owns r.Header, so it is forwarded in place rather than
	// cloned.
	te := r.Header["Te"]
	removeHopHeaders(r.Header)
	delete(r.Header, "Te")
	for _, v := range te {
		if strings.Contains(strings.ToLower(v), "trailers") {
			r.Header.Set("Te", "trailers")
			break
		}
	}
	if _, ok := r.Header["User-Agent"]; !ok {
		// Stop the Transport from adding Go's own User-Agent.
		r.Header["User-Agent"] = nil
	}
	body := r.Body
	if r.ContentLength == 0 {
		body = http.NoBody
	}
	rtf := rte.traffic
	path, rawPath, host := r.URL.Path, r.URL.RawPath, r.Host
	var replay *replayBody
	if rtf != nil {
		applyEdits(r.Header, rtf.reqEdits)
		if rw := rtf.rewrite; rw != nil {
			path, rawPath = rewriteURLPath(rw, r.URL)
			if rw.Host != "" {
				host = rw.Host
			}
		}
		if (rtf.attempts > 0 || len(rtf.mirrors) > 0) && r.ContentLength != 0 && r.ContentLength <= maxRetryBody {
			replay = &replayBody{src: r.Body}
		}
	}

	// start is when ep's attempt began; retried is set while ep's attempt
	// is a retry holding a guard retry slot.
	start := time.Now()
	retried := false
	status, fl := 0, resilience.FailureNone
	defer func() {
		if ep != nil {
			cl.guard.report(ep, status, fl, time.Since(start))
		}
		if retried {
			cl.guard.retryDone()
		}
	}()
	var res *http.Response
	for attempt := 0; ; attempt++ {
		// A TLS endpoint is a peer proxy: HTTP/2 over mutual TLS,
		// whatever the application spoke. Others get the cluster's own
		// protocol.
		tr, scheme := http.RoundTripper(nil), "http"
		if cl.isTLS(ep.Address) {
			if cl.tls.err != nil {
				h.p.warnOnce("cluster/"+cl.name, "tls endpoints not reached", "cluster", cl.name, "error", cl.tls.err)
				fl = resilience.FailureConnect
				h.fail(w, r, grpc, stat, cl.name, failUpstream)
				return
			}
			tr, scheme = cl.tls.transport(), "https"
			if lt := h.p.state.Load().tel[h.l.cfg.Load().Name]; lt != nil && !lt.inbound {
				setPeerMeta(r.Header, lt.local)
			}
		} else {
			tr = cl.up.transport()
		}
		b := body
		if replay != nil {
			b = replay.reader()
		}
		out := &http.Request{
			Method: r.Method,
			URL:    &url.URL{Scheme: scheme, Host: ep.Address, Path: path, RawPath: rawPath, RawQuery: r.URL.RawQuery},
			Proto:  "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header:        r.Header,
			Body:          b,
			ContentLength: r.ContentLength,
			Host:          host,
			// The server fills r.Trailer's values once the body is read to
			// EOF, which is before the Transport sends trailers, so sharing
			// the map carries request trailers through.
			Trailer: r.Trailer,
		}
		if info != nil {
			info.addr = ep.Address
		}
		actx, perTry := ctx, (*perTryTimer)(nil)
		if rtf != nil && rtf.perTry > 0 {
			actx, perTry = startPerTry(ctx, rtf.perTry)
		}
		start = time.Now()
		var err error
		res, err = tr.RoundTrip(out.WithContext(actx))
		timedOut := perTry.stop(err == nil)
		grpcStatus := resilience.GRPCStatusNone
		var f failure
		if err != nil {
			if r.Context().Err() != nil {
				// The client left; nobody reads the answer.
				h.p.metrics.request(stat, cl.name, 499)
				status, fl = 0, resilience.FailureReset
				return
			}
			f = classify(actx, err)
			if timedOut {
				f = failTimeout
			}
			status, fl = 0, failureOfLocal(f)
			if h.p.log.Enabled(ctx, slog.LevelDebug) {
				h.p.log.Debug("upstream request failed", "cluster", cl.name, "endpoint", ep.Address, "error", err)
			}
		} else {
			status, fl = res.StatusCode, resilience.FailureNone
			grpcStatus = resilience.GRPCStatus(nil, res.Header)
		}
		if attempt == 0 && rtf != nil && len(rtf.mirrors) > 0 {
			h.mirror(r, rtf, path, rawPath, host, replay)
		}
		if rtf != nil && attempt < rtf.attempts && rtf.retry(status, grpcStatus, fl) && ctx.Err() == nil {
			if next, ok := h.retry(ctx, cl, rtf, attempt+1, replay, r.ContentLength, ep, status, fl, start, &retried); ok {
				if res != nil {
					res.Body.Close()
				}
				ep, body, status, fl = next, http.NoBody, 0, resilience.FailureNone
				h.p.trafficMetrics.retries.WithLabelValues(stat, cl.name).Inc()
				if info != nil {
					info.retries++
				}
				continue
			}
		}
		if err != nil {
			h.fail(w, r, grpc, stat, cl.name, f)
			return
		}
		break
	}
	defer res.Body.Close()

	removeHopHeaders(res.Header)
	hd := w.Header()
	for k, vv := range res.Header {
		hd[k] = vv
	}
	if rtf != nil {
		applyEdits(hd, rtf.respEdits)
	}
	if setCookie != "" {
		hd.Add("Set-Cookie", setCookie)
	}
	// Announce the trailers the upstream declared, and drop a Content-Length
	// so an HTTP/1.1 client gets a chunked body that can carry them.
	var declared []string
	if len(res.Trailer) > 0 {
		delete(hd, "Content-Length")
		declared = make([]string, 0, len(res.Trailer))
		for k := range res.Trailer {
			declared = append(declared, k)
		}
		hd["Trailer"] = declared
	}
	w.WriteHeader(res.StatusCode)
	h.p.metrics.request(stat, cl.name, res.StatusCode)

	// Streams (gRPC, server-sent events, anything without a length) are
	// flushed on every write, like ReverseProxy with FlushInterval -1.
	flush := grpc || res.ContentLength == -1
	if err := copyBody(w, res.Body, flush, h.p.cfg.StreamIdleTimeout); err != nil {
		// A response cut short must not look complete to the client: abort
		// resets the HTTP/2 stream or closes the HTTP/1.1 connection.
		if h.p.log.Enabled(ctx, slog.LevelDebug) {
			h.p.log.Debug("response body copy ended", "cluster", cl.name, "endpoint", ep.Address, "error", err)
		}
		fl = resilience.FailureReset
		panic(http.ErrAbortHandler)
	}
	// Trailers (gRPC's status among them) arrive with the body's EOF.
	for k, vv := range res.Trailer {
		if slices.Contains(declared, k) {
			hd[k] = vv
		} else {
			// HTTP/2 lets an upstream send trailers it did not declare.
			hd[http.TrailerPrefix+k] = vv
		}
	}
}

// copyBody copies src to w with a pooled buffer, flushing after each write
// when flush is set. A write to the client must make progress within
// about idle (between idle/2 and idle): a client that stopped reading
// would otherwise block the handler, and hold its upstream stream, forever.
func copyBody(w http.ResponseWriter, src io.Reader, flush bool, idle time.Duration) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	rc := http.NewResponseController(w)
	// armed is when the write deadline was last set (zero: never). It is
	// re-armed only once half of it has passed: on HTTP/2 every
	// SetWriteDeadline is a message to the connection's goroutine.
	var armed time.Time
	defer func() {
		if !armed.IsZero() {
			// An HTTP/1.1 connection keeps its deadline into the next
			// request otherwise.
			_ = rc.SetWriteDeadline(time.Time{})
		}
	}()
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if now := time.Now(); now.Sub(armed) >= idle/2 {
				if rc.SetWriteDeadline(now.Add(idle)) == nil {
					armed = now
				}
			}
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
			if flush {
				if err := rc.Flush(); err != nil {
					return err
				}
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

// classify maps a RoundTrip error to the failure the client is told about.
func classify(ctx context.Context, err error) failure {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return failTimeout
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return failConnect
	}
	return failUpstream
}

var codeClasses = [...]string{"1xx", "2xx", "3xx", "4xx", "5xx"}

// codeClass is the bounded status label ("2xx"); 499 marks a client that
// left before the answer.
func codeClass(status int) string {
	switch {
	case status == 499:
		return "client_closed"
	case status >= 100 && status < 600:
		return codeClasses[status/100-1]
	default:
		return "other"
	}
}
