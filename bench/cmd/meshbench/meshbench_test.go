package main

import (
	"context"
	"encoding/json"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"google.golang.org/grpc"
	"verge.dev/verge/api/v1alpha1"

	"verge.dev/verge/bench/load"
)

// TestMain doubles as the harness's children: the process tests re-execute
// the test binary with MESHBENCH_CHILD set, as the harness re-executes itself.
func TestMain(m *testing.M) {
	if os.Getenv("MESHBENCH_CHILD") == "1" {
		ctx, stop := context.WithCancel(context.Background())
		defer stop()
		if !childMain(ctx, os.Args[1:]) {
			os.Exit(2)
		}
		return
	}
	goleak.VerifyTestMain(m)
}

// smoke runs a tiny bounded load and checks it got through; no timings.
func smoke(t *testing.T, p load.Protocol, addr string) {
	t.Helper()
	res, err := load.Run(t.Context(), load.Config{Protocol: p, Addr: addr, Connections: 2, Duration: 5 * time.Second, MaxRequests: 20})
	if err != nil {
		t.Fatalf("load.Run(%v, %s): %v", p, addr, err)
	}
	if res.Requests != 20 || res.Errors != 0 {
		t.Fatalf("load.Run(%v, %s): Requests, Errors = %d, %d (first %v); want 20, 0", p, addr, res.Requests, res.Errors, res.FirstError)
	}
}

func TestStockProxyHTTP(t *testing.T) {
	backend := httptest.NewServer(load.EchoHandler())
	t.Cleanup(backend.Close)
	for _, idle := range []int{0, 16} {
		px := httptest.NewServer(stockProxy(strings.TrimPrefix(backend.URL, "http://"), idle, false))
		t.Cleanup(px.Close)
		smoke(t, load.HTTP1, strings.TrimPrefix(px.URL, "http://"))
	}
}

func TestStockProxyGRPC(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	load.RegisterEcho(gs)
	done := make(chan error, 1)
	go func() { done <- gs.Serve(lis) }()
	t.Cleanup(func() {
		gs.Stop()
		<-done
	})
	px := httptest.NewUnstartedServer(stockProxy(lis.Addr().String(), 0, true))
	px.Config.Protocols = new(http.Protocols)
	px.Config.Protocols.SetHTTP1(true)
	px.Config.Protocols.SetUnencryptedHTTP2(true)
	px.Start()
	t.Cleanup(px.Close)
	smoke(t, load.GRPC, px.Listener.Addr().String())
}

// TestChildProcesses starts the backend and a stock proxy as the harness
// does, in processes of their own, and reads their CPU time and RSS.
func TestChildProcesses(t *testing.T) {
	t.Setenv("MESHBENCH_CHILD", "1")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	start := func(name string, args ...string) map[string]string {
		t.Helper()
		p, err := startProc(dir, name, append([]string{self}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.stop)
		line, err := p.waitLine(t.Context(), "ready ", 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		addrs := map[string]string{}
		for f := range strings.FieldsSeq(line) {
			if k, v, ok := strings.Cut(f, "="); ok {
				addrs[k] = v
			}
		}
		if _, err := cpuTime(p.pid()); err != nil {
			t.Errorf("cpuTime(%s): %v", name, err)
		}
		if n, err := rss(p.pid()); err != nil || n <= 0 {
			t.Errorf("rss(%s) = %d, %v; want a positive size", name, n, err)
		}
		return addrs
	}
	b := start("backend", "backend", "-http", "127.0.0.1:0", "-grpc", "127.0.0.1:0")
	smoke(t, load.HTTP1, b["http"])
	smoke(t, load.GRPC, b["grpc"])
	px := start("stock", "stock-proxy", "-listen", "127.0.0.1:0", "-target", b["http"], "-grpc-listen", "127.0.0.1:0", "-grpc-target", b["grpc"])
	smoke(t, load.HTTP1, px["http"])
	smoke(t, load.GRPC, px["grpc"])
}

func TestFloors(t *testing.T) {
	result := func(rps float64, p50 time.Duration) *cell {
		res := &load.Result{Requests: int64(rps), Elapsed: time.Second}
		res.Latency.Record(p50)
		res.Service.Record(p50)
		return &cell{res: res, cpuPerReq: math.NaN()}
	}
	tests := []struct {
		name  string
		cells map[cellKey]*cell
		scale *scaleResult
		want  []string // result column per floor
	}{
		{
			name: "pass",
			cells: map[cellKey]*cell{
				{load.HTTP1, 1, "verge2"}: result(3000, 0), {load.HTTP1, 1, "stock2"}: result(1000, 0),
				{load.HTTP1, 3, "direct"}: result(1000, 100*time.Microsecond),
				{load.HTTP1, 3, "verge2"}: result(1000, 200*time.Microsecond),
				{load.HTTP1, 3, "stock2"}: result(1000, 500*time.Microsecond),
			},
			scale: &scaleResult{rss: 10 << 20, clusters: 100, endpoints: 1000},
			want:  []string{"PASS", "PASS", "PASS"},
		},
		{
			name: "fail",
			cells: map[cellKey]*cell{
				{load.HTTP1, 1, "verge2"}: result(1000, 0), {load.HTTP1, 1, "stock2"}: result(1000, 0),
				{load.HTTP1, 3, "direct"}: result(1000, 100*time.Microsecond),
				{load.HTTP1, 3, "verge2"}: result(1000, 400*time.Microsecond),
				{load.HTTP1, 3, "stock2"}: result(1000, 500*time.Microsecond),
			},
			scale: &scaleResult{rss: 20 << 20},
			want:  []string{"FAIL", "FAIL", "FAIL"},
		},
		{name: "no data", cells: map[cellKey]*cell{}, want: []string{"FAIL (no data)", "FAIL (no data)", "FAIL (no data)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newReport(options{http: true, cases: regexp.MustCompile("")})
			r.cells, r.scale = tt.cells, tt.scale
			md := r.markdown()
			_, table, _ := strings.Cut(md, "## Floors")
			rows := regexp.MustCompile(`(?m)^\| (Throughput|Added latency|Idle memory) \|.*\| ([^|]+) \|$`).FindAllStringSubmatch(table, -1)
			if len(rows) != len(tt.want) {
				t.Fatalf("floor rows: got %d, want %d:\n%s", len(rows), len(tt.want), table)
			}
			for i, row := range rows {
				if got := strings.TrimSpace(row[2]); got != tt.want[i] {
					t.Errorf("floor %s: got %q, want %q", row[1], got, tt.want[i])
				}
			}
		})
	}
}

// TestPolicySetValid: the benchmark's policy set is accepted by the API, so
// a run never measures a control plane that refused it.
func TestPolicySetValid(t *testing.T) {
	for _, r := range policySet() {
		b, err := json.Marshal(r.obj)
		if err != nil {
			t.Fatal(err)
		}
		obj, err := v1alpha1.DecodeOne(b)
		if err != nil {
			t.Fatalf("%s: %v", r.plural, err)
		}
		v1alpha1.Default(obj)
		if errs := v1alpha1.Validate(obj); len(errs) > 0 {
			t.Errorf("%s %s: %v", r.plural, obj.GetName(), errs.ToAggregate())
		}
	}
}

// floorResults renders the report and returns the result column of the
// floors named in names, by name.
func floorResults(t *testing.T, r *report, names ...string) map[string]string {
	t.Helper()
	_, table, _ := strings.Cut(r.markdown(), "## Floors")
	re := regexp.MustCompile(`(?m)^\| (` + strings.Join(names, "|") + `) \|.*\| ([^|]+) \|$`)
	got := map[string]string{}
	for _, row := range re.FindAllStringSubmatch(table, -1) {
		got[row[1]] = strings.TrimSpace(row[2])
	}
	return got
}

func rpsCell(rps float64) *cell {
	res := &load.Result{Requests: int64(rps), Elapsed: time.Second}
	res.Latency.Record(time.Millisecond)
	res.Service.Record(time.Millisecond)
	return &cell{res: res, cpuPerReq: math.NaN(), logBytes: -1}
}

func TestTelemetryFloors(t *testing.T) {
	const closed64 = 2
	off, logs, trace := "verge2-telemetry-off", "verge2-metrics-logs", "verge2-trace100"
	names := []string{"Metrics and access logs cost", "Tracing 100% cost", "Topology API"}
	tests := []struct {
		name     string
		rounds   map[string][]float64 // req/s per round, by case
		topology *topologyResult
		want     map[string]string
	}{
		{
			name:     "pass at the floors",
			rounds:   map[string][]float64{off: {10000}, logs: {9500}, trace: {8500}},
			topology: &topologyResult{perOp: 7 * time.Millisecond},
			want:     map[string]string{names[0]: "PASS", names[1]: "PASS", names[2]: "PASS"},
		},
		{
			name:     "fail below the floors",
			rounds:   map[string][]float64{off: {10000}, logs: {9400}, trace: {8400}},
			topology: &topologyResult{perOp: 150 * time.Millisecond},
			want:     map[string]string{names[0]: "FAIL", names[1]: "FAIL", names[2]: "FAIL"},
		},
		{
			// One bad round of three does not decide: the median of the
			// per-round ratios does.
			name:   "median of per-round ratios",
			rounds: map[string][]float64{off: {10000, 12000, 9000}, logs: {9900, 9000, 8900}, trace: {8000, 11000, 7000}},
			want:   map[string]string{names[0]: "PASS", names[1]: "FAIL", names[2]: "FAIL (no data)"},
		},
		{
			name:     "no data",
			rounds:   map[string][]float64{off: {10000}},
			topology: &topologyResult{err: os.ErrNotExist},
			want:     map[string]string{names[0]: "FAIL (no data)", names[1]: "FAIL (no data)", names[2]: "FAIL (no data)"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newReport(options{http: true, cases: regexp.MustCompile("")})
			for key, rps := range tt.rounds {
				k := cellKey{load.HTTP1, closed64, key}
				for _, v := range rps {
					r.rounds[k] = append(r.rounds[k], rpsCell(v))
				}
				r.cells[k] = medianCell(r.rounds[k], true)
			}
			r.topology = tt.topology
			if diff := cmp.Diff(tt.want, floorResults(t, r, names...)); diff != "" {
				t.Errorf("floor results (-want +got):\n%s", diff)
			}
		})
	}
}

// TestTelemetryTable: the telemetry cost table shows each case's ratio to
// telemetry off and the access log's bytes per request.
func TestTelemetryTable(t *testing.T) {
	const closed64 = 2
	r := newReport(options{http: true, cases: regexp.MustCompile("")})
	for _, tc := range telemetryCases {
		r.cases = append(r.cases, &caseDef{key: tc.key, title: tc.title})
	}
	r.cells[cellKey{load.HTTP1, closed64, "verge2-telemetry-off"}] = rpsCell(10000)
	withLogs := rpsCell(9600)
	withLogs.logBytes = 9600 * 600
	r.cells[cellKey{load.HTTP1, closed64, "verge2-metrics-logs"}] = withLogs
	r.cells[cellKey{load.HTTP1, closed64, "verge2-trace100"}] = rpsCell(8000)
	_, table, ok := strings.Cut(r.markdown(), "## Telemetry cost")
	if !ok {
		t.Fatal("no telemetry cost section")
	}
	table, _, _ = strings.Cut(table, "## Floors")
	for _, want := range []string{
		"| Verge 2 hops, telemetry off | 10000 | — |",
		"| Verge 2 hops, metrics + access logs | 9600 | 0.960 | 1000 µs | 1000 µs | ? | 600 |",
		"| Verge 2 hops, tracing 1% | not run |",
		"| Verge 2 hops, tracing 100% | 8000 | 0.800 |",
	} {
		if !strings.Contains(table, want) {
			t.Errorf("telemetry table lacks %q:\n%s", want, table)
		}
	}
	if strings.Contains(table, "no Telemetry") {
		t.Errorf("telemetry table shows verge2, which the run did not have:\n%s", table)
	}

	// Without any telemetry case, no section.
	r = newReport(options{http: true, cases: regexp.MustCompile("")})
	r.cases = []*caseDef{{key: "verge2", title: "Verge 2 hops"}}
	if md := r.markdown(); strings.Contains(md, "## Telemetry cost") {
		t.Errorf("telemetry cost section without telemetry cases:\n%s", md)
	}
}

// TestTelemetryResourcesValid: every telemetry case's Telemetry objects are
// accepted by the API, so a run never measures a mesh that refused them;
// and they scope as intended (mesh-wide, plus Service backend for the
// server-side proxy's own access log).
func TestTelemetryResourcesValid(t *testing.T) {
	for _, tc := range telemetryCases {
		t.Run(tc.key, func(t *testing.T) {
			rs := tc.resources("/tmp/meshbench-x", "127.0.0.1:4317")
			var scopes []string
			for _, r := range rs {
				b, err := json.Marshal(r.obj)
				if err != nil {
					t.Fatal(err)
				}
				obj, err := v1alpha1.DecodeOne(b)
				if err != nil {
					t.Fatalf("%s: %v", r.plural, err)
				}
				v1alpha1.Default(obj)
				if errs := v1alpha1.Validate(obj); len(errs) > 0 {
					t.Errorf("%s %s: %v", r.plural, obj.GetName(), errs.ToAggregate())
				}
				tel, ok := obj.(*v1alpha1.Telemetry)
				if !ok {
					t.Fatalf("decoded %T, want *v1alpha1.Telemetry", obj)
				}
				scopes = append(scopes, tel.Namespace+"/"+tel.Spec.Service)
				if got := tel.Spec.MetricsOn(); got == tc.metricsOff {
					t.Errorf("%s: metrics on = %v, want %v", tel.Name, got, !tc.metricsOff)
				}
				if got := tel.Spec.AccessLogOn(); got != tc.accessLog {
					t.Errorf("%s: access log on = %v, want %v", tel.Name, got, tc.accessLog)
				}
				if got := tel.Spec.Tracing != nil; got != (tc.samplePercent > 0) {
					t.Errorf("%s: tracing = %v, want %v", tel.Name, got, tc.samplePercent > 0)
				} else if got && *tel.Spec.Tracing.SamplingPercent != tc.samplePercent {
					t.Errorf("%s: samplingPercent = %v, want %v", tel.Name, *tel.Spec.Tracing.SamplingPercent, tc.samplePercent)
				}
			}
			want := []string{"verge-system/"}
			if tc.accessLog {
				want = append(want, "default/backend")
			}
			if diff := cmp.Diff(want, scopes); diff != "" {
				t.Errorf("scopes (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseBenchNsPerOp(t *testing.T) {
	out := []byte("goos: linux\npkg: verge.dev/verge/internal/topology\n" +
		"BenchmarkTopology500Other-2   10   1 ns/op\n" +
		"BenchmarkTopology500-2   \t     157\t   7527430 ns/op\t 2445664 B/op\t     514 allocs/op\nPASS\n")
	got, err := parseBenchNsPerOp(out, "BenchmarkTopology500")
	if err != nil || got != 7527430*time.Nanosecond {
		t.Errorf("parseBenchNsPerOp = %v, %v; want 7.52743ms", got, err)
	}
	if _, err := parseBenchNsPerOp([]byte("FAIL\n"), "BenchmarkTopology500"); err == nil {
		t.Error("parseBenchNsPerOp without a result line: no error")
	}
}

// TestAccessLogAccounting: the harness measures how much the logs grew and
// empties them; a proxy appending (O_APPEND) after the truncation writes at
// the new start.
func TestAccessLogAccounting(t *testing.T) {
	dir := t.TempDir()
	a, b := dir+"/a.log", dir+"/b.log"
	fa, err := os.OpenFile(a, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	if _, err := fa.WriteString("0123456789\n"); err != nil {
		t.Fatal(err)
	}
	// b does not exist yet: it counts 0.
	if got := logSizes([]string{a, b}); got != 11 {
		t.Errorf("logSizes = %d, want 11", got)
	}
	if err := truncateLogs([]string{a, b}); err != nil {
		t.Fatal(err)
	}
	if _, err := fa.WriteString("abc\n"); err != nil {
		t.Fatal(err)
	}
	if got := logSizes([]string{a, b}); got != 4 {
		t.Errorf("logSizes after truncate and append = %d, want 4", got)
	}
}

// TestPairedFloors: when the run measured a floor's cases in back-to-back
// pairs, the floor is their median ratio, not the rounds'.
func TestPairedFloors(t *testing.T) {
	const closed64 = 2
	off, logs := "verge2-telemetry-off", "verge2-metrics-logs"
	r := newReport(options{http: true, cases: regexp.MustCompile(""), pairs: 3})
	for key, rps := range map[string]float64{off: 10000, logs: 9000} {
		k := cellKey{load.HTTP1, closed64, key}
		r.rounds[k] = []*cell{rpsCell(rps)}
		r.cells[k] = r.rounds[k][0]
	}
	name := "Metrics and access logs cost"
	if got := floorResults(t, r, name)[name]; got != "FAIL" {
		t.Fatalf("rounds alone at 0.90: %s, want FAIL", got)
	}
	for _, p := range [][2]float64{{9600, 10000}, {9000, 10000}, {9700, 10000}} {
		r.pairs[logs+"/"+off] = append(r.pairs[logs+"/"+off], pairSample{num: rpsCell(p[0]), den: rpsCell(p[1])})
	}
	if got := floorResults(t, r, name)[name]; got != "PASS" {
		t.Errorf("pairs 0.96, 0.90, 0.97: %s, want PASS (median 0.96)", got)
	}
	if md := r.markdown(); !strings.Contains(md, "0.96, median of 3 back-to-back pairs: 0.96; 0.90; 0.97") {
		t.Errorf("floor value does not show the pairs:\n%s", md)
	}
}
