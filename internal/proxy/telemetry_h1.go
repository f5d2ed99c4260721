package proxy

import (
	"net/http"
	"sync"
	"time"

	"verge.dev/verge/internal/proxy/h1"
	"verge.dev/verge/internal/proxy/observe"
	"verge.dev/verge/internal/proxy/tracing"
)

// on reports whether the listener records anything per request.
func (t *listenerTelemetry) on() bool {
	return !t.metricsOff || t.log != nil || t.tracer != nil
}

// h1Obs observes one exchange of the h1 engine. The request's strings view
// the engine's buffer, which stays intact until the engine reads the next
// request, after Done returns. Observers are pooled: at tens of thousands
// of requests a second an allocation each (two with tracing, ~700 bytes)
// was most of what a proxy allocated, and its garbage collections were a
// visible part of the telemetry's cost. The engine does not touch the
// decision's Stats or Traffic after Done, which puts the observer back.
type h1Obs struct {
	p     *Proxy
	lt    *listenerTelemetry
	req   *h1.Request
	edge  *observe.Edge
	start time.Time
	local bool // the proxy answered itself
	inner func(status int, err error)
	stats h1.Stats
	tr    *h1Trace // &trace with tracing, else nil
	// doneFn is done bound to this observer once, when it was made, so
	// that handing it to the engine allocates nothing.
	doneFn func(status int, err error)
	trace  h1Trace
}

var h1ObsPool sync.Pool // of *h1Obs

func getH1Obs() *h1Obs {
	if x, ok := h1ObsPool.Get().(*h1Obs); ok {
		return x
	}
	x := &h1Obs{}
	x.doneFn = x.done
	return x
}

// h1Trace is an exchange's span and the request edits that carry its
// context upstream, in a copy of the route's Traffic.
type h1Trace struct {
	span    tracing.Span
	edits   h1.HeaderEdits
	set     [1]h1.Field
	traffic h1.Traffic
}

// observeH1 wraps d so that its end is observed, and starts this hop's
// span, whose context goes upstream in the request's traceparent.
func (r h1Router) observeH1(req *h1.Request, d h1.Decision, lt *listenerTelemetry, info *routeInfo, start time.Time) h1.Decision {
	x := getH1Obs()
	x.p, x.lt, x.req, x.start, x.inner, x.local = r.p, lt, req, start, d.Done, d.Addr == ""
	if lt.inbound {
		// The h1 engine serves plaintext connections only: the caller
		// cannot be named.
		x.edge = lt.unnamedSourceEdge(info.route, "http")
	} else if info.cl != nil {
		x.edge = info.cl.outboundEdge(lt, info.route, "http", d.Addr)
	} else {
		x.edge = lt.edge(info.route, "http", observe.Peer{Service: unknownPeer})
	}
	if lt.tracer != nil {
		kind := tracing.Client
		if lt.inbound {
			kind = tracing.Server
		}
		st := tracing.Start{
			Kind: kind, Time: start, Method: req.Method, Scheme: "http",
			Authority: req.Host, Path: req.Target, Route: info.route,
		}
		if lt.tracer.Recommended() {
			st.Peer, st.UserAgent = r.src.String(), req.Header("user-agent")
		}
		t := &x.trace // zero: done cleared it
		t.edits.Set = t.set[:0]
		x.tr = t
		lt.tracer.Begin(&t.span, h1SpanHeaders{x}, st)
		if !x.local && (len(t.edits.Set) > 0 || len(t.edits.Remove) > 0) {
			d.Traffic = withRequestEdits(&t.traffic, d.Traffic, &t.edits)
		}
	}
	d.Stats = &x.stats
	d.Done = x.doneFn
	return d
}

// withRequestEdits makes cp a copy of tr (shared by requests, or nil)
// whose request edits end with e's, and returns it.
func withRequestEdits(cp, tr *h1.Traffic, e *h1.HeaderEdits) *h1.Traffic {
	*cp = h1.Traffic{}
	if tr != nil {
		*cp = *tr
	}
	if old := cp.RequestHeaders; old != nil {
		merged := &h1.HeaderEdits{
			Set:    append(old.Set[:len(old.Set):len(old.Set)], e.Set...),
			Add:    old.Add,
			Remove: append(old.Remove[:len(old.Remove):len(old.Remove)], e.Remove...),
		}
		e = merged
	}
	cp.RequestHeaders = e
	return cp
}

// h1SpanHeaders lets the tracer read the request's fields and record the
// ones it sets as edits of what goes upstream.
type h1SpanHeaders struct{ x *h1Obs }

func (h h1SpanHeaders) Get(name string) string { return h.x.req.Header(name) }
func (h h1SpanHeaders) Set(name, value string) {
	h.x.tr.edits.Set = append(h.x.tr.edits.Set, h1.Field{Name: name, Value: value})
}
func (h h1SpanHeaders) Del(name string) { h.x.tr.edits.Remove = append(h.x.tr.edits.Remove, name) }

// Keys makes h1SpanHeaders a propagation.TextMapCarrier (the tracer then
// needs no wrapper); the propagators never call it.
func (h h1SpanHeaders) Keys() []string { return nil }

func (x *h1Obs) done(status int, err error) {
	if x.inner != nil {
		x.inner(status, err)
	}
	now := time.Now()
	req := x.req
	o := observe.Request{
		Edge:       x.edge,
		Start:      x.start,
		Duration:   now.Sub(x.start),
		Status:     status,
		GRPCStatus: -1,
		BytesIn:    x.stats.BytesIn,
		BytesOut:   x.stats.BytesOut,
		Retries:    x.stats.Retries,
		Flags:      responseFlags(status, err, x.local),
		Method:     req.Method,
		Authority:  req.Host,
		Path:       req.Target,
		Upstream:   x.stats.Addr,
		Log:        x.lt.log,
	}
	if x.lt.log != nil {
		o.UserAgent = req.Header("user-agent")
		o.RequestID = req.Header("x-request-id")
	}
	if x.tr != nil {
		sp := &x.tr.span
		o.TraceID, o.SpanID = sp.TraceID(), sp.SpanID()
		sp.Finish(tracing.End{Time: now, Status: status, GRPCStatus: -1,
			BytesIn: x.stats.BytesIn, BytesOut: x.stats.BytesOut, Upstream: x.stats.Addr, Err: err})
	}
	x.p.observe(x.lt, &o)
	// Nothing the observer was given outlives the exchange: the span was
	// encoded by Finish, the line written by observe.
	if x.tr != nil {
		x.trace = h1Trace{}
	}
	x.lt, x.req, x.edge, x.inner, x.tr, x.stats = nil, nil, nil, nil, nil, h1.Stats{}
	h1ObsPool.Put(x)
}

// observe hands a finished request to the observer: metrics and reports
// unless the listener turned them off, the access log line when it has one.
func (p *Proxy) observe(lt *listenerTelemetry, o *observe.Request) {
	if lt.metricsOff {
		if o.Log != nil {
			o.Log.LogRequest(o)
		}
		return
	}
	p.obs.Request(o)
}

// responseFlags are Envoy's response flags for what the proxy saw: a local
// reply's reason (no route, no healthy upstream, rate limited), or how the
// exchange with the upstream failed.
func responseFlags(status int, err error, local bool) string {
	if local {
		switch status {
		case http.StatusNotFound:
			return "NR"
		case http.StatusServiceUnavailable:
			return "UH"
		case http.StatusTooManyRequests:
			return "RL"
		}
		return ""
	}
	if status == 0 {
		return "DC"
	}
	if err == nil {
		return ""
	}
	switch status {
	case http.StatusServiceUnavailable:
		return "UF"
	case http.StatusGatewayTimeout:
		return "UT"
	case http.StatusBadGateway:
		return "UC"
	}
	return ""
}

// grpcCodeOf parses a grpc-status value; -1 when absent or malformed.
func grpcCodeOf(v string) int {
	if v == "" || len(v) > 2 {
		return -1
	}
	n := 0
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c < '0' || c > '9' {
			return -1
		}
		n = n*10 + int(c-'0')
	}
	return n
}
