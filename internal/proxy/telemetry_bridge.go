package proxy

import (
	"time"

	"golang.org/x/net/http2/hpack"

	"verge.dev/verge/internal/proxy/config"
	"verge.dev/verge/internal/proxy/h2"
	"verge.dev/verge/internal/proxy/observe"
	"verge.dev/verge/internal/proxy/tracing"
)

// takeStreamPeerMeta removes the peer metadata fields from a bridged
// stream and returns them. Bridge connections are mutual TLS with a peer
// proxy, so they are believed.
func takeStreamPeerMeta(s *h2.Stream) peerMeta {
	var m peerMeta
	found := false
	for i := range s.Header {
		if isPeerMeta(s.Header[i].Name) {
			found = true
			break
		}
	}
	if !found {
		return m
	}
	kept := s.Header[:0]
	for _, f := range s.Header {
		switch f.Name {
		case hdrSource:
			m.service = f.Value
		case hdrSourceZone:
			m.zone = f.Value
		default:
			if !isPeerMeta(f.Name) {
				kept = append(kept, f)
			}
			continue
		}
	}
	s.Header = kept
	return m
}

// serveObserved is ServeStream on a listener with telemetry.
func (b bridgeConn) serveObserved(s *h2.Stream, lcfg *config.Listener, st *state, lt *listenerTelemetry, src peerMeta) {
	start := time.Now()
	var span *tracing.Span
	if lt.tracer != nil {
		st := tracing.Start{
			Kind: tracing.Server, Time: start, Method: s.Method, Scheme: "https",
			Authority: s.Authority, Path: s.Path,
		}
		if lt.tracer.Recommended() {
			st.Peer, st.UserAgent = b.src.String(), s.Get("user-agent")
		}
		span = lt.tracer.StartSpan(streamSpanHeaders{s}, st)
	}
	var info routeInfo
	status := b.serveStream(s, lcfg, st, &info)
	if sent := s.Status(); sent != 0 {
		status = sent
	}
	now := time.Now()
	read, written := s.BodyBytes()
	o := observe.Request{
		Edge:       lt.edge(info.route, "http", sourcePeer(b.principal, src.service, src.zone)),
		Start:      start,
		Duration:   now.Sub(start),
		Status:     status,
		GRPCStatus: -1,
		BytesIn:    read,
		BytesOut:   written,
		Method:     s.Method,
		Authority:  s.Authority,
		Path:       s.Path,
		Upstream:   info.addr,
		Log:        lt.log,
	}
	switch {
	case s.Status() == 0:
		o.Flags = "DC"
	case info.local:
		o.Flags = responseFlags(status, nil, true)
	}
	if lt.log != nil {
		o.UserAgent = s.Get("user-agent")
		o.RequestID = s.Get("x-request-id")
	}
	if span != nil {
		o.TraceID, o.SpanID = span.TraceID(), span.SpanID()
		span.Finish(tracing.End{Time: now, Status: status, GRPCStatus: -1,
			BytesIn: read, BytesOut: written, Upstream: info.addr})
	}
	b.p.observe(lt, &o)
}

// streamSpanHeaders lets the tracer read a stream's fields and set the
// trace context the application gets.
type streamSpanHeaders struct{ s *h2.Stream }

func (h streamSpanHeaders) Get(name string) string { return h.s.Get(name) }

// Keys makes streamSpanHeaders a propagation.TextMapCarrier (the tracer
// then needs no wrapper); the propagators never call it.
func (h streamSpanHeaders) Keys() []string { return nil }

// ScanTrace makes streamSpanHeaders a tracing.Scanner (HTTP/2 field names
// are lower case).
func (h streamSpanHeaders) ScanTrace(in *tracing.Incoming) {
	for _, f := range h.s.Header {
		in.Add(f.Name, f.Value)
	}
}

func (h streamSpanHeaders) Set(name, value string) {
	for i := range h.s.Header {
		if h.s.Header[i].Name == name {
			h.s.Header[i].Value = value
			return
		}
	}
	h.s.Header = append(h.s.Header, hpack.HeaderField{Name: name, Value: value})
}

func (h streamSpanHeaders) Del(name string) {
	kept := h.s.Header[:0]
	for _, f := range h.s.Header {
		if f.Name != name {
			kept = append(kept, f)
		}
	}
	h.s.Header = kept
}
