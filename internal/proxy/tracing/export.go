package tracing

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	grpccodes "google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	"verge.dev/verge/internal/proxy/backoff"
)

// exportMethod is the OTLP trace service's only method.
const exportMethod = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

// Export bounds: one export (its retries included) gives up after
// exportTimeout; retries back off from retryBase up to retryMax. While an
// export waits, the batch processor's queue fills and further spans are
// dropped, which is the intended back-pressure of a slow collector.
const (
	exportTimeout = 10 * time.Second
	retryBase     = 500 * time.Millisecond
	retryMax      = 5 * time.Second
)

// exporter is an sdktrace.SpanExporter that encodes the batch as an OTLP
// ExportTraceServiceRequest with protowire straight from the SDK's
// ReadOnlySpans into a reused buffer, and sends those bytes over gRPC. It
// replaces otlptracegrpc, whose tracetransform builds a tree of proto
// structs (three allocations per attribute) only to marshal it: see the
// package comment for the measurements. What goes on the wire is what
// otlptracegrpc sends for the same spans (TestExporterMatchesOTLP).
type exporter struct {
	conn *grpc.ClientConn

	// mu serializes exports (the batch processor already does) so that
	// one encoder and its buffers serve all of them.
	mu  sync.Mutex
	enc encoder
}

func newExporter(target string, opts ...grpc.DialOption) (*exporter, error) {
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, err
	}
	return &exporter{conn: conn}, nil
}

// ExportSpans sends spans to the collector in one request, retrying
// retryable failures with backoff until exportTimeout or ctx ends.
func (e *exporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	if len(spans) == 0 {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, exportTimeout)
	defer cancel()

	req := e.enc.request(spans)
	defer req.Free()
	bo := backoff.Backoff{Base: retryBase, Max: retryMax}
	for {
		var resp coltracepb.ExportTraceServiceResponse
		err := e.conn.Invoke(ctx, exportMethod, rawMessage{req}, &resp, grpc.ForceCodecV2(rawCodec{}))
		if err == nil {
			if ps := resp.GetPartialSuccess(); ps != nil && (ps.GetRejectedSpans() > 0 || ps.GetErrorMessage() != "") {
				otel.Handle(fmt.Errorf("tracing: collector rejected %d spans: %s", ps.GetRejectedSpans(), ps.GetErrorMessage()))
			}
			return nil
		}
		if !retryable(err) {
			return fmt.Errorf("tracing: export %d spans: %w", len(spans), err)
		}
		t := time.NewTimer(bo.Next())
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("tracing: export %d spans: %w (last attempt: %w)", len(spans), context.Cause(ctx), err)
		case <-t.C:
		}
	}
}

// retryable is the OTLP specification's list of retryable gRPC codes
// (RESOURCE_EXHAUSTED only counts with RetryInfo, which is not read here).
func retryable(err error) bool {
	switch status.Code(err) {
	case grpccodes.Canceled, grpccodes.DeadlineExceeded, grpccodes.Aborted,
		grpccodes.OutOfRange, grpccodes.Unavailable, grpccodes.DataLoss:
		return true
	}
	return false
}

// Shutdown closes the connection; the batch processor has flushed before.
func (e *exporter) Shutdown(context.Context) error {
	err := e.conn.Close()
	if errors.Is(err, grpc.ErrClientConnClosing) {
		return nil
	}
	return err
}

// rawMessage is an encoded request; rawCodec hands its bytes to gRPC and
// leaves responses to the proto codec.
type rawMessage struct{ b mem.Buffer }

type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(rawMessage)
	if !ok {
		return nil, fmt.Errorf("tracing: raw codec cannot marshal %T", v)
	}
	// gRPC frees its reference once the bytes are written; ours is freed
	// by ExportSpans when the call returns, so the buffer is reused only
	// after both are done with it.
	m.b.Ref()
	return mem.BufferSlice{m.b}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return encoding.GetCodecV2(protocodec.Name).Unmarshal(data, v)
}

// Name is "proto": the request is a protobuf message like any other.
func (rawCodec) Name() string { return protocodec.Name }

// bufPool recycles request buffers; a buffer returns to it when both gRPC
// and the exporter have released it.
type bufPool struct{ p sync.Pool }

func (p *bufPool) Get(n int) *[]byte {
	if b, ok := p.p.Get().(*[]byte); ok && cap(*b) >= n {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n)
	return &b
}

func (p *bufPool) Put(b *[]byte) { p.p.Put(b) }

var requestBufs bufPool

// encoder writes ExportTraceServiceRequests. Not safe for concurrent use.
type encoder struct {
	groups []spanGroup
	// res caches the encoded Resource of the last resource seen: a
	// provider has one, so it is encoded once.
	res     *resource.Resource
	resBody []byte
}

// spanGroup is the spans of one resource and scope, in batch order.
type spanGroup struct {
	res   *resource.Resource
	rkey  attribute.Distinct
	scope instrumentation.Scope
	spans []sdktrace.ReadOnlySpan
	done  bool // written (request)
}

// request encodes spans grouped by resource and then by scope, as
// otlptracegrpc does. The caller frees the returned buffer.
func (e *encoder) request(spans []sdktrace.ReadOnlySpan) mem.Buffer {
	e.group(spans)
	bp := requestBufs.Get(0)
	b := (*bp)[:0]
	for i := range e.groups {
		g := &e.groups[i]
		if g.done {
			continue
		}
		// ExportTraceServiceRequest.resource_spans = 1; the groups of one
		// resource go into one ResourceSpans, in the order first seen.
		var rs int
		b, rs = openMsg(b, 1)
		if g.res != nil {
			b = e.appendResource(b, g.res)
		}
		for j := i; j < len(e.groups); j++ {
			if o := &e.groups[j]; !o.done && o.rkey == g.rkey {
				b = appendScopeSpans(b, o)
				o.done = true
			}
		}
		if g.res != nil {
			b = appendString(b, 3, g.res.SchemaURL())
		}
		b = closeMsg(b, rs)
	}
	for i := range e.groups {
		clear(e.groups[i].spans) // drop the references to finished spans
		e.groups[i] = spanGroup{spans: e.groups[i].spans[:0]}
	}
	e.groups = e.groups[:0]
	*bp = b
	return mem.NewBuffer(bp, &requestBufs)
}

// group sorts spans into e.groups by resource and scope, keeping each
// group's spans in batch order; a batch has one group in practice.
func (e *encoder) group(spans []sdktrace.ReadOnlySpan) {
next:
	for _, sd := range spans {
		if sd == nil {
			continue
		}
		res, scope := sd.Resource(), sd.InstrumentationScope()
		var rkey attribute.Distinct
		if res != nil {
			rkey = res.Equivalent()
		}
		for i := range e.groups {
			if g := &e.groups[i]; g.rkey == rkey && g.scope == scope {
				g.spans = append(g.spans, sd)
				continue next
			}
		}
		var reuse []sdktrace.ReadOnlySpan // a previous batch's slice
		if n := len(e.groups); n < cap(e.groups) {
			reuse = e.groups[:n+1][n].spans
		}
		e.groups = append(e.groups, spanGroup{res: res, rkey: rkey, scope: scope, spans: append(reuse, sd)})
	}
}

func (e *encoder) appendResource(b []byte, r *resource.Resource) []byte {
	if r != e.res {
		e.res = r
		e.resBody = e.resBody[:0]
		for it := r.Iter(); it.Next(); {
			e.resBody = appendKeyValue(e.resBody, 1, it.Attribute())
		}
	}
	// ResourceSpans.resource = 1
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendBytes(b, e.resBody)
	return b
}

func appendScopeSpans(b []byte, g *spanGroup) []byte {
	// ResourceSpans.scope_spans = 2
	b, ss := openMsg(b, 2)
	if g.scope != (instrumentation.Scope{}) {
		var sc int
		b, sc = openMsg(b, 1)
		b = appendString(b, 1, g.scope.Name)
		b = appendString(b, 2, g.scope.Version)
		for it := g.scope.Attributes.Iter(); it.Next(); {
			b = appendKeyValue(b, 3, it.Attribute())
		}
		b = closeMsg(b, sc)
	}
	for _, sd := range g.spans {
		b = appendSpan(b, 2, sd)
	}
	b = appendString(b, 3, g.scope.SchemaURL)
	return closeMsg(b, ss)
}

// appendSpan writes opentelemetry.proto.trace.v1.Span.
func appendSpan(b []byte, num protowire.Number, sd sdktrace.ReadOnlySpan) []byte {
	b, m := openMsg(b, num)
	sc := sd.SpanContext()
	tid, sid := sc.TraceID(), sc.SpanID()
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendBytes(b, tid[:])
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendBytes(b, sid[:])
	if ts := sc.TraceState(); ts.Len() > 0 {
		b = appendString(b, 3, ts.String())
	}
	parent := sd.Parent()
	if psid := parent.SpanID(); psid.IsValid() {
		b = protowire.AppendTag(b, 4, protowire.BytesType)
		b = protowire.AppendBytes(b, psid[:])
	}
	b = appendString(b, 5, sd.Name())
	b = appendVarint(b, 6, uint64(spanKind(sd.SpanKind())))
	b = appendFixed64(b, 7, unixNano(sd.StartTime()))
	b = appendFixed64(b, 8, unixNano(sd.EndTime()))
	for _, kv := range sd.Attributes() {
		b = appendKeyValue(b, 9, kv)
	}
	b = appendVarint(b, 10, clampUint32(sd.DroppedAttributes()))
	for _, ev := range sd.Events() {
		var em int
		b, em = openMsg(b, 11)
		b = appendFixed64(b, 1, unixNano(ev.Time))
		b = appendString(b, 2, ev.Name)
		for _, kv := range ev.Attributes {
			b = appendKeyValue(b, 3, kv)
		}
		b = appendVarint(b, 4, clampUint32(ev.DroppedAttributeCount))
		b = closeMsg(b, em)
	}
	b = appendVarint(b, 12, clampUint32(sd.DroppedEvents()))
	for _, l := range sd.Links() {
		var lm int
		b, lm = openMsg(b, 13)
		ltid, lsid := l.SpanContext.TraceID(), l.SpanContext.SpanID()
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendBytes(b, ltid[:])
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendBytes(b, lsid[:])
		for _, kv := range l.Attributes {
			b = appendKeyValue(b, 4, kv)
		}
		b = appendVarint(b, 5, clampUint32(l.DroppedAttributeCount))
		b = appendFixed32(b, 6, spanFlags(l.SpanContext.TraceFlags(), l.SpanContext))
		b = closeMsg(b, lm)
	}
	b = appendVarint(b, 14, clampUint32(sd.DroppedLinks()))
	// Status is always present, as otlptracegrpc sends it.
	st := sd.Status()
	var sm int
	b, sm = openMsg(b, 15)
	b = appendString(b, 2, st.Description)
	var code uint64 // STATUS_CODE_UNSET
	switch st.Code {
	case codes.Ok:
		code = 1
	case codes.Error:
		code = 2
	}
	b = appendVarint(b, 3, code)
	b = closeMsg(b, sm)
	b = appendFixed32(b, 16, spanFlags(sc.TraceFlags(), parent))
	return closeMsg(b, m)
}

// spanFlags are the W3C trace flags and the "knows whether the parent is
// remote" bit, with the "is remote" bit when it is.
func spanFlags(tf trace.TraceFlags, parent trace.SpanContext) uint32 {
	f := uint32(tf) | 0x100 // SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
	if parent.IsRemote() {
		f |= 0x200 // SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
	}
	return f
}

func spanKind(k trace.SpanKind) int {
	switch k {
	case trace.SpanKindInternal, trace.SpanKindServer, trace.SpanKindClient,
		trace.SpanKindProducer, trace.SpanKindConsumer:
		return int(k) // the OTLP enum has the API's numbering
	}
	return 0
}

func unixNano(t time.Time) uint64 { return uint64(max(0, t.UnixNano())) }

func clampUint32(v int) uint64 {
	// In int64 so that it also compiles where int is 32 bits (GOARM=7).
	return uint64(min(max(int64(v), 0), math.MaxUint32))
}

// appendKeyValue writes a common.v1.KeyValue as field num.
func appendKeyValue(b []byte, num protowire.Number, kv attribute.KeyValue) []byte {
	b, m := openMsg(b, num)
	b = appendString(b, 1, string(kv.Key))
	b = appendAnyValue(b, 2, kv.Value)
	return closeMsg(b, m)
}

// appendAnyValue writes a common.v1.AnyValue. Its members are a oneof,
// so even zero values are written.
func appendAnyValue(b []byte, num protowire.Number, v attribute.Value) []byte {
	b, m := openMsg(b, num)
	switch v.Type() {
	case attribute.STRING:
		b = appendOneofString(b, 1, v.AsString())
	case attribute.BOOL:
		b = protowire.AppendTag(b, 2, protowire.VarintType)
		b = protowire.AppendVarint(b, protowire.EncodeBool(v.AsBool()))
	case attribute.INT64:
		b = protowire.AppendTag(b, 3, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(v.AsInt64()))
	case attribute.FLOAT64:
		b = protowire.AppendTag(b, 4, protowire.Fixed64Type)
		b = protowire.AppendFixed64(b, math.Float64bits(v.AsFloat64()))
	case attribute.BYTESLICE:
		b = protowire.AppendTag(b, 7, protowire.BytesType)
		b = protowire.AppendBytes(b, v.AsByteSlice())
	case attribute.BOOLSLICE:
		b = appendArray(b, v.AsBoolSlice(), attribute.BoolValue)
	case attribute.INT64SLICE:
		b = appendArray(b, v.AsInt64Slice(), attribute.Int64Value)
	case attribute.FLOAT64SLICE:
		b = appendArray(b, v.AsFloat64Slice(), attribute.Float64Value)
	case attribute.STRINGSLICE:
		b = appendArray(b, v.AsStringSlice(), attribute.StringValue)
	case attribute.SLICE:
		b = appendArray(b, v.AsSlice(), func(v attribute.Value) attribute.Value { return v })
	case attribute.MAP:
		var l int
		b, l = openMsg(b, 6) // kvlist_value
		for _, kv := range v.AsMap() {
			b = appendKeyValue(b, 1, kv)
		}
		b = closeMsg(b, l)
	case attribute.EMPTY:
	default:
		b = appendOneofString(b, 1, "INVALID")
	}
	return closeMsg(b, m)
}

// appendArray writes an ArrayValue (AnyValue.array_value = 5).
func appendArray[T any](b []byte, vs []T, value func(T) attribute.Value) []byte {
	b, m := openMsg(b, 5)
	for _, v := range vs {
		b = appendAnyValue(b, 1, value(v))
	}
	return closeMsg(b, m)
}

// openMsg starts an embedded message as field num, reserving one byte for
// its length; closeMsg fills the length in, moving the message when it
// needs more bytes. Most messages (attributes) fit in one, and a move is
// cheaper than sizing every message before writing it.
func openMsg(b []byte, num protowire.Number) ([]byte, int) {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	b = append(b, 0)
	return b, len(b)
}

func closeMsg(b []byte, start int) []byte {
	n := len(b) - start
	if n < 0x80 {
		b[start-1] = byte(n)
		return b
	}
	extra := protowire.SizeVarint(uint64(n)) - 1
	b = append(b, make([]byte, extra)...)
	copy(b[start+extra:], b[start:start+n])
	protowire.AppendVarint(b[:start-1], uint64(n))
	return b
}

// appendString, appendVarint, appendFixed* write a proto3 scalar field,
// nothing for its zero value.
func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	return appendOneofString(b, num, s)
}

func appendOneofString(b []byte, num protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendVarint(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func appendFixed64(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.Fixed64Type)
	return protowire.AppendFixed64(b, v)
}

func appendFixed32(b []byte, num protowire.Number, v uint32) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.Fixed32Type)
	return protowire.AppendFixed32(b, v)
}
