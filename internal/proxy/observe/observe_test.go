package observe

import (
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/goleak"

	"verge.dev/verge/internal/telemetry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func testEdge() *Edge {
	return &Edge{
		Direction:   telemetry.Outbound,
		Protocol:    "http",
		Source:      Peer{Service: "web.shop", Namespace: "shop", Identity: "spiffe://verge.local/ns/shop/sa/web", Zone: "z1"},
		Destination: Peer{Service: "cart.shop", Namespace: "shop", Zone: "z2"},
		Route:       "cart",
	}
}

// series returns name's samples in reg keyed by their labels other than
// the edge labels (which tests set once and check in TestScrape), protocol
// excepted.
func series(t *testing.T, reg *prometheus.Registry, name string) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			var key []string
			for _, lp := range m.GetLabel() {
				if lp.GetName() != "protocol" && slices.Contains(edgeLabels, lp.GetName()) {
					continue
				}
				key = append(key, lp.GetName()+"="+lp.GetValue())
			}
			k := strings.Join(key, ",")
			switch {
			case m.Counter != nil:
				out[k] = m.Counter.GetValue()
			case m.Gauge != nil:
				out[k] = m.Gauge.GetValue()
			case m.Histogram != nil:
				out[k] = float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return out
}

func TestRequestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	o := New(Options{Registry: reg, Proxy: "web-1.shop", Service: "web.shop"})
	e := testEdge()
	g := testEdge()
	g.Protocol = "grpc"
	for _, r := range []Request{
		{Edge: e, Status: 200, GRPCStatus: -1, BytesIn: 10, BytesOut: 100, Duration: time.Millisecond},
		{Edge: e, Status: 204, GRPCStatus: -1, Duration: 2 * time.Millisecond},
		{Edge: e, Status: 503, GRPCStatus: -1, BytesOut: 19, Duration: 3 * time.Second},
		{Edge: e, Status: 0, GRPCStatus: -1},
		{Edge: g, Status: 200, GRPCStatus: 0, BytesIn: 5, BytesOut: 7},
		{Edge: g, Status: 200, GRPCStatus: 14},
		{Edge: g, Status: 200, GRPCStatus: 99},
	} {
		o.Request(&r)
	}

	tests := []struct {
		metric string
		want   map[string]float64
	}{
		{"verge_requests_total", map[string]float64{
			"grpc_code=,protocol=http,response_code_class=2xx":            2,
			"grpc_code=,protocol=http,response_code_class=5xx":            1,
			"grpc_code=,protocol=http,response_code_class=0xx":            1,
			"grpc_code=OK,protocol=grpc,response_code_class=2xx":          1,
			"grpc_code=UNAVAILABLE,protocol=grpc,response_code_class=2xx": 1,
			"grpc_code=UNKNOWN,protocol=grpc,response_code_class=2xx":     1,
		}},
		// Histograms: sample counts.
		{"verge_request_duration_seconds", map[string]float64{
			"protocol=http,response_code_class=2xx": 2,
			"protocol=http,response_code_class=5xx": 1,
			"protocol=http,response_code_class=0xx": 1,
			"protocol=grpc,response_code_class=2xx": 3,
		}},
		{"verge_request_bytes_total", map[string]float64{"protocol=http": 10, "protocol=grpc": 5}},
		{"verge_response_bytes_total", map[string]float64{"protocol=http": 119, "protocol=grpc": 7}},
	}
	for _, tc := range tests {
		t.Run(tc.metric, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, series(t, reg, tc.metric)); diff != "" {
				t.Errorf("%s (-want +got):\n%s", tc.metric, diff)
			}
		})
	}
}

// TestScrape checks the exposition a real scrape over HTTP sees, edge
// labels included.
func TestScrape(t *testing.T) {
	reg := prometheus.NewRegistry()
	o := New(Options{Registry: reg})
	e := testEdge()
	o.Request(&Request{Edge: e, Status: 201, GRPCStatus: -1, BytesIn: 3, BytesOut: 4})
	tcp := testEdge()
	tcp.Protocol = "tcp"
	tcp.Route = ""
	o.ConnOpened(tcp)
	o.ConnOpened(tcp)
	o.TCP(&Conn{Edge: tcp, BytesIn: 11, BytesOut: 22})

	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	var got []string
	for line := range strings.Lines(string(body)) {
		if strings.HasPrefix(line, "verge_") && !strings.HasPrefix(line, "verge_request_duration_seconds") {
			got = append(got, strings.TrimSuffix(line, "\n"))
		}
	}

	const dst = `destination_namespace="shop",destination_service="cart.shop",destination_zone="z2",direction="outbound",`
	const src = `source_identity="spiffe://verge.local/ns/shop/sa/web",source_namespace="shop",source_service="web.shop",source_zone="z1"`
	want := []string{
		`verge_access_log_dropped_total 0`,
		`verge_request_bytes_total{` + dst + `protocol="http",route="cart",` + src + `} 3`,
		`verge_requests_total{` + dst + `grpc_code="",protocol="http",response_code_class="2xx",route="cart",` + src + `} 1`,
		`verge_response_bytes_total{` + dst + `protocol="http",route="cart",` + src + `} 4`,
		`verge_tcp_active_connections{` + dst + `protocol="tcp",route="",` + src + `} 1`,
		`verge_tcp_connections_closed_total{` + dst + `protocol="tcp",route="",` + src + `} 1`,
		`verge_tcp_connections_opened_total{` + dst + `protocol="tcp",route="",` + src + `} 2`,
		`verge_tcp_received_bytes_total{` + dst + `protocol="tcp",route="",` + src + `} 11`,
		`verge_tcp_sent_bytes_total{` + dst + `protocol="tcp",route="",` + src + `} 22`,
	}
	slices.Sort(got)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("scraped series (-want +got):\n%s", diff)
	}
	// A TCP-only edge exports no HTTP series and vice versa.
	if diff := cmp.Diff(map[string]float64{"protocol=http,response_code_class=2xx": 1},
		series(t, reg, "verge_request_duration_seconds")); diff != "" {
		t.Errorf("verge_request_duration_seconds (-want +got):\n%s", diff)
	}
}

// TestEdgeCopy checks that a copy of a used Edge, changed before its own
// first use, gets its own labels rather than its original's handles.
func TestEdgeCopy(t *testing.T) {
	reg := prometheus.NewRegistry()
	o := New(Options{Registry: reg})
	e := testEdge()
	o.Request(&Request{Edge: e, Status: 200, GRPCStatus: -1})
	c := *e
	c.Route = "other"
	o.Request(&Request{Edge: &c, Status: 200, GRPCStatus: -1})

	got := map[string]float64{}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "verge_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "route" {
					got[lp.GetValue()] += m.Counter.GetValue()
				}
			}
		}
	}
	if diff := cmp.Diff(map[string]float64{"cart": 1, "other": 1}, got); diff != "" {
		t.Errorf("requests by route (-want +got):\n%s", diff)
	}

	// Two Observers on one Edge keep separate counts.
	o2 := New(Options{Registry: prometheus.NewRegistry()})
	o2.Request(&Request{Edge: e, Status: 200, GRPCStatus: -1})
	o.Request(&Request{Edge: e, Status: 200, GRPCStatus: -1})
	if n := o2.Report().Edges[0].Requests; n != 1 {
		t.Errorf("second observer requests = %d, want 1", n)
	}
}

func TestRequestDoesNotAllocate(t *testing.T) {
	o := New(Options{Registry: prometheus.NewRegistry()})
	l, err := OpenAccessLog(t.TempDir()+"/access.log", prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	r := benchRequest(testEdge())
	r.Log = l
	o.Request(r) // first use resolves the Edge
	// An active tap on another service costs a check, not an event.
	o.SetTaps([]telemetry.TapRequest{{ID: "t", Service: "pay.shop"}})
	c := &Conn{Edge: testEdge(), BytesIn: 1, BytesOut: 2, Log: l}
	c.Edge.Protocol = "tcp"
	o.ConnOpened(c.Edge)
	o.TCP(c)
	if n := testing.AllocsPerRun(1000, func() { o.Request(r) }); n != 0 {
		t.Errorf("Request allocates %v times per call, want 0", n)
	}
	if n := testing.AllocsPerRun(1000, func() { o.ConnOpened(c.Edge); o.TCP(c) }); n != 0 {
		t.Errorf("ConnOpened+TCP allocate %v times per call, want 0", n)
	}
}
