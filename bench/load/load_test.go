package load

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestHistogramQuantiles(t *testing.T) {
	tests := []struct {
		name   string
		values []time.Duration
		q      []float64
		want   []time.Duration
	}{
		{name: "empty", q: []float64{0.5}, want: []time.Duration{0}},
		{name: "single", values: []time.Duration{time.Millisecond}, q: []float64{0, 0.5, 1}, want: []time.Duration{time.Millisecond, time.Millisecond, time.Millisecond}},
		{name: "small exact", values: []time.Duration{1, 2, 3, 4}, q: []float64{0.25, 0.5, 1}, want: []time.Duration{1, 2, 4}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Histogram
			for _, v := range tt.values {
				h.Record(v)
			}
			var got []time.Duration
			for _, q := range tt.q {
				got = append(got, h.Quantile(q))
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("quantiles (-want +got):\n%s", diff)
			}
		})
	}
}

func TestHistogramRelativeError(t *testing.T) {
	// 1..100,000 µs uniformly: every quantile is within the bucket error.
	var h, other Histogram
	for i := 1; i <= 100_000; i++ {
		if i%2 == 0 {
			h.Record(time.Duration(i) * time.Microsecond)
		} else {
			other.Record(time.Duration(i) * time.Microsecond)
		}
	}
	h.Merge(&other)
	if h.Count() != 100_000 {
		t.Fatalf("Count() = %d, want 100000", h.Count())
	}
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		want := float64(q*100_000) * float64(time.Microsecond)
		got := float64(h.Quantile(q))
		if rel := (got - want) / want; rel > 0.01 || rel < -0.01 {
			t.Errorf("Quantile(%v) = %v, want %v ±1%%", q, time.Duration(got), time.Duration(want))
		}
	}
	if h.Min() != time.Microsecond || h.Max() != 100*time.Millisecond {
		t.Errorf("Min, Max = %v, %v; want 1µs, 100ms", h.Min(), h.Max())
	}
}

func TestBucketsRoundTrip(t *testing.T) {
	for _, v := range []uint64{0, 1, 127, 128, 129, 255, 256, 1000, 123456789, maxValue} {
		low, width := bucketRange(bucketOf(v))
		if v < low || v >= low+width {
			t.Errorf("value %d in bucket [%d, %d)", v, low, low+width)
		}
	}
	if got := bucketOf(maxValue); got != nBuckets-1 {
		t.Errorf("bucketOf(maxValue) = %d, want last bucket %d", got, nBuckets-1)
	}
}

func TestConfigValidate(t *testing.T) {
	cfg := Config{Protocol: HTTP1, Addr: "127.0.0.1:1", Connections: 0, Duration: 0}
	_, err := Run(t.Context(), cfg)
	if err == nil {
		t.Fatal("Run with 0 connections and 0 duration: no error")
	}
	for _, want := range []string{"connections 0", "duration 0s"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
}

// The smoke tests run tiny bounded loads and check counts and bodies, never
// timings.
func TestRunHTTP(t *testing.T) {
	srv := httptest.NewServer(EchoHandler())
	t.Cleanup(srv.Close)
	addr := strings.TrimPrefix(srv.URL, "http://")
	tests := []struct {
		name string
		cfg  Config
	}{
		{"closed loop", Config{Connections: 2, MaxRequests: 50}},
		{"open loop", Config{Connections: 2, Rate: 200, MaxRequests: 20}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			cfg.Protocol, cfg.Addr = HTTP1, addr
			cfg.Warmup, cfg.Duration = 10*time.Millisecond, 5*time.Second
			started := 0
			cfg.OnMeasureStart = func() { started++ }
			res, err := Run(t.Context(), cfg)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if res.Errors != 0 {
				t.Errorf("Errors = %d, first: %v", res.Errors, res.FirstError)
			}
			if res.Requests != cfg.MaxRequests || int64(res.Latency.Count()) != cfg.MaxRequests {
				t.Errorf("Requests = %d, latencies = %d, want %d", res.Requests, res.Latency.Count(), cfg.MaxRequests)
			}
			if started != 1 {
				t.Errorf("OnMeasureStart called %d times, want 1", started)
			}
		})
	}
}

func TestRunHTTPErrors(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no", http.StatusServiceUnavailable)
	}))
	t.Cleanup(srv.Close)
	res, err := Run(t.Context(), Config{
		Protocol: HTTP1, Addr: strings.TrimPrefix(srv.URL, "http://"),
		Connections: 1, Duration: 5 * time.Second, MaxRequests: 3,
	})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if res.Requests != 0 || res.Errors != 3 || res.FirstError == nil || !strings.Contains(res.FirstError.Error(), "503") {
		t.Errorf("Requests, Errors, FirstError = %d, %d, %v; want 0, 3, a 503", res.Requests, res.Errors, res.FirstError)
	}
}

func TestRunGRPC(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	RegisterEcho(s)
	done := make(chan error, 1)
	go func() { done <- s.Serve(lis) }()
	t.Cleanup(func() {
		s.Stop()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	for _, rate := range []float64{0, 200} {
		res, err := Run(t.Context(), Config{
			Protocol: GRPC, Addr: lis.Addr().String(), Connections: 2, Rate: rate,
			Duration: 5 * time.Second, MaxRequests: 20,
		})
		if err != nil {
			t.Fatalf("Run(rate %v): %v", rate, err)
		}
		if res.Errors != 0 || res.Requests != 20 {
			t.Errorf("Run(rate %v): Requests, Errors = %d, %d (first %v); want 20, 0", rate, res.Requests, res.Errors, res.FirstError)
		}
	}
}

func TestRunUnreachable(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	_, err = Run(t.Context(), Config{Protocol: HTTP1, Addr: addr, Connections: 1, Duration: time.Second})
	if err == nil || !strings.Contains(err.Error(), "connect "+addr) {
		t.Errorf("Run against a closed port: error %v, want connect %s: ...", err, addr)
	}
}
