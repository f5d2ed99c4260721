package cli

import (
	"net/http"
	"net/http/httptest"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"verge.dev/verge/internal/telemetry"
	"verge.dev/verge/internal/topology"
)

// waitFor bounds waiting for a condition.
const waitFor = 10 * time.Second

// telemetryServer serves a real topology aggregator's API over loopback
// HTTP, with reports already in it.
func telemetryServer(t *testing.T, now time.Time) (*topology.Aggregator, string) {
	t.Helper()
	a := topology.New(topology.Options{Clock: func() time.Time { return now }})
	hs := httptest.NewServer(a.Handler(topology.HandlerConfig{}))
	t.Cleanup(hs.Close)
	return a, hs.URL
}

func latencies(bucket int, n uint64) []uint64 {
	l := make([]uint64, len(telemetry.LatencyBuckets)+1)
	l[bucket] = n
	return l
}

func TestTop(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 5, 0, time.UTC)
	a, url := telemetryServer(t, now)
	a.Ingest(&telemetry.Report{Proxy: "web-1.default", Workload: "default/web-1", Service: "web", Namespace: "default", Zone: "a",
		Edges: []telemetry.EdgeStats{{EdgeKey: telemetry.EdgeKey{Direction: telemetry.Outbound, Protocol: "http",
			Source: "web.default", SourceZone: "a", Destination: "api.default", DestinationZone: "b"}, Requests: 120, Failures: 6, Latency: latencies(4, 120)}},
	}, now)
	a.Ingest(&telemetry.Report{Proxy: "api-1.default", Workload: "default/api-1", Service: "api", Namespace: "default", Zone: "b",
		Edges: []telemetry.EdgeStats{
			{EdgeKey: telemetry.EdgeKey{Direction: telemetry.Inbound, Protocol: "http", Source: "web.default", Destination: "api.default", DestinationZone: "b"},
				Requests: 120, Failures: 6, Latency: latencies(4, 120)},
			{EdgeKey: telemetry.EdgeKey{Direction: telemetry.Inbound, Protocol: "grpc", Source: "unknown", Destination: "api.default", DestinationZone: "b"},
				Requests: 60, Latency: latencies(1, 60)},
		},
	}, now)

	got := mustRun(t, url, "", "top", "--once", "--edges")
	// api.default served 180 requests in a minute: 120 in (5ms, 10ms],
	// 60 in (0.5ms, 1ms]; its median is a quarter into the first bucket.
	want := `SERVICE      RPS   SUCCESS  P50    P99    WORKLOADS  ZONES
api.default  3.00  96.67%   6.2ms  9.9ms  1          b
unknown      0.00  -        -      -      0          -
web.default  0.00  -        -      -      1          a

SOURCE       DESTINATION  PROTOCOL  RPS   SUCCESS  P50    P99    ZONES
web.default  api.default  http      2.00  95.00%   7.5ms  9.9ms  a→b CROSS
unknown      api.default  grpc      1.00  100.00%  750µs  995µs  -→b
`
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("verge top --once --edges (-want +got):\n%s", diff)
	}
	got = mustRun(t, url, "", "top", "--once", "--sort", "name", "--window", "2m")
	if lines := strings.Split(got, "\n"); len(lines) != 5 || !strings.HasPrefix(lines[1], "api.default  1.50") {
		t.Errorf("verge top --sort name --window 2m:\n%s", got)
	}
	// Live: keys re-sort the table (s), show the edges (e), ignore what
	// is not a key (x) and quit (q); the hour-long interval means no
	// refresh comes between them.
	got = mustRun(t, url, "sxeq", "top", "--interval", "1h")
	frames := strings.Split(got, clearScreen)
	if len(frames) != 4 || frames[0] != "" {
		t.Fatalf("verge top with keys s, x, e, q: want 3 tables, got %d:\n%s", len(frames)-1, got)
	}
	for i, want := range []struct {
		by    string
		edges bool
		first string
	}{{"rps", false, "api.default"}, {"success", false, "api.default"}, {"success", true, "api.default"}} {
		f := frames[i+1]
		if !strings.Contains(f, ", by "+want.by+", ") || strings.Contains(f, "SOURCE") != want.edges {
			t.Errorf("table %d: want sort %s, edges %v:\n%s", i+1, want.by, want.edges, f)
		}
		lines := strings.Split(f, "\n")
		if len(lines) < 5 || !strings.HasPrefix(lines[4], want.first) {
			t.Errorf("table %d: first row is not %s:\n%s", i+1, want.first, f)
		}
	}
	if _, _, err := run(t, url, "", "top", "--once", "--sort", "fastest"); ExitCode(err) != 2 {
		t.Errorf("bad --sort: err %v, want usage error", err)
	}
	if _, _, err := run(t, url, "", "top", "--once", "--window", "3h"); err == nil || !strings.Contains(err.Error(), "window: 3h0m0s must be between") {
		t.Errorf("window beyond retention: err %v, want the server's refusal", err)
	}
}

func TestTap(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 5, 0, time.UTC)
	a, url := telemetryServer(t, now)
	type result struct {
		out, errOut string
		err         error
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"text", []string{"tap", "api", "--max", "2"}, "12:00:01.000 outbound web.default → api.default GET /items?id=1 200 3.2ms\n" +
			"12:00:02.000 inbound  unknown → api.default POST /pkg.Svc/Call 200 grpc=14 12µs\n"},
		{"json", []string{"tap", "api.default", "--max", "1", "-o", "json"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan result, 1)
			go func() {
				out, errOut, err := run(t, url, "", tc.args...)
				done <- result{out, errOut, err}
			}()
			var id string
			for end := time.Now().Add(waitFor); id == ""; time.Sleep(10 * time.Millisecond) {
				if taps := a.Ingest(&telemetry.Report{}, now).Taps; len(taps) == 1 {
					id = taps[0].ID
				}
				if time.Now().After(end) {
					t.Fatal("the tap never registered")
				}
			}
			evs := []telemetry.TapEvent{
				{TapID: id, Time: now.Add(-4 * time.Second), Direction: "outbound", Protocol: "http", Source: "web.default",
					Destination: "api.default", Method: "GET", Path: "/items?id=1", Status: 200, GRPCStatus: -1, Duration: 3200 * time.Microsecond},
				{TapID: id, Time: now.Add(-3 * time.Second), Direction: "inbound", Protocol: "grpc", Source: "unknown",
					Destination: "api.default", Method: "POST", Path: "/pkg.Svc/Call", Status: 200, GRPCStatus: 14, Duration: 12 * time.Microsecond},
			}
			a.Ingest(&telemetry.Report{Taps: evs}, now)
			var r result
			select {
			case r = <-done:
			case <-time.After(waitFor):
				t.Fatal("verge tap did not end at --max")
			}
			if r.err != nil {
				t.Fatalf("verge tap: %v (%s)", r.err, r.errOut)
			}
			want := tc.want
			if tc.name == "json" {
				want = `{"tapId":"` + id + `","time":"2026-05-01T12:00:01Z","proxy":"","direction":"outbound","protocol":"http","source":"web.default","destination":"api.default","method":"GET","path":"/items?id=1","status":200,"grpcStatus":-1,"duration":3200000}` + "\n"
			}
			if diff := cmp.Diff(want, r.out); diff != "" {
				t.Errorf("output (-want +got):\n%s", diff)
			}
		})
	}
	if _, _, err := run(t, url, "", "tap", "api", "--rate", "1000"); err == nil || !strings.Contains(err.Error(), "400 Bad Request: rate") {
		t.Errorf("tap --rate 1000: err %v, want the server's refusal naming rate", err)
	}
}

func TestProfile(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 5, 0, time.UTC)
	a, url := telemetryServer(t, now)
	// The proxy's admin listener serves net/http/pprof as this one does.
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	admin := httptest.NewServer(mux)
	t.Cleanup(admin.Close)
	a.Ingest(&telemetry.Report{Proxy: "web-1.default", Workload: "default/web-1", Service: "web", Namespace: "default",
		AdminAddress: strings.TrimPrefix(admin.URL, "http://")}, now)

	dir := filepath.Join(t.TempDir(), "prof")
	out := mustRun(t, url, "", "profile", "default/web-1", "--seconds", "1", "--out", dir)
	want := filepath.Join(dir, "cpu.pprof") + "\n" + filepath.Join(dir, "heap.pprof") + "\n"
	if out != want {
		t.Errorf("output = %q, want %q", out, want)
	}
	for _, f := range []string{"cpu.pprof", "heap.pprof"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		// pprof profiles are gzipped protobufs.
		if err != nil || len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
			t.Errorf("%s: %d bytes, err %v: not a gzipped profile", f, len(b), err)
		}
	}
	if _, _, err := run(t, url, "", "profile", "nobody.default"); err == nil || !strings.Contains(err.Error(), "has not reported") {
		t.Errorf("unknown proxy: err %v", err)
	}
}
