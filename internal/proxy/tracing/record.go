package tracing

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
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

// statusError is OTLP's STATUS_CODE_ERROR.
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
func (q *queue) add(s *Span, en *ending) {
	p := scratch.Get().(*[]byte)
	b := appendRecorded((*p)[:0], s, en)
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
func appendRecorded(b []byte, s *Span, en *ending) []byte {
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
	b = appendFixed64(b, 8, unixNano(en.time))
	// Attributes in the order the SDK kept them: the start ones, then the
	// end ones.
	b = appendStartAttrs(b, &s.st, s.t.recommended)
	if en.grpcStatus >= 0 {
		b = appendAttrInt(b, keyGRPCStatus, int64(en.grpcStatus))
	}
	if en.httpStatus > 0 {
		b = appendAttrInt(b, keyStatusCode, int64(en.httpStatus))
	}
	if en.errType != "" {
		b = appendAttr(b, keyErrorType, en.errType)
	}
	if en.peer != "" {
		b = appendPeerAttrs(b, en.peer)
	}
	// Status is always present, as otlptracegrpc sends it.
	var sm int
	b, sm = openMsg(b, 15)
	b = appendString(b, 2, en.desc)
	b = appendVarint(b, 3, en.code)
	b = closeMsg(b, sm)
	b = appendFixed32(b, 16, spanFlags(s.sc.TraceFlags(), s.remote))
	return closeMsg(b, m)
}

// Attribute keys, taken from the semconv package where it names them so
// that they are the names the SDK's helpers write.
var (
	keyMethod         = string(semconv.HTTPRequestMethodKey)
	keyMethodOriginal = string(semconv.HTTPRequestMethodOriginalKey)
	keyURLScheme      = string(semconv.URLSchemeKey)
	keyURLPath        = string(semconv.URLPathKey)
	keyURLFull        = string(semconv.URLFullKey)
	keyUserAgent      = string(semconv.UserAgentOriginalKey)
	keyRoute          = string(semconv.HTTPRouteKey)
	keyServerAddress  = string(semconv.ServerAddressKey)
	keyServerPort     = string(semconv.ServerPortKey)
	keyPeerAddress    = string(semconv.NetworkPeerAddressKey)
	keyPeerPort       = string(semconv.NetworkPeerPortKey)
	keyStatusCode     = string(semconv.HTTPResponseStatusCodeKey)
	keyErrorType      = string(semconv.ErrorTypeKey)
)

// The RPC conventions' names of v1.37 (see the package comment).
const (
	keyRPCSystem  = "rpc.system"
	keyRPCService = "rpc.service"
	keyRPCMethod  = "rpc.method"
	keyGRPCStatus = "rpc.grpc.status_code"
)

// appendStartAttrs writes the attributes known when the span started
// (see the package comment for the choice of attributes).
func appendStartAttrs(b []byte, s *Start, recommended bool) []byte {
	if s.GRPC {
		b = appendAttr(b, keyRPCSystem, "grpc")
		if svc, m, ok := splitGRPCPath(s.Path); ok {
			b = appendAttr(b, keyRPCService, svc)
			b = appendAttr(b, keyRPCMethod, m)
		}
	} else {
		if knownMethods[s.Method] {
			b = appendAttr(b, keyMethod, s.Method)
		} else {
			b = appendAttr(b, keyMethod, "_OTHER")
			b = appendAttr(b, keyMethodOriginal, s.Method)
		}
		path, _, _ := strings.Cut(s.Path, "?")
		if s.Scheme != "" {
			b = appendAttr(b, keyURLScheme, s.Scheme)
		}
		if path != "" {
			b = appendAttr(b, keyURLPath, path)
		}
		if s.Kind == Client && s.Scheme != "" && s.Authority != "" {
			b = appendAttr(b, keyURLFull, s.Scheme, "://", s.Authority, path)
		}
		if recommended && s.UserAgent != "" {
			b = appendAttr(b, keyUserAgent, s.UserAgent)
		}
		if s.Route != "" {
			b = appendAttr(b, keyRoute, s.Route)
		}
	}
	if s.Authority != "" {
		host, port := splitAuthority(s.Authority, s.Scheme)
		b = appendAttr(b, keyServerAddress, host)
		if port > 0 {
			b = appendAttrInt(b, keyServerPort, int64(port))
		}
	}
	if recommended && s.Kind != Client && s.Peer != "" {
		b = appendPeerAttrs(b, s.Peer)
	}
	return b
}

// appendPeerAttrs writes network.peer.address and .port of "host:port"
// (the address alone when it is not one).
func appendPeerAttrs(b []byte, addr string) []byte {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return appendAttr(b, keyPeerAddress, addr)
	}
	b = appendAttr(b, keyPeerAddress, host)
	if p, err := strconv.Atoi(port); err == nil && p > 0 && p < 65536 {
		b = appendAttrInt(b, keyPeerPort, int64(p))
	}
	return b
}

// appendAttr writes Span.attributes (a KeyValue with a string AnyValue)
// whose value is the concatenation of parts, without concatenating them.
// The lengths are known up front, so nothing is moved afterwards.
func appendAttr(b []byte, key string, parts ...string) []byte {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	b = appendAttrHead(b, key, 1+protowire.SizeVarint(uint64(n))+n)
	b = protowire.AppendTag(b, 1, protowire.BytesType) // AnyValue.string_value
	b = protowire.AppendVarint(b, uint64(n))
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// appendAttrInt writes Span.attributes with an int AnyValue.
func appendAttrInt(b []byte, key string, v int64) []byte {
	b = appendAttrHead(b, key, 1+protowire.SizeVarint(uint64(v)))
	b = protowire.AppendTag(b, 3, protowire.VarintType) // AnyValue.int_value
	return protowire.AppendVarint(b, uint64(v))
}

// appendAttrHead writes a KeyValue's tag, length and key, and the tag and
// length of its AnyValue, whose encoding is val bytes long.
func appendAttrHead(b []byte, key string, val int) []byte {
	kv := 1 + protowire.SizeVarint(uint64(len(key))) + len(key) + 1 + protowire.SizeVarint(uint64(val)) + val
	b = protowire.AppendTag(b, 9, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(kv))
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, key)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	return protowire.AppendVarint(b, uint64(val))
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
