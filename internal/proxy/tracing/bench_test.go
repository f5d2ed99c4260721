package tracing_test

import (
	"context"
	"testing"

	"verge.dev/verge/internal/proxy/tracing"
)

// benchHeaders holds the trace fields in place, like the h1 engine's
// header slots, so the benchmarks measure tracing, not a header map.
type benchHeaders struct{ traceparent, tracestate string }

func (h *benchHeaders) Get(k string) string {
	switch k {
	case "traceparent":
		return h.traceparent
	case "tracestate":
		return h.tracestate
	}
	return ""
}

func (h *benchHeaders) Set(k, v string) {
	switch k {
	case "traceparent":
		h.traceparent = v
	case "tracestate":
		h.tracestate = v
	}
}

func (h *benchHeaders) Del(k string) { h.Set(k, "") }

// benchSpan is one request's whole tracing work: extract, start with
// every attribute, inject, finish. Export runs in the Tracer's own
// goroutine against a real OTLP receiver (spans beyond its queue are
// dropped, as in production under overload).
//
// With blocked, the receiver holds every export, so after the first
// batch and a full queue spans are dropped at the queue: that measures
// the request path alone.
func benchSpan(b *testing.B, percent float64, incoming string, blocked bool) {
	sink := newSink(b)
	var release func()
	if blocked {
		release = sink.Block()
	}
	tr := newTracer(b, sink, "bench", percent)
	if blocked {
		b.Cleanup(release) // before the tracer's Shutdown, which waits for exports
	}
	st := httpStart(tracing.Server)
	var h benchHeaders
	b.ReportAllocs()
	for b.Loop() {
		h.traceparent = incoming
		sp := tr.StartSpan(&h, st)
		sp.Finish(tracing.End{Status: 200, GRPCStatus: -1, BytesIn: 100, BytesOut: 2000})
	}
}

func BenchmarkStartSpanUnsampled(b *testing.B) {
	b.Run("root", func(b *testing.B) { benchSpan(b, 0, "", false) })
	b.Run("continued", func(b *testing.B) { benchSpan(b, 100, "00-"+inTrace+"-"+inSpan+"-00", false) })
}

func BenchmarkStartSpanSampled(b *testing.B) {
	b.Run("root", func(b *testing.B) { benchSpan(b, 100, "", false) })
	b.Run("continued", func(b *testing.B) { benchSpan(b, 0, "00-"+inTrace+"-"+inSpan+"-01", false) })
	b.Run("request-path", func(b *testing.B) { benchSpan(b, 0, "00-"+inTrace+"-"+inSpan+"-01", true) })
	b.Run("all-exported", benchExported)
}

// benchExported flushes every 512 spans so that none is dropped: ns/op is
// the whole cost of a sampled span, its export included, and an upper
// bound because the in-process receiver's decoding is counted too.
func benchExported(b *testing.B) {
	sink := newSink(b)
	tr := newTracer(b, sink, "bench", 100)
	st := httpStart(tracing.Server)
	var h benchHeaders
	n := 0
	b.ReportAllocs()
	for b.Loop() {
		h.traceparent = ""
		tr.StartSpan(&h, st).Finish(tracing.End{Status: 200, GRPCStatus: -1})
		if n++; n%512 == 0 {
			if err := tr.Flush(context.Background()); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := tr.Flush(context.Background()); err != nil {
		b.Fatal(err)
	}
	if got := sink.Received(); got != n {
		b.Fatalf("received %d of %d spans", got, n)
	}
}
