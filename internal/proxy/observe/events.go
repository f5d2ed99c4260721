package observe

import (
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"verge.dev/verge/internal/telemetry"
)

const (
	// maxTapEvents bounds the tap events waiting for a report; more are
	// dropped (a tap is a sample, and a control plane that does not
	// accept reports must not grow the proxy's memory).
	maxTapEvents = 1000
	// defaultTapRate applies to a TapRequest without MaxPerSecond.
	defaultTapRate = 10
)

// activeTap is one TapRequest with its rate limiter.
type activeTap struct {
	req   telemetry.TapRequest
	limit rateWindow
}

// rateWindow admits at most n events per wall-clock second. Its reset is
// not atomic with the count, so a second boundary crossed by concurrent
// callers can admit a few extra events; that is within what a sample
// needs, and keeps the check to two atomic operations.
type rateWindow struct {
	sec atomic.Int64
	n   atomic.Int64
}

func (w *rateWindow) allow(now int64, max int) bool {
	if w.sec.Load() != now {
		w.sec.Store(now)
		w.n.Store(0)
	}
	return w.n.Add(1) <= int64(max)
}

// SetTaps replaces the active taps (from the last ReportResponse). A tap
// that stays active keeps its rate window.
func (o *Observer) SetTaps(taps []telemetry.TapRequest) {
	if len(taps) == 0 {
		o.taps.Store(nil)
		return
	}
	old := map[string]*activeTap{}
	if p := o.taps.Load(); p != nil {
		for _, t := range *p {
			old[t.req.ID] = t
		}
	}
	next := make([]*activeTap, 0, len(taps))
	for _, req := range taps {
		if req.MaxPerSecond <= 0 {
			req.MaxPerSecond = defaultTapRate
		}
		t := old[req.ID]
		if t == nil || t.req != req {
			t = &activeTap{req: req}
		}
		next = append(next, t)
	}
	o.taps.Store(&next)
}

// Tapping reports whether some active tap wants requests on e, so that the
// caller can skip gathering tap-only fields otherwise. One atomic load when
// no tap is active.
func (o *Observer) Tapping(e *Edge) bool {
	p := o.taps.Load()
	if p == nil {
		return false
	}
	for _, t := range *p {
		if t.matches(e) {
			return true
		}
	}
	return false
}

func (t *activeTap) matches(e *Edge) bool {
	return t.req.Service == e.Source.Service || t.req.Service == e.Destination.Service
}

func (o *Observer) tapRequest(r *Request) {
	o.tap(r.Edge, func() telemetry.TapEvent { return requestEvent(o.opts.Proxy, r) })
}

func (o *Observer) tapConn(c *Conn) {
	o.tap(c.Edge, func() telemetry.TapEvent { return connEvent(o.opts.Proxy, c) })
}

// tap samples one event into every matching tap whose rate allows it; the
// event is built (and its strings copied) only when one does.
func (o *Observer) tap(e *Edge, build func() telemetry.TapEvent) {
	p := o.taps.Load()
	if p == nil {
		return
	}
	var ev telemetry.TapEvent
	built := false
	var now int64
	for _, t := range *p {
		if !t.matches(e) {
			continue
		}
		if now == 0 {
			now = time.Now().Unix()
		}
		if !t.limit.allow(now, t.req.MaxPerSecond) {
			continue
		}
		if !built {
			ev, built = build(), true
		}
		ev.TapID = t.req.ID
		o.events.addTap(ev)
	}
}

func requestEvent(proxy string, r *Request) telemetry.TapEvent {
	e := r.Edge
	return telemetry.TapEvent{
		Time:        r.Start,
		Proxy:       proxy,
		Direction:   e.Direction,
		Protocol:    e.Protocol,
		Source:      serviceOrUnknown(e.Source.Service),
		Identity:    e.Source.Identity,
		Destination: serviceOrUnknown(e.Destination.Service),
		Method:      strings.Clone(r.Method),
		Authority:   strings.Clone(r.Authority),
		Path:        strings.Clone(r.Path),
		Status:      r.Status,
		GRPCStatus:  r.GRPCStatus,
		Duration:    r.Duration,
		TraceID:     strings.Clone(r.TraceID),
		Flags:       strings.Clone(r.Flags),
	}
}

func connEvent(proxy string, c *Conn) telemetry.TapEvent {
	e := c.Edge
	return telemetry.TapEvent{
		Time:        c.Start,
		Proxy:       proxy,
		Direction:   e.Direction,
		Protocol:    e.Protocol,
		Source:      serviceOrUnknown(e.Source.Service),
		Identity:    e.Source.Identity,
		Destination: serviceOrUnknown(e.Destination.Service),
		GRPCStatus:  -1,
		Duration:    c.Duration,
		Flags:       strings.Clone(c.Flags),
	}
}

// eventBuffers hold the tap and error events waiting for an accepted
// report. Every event gets a sequence number, so that Commit removes
// exactly what a Report carried even if more arrived (or, for errors,
// older ones were overwritten) in between.
type eventBuffers struct {
	errLimit  rateWindow
	maxErrors int

	mu   sync.Mutex
	taps eventRing
	errs eventRing
	// marks remember, per recent Report, the last sequence numbers it
	// carried; bounded because a Report may never be committed.
	marks []reportMark
}

type reportMark struct {
	r              *telemetry.Report
	tapSeq, errSeq uint64
}

const maxMarks = 8

func (b *eventBuffers) init(maxErrors int) {
	b.maxErrors = maxErrors
	b.taps = eventRing{max: maxTapEvents}
	// Errors keep the most recent: the dashboard shows recent errors.
	b.errs = eventRing{max: maxErrors, overwrite: true}
}

func (b *eventBuffers) addTap(ev telemetry.TapEvent) {
	b.mu.Lock()
	b.taps.push(ev)
	b.mu.Unlock()
}

// recordError keeps the event build returns unless this second already kept
// maxErrors errors: during an outage every request fails, and copying
// each one's strings would cost the request path for samples that are
// overwritten anyway.
func (b *eventBuffers) recordError(build func() telemetry.TapEvent) {
	if !b.errLimit.allow(time.Now().Unix(), b.maxErrors) {
		return
	}
	ev := build()
	b.mu.Lock()
	b.errs.push(ev)
	b.mu.Unlock()
}

// report copies the pending events into r and remembers what it took.
func (b *eventBuffers) report(r *telemetry.Report) {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := reportMark{r: r}
	r.Taps, m.tapSeq = b.taps.appendTo(nil)
	r.Errors, m.errSeq = b.errs.appendTo(nil)
	if len(b.marks) == maxMarks {
		b.marks = append(b.marks[:0], b.marks[1:]...)
	}
	b.marks = append(b.marks, m)
}

// commit drops the events r carried.
func (b *eventBuffers) commit(r *telemetry.Report) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, m := range b.marks {
		if m.r != r {
			continue
		}
		b.taps.dropThrough(m.tapSeq)
		b.errs.dropThrough(m.errSeq)
		b.marks = append(b.marks[:0], b.marks[i+1:]...)
		return
	}
}

// eventRing is a bounded FIFO of events with sequence numbers. When full
// it drops the new event, or with overwrite the oldest.
type eventRing struct {
	max       int
	overwrite bool
	buf       []seqEvent // allocated on first push; circular
	head, n   int
	next      uint64 // sequence number of the next event; starts at 1
}

type seqEvent struct {
	seq uint64
	ev  telemetry.TapEvent
}

func (r *eventRing) push(ev telemetry.TapEvent) {
	if r.buf == nil {
		r.buf = make([]seqEvent, r.max)
	}
	if r.n == r.max {
		if !r.overwrite {
			return
		}
		r.head = (r.head + 1) % r.max
		r.n--
	}
	r.next++
	r.buf[(r.head+r.n)%r.max] = seqEvent{seq: r.next, ev: ev}
	r.n++
}

// appendTo appends the events oldest first and returns the last one's
// sequence number (0 when empty).
func (r *eventRing) appendTo(dst []telemetry.TapEvent) ([]telemetry.TapEvent, uint64) {
	var last uint64
	for i := range r.n {
		se := &r.buf[(r.head+i)%r.max]
		dst = append(dst, se.ev)
		last = se.seq
	}
	return dst, last
}

// dropThrough removes the events numbered up to seq.
func (r *eventRing) dropThrough(seq uint64) {
	for r.n > 0 && r.buf[r.head].seq <= seq {
		r.buf[r.head] = seqEvent{} // release the strings
		r.head = (r.head + 1) % r.max
		r.n--
	}
}
