package observe

import (
	"cmp"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"verge.dev/verge/internal/telemetry"
)

// edgeCounters are one telemetry.EdgeKey's cumulative counts since the
// Observer started, and the part of them the control plane has accepted.
// Reports carry the difference, so that a report the control plane never
// acknowledged is simply folded into the next one.
type edgeCounters struct {
	key telemetry.EdgeKey

	// Written on the request path with atomics. add increments requests
	// first and snapshot reads it last, so that a snapshot never holds
	// more failures than requests; the fields are not read as one atomic
	// unit, so a report's latency counts can be a request behind or ahead
	// of Requests, and Commit carries any difference into the next report.
	requests atomic.Uint64
	failures atomic.Uint64
	bytesIn  atomic.Uint64
	bytesOut atomic.Uint64
	latency  [numBuckets]atomic.Uint64

	// committed is what accepted reports carried; guarded by
	// Observer.reportMu.
	committed counts
}

// numBuckets is len(telemetry.LatencyBuckets)+1 (the +Inf slot); an array
// keeps the counters inline. init checks that the two agree.
const numBuckets = 15

func init() {
	if len(telemetry.LatencyBuckets)+1 != numBuckets {
		panic("observe: numBuckets does not match telemetry.LatencyBuckets")
	}
}

// counts is a plain copy of an edge's counters.
type counts struct {
	requests, failures, bytesIn, bytesOut uint64
	latency                               [numBuckets]uint64
}

func (c *edgeCounters) add(failed bool, d time.Duration, in, out int64) {
	c.requests.Add(1)
	if failed {
		c.failures.Add(1)
	}
	c.latency[telemetry.BucketIndex(d)].Add(1)
	if in > 0 {
		c.bytesIn.Add(uint64(in))
	}
	if out > 0 {
		c.bytesOut.Add(uint64(out))
	}
}

func (c *edgeCounters) snapshot() counts {
	var s counts
	s.failures = c.failures.Load()
	s.bytesIn = c.bytesIn.Load()
	s.bytesOut = c.bytesOut.Load()
	for i := range s.latency {
		s.latency[i] = c.latency[i].Load()
	}
	s.requests = c.requests.Load()
	return s
}

// Report returns the deltas since the last Commit (and the pending taps and
// errors) without clearing them. The caller owns the returned Report; pass
// it unchanged to Commit once the control plane accepted it. Report takes a
// lock and reads /proc: call it every few seconds, not per request.
func (o *Observer) Report() *telemetry.Report {
	o.reportMu.Lock()
	defer o.reportMu.Unlock()

	o.mu.Lock()
	all := make([]*edgeCounters, 0, len(o.stats))
	for _, c := range o.stats {
		all = append(all, c)
	}
	o.mu.Unlock()
	slices.SortFunc(all, func(a, b *edgeCounters) int { return compareKeys(a.key, b.key) })

	name, ns, _ := strings.Cut(o.opts.Service, ".")
	r := &telemetry.Report{
		Proxy:        o.opts.Proxy,
		Workload:     o.opts.Workload,
		Service:      name,
		Namespace:    ns,
		Zone:         o.opts.Zone,
		Start:        o.start,
		End:          o.now(),
		Process:      processStats(),
		AdminAddress: o.opts.AdminAddress,
	}
	for _, c := range all {
		cur := c.snapshot()
		base := &c.committed
		if cur.requests == base.requests && cur.bytesIn == base.bytesIn && cur.bytesOut == base.bytesOut {
			continue
		}
		es := telemetry.EdgeStats{
			EdgeKey:  c.key,
			Requests: cur.requests - base.requests,
			// Clamped: a failure counted just after the previous
			// snapshot read its request can land in this delta without
			// it; Commit subtracts what was reported, so the rest
			// follows in the next report.
			Failures: min(cur.failures-base.failures, cur.requests-base.requests),
			BytesIn:  cur.bytesIn - base.bytesIn,
			BytesOut: cur.bytesOut - base.bytesOut,
			Latency:  make([]uint64, numBuckets),
		}
		for i := range es.Latency {
			es.Latency[i] = cur.latency[i] - base.latency[i]
		}
		r.Edges = append(r.Edges, es)
	}
	o.events.report(r)
	return r
}

// Commit clears what r reported, after the control plane accepted it; what
// was recorded since Report stays for the next one. Commit each Report at
// most once.
func (o *Observer) Commit(r *telemetry.Report) {
	if r == nil {
		return
	}
	o.reportMu.Lock()
	defer o.reportMu.Unlock()
	for i := range r.Edges {
		es := &r.Edges[i]
		o.mu.Lock()
		c := o.stats[es.EdgeKey]
		o.mu.Unlock()
		if c == nil {
			continue // not from this Observer
		}
		b := &c.committed
		b.requests += es.Requests
		b.failures += es.Failures
		b.bytesIn += es.BytesIn
		b.bytesOut += es.BytesOut
		for j := range min(len(es.Latency), numBuckets) {
			b.latency[j] += es.Latency[j]
		}
	}
	if r.End.After(o.start) {
		o.start = r.End
	}
	o.events.commit(r)
}

func compareKeys(a, b telemetry.EdgeKey) int {
	return cmp.Or(
		cmp.Compare(a.Direction, b.Direction),
		cmp.Compare(a.Source, b.Source),
		cmp.Compare(a.Destination, b.Destination),
		cmp.Compare(a.Protocol, b.Protocol),
		cmp.Compare(a.SourceZone, b.SourceZone),
		cmp.Compare(a.DestinationZone, b.DestinationZone),
	)
}
