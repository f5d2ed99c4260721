package topology

import (
	"cmp"
	"slices"
	"strings"
	"time"

	"verge.dev/verge/internal/telemetry"
)

// acc sums slots.
type acc struct {
	requests, failures uint64
	latency            [16]uint64
}

func (x *acc) addSlot(s *slot) {
	x.requests += uint64(s.requests)
	x.failures += uint64(s.failures)
	for i := range buckets {
		x.latency[i] += uint64(s.latency[i])
	}
}

func (x *acc) add(y *acc) {
	x.requests += y.requests
	x.failures += y.failures
	for i := range buckets {
		x.latency[i] += y.latency[i]
	}
}

// golden turns sums over d into golden signals.
func (x *acc) golden(d time.Duration) telemetry.Golden {
	g := telemetry.Golden{Requests: x.requests, Failures: x.failures, SuccessRate: 1}
	if x.requests == 0 {
		return g
	}
	g.RequestRate = float64(x.requests) / d.Seconds()
	g.SuccessRate = 1 - float64(x.failures)/float64(x.requests)
	g.P50 = telemetry.Quantile(0.5, x.latency[:buckets])
	g.P99 = telemetry.Quantile(0.99, x.latency[:buckets])
	return g
}

// sumLocked adds the series' slots from first to last (slot numbers,
// inclusive) into x.
func (a *Aggregator) sumLocked(s *series, first, last int64, x *acc) {
	if s.last < first {
		return
	}
	for n := first; n <= last; n++ {
		sl := &s.slots[mod(n, a.nslot)]
		if sl.n == n {
			x.addSlot(sl)
		}
	}
}

// nodeAcc is a service's state during Topology.
type nodeAcc struct {
	in, out   acc
	hasIn     bool
	seen      bool
	workloads int
	zones     []string
}

func (n *nodeAcc) addZone(z string) {
	if z != "" && !slices.Contains(n.zones, z) {
		n.zones = append(n.zones, z)
	}
}

// Topology returns the service graph over the window ending at now (rounded
// up to whole slots, at most the retention). Nodes are the services with
// traffic in the window or a proxy that reported in it (at least the last
// minute); a node's golden signals are those of the requests it served, as
// its own proxies reported them, or, for a service without proxies, as its
// callers saw them. Edges are caller → callee per protocol and zone pair as
// the caller's proxy reported them; an edge whose caller has no proxy
// ("unknown") or did not report it comes from the callee's inbound view.
// The result is owned by the caller.
func (a *Aggregator) Topology(window time.Duration, now time.Time) telemetry.Topology {
	k := a.slotsFor(window)
	d := time.Duration(k * a.width)
	cur := a.slotOf(now)
	first := cur - k + 1
	out := telemetry.Topology{Window: d, Generated: now, Nodes: []telemetry.Node{}, Edges: []telemetry.Edge{}}

	a.mu.RLock()
	defer a.mu.RUnlock()
	sums := make([]acc, len(a.series))
	callerReported := make([]bool, len(a.pairs))
	nodes := make([]nodeAcc, len(a.nameOf))
	for i := range a.series {
		s := &a.series[i]
		a.sumLocked(s, first, cur, &sums[i])
		if !s.inbound && sums[i].requests > 0 {
			callerReported[s.pair] = true
		}
	}
	nedges := 0
	for i := range a.series {
		x := &sums[i]
		if x.requests == 0 {
			continue
		}
		s := &a.series[i]
		src, dst := &nodes[s.src], &nodes[s.dst]
		src.seen, dst.seen = true, true
		if s.inbound {
			dst.in.add(x)
			dst.hasIn = true
			dst.addZone(s.key.DestinationZone)
			if s.src == 0 || !callerReported[s.pair] {
				src.addZone(s.key.SourceZone)
				nedges++
			}
		} else {
			dst.out.add(x)
			src.addZone(s.key.SourceZone)
			nedges++
		}
	}
	horizon := now.Add(-max(d, minWorkloadsHorizon))
	for _, ps := range a.proxies {
		if ps.p.LastReport.Before(horizon) || ps.p.Service == "" {
			continue
		}
		n := &nodes[ps.svc]
		n.seen = true
		n.workloads++
		n.addZone(ps.p.Zone)
	}

	for id := range nodes {
		n := &nodes[id]
		if !n.seen {
			continue
		}
		g := n.in
		if !n.hasIn {
			g = n.out
		}
		slices.Sort(n.zones)
		out.Nodes = append(out.Nodes, telemetry.Node{
			Service: a.nameOf[id], Zones: n.zones, Workloads: n.workloads, Golden: g.golden(d),
		})
	}
	out.Edges = make([]telemetry.Edge, 0, nedges)
	for i := range a.series {
		x := &sums[i]
		s := &a.series[i]
		if x.requests == 0 || (s.inbound && s.src != 0 && callerReported[s.pair]) {
			continue
		}
		k := &s.key
		out.Edges = append(out.Edges, telemetry.Edge{
			Source: k.Source, Destination: k.Destination,
			SourceZone: k.SourceZone, DestinationZone: k.DestinationZone,
			CrossZone: k.SourceZone != "" && k.DestinationZone != "" && k.SourceZone != k.DestinationZone,
			Protocol:  k.Protocol,
			Golden:    x.golden(d),
		})
	}
	slices.SortFunc(out.Nodes, func(x, y telemetry.Node) int { return strings.Compare(x.Service, y.Service) })
	slices.SortFunc(out.Edges, func(x, y telemetry.Edge) int {
		return cmp.Or(strings.Compare(x.Source, y.Source), strings.Compare(x.Destination, y.Destination),
			strings.Compare(x.SourceZone, y.SourceZone), strings.Compare(x.DestinationZone, y.DestinationZone),
			strings.Compare(x.Protocol, y.Protocol))
	})
	return out
}

// MaxPoints bounds the points of one Series.
const MaxPoints = 1000

// Series returns service's golden signals (requests it served, as Topology
// computes a node's) per step over the window ending at now. Step is
// rounded up to whole slots, window to whole steps (at most the retention
// and MaxPoints steps). Points are oldest first; each one's Time is the end
// of its step (now for the current one) and its RequestRate is per second
// of the step. The result is owned by the caller.
func (a *Aggregator) Series(service string, window, step time.Duration, now time.Time) telemetry.Series {
	ss := max((int64(step)+a.width-1)/a.width, 1)
	ss = min(ss, a.nslot-1)
	npts := max(a.slotsFor(window)/ss, 1)
	if a.slotsFor(window)%ss != 0 {
		npts++
	}
	npts = min(npts, (a.nslot-1)/ss, MaxPoints)
	npts = max(npts, 1)
	stepD := time.Duration(ss * a.width)
	cur := a.slotOf(now)
	out := telemetry.Series{Service: service, Step: stepD, Points: make([]telemetry.Point, npts)}

	a.mu.RLock()
	defer a.mu.RUnlock()
	in := make([]acc, npts)
	outb := make([]acc, npts)
	hasIn := false
	if id, ok := a.names[service]; ok {
		for i := range a.series {
			s := &a.series[i]
			if s.dst != id {
				continue
			}
			sums := outb
			if s.inbound {
				sums, hasIn = in, true
			}
			for p := range npts {
				last := cur - int64(npts-1-p)*ss
				a.sumLocked(s, last-ss+1, last, &sums[p])
			}
		}
	}
	if !hasIn {
		in = outb
	}
	for p := range npts {
		last := cur - int64(npts-1-p)*ss
		end := time.Unix(0, (last+1)*a.width)
		if end.After(now) {
			end = now
		}
		out.Points[p] = telemetry.Point{Time: end, Golden: in[p].golden(stepD)}
	}
	return out
}

// Errors returns up to limit (all when limit <= 0) of the recent failed
// requests whose source or destination is service ("" for every service),
// newest first. The result is owned by the caller.
func (a *Aggregator) Errors(service string, limit int) []telemetry.TapEvent {
	a.mu.RLock()
	defer a.mu.RUnlock()
	out := []telemetry.TapEvent{}
	for i := range a.errLen {
		e := &a.errs[mod(int64(a.errNext-1-i), int64(len(a.errs)))]
		if service != "" && e.Source != service && e.Destination != service {
			continue
		}
		out = append(out, *e)
		if limit > 0 && len(out) >= limit {
			break
		}
	}
	return out
}

// Processes returns the proxies that reported within Options.ProxyExpiry
// of the handler's clock, sorted by proxy id. The result is owned by the
// caller.
func (a *Aggregator) Processes() []telemetry.ProxyProcess {
	horizon := a.opts.Clock().Add(-a.opts.ProxyExpiry)
	a.mu.RLock()
	out := make([]telemetry.ProxyProcess, 0, len(a.proxies))
	for _, ps := range a.proxies {
		if !ps.p.LastReport.Before(horizon) {
			out = append(out, ps.p)
		}
	}
	a.mu.RUnlock()
	slices.SortFunc(out, func(x, y telemetry.ProxyProcess) int { return strings.Compare(x.Proxy, y.Proxy) })
	return out
}
