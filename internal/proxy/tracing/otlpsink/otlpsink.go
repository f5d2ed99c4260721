// Package otlpsink is an OTLP/gRPC trace receiver for tests: it serves
// the OTLP trace service (go.opentelemetry.io/proto/otlp) on loopback,
// keeps the spans it receives, and lets a test wait for them; a counting
// Receiver (StartCounting) keeps none, for load benchmarks that export for
// long. It owns nothing the proxy runs; the tracing package's tests, the
// end-to-end tests and bench/cmd/meshbench use it in place of a collector.
package otlpsink

import (
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"sync"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
)

// MaxSpans bounds the spans a Receiver keeps; later ones are counted by
// Received but not kept, so a benchmark can export to it for long.
const MaxSpans = 1 << 16

// Span is one received span with the fields tests look at decoded.
type Span struct {
	Service       string // the resource's service.name
	Name          string
	Kind          tracepb.Span_SpanKind
	TraceID       string // lower-case hex
	SpanID        string
	ParentSpanID  string // "" for a root
	StatusCode    tracepb.Status_StatusCode
	StatusMessage string
	// Attrs holds string, int64, float64 and bool attributes as those Go
	// types and any other as its *commonpb.AnyValue.
	Attrs map[string]any
	Start time.Time
	End   time.Time
	Proto *tracepb.Span
}

// Receiver is an OTLP/gRPC trace receiver. Safe for concurrent use.
type Receiver struct {
	coltracepb.UnimplementedTraceServiceServer

	lis net.Listener
	srv *grpc.Server
	// countOnly: keep no span, only count them (StartCounting).
	countOnly bool

	mu       sync.Mutex
	spans    []Span
	received int
	changed  chan struct{} // closed and replaced whenever spans arrive
	blocked  chan struct{} // non-nil while Block holds exports
}

// Start serves a Receiver on 127.0.0.1 at a free port until Close.
func Start() (*Receiver, error) { return start(false) }

// StartCounting serves a Receiver that keeps no span and only counts them
// (Received): a load benchmark exporting every request's spans for minutes
// must neither grow the receiver's memory nor pay for decoding spans it
// never reads (it walks the request's encoding to the spans' boundaries,
// see countingCodec). Spans and WaitSpans see nothing from it.
func StartCounting() (*Receiver, error) { return start(true) }

func start(countOnly bool) (*Receiver, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("otlpsink: listen: %w", err)
	}
	var opts []grpc.ServerOption
	if countOnly {
		opts = append(opts, grpc.ForceServerCodecV2(newCountingCodec()))
	}
	r := &Receiver{lis: lis, srv: grpc.NewServer(opts...), countOnly: countOnly, changed: make(chan struct{})}
	coltracepb.RegisterTraceServiceServer(r.srv, r)
	go func() { _ = r.srv.Serve(lis) }()
	return r, nil
}

// Addr is the receiver's "127.0.0.1:port".
func (r *Receiver) Addr() string { return r.lis.Addr().String() }

// Close stops the server at once; exports in flight fail.
func (r *Receiver) Close() {
	r.mu.Lock()
	if r.blocked != nil {
		close(r.blocked)
		r.blocked = nil
	}
	r.mu.Unlock()
	r.srv.Stop()
}

// Block makes Export calls wait (until release, Close, or the caller's
// deadline) before they are accepted, as a stuck collector would.
func (r *Receiver) Block() (release func()) {
	ch := make(chan struct{})
	r.mu.Lock()
	r.blocked = ch
	r.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			r.mu.Lock()
			if r.blocked == ch {
				r.blocked = nil
				close(ch)
			}
			r.mu.Unlock()
		})
	}
}

// Export implements the OTLP trace service.
func (r *Receiver) Export(ctx context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	b := r.blocked
	r.mu.Unlock()
	if b != nil {
		select {
		case <-b:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	r.mu.Lock()
	full := r.countOnly || len(r.spans) >= MaxSpans
	r.mu.Unlock()
	if full {
		// Count without decoding: a benchmark exporting for long should
		// measure the exporter, not this receiver.
		n := 0
		for _, rs := range req.GetResourceSpans() {
			for _, ss := range rs.GetScopeSpans() {
				n += len(ss.GetSpans())
			}
		}
		r.mu.Lock()
		r.received += n
		r.mu.Unlock()
		return &coltracepb.ExportTraceServiceResponse{}, nil
	}
	var got []Span
	for _, rs := range req.GetResourceSpans() {
		svc := ""
		if v, ok := attrValue(rs.GetResource().GetAttributes(), "service.name").(string); ok {
			svc = v
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				got = append(got, decode(svc, sp))
			}
		}
	}
	r.mu.Lock()
	r.received += len(got)
	if room := MaxSpans - len(r.spans); room > 0 {
		r.spans = append(r.spans, got[:min(room, len(got))]...)
	}
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

// Spans returns a snapshot of the kept spans in arrival order.
func (r *Receiver) Spans() []Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Span(nil), r.spans...)
}

// Received counts every span received, kept or not.
func (r *Receiver) Received() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.received
}

// Reset forgets the spans received so far.
func (r *Receiver) Reset() {
	r.mu.Lock()
	r.spans, r.received = nil, 0
	r.mu.Unlock()
}

// WaitSpans waits until at least n spans are kept and returns them; after
// timeout it returns those it has and an error saying how many.
func (r *Receiver) WaitSpans(n int, timeout time.Duration) ([]Span, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		r.mu.Lock()
		have, ch := len(r.spans), r.changed
		r.mu.Unlock()
		if have >= n {
			return r.Spans(), nil
		}
		select {
		case <-ch:
		case <-t.C:
			return r.Spans(), fmt.Errorf("otlpsink: %d spans after %v, want %d", have, timeout, n)
		}
	}
}

// ByTrace groups spans by trace id.
func ByTrace(spans []Span) map[string][]Span {
	m := make(map[string][]Span)
	for _, s := range spans {
		m[s.TraceID] = append(m[s.TraceID], s)
	}
	return m
}

func decode(svc string, sp *tracepb.Span) Span {
	s := Span{
		Service:       svc,
		Name:          sp.GetName(),
		Kind:          sp.GetKind(),
		TraceID:       hex.EncodeToString(sp.GetTraceId()),
		SpanID:        hex.EncodeToString(sp.GetSpanId()),
		StatusCode:    sp.GetStatus().GetCode(),
		StatusMessage: sp.GetStatus().GetMessage(),
		Attrs:         make(map[string]any, len(sp.GetAttributes())),
		Start:         time.Unix(0, int64(sp.GetStartTimeUnixNano())),
		End:           time.Unix(0, int64(sp.GetEndTimeUnixNano())),
		Proto:         sp,
	}
	if p := sp.GetParentSpanId(); len(p) > 0 {
		s.ParentSpanID = hex.EncodeToString(p)
	}
	for _, kv := range sp.GetAttributes() {
		s.Attrs[kv.GetKey()] = value(kv.GetValue())
	}
	return s
}

func attrValue(kvs []*commonpb.KeyValue, key string) any {
	for _, kv := range kvs {
		if kv.GetKey() == key {
			return value(kv.GetValue())
		}
	}
	return nil
}

func value(v *commonpb.AnyValue) any {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_IntValue:
		return x.IntValue
	case *commonpb.AnyValue_DoubleValue:
		return x.DoubleValue
	case *commonpb.AnyValue_BoolValue:
		return x.BoolValue
	}
	return v
}
