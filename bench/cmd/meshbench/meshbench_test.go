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
