package tracing

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/contrib/propagators/b3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	grpccodes "google.golang.org/grpc/codes"
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

func startRecorder(t *testing.T, failures int) (*recorder, string) {
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

// testSpans covers every attribute type, events, links, status codes,
// trace state, local and remote parents, two resources and, within one,
// two scopes; n spans in all.
func testSpans(t *testing.T, n int) []sdktrace.ReadOnlySpan {
	t.Helper()
	res1 := resource.NewWithAttributes("https://opentelemetry.io/schemas/1.43.0",
		attribute.String("service.name", "reviews"), attribute.Int("pid", 42))
	res2 := resource.NewSchemaless(attribute.String("service.name", "ratings"))
	scopes := []instrumentation.Scope{
		{Name: "verge.dev/verge/internal/proxy/tracing"},
		{Name: "other", Version: "v1.2.3", SchemaURL: "https://example.com/s",
			Attributes: attribute.NewSet(attribute.Bool("x", true))},
	}
	ts, err := trace.ParseTraceState("vendor=value,other=1")
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	attrs := []attribute.KeyValue{
		attribute.String("http.request.method", "GET"),
		attribute.String("empty", ""),
		attribute.Bool("b", false),
		attribute.Int64("i", -7),
		attribute.Int64("zero", 0),
		attribute.Float64("f", 1.5),
		attribute.BoolSlice("bs", []bool{true, false}),
		attribute.Int64Slice("is", []int64{1, -2, 1 << 40}),
		attribute.Float64Slice("fs", []float64{0.25}),
		attribute.StringSlice("ss", []string{"a", "", "c"}),
		attribute.String("long", string(make([]byte, 300))), // a length of two bytes
	}
	stubs := make(tracetest.SpanStubs, n)
	for i := range stubs {
		var tid trace.TraceID
		var sid, pid trace.SpanID
		tid[0], tid[15] = byte(i), 1
		sid[0], sid[7] = byte(i), 2
		pid[7] = byte(i + 1)
		sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled})
		s := tracetest.SpanStub{
			Name:                 fmt.Sprintf("span %d", i),
			SpanContext:          sc,
			SpanKind:             trace.SpanKind(i % 6),
			StartTime:            t0.Add(time.Duration(i) * time.Millisecond),
			EndTime:              t0.Add(time.Duration(i+1) * time.Millisecond),
			Attributes:           attrs[:i%len(attrs)],
			Resource:             res1,
			InstrumentationScope: scopes[i%2],
		}
		switch i % 5 {
		case 0:
			s.Parent = trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: pid, Remote: true})
			s.SpanContext = sc.WithTraceState(ts)
			s.Status = sdktrace.Status{Code: codes.Error, Description: "upstream reset"}
		case 1:
			s.Parent = trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: pid})
			s.Status = sdktrace.Status{Code: codes.Ok}
			s.Events = []sdktrace.Event{{Name: "retry", Time: t0, Attributes: attrs[:3], DroppedAttributeCount: 1}}
			s.Links = []sdktrace.Link{{SpanContext: s.Parent, Attributes: attrs[3:5], DroppedAttributeCount: 2}}
			s.DroppedAttributes, s.DroppedEvents, s.DroppedLinks = 1, 2, 3
		case 2:
			s.Resource = res2
		}
		stubs[i] = s
	}
	return stubs.Snapshots()
}

// TestExporterMatchesOTLP: the hand-written exporter sends what
// otlptracegrpc sends for the same spans, in batches of every size class
// (one span; many, whose messages need multi-byte lengths), over the
// same connection one after another so that reused buffers are covered.
func TestExporterMatchesOTLP(t *testing.T) {
	rec, addr := startRecorder(t, 0)
	ctx := t.Context()
	ref, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(addr), otlptracegrpc.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ref.Shutdown(context.Background()) })
	ours, err := newExporter(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ours.Shutdown(context.Background()) })

	// Resources come out of otlptracegrpc in map order: sort both.
	sortRes := protocmp.SortRepeated(func(a, b *tracepb.ResourceSpans) bool {
		return a.GetResource().String() < b.GetResource().String()
	})
	for _, n := range []int{1, 2, 5, 200, 3} {
		spans := testSpans(t, n)
		if err := ref.ExportSpans(ctx, spans); err != nil {
			t.Fatal(err)
		}
		if err := ours.ExportSpans(ctx, spans); err != nil {
			t.Fatal(err)
		}
		got := rec.take()
		if len(got) != 2 {
			t.Fatalf("%d spans: collector got %d requests, want 2", n, len(got))
		}
		if d := cmp.Diff(got[0], got[1], protocmp.Transform(), sortRes); d != "" {
			t.Errorf("%d spans: request differs from otlptracegrpc's (-otlptracegrpc +ours):\n%s", n, d)
		}
	}
}

// TestExporterRetries: an Unavailable collector is retried with backoff
// until it accepts.
func TestExporterRetries(t *testing.T) {
	rec, addr := startRecorder(t, 2)
	e, err := newExporter(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Shutdown(context.Background()) })
	if err := e.ExportSpans(t.Context(), testSpans(t, 3)); err != nil {
		t.Fatal(err)
	}
	if got := rec.take(); len(got) != 1 || rec.calls != 3 {
		t.Errorf("%d requests kept after %d calls, want 1 after 3", len(got), rec.calls)
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
	t.Cleanup(func() { _ = e.Shutdown(context.Background()) })
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	err = e.ExportSpans(ctx, testSpans(t, 1))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("export to nothing: %v, want a deadline error", err)
	}
}

// BenchmarkExport compares the two exporters on 512 proxy-like spans
// (what one full batch holds), the receiver in the same process.
func BenchmarkExport(b *testing.B) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, &discard{})
	go func() { _ = srv.Serve(lis) }()
	b.Cleanup(srv.Stop)
	addr := lis.Addr().String()
	spans := proxySpans(b, 512)

	b.Run("otlptracegrpc", func(b *testing.B) {
		e, err := otlptracegrpc.New(b.Context(), otlptracegrpc.WithEndpoint(addr), otlptracegrpc.WithInsecure())
		if err != nil {
			b.Fatal(err)
		}
		defer e.Shutdown(context.Background())
		benchExport(b, e, spans)
	})
	b.Run("protowire", func(b *testing.B) {
		e, err := newExporter(addr)
		if err != nil {
			b.Fatal(err)
		}
		defer e.Shutdown(context.Background())
		benchExport(b, e, spans)
	})
}

func benchExport(b *testing.B, e sdktrace.SpanExporter, spans []sdktrace.ReadOnlySpan) {
	b.ReportAllocs()
	for b.Loop() {
		if err := e.ExportSpans(b.Context(), spans); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(spans)), "ns/span")
}

// discard accepts every request without decoding it beyond gRPC's codec.
type discard struct {
	coltracepb.UnimplementedTraceServiceServer
}

func (*discard) Export(context.Context, *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

// proxySpans are spans as a Tracer records them for an h1 request.
func proxySpans(b *testing.B, n int) []sdktrace.ReadOnlySpan {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec),
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", "bench"))))
	tr := &Tracer{provider: tp, tracer: tp.Tracer("bench"), b3: b3.New()}
	h := hdrMap{}
	for range n {
		clear(h)
		tr.StartSpan(h, Start{Kind: Client, Method: "POST", Scheme: "http", Authority: "reviews.default.mesh:9080",
			Path: "/bench", Route: "reviews"}).Finish(End{Status: 200, GRPCStatus: -1, Upstream: "127.0.0.1:9080"})
	}
	return rec.Ended()
}

type hdrMap map[string]string

func (h hdrMap) Get(k string) string { return h[k] }
func (h hdrMap) Set(k, v string)     { h[k] = v }
func (h hdrMap) Del(k string)        { delete(h, k) }
