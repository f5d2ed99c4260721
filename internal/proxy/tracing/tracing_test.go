package tracing_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"verge.dev/verge/internal/proxy/tracing"
	"verge.dev/verge/internal/proxy/tracing/otlpsink"
)

// wait bounds every wait for spans; generous because CI machines are
// slow, and never a pass/fail criterion on its own.
const wait = 30 * time.Second

const (
	inTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	inSpan  = "00f067aa0ba902b7"
)

var traceparentRE = regexp.MustCompile(`^00-([0-9a-f]{32})-([0-9a-f]{16})-0([0-3])$`)

// hdr is a Headers over a map with lower-case keys, the shape the data
// path's own header storage presents.
type hdr map[string]string

func (h hdr) Get(k string) string { return h[k] }
func (h hdr) Set(k, v string)     { h[k] = v }
func (h hdr) Del(k string)        { delete(h, k) }

func clone(h hdr) hdr {
	c := hdr{}
	for k, v := range h {
		c[k] = v
	}
	return c
}

func newSink(t testing.TB) *otlpsink.Receiver {
	t.Helper()
	r, err := otlpsink.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

func newTracer(t testing.TB, sink *otlpsink.Receiver, service string, percent float64) *tracing.Tracer {
	t.Helper()
	return newTracerWith(t, tracing.Options{ServiceName: service, Collector: sink.Addr(), SamplePercent: percent})
}

func newTracerWith(t testing.TB, o tracing.Options) *tracing.Tracer {
	t.Helper()
	tr, err := tracing.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		_ = tr.Shutdown(ctx)
	})
	return tr
}

func flush(t *testing.T, tr *tracing.Tracer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := tr.Flush(ctx); err != nil {
		t.Fatalf("Flush: %v", err)
	}
}

// parseTP checks that h carries a valid traceparent and returns its parts.
func parseTP(t *testing.T, h hdr) (traceID, spanID string, sampled bool) {
	t.Helper()
	m := traceparentRE.FindStringSubmatch(h["traceparent"])
	if m == nil {
		t.Fatalf("traceparent %q is not valid", h["traceparent"])
	}
	return m[1], m[2], m[3] == "1" || m[3] == "3"
}

func httpStart(k tracing.Kind) tracing.Start {
	return tracing.Start{Kind: k, Method: "GET", Scheme: "http", Authority: "reviews.default.mesh:9080",
		Path: "/reviews/1?token=secret", Peer: "127.0.0.9:40000", UserAgent: "curl/8", Route: "reviews-route"}
}

func TestServerSpanContinuesTraceparent(t *testing.T) {
	sink := newSink(t)
	// Sampled only because the parent is.
	tr := newTracerWith(t, tracing.Options{ServiceName: "reviews", Collector: sink.Addr(), RecommendedAttributes: true})
	h := hdr{"traceparent": "00-" + inTrace + "-" + inSpan + "-01", "tracestate": "vendor=opaque"}
	sp := tr.StartSpan(h, httpStart(tracing.Server))
	if !sp.Sampled() || sp.TraceID() != inTrace {
		t.Fatalf("span sampled=%v trace=%s, want sampled in trace %s", sp.Sampled(), sp.TraceID(), inTrace)
	}
	tid, sid, sampled := parseTP(t, h)
	if tid != inTrace || sid != sp.SpanID() || !sampled {
		t.Errorf("outgoing traceparent %q, want trace %s span %s sampled", h["traceparent"], inTrace, sp.SpanID())
	}
	if h["tracestate"] != "vendor=opaque" {
		t.Errorf("tracestate = %q, want it carried on", h["tracestate"])
	}
	sp.Finish(tracing.End{Status: 200, GRPCStatus: -1, BytesIn: 10, BytesOut: 20})
	flush(t, tr)
	got, err := sink.WaitSpans(1, wait)
	if err != nil {
		t.Fatal(err)
	}
	s := got[0]
	if s.TraceID != inTrace || s.ParentSpanID != inSpan || s.SpanID != sp.SpanID() {
		t.Errorf("exported trace %s parent %s span %s; want %s %s %s", s.TraceID, s.ParentSpanID, s.SpanID, inTrace, inSpan, sp.SpanID())
	}
	if s.Kind != tracepb.Span_SPAN_KIND_SERVER || s.Name != "GET" || s.Service != "reviews" {
		t.Errorf("kind %v name %q service %q; want SERVER, GET, reviews", s.Kind, s.Name, s.Service)
	}
	want := map[string]any{
		"http.request.method":       "GET",
		"url.scheme":                "http",
		"url.path":                  "/reviews/1",
		"server.address":            "reviews.default.mesh",
		"server.port":               int64(9080),
		"user_agent.original":       "curl/8",
		"network.peer.address":      "127.0.0.9",
		"network.peer.port":         int64(40000),
		"http.route":                "reviews-route",
		"http.response.status_code": int64(200),
	}
	checkAttrs(t, s, want)
	for k, v := range s.Attrs {
		if str, ok := v.(string); ok && strings.Contains(str, "secret") {
			t.Errorf("attribute %s = %q records the query string", k, str)
		}
	}
	if s.StatusCode == tracepb.Status_STATUS_CODE_ERROR {
		t.Errorf("status ERROR for a 200")
	}
}

func checkAttrs(t *testing.T, s otlpsink.Span, want map[string]any) {
	t.Helper()
	for k, v := range want {
		if s.Attrs[k] != v {
			t.Errorf("span %q attribute %s = %#v, want %#v", s.Name, k, s.Attrs[k], v)
		}
	}
}

func TestRootSampling(t *testing.T) {
	t.Run("100", func(t *testing.T) {
		sink := newSink(t)
		tr := newTracer(t, sink, "a", 100)
		h := hdr{}
		sp := tr.StartSpan(h, httpStart(tracing.Server))
		tid, sid, sampled := parseTP(t, h)
		if !sp.Sampled() || !sampled || tid != sp.TraceID() || sid != sp.SpanID() {
			t.Fatalf("root: Sampled()=%v, traceparent %q; want sampled with the span's ids", sp.Sampled(), h["traceparent"])
		}
		sp.Finish(tracing.End{Status: 204, GRPCStatus: -1})
		flush(t, tr)
		got, err := sink.WaitSpans(1, wait)
		if err != nil {
			t.Fatal(err)
		}
		if got[0].ParentSpanID != "" || got[0].TraceID != tid {
			t.Errorf("root exported with parent %q trace %s", got[0].ParentSpanID, got[0].TraceID)
		}
	})
	t.Run("0", func(t *testing.T) {
		sink := newSink(t)
		tr := newTracer(t, sink, "a", 0)
		h := hdr{}
		sp := tr.StartSpan(h, httpStart(tracing.Server))
		tid, sid, sampled := parseTP(t, h)
		if sp.Sampled() || sampled {
			t.Fatalf("0%%: span sampled=%v, traceparent %q; want unsampled", sp.Sampled(), h["traceparent"])
		}
		if tid != sp.TraceID() || sid != sp.SpanID() || tid == strings.Repeat("0", 32) {
			t.Errorf("unsampled traceparent %q does not carry the span's context %s/%s", h["traceparent"], sp.TraceID(), sp.SpanID())
		}
		sp.Finish(tracing.End{Status: 200, GRPCStatus: -1})
		// The next hop continues the unsampled trace with the same id.
		next := tr.StartSpan(h, httpStart(tracing.Client))
		if next.Sampled() || next.TraceID() != tid {
			t.Errorf("next hop sampled=%v trace %s, want unsampled in %s", next.Sampled(), next.TraceID(), tid)
		}
		next.Finish(tracing.End{Status: 200, GRPCStatus: -1})
		flush(t, tr)
		if n := sink.Received(); n != 0 {
			t.Errorf("exported %d spans at 0%%", n)
		}
	})
	t.Run("incoming unsampled at 100", func(t *testing.T) {
		sink := newSink(t)
		tr := newTracer(t, sink, "a", 100)
		h := hdr{"traceparent": "00-" + inTrace + "-" + inSpan + "-00"}
		sp := tr.StartSpan(h, httpStart(tracing.Server))
		tid, _, sampled := parseTP(t, h)
		if sp.Sampled() || sampled || tid != inTrace {
			t.Errorf("incoming unsampled decision not respected: span sampled=%v, out %q", sp.Sampled(), h["traceparent"])
		}
		sp.Finish(tracing.End{Status: 200, GRPCStatus: -1})
		flush(t, tr)
		if n := sink.Received(); n != 0 {
			t.Errorf("exported %d spans of an unsampled trace", n)
		}
	})
}

func TestB3Continued(t *testing.T) {
	const b3Trace64 = "a3ce929d0e0e4736"
	cases := []struct {
		name      string
		in        hdr
		wantTrace string
		sampled   bool
	}{
		{"single", hdr{"b3": inTrace + "-" + inSpan + "-1"}, inTrace, true},
		{"single with parent", hdr{"b3": inTrace + "-" + inSpan + "-1-" + "1111111111111111"}, inTrace, true},
		{"single debug", hdr{"b3": inTrace + "-" + inSpan + "-d"}, inTrace, true},
		{"single unsampled", hdr{"b3": inTrace + "-" + inSpan + "-0"}, inTrace, false},
		{"multi", hdr{"x-b3-traceid": inTrace, "x-b3-spanid": inSpan, "x-b3-sampled": "1", "x-b3-parentspanid": "1111111111111111"}, inTrace, true},
		{"multi 64-bit trace id", hdr{"x-b3-traceid": b3Trace64, "x-b3-spanid": inSpan, "x-b3-sampled": "1"}, strings.Repeat("0", 16) + b3Trace64, true},
		{"multi flags debug", hdr{"x-b3-traceid": inTrace, "x-b3-spanid": inSpan, "x-b3-flags": "1"}, inTrace, true},
	}
	sink := newSink(t)
	tr := newTracer(t, sink, "b3", 0)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sink.Reset()
			h := clone(c.in)
			sp := tr.StartSpan(h, httpStart(tracing.Server))
			tid, sid, sampled := parseTP(t, h)
			if tid != c.wantTrace || sid != sp.SpanID() || sampled != c.sampled || sp.Sampled() != c.sampled {
				t.Errorf("traceparent %q, span sampled=%v; want trace %s sampled=%v", h["traceparent"], sp.Sampled(), c.wantTrace, c.sampled)
			}
			for k := range h {
				if k == "b3" || strings.HasPrefix(k, "x-b3-") {
					t.Errorf("B3 header %s left on the request", k)
				}
			}
			sp.Finish(tracing.End{Status: 200, GRPCStatus: -1})
			flush(t, tr)
			if !c.sampled {
				if n := sink.Received(); n != 0 {
					t.Errorf("exported %d spans of an unsampled B3 trace", n)
				}
				return
			}
			got, err := sink.WaitSpans(1, wait)
			if err != nil {
				t.Fatal(err)
			}
			if got[0].TraceID != c.wantTrace || got[0].ParentSpanID != inSpan {
				t.Errorf("exported trace %s parent %s, want %s %s", got[0].TraceID, got[0].ParentSpanID, c.wantTrace, inSpan)
			}
		})
	}
}

func TestTraceparentWinsOverB3(t *testing.T) {
	sink := newSink(t)
	tr := newTracer(t, sink, "a", 0)
	h := hdr{"traceparent": "00-" + inTrace + "-" + inSpan + "-01", "b3": strings.Repeat("1", 32) + "-" + strings.Repeat("2", 16) + "-1"}
	sp := tr.StartSpan(h, httpStart(tracing.Server))
	if sp.TraceID() != inTrace {
		t.Errorf("trace %s, want the traceparent's %s", sp.TraceID(), inTrace)
	}
	sp.Finish(tracing.End{GRPCStatus: -1})
}

func TestInvalidTraceparentStartsRoot(t *testing.T) {
	sink := newSink(t)
	tr := newTracer(t, sink, "a", 100)
	for _, tp := range []string{
		"00-" + strings.ToUpper(inTrace) + "-" + inSpan + "-01",
		"00-" + strings.Repeat("0", 32) + "-" + inSpan + "-01",
		"00-" + inTrace + "-" + strings.Repeat("0", 16) + "-01",
		"ff-" + inTrace + "-" + inSpan + "-01",
		"garbage",
	} {
		h := hdr{"traceparent": tp, "tracestate": "stale=1"}
		sp := tr.StartSpan(h, httpStart(tracing.Server))
		tid, _, sampled := parseTP(t, h)
		if tid == inTrace || !sampled || tid != sp.TraceID() {
			t.Errorf("traceparent %q: out %q, want a new sampled root", tp, h["traceparent"])
		}
		if _, ok := h["tracestate"]; ok {
			t.Errorf("traceparent %q: tracestate of the discarded context kept", tp)
		}
		sp.Finish(tracing.End{GRPCStatus: -1})
	}
}

// TestClientSpanChildOfServerSpan follows one request through a proxy
// pair: the inbound proxy's server span, the application forwarding the
// headers it received, the outbound proxy's client span.
func TestClientSpanChildOfServerSpan(t *testing.T) {
	sink := newSink(t)
	inbound := newTracer(t, sink, "productpage", 100)
	outbound := newTracerWith(t, tracing.Options{ServiceName: "productpage", Collector: sink.Addr(), SamplePercent: 100, RecommendedAttributes: true})

	h := hdr{"traceparent": "00-" + inTrace + "-" + inSpan + "-01"}
	srv := inbound.StartSpan(h, httpStart(tracing.Server))
	forwarded := clone(h) // the application copies the trace headers onto its call
	cs := httpStart(tracing.Client)
	cs.Authority, cs.Path = "reviews.default.mesh:9080", "/reviews/7"
	cli := outbound.StartSpan(forwarded, cs)
	if cli.TraceID() != inTrace {
		t.Fatalf("client span in trace %s, want %s", cli.TraceID(), inTrace)
	}
	if _, sid, _ := parseTP(t, forwarded); sid != cli.SpanID() {
		t.Errorf("upstream traceparent names span %s, want the client span %s", sid, cli.SpanID())
	}
	cli.Finish(tracing.End{Status: 503, GRPCStatus: -1, Upstream: "127.0.0.20:9080", BytesOut: 3, BytesIn: 4})
	srv.Finish(tracing.End{Status: 503, GRPCStatus: -1})
	flush(t, outbound)
	flush(t, inbound)
	got, err := sink.WaitSpans(2, wait)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]otlpsink.Span{}
	for _, s := range got {
		byID[s.SpanID] = s
	}
	c, s := byID[cli.SpanID()], byID[srv.SpanID()]
	if c.ParentSpanID != srv.SpanID() || s.ParentSpanID != inSpan {
		t.Errorf("client parent %s (want server %s), server parent %s (want %s)", c.ParentSpanID, srv.SpanID(), s.ParentSpanID, inSpan)
	}
	if c.Kind != tracepb.Span_SPAN_KIND_CLIENT || c.Name != "GET" {
		t.Errorf("client span kind %v name %q", c.Kind, c.Name)
	}
	checkAttrs(t, c, map[string]any{
		"url.full":                  "http://reviews.default.mesh:9080/reviews/7",
		"server.address":            "reviews.default.mesh",
		"server.port":               int64(9080),
		"network.peer.address":      "127.0.0.20",
		"network.peer.port":         int64(9080),
		"http.response.status_code": int64(503),
		"error.type":                "503",
	})
	if c.StatusCode != tracepb.Status_STATUS_CODE_ERROR || s.StatusCode != tracepb.Status_STATUS_CODE_ERROR {
		t.Errorf("503: client status %v server status %v, want ERROR for both", c.StatusCode, s.StatusCode)
	}
}

func TestStatusAndAttributes(t *testing.T) {
	grpcStart := func(k tracing.Kind) tracing.Start {
		return tracing.Start{Kind: k, Method: "POST", Scheme: "http", Authority: "echo:50051",
			Path: "/verge.test.Echo/Say", GRPC: true, Peer: "127.0.0.5:1234"}
	}
	odd := httpStart(tracing.Server)
	odd.Method = "BREW"
	cases := []struct {
		name      string
		start     tracing.Start
		end       tracing.End
		wantName  string
		wantError bool
		attrs     map[string]any
		absent    []string
	}{
		{name: "server 404 is not an error", start: httpStart(tracing.Server), end: tracing.End{Status: 404, GRPCStatus: -1}, wantName: "GET"},
		{name: "client 404 is an error", start: httpStart(tracing.Client), end: tracing.End{Status: 404, GRPCStatus: -1}, wantName: "GET", wantError: true,
			attrs: map[string]any{"error.type": "404"}},
		{name: "server 500", start: httpStart(tracing.Server), end: tracing.End{Status: 500, GRPCStatus: -1}, wantName: "GET", wantError: true},
		{name: "error without status", start: httpStart(tracing.Client), end: tracing.End{GRPCStatus: -1, Err: context.DeadlineExceeded}, wantName: "GET", wantError: true,
			attrs: map[string]any{"error.type": "timeout"}, absent: []string{"http.response.status_code"}},
		{name: "unknown method", start: odd, end: tracing.End{Status: 200, GRPCStatus: -1}, wantName: "HTTP",
			attrs: map[string]any{"http.request.method": "_OTHER", "http.request.method_original": "BREW"}},
		{name: "grpc server ok", start: grpcStart(tracing.Server), end: tracing.End{Status: 200, GRPCStatus: 0}, wantName: "verge.test.Echo/Say",
			attrs: map[string]any{"rpc.system": "grpc", "rpc.service": "verge.test.Echo", "rpc.method": "Say", "rpc.grpc.status_code": int64(0),
				"server.address": "echo", "server.port": int64(50051)},
			absent: []string{"http.request.method", "url.path", "network.peer.address"}},
		{name: "grpc server NOT_FOUND is not an error", start: grpcStart(tracing.Server), end: tracing.End{Status: 200, GRPCStatus: 5}, wantName: "verge.test.Echo/Say"},
		{name: "grpc client NOT_FOUND is an error", start: grpcStart(tracing.Client), end: tracing.End{Status: 200, GRPCStatus: 5}, wantName: "verge.test.Echo/Say", wantError: true,
			attrs: map[string]any{"error.type": "NOT_FOUND"}},
		{name: "grpc server UNAVAILABLE", start: grpcStart(tracing.Server), end: tracing.End{Status: 200, GRPCStatus: 14}, wantName: "verge.test.Echo/Say", wantError: true,
			attrs: map[string]any{"rpc.grpc.status_code": int64(14)}},
	}
	sink := newSink(t)
	tr := newTracer(t, sink, "attrs", 100)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sink.Reset()
			sp := tr.StartSpan(hdr{}, c.start)
			sp.Finish(c.end)
			flush(t, tr)
			got, err := sink.WaitSpans(1, wait)
			if err != nil {
				t.Fatal(err)
			}
			s := got[0]
			if s.Name != c.wantName {
				t.Errorf("name %q, want %q", s.Name, c.wantName)
			}
			if isErr := s.StatusCode == tracepb.Status_STATUS_CODE_ERROR; isErr != c.wantError {
				t.Errorf("status %v, want error=%v", s.StatusCode, c.wantError)
			}
			checkAttrs(t, s, c.attrs)
			for _, k := range c.absent {
				if _, ok := s.Attrs[k]; ok {
					t.Errorf("attribute %s present, want absent", k)
				}
			}
		})
	}
}

// TestRecommendedAttributesOptIn: without RecommendedAttributes a span
// carries no user_agent.original or network.peer.*, on either side.
func TestRecommendedAttributesOptIn(t *testing.T) {
	sink := newSink(t)
	tr := newTracer(t, sink, "lean", 100)
	if tr.Recommended() {
		t.Fatal("Recommended() = true by default")
	}
	for _, k := range []tracing.Kind{tracing.Server, tracing.Client} {
		tr.StartSpan(hdr{}, httpStart(k)).Finish(tracing.End{Status: 200, GRPCStatus: -1, Upstream: "127.0.0.20:9080"})
	}
	flush(t, tr)
	got, err := sink.WaitSpans(2, wait)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range got {
		for _, k := range []string{"user_agent.original", "network.peer.address", "network.peer.port"} {
			if v, ok := s.Attrs[k]; ok {
				t.Errorf("%v span: %s = %v, want absent by default", s.Kind, k, v)
			}
		}
		if s.Attrs["url.path"] != "/reviews/1" || s.Attrs["http.response.status_code"] != int64(200) {
			t.Errorf("%v span lacks required attributes: %v", s.Kind, s.Attrs)
		}
	}
}

func TestTimestamps(t *testing.T) {
	sink := newSink(t)
	tr := newTracer(t, sink, "a", 100)
	start := time.Unix(1700000000, 123456789)
	st := httpStart(tracing.Server)
	st.Time = start
	sp := tr.StartSpan(hdr{}, st)
	sp.Finish(tracing.End{Time: start.Add(1500 * time.Microsecond), Status: 200, GRPCStatus: -1})
	sp.Finish(tracing.End{Status: 500, GRPCStatus: -1}) // a second Finish is ignored
	flush(t, tr)
	got, err := sink.WaitSpans(1, wait)
	if err != nil {
		t.Fatal(err)
	}
	if !got[0].Start.Equal(start) || got[0].End.Sub(got[0].Start) != 1500*time.Microsecond {
		t.Errorf("start %v end %v, want %v and 1.5ms later", got[0].Start, got[0].End, start)
	}
	if n := sink.Received(); n != 1 || got[0].Attrs["http.response.status_code"] != int64(200) {
		t.Errorf("%d spans, status %v: the second Finish was not ignored", n, got[0].Attrs["http.response.status_code"])
	}
}

func TestShutdownFlushes(t *testing.T) {
	sink := newSink(t)
	tr, err := tracing.New(tracing.Options{ServiceName: "a", Collector: sink.Addr(), SamplePercent: 100})
	if err != nil {
		t.Fatal(err)
	}
	const n = 25
	for range n {
		tr.StartSpan(hdr{}, httpStart(tracing.Server)).Finish(tracing.End{Status: 200, GRPCStatus: -1})
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := tr.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	// Shutdown returns after the last export was answered: no waiting.
	if got := sink.Received(); got != n {
		t.Errorf("received %d spans after Shutdown, want %d", got, n)
	}
}

// TestStuckCollectorDropsSpans: while the collector does not answer,
// requests go on and spans beyond the bounded queue are dropped.
func TestStuckCollectorDropsSpans(t *testing.T) {
	sink := newSink(t)
	release := sink.Block()
	tr, err := tracing.New(tracing.Options{ServiceName: "a", Collector: sink.Addr(), SamplePercent: 100})
	if err != nil {
		t.Fatal(err)
	}
	const n = 10000 // well above the 2048-span queue plus a 512-span batch in flight
	for range n {
		tr.StartSpan(hdr{}, httpStart(tracing.Server)).Finish(tracing.End{Status: 200, GRPCStatus: -1})
	}
	release()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := tr.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	got := sink.Received()
	if got == 0 || got >= n {
		t.Errorf("received %d of %d spans, want some but not all (the queue is bounded)", got, n)
	}
	t.Logf("received %d of %d spans", got, n)
}

func TestDial(t *testing.T) {
	sink := newSink(t)
	var dials atomic.Int32
	tr, err := tracing.New(tracing.Options{
		ServiceName: "a", Collector: "collector.invalid:4317", SamplePercent: 100,
		Dial: func(ctx context.Context, addr string) (net.Conn, error) {
			if addr != "collector.invalid:4317" {
				return nil, errors.New("unexpected address " + addr)
			}
			dials.Add(1)
			var d net.Dialer
			return d.DialContext(ctx, "tcp", sink.Addr())
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	tr.StartSpan(hdr{}, httpStart(tracing.Server)).Finish(tracing.End{Status: 200, GRPCStatus: -1})
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := tr.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if dials.Load() == 0 || sink.Received() != 1 {
		t.Errorf("%d dials, %d spans; want the span exported through Dial", dials.Load(), sink.Received())
	}
}

func TestHTTPHeaders(t *testing.T) {
	sink := newSink(t)
	tr := newTracer(t, sink, "a", 0)
	h := http.Header{}
	h.Set("Traceparent", "00-"+inTrace+"-"+inSpan+"-01")
	h.Set("X-B3-Traceid", strings.Repeat("1", 32))
	h.Set("X-B3-Spanid", strings.Repeat("2", 16))
	h.Set("B3", "0")
	sp := tr.StartSpan(tracing.HTTPHeaders(h), httpStart(tracing.Server))
	if sp.TraceID() != inTrace {
		t.Errorf("trace %s, want %s", sp.TraceID(), inTrace)
	}
	if want := "00-" + inTrace + "-" + sp.SpanID() + "-01"; h.Get("traceparent") != want {
		t.Errorf("traceparent %q, want %q", h.Get("traceparent"), want)
	}
	if len(h) != 1 {
		t.Errorf("headers left: %v, want only Traceparent", h)
	}
	sp.Finish(tracing.End{GRPCStatus: -1})
}

func TestNewValidates(t *testing.T) {
	cases := []struct {
		o    tracing.Options
		want string
	}{
		{tracing.Options{Collector: "127.0.0.1:4317"}, "ServiceName"},
		{tracing.Options{ServiceName: "a"}, "Collector"},
		{tracing.Options{ServiceName: "a", Collector: "nohostport"}, "Collector"},
		{tracing.Options{ServiceName: "a", Collector: "127.0.0.1:4317", SamplePercent: 101}, "SamplePercent"},
		{tracing.Options{ServiceName: "a", Collector: "127.0.0.1:4317", SamplePercent: -1}, "SamplePercent"},
	}
	for _, c := range cases {
		_, err := tracing.New(c.o)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New(%+v) = %v, want an error naming %s", c.o, err, c.want)
		}
	}
}

func TestNilSpan(t *testing.T) {
	var s *tracing.Span
	if s.Sampled() || s.TraceID() != "" || s.SpanID() != "" {
		t.Error("nil span is not a no-op")
	}
	s.Finish(tracing.End{})
}
