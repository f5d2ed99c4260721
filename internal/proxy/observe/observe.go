// Package observe owns what a proxy records about each request and TCP
// connection it carries: the golden Prometheus metrics, the per-edge
// counters it reports to the control plane (telemetry.Report), tap
// sampling, a bounded sample of recent errors and the JSON access log.
// The data path calls Observer.Request or Observer.TCP once per request or
// connection, after it ended; nothing here blocks it or allocates in steady
// state. It does not send reports (the proxy's agent POSTs what Report
// returns and calls Commit), trace, or decide which requests are logged
// (the caller sets Request.Log).
//
// Data flow of one Request call:
//
//	Edge ──(cached per Edge)──► edgeState: Prometheus handles per status
//	                            class and gRPC code, edge counters (atomics)
//	taps (atomic pointer) ──► tap events (bounded, rate limited per tap)
//	telemetry.Failed ──► recent errors (bounded ring, rate limited)
//	Request.Log ──► line formatted on the caller's goroutine ──► bounded
//	                buffer ──► one writer goroutine (batched writes)
package observe

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"verge.dev/verge/internal/telemetry"
)

// Options configure an Observer.
type Options struct {
	// Registry receives the golden metrics; nil keeps them unregistered
	// (edge stats, taps and errors still work).
	Registry *prometheus.Registry
	// Proxy is the node id; Service ("NAME.NS" of the local workload's
	// service, "" when unknown), Zone its zone label.
	Proxy   string
	Service string
	Zone    string
	// Workload ("namespace/name") and AdminAddress are copied into every
	// Report.
	Workload     string
	AdminAddress string
	// MaxErrors bounds Report.Errors per report (default 20).
	MaxErrors int
}

// Peer names one side of an exchange with bounded-cardinality values.
type Peer struct {
	// Service is "NAME.NS", or "unknown".
	Service   string
	Namespace string
	// Identity is the SPIFFE ID (bounded by service accounts), "" if none.
	Identity string
	Zone     string
}

// Edge is the label set of a request or connection, resolved once by the
// caller where it can (per listener and route), so that Request does not
// rebuild it. Treat as immutable after first use, and keep the pointer:
// the Observer caches its resolved metric handles in the Edge. Copying an
// Edge is safe (the copy resolves its own handles on first use).
type Edge struct {
	Direction   string // telemetry.Inbound or telemetry.Outbound
	Protocol    string // "http", "grpc" or "tcp"
	Source      Peer
	Destination Peer
	// Route is the route name ("" when unrouted).
	Route string

	// cache holds the *edgeRef of the Observer that last saw this Edge.
	// atomic.Value rather than atomic.Pointer so that go vet's copylocks
	// check lets callers copy Edge templates before first use.
	cache atomic.Value
}

// Request is one finished HTTP or gRPC request. Its strings need only be
// valid during the Request call: what is kept (tap and error events) is
// copied, so the caller may pass strings that alias reused buffers.
type Request struct {
	Edge  *Edge
	Start time.Time
	// Duration is from the first byte of the request to the last byte of
	// the response.
	Duration time.Duration
	// Status is the HTTP status the client was sent; 0: none.
	Status int
	// GRPCStatus is the grpc-status (-1: not gRPC or none seen).
	GRPCStatus int
	BytesIn    int64 // request body bytes received
	BytesOut   int64 // response body bytes sent
	Retries    int
	// Flags are Envoy-style response flags ("UF", "UH", "URX", "RL", "UT",
	// "DC", comma separated), "" when none.
	Flags     string
	Method    string
	Authority string
	Path      string
	UserAgent string
	RequestID string
	// Upstream is the endpoint address that answered ("" when none).
	Upstream string
	TraceID  string
	SpanID   string
	// Log, when set, receives the access log line.
	Log *AccessLogger
}

// Conn is one finished TCP connection. As for Request, its strings need
// only be valid during the call.
type Conn struct {
	Edge     *Edge
	Start    time.Time
	Duration time.Duration
	BytesIn  int64 // from the downstream
	BytesOut int64 // to the downstream
	Upstream string
	// Failed: no upstream connection was made.
	Failed bool
	Flags  string
	Log    *AccessLogger
}

// Observer records requests and connections. Safe for concurrent use; every
// method but Report and Commit is cheap enough for the request path.
type Observer struct {
	opts    Options
	metrics *metrics

	// mu guards states and stats, the tables behind the per-Edge caches;
	// it is taken only when an Edge is seen for the first time and by
	// Report.
	mu     sync.Mutex
	states map[labelKey]*edgeState
	stats  map[telemetry.EdgeKey]*edgeCounters

	taps   atomic.Pointer[[]*activeTap]
	events eventBuffers

	// reportMu serialises Report and Commit; it guards the committed
	// baselines in edgeCounters and start.
	reportMu sync.Mutex
	start    time.Time
	now      func() time.Time
}

// New returns an Observer registering its metrics in o.Registry. It panics
// if the registry already holds metrics of the same names (a second
// Observer on one registry is a programming error).
func New(o Options) *Observer {
	if o.MaxErrors <= 0 {
		o.MaxErrors = 20
	}
	ob := &Observer{
		opts:    o,
		metrics: newMetrics(o.Registry),
		states:  make(map[labelKey]*edgeState),
		stats:   make(map[telemetry.EdgeKey]*edgeCounters),
		now:     time.Now,
	}
	ob.events.init(o.MaxErrors)
	ob.start = ob.now()
	return ob
}

// Request records one finished request; r.Edge must be set. It does not
// block, does not keep r, and does not allocate once r.Edge has been seen
// (tap and error samples excepted, which are rate limited).
func (o *Observer) Request(r *Request) {
	st := o.edgeState(r.Edge)
	class := statusClass(r.Status)
	st.requests(class, grpcSlot(r.GRPCStatus)).Inc()
	st.duration(class).Observe(r.Duration.Seconds())
	b := st.byteCounters()
	if r.BytesIn > 0 {
		b.in.Add(float64(r.BytesIn))
	}
	if r.BytesOut > 0 {
		b.out.Add(float64(r.BytesOut))
	}
	failed := telemetry.Failed(r.Status, r.GRPCStatus)
	st.stats.add(failed, r.Duration, r.BytesIn, r.BytesOut)
	if o.taps.Load() != nil {
		o.tapRequest(r)
	}
	if failed {
		o.events.recordError(func() telemetry.TapEvent { return requestEvent(o.opts.Proxy, r) })
	}
	if r.Log != nil {
		r.Log.logRequest(r)
	}
}

// TCP records one finished TCP connection; c.Edge must be set. Call it
// once for every ConnOpened, with the same Edge (the active gauge is their
// difference). Like Request it neither blocks nor keeps c.
func (o *Observer) TCP(c *Conn) {
	st := o.edgeState(c.Edge)
	m := st.tcp()
	m.closed.Inc()
	m.active.Dec()
	if c.BytesIn > 0 {
		m.received.Add(float64(c.BytesIn))
	}
	if c.BytesOut > 0 {
		m.sent.Add(float64(c.BytesOut))
	}
	st.stats.add(c.Failed, c.Duration, c.BytesIn, c.BytesOut)
	if o.taps.Load() != nil {
		o.tapConn(c)
	}
	if c.Failed {
		o.events.recordError(func() telemetry.TapEvent { return connEvent(o.opts.Proxy, c) })
	}
	if c.Log != nil {
		c.Log.logConn(c)
	}
}

// ConnOpened counts a TCP connection opened on e (for the active gauge).
func (o *Observer) ConnOpened(e *Edge) {
	m := o.edgeState(e).tcp()
	m.opened.Inc()
	m.active.Inc()
}
