package proxy

import (
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"verge.dev/verge/internal/proxy/observe"
	"verge.dev/verge/internal/proxy/tracing"
)

// serveObserved is ServeHTTP for a listener with telemetry: it records the
// response as it is written and observes the request when the handler
// returns (or panics: an aborted response is still a request).
func (h listenerHandler) serveObserved(w http.ResponseWriter, r *http.Request, lt *listenerTelemetry, src peerMeta) {
	start := time.Now()
	rec := &recordingWriter{ResponseWriter: w}
	var info routeInfo
	body := &countingBody{ReadCloser: r.Body}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = body
	}
	grpc := isGRPC(r)
	proto := "http"
	if grpc {
		proto = "grpc"
	}
	var span *tracing.Span
	if lt.tracer != nil {
		kind := tracing.Client
		if lt.inbound {
			kind = tracing.Server
		}
		scheme := "http"
		if r.TLS != nil {
			scheme = "https"
		}
		span = lt.tracer.StartSpan(tracing.HTTPHeaders(r.Header), tracing.Start{
			Kind: kind, Time: start, Method: r.Method, Scheme: scheme, Authority: r.Host,
			Path: r.URL.RequestURI(), GRPC: grpc, Peer: r.RemoteAddr, UserAgent: r.UserAgent(),
		})
	}
	// In a defer: a response cut short panics with http.ErrAbortHandler.
	defer func() {
		now := time.Now()
		status := rec.status
		aborted := false
		if v := recover(); v != nil {
			aborted = true
			defer panic(v)
		}
		var edge *observe.Edge
		switch {
		case lt.inbound:
			edge = lt.edge(info.route, proto, sourcePeer(src.principal, src.service, src.zone))
		case info.cl != nil:
			edge = info.cl.outboundEdge(lt, info.route, proto, info.addr)
		default:
			edge = lt.edge(info.route, proto, observe.Peer{Service: unknownPeer})
		}
		grpcStatus := -1
		if grpc {
			grpcStatus = grpcCodeOf(rec.grpcStatus())
		}
		o := observe.Request{
			Edge:       edge,
			Start:      start,
			Duration:   now.Sub(start),
			Status:     status,
			GRPCStatus: grpcStatus,
			BytesIn:    body.n,
			BytesOut:   rec.bytes,
			Retries:    info.retries,
			Method:     r.Method,
			Authority:  r.Host,
			Path:       r.URL.RequestURI(),
			Upstream:   info.addr,
			Log:        lt.log,
		}
		switch {
		case aborted || r.Context().Err() != nil && status == 0:
			o.Flags = "DC"
		case info.local:
			o.Flags = responseFlags(status, nil, true)
		}
		if lt.log != nil {
			o.UserAgent = r.UserAgent()
			o.RequestID = r.Header.Get("X-Request-Id")
		}
		if span != nil {
			o.TraceID, o.SpanID = span.TraceID(), span.SpanID()
			span.Finish(tracing.End{Time: now, Status: status, GRPCStatus: grpcStatus,
				BytesIn: o.BytesIn, BytesOut: o.BytesOut, Upstream: info.addr})
		}
		h.p.observe(lt, &o)
	}()
	h.serve(rec, r, &info)
}

// peerMeta is what an inbound request says of its caller: the SPIFFE ID
// of its mutual TLS certificate and the peer proxy's metadata headers.
type peerMeta struct {
	principal, service, zone string
}

// takePeerMeta removes the peer metadata headers from an inbound request,
// keeping them only from a mutual TLS peer (anyone else could forge them).
func takePeerMeta(r *http.Request) peerMeta {
	var m peerMeta
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		if id, err := spiffeIDOf(r.TLS.PeerCertificates[0].URIs); err == nil {
			m.principal = id
			m.service = r.Header.Get(hdrSource)
			m.zone = r.Header.Get(hdrSourceZone)
		}
	}
	delete(r.Header, "X-Verge-Source")
	delete(r.Header, "X-Verge-Source-Zone")
	return m
}

var errNoSPIFFEID = errors.New("no spiffe ID in the certificate")

func spiffeIDOf(uris []*url.URL) (string, error) {
	for _, u := range uris {
		if u.Scheme == "spiffe" {
			id, err := spiffeid.FromURI(u)
			if err != nil {
				return "", err
			}
			return id.String(), nil
		}
	}
	return "", errNoSPIFFEID
}

// setPeerMeta adds the local workload's service and zone to a request going
// to a peer proxy.
func setPeerMeta(h http.Header, local observe.Peer) {
	if local.Service == "" || local.Service == unknownPeer {
		return
	}
	h["X-Verge-Source"] = []string{local.Service}
	if local.Zone != "" {
		h["X-Verge-Source-Zone"] = []string{local.Zone}
	}
}

// countingBody counts the request body bytes the handler read.
type countingBody struct {
	io.ReadCloser
	n int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	return n, err
}

// recordingWriter remembers what the handler sent: the status and the body
// bytes. It unwraps for http.ResponseController (full duplex, flushes).
type recordingWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *recordingWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *recordingWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.bytes += int64(n)
	return n, err
}

func (w *recordingWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *recordingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// grpcStatus is the response's grpc-status: a trailer, or a header of a
// trailers-only response.
func (w *recordingWriter) grpcStatus() string {
	hd := w.Header()
	if v := hd.Get("Grpc-Status"); v != "" {
		return v
	}
	if v := hd.Get(http.TrailerPrefix + "Grpc-Status"); v != "" {
		return v
	}
	for k, vv := range hd {
		if len(vv) > 0 && strings.EqualFold(strings.TrimPrefix(k, http.TrailerPrefix), "grpc-status") {
			return vv[0]
		}
	}
	return ""
}
