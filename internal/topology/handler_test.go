package topology

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"verge.dev/verge/internal/telemetry"
)

// serve runs a's handler on a loopback server; reports from workload
// "default/intruder" are refused.
func serve(t *testing.T, a *Aggregator, reg prometheus.Registerer) string {
	t.Helper()
	h := a.Handler(HandlerConfig{
		Registerer: reg,
		AuthorizeReport: func(_ *http.Request, ns, name string) error {
			if name == "intruder" {
				return &Refusal{Status: http.StatusForbidden, Message: "identity mismatch for " + ns + "/" + name}
			}
			return nil
		},
	})
	hs := httptest.NewServer(h)
	t.Cleanup(hs.Close)
	return hs.URL
}

func post(t *testing.T, url string, body []byte) (int, string) {
	t.Helper()
	resp, err := http.Post(url+telemetry.ReportPath, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func get(t *testing.T, url string, v any) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusOK && v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("GET %s: %v in %s", url, err, b)
		}
	}
	return resp.StatusCode, string(b)
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestHandlerReport(t *testing.T) {
	now := t0
	a := New(Options{Clock: func() time.Time { return now }})
	reg := prometheus.NewRegistry()
	url := serve(t, a, reg)
	good := report("web-1", "default", "web", "",
		edge(telemetry.Outbound, "web.default", "", "api.default", "", 10, 1, map[int]uint64{4: 10}))
	code, body := post(t, url, mustJSON(t, good))
	if code != http.StatusOK || strings.TrimSpace(body) != "{}" {
		t.Fatalf("POST good report: %d %s", code, body)
	}
	var topo telemetry.Topology
	if code, body := get(t, url+telemetry.TopologyPath+"?window=30s", &topo); code != http.StatusOK || len(topo.Edges) != 1 || topo.Edges[0].Requests != 10 || topo.Window != 30*time.Second {
		t.Fatalf("GET topology: %d %s", code, body)
	}
	var series telemetry.Series
	if code, body := get(t, url+telemetry.SeriesPath+"?service=api.default&window=1m&step=20s", &series); code != http.StatusOK || len(series.Points) != 3 || series.Points[2].Requests != 10 {
		t.Fatalf("GET series: %d %s", code, body)
	}
	var procs []telemetry.ProxyProcess
	if code, body := get(t, url+telemetry.ProxiesPath, &procs); code != http.StatusOK || len(procs) != 1 || procs[0].Proxy != "web-1.default" {
		t.Fatalf("GET proxies: %d %s", code, body)
	}
	var errs []telemetry.TapEvent
	if code, body := get(t, url+telemetry.ErrorsPath+"?service=api.default", &errs); code != http.StatusOK || len(errs) != 0 {
		t.Fatalf("GET errors: %d %s", code, body)
	}

	mutate := func(f func(r *telemetry.Report)) []byte {
		r := *good
		r.Edges = append([]telemetry.EdgeStats(nil), good.Edges...)
		f(&r)
		return mustJSON(t, &r)
	}
	for _, tc := range []struct {
		name string
		body []byte
		code int
		want []string // substrings of the message
	}{
		{"latency length", mutate(func(r *telemetry.Report) { r.Edges[0].Latency = r.Edges[0].Latency[:3] }), 400,
			[]string{"edges[0].latency", "must have 15 counts"}},
		{"direction", mutate(func(r *telemetry.Report) { r.Edges[0].Direction = "sideways" }), 400,
			[]string{"edges[0].direction", `"sideways"`, "inbound"}},
		{"protocol", mutate(func(r *telemetry.Report) { r.Edges[0].Protocol = "udp" }), 400, []string{"edges[0].protocol"}},
		{"failures", mutate(func(r *telemetry.Report) { r.Edges[0].Failures = 11 }), 400, []string{"edges[0].failures"}},
		{"long name", mutate(func(r *telemetry.Report) { r.Edges[0].Destination = strings.Repeat("x", 300) }), 400,
			[]string{"edges[0].destination", "253"}},
		{"every problem", mutate(func(r *telemetry.Report) {
			r.Proxy = "other.default"
			r.Edges[0].Source = ""
		}), 400, []string{"proxy: Invalid value", "edges[0].source: Required"}},
		{"bad workload", mutate(func(r *telemetry.Report) { r.Workload = "web-1" }), 400, []string{"workload", "namespace/name"}},
		{"too many edges", mutate(func(r *telemetry.Report) {
			r.Edges = make([]telemetry.EdgeStats, MaxReportEdges+1)
		}), 400, []string{"edges: Too many"}},
		{"duplicate edge", mutate(func(r *telemetry.Report) { r.Edges = append(r.Edges, r.Edges[0]) }), 400,
			[]string{"edges[1]: Duplicate"}},
		{"unknown field", []byte(`{"proxy":"web-1.default","bogus":1}`), 400, []string{`unknown field "bogus"`}},
		{"trailing data", append(mustJSON(t, good), []byte(`{}`)...), 400, []string{"data after the report"}},
		{"not json", []byte(`nope`), 400, []string{"decode report"}},
		{"too large", bytes.Repeat([]byte(" "), MaxReportBytes+1), 413, []string{"exceeds"}},
		{"refused", mutate(func(r *telemetry.Report) { r.Proxy, r.Workload = "intruder.default", "default/intruder" }), 403,
			[]string{"identity mismatch"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := post(t, url, tc.body)
			if code != tc.code {
				t.Fatalf("status %d, want %d: %s", code, tc.code, body)
			}
			var st struct {
				Kind, Message string
			}
			if err := json.Unmarshal([]byte(body), &st); err != nil || st.Kind != "Status" {
				t.Fatalf("body is not a Status: %s", body)
			}
			for _, w := range tc.want {
				if !strings.Contains(st.Message, w) {
					t.Errorf("message %q does not contain %q", st.Message, w)
				}
			}
		})
	}
	if got := reportsCounted(t, reg, "accepted"); got != 1 {
		t.Errorf("accepted reports = %v, want 1", got)
	}

	for _, q := range []struct{ path, want string }{
		{telemetry.TopologyPath + "?window=2h", "window: 2h0m0s must be between"},
		{telemetry.TopologyPath + "?window=soon", `is not a duration`},
		{telemetry.SeriesPath, "service: Required value"},
		{telemetry.SeriesPath + "?service=a.default&step=1s", "step: 1s must be between"},
		{telemetry.ErrorsPath + "?limit=0", "limit"},
		{telemetry.TapPath + "?service=a.default&rate=1000", "rate"},
	} {
		if code, body := get(t, url+q.path, nil); code != http.StatusBadRequest || !strings.Contains(body, q.want) {
			t.Errorf("GET %s: %d %s, want 400 with %q", q.path, code, body, q.want)
		}
	}
}

// reportsCounted is verge_telemetry_reports_total{result} in reg.
func reportsCounted(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "verge_telemetry_reports_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("verge_telemetry_reports_total{result=%q} not found", result)
	return 0
}

func TestHandlerTap(t *testing.T) {
	a := New(Options{})
	url := serve(t, a, nil)
	resp, err := http.Get(url + telemetry.TapPath + "?service=api.default&max=2&rate=3")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != http.StatusOK || ct != "application/x-ndjson" {
		t.Fatalf("tap: %d %s", resp.StatusCode, ct)
	}
	// The headers came back, so the tap is registered: a proxy's report
	// learns of it and sends events for it.
	r := report("web-1", "default", "web", "")
	code, body := post(t, url, mustJSON(t, r))
	var rr telemetry.ReportResponse
	if err := json.Unmarshal([]byte(body), &rr); code != http.StatusOK || err != nil || len(rr.Taps) != 1 {
		t.Fatalf("report response: %d %s", code, body)
	}
	if want := (telemetry.TapRequest{ID: rr.Taps[0].ID, Service: "api.default", MaxPerSecond: 3}); rr.Taps[0] != want || rr.Interval != time.Second {
		t.Fatalf("tap request = %+v interval %s, want %+v and 1s", rr.Taps[0], rr.Interval, want)
	}
	var sent []telemetry.TapEvent
	for i := range 3 {
		sent = append(sent, telemetry.TapEvent{TapID: rr.Taps[0].ID, Time: t0.Add(time.Duration(i) * time.Second),
			Proxy: "web-1.default", Direction: telemetry.Outbound, Protocol: "http", Source: "web.default",
			Destination: "api.default", Method: "GET", Path: "/items", Status: 200, GRPCStatus: -1, Duration: 3 * time.Millisecond})
	}
	r.Taps = sent
	if code, body := post(t, url, mustJSON(t, r)); code != http.StatusOK {
		t.Fatalf("report with taps: %d %s", code, body)
	}
	var got []telemetry.TapEvent
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var e telemetry.TapEvent
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		got = append(got, e)
	}
	if diff := cmp.Diff(sent[:2], got); diff != "" {
		t.Errorf("tap events (-want +got):\n%s", diff)
	}
	// The stream ended at max: the tap is gone once the handler returned.
	deadline := time.Now().Add(10 * time.Second)
	for len(a.Ingest(report("web-1", "default", "web", ""), t0).Taps) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("tap still active after its stream ended")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
