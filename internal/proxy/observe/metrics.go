package observe

import (
	"errors"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"verge.dev/verge/internal/telemetry"
)

// edgeLabels are the labels every golden metric carries, in the order of
// labelKey's fields.
var edgeLabels = []string{
	"direction", "protocol",
	"source_service", "source_namespace", "source_identity", "source_zone",
	"destination_service", "destination_namespace", "destination_zone",
	"route",
}

// metrics are the golden metric vectors. Handles are resolved once per
// label set (edgeState), because WithLabelValues hashes every label value
// and costs more than the rest of Request together.
type metrics struct {
	requests     *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	requestBytes *prometheus.CounterVec
	respBytes    *prometheus.CounterVec
	tcpOpened    *prometheus.CounterVec
	tcpClosed    *prometheus.CounterVec
	tcpActive    *prometheus.GaugeVec
	tcpReceived  *prometheus.CounterVec
	tcpSent      *prometheus.CounterVec
}

func newMetrics(reg *prometheus.Registry) *metrics {
	with := func(extra ...string) []string {
		return append(append([]string(nil), edgeLabels...), extra...)
	}
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verge_requests_total",
			Help: "Requests the proxy handled, by edge, response code class and gRPC code.",
		}, with("response_code_class", "grpc_code")),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "verge_request_duration_seconds",
			Help:    "Time from the first byte of a request to the last byte of its response.",
			Buckets: telemetry.LatencyBuckets,
		}, with("response_code_class")),
		requestBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verge_request_bytes_total",
			Help: "Request body bytes received from the downstream.",
		}, with()),
		respBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verge_response_bytes_total",
			Help: "Response body bytes sent to the downstream.",
		}, with()),
		tcpOpened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verge_tcp_connections_opened_total",
			Help: "TCP connections opened.",
		}, with()),
		tcpClosed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verge_tcp_connections_closed_total",
			Help: "TCP connections closed.",
		}, with()),
		tcpActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "verge_tcp_active_connections",
			Help: "TCP connections open now.",
		}, with()),
		tcpReceived: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verge_tcp_received_bytes_total",
			Help: "Bytes received from the downstream of TCP connections.",
		}, with()),
		tcpSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verge_tcp_sent_bytes_total",
			Help: "Bytes sent to the downstream of TCP connections.",
		}, with()),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.duration, m.requestBytes, m.respBytes,
			m.tcpOpened, m.tcpClosed, m.tcpActive, m.tcpReceived, m.tcpSent)
		// Registered here too so that the series exists (at zero) before
		// any access log is opened.
		droppedCounter(reg)
	}
	return m
}

// droppedCounter returns verge_access_log_dropped_total in reg, registering
// it on first use: every AccessLogger and the Observer share one.
func droppedCounter(reg *prometheus.Registry) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "verge_access_log_dropped_total",
		Help: "Access log lines dropped because the write buffer was full or the log closed.",
	})
	if reg == nil {
		return c
	}
	if err := reg.Register(c); err != nil {
		if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
			if existing, ok := are.ExistingCollector.(prometheus.Counter); ok {
				return existing
			}
		}
		panic("observe: register verge_access_log_dropped_total: " + err.Error())
	}
	return c
}

// labelKey is an Edge's label values; Edges with equal keys share one
// edgeState.
type labelKey struct {
	direction, protocol                     string
	srcService, srcNS, srcIdentity, srcZone string
	dstService, dstNS, dstZone              string
	route                                   string
}

func keyOf(e *Edge) labelKey {
	return labelKey{
		direction: e.Direction, protocol: e.Protocol,
		srcService: e.Source.Service, srcNS: e.Source.Namespace,
		srcIdentity: e.Source.Identity, srcZone: e.Source.Zone,
		dstService: e.Destination.Service, dstNS: e.Destination.Namespace,
		dstZone: e.Destination.Zone,
		route:   e.Route,
	}
}

func (k labelKey) values(extra ...string) []string {
	return append([]string{
		k.direction, k.protocol,
		k.srcService, k.srcNS, k.srcIdentity, k.srcZone,
		k.dstService, k.dstNS, k.dstZone,
		k.route,
	}, extra...)
}

// Response code classes: index 0 is "0xx" (no response), 1..5 are
// "1xx".."5xx".
const numClasses = 6

var classNames = [numClasses]string{"0xx", "1xx", "2xx", "3xx", "4xx", "5xx"}

func statusClass(status int) int {
	c := status / 100
	if c < 0 || c >= numClasses {
		// Out-of-range statuses never reach a client through net/http or
		// h1; bucket them with "no response" rather than invent a class.
		return 0
	}
	return c
}

// gRPC codes: slot 0 is "not gRPC" (label ""), slot c+1 is code c. Codes
// outside 0..16 count as UNKNOWN, as grpc-go maps them.
const numGRPC = 18

var grpcNames = [numGRPC]string{
	"", "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
	"NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
	"FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
	"INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
}

func grpcSlot(code int) int {
	switch {
	case code < 0:
		return 0
	case code >= numGRPC-1:
		return 3 // UNKNOWN
	}
	return code + 1
}

// grpcName is the label (and access log) name of a grpc-status, "" for
// none.
func grpcName(code int) string { return grpcNames[grpcSlot(code)] }

// edgeState holds the resolved metric handles of one label set and its
// edge counters. Handles are resolved on first use, so that a label set
// only ever seen on TCP exports no HTTP series at zero and vice versa.
type edgeState struct {
	m     *metrics
	key   labelKey
	stats *edgeCounters

	reqs     [numClasses][numGRPC]atomic.Pointer[counterHandle]
	durs     [numClasses]atomic.Pointer[observerHandle]
	bytes    atomic.Pointer[byteHandles]
	tcpState atomic.Pointer[tcpHandles]
}

type counterHandle struct{ c prometheus.Counter }

type observerHandle struct{ o prometheus.Observer }

type byteHandles struct{ in, out prometheus.Counter }

type tcpHandles struct {
	opened, closed, received, sent prometheus.Counter
	active                         prometheus.Gauge
}

func (s *edgeState) requests(class, grpc int) prometheus.Counter {
	p := &s.reqs[class][grpc]
	if h := p.Load(); h != nil {
		return h.c
	}
	// Two goroutines may both resolve; WithLabelValues returns the same
	// child to both, so the race is harmless.
	h := &counterHandle{s.m.requests.WithLabelValues(s.key.values(classNames[class], grpcNames[grpc])...)}
	p.Store(h)
	return h.c
}

func (s *edgeState) duration(class int) prometheus.Observer {
	p := &s.durs[class]
	if h := p.Load(); h != nil {
		return h.o
	}
	h := &observerHandle{s.m.duration.WithLabelValues(s.key.values(classNames[class])...)}
	p.Store(h)
	return h.o
}

func (s *edgeState) byteCounters() *byteHandles {
	if h := s.bytes.Load(); h != nil {
		return h
	}
	v := s.key.values()
	h := &byteHandles{in: s.m.requestBytes.WithLabelValues(v...), out: s.m.respBytes.WithLabelValues(v...)}
	s.bytes.Store(h)
	return h
}

func (s *edgeState) tcp() *tcpHandles {
	if h := s.tcpState.Load(); h != nil {
		return h
	}
	v := s.key.values()
	h := &tcpHandles{
		opened:   s.m.tcpOpened.WithLabelValues(v...),
		closed:   s.m.tcpClosed.WithLabelValues(v...),
		active:   s.m.tcpActive.WithLabelValues(v...),
		received: s.m.tcpReceived.WithLabelValues(v...),
		sent:     s.m.tcpSent.WithLabelValues(v...),
	}
	s.tcpState.Store(h)
	return h
}

// edgeRef is what an Edge caches: which Observer resolved it, for which
// Edge (a copied Edge carries its original's ref), and the result.
type edgeRef struct {
	obs  *Observer
	edge *Edge
	st   *edgeState
}

// edgeState returns e's state, from e's cache when this Observer filled it.
func (o *Observer) edgeState(e *Edge) *edgeState {
	if ref, _ := e.cache.Load().(*edgeRef); ref != nil && ref.obs == o && ref.edge == e {
		return ref.st
	}
	return o.resolve(e)
}

func (o *Observer) resolve(e *Edge) *edgeState {
	k := keyOf(e)
	o.mu.Lock()
	st := o.states[k]
	if st == nil {
		sk := statsKey(e)
		c := o.stats[sk]
		if c == nil {
			c = &edgeCounters{key: sk}
			o.stats[sk] = c
		}
		st = &edgeState{m: o.metrics, key: k, stats: c}
		o.states[k] = st
	}
	o.mu.Unlock()
	e.cache.Store(&edgeRef{obs: o, edge: e, st: st})
	return st
}

// statsKey is the control plane's name of e's edge.
func statsKey(e *Edge) telemetry.EdgeKey {
	return telemetry.EdgeKey{
		Direction:       e.Direction,
		Protocol:        e.Protocol,
		Source:          serviceOrUnknown(e.Source.Service),
		SourceZone:      e.Source.Zone,
		Destination:     serviceOrUnknown(e.Destination.Service),
		DestinationZone: e.Destination.Zone,
	}
}

func serviceOrUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}
