package topology

import (
	"fmt"
	"testing"
	"time"

	"verge.dev/verge/internal/telemetry"
)

// BenchmarkTopology500 is the scale: 500 services, 5,000 proxies
// reporting every 10 s (10 per service), ~5,000 caller → callee edges
// (each service calls 10 others) seen from both ends, over 15 minutes of
// data; it measures one Topology over the last minute.
func BenchmarkTopology500(b *testing.B) {
	const (
		services  = 500
		perSvc    = 10
		callees   = 10
		retention = 15 * time.Minute
	)
	a := New(Options{})
	name := func(i int) string { return fmt.Sprintf("svc-%03d.ns-%d", i, i%20) }
	hist := make([]uint64, len(telemetry.LatencyBuckets)+1)
	hist[3], hist[5], hist[9] = 5, 3, 2
	reports := make([]*telemetry.Report, 0, services*perSvc)
	for s := range services {
		for w := range perSvc {
			r := &telemetry.Report{Proxy: fmt.Sprintf("w%d.ns-%d", w, s%20), Workload: fmt.Sprintf("ns-%d/w%d", s%20, w),
				Service: fmt.Sprintf("svc-%03d", s), Namespace: fmt.Sprintf("ns-%d", s%20), Zone: fmt.Sprintf("z%d", s%3)}
			for c := range callees {
				callee := (s + 1 + c*7) % services
				caller := ((s-1-c*7)%services + services) % services
				r.Edges = append(r.Edges,
					telemetry.EdgeStats{EdgeKey: telemetry.EdgeKey{Direction: telemetry.Outbound, Protocol: "http",
						Source: name(s), SourceZone: r.Zone, Destination: name(callee), DestinationZone: fmt.Sprintf("z%d", callee%3)},
						Requests: 10, Failures: 1, Latency: hist},
					telemetry.EdgeStats{EdgeKey: telemetry.EdgeKey{Direction: telemetry.Inbound, Protocol: "http",
						Source: name(caller), SourceZone: fmt.Sprintf("z%d", caller%3), Destination: name(s), DestinationZone: r.Zone},
						Requests: 10, Failures: 1, Latency: hist})
			}
			reports = append(reports, r)
		}
	}
	start := t0
	for at := time.Duration(0); at < retention; at += DefaultSlot {
		for _, r := range reports {
			a.Ingest(r, start.Add(at))
		}
	}
	now := start.Add(retention - time.Second)
	topo := a.Topology(time.Minute, now)
	if len(topo.Nodes) != services || len(topo.Edges) != services*callees {
		b.Fatalf("topology has %d nodes and %d edges, want %d and %d", len(topo.Nodes), len(topo.Edges), services, services*callees)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		a.Topology(time.Minute, now)
	}
}
