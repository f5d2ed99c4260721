package observe

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"verge.dev/verge/internal/telemetry"
)

func latency(slots map[int]uint64) []uint64 {
	l := make([]uint64, len(telemetry.LatencyBuckets)+1)
	for i, n := range slots {
		l[i] = n
	}
	return l
}

func TestReportCommit(t *testing.T) {
	clock := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	o := New(Options{Proxy: "web-1.shop", Workload: "shop/web-1", Service: "web.shop", Zone: "z1", AdminAddress: "127.0.0.1:15000"})
	o.now = func() time.Time { return clock }
	o.start = clock

	out := testEdge()
	// A second Edge with the same EdgeKey but another route adds to the
	// same EdgeStats.
	out2 := testEdge()
	out2.Route = "cart-v2"
	in := &Edge{Direction: telemetry.Inbound, Protocol: "http", Destination: Peer{Service: "web.shop"}}
	tcp := &Edge{Direction: telemetry.Outbound, Protocol: "tcp", Source: Peer{Service: "web.shop"}, Destination: Peer{Service: "db.shop"}}

	o.Request(&Request{Edge: out, Status: 200, GRPCStatus: -1, Duration: 300 * time.Microsecond, BytesIn: 1, BytesOut: 2})
	o.Request(&Request{Edge: out2, Status: 503, GRPCStatus: -1, Duration: 20 * time.Second, BytesOut: 5})
	o.Request(&Request{Edge: in, Status: 404, GRPCStatus: -1, Duration: 3 * time.Millisecond})
	o.ConnOpened(tcp)
	o.TCP(&Conn{Edge: tcp, Duration: 2 * time.Second, BytesIn: 100, BytesOut: 200})

	clock = clock.Add(5 * time.Second)
	r1 := o.Report()
	want := &telemetry.Report{
		Proxy: "web-1.shop", Workload: "shop/web-1", Service: "web", Namespace: "shop", Zone: "z1",
		Start: clock.Add(-5 * time.Second), End: clock, AdminAddress: "127.0.0.1:15000",
		Edges: []telemetry.EdgeStats{
			{
				EdgeKey:  telemetry.EdgeKey{Direction: "inbound", Protocol: "http", Source: "unknown", Destination: "web.shop"},
				Requests: 1, Latency: latency(map[int]uint64{3: 1}),
			},
			{
				EdgeKey:  telemetry.EdgeKey{Direction: "outbound", Protocol: "http", Source: "web.shop", SourceZone: "z1", Destination: "cart.shop", DestinationZone: "z2"},
				Requests: 2, Failures: 1, BytesIn: 1, BytesOut: 7, Latency: latency(map[int]uint64{0: 1, 14: 1}),
			},
			{
				EdgeKey:  telemetry.EdgeKey{Direction: "outbound", Protocol: "tcp", Source: "web.shop", Destination: "db.shop"},
				Requests: 1, BytesIn: 100, BytesOut: 200, Latency: latency(map[int]uint64{11: 1}),
			},
		},
		Errors: []telemetry.TapEvent{{
			Proxy: "web-1.shop", Direction: "outbound", Protocol: "http", Source: "web.shop",
			Identity: "spiffe://verge.local/ns/shop/sa/web", Destination: "cart.shop", Status: 503, GRPCStatus: -1, Duration: 20 * time.Second,
		}},
	}
	ignoreProcess := cmpopts.IgnoreFields(telemetry.Report{}, "Process")
	if diff := cmp.Diff(want, r1, ignoreProcess); diff != "" {
		t.Errorf("first report (-want +got):\n%s", diff)
	}
	if r1.Process.Goroutines == 0 || r1.Process.RSSBytes == 0 || r1.Process.CPUSeconds == 0 {
		t.Errorf("process stats = %+v, want all set", r1.Process)
	}

	// Traffic between Report and Commit stays for the next report.
	o.Request(&Request{Edge: out, Status: 200, GRPCStatus: -1, Duration: 300 * time.Microsecond})
	o.Commit(r1)
	clock = clock.Add(5 * time.Second)
	r2 := o.Report()
	want2 := &telemetry.Report{
		Proxy: "web-1.shop", Workload: "shop/web-1", Service: "web", Namespace: "shop", Zone: "z1",
		Start: clock.Add(-5 * time.Second), End: clock, AdminAddress: "127.0.0.1:15000",
		Edges: []telemetry.EdgeStats{{
			EdgeKey:  telemetry.EdgeKey{Direction: "outbound", Protocol: "http", Source: "web.shop", SourceZone: "z1", Destination: "cart.shop", DestinationZone: "z2"},
			Requests: 1, Latency: latency(map[int]uint64{0: 1}),
		}},
	}
	if diff := cmp.Diff(want2, r2, ignoreProcess); diff != "" {
		t.Errorf("report after commit (-want +got):\n%s", diff)
	}

	// A report that is never committed is folded into the next one.
	clock = clock.Add(5 * time.Second)
	r3 := o.Report()
	if diff := cmp.Diff(want2.Edges, r3.Edges); diff != "" {
		t.Errorf("report without commit (-want +got):\n%s", diff)
	}
	o.Commit(r3)
	if r4 := o.Report(); len(r4.Edges) != 0 || len(r4.Errors) != 0 {
		t.Errorf("report after committing everything = %+v, want no edges or errors", r4)
	}
}

// TestReportConcurrent records from several goroutines while reports are
// taken and committed; the committed totals must equal what was recorded.
func TestReportConcurrent(t *testing.T) {
	o := New(Options{})
	e := testEdge()
	const workers, perWorker = 4, 2000
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range perWorker {
				status := 200
				if i%10 == 0 {
					status = 500
				}
				o.Request(&Request{Edge: e, Status: status, GRPCStatus: -1, BytesOut: 3})
			}
		})
	}
	var total, failures, bytesOut, latencyCount uint64
	collect := func() {
		r := o.Report()
		for _, es := range r.Edges {
			if es.Failures > es.Requests {
				t.Errorf("report has %d failures > %d requests", es.Failures, es.Requests)
			}
			total += es.Requests
			failures += es.Failures
			bytesOut += es.BytesOut
			for _, n := range es.Latency {
				latencyCount += n
			}
		}
		o.Commit(r)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
			collect()
		}
	}
	collect()
	const n = workers * perWorker
	got := fmt.Sprint(total, failures, bytesOut, latencyCount)
	if want := fmt.Sprint(n, n/10, 3*n, n); got != want {
		t.Errorf("committed requests, failures, bytes out, latency counts = %s, want %s", got, want)
	}
}

func TestTaps(t *testing.T) {
	o := New(Options{Proxy: "web-1.shop"})
	e := testEdge() // web.shop -> cart.shop
	other := &Edge{Direction: "outbound", Protocol: "http", Source: Peer{Service: "web.shop"}, Destination: Peer{Service: "pay.shop"}}

	if o.Tapping(e) {
		t.Fatal("Tapping before SetTaps = true")
	}
	o.SetTaps([]telemetry.TapRequest{{ID: "t1", Service: "cart.shop", MaxPerSecond: 3}})
	if !o.Tapping(e) || o.Tapping(other) {
		t.Fatalf("Tapping(cart edge), Tapping(pay edge) = %v, %v, want true, false", o.Tapping(e), o.Tapping(other))
	}
	start := time.Now()
	path := []byte("/items/1")
	for i := range 10 {
		path[len(path)-1] = byte('0' + i)
		// The path aliases a buffer the caller reuses: the event must
		// keep a copy.
		o.Request(&Request{Edge: e, Start: start, Status: 200, GRPCStatus: -1, Method: "GET", Path: string(path)})
		o.Request(&Request{Edge: other, Status: 200, GRPCStatus: -1})
	}
	r := o.Report()
	// The rate window is per wall-clock second; the loop may straddle
	// a second boundary, which admits up to twice the rate.
	if n := len(r.Taps); n < 3 || n > 6 {
		t.Fatalf("tap events = %d, want 3 (or up to 6 across a second boundary)", n)
	}
	want := telemetry.TapEvent{
		TapID: "t1", Time: start, Proxy: "web-1.shop", Direction: "outbound", Protocol: "http",
		Source: "web.shop", Identity: "spiffe://verge.local/ns/shop/sa/web", Destination: "cart.shop",
		Method: "GET", Path: "/items/0", Status: 200, GRPCStatus: -1,
	}
	if diff := cmp.Diff(want, r.Taps[0]); diff != "" {
		t.Errorf("first tap event (-want +got):\n%s", diff)
	}
	o.Commit(r)
	if r := o.Report(); len(r.Taps) != 0 {
		t.Errorf("tap events after commit = %d, want 0", len(r.Taps))
	}

	o.SetTaps(nil)
	if o.Tapping(e) {
		t.Error("Tapping after SetTaps(nil) = true")
	}
}

func TestTapBufferBounded(t *testing.T) {
	o := New(Options{})
	e := testEdge()
	o.SetTaps([]telemetry.TapRequest{{ID: "t", Service: "web.shop", MaxPerSecond: 1 << 30}})
	for range maxTapEvents + 50 {
		o.Request(&Request{Edge: e, Status: 200, GRPCStatus: -1})
	}
	if n := len(o.Report().Taps); n != maxTapEvents {
		t.Errorf("tap events = %d, want the bound %d", n, maxTapEvents)
	}
}

func TestErrorsKeepMostRecent(t *testing.T) {
	o := New(Options{MaxErrors: 3})
	e := testEdge()
	// Each failure below carries its own second, so the per-second
	// limit does not apply; the ring keeps the last three.
	for i := range 5 {
		o.events.errLimit.sec.Store(0) // a new window for each
		o.Request(&Request{Edge: e, Status: 500 + i, GRPCStatus: -1, Path: fmt.Sprint("/", i)})
	}
	o.Request(&Request{Edge: e, Status: 200, GRPCStatus: 0}) // not a failure
	r := o.Report()
	var got []string
	for _, ev := range r.Errors {
		got = append(got, ev.Path)
	}
	if diff := cmp.Diff([]string{"/2", "/3", "/4"}, got); diff != "" {
		t.Errorf("errors (-want +got):\n%s", diff)
	}

	// An error recorded between Report and Commit survives the Commit.
	o.events.errLimit.sec.Store(0)
	o.Request(&Request{Edge: e, Status: 502, GRPCStatus: -1, Path: "/late"})
	o.Commit(r)
	got = nil
	for _, ev := range o.Report().Errors {
		got = append(got, ev.Path)
	}
	if diff := cmp.Diff([]string{"/late"}, got); diff != "" {
		t.Errorf("errors after commit (-want +got):\n%s", diff)
	}
}

func TestErrorsRateLimited(t *testing.T) {
	o := New(Options{MaxErrors: 5})
	e := testEdge()
	for range 100 {
		o.Request(&Request{Edge: e, Status: 503, GRPCStatus: -1})
	}
	// At most MaxErrors per second are captured; a second boundary in
	// the loop may admit another MaxErrors, which the ring bounds.
	if n := len(o.Report().Errors); n != 5 {
		t.Errorf("errors = %d, want 5", n)
	}
}
