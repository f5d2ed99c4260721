// Package tracing owns the proxy's distributed tracing: it continues a
// trace from W3C traceparent (or B3, single or multi header) on the
// incoming request or starts one at the configured sampling rate, makes
// one span per hop with the OpenTelemetry HTTP and RPC semantic
// conventions' attributes, propagates W3C traceparent upstream, and
// exports the spans over OTLP/gRPC.
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
//     path and in export. Not the Opt-In body sizes. The span name is the
//     method alone ("GET"; "HTTP" for unknown methods), not
//     "GET {http.route}": Start.Route is the name of the matched xDS
//     route, not a path template, so it goes only into http.route. The
//     query string is never recorded (url.path, url.full stop at '?')
//     because queries routinely carry credentials and the proxy cannot
//     tell which.
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
// Why spans are not the OpenTelemetry SDK's: this package started with
// the SDK (sdktrace spans, its batch span processor) and then replaced,
// measured step by step, the parts that cost the data path most. A proxy
// span is always the same shape (a kind, a name, a dozen attributes of
// known keys, no events, no links), but the SDK's general span takes a
// mutex per call, copies the attributes into its own slice, builds a map
// to deduplicate them, snapshots the span at End, and hands the snapshot
// through a channel to a goroutine that groups and encodes it, and the
// snapshots live until the batch is exported, which the garbage collector
// pays for again. Tracing at 100% cost 23% of the two-proxy throughput
// that way (bench/RESULTS.md), against the 15%. Measured on one
// sampled span (BenchmarkStartSpanSampled/request-path, the request
// path alone): 1.7 µs and 9 allocations with the SDK, 0.6 µs and 2 here;
// with export to an in-process collector (BenchmarkSpanExported, which
// runs both side by side): 9.6-11.4 µs and 95 allocations with the SDK
// and otlptracegrpc, 4.0 µs and 49 here, most of them the collector's
// decoding. Here a span is a
// small struct the data path fills; Finish encodes it once, with
// protowire, straight into the pending OTLP request (record.go: the
// attributes too, from the request's own strings, with no
// attribute.KeyValue in between), and one
// goroutine sends that request to the collector in batches. What the SDK
// still decides: sampling (sdktrace.TraceIDRatioBased for new traces,
// ParentBased's rule for continued ones), and what reaches the collector
// is checked to be what the SDK with otlptracegrpc sends for the same
// span (TestMatchesSDK), field for field.
//
// Cost: an unsampled request pays for reading the incoming context (one
// pass over the fields when the Headers can list them), two random IDs
// and writing traceparent (one allocation); a sampled one also fills and
// encodes the span (see the benchmarks). The incoming traceparent is
// parsed here, as the W3C propagator does (FuzzTraceparent checks both
// agree), because the propagator returns it inside a new context.Context
// and then its tracestate, two allocations a request; B3 still goes
// through the contrib propagator, being rare.
//
// Export: spans wait in a bounded queue (2048 spans, 4 MiB); a span that
// finds it full is dropped and counted (Dropped), so a slow or absent
// collector costs memory up to that bound and never blocks a request.
// The queue is sent when it holds 512 spans or a second after its first,
// with otlptracegrpc's retry rules (the OTLP retryable codes, backoff
// from 0.5 s to 5 s, 10 s an export).
package tracing

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/contrib/propagators/b3"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
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
// calling goroutine. An adapter that can list its fields should also be a
// Scanner. An adapter that also has Keys (a propagation.TextMapCarrier)
// spares StartSpan wrapping it for the B3 propagator; Keys is never
// called.
type Headers interface {
	Get(name string) string // lower-case name; "" when absent
	Set(name, value string)
	Del(name string)
}

// Scanner is a Headers that can pass every field to Incoming.Add in one
// pass: StartSpan then reads the trace context with that pass instead of
// a lookup per field it looks for, most of them absent.
type Scanner interface {
	ScanTrace(in *Incoming)
}

// Incoming collects the trace context fields of a request (see Scanner).
type Incoming struct {
	traceparent, tracestate string
	seen                    uint8 // which of traceparent, tracestate were found
	b3                      bool  // some B3 field is present
}

const (
	seenTraceparent = 1 << iota
	seenTracestate
)

// Add looks at one field; name must be in lower case. The first
// traceparent and tracestate count, as a header lookup would find them.
func (in *Incoming) Add(name, value string) {
	switch {
	case name == "traceparent":
		if in.seen&seenTraceparent == 0 {
			in.traceparent, in.seen = value, in.seen|seenTraceparent
		}
	case name == "tracestate":
		if in.seen&seenTracestate == 0 {
			in.tracestate, in.seen = value, in.seen|seenTracestate
		}
	case name == "b3" || strings.HasPrefix(name, "x-b3-"):
		in.b3 = true
	}
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
	t    *Tracer
	sc   trace.SpanContext
	kind Kind
	grpc bool
	// traceparent is what went upstream; "" without a valid context.
	traceparent string
	in          Incoming
	// Recording spans only: until Finish.
	recording bool
	parent    trace.SpanID // invalid for a root
	remote    bool         // the parent came from the request
	name      string
	start     time.Time
	// st is the request as started; Finish encodes its attributes, so
	// its strings must stay intact until then.
	st Start
}

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
// goroutine (a later second call is ignored). It encodes a sampled span
// into the export queue (or drops it when the queue is full) and never
// blocks on export. The strings of the Start the span began with must be
// intact until Finish returns.
func (s *Span) Finish(e End) {
	if s == nil || !s.recording {
		return
	}
	s.recording = false
	en := ending{grpcStatus: -1}
	if s.grpc {
		if e.GRPCStatus >= 0 {
			en.grpcStatus = e.GRPCStatus
			if grpcIsError(s.kind, e.GRPCStatus) {
				en.code = statusError
				en.errType = grpcCodeName(e.GRPCStatus)
			}
		} else if e.Status >= 400 {
			en.code = statusError
			en.errType = strconv.Itoa(e.Status)
		}
	} else if e.Status > 0 {
		en.httpStatus = e.Status
		if e.Status >= 500 || (s.kind == Client && e.Status >= 400) {
			en.code = statusError
			en.errType = strconv.Itoa(e.Status)
		}
	}
	if e.Err != nil {
		en.code = statusError
		en.desc = e.Err.Error()
		en.errType = errorType(e.Err)
	}
	if s.t.recommended && s.kind == Client {
		en.peer = e.Upstream
	}
	en.time = e.Time
	if en.time.IsZero() {
		en.time = time.Now()
	}
	s.t.q.add(s, &en)
	s.st = Start{} // drop the request's strings
}

// ending is what Finish adds to a span: the end time, the status and the
// attributes known only then.
type ending struct {
	time       time.Time
	code       uint64 // STATUS_CODE_UNSET (0) or statusError
	desc       string
	httpStatus int // 0: none
	grpcStatus int // -1: none
	errType    string
	peer       string // network.peer.*, Client spans with RecommendedAttributes
}

// Tracer makes spans. Safe for concurrent use.
type Tracer struct {
	// ratio samples new traces; continued ones follow their parent.
	ratio sdktrace.Sampler
	b3    propagation.TextMapPropagator
	// recommended: Options.RecommendedAttributes.
	recommended bool
	q           *queue
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
	return &Tracer{
		ratio:       sdktrace.TraceIDRatioBased(o.SamplePercent / 100),
		b3:          b3.New(),
		recommended: o.RecommendedAttributes,
		q:           newQueue(exp, o.ServiceName, queueLimits),
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
	out := new(Span)
	t.Begin(out, h, s)
	return out
}

// Begin is StartSpan into a Span the caller holds (one allocation fewer
// when it is part of the caller's per-request state). out is overwritten.
func (t *Tracer) Begin(out *Span, h Headers, s Start) {
	*out = Span{t: t, kind: s.Kind, grpc: s.GRPC}
	in := &out.in
	if sc, ok := h.(Scanner); ok {
		sc.ScanTrace(in)
	} else {
		in.traceparent, in.tracestate = h.Get("traceparent"), h.Get("tracestate")
		// The fields that make a B3 context or a sampling decision; the
		// span and parent IDs mean nothing without them.
		in.b3 = h.Get("b3") != "" || h.Get("x-b3-traceid") != "" || h.Get("x-b3-sampled") != "" || h.Get("x-b3-flags") != ""
	}
	parent := parseTraceparent(in.traceparent)
	if parent.IsValid() && in.tracestate != "" {
		// A malformed tracestate is dropped, not the traceparent (W3C).
		ts, _ := trace.ParseTraceState(in.tracestate)
		parent = parent.WithTraceState(ts)
	}
	if !parent.IsValid() && in.b3 {
		c, ok := h.(propagation.TextMapCarrier)
		if !ok {
			c = carrier{h}
		}
		parent = trace.SpanContextFromContext(t.b3.Extract(context.Background(), c))
	}

	var scc trace.SpanContextConfig
	sampled := false
	if parent.IsValid() {
		// ParentBased: a remote parent's decision is kept.
		scc.TraceID, scc.TraceState = parent.TraceID(), parent.TraceState()
		sampled = parent.IsSampled()
		out.parent, out.remote = parent.SpanID(), parent.IsRemote()
	} else {
		scc.TraceID = newTraceID()
		out.name = spanName(s)
		r := t.ratio.ShouldSample(sdktrace.SamplingParameters{
			ParentContext: context.Background(), TraceID: scc.TraceID, Name: out.name, Kind: spanKindOf(s.Kind),
		})
		sampled = r.Decision == sdktrace.RecordAndSample
		scc.TraceState = r.Tracestate
	}
	scc.SpanID = newSpanID()
	scc.TraceFlags = parent.TraceFlags() &^ trace.FlagsSampled
	if sampled {
		scc.TraceFlags |= trace.FlagsSampled
	}
	out.sc = trace.NewSpanContext(scc)
	if sampled {
		out.recording = true
		if out.name == "" {
			out.name = spanName(s)
		}
		out.start = s.Time
		if out.start.IsZero() {
			out.start = time.Now()
		}
		out.st = s
	}

	if in.b3 {
		for _, k := range b3Headers {
			if h.Get(k) != "" {
				h.Del(k)
			}
		}
	}
	if ts := out.sc.TraceState(); ts.Len() > 0 {
		h.Set("tracestate", ts.String())
	} else if in.tracestate != "" {
		h.Del("tracestate")
	}
	out.traceparent = traceparent(out.sc)
	h.Set("traceparent", out.traceparent)
}

// parseTraceparent reads a W3C traceparent as the W3C propagator does
// (propagation.TraceContext; FuzzTraceparent holds them to the same
// answer) without its context.Context: an invalid SpanContext when v is
// not a valid one.
func parseTraceparent(v string) trace.SpanContext {
	if len(v) < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-' {
		return trace.SpanContext{}
	}
	var ver, flags [1]byte
	var scc trace.SpanContextConfig
	if !hexPart(ver[:], v[0:2]) || ver[0] == 0xff ||
		!hexPart(scc.TraceID[:], v[3:35]) || !hexPart(scc.SpanID[:], v[36:52]) ||
		!hexPart(flags[:], v[53:55]) {
		return trace.SpanContext{}
	}
	// What follows the flags must be another field ("-..."); version 0
	// allows none (a lone trailing "-" passes, as with the propagator)
	// and no reserved flag bits.
	rest := v[55:]
	if rest != "" && rest[0] != '-' || ver[0] == 0 && (len(rest) > 1 || flags[0] > 3) {
		return trace.SpanContext{}
	}
	scc.TraceFlags = trace.TraceFlags(flags[0]) & (trace.FlagsSampled | trace.FlagsRandom)
	scc.Remote = true
	return trace.NewSpanContext(scc)
}

// hexPart decodes lower-case hex only, as the W3C format requires. Every
// other byte maps to 0xff in unhex, so one check of the OR of all the
// nibbles finds any invalid one.
func hexPart(dst []byte, s string) bool {
	var bad byte
	for i := 0; i+1 < len(s); i += 2 {
		hi, lo := unhex[s[i]], unhex[s[i+1]]
		dst[i/2] = hi<<4 | lo
		bad |= hi | lo
	}
	return bad&0xf0 == 0
}

var unhex = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = byte(c - '0')
	}
	for c := 'a'; c <= 'f'; c++ {
		t[c] = byte(c - 'a' + 10)
	}
	return t
}()

// newTraceID and newSpanID draw random IDs as the SDK's default ID
// generator does (math/rand/v2, which is lock-free), never all zeros.
func newTraceID() (id trace.TraceID) {
	for !id.IsValid() {
		binary.NativeEndian.PutUint64(id[:8], rand.Uint64())
		binary.NativeEndian.PutUint64(id[8:], rand.Uint64())
	}
	return id
}

func newSpanID() (id trace.SpanID) {
	for !id.IsValid() {
		binary.NativeEndian.PutUint64(id[:], rand.Uint64())
	}
	return id
}

func spanKindOf(k Kind) trace.SpanKind {
	if k == Client {
		return trace.SpanKindClient
	}
	return trace.SpanKindServer
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
func (t *Tracer) Flush(ctx context.Context) error { return t.q.flush(ctx) }

// Shutdown flushes pending spans (bounded by ctx) and stops the exporter.
// Spans finished afterwards are dropped.
func (t *Tracer) Shutdown(ctx context.Context) error { return t.q.shutdown(ctx) }

// Dropped is the number of sampled spans dropped so far because the
// export queue was full (or the Tracer shut down).
func (t *Tracer) Dropped() uint64 { return t.q.dropped.Load() }

// carrier adapts Headers to the propagators' TextMapCarrier; they never
// call Keys.
type carrier struct{ h Headers }

func (c carrier) Get(k string) string { return c.h.Get(k) }
func (c carrier) Set(k, v string)     { c.h.Set(k, v) }
func (c carrier) Keys() []string      { return nil }

// knownMethods are the methods of RFC 9110 and RFC 5789, the set the HTTP
// conventions name; others are reported as "_OTHER".
var knownMethods = map[string]bool{
	"GET": true, "HEAD": true, "POST": true, "PUT": true, "DELETE": true,
	"CONNECT": true, "OPTIONS": true, "TRACE": true, "PATCH": true,
}

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
