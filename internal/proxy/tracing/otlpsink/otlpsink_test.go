package otlpsink

import (
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// export sends n spans of one trace to the receiver at addr over real gRPC.
func export(t *testing.T, addr string, n int) {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	spans := make([]*tracepb.Span, n)
	for i := range spans {
		spans[i] = &tracepb.Span{
			TraceId: []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
			SpanId:  []byte{0, 0, 0, 0, 0, 0, 0, byte(i + 1)},
			Name:    "GET",
			Kind:    tracepb.Span_SPAN_KIND_SERVER,
		}
	}
	req := &coltracepb.ExportTraceServiceRequest{ResourceSpans: []*tracepb.ResourceSpans{{
		Resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{{
			Key: "service.name", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: "web.default"}},
		}}},
		ScopeSpans: []*tracepb.ScopeSpans{{Spans: spans}},
	}}}
	if _, err := coltracepb.NewTraceServiceClient(cc).Export(t.Context(), req); err != nil {
		t.Fatalf("Export: %v", err)
	}
}

func TestReceiverKeepsSpans(t *testing.T) {
	r, err := Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	export(t, r.Addr(), 3)
	spans, err := r.WaitSpans(3, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Received(); got != 3 {
		t.Errorf("Received() = %d, want 3", got)
	}
	if s := spans[0]; s.Service != "web.default" || s.Name != "GET" || s.SpanID != "0000000000000001" {
		t.Errorf("first span = %q %q %q, want web.default GET 0000000000000001", s.Service, s.Name, s.SpanID)
	}
}

// TestCountingReceiver: a counting receiver counts every span and keeps
// none, so a long benchmark does not grow it.
func TestCountingReceiver(t *testing.T) {
	r, err := StartCounting()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	export(t, r.Addr(), 5)
	export(t, r.Addr(), 2)
	if got := r.Received(); got != 7 {
		t.Errorf("Received() = %d, want 7", got)
	}
	if got := r.Spans(); len(got) != 0 {
		t.Errorf("Spans() holds %d spans, want none", len(got))
	}
	r.Reset()
	if got := r.Received(); got != 0 {
		t.Errorf("Received() after Reset = %d, want 0", got)
	}
}

// TestCountingReceiverSDK: spans exported by the OpenTelemetry SDK's
// OTLP/gRPC exporter, as the proxy exports them, are all counted.
func TestCountingReceiverSDK(t *testing.T) {
	r, err := StartCounting()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	exp, err := otlptracegrpc.New(t.Context(), otlptracegrpc.WithEndpoint(r.Addr()), otlptracegrpc.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp))
	tr := tp.Tracer("otlpsink-test")
	for range 25 {
		_, sp := tr.Start(t.Context(), "op", trace.WithAttributes(attribute.String("http.request.method", "GET")))
		sp.End()
	}
	if err := tp.Shutdown(t.Context()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if got := r.Received(); got != 25 {
		t.Errorf("Received() = %d, want 25", got)
	}
}

func TestCountSpans(t *testing.T) {
	spans := func(n int) []*tracepb.Span {
		out := make([]*tracepb.Span, n)
		for i := range out {
			out[i] = &tracepb.Span{Name: "s", TraceId: make([]byte, 16), SpanId: []byte{1, 2, 3, 4, 5, 6, 7, byte(i)},
				Attributes: []*commonpb.KeyValue{{Key: "k", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: 7}}}}}
		}
		return out
	}
	req := &coltracepb.ExportTraceServiceRequest{ResourceSpans: []*tracepb.ResourceSpans{
		{Resource: &resourcepb.Resource{}, ScopeSpans: []*tracepb.ScopeSpans{{Spans: spans(1)}, {Spans: spans(3), SchemaUrl: "x"}}},
		{ScopeSpans: []*tracepb.ScopeSpans{{Scope: &commonpb.InstrumentationScope{Name: "n"}, Spans: spans(4)}}, SchemaUrl: "y"},
		{},
	}}
	b, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := countSpans(b); n != 8 || err != nil {
		t.Errorf("countSpans = %d, %v; want 8, nil", n, err)
	}
	if n, err := countSpans(nil); n != 0 || err != nil {
		t.Errorf("countSpans(empty) = %d, %v; want 0, nil", n, err)
	}
	if _, err := countSpans(b[:len(b)-3]); err == nil {
		t.Error("countSpans(truncated): no error")
	}
}
