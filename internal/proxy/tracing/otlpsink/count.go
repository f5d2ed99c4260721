package otlpsink

import (
	"fmt"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// countingCodec is the gRPC codec of a counting Receiver. An export request
// is only walked as far as its spans' boundaries, and arrives at Export as
// one ResourceSpans holding as many nil spans as the request had: a
// benchmark at 100% sampling sends tens of thousands of spans a second to a
// receiver sharing its cores, and decoding them would charge the proxies'
// tracing with the receiver's work. Everything else (the response) is
// plain protobuf.
type countingCodec struct{ encoding.CodecV2 }

func newCountingCodec() countingCodec {
	return countingCodec{encoding.GetCodecV2(proto.Name)}
}

func (c countingCodec) Unmarshal(data mem.BufferSlice, v any) error {
	req, ok := v.(*coltracepb.ExportTraceServiceRequest)
	if !ok {
		return c.CodecV2.Unmarshal(data, v)
	}
	var b []byte
	if len(data) == 1 {
		b = data[0].ReadOnlyData()
	} else {
		b = data.Materialize()
	}
	n, err := countSpans(b)
	if err != nil {
		return fmt.Errorf("otlpsink: export request: %w", err)
	}
	req.ResourceSpans = []*tracepb.ResourceSpans{{ScopeSpans: []*tracepb.ScopeSpans{{Spans: make([]*tracepb.Span, n)}}}}
	return nil
}

// Field numbers of the OTLP trace messages on the path to a span.
const (
	fieldRequestResourceSpans = 1 // ExportTraceServiceRequest.resource_spans
	fieldResourceScopeSpans   = 2 // ResourceSpans.scope_spans
	fieldScopeSpans           = 2 // ScopeSpans.spans
)

// countSpans counts the spans of an encoded ExportTraceServiceRequest
// without decoding them.
func countSpans(b []byte) (int, error) {
	n := 0
	err := eachField(b, fieldRequestResourceSpans, func(rs []byte) error {
		return eachField(rs, fieldResourceScopeSpans, func(ss []byte) error {
			return eachField(ss, fieldScopeSpans, func([]byte) error {
				n++
				return nil
			})
		})
	})
	return n, err
}

// eachField calls fn with the contents of every length-delimited field
// number num of the message b, and skips the other fields.
func eachField(b []byte, num protowire.Number, fn func([]byte) error) error {
	for len(b) > 0 {
		n, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return protowire.ParseError(l)
		}
		b = b[l:]
		if n == num && typ == protowire.BytesType {
			v, l := protowire.ConsumeBytes(b)
			if l < 0 {
				return protowire.ParseError(l)
			}
			if err := fn(v); err != nil {
				return err
			}
			b = b[l:]
			continue
		}
		l = protowire.ConsumeFieldValue(n, typ, b)
		if l < 0 {
			return protowire.ParseError(l)
		}
		b = b[l:]
	}
	return nil
}
