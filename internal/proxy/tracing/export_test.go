package tracing

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/contrib/propagators/b3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	grpccodes "google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
)

// recorder is an OTLP trace service that keeps every request whole, and
// fails the first failures calls with Unavailable.
type recorder struct {
	coltracepb.UnimplementedTraceServiceServer
	mu       sync.Mutex
	reqs     []*coltracepb.ExportTraceServiceRequest
	failures int
	calls    int
}

func (r *recorder) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if r.calls <= r.failures {
		return nil, status.Error(grpccodes.Unavailable, "not yet")
	}
	r.reqs = append(r.reqs, proto.Clone(req).(*coltracepb.ExportTraceServiceRequest))
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

func (r *recorder) take() []*coltracepb.ExportTraceServiceRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	reqs := r.reqs
	r.reqs = nil
	return reqs
}

func startRecorder(t testing.TB, failures int) (*recorder, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{failures: failures}
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, r)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return r, lis.Addr().String()
}

func newTestTracer(t testing.TB, addr string, o Options) *Tracer {
	t.Helper()
	o.Collector = addr
	if o.ServiceName == "" {
		o.ServiceName = "reviews"
	}
	tr, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Shutdown(context.Background()) })
	return tr
}

// fixedIDs makes the SDK draw the IDs our span drew.
type fixedIDs struct {
	tid trace.TraceID
	sid trace.SpanID
}

func (f *fixedIDs) NewIDs(context.Context) (trace.TraceID, trace.SpanID) { return f.tid, f.sid }
func (f *fixedIDs) NewSpanID(context.Context, trace.TraceID) trace.SpanID {
	return f.sid
}

// sdkTracer is the reference: the OpenTelemetry SDK with otlptracegrpc,
// configured as this package's Tracer was when it used them.
type sdkTracer struct {
	tp  *sdktrace.TracerProvider
	ids *fixedIDs
	tr  trace.Tracer
	b3  propagation.TextMapPropagator
}

func newSDKTracer(t testing.TB, addr, service string, percent float64, ids *fixedIDs, sync bool) *sdkTracer {
	t.Helper()
	exp, err := otlptracegrpc.New(context.Background(), otlptracegrpc.WithEndpoint(addr), otlptracegrpc.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	opts := []sdktrace.TracerProviderOption{
		sdktrace.WithResource(resource.NewWithAttributes(semconv.SchemaURL, semconv.ServiceName(service))),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(percent / 100))),
	}
	if ids != nil {
		opts = append(opts, sdktrace.WithIDGenerator(ids))
	}
	if sync {
		opts = append(opts, sdktrace.WithSyncer(exp))
	} else {
		opts = append(opts, sdktrace.WithBatcher(exp, sdktrace.WithBatchTimeout(time.Second)))
	}
	tp := sdktrace.NewTracerProvider(opts...)
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return &sdkTracer{tp: tp, ids: ids, tr: tp.Tracer(scopeName), b3: b3.New()}
}

// span makes the span the SDK makes for a request carrying the context
// in h, started and ended as in s and e; the attributes and status are
// set as this package's Finish did when it ended SDK spans.
func (r *sdkTracer) span(h Headers, s Start, e End, recommended bool) {
	c := carrier{h}
	ctx := propagation.TraceContext{}.Extract(context.Background(), c)
	if !trace.SpanContextFromContext(ctx).IsValid() {
		ctx = r.b3.Extract(ctx, c)
	}
	kind := trace.SpanKindServer
	if s.Kind == Client {
		kind = trace.SpanKindClient
	}
	_, sp := r.tr.Start(ctx, spanName(s), trace.WithSpanKind(kind), trace.WithTimestamp(s.Time))
	attrs := refStartAttrs(nil, &s, recommended)
	var code codes.Code
	var desc, errType string
	if s.GRPC {
		if e.GRPCStatus >= 0 {
			attrs = append(attrs, rpcGRPCStatusCode.Int(e.GRPCStatus))
			if grpcIsError(s.Kind, e.GRPCStatus) {
				code, errType = codes.Error, grpcCodeName(e.GRPCStatus)
			}
		} else if e.Status >= 400 {
			code, errType = codes.Error, strconv.Itoa(e.Status)
		}
	} else if e.Status > 0 {
		attrs = append(attrs, semconv.HTTPResponseStatusCode(e.Status))
		if e.Status >= 500 || (s.Kind == Client && e.Status >= 400) {
			code, errType = codes.Error, strconv.Itoa(e.Status)
		}
	}
	if e.Err != nil {
		code, desc, errType = codes.Error, e.Err.Error(), errorType(e.Err)
	}
	if errType != "" {
		attrs = append(attrs, semconv.ErrorTypeKey.String(errType))
	}
	if recommended && s.Kind == Client && e.Upstream != "" {
		attrs = refAppendPeer(attrs, e.Upstream)
	}
	sp.SetAttributes(attrs...)
	if code == codes.Error {
		sp.SetStatus(codes.Error, desc)
	}
	sp.End(trace.WithTimestamp(e.Time))
}

type hdrMap map[string]string

func (h hdrMap) Get(k string) string { return h[k] }
func (h hdrMap) Set(k, v string)     { h[k] = v }
func (h hdrMap) Del(k string)        { delete(h, k) }

func (h hdrMap) clone() hdrMap {
	c := hdrMap{}
	for k, v := range h {
		c[k] = v
	}
	return c
}

// TestMatchesSDK: for each kind of request, the collector receives from
// a Tracer exactly what the OpenTelemetry SDK with otlptracegrpc sends
// for the same span (same IDs, times, attributes, status, flags, trace
// state, resource and scope). Each case is one span in one request.
func TestMatchesSDK(t *testing.T) {
	rec, addr := startRecorder(t, 0)
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	cases := []struct {
		name        string
		in          hdrMap
		s           Start
		e           End
		recommended bool
	}{
		{"server root", hdrMap{}, Start{Kind: Server, Method: "GET", Scheme: "http", Authority: "reviews:9080", Path: "/r/1?x=1", Route: "default"},
			End{Status: 200, GRPCStatus: -1}, false},
		{"server continued with tracestate", hdrMap{"traceparent": tp, "tracestate": "vendor=v,other=1"},
			Start{Kind: Server, Method: "POST", Scheme: "https", Authority: "reviews.default.mesh", Path: "/r"}, End{Status: 503, GRPCStatus: -1}, false},
		{"client with url.full and peer", hdrMap{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03"},
			Start{Kind: Client, Method: "PUT", Scheme: "http", Authority: "ratings:80", Path: "/a/b", Peer: "10.0.0.1:5000", UserAgent: "curl/8"},
			End{Status: 404, GRPCStatus: -1, Upstream: "10.0.0.9:8080"}, true},
		{"unknown method, error", hdrMap{}, Start{Kind: Client, Method: "BREW", Scheme: "http", Authority: "pot", Path: "/"},
			End{Status: 0, GRPCStatus: -1, Err: context.DeadlineExceeded}, false},
		{"grpc server", hdrMap{"traceparent": tp}, Start{Kind: Server, GRPC: true, Method: "POST", Scheme: "https", Authority: "greeter:50051", Path: "/helloworld.Greeter/SayHello"},
			End{Status: 200, GRPCStatus: 14}, false},
		{"grpc client, http failure", hdrMap{}, Start{Kind: Client, GRPC: true, Method: "POST", Scheme: "http", Authority: "greeter", Path: "/bad"},
			End{Status: 502, GRPCStatus: -1}, false},
		{"b3 parent", hdrMap{"x-b3-traceid": "463ac35c9f6413ad48485a3953bb6124", "x-b3-spanid": "0020000000000001", "x-b3-sampled": "1"},
			Start{Kind: Server, Method: "GET", Scheme: "http", Authority: "a", Path: strings.Repeat("/long", 40)}, End{Status: 200, GRPCStatus: -1}, false},
	}
	sdkSpans := newSDKTracer(t, addr, "reviews", 100, &fixedIDs{}, true)
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.s.Time = t0.Add(time.Duration(i) * time.Second)
			c.e.Time = c.s.Time.Add(1500 * time.Microsecond)
			ours := newTestTracer(t, addr, Options{SamplePercent: 100, RecommendedAttributes: c.recommended})
			sp := ours.StartSpan(c.in.clone(), c.s)
			if !sp.Sampled() {
				t.Fatal("span not sampled")
			}
			sdkSpans.ids.tid, sdkSpans.ids.sid = sp.sc.TraceID(), sp.sc.SpanID()
			sp.Finish(c.e)
			if err := ours.Flush(t.Context()); err != nil {
				t.Fatal(err)
			}
			sdkSpans.span(c.in.clone(), c.s, c.e, c.recommended)
			got := rec.take()
			if len(got) != 2 {
				t.Fatalf("collector got %d requests, want 2", len(got))
			}
			if d := cmp.Diff(got[1], got[0], protocmp.Transform()); d != "" {
				t.Errorf("request differs from the SDK's (-sdk +ours):\n%s", d)
			}
		})
	}
}

// TestBatches: spans queued together leave in one request, in order, and
// a full queue drops and counts the rest.
func TestBatches(t *testing.T) {
	rec, addr := startRecorder(t, 0)
	tr := newTestTracer(t, addr, Options{SamplePercent: 100})
	// A queue that never exports by itself, so that spans accumulate.
	if err := tr.q.shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	exp, err := newExporter(addr)
	if err != nil {
		t.Fatal(err)
	}
	const limit = 300
	tr.q = newQueue(exp, "reviews", limits{spans: limit, bytes: 1 << 20, batch: 1 << 20, timeout: time.Hour})
	for i := range limit + 10 {
		tr.StartSpan(hdrMap{}, Start{Method: "GET", Path: "/" + strings.Repeat("x", i)}).Finish(End{Status: 200, GRPCStatus: -1})
	}
	if err := tr.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	reqs := rec.take()
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1", len(reqs))
	}
	spans := reqs[0].ResourceSpans[0].ScopeSpans[0].Spans
	for i, s := range spans {
		if want := "/" + strings.Repeat("x", i); s.Attributes[1].Value.GetStringValue() != want {
			t.Fatalf("span %d has url.path %q, want %q", i, s.Attributes[1].Value.GetStringValue(), want)
		}
	}
	if len(spans) != limit || tr.Dropped() != 10 {
		t.Errorf("exported %d spans and dropped %d, want %d and 10", len(spans), tr.Dropped(), limit)
	}
}

// TestExporterRetries: an Unavailable collector is retried with backoff
// until it accepts.
func TestExporterRetries(t *testing.T) {
	rec, addr := startRecorder(t, 2)
	tr := newTestTracer(t, addr, Options{SamplePercent: 100})
	for range 3 {
		tr.StartSpan(hdrMap{}, Start{Method: "GET"}).Finish(End{Status: 200, GRPCStatus: -1})
	}
	if err := tr.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := rec.take(); len(got) != 1 || rec.calls != 3 || len(got[0].ResourceSpans[0].ScopeSpans[0].Spans) != 3 {
		t.Errorf("%d requests kept after %d calls, want 1 of 3 spans after 3", len(got), rec.calls)
	}
}

// TestExporterGivesUp: a collector that is down fails the export when
// the context ends, and names the spans and the cause.
func TestExporterGivesUp(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close() // nothing listens: every attempt is Unavailable
	e, err := newExporter(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.shutdown() })
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	err = e.send(ctx, mem.SliceBuffer(nil), 1)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "1 spans") {
		t.Errorf("export to nothing: %v, want a deadline error naming the spans", err)
	}
}

// FuzzTraceparent: parseTraceparent accepts exactly what the W3C
// propagator accepts, with the same trace and span IDs and flags.
func FuzzTraceparent(f *testing.F) {
	for _, s := range []string{
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-future",
		"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-04",
		"", "00-", "0-4bf92f3577b34da6a3ce929d0e0e47366-00f067aa0ba902b7-01",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		want := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), hdrMap{"traceparent": v}))
		got := parseTraceparent(v)
		if got.IsValid() != want.IsValid() {
			t.Fatalf("%q: valid %v, propagator says %v", v, got.IsValid(), want.IsValid())
		}
		if got.IsValid() && !got.Equal(want) {
			t.Fatalf("%q: %+v, propagator %+v", v, got, want)
		}
	})
}

// Keys makes hdrMap a TextMapCarrier for the propagator in the fuzz test.
func (h hdrMap) Keys() []string { return nil }

// BenchmarkSpanExported is the whole cost of one sampled server span,
// its export to an in-process collector included, with this package's
// Tracer and with the OpenTelemetry SDK and otlptracegrpc it replaced
// (batch processor, 1 s timeout), flushing every 512 spans so that none
// is dropped.
//
//	go test -run '^$' -bench SpanExported -benchmem ./internal/proxy/tracing/
func BenchmarkSpanExported(b *testing.B) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, &discard{})
	go func() { _ = srv.Serve(lis) }()
	b.Cleanup(srv.Stop)
	addr := lis.Addr().String()
	s := Start{Kind: Client, Method: "POST", Scheme: "http", Authority: "reviews.default.mesh:9080", Path: "/bench", Route: "reviews"}
	e := End{Status: 200, GRPCStatus: -1, Upstream: "127.0.0.1:9080"}
	h := hdrMap{}
	b.Run("sdk-otlptracegrpc", func(b *testing.B) {
		r := newSDKTracer(b, addr, "bench", 100, nil, false)
		n := 0
		b.ReportAllocs()
		for b.Loop() {
			clear(h)
			s.Time, e.Time = time.Now(), time.Now()
			r.span(h, s, e, false)
			if n++; n%512 == 0 {
				if err := r.tp.ForceFlush(context.Background()); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("verge", func(b *testing.B) {
		tr := newTestTracer(b, addr, Options{ServiceName: "bench", SamplePercent: 100})
		n := 0
		b.ReportAllocs()
		for b.Loop() {
			clear(h)
			tr.StartSpan(h, s).Finish(e)
			if n++; n%512 == 0 {
				if err := tr.Flush(context.Background()); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}

// discard accepts every request without decoding it beyond gRPC's codec.
type discard struct {
	coltracepb.UnimplementedTraceServiceServer
}

func (*discard) Export(context.Context, *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

// The reference attributes: how this package built the SDK span's
// attributes when it used the SDK, kept as the expectation the encoder
// (appendStartAttrs and appendRecorded) is checked against.

var (
	// Attribute keys of the RPC conventions the semconv package no longer names.
	rpcSystemGRPC     = attribute.String("rpc.system", "grpc")
	rpcService        = attribute.Key("rpc.service")
	rpcMethod         = attribute.Key("rpc.method")
	rpcGRPCStatusCode = attribute.Key("rpc.grpc.status_code")
)

func refStartAttrs(a []attribute.KeyValue, s *Start, recommended bool) []attribute.KeyValue {
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
		a = refAppendPeer(a, s.Peer)
	}
	return a
}

func refAppendPeer(a []attribute.KeyValue, addr string) []attribute.KeyValue {
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
