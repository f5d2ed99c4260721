package proxy

import (
	"net/http"
	"net/netip"
	"strings"
	"time"

	"verge.dev/verge/internal/proxy/config"
	"verge.dev/verge/internal/proxy/h1"
)

// h1Router gives the h1 engine the same routing, balancing and
// authorization as the net/http path. One serves one connection.
type h1Router struct {
	p *Proxy
	l *httpListener
	// src is the client's address, for authorization.
	src netip.Addr
}

// Route implements h1.Router: it routes (route) and then has the
// exchange observed (observeH1 in telemetry_h1.go).
func (r h1Router) Route(req *h1.Request) h1.Decision {
	lcfg := r.l.cfg.Load()
	st := r.p.state.Load()
	lt := st.tel[lcfg.Name]
	if lt == nil || !lt.on() {
		return r.route(req, lcfg, st, nil)
	}
	var info routeInfo
	start := time.Now()
	d := r.route(req, lcfg, st, &info)
	return r.observeH1(req, d, lt, &info, start)
}

// routeInfo is what route tells the observer about its choice.
type routeInfo struct {
	route string
	cl    *cluster
	// addr is the endpoint of the last attempt, retries the attempts
	// after the first (net/http path; the h1 engine reports its own), and
	// local that the proxy answered itself.
	addr    string
	retries int
	local   bool
}

func (r h1Router) route(req *h1.Request, lcfg *config.Listener, st *state, info *routeInfo) h1.Decision {
	p := r.p
	stat := statName(lcfg)
	if lcfg.Authz != nil && !r.authorizeH1(lcfg, req) {
		p.metrics.request(stat, "", http.StatusForbidden)
		return h1.Decision{Status: http.StatusForbidden}
	}
	rt := st.routes[lcfg.RouteName]
	var rte *route
	var head requestHead
	if rt != nil {
		_, query, _ := strings.Cut(req.Target, "?")
		head = requestHead{method: req.Method, host: req.Host, path: req.Path, query: query, header: funcHeaders(req.Header)}
		rte = rt.match(&head)
	}
	if rte == nil {
		p.metrics.request(stat, "", http.StatusNotFound)
		return h1.Decision{Status: http.StatusNotFound}
	}
	if info != nil {
		info.route = rte.cfg.Name
	}
	if dr := rte.cfg.DirectResponse; dr != nil {
		p.metrics.request(stat, "", dr.Status)
		return h1.Decision{Status: dr.Status}
	}
	if rte.traffic != nil || lcfg.Traffic != nil || rte.guarded {
		// Traffic management has its own path (h1router_traffic.go), so
		// that routes without it keep this one's cost.
		return r.routeTraffic(req, lcfg, stat, &head, rte, info)
	}
	cl := rte.pickCluster()
	if info != nil {
		info.cl = cl
	}
	if cl == nil {
		p.metrics.request(stat, "", http.StatusServiceUnavailable)
		return h1.Decision{Status: http.StatusServiceUnavailable}
	}
	if cl.cfg.Protocol != config.UpstreamHTTP1 || (cl.tlsAddrs != nil && !p.bridgeOut()) {
		// The table changed under a kept-alive h1 connection; setConfig
		// has told it to close after this exchange, and the client's next
		// connection goes to net/http, which speaks HTTP/2 upstream (over
		// mutual TLS to TLS endpoints: never plaintext HTTP/1.1 to them).
		p.metrics.request(stat, cl.name, http.StatusServiceUnavailable)
		return h1.Decision{Status: http.StatusServiceUnavailable}
	}
	ep := cl.bal.Pick()
	if ep == nil {
		p.metrics.request(stat, cl.name, http.StatusServiceUnavailable)
		return h1.Decision{Status: http.StatusServiceUnavailable}
	}
	// A TLS endpoint is a peer proxy: the request goes as an HTTP/2
	// stream over mutual TLS (bridge.go), never as plaintext HTTP/1.1.
	var up h1.Upstream
	if cl.isTLS(ep.Address) {
		if cl.tls.err != nil {
			ep.Done()
			p.warnOnce("cluster/"+cl.name, "tls endpoints not reached", "cluster", cl.name, "error", cl.tls.err)
			p.metrics.request(stat, cl.name, http.StatusBadGateway)
			return h1.Decision{Status: http.StatusBadGateway}
		}
		up = cl.tls
	}
	active := p.metrics.activeRequests.WithLabelValues(stat)
	active.Inc()
	return h1.Decision{
		Addr:     ep.Address,
		Upstream: up,
		Timeout:  rte.timeout,
		// status is what the client was sent, the engine's own reply
		// included; 0 (nothing sent: the client left) counts as 499.
		Done: func(status int, err error) {
			noteStatus(ep, status)
			ep.Done()
			active.Dec()
			if status == 0 {
				status = 499
			}
			p.metrics.request(stat, cl.name, status)
		},
	}
}
