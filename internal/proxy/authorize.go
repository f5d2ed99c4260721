package proxy

import (
	"io"
	"net/http"
	"net/netip"
	"strings"

	"verge.dev/verge/internal/proxy/authz"
	"verge.dev/verge/internal/proxy/config"
	"verge.dev/verge/internal/proxy/h1"
)

// Enforcement of a listener's authorization policy (config.Listener.Authz,
// compiled by package authz). The data path only builds the request view,
// asks the engine and carries out the decision; what is allowed is the
// engine's business. Every decision is handed to Config.Authz, which counts
// it and writes deny and audit decisions to the audit log.

// deniedBody is the reply body of a refused HTTP request, Envoy's words.
const deniedBody = "RBAC: access denied"

// grpcPermissionDenied is gRPC's PERMISSION_DENIED code.
const grpcPermissionDenied = "7"

// record hands d to the proxy's recorder, if any.
func (p *Proxy) record(cl *config.Listener, req *authz.Request, d authz.Decision) {
	if p.cfg.Authz != nil {
		p.cfg.Authz.Record(cl.Name, req, d)
	}
}

// authorizeHTTP decides r on a listener whose Authz is set and answers it
// when refused; it reports whether r may go on.
func (h listenerHandler) authorizeHTTP(w http.ResponseWriter, r *http.Request, cl *config.Listener, grpc bool, stat string) bool {
	req := authz.Request{
		Principal: principalOf(r),
		SourceIP:  sourceIP(r.RemoteAddr),
		DestPort:  h.l.port,
		HTTP:      true,
		Method:    r.Method,
		Path:      pathOf(r),
		Host:      r.Host,
		Header:    func(name string) string { return r.Header.Get(name) },
		VisitHeaders: func(fn func(name, value string) bool) {
			for k, vv := range r.Header {
				if len(vv) > 0 && !fn(strings.ToLower(k), vv[0]) {
					return
				}
			}
		},
	}
	d := cl.Authz.Check(&req)
	h.p.record(cl, &req, d)
	if d.Allowed {
		return true
	}
	hd := w.Header()
	if grpc {
		// Trailers-only: a gRPC client reads the status from headers that
		// end the stream.
		hd.Set("Content-Type", "application/grpc")
		hd.Set("Grpc-Status", grpcPermissionDenied)
		hd.Set("Grpc-Message", deniedBody)
		w.WriteHeader(http.StatusOK)
		h.p.metrics.request(stat, "", http.StatusOK)
		return false
	}
	hd.Set("Content-Type", "text/plain; charset=utf-8")
	hd.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusForbidden)
	_, _ = io.WriteString(w, h1.LocalBody(http.StatusForbidden))
	h.p.metrics.request(stat, "", http.StatusForbidden)
	return false
}

// authorizeH1 decides a request of the HTTP/1.1 fast path, whose
// connections are plaintext (TLS ones go to net/http), so it has no
// principal. It reports whether the request may go on.
func (r h1Router) authorizeH1(cl *config.Listener, req *h1.Request) bool {
	ar := authz.Request{
		SourceIP:     r.src,
		DestPort:     r.l.port,
		HTTP:         true,
		Method:       req.Method,
		Path:         req.Path,
		Host:         req.Host,
		Header:       req.Header,
		VisitHeaders: req.VisitHeaders,
	}
	d := cl.Authz.Check(&ar)
	if r.p.cfg.Authz != nil {
		if !d.Allowed || len(d.Audited) > 0 {
			// Path and Host view the engine's request buffer, reused by
			// the next request; a deny or audit line may be written
			// after Record returns.
			ar.Path, ar.Host = strings.Clone(ar.Path), strings.Clone(ar.Host)
		}
		r.p.cfg.Authz.Record(cl.Name, &ar, d)
	}
	return d.Allowed
}

// authorizeConn decides a TCP connection once, before it is proxied.
func (p *Proxy) authorizeConn(cl *config.Listener, principal string, src netip.Addr, port uint32) bool {
	req := authz.Request{Principal: principal, SourceIP: src, DestPort: port}
	d := cl.Authz.Check(&req)
	p.record(cl, &req, d)
	return d.Allowed
}
