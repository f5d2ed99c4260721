// Package topology owns the control plane's view of the mesh's traffic: it
// aggregates the proxies' telemetry reports (telemetry.Report, deltas since
// each proxy's previous report) into per-edge time series, and answers the
// service graph (Topology), a service's golden signals over time (Series),
// the recent failed requests (Errors), the reporting proxies' resource use
// (Processes) and live taps (Tap). Handler serves all of it on the API
// listener, including the proxies' report endpoint.
//
// It does not own the wire types (package telemetry), who may report (the
// caller's authorize function decides) nor the dashboard that draws the
// graph (package web).
//
// Data layout. Every edge key (direction, protocol, services and zones, as
// reported) gets one series: a ring of fixed-width time slots (Options.Slot,
// 10 s) covering Options.Retention (15 min) plus the current slot, each
// holding request and failure counts and the latency histogram. Series live
// in one slice and refer to services by small integer ids, so that a query
// walks arrays and indexes slices; the only maps are the key → series index
// used by Ingest and the name → id table. Slots are stamped with their slot
// number, so a slot not written for a whole turn of the ring reads as empty
// without being cleared. Reports land in the slot of the control plane's
// clock when they arrive, so a proxy's clock skew never moves its traffic.
//
//	POST report ─► Handler ─► Validate ─► Ingest ─┬─► series rings ─► Topology, Series
//	                                              ├─► proxies ─────► Processes
//	                                              ├─► recent errors ► Errors
//	                                              └─► tap subscribers ► Tap (NDJSON)
package topology

import (
	"math"
	"sync"
	"time"

	"verge.dev/verge/internal/telemetry"
)

// Defaults of Options.
const (
	DefaultSlot         = 10 * time.Second
	DefaultRetention    = 15 * time.Minute
	DefaultMaxTaps      = 64
	DefaultMaxEdges     = 50000
	DefaultMaxErrors    = 200
	DefaultProxyExpiry  = time.Minute
	defaultTapBuffer    = 256
	activeTapInterval   = time.Second
	unknownService      = "unknown"
	minWorkloadsHorizon = time.Minute
)

// buckets is the number of latency slots of a report: LatencyBuckets and +Inf.
var buckets = len(telemetry.LatencyBuckets) + 1

// Options configure an Aggregator. Zero fields take the defaults.
type Options struct {
	// Slot is the width of a time slot, the resolution of every answer.
	Slot time.Duration
	// Retention is how much history is kept; windows are capped to it.
	Retention time.Duration
	// MaxTaps bounds the concurrent tap subscribers.
	MaxTaps int
	// MaxEdges bounds the series kept; edges beyond it are dropped until
	// idle ones expire.
	MaxEdges int
	// MaxErrors is how many recent failed requests are kept.
	MaxErrors int
	// ProxyExpiry is how long after its last report a proxy is still
	// listed by Processes and counted as a workload.
	ProxyExpiry time.Duration
	// Clock is the time source of the HTTP handler; time.Now when nil.
	Clock func() time.Time
}

func (o Options) withDefaults() Options {
	if o.Slot <= 0 {
		o.Slot = DefaultSlot
	}
	if o.Retention < o.Slot {
		o.Retention = max(DefaultRetention, o.Slot)
	}
	if o.MaxTaps <= 0 {
		o.MaxTaps = DefaultMaxTaps
	}
	if o.MaxEdges <= 0 {
		o.MaxEdges = DefaultMaxEdges
	}
	if o.MaxErrors <= 0 {
		o.MaxErrors = DefaultMaxErrors
	}
	if o.ProxyExpiry <= 0 {
		o.ProxyExpiry = DefaultProxyExpiry
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	return o
}

// Aggregator keeps the mesh's recent traffic. All methods are safe for
// concurrent use; none blocks on a slow tap subscriber.
type Aggregator struct {
	opts  Options
	width int64 // slot width in nanoseconds
	nslot int64 // slots per ring: Retention/Slot plus the current one

	// mu guards everything below except the taps.
	mu     sync.RWMutex
	index  map[telemetry.EdgeKey]int32
	series []series
	// names interns service names; id 0 is "unknown".
	names   map[string]int32
	nameOf  []string
	pairs   map[pairKey]int32
	proxies map[string]*proxyState
	// errs is a ring of the newest failed requests; errNext is where the
	// next one goes, errLen how many are held.
	errs      []telemetry.TapEvent
	errNext   int
	errLen    int
	nextPrune int64
	// droppedEdges counts edge deltas refused because MaxEdges series
	// exist.
	droppedEdges uint64

	tapMu sync.Mutex
	taps  map[string]*tapSub
}

// series is one edge key's ring of slots.
type series struct {
	key      telemetry.EdgeKey
	inbound  bool
	src, dst int32
	// pair numbers (source, destination, protocol), so that a query can
	// tell whether a caller reported an edge the callee also reported.
	pair int32
	// last is the newest slot written.
	last  int64
	slots []slot
}

// slot is one time slot's sums. Counts are 32-bit (saturating): a slot
// holds seconds of one edge's traffic, and halving the size of 15 minutes
// of history for thousands of edges matters more than counts above 4e9.
type slot struct {
	n        int64
	requests uint32
	failures uint32
	latency  [16]uint32
}

type pairKey struct {
	src, dst int32
	protocol string
}

type proxyState struct {
	p   telemetry.ProxyProcess
	svc int32
	// prevCPU and prevAt are the CPU seconds and arrival time of the
	// previous report, for CPUPercent.
	prevCPU float64
	prevAt  time.Time
}

// New returns an empty Aggregator.
func New(opts Options) *Aggregator {
	opts = opts.withDefaults()
	a := &Aggregator{
		opts:    opts,
		width:   int64(opts.Slot),
		nslot:   int64(opts.Retention/opts.Slot) + 1,
		index:   map[telemetry.EdgeKey]int32{},
		proxies: map[string]*proxyState{},
		errs:    make([]telemetry.TapEvent, opts.MaxErrors),
		taps:    map[string]*tapSub{},
	}
	a.resetNamesLocked()
	return a
}

// slotOf is the number of the slot holding t.
func (a *Aggregator) slotOf(t time.Time) int64 {
	ns := t.UnixNano()
	s := ns / a.width
	if ns < 0 && ns%a.width != 0 {
		s--
	}
	return s
}

// slotsFor is how many slots a window spans, at least one and at most the
// retention.
func (a *Aggregator) slotsFor(window time.Duration) int64 {
	k := (int64(window) + a.width - 1) / a.width
	return min(max(k, 1), a.nslot-1)
}

func (a *Aggregator) resetNamesLocked() {
	a.names = map[string]int32{unknownService: 0}
	a.nameOf = []string{unknownService}
	a.pairs = map[pairKey]int32{}
}

func (a *Aggregator) internLocked(name string) int32 {
	if id, ok := a.names[name]; ok {
		return id
	}
	id := int32(len(a.nameOf))
	a.names[name] = id
	a.nameOf = append(a.nameOf, name)
	return id
}

func (a *Aggregator) pairLocked(src, dst int32, protocol string) int32 {
	k := pairKey{src, dst, protocol}
	if id, ok := a.pairs[k]; ok {
		return id
	}
	id := int32(len(a.pairs))
	a.pairs[k] = id
	return id
}

// Ingest adds a report, received at now, and returns the answer for its
// proxy: the active taps, and a 1 s report interval while there are any.
// The report should have passed Validate; Ingest itself only guards its
// own invariants (it ignores latency slots beyond the histogram's).
func (a *Aggregator) Ingest(r *telemetry.Report, now time.Time) telemetry.ReportResponse {
	cur := a.slotOf(now)
	a.mu.Lock()
	if cur >= a.nextPrune {
		a.pruneLocked(cur)
		a.nextPrune = cur + 1
	}
	for i := range r.Edges {
		a.addEdgeLocked(&r.Edges[i], cur)
	}
	if r.Proxy != "" {
		a.addProxyLocked(r, now)
	}
	for i := range r.Errors {
		a.errs[a.errNext] = r.Errors[i]
		a.errNext = (a.errNext + 1) % len(a.errs)
		a.errLen = min(a.errLen+1, len(a.errs))
	}
	a.mu.Unlock()

	a.deliver(r.Taps)
	return a.response()
}

func (a *Aggregator) addEdgeLocked(e *telemetry.EdgeStats, cur int64) {
	idx, ok := a.index[e.EdgeKey]
	if !ok {
		if len(a.series) >= a.opts.MaxEdges {
			a.droppedEdges++
			return
		}
		src, dst := a.internLocked(e.Source), a.internLocked(e.Destination)
		idx = int32(len(a.series))
		a.series = append(a.series, series{
			key:     e.EdgeKey,
			inbound: e.Direction == telemetry.Inbound,
			src:     src,
			dst:     dst,
			pair:    a.pairLocked(src, dst, e.Protocol),
			slots:   make([]slot, a.nslot),
		})
		a.index[e.EdgeKey] = idx
	}
	s := &a.series[idx]
	sl := &s.slots[mod(cur, a.nslot)]
	if sl.n != cur {
		*sl = slot{n: cur}
	}
	sl.requests = satAdd(sl.requests, e.Requests)
	sl.failures = satAdd(sl.failures, e.Failures)
	for j := 0; j < len(e.Latency) && j < buckets; j++ {
		sl.latency[j] = satAdd(sl.latency[j], e.Latency[j])
	}
	s.last = max(s.last, cur)
}

func (a *Aggregator) addProxyLocked(r *telemetry.Report, now time.Time) {
	ps, ok := a.proxies[r.Proxy]
	if !ok {
		ps = &proxyState{}
		a.proxies[r.Proxy] = ps
	}
	svc := serviceName(r)
	ps.svc = a.internLocked(svc)
	cpu := r.Process.CPUSeconds
	// A lower CPU total means the proxy restarted: no rate until the next
	// report.
	if ok && cpu >= ps.prevCPU && now.After(ps.prevAt) {
		ps.p.CPUPercent = (cpu - ps.prevCPU) / now.Sub(ps.prevAt).Seconds() * 100
	} else {
		ps.p.CPUPercent = 0
	}
	ps.prevCPU, ps.prevAt = cpu, now
	ps.p = telemetry.ProxyProcess{
		Proxy:        r.Proxy,
		Workload:     r.Workload,
		Service:      svc,
		Zone:         r.Zone,
		AdminAddress: r.AdminAddress,
		Process:      r.Process,
		CPUPercent:   ps.p.CPUPercent,
		LastReport:   now,
	}
}

// serviceName is the report's service as edges name it, NAME.NAMESPACE,
// or "" for a workload of no service.
func serviceName(r *telemetry.Report) string {
	if r.Service == "" {
		return ""
	}
	return r.Service + "." + r.Namespace
}

// pruneLocked forgets series idle for the whole retention and proxies
// silent for as long, and then renumbers names so that neither table grows
// with names no longer in use.
func (a *Aggregator) pruneLocked(cur int64) {
	horizon := cur - a.nslot + 1
	removed := false
	for i := 0; i < len(a.series); {
		if a.series[i].last >= horizon {
			i++
			continue
		}
		delete(a.index, a.series[i].key)
		last := len(a.series) - 1
		if i != last {
			a.series[i] = a.series[last]
			a.index[a.series[i].key] = int32(i)
		}
		a.series[last] = series{}
		a.series = a.series[:last]
		removed = true
	}
	expiry := time.Unix(0, (horizon)*a.width)
	for id, ps := range a.proxies {
		if ps.p.LastReport.Before(expiry) {
			delete(a.proxies, id)
			removed = true
		}
	}
	if !removed {
		return
	}
	a.resetNamesLocked()
	for i := range a.series {
		s := &a.series[i]
		s.src, s.dst = a.internLocked(s.key.Source), a.internLocked(s.key.Destination)
		s.pair = a.pairLocked(s.src, s.dst, s.key.Protocol)
	}
	for _, ps := range a.proxies {
		ps.svc = a.internLocked(ps.p.Service)
	}
}

func mod(a, b int64) int64 {
	m := a % b
	if m < 0 {
		m += b
	}
	return m
}

func satAdd(a uint32, d uint64) uint32 {
	if d >= math.MaxUint32-uint64(a) {
		return math.MaxUint32
	}
	return a + uint32(d)
}
