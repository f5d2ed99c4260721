package tracing_test

import (
	"regexp"
	"testing"

	"verge.dev/verge/internal/proxy/tracing"
)

// validIn is the W3C version-00 traceparent grammar the proxy continues.
var validIn = regexp.MustCompile(`^00-([0-9a-f]{32})-([0-9a-f]{16})-0([0-3])$`)

// FuzzStartSpan feeds arbitrary trace context headers to StartSpan: it
// must never panic, always write a valid traceparent naming the span,
// leave no B3 header, and continue a valid incoming traceparent.
func FuzzStartSpan(f *testing.F) {
	f.Add("00-"+inTrace+"-"+inSpan+"-01", "a=b,c=d", "", "", "", "", "")
	f.Add("00-"+inTrace+"-"+inSpan+"-00", "", "", "", "", "", "")
	f.Add("01-"+inTrace+"-"+inSpan+"-09-extra", "", "", "", "", "", "")
	f.Add("", "", inTrace+"-"+inSpan+"-1-"+inSpan, "", "", "", "")
	f.Add("", "", "0", "", "", "", "")
	f.Add("", "", "", inTrace, inSpan, "1", "")
	f.Add("", "", "", "a3ce929d0e0e4736", inSpan, "", "1")
	f.Add("zz", "=", "-", "x", "y", "true", "2")

	tr := newTracer(f, newSink(f), "fuzz", 50)
	f.Fuzz(func(t *testing.T, tp, ts, b3, b3Trace, b3Span, b3Sampled, b3Flags string) {
		h := hdr{}
		for k, v := range map[string]string{"traceparent": tp, "tracestate": ts, "b3": b3,
			"x-b3-traceid": b3Trace, "x-b3-spanid": b3Span, "x-b3-sampled": b3Sampled, "x-b3-flags": b3Flags} {
			if v != "" {
				h[k] = v
			}
		}
		sp := tr.StartSpan(h, httpStart(tracing.Server))
		defer sp.Finish(tracing.End{Status: 200, GRPCStatus: -1})
		out := traceparentRE.FindStringSubmatch(h["traceparent"])
		if out == nil {
			t.Fatalf("output traceparent %q is not valid", h["traceparent"])
		}
		if out[1] == "00000000000000000000000000000000" || out[2] == "0000000000000000" {
			t.Fatalf("output traceparent %q has a zero id", h["traceparent"])
		}
		if out[1] != sp.TraceID() || out[2] != sp.SpanID() {
			t.Fatalf("output traceparent %q does not name the span %s/%s", h["traceparent"], sp.TraceID(), sp.SpanID())
		}
		if sampled := out[3] == "1" || out[3] == "3"; sampled != sp.Sampled() {
			t.Fatalf("output traceparent %q, span sampled=%v", h["traceparent"], sp.Sampled())
		}
		for _, k := range []string{"b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "x-b3-flags"} {
			if _, ok := h[k]; ok {
				t.Fatalf("B3 header %s left", k)
			}
		}
		if in := validIn.FindStringSubmatch(tp); in != nil && in[1] != "00000000000000000000000000000000" && in[2] != "0000000000000000" {
			if out[1] != in[1] {
				t.Fatalf("valid traceparent %q not continued: %q", tp, h["traceparent"])
			}
			if inSampled := in[3] == "1" || in[3] == "3"; inSampled != sp.Sampled() {
				t.Fatalf("traceparent %q: sampling decision not respected", tp)
			}
		}
	})
}
