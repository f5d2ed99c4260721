// Package tracing owns the proxy's distributed tracing: it continues a
// trace from W3C traceparent (or B3, single or multi header) on the
// incoming request or starts one at the configured sampling rate, makes
// one span per hop with the OpenTelemetry HTTP and RPC semantic
// conventions' attributes, propagates W3C traceparent upstream, and
// exports OTLP/gRPC; spans are the OpenTelemetry Go SDK's (sampler,
// batch span processor), the exporter is this package's (export.go).
//
// It does not own where spans are started: the data path (h1 engine,
// HTTP/2 bridge, net/http) calls StartSpan and Finish around each request
// through the Headers interface. The OTLP receiver used by tests lives in
// the otlpsink subpackage.
//
// Conventions, and the choices made where they leave room:
//
//   - HTTP attributes follow semantic conventions v1.43.0 (HTTP is stable),
//     the Required and Conditionally Required ones: http.request.method
//     (or "_OTHER" with http.request.method_original), url.scheme,
//     url.path, server.address, server.port, http.route,
//     http.response.status_code, error.type, and url.full on client
//     spans. The Recommended user_agent.original and
//     network.peer.address/port are opt-in (Options.RecommendedAttributes):
//     every attribute costs every sampled request twice, on the request
//     path and in export. Not the Opt-In body sizes. The span name is the method alone ("GET"; "HTTP" for unknown
//     methods), not "GET {http.route}": Start.Route is the name of the
//     matched xDS route, not a path template, so it goes only into
//     http.route. The query string is never recorded (url.path, url.full
//     stop at '?') because queries routinely carry credentials and the
//     proxy cannot tell which.
//   - gRPC spans use the RPC attributes rpc.system=grpc, rpc.service,
//     rpc.method and rpc.grpc.status_code (the names of semantic
//     conventions v1.37.0; v1.39 renamed them to rpc.system.name and
//     rpc.response.status_code, still a release candidate, and most
//     backends still key on the older names). Their span name is
//     "package.Service/Method".
//   - Status Error: HTTP 5xx on Server spans, 4xx and 5xx on Client spans;
//     gRPC UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
//     UNAVAILABLE and DATA_LOSS on Server spans, every non-OK code on
//     Client spans; any End.Err.
//
// Cost: an unsampled request pays for parsing the incoming context, a
// new span id and writing traceparent (a few hundred nanoseconds, five to
// seven allocations); a sampled one also builds the SDK span and its
// attributes (see the benchmarks). traceparent is written here in one
// allocation rather than by the W3C propagator's Inject (four), and the
// span's IDs are substrings of it.
//
// Export runs in the SDK's batch span processor goroutine: its queue is
// bounded (2048 spans), and spans that find it full are dropped, so a
// slow or absent collector costs memory up to that bound and never
// blocks a request. The exporter is hand-written because otlptracegrpc
// was the largest cost of 100% sampling: its tracetransform turns each
// span into a tree of proto structs (about three allocations per
// attribute, a third of all the allocations of a proxied request) only
// for proto.Marshal to flatten it again. The exporter writes the same
// ExportTraceServiceRequest with protowire from the SDK's spans into a
// pooled buffer and sends the bytes with grpc-go (BenchmarkExport: 7.1 ->
// 4.0 µs a span with the receiver's decoding, 77 -> 47 allocations;
// BenchmarkTwoProxies/plaintext-trace100, whole process: 223 -> 125
// allocations and about 96k -> 80k CPU ns a request against 64k with
// tracing off). TestExporterMatchesOTLP checks that it sends what
// otlptracegrpc sends. It keeps otlptracegrpc's retry rules (the OTLP
// retryable codes, backoff from 0.5 s to 5 s, 10 s an export).
package tracing

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/contrib/propagators/b3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
)

// Options configure a Tracer.
type Options struct {
	// ServiceName is the service.name resource attribute; required.
	ServiceName string
	// Collector is the OTLP/gRPC collector's "host:port"; required. The
	// gRPC connection itself carries no TLS: Dial, if set, dials the
	// collector instead (so it can return a TLS connection for mTLS, or
	// a test hook's).
	Collector string
	Dial      func(ctx context.Context, addr string) (net.Conn, error)
	// SamplePercent (0..100) applies when the request carries no sampling
	// decision.
	SamplePercent float64
	// RecommendedAttributes also records user_agent.original and
	// network.peer.address/port, which the HTTP conventions recommend
	// but do not require. Off, a sampled span carries only the required
	// and conditionally required attributes: each attribute costs every
	// sampled request on the request path and in export.
	RecommendedAttributes bool
}

// Kind is a span's kind from the proxy's point of view.
type Kind int

const (
	// Server: the inbound side of a proxy (the request came from a peer).
	Server Kind = iota + 1
	// Client: the outbound side (the request goes to a peer).
	Client
)

// A zero Kind makes a Server span.

// Headers reads and writes request header fields; the data path adapts
// its own header representation to it. StartSpan calls it only from the
// calling goroutine. An adapter that also has Keys (a
// propagation.TextMapCarrier) spares StartSpan wrapping it, one
// allocation a request; Keys is never called.
type Headers interface {
	Get(name string) string // lower-case name; "" when absent
	Set(name, value string)
	Del(name string)
}

// Start describes the request a span is for.
type Start struct {
	Kind      Kind
	Time      time.Time // zero: now
	Method    string
	Scheme    string // "http" or "https"
	Authority string // "host" or "host:port"
	Path      string // with query (the query is not recorded)
	// GRPC: the request is gRPC (RPC conventions: rpc.system, service,
	// method; Path is "/package.Service/Method").
	GRPC      bool
	Peer      string // peer address "host:port"
	UserAgent string
	Route     string // route name, when matched
}

// End describes how it ended.
type End struct {
	Time time.Time // zero: now
	// Status is the HTTP status; 0: none (no response).
	Status int
	// GRPCStatus is the gRPC status code; -1: none. Note that the zero
	// value means OK: the data path must set -1 when it has no code.
	GRPCStatus int
	// BytesIn and BytesOut count body bytes this proxy received and sent
	// on the span's side. They are not recorded on the span: the body size
	// attributes are Opt-In in the HTTP conventions and cost every sampled
	// request; metrics and access logs carry bytes.
	BytesIn  int64
	BytesOut int64
	Upstream string // upstream endpoint "host:port", Client spans
	Err      error  // the request failed without (or after) a status
}

// Span is one hop's span, or a no-op (Sampled false) that still carries
// the trace context onward. A nil *Span is a valid no-op.
type Span struct {
	span trace.Span
	sc   trace.SpanContext
	kind Kind
	grpc bool
	// recommended: the Tracer's RecommendedAttributes.
	recommended bool
	// traceparent is what went upstream; "" without a valid context.
	traceparent string
	// opts backs the start options, sparing a slice per span.
	opts [2]trace.SpanStartOption
	// attrs holds the start attributes of a recording span until Finish
	// sets them together with the end ones: one SetAttributes call grows
	// the SDK's attribute slice once.
	attrs *[]attribute.KeyValue
}

// attrPool recycles the attribute scratch slices of recording spans.
var attrPool = sync.Pool{New: func() any {
	a := make([]attribute.KeyValue, 0, 24)
	return &a
}}

// TraceID and SpanID are lower-case hex ("" for a span with no context).
// They cost no allocation.
func (s *Span) TraceID() string {
	if s == nil || s.traceparent == "" {
		return ""
	}
	return s.traceparent[3:35]
}

// SpanID: see TraceID.
func (s *Span) SpanID() string {
	if s == nil || s.traceparent == "" {
		return ""
	}
	return s.traceparent[36:52]
}

// Sampled reports whether the span is recorded and exported.
func (s *Span) Sampled() bool { return s != nil && s.sc.IsSampled() }

// Finish ends the span; a Span must be finished exactly once, by one
// goroutine (a later second call is ignored). It never blocks on export.
func (s *Span) Finish(e End) {
	if s == nil || s.attrs == nil {
		return
	}
	p := s.attrs
	s.attrs = nil
	attrs := *p
	var code codes.Code
	var desc, errType string

	if s.grpc {
		if e.GRPCStatus >= 0 {
			attrs = append(attrs, rpcGRPCStatusCode.Int(e.GRPCStatus))
			if grpcIsError(s.kind, e.GRPCStatus) {
				code = codes.Error
				errType = grpcCodeName(e.GRPCStatus)
			}
		} else if e.Status >= 400 {
			code = codes.Error
			errType = strconv.Itoa(e.Status)
		}
	} else if e.Status > 0 {
		attrs = append(attrs, semconv.HTTPResponseStatusCode(e.Status))
		if e.Status >= 500 || (s.kind == Client && e.Status >= 400) {
			code = codes.Error
			errType = strconv.Itoa(e.Status)
		}
	}
	if e.Err != nil {
		code = codes.Error
		desc = e.Err.Error()
		errType = errorType(e.Err)
	}
	if errType != "" {
		attrs = append(attrs, semconv.ErrorTypeKey.String(errType))
	}
	if s.recommended && s.kind == Client && e.Upstream != "" {
		attrs = appendPeer(attrs, e.Upstream)
	}
	s.span.SetAttributes(attrs...)
	clear(attrs) // the SDK copied them; drop the request's strings
	*p = attrs[:0]
	attrPool.Put(p)
	if code == codes.Error {
		s.span.SetStatus(codes.Error, desc)
	}
	if e.Time.IsZero() {
		s.span.End()
	} else {
		s.span.End(trace.WithTimestamp(e.Time))
	}
}

// Tracer makes spans. Safe for concurrent use.
type Tracer struct {
	provider *sdktrace.TracerProvider
	tracer   trace.Tracer
	w3c      propagation.TraceContext
	b3       propagation.TextMapPropagator
	// recommended: Options.RecommendedAttributes.
	recommended bool
}

// New starts a Tracer and its exporter. It does not wait for the
// collector: the gRPC connection is made, and remade, in the background.
func New(o Options) (*Tracer, error) {
	if o.ServiceName == "" {
		return nil, errors.New("tracing: ServiceName: must not be empty")
	}
	if o.Collector == "" {
		return nil, errors.New("tracing: Collector: must not be empty")
	}
	if _, _, err := net.SplitHostPort(o.Collector); err != nil {
		return nil, fmt.Errorf("tracing: Collector %q: must be host:port: %w", o.Collector, err)
	}
	if math.IsNaN(o.SamplePercent) || o.SamplePercent < 0 || o.SamplePercent > 100 {
		return nil, fmt.Errorf("tracing: SamplePercent %v: must be within 0..100", o.SamplePercent)
	}
	target := o.Collector
	if o.Dial != nil {
		// Dial gets the address as configured, not one resolved by gRPC.
		target = "passthrough:///" + o.Collector
	}
	var dopts []grpc.DialOption
	if o.Dial != nil {
		dopts = append(dopts, grpc.WithContextDialer(o.Dial))
	}
	exp, err := newExporter(target, dopts...)
	if err != nil {
		return nil, fmt.Errorf("tracing: OTLP exporter for %s: %w", o.Collector, err)
	}
	res := resource.NewWithAttributes(semconv.SchemaURL, semconv.ServiceName(o.ServiceName))
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(o.SamplePercent/100))),
		// A short batch timeout makes traces show up within a second at
		// low rates; at high rates batches fill (512 spans) first.
		sdktrace.WithBatcher(exp,
			sdktrace.WithMaxQueueSize(sdktrace.DefaultMaxQueueSize),
			sdktrace.WithBatchTimeout(time.Second)),
	)
	return &Tracer{
		provider: tp,
		tracer:   tp.Tracer("verge.dev/verge/internal/proxy/tracing"),
		b3:       b3.New(),

		recommended: o.RecommendedAttributes,
	}, nil
}

// b3Headers are removed on output so that B3 and traceparent never
// disagree at the next hop.
var b3Headers = [...]string{"b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags"}

// StartSpan reads the trace context from h (traceparent/tracestate, else
// B3), starts this hop's span as its child (or a new root, sampled at
// SamplePercent), and writes the span's context into h as traceparent
// (removing B3 headers) so the next hop continues it. An incoming
// sampling decision is respected; a B3 context without one counts as not
// sampled (the B3 propagator reads "deferred" as 0).
func (t *Tracer) StartSpan(h Headers, s Start) *Span {
	// Adapters that are TextMapCarriers themselves spare the allocation
	// of wrapping them.
	c, ok := h.(propagation.TextMapCarrier)
	if !ok {
		c = carrier{h}
	}
	ctx := t.w3c.Extract(context.Background(), c)
	hasB3 := h.Get("b3") != "" || h.Get("x-b3-traceid") != ""
	if hasB3 && !trace.SpanContextFromContext(ctx).IsValid() {
		ctx = t.b3.Extract(ctx, c)
	}

	out := &Span{kind: s.Kind, grpc: s.GRPC, recommended: t.recommended}
	opts := out.opts[:1]
	opts[0] = serverKind
	if s.Kind == Client {
		opts[0] = clientKind
	}
	if !s.Time.IsZero() {
		opts = append(opts, trace.WithTimestamp(s.Time))
	}
	_, sp := t.tracer.Start(ctx, spanName(s), opts...)
	out.span, out.sc = sp, sp.SpanContext()
	if sp.IsRecording() {
		p := attrPool.Get().(*[]attribute.KeyValue)
		*p = startAttrs((*p)[:0], &s, t.recommended)
		out.attrs = p
	}

	if hasB3 || h.Get("x-b3-sampled") != "" || h.Get("x-b3-flags") != "" {
		for _, k := range b3Headers {
			if h.Get(k) != "" {
				h.Del(k)
			}
		}
	}
	if ts := out.sc.TraceState(); ts.Len() > 0 {
		h.Set("tracestate", ts.String())
	} else if h.Get("tracestate") != "" {
		h.Del("tracestate")
	}
	if out.sc.IsValid() {
		out.traceparent = traceparent(out.sc)
		h.Set("traceparent", out.traceparent)
	}
	return out
}

// traceparent formats sc as a W3C traceparent (version 00) in one
// allocation; the propagator's Inject takes four. The span's IDs are
// substrings of it.
func traceparent(sc trace.SpanContext) string {
	var b [55]byte
	tid, sid := sc.TraceID(), sc.SpanID()
	copy(b[:3], "00-")
	hex.Encode(b[3:35], tid[:])
	b[35] = '-'
	hex.Encode(b[36:52], sid[:])
	b[52] = '-'
	hex.Encode(b[53:55], []byte{byte(sc.TraceFlags() & trace.FlagsSampled)})
	return string(b[:])
}

// Recommended reports whether spans record Options.RecommendedAttributes,
// so that the data path builds Start.UserAgent and Start.Peer only then.
func (t *Tracer) Recommended() bool { return t.recommended }

// Flush exports every finished span (bounded by ctx).
func (t *Tracer) Flush(ctx context.Context) error { return t.provider.ForceFlush(ctx) }

// Shutdown flushes pending spans (bounded by ctx) and stops the exporter.
// Spans started afterwards are not exported.
func (t *Tracer) Shutdown(ctx context.Context) error { return t.provider.Shutdown(ctx) }

// carrier adapts Headers to the propagators' TextMapCarrier; they never
// call Keys.
type carrier struct{ h Headers }

func (c carrier) Get(k string) string { return c.h.Get(k) }
func (c carrier) Set(k, v string)     { c.h.Set(k, v) }
func (c carrier) Keys() []string      { return nil }

var (
	rpcSystemGRPC     = attribute.String("rpc.system", "grpc")
	rpcService        = attribute.Key("rpc.service")
	rpcMethod         = attribute.Key("rpc.method")
	rpcGRPCStatusCode = attribute.Key("rpc.grpc.status_code")
)

// knownMethods are the methods of RFC 9110 and RFC 5789, the set the HTTP
// conventions name; others are reported as "_OTHER".
var knownMethods = map[string]bool{
	"GET": true, "HEAD": true, "POST": true, "PUT": true, "DELETE": true,
	"CONNECT": true, "OPTIONS": true, "TRACE": true, "PATCH": true,
}

// serverKind and clientKind are built once: an option made per request
// would be allocated per request.
var (
	serverKind trace.SpanStartOption = trace.WithSpanKind(trace.SpanKindServer)
	clientKind trace.SpanStartOption = trace.WithSpanKind(trace.SpanKindClient)
)

func spanName(s Start) string {
	if s.GRPC {
		if svc, m, ok := splitGRPCPath(s.Path); ok {
			return s.Path[1 : len(svc)+len(m)+2]
		}
		return "grpc"
	}
	if knownMethods[s.Method] {
		return s.Method
	}
	return "HTTP"
}

// splitGRPCPath splits "/package.Service/Method".
func splitGRPCPath(p string) (svc, method string, ok bool) {
	if len(p) < 4 || p[0] != '/' {
		return "", "", false
	}
	svc, method, ok = strings.Cut(p[1:], "/")
	if !ok || svc == "" || method == "" || strings.ContainsAny(method, "/?") {
		return "", "", false
	}
	return svc, method, true
}

func startAttrs(a []attribute.KeyValue, s *Start, recommended bool) []attribute.KeyValue {
	if s.GRPC {
		a = append(a, rpcSystemGRPC)
		if svc, m, ok := splitGRPCPath(s.Path); ok {
			a = append(a, rpcService.String(svc), rpcMethod.String(m))
		}
	} else {
		if knownMethods[s.Method] {
			a = append(a, semconv.HTTPRequestMethodKey.String(s.Method))
		} else {
			a = append(a, semconv.HTTPRequestMethodOther, semconv.HTTPRequestMethodOriginal(s.Method))
		}
		path, _, _ := strings.Cut(s.Path, "?")
		if s.Scheme != "" {
			a = append(a, semconv.URLScheme(s.Scheme))
		}
		if path != "" {
			a = append(a, semconv.URLPath(path))
		}
		if s.Kind == Client && s.Scheme != "" && s.Authority != "" {
			a = append(a, semconv.URLFull(s.Scheme+"://"+s.Authority+path))
		}
		if recommended && s.UserAgent != "" {
			a = append(a, semconv.UserAgentOriginal(s.UserAgent))
		}
		if s.Route != "" {
			a = append(a, semconv.HTTPRoute(s.Route))
		}
	}
	if s.Authority != "" {
		host, port := splitAuthority(s.Authority, s.Scheme)
		a = append(a, semconv.ServerAddress(host))
		if port > 0 {
			a = append(a, semconv.ServerPort(port))
		}
	}
	if recommended && s.Kind != Client && s.Peer != "" {
		a = appendPeer(a, s.Peer)
	}
	return a
}

// splitAuthority returns the host and port of an authority, the port
// defaulting by scheme (0 when unknown).
func splitAuthority(auth, scheme string) (string, int) {
	if host, port, err := net.SplitHostPort(auth); err == nil {
		if p, err := strconv.Atoi(port); err == nil && p > 0 && p < 65536 {
			return host, p
		}
		return host, 0
	}
	host := strings.TrimSuffix(strings.TrimPrefix(auth, "["), "]")
	switch scheme {
	case "http":
		return host, 80
	case "https":
		return host, 443
	}
	return host, 0
}

func appendPeer(a []attribute.KeyValue, addr string) []attribute.KeyValue {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return append(a, semconv.NetworkPeerAddress(addr))
	}
	a = append(a, semconv.NetworkPeerAddress(host))
	if p, err := strconv.Atoi(port); err == nil && p > 0 && p < 65536 {
		a = append(a, semconv.NetworkPeerPort(p))
	}
	return a
}

// grpcIsError follows the RPC conventions' gRPC table: a server reports
// only the codes that mean it failed, a client every non-OK code.
func grpcIsError(k Kind, c int) bool {
	if c == 0 {
		return false
	}
	if k == Client {
		return true
	}
	switch c {
	case 2, 4, 12, 13, 14, 15: // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS
		return true
	}
	return false
}

var grpcCodeNames = [...]string{
	"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
	"NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
	"FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
	"INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
}

func grpcCodeName(c int) string {
	if c >= 0 && c < len(grpcCodeNames) {
		return grpcCodeNames[c]
	}
	return strconv.Itoa(c)
}

// errorType gives error.type a low-cardinality value for the errors the
// data path ends requests with.
func errorType(err error) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return "_OTHER"
}
