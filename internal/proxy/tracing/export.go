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
// export waits, the queue fills and further spans are
// dropped, which is the intended back-pressure of a slow collector.
const (
	exportTimeout = 10 * time.Second
	retryBase     = 500 * time.Millisecond
	retryMax      = 5 * time.Second
)

// exporter sends encoded ExportTraceServiceRequests (record.go) to the
// collector over gRPC, handing the bytes to grpc-go as they are (rawCodec)
// rather than as a proto message to marshal. Calls are serialized by the
// queue's goroutine.
type exporter struct {
	conn *grpc.ClientConn
}

func newExporter(target string, opts ...grpc.DialOption) (*exporter, error) {
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, err
	}
	return &exporter{conn: conn}, nil
}

// send sends req (n spans), retrying retryable failures with backoff
// until exportTimeout or ctx ends.
func (e *exporter) send(ctx context.Context, req mem.Buffer, n int) error {
	ctx, cancel := context.WithTimeout(ctx, exportTimeout)
	defer cancel()
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
		if !retryable(err) || ctx.Err() != nil {
			return fmt.Errorf("tracing: export %d spans: %w", n, err)
		}
		t := time.NewTimer(bo.Next())
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("tracing: export %d spans: %w (last attempt: %w)", n, context.Cause(ctx), err)
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

// shutdown closes the connection; the queue has flushed before.
func (e *exporter) shutdown() error {
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
	// by the queue when the call returns, so the buffer is reused only
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

func unixNano(t time.Time) uint64 { return uint64(max(0, t.UnixNano())) }

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
