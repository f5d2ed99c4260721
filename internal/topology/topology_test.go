package topology

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"verge.dev/verge/internal/telemetry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// t0 is slot-aligned.
var t0 = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

// lat is a histogram with n requests in bucket i.
func lat(counts map[int]uint64) []uint64 {
	out := make([]uint64, len(telemetry.LatencyBuckets)+1)
	for i, n := range counts {
		out[i] = n
	}
	return out
}

func edge(dir, src, srcZone, dst, dstZone string, req, fail uint64, hist map[int]uint64) telemetry.EdgeStats {
	return telemetry.EdgeStats{
		EdgeKey: telemetry.EdgeKey{Direction: dir, Protocol: "http", Source: src, SourceZone: srcZone,
			Destination: dst, DestinationZone: dstZone},
		Requests: req, Failures: fail, Latency: lat(hist),
	}
}

func report(name, ns, svc, zone string, edges ...telemetry.EdgeStats) *telemetry.Report {
	return &telemetry.Report{
		Proxy: name + "." + ns, Workload: ns + "/" + name, Service: svc, Namespace: ns, Zone: zone,
		Start: t0.Add(-5 * time.Second), End: t0, Edges: edges,
	}
}

func golden(req, fail uint64, window time.Duration, hist map[int]uint64) telemetry.Golden {
	g := telemetry.Golden{Requests: req, Failures: fail, SuccessRate: 1}
	if req > 0 {
		g.RequestRate = float64(req) / window.Seconds()
		g.SuccessRate = 1 - float64(fail)/float64(req)
		g.P50 = telemetry.Quantile(0.5, lat(hist))
		g.P99 = telemetry.Quantile(0.99, lat(hist))
	}
	return g
}

func TestTopology(t *testing.T) {
	a := New(Options{})
	front := map[int]uint64{3: 90, 6: 10}
	back := map[int]uint64{2: 95, 5: 5}
	anon := map[int]uint64{1: 20}
	// frontend (zone a) calls backend (zone b); both proxies report the
	// edge, and backend also serves a caller without a proxy. db has no
	// proxy: only its caller reports it.
	a.Ingest(report("front-1", "default", "frontend", "a",
		edge(telemetry.Outbound, "frontend.default", "a", "backend.default", "b", 100, 5, front),
	), t0.Add(time.Second))
	a.Ingest(report("back-1", "default", "backend", "b",
		edge(telemetry.Inbound, "frontend.default", "", "backend.default", "b", 60, 3, back),
		edge(telemetry.Inbound, "unknown", "", "backend.default", "b", 20, 0, anon),
		edge(telemetry.Outbound, "backend.default", "b", "db.default", "", 40, 40, anon),
	), t0.Add(2*time.Second))
	a.Ingest(report("back-2", "default", "backend", "b",
		edge(telemetry.Inbound, "frontend.default", "", "backend.default", "b", 40, 2, back),
	), t0.Add(3*time.Second))

	got := a.Topology(time.Minute, t0.Add(5*time.Second))
	w := time.Minute
	backIn := map[int]uint64{2: 190, 5: 10, 1: 20}
	want := telemetry.Topology{
		Window: w, Generated: t0.Add(5 * time.Second),
		Nodes: []telemetry.Node{
			{Service: "backend.default", Zones: []string{"b"}, Workloads: 2, Golden: golden(120, 5, w, backIn)},
			{Service: "db.default", Golden: golden(40, 40, w, anon)},
			{Service: "frontend.default", Zones: []string{"a"}, Workloads: 1, Golden: golden(0, 0, w, nil)},
			{Service: "unknown", Golden: golden(0, 0, w, nil)},
		},
		Edges: []telemetry.Edge{
			{Source: "backend.default", Destination: "db.default", SourceZone: "b", Protocol: "http", Golden: golden(40, 40, w, anon)},
			{Source: "frontend.default", Destination: "backend.default", SourceZone: "a", DestinationZone: "b", CrossZone: true,
				Protocol: "http", Golden: golden(100, 5, w, front)},
			{Source: "unknown", Destination: "backend.default", DestinationZone: "b", Protocol: "http", Golden: golden(20, 0, w, anon)},
		},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Topology (-want +got):\n%s", diff)
	}
}

func TestTopologyCallerWithoutOutbound(t *testing.T) {
	a := New(Options{})
	// The caller's proxy reported nothing: the callee's inbound view
	// stands for the edge.
	a.Ingest(report("back-1", "default", "backend", "",
		edge(telemetry.Inbound, "frontend.default", "a", "backend.default", "b", 10, 1, map[int]uint64{4: 10}),
	), t0)
	got := a.Topology(time.Minute, t0)
	want := []telemetry.Edge{{Source: "frontend.default", Destination: "backend.default", SourceZone: "a", DestinationZone: "b",
		CrossZone: true, Protocol: "http", Golden: golden(10, 1, time.Minute, map[int]uint64{4: 10})}}
	if diff := cmp.Diff(want, got.Edges); diff != "" {
		t.Errorf("edges (-want +got):\n%s", diff)
	}
}

func TestTopologyWindows(t *testing.T) {
	a := New(Options{})
	h := map[int]uint64{4: 10}
	a.Ingest(report("front-1", "default", "frontend", "",
		edge(telemetry.Outbound, "frontend.default", "", "backend.default", "", 10, 0, h)), t0)
	a.Ingest(report("front-1", "default", "frontend", "",
		edge(telemetry.Outbound, "frontend.default", "", "backend.default", "", 30, 0, h)), t0.Add(5*time.Minute))

	for _, tc := range []struct {
		name   string
		window time.Duration
		at     time.Duration
		want   uint64 // requests on the edge; 0: no edge
		wantW  time.Duration
	}{
		{"last minute", time.Minute, 5 * time.Minute, 30, time.Minute},
		{"ten minutes", 10 * time.Minute, 5 * time.Minute, 40, 10 * time.Minute},
		{"rounded up to a slot", 15 * time.Second, 5 * time.Minute, 30, 20 * time.Second},
		{"capped at retention", time.Hour, 5 * time.Minute, 40, 15 * time.Minute},
		{"all expired", 15 * time.Minute, 21 * time.Minute, 0, 15 * time.Minute},
		{"first expired", 15 * time.Minute, 15*time.Minute + 10*time.Second, 30, 15 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := a.Topology(tc.window, t0.Add(tc.at))
			if got.Window != tc.wantW {
				t.Errorf("Window = %s, want %s", got.Window, tc.wantW)
			}
			var n uint64
			for _, e := range got.Edges {
				n += e.Requests
			}
			if n != tc.want {
				t.Errorf("requests = %d, want %d (edges %+v)", n, tc.want, got.Edges)
			}
			if tc.want > 0 && got.Edges[0].RequestRate != float64(tc.want)/tc.wantW.Seconds() {
				t.Errorf("RequestRate = %v, want %v", got.Edges[0].RequestRate, float64(tc.want)/tc.wantW.Seconds())
			}
		})
	}

	// A report after the retention prunes the idle series.
	a.Ingest(report("other-1", "default", "other", ""), t0.Add(30*time.Minute))
	a.mu.RLock()
	n, names := len(a.series), len(a.nameOf)
	a.mu.RUnlock()
	if n != 0 || names != 2 { // "unknown" and other.default
		t.Errorf("after retention: %d series, %d names; want 0 and 2", n, names)
	}
}

func TestSeries(t *testing.T) {
	a := New(Options{})
	h := map[int]uint64{4: 1}
	for i := range 6 { // one report per slot, i+1 requests
		a.Ingest(report("back-1", "default", "backend", "",
			edge(telemetry.Inbound, "unknown", "", "backend.default", "", uint64(i+1), 0, map[int]uint64{4: uint64(i + 1)})),
			t0.Add(time.Duration(i)*10*time.Second))
	}
	// The caller's view of backend is not mixed in: backend has inbound.
	a.Ingest(report("front-1", "default", "frontend", "",
		edge(telemetry.Outbound, "frontend.default", "", "backend.default", "", 1000, 0, h)), t0)
	now := t0.Add(55 * time.Second)
	got := a.Series("backend.default", time.Minute, 20*time.Second, now)
	step := 20 * time.Second
	want := telemetry.Series{Service: "backend.default", Step: step, Points: []telemetry.Point{
		{Time: t0.Add(20 * time.Second), Golden: golden(1+2, 0, step, map[int]uint64{4: 3})},
		{Time: t0.Add(40 * time.Second), Golden: golden(3+4, 0, step, map[int]uint64{4: 7})},
		{Time: now, Golden: golden(5+6, 0, step, map[int]uint64{4: 11})},
	}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Series (-want +got):\n%s", diff)
	}
	if got := a.Series("nobody.default", time.Minute, 10*time.Second, now); len(got.Points) != 6 || got.Points[5].Requests != 0 {
		t.Errorf("Series of an unknown service = %+v, want 6 empty points", got)
	}
}

func TestProcesses(t *testing.T) {
	now := t0
	a := New(Options{Clock: func() time.Time { return now }})
	r := report("web-1", "prod", "web", "z1")
	r.AdminAddress = "127.0.0.1:15000"
	r.Process = telemetry.ProcessStats{CPUSeconds: 1, RSSBytes: 10 << 20, Goroutines: 12}
	a.Ingest(r, t0)
	r2 := *r
	r2.Process.CPUSeconds = 3.5
	a.Ingest(&r2, t0.Add(10*time.Second))
	now = t0.Add(10 * time.Second)
	want := []telemetry.ProxyProcess{{Proxy: "web-1.prod", Workload: "prod/web-1", Service: "web.prod", Zone: "z1",
		AdminAddress: "127.0.0.1:15000", Process: r2.Process, CPUPercent: 25, LastReport: t0.Add(10 * time.Second)}}
	if diff := cmp.Diff(want, a.Processes()); diff != "" {
		t.Errorf("Processes (-want +got):\n%s", diff)
	}
	// A restarted proxy (CPU total went down) has no rate yet.
	r3 := r2
	r3.Process.CPUSeconds = 0.1
	a.Ingest(&r3, t0.Add(20*time.Second))
	now = t0.Add(20 * time.Second)
	if got := a.Processes()[0].CPUPercent; got != 0 {
		t.Errorf("CPUPercent after restart = %v, want 0", got)
	}
	now = t0.Add(20*time.Second + DefaultProxyExpiry + time.Second)
	if got := a.Processes(); len(got) != 0 {
		t.Errorf("Processes after expiry = %+v, want none", got)
	}
}

func TestErrors(t *testing.T) {
	a := New(Options{MaxErrors: 3})
	ev := func(i int, dst string) telemetry.TapEvent {
		return telemetry.TapEvent{Time: t0.Add(time.Duration(i) * time.Second), Source: "unknown", Destination: dst,
			Direction: telemetry.Inbound, Protocol: "http", Status: 503, GRPCStatus: -1}
	}
	r := report("a-1", "default", "a", "")
	r.Errors = []telemetry.TapEvent{ev(1, "a.default"), ev(2, "b.default"), ev(3, "a.default")}
	a.Ingest(r, t0)
	r.Errors = []telemetry.TapEvent{ev(4, "a.default")}
	a.Ingest(r, t0)
	for _, tc := range []struct {
		service string
		limit   int
		want    []telemetry.TapEvent
	}{
		{"", 0, []telemetry.TapEvent{ev(4, "a.default"), ev(3, "a.default"), ev(2, "b.default")}},
		{"", 2, []telemetry.TapEvent{ev(4, "a.default"), ev(3, "a.default")}},
		{"a.default", 0, []telemetry.TapEvent{ev(4, "a.default"), ev(3, "a.default")}},
		{"b.default", 0, []telemetry.TapEvent{ev(2, "b.default")}},
		{"c.default", 0, []telemetry.TapEvent{}},
	} {
		t.Run(fmt.Sprintf("%s/%d", tc.service, tc.limit), func(t *testing.T) {
			if diff := cmp.Diff(tc.want, a.Errors(tc.service, tc.limit)); diff != "" {
				t.Errorf("Errors (-want +got):\n%s", diff)
			}
		})
	}
}

func TestTap(t *testing.T) {
	a := New(Options{MaxTaps: 2})
	if resp := a.Ingest(report("a-1", "default", "a", ""), t0); len(resp.Taps) != 0 || resp.Interval != 0 {
		t.Fatalf("response without taps = %+v", resp)
	}
	ctx, cancel := context.WithCancel(t.Context())
	events, err := a.Tap(ctx, "a.default", 500)
	if err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithCancel(t.Context())
	defer cancel2()
	other, err := a.Tap(ctx2, "b.default", 5)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Tap(t.Context(), "c.default", 5); err != ErrTooManyTaps {
		t.Fatalf("third tap: err = %v, want ErrTooManyTaps", err)
	}
	resp := a.Ingest(report("a-1", "default", "a", ""), t0)
	if len(resp.Taps) != 2 || resp.Interval != time.Second {
		t.Fatalf("response = %+v, want 2 taps and a 1s interval", resp)
	}
	var id string
	for _, tr := range resp.Taps {
		if tr.Service == "a.default" {
			id = tr.ID
			if tr.MaxPerSecond != MaxTapRate {
				t.Errorf("MaxPerSecond = %d, want clamped to %d", tr.MaxPerSecond, MaxTapRate)
			}
		}
	}
	// More events than the subscriber buffers: Ingest drops, never blocks.
	r := report("a-1", "default", "a", "")
	for i := range defaultTapBuffer + 10 {
		r.Taps = append(r.Taps, telemetry.TapEvent{TapID: id, Path: fmt.Sprintf("/%d", i)})
	}
	r.Taps = append(r.Taps, telemetry.TapEvent{TapID: "gone", Path: "/other"})
	a.Ingest(r, t0)
	for i := range defaultTapBuffer {
		e := <-events
		if e.Path != fmt.Sprintf("/%d", i) {
			t.Fatalf("event %d: path %q", i, e.Path)
		}
	}
	select {
	case e := <-other:
		t.Fatalf("other tap got %+v", e)
	default:
	}
	cancel()
	deadline := time.After(10 * time.Second)
	for open := true; open; {
		select {
		case _, open = <-events:
		case <-deadline:
			t.Fatal("tap channel not closed after cancel")
		}
	}
	if resp := a.Ingest(report("a-1", "default", "a", ""), t0); len(resp.Taps) != 1 {
		t.Errorf("after cancel: %d taps, want 1", len(resp.Taps))
	}
}
