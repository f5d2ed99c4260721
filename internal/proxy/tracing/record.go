package tracing

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// scopeName is the instrumentation scope of every span.
const scopeName = "verge.dev/verge/internal/proxy/tracing"

// limits bound the export queue.
type limits struct {
	// spans and bytes bound what waits for export; bytes stays under the
	// 4 MiB a gRPC server (a collector) accepts by default.
	spans, bytes int
	// batch spans, or timeout after the first, trigger an export.
	batch   int
	timeout time.Duration
}

// queueLimits are the SDK batch span processor's defaults (queue 2048,
// batch 512), with the short timeout this package always used so that
// traces show up within a second at low rates.
var queueLimits = limits{spans: 2048, bytes: 2 << 20, batch: 512, timeout: time.Second}

// status is a span's OTLP status.
type spanStatus struct {
	code uint64 // STATUS_CODE_UNSET (0), STATUS_CODE_ERROR (statusError)
	desc string
}

const statusError = 2

// queue holds finished spans, encoded as the spans field of one
// ScopeSpans, until its goroutine sends them in one
// ExportTraceServiceRequest.
type queue struct {
	exp     *exporter
	lim     limits
	res     []byte // the encoded ResourceSpans.resource field
	scope   []byte // the encoded ScopeSpans.scope field
	dropped atomic.Uint64

	mu     sync.Mutex
	buf    []byte
	n      int // spans in buf
	closed bool

	spare   []byte // the run goroutine's
	wake    chan struct{}
	flushes chan chan error
	ctx     context.Context // ends exports in flight at shutdown
	cancel  context.CancelFunc
	quit    chan struct{}
	done    chan struct{}
}

func newQueue(exp *exporter, serviceName string, lim limits) *queue {
	res := appendKeyValue(nil, 1, semconv.ServiceName(serviceName)) // Resource.attributes
	ctx, cancel := context.WithCancel(context.Background())
	q := &queue{
		exp:     exp,
		lim:     lim,
		res:     protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), res),
		scope:   protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), appendString(nil, 1, scopeName)),
		wake:    make(chan struct{}, 1),
		flushes: make(chan chan error),
		ctx:     ctx,
		cancel:  cancel,
		quit:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	go q.run()
	return q
}

// scratch recycles the buffers spans are encoded into before they are
// copied into the queue under its lock.
var scratch = sync.Pool{New: func() any {
	b := make([]byte, 0, 1024)
	return &b
}}

// add encodes a finished span into the queue, or drops it.
func (q *queue) add(s *Span, attrs []attribute.KeyValue, end time.Time, st spanStatus) {
	p := scratch.Get().(*[]byte)
	b := appendRecorded((*p)[:0], s, attrs, end, st)
	q.mu.Lock()
	if q.closed || q.n >= q.lim.spans || len(q.buf)+len(b) > q.lim.bytes {
		q.mu.Unlock()
		q.dropped.Add(1)
	} else {
		q.buf = append(q.buf, b...)
		q.n++
		n := q.n
		q.mu.Unlock()
		if n == 1 || n == q.lim.batch {
			select {
			case q.wake <- struct{}{}:
			default: // a wake-up is pending; run reads the count then
			}
		}
	}
	if cap(b) <= 64<<10 {
		*p = b
		scratch.Put(p)
	}
}

// run exports the queue when it holds a batch, a timeout after its first
// span, or when flushed, until shutdown.
func (q *queue) run() {
	defer close(q.done)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	armed := false
	var reported uint64
	for {
		var reply chan error
		select {
		case <-q.wake:
			q.mu.Lock()
			n := q.n
			q.mu.Unlock()
			if n < q.lim.batch {
				if n > 0 && !armed {
					timer.Reset(q.lim.timeout)
					armed = true
				}
				continue
			}
		case <-timer.C:
			armed = false
		case reply = <-q.flushes:
		case <-q.quit:
			return
		}
		if armed {
			timer.Stop()
			armed = false
		}
		err := q.export()
		if err != nil {
			otel.Handle(err)
		}
		if d := q.dropped.Load(); d != reported {
			otel.Handle(fmt.Errorf("tracing: %d spans dropped, the export queue was full", d-reported))
			reported = d
		}
		if reply != nil {
			reply <- err
		}
	}
}

// export sends everything queued in one request.
func (q *queue) export() error {
	q.mu.Lock()
	spans, n := q.buf, q.n
	q.buf, q.n = q.spare[:0], 0
	q.mu.Unlock()
	defer func() {
		if cap(spans) > q.lim.bytes/2 {
			spans = nil // a burst's buffer: let it go
		}
		q.spare = spans[:0]
	}()
	if n == 0 {
		return nil
	}
	req := q.request(spans)
	defer req.Free()
	return q.exp.send(q.ctx, req, n)
}

// request wraps encoded spans into an ExportTraceServiceRequest of one
// ResourceSpans with one ScopeSpans, what otlptracegrpc sends for the
// spans of one tracer. The caller frees the buffer.
func (q *queue) request(spans []byte) mem.Buffer {
	schema := appendString(nil, 3, semconv.SchemaURL) // ResourceSpans.schema_url
	ss := len(q.scope) + len(spans)
	rs := len(q.res) + 1 + protowire.SizeVarint(uint64(ss)) + ss + len(schema)
	bp := requestBufs.Get(0)
	b := (*bp)[:0]
	b = protowire.AppendTag(b, 1, protowire.BytesType) // resource_spans
	b = protowire.AppendVarint(b, uint64(rs))
	b = append(b, q.res...)
	b = protowire.AppendTag(b, 2, protowire.BytesType) // scope_spans
	b = protowire.AppendVarint(b, uint64(ss))
	b = append(b, q.scope...)
	b = append(b, spans...)
	b = append(b, schema...)
	*bp = b
	return mem.NewBuffer(bp, &requestBufs)
}

// flush exports what is queued and waits for the answer (bounded by ctx).
func (q *queue) flush(ctx context.Context) error {
	reply := make(chan error, 1)
	select {
	case q.flushes <- reply:
	case <-q.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// shutdown refuses further spans, exports the queued ones (bounded by
// ctx), ends an export still in flight, and closes the connection.
func (q *queue) shutdown(ctx context.Context) error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.closed = true
	q.mu.Unlock()
	err := q.flush(ctx)
	q.cancel()
	close(q.quit)
	<-q.done
	if cerr := q.exp.shutdown(); err == nil {
		err = cerr
	}
	return err
}

// appendRecorded writes s as ScopeSpans.spans (an
// opentelemetry.proto.trace.v1.Span), with the fields the SDK's span
// would have for it (no events, links or dropped counts: a proxy span
// has none).
func appendRecorded(b []byte, s *Span, attrs []attribute.KeyValue, end time.Time, st spanStatus) []byte {
	b, m := openMsg(b, 2)
	tid, sid := s.sc.TraceID(), s.sc.SpanID()
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendBytes(b, tid[:])
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendBytes(b, sid[:])
	if ts := s.sc.TraceState(); ts.Len() > 0 {
		b = appendString(b, 3, ts.String())
	}
	if s.parent.IsValid() {
		b = protowire.AppendTag(b, 4, protowire.BytesType)
		b = protowire.AppendBytes(b, s.parent[:])
	}
	b = appendString(b, 5, s.name)
	b = appendVarint(b, 6, uint64(spanKindOf(s.kind)))
	b = appendFixed64(b, 7, unixNano(s.start))
	b = appendFixed64(b, 8, unixNano(end))
	for _, kv := range attrs {
		b = appendKeyValue(b, 9, kv)
	}
	// Status is always present, as otlptracegrpc sends it.
	var sm int
	b, sm = openMsg(b, 15)
	b = appendString(b, 2, st.desc)
	b = appendVarint(b, 3, st.code)
	b = closeMsg(b, sm)
	b = appendFixed32(b, 16, spanFlags(s.sc.TraceFlags(), s.remote))
	return closeMsg(b, m)
}

// spanFlags are the W3C trace flags and the "knows whether the parent is
// remote" bit, with the "is remote" bit when it is.
func spanFlags(tf trace.TraceFlags, remoteParent bool) uint32 {
	f := uint32(tf) | 0x100 // SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
	if remoteParent {
		f |= 0x200 // SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
	}
	return f
}
